/*
 * lab.h: the kernel lab, older versions of the CUDA MSA kernels that the
 * library's automatic choice never runs, kept so that tests can check them
 * and benchmarks can time them against the current ones (the version
 * histories in kernels/block_attn.cuh and kernels/index_score.cuh say what
 * each changed). Built as the static library msa_kernels_lab, which only
 * tests and benchmarks link; libmsa does not contain it.
 *
 *   attn_version   7  v6 with 32-token K/V stages, 3 in flight, 2 warps
 *                  5  v5: gather tiles of 16 vectors, wmma, O in shared memory
 *                  4  v4: 64-vector union tiles
 *   index_version  4  v4's prefill scan (wmma, two 64-vector chunks)
 *
 * The msa_cuda_lab_* launchers are the msa_cuda_* launchers of
 * kernels/cuda.h (same checks, workspace, errors and results) except that
 * they also accept these versions; every other tuning value, zero included,
 * runs what the library runs. The versions only differ for prefill (more
 * than 16 query vectors per sequence); decode runs the library's kernels.
 */
#ifndef MSA_KERNELS_LAB_H
#define MSA_KERNELS_LAB_H

#include "kernels/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

int msa_cuda_lab_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                           const msa_attn_batch *batch, const msa_exec *exec,
                           const msa_cuda_tuning *tune);
int msa_cuda_lab_index_select(const msa_attn_config *cfg, const msa_paged_kv *kv,
                              const msa_attn_batch *batch, const msa_exec *exec,
                              const msa_cuda_tuning *tune);
int msa_cuda_lab_sparse_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                                  const msa_attn_batch *batch, const msa_exec *exec,
                                  const msa_cuda_tuning *tune);
int msa_cuda_lab_dense_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                                 const msa_attn_batch *batch, const msa_exec *exec,
                                 const msa_cuda_tuning *tune);

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#include "kernels/cuda_common.cuh"
/* The internal launchers (cuda_common.cuh's, with the lab's versions), for
 * benchmarks that time one kernel alone. */
int msa_cuda_lab_launch_index_scores(const msa_cuda_shape &sh, const msa_paged_kv *kv,
                                     const msa_attn_batch *b, float *scores, cudaStream_t st,
                                     const msa_cuda_tuning *tune);
int msa_cuda_lab_launch_block_attn(const msa_cuda_shape &sh, const msa_paged_kv *kv,
                                   const msa_attn_batch *b, const int32_t *selected, int n_split,
                                   float *partials, cudaStream_t st, const msa_cuda_tuning *tune);
#endif

#endif /* MSA_KERNELS_LAB_H */
