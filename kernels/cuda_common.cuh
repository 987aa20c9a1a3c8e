/*
 * cuda_common.cuh: what the CUDA kernels of the MSA attention core share:
 * the storage types (bf16/fp16 with fp32 accumulation), the error mapping
 * (every CUDA failure becomes MSA_ECUDA with cudaGetErrorString's text), the
 * per-row helpers (which sequence a row belongs to, whether its position is
 * valid) and the internal launchers that cuda_dispatch.cu strings together.
 *
 * The pipeline of one MSA step on the GPU (cuda_dispatch.cu):
 *
 *   index_score.cu  q_idx x index keys -> block scores   ws.scores [n_q][Hkv][max_blocks] f32
 *   topk.cu         block scores       -> selected       [n_q][Hkv][top_k] i32
 *   block_attn.cu   q, K/V of the listed blocks -> out, lse
 *                   (the same kernel runs the dense baseline with the list
 *                   "every visible block"), plus a combine pass when the
 *                   block list of a tile is split over several CTAs.
 *
 * Bad data that the host cannot see (a q_pos at or past its sequence length,
 * a -1 slot, a block beyond a table) never causes an out-of-bounds read: the
 * row or block is treated as empty.
 */
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "engine/msa.h"
#include "base/base.h"
#include "kernels/cuda.h"

/* ---- error mapping ------------------------------------------------------- */

/* Maps the last launch error (or a given code) to MSA_ECUDA with its text. */
static inline int msa_cuda_check(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return MSA_OK;
    return msa_error(MSA_ECUDA, "CUDA: %s: %s", what, cudaGetErrorString(e));
}
#define MSA_CUDA_LAUNCHED(what) msa_cuda_check(cudaGetLastError(), what)

/* Raises a kernel's dynamic shared-memory limit to at least `bytes` on the
 * current device, once per device and size (the attribute is per device).
 * `cache` is the kernel's own [MSA_CUDA_MAX_DEVICES] array of the largest
 * size set so far; races between threads only repeat the same call. */
#define MSA_CUDA_MAX_DEVICES 64
static inline int msa_cuda_smem_optin(const void *func, size_t bytes, size_t *cache, const char *what) {
    int dev = 0;
    int rc = msa_cuda_check(cudaGetDevice(&dev), what);
    if (rc) return rc;
    if (dev >= 0 && dev < MSA_CUDA_MAX_DEVICES && cache[dev] >= bytes) return MSA_OK;
    rc = msa_cuda_check(cudaFuncSetAttribute(func, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes), what);
    if (!rc && dev >= 0 && dev < MSA_CUDA_MAX_DEVICES) cache[dev] = bytes;
    return rc;
}

/* ---- types ----------------------------------------------------------------- */

__device__ __forceinline__ float msa_to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float msa_to_f32(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T msa_from_f32(float x);
template <> __device__ __forceinline__ __nv_bfloat16 msa_from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16(x);
}
template <> __device__ __forceinline__ __half msa_from_f32<__half>(float x) {
    return __float2half(x);
}

#define MSA_LOG2E 1.4426950408889634f
#define MSA_LN2 0.6931471805599453f

/* ---- per-row helpers --------------------------------------------------------- */

/* The sequence that row `row` belongs to: the s with q_indptr[s] <= row <
 * q_indptr[s+1] (binary search; -1 when none, e.g. a malformed indptr). */
__device__ __forceinline__ int msa_row_seq(const int32_t *q_indptr, int n_seqs, int row) {
    int lo = 0, hi = n_seqs - 1, found = -1;
    while (lo <= hi) {
        int mid = (lo + hi) >> 1;
        if (q_indptr[mid] <= row) {
            if (row < q_indptr[mid + 1]) { found = mid; break; }
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    return found;
}

/* Logical blocks of sequence s that both its tokens and its table cover. */
__device__ __forceinline__ int msa_seq_blocks(const int32_t *indptr, const int32_t *seq_len,
                                              int s, int Bk) {
    int len = seq_len[s];
    int nb = len > 0 ? (len + Bk - 1) / Bk : 0;
    int nt = indptr[s + 1] - indptr[s];
    return nb < nt ? nb : nt;
}

/* The last visible position of a row, or -1 when the row is invalid
 * (q_pos negative or at/past its sequence length). */
__device__ __forceinline__ int msa_row_limit(int q_pos, int seq_len) {
    return (q_pos >= 0 && q_pos < seq_len) ? q_pos : -1;
}

/* 16-byte async copy global -> shared (cp.async.cg: bypasses L1). */
__device__ __forceinline__ void msa_cp_async16(void *smem, const void *gmem) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void msa_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void msa_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* ---- internal launchers (cuda_dispatch.cu strings them together) ----------- */

struct msa_cuda_shape {
    int Hq, Hkv, G, d, d_idx, idx_heads, Bk, top_k;
    float scale; /* softmax scale */
};

/* index_score.cu: scores [n_q][Hkv][max_blocks] fp32, -inf where a block has
 * no visible token (or its index slot is -1 / beyond its table). */
int msa_cuda_launch_index_scores(const msa_cuda_shape &sh, const msa_paged_kv *kv,
                                 const msa_attn_batch *b, float *scores, cudaStream_t st);

/* topk.cu: selected [n_q][Hkv][top_k] from scores [n_q][Hkv][max_blocks];
 * tune: topk_version, topk_warps (NULL: automatic). */
int msa_cuda_launch_topk(const msa_cuda_shape &sh, const msa_paged_kv *kv,
                         const msa_attn_batch *b, const float *scores, int32_t *selected,
                         cudaStream_t st, const msa_cuda_tuning *tune);

/* block_attn.cu: attention over the selected blocks (sparse) or over every
 * visible block (dense, selected == NULL). `partials` is workspace for the
 * split-K path; n_split is chosen by msa_cuda_attn_splits(). */
int msa_cuda_launch_block_attn(const msa_cuda_shape &sh, const msa_paged_kv *kv,
                               const msa_attn_batch *b, const int32_t *selected, int n_split,
                               float *partials, cudaStream_t st);

/* How many CTAs share the block list of one query tile, for n_q rows over
 * sequences of at most max_blocks blocks; a pure function of its arguments,
 * so that the workspace size can be computed ahead of the call. */
int msa_cuda_attn_splits(const msa_cuda_shape &sh, int n_q, int max_blocks, int dense);

/* Bytes of fp32 partial results for n_split > 1: [n_q][Hq][n_split][d + 2]. */
static inline size_t msa_cuda_partials_bytes(const msa_cuda_shape &sh, int n_q, int n_split) {
    if (n_split <= 1) return 0;
    return (size_t)n_q * sh.Hq * n_split * (sh.d + 2) * sizeof(float);
}

/* ---- the launchers of cuda.h, over a choice of kernels (cuda_dispatch.cu) ---
 * The four C launchers of cuda.h are msa_cuda_run() over the library's own
 * index scan and attention; kernels/lab/ runs the same checks, workspace
 * plan and pipeline over its older versions by passing its own. */
struct msa_cuda_impl {
    int (*index_scores)(const msa_cuda_shape &sh, const msa_paged_kv *kv, const msa_attn_batch *b,
                        float *scores, cudaStream_t st, const msa_cuda_tuning *tune);
    int (*block_attn)(const msa_cuda_shape &sh, const msa_paged_kv *kv, const msa_attn_batch *b,
                      const int32_t *selected, int n_split, float *partials, cudaStream_t st,
                      const msa_cuda_tuning *tune);
};
enum { MSA_CUDA_CALL_ATTN, MSA_CUDA_CALL_SELECT, MSA_CUDA_CALL_SPARSE, MSA_CUDA_CALL_DENSE };
int msa_cuda_run(int call, const msa_cuda_impl *impl, const msa_attn_config *cfg,
                 const msa_paged_kv *kv, const msa_attn_batch *b, const msa_exec *ex,
                 const msa_cuda_tuning *tune);
