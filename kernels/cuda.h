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
 * Kernel variants are an explicit, per-call choice (msa_cuda_tuning below,
 * NULL for the automatic one); the library holds no mutable switches.
 *
 * Only compiled when MSA_HAVE_CUDA is defined.
 */
#ifndef MSA_KERNELS_CUDA_H
#define MSA_KERNELS_CUDA_H

#include "engine/msa.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Which kernel versions a call runs. Zero in a field is the automatic
 * choice, what production runs (and what a NULL msa_cuda_tuning * means);
 * a non-zero field forces a version, for tests and benchmarks. Every
 * version computes the same result (top-k: the same selection; attention
 * and index: the same values up to summation order); they differ in speed.
 *
 *   attn_version   sparse prefill attention: 0 automatic = 6 (v6). 7 (v6
 *                  with 32-token stages), 5 and 4 are older versions kept
 *                  for comparison in the kernel lab (kernels/lab/lab.h,
 *                  library msa_kernels_lab); the launchers here return
 *                  MSA_EUNSUPPORTED for them.
 *   index_version  prefill index scan: 0 automatic = 5 (v5). 4 is in the lab.
 *   topk_version   0 automatic (v6, v5 or v4 by size, kernels/topk.cu); 4, 5
 *                  or 6 force that version wherever it applies.
 *   topk_warps     warps per CTA of top-k v6: 0 automatic, 4, 8 or 16.
 * Out-of-range values: MSA_EUNSUPPORTED, nothing queued. */
typedef struct msa_cuda_tuning {
    int attn_version;
    int index_version;
    int topk_version;
    int topk_warps;
} msa_cuda_tuning;

/* The launchers kernels/attention.c calls (its msa_* functions with
 * exec->device CUDA pass tune NULL). Errors as the public functions. */
size_t msa_cuda_workspace_size(const msa_attn_config *cfg, int n_q, int max_blocks);
int msa_cuda_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                       const msa_attn_batch *batch, const msa_exec *exec,
                       const msa_cuda_tuning *tune);
int msa_cuda_index_select(const msa_attn_config *cfg, const msa_paged_kv *kv,
                          const msa_attn_batch *batch, const msa_exec *exec,
                          const msa_cuda_tuning *tune);
int msa_cuda_sparse_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                              const msa_attn_batch *batch, const msa_exec *exec,
                              const msa_cuda_tuning *tune);
int msa_cuda_dense_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                             const msa_attn_batch *batch, const msa_exec *exec,
                             const msa_cuda_tuning *tune);
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
 * sequences' idx_indptr, seq_len and max_blocks); selected [n_q][Hkv][top_k].
 * tune: topk_version and topk_warps (NULL: automatic). */
int msa_cuda_topk_scores(const msa_paged_kv *kv, const msa_attn_batch *batch, int Hkv, int Bk,
                         int top_k, const float *scores, int32_t *selected, void *stream,
                         const msa_cuda_tuning *tune);
/* The generic selection from scores of msa_cuda_index_scores_generic
 * (cfg: n_kv_heads, block_size, top_k; one sequence). */
int msa_cuda_topk_generic(const msa_attn_config *cfg, const msa_attn_batch *batch, int stride,
                          const float *scores, int32_t *selected, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* MSA_KERNELS_CUDA_H */
