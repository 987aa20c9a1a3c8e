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

/* ---- the index scan over a range of blocks (index_paged.cu, topk.cu) --------
 * For index keys that are paged through the GPU in chunks (memory/pager.h,
 * msa_kvmem_paged_index_scan): each chunk is scored into its columns of one
 * score buffer scores [n_q][Hkv][stride] (fp32, device), then one top-k runs
 * over all of it. Each chunk's scores are bit-identical to those of a
 * whole-sequence msa_cuda_index_select, so the selection is too. `kv`
 * describes the chunk: kidx its index slots, idx_table (or kv_table) maps
 * block b of the chunk (0 .. kv->max_blocks-1) to a slot, idx_indptr and
 * seq_len are the sequences' own (not shifted); the chunk holds logical
 * blocks block0 .. block0 + kv->max_blocks - 1 and stride must cover them.
 * Arrays are device pointers; work is queued on `stream` (a cudaStream_t,
 * NULL: default); nothing synchronises or allocates. */

/* Device scratch bytes msa_cuda_index_scores needs (shifted positions). */
size_t msa_cuda_index_scratch_size(int n_q, int n_seqs);
/* The tensor-core scan of msa_cuda_index_select (d_idx 64 or 128, Bk a
 * multiple of 16 up to 128, bf16/f16) over the chunk. `scratch` (of
 * msa_cuda_index_scratch_size bytes, 16-byte aligned) is rewritten by each
 * call, in stream order. MSA_EUNSUPPORTED for other shapes. */
int msa_cuda_index_scores(const msa_attn_config *cfg, const msa_paged_kv *kv,
                          const msa_attn_batch *batch, int block0, int stride,
                          float *scores, void *scratch, void *stream);
/* The plain scan of the forward pass's generic path (any d_idx and Bk, one
 * thread per (row, group), one sequence): writes the blocks of the chunk up
 * to each row's local block. */
int msa_cuda_index_scores_generic(const msa_attn_config *cfg, const msa_paged_kv *kv,
                                  const msa_attn_batch *batch, int block0, int stride,
                                  float *scores, void *stream);
/* Top-k of topk.cu over scores [n_q][Hkv][kv->max_blocks] (kv: the whole
 * sequences' idx_indptr, seq_len and max_blocks); selected [n_q][Hkv][top_k]. */
int msa_cuda_topk_scores(const msa_paged_kv *kv, const msa_attn_batch *batch, int Hkv, int Bk,
                         int top_k, const float *scores, int32_t *selected, void *stream);
/* The generic selection from scores of msa_cuda_index_scores_generic
 * (cfg: n_kv_heads, block_size, top_k; one sequence). */
int msa_cuda_topk_generic(const msa_attn_config *cfg, const msa_attn_batch *batch, int stride,
                          const float *scores, int32_t *selected, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* MSA_KERNELS_CUDA_H */
