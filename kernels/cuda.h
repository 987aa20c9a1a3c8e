/*
 * cuda.h: the C launchers of the CUDA backend (the .cu files of kernels/).
 *
 * kernels/attention.c validates every argument that can be checked on the
 * host and then calls these; they take the public structs unchanged, with
 * every array a device pointer, queue work on exec->stream and return
 * without synchronising. Data-dependent checks (a q_pos beyond its sequence,
 * a -1 slot in a selected block) cannot be made on the host: the kernels
 * treat such input as empty rather than read out of bounds.
 *
 * Only compiled when MSA_HAVE_CUDA is defined.
 */
#ifndef MSA_KERNELS_CUDA_H
#define MSA_KERNELS_CUDA_H

#include "engine/msa.h"

#ifdef __cplusplus
extern "C" {
#endif

size_t msa_cuda_workspace_size(const msa_attn_config *cfg, int n_q, int max_blocks);
int msa_cuda_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                       const msa_attn_batch *batch, const msa_exec *exec);
int msa_cuda_index_select(const msa_attn_config *cfg, const msa_paged_kv *kv,
                          const msa_attn_batch *batch, const msa_exec *exec);
int msa_cuda_sparse_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                              const msa_attn_batch *batch, const msa_exec *exec);
int msa_cuda_dense_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                             const msa_attn_batch *batch, const msa_exec *exec);
/* Number of visible CUDA devices; 0 when none (never an error). */
int msa_cuda_device_count(void);

#ifdef __cplusplus
}
#endif

#endif /* MSA_KERNELS_CUDA_H */
