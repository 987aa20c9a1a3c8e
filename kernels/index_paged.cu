/*
 * index_paged.cu: the index scan over a range of blocks, for index keys
 * that do not stay resident on the GPU (kernels/cuda.h, "paged index").
 *
 * When a layer's index keys exceed the GPU budget, the pager streams them
 * through a ring of GPU index slots in chunks (memory/pager.c,
 * msa_kvmem_paged_index_scan). Each chunk is scored here into its columns
 * of one [n_q][Hkv][stride] score buffer; once every chunk is scored, one
 * top-k over the whole buffer (msa_cuda_topk_scores, or
 * msa_cuda_topk_generic) makes the selection. The scores are exactly those
 * of a whole-sequence launch:
 *
 *   msa_cuda_index_scores          runs index_score.cu's kernel over the
 *       chunk's blocks (grid = the chunk), with q_pos and seq_len shifted
 *       by block0 * Bk (a small kernel writes them to `scratch`) and the
 *       output pointer moved to column block0. A CTA only compares token
 *       positions with the row's limit, and both move by the same
 *       constant, so every block's score is bit-identical to the one the
 *       resident launch computes; a row before the range gets -inf, as
 *       the resident launch gives it for blocks it cannot see.
 *   msa_cuda_index_scores_generic  the plain per-(row, group) scan of the
 *       forward's generic path (any d_idx, any Bk), one thread per (row,
 *       group), over the chunk's blocks. The resident generic path runs the
 *       same kernel over the whole range, so both agree by construction.
 *   msa_cuda_topk_generic          the generic selection from scores:
 *       local block first, then the best visible blocks by descending score,
 *       ties to the lower id, -1 padding.
 *
 * Everything is queued on `stream`; nothing synchronises or allocates.
 */
#include "kernels/cuda.h"
#include "kernels/cuda_common.cuh"

/* index_score.cu: the kernel over kv->max_blocks blocks with row stride
 * `stride` (positions and lengths as given). */
int msa_cuda_launch_index_scores_range(const msa_cuda_shape &sh, const msa_paged_kv *kv,
                                       const msa_attn_batch *b, float *scores, int stride,
                                       cudaStream_t st);

static size_t align16(size_t x) { return (x + 15) & ~(size_t)15; }

extern "C" size_t msa_cuda_index_scratch_size(int n_q, int n_seqs) {
    if (n_q < 0) n_q = 0;
    if (n_seqs < 1) n_seqs = 1;
    return align16((size_t)n_q * 4) + align16((size_t)n_seqs * 4);
}

__global__ void shift_positions_kernel(const int32_t *__restrict__ q_pos,
                                       const int32_t *__restrict__ seq_len, int n_q, int n_seqs,
                                       int delta, int32_t *__restrict__ q_pos_out,
                                       int32_t *__restrict__ seq_len_out) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    /* positions stay invalid if they were: negative stays negative, past the
     * sequence stays past the (shifted) sequence */
    if (t < n_q) q_pos_out[t] = q_pos[t] < 0 ? -1 : q_pos[t] - delta;
    if (t < n_seqs) seq_len_out[t] = seq_len[t] - delta;
}

extern "C" int msa_cuda_index_scores(const msa_attn_config *cfg, const msa_paged_kv *kv,
                                     const msa_attn_batch *b, int block0, int stride,
                                     float *scores, void *scratch, void *stream) {
    if (!cfg || !kv || !b || !scores || (b->n_q > 0 && !scratch))
        return msa_error(MSA_EINVAL, "msa_cuda_index_scores: NULL argument");
    if (b->n_q <= 0 || kv->max_blocks <= 0 || kv->n_seqs <= 0) return MSA_OK;
    msa_cuda_shape sh = {};
    sh.Hq = cfg->n_q_heads;
    sh.Hkv = cfg->n_kv_heads;
    sh.d_idx = cfg->idx_dim;
    sh.idx_heads = cfg->idx_key_heads;
    sh.Bk = cfg->block_size;
    sh.top_k = cfg->top_k;
    if (kv->dtype != MSA_DTYPE_BF16 && kv->dtype != MSA_DTYPE_F16)
        return msa_error(MSA_EUNSUPPORTED, "msa_cuda_index_scores: dtype %s (bf16 or f16)",
                         msa_dtype_name(kv->dtype));
    if (sh.Hkv <= 0 || (sh.idx_heads != 1 && sh.idx_heads != sh.Hkv))
        return msa_error(MSA_EINVAL, "msa_cuda_index_scores: idx_key_heads %d over %d KV heads",
                         sh.idx_heads, sh.Hkv);
    if ((sh.d_idx != 64 && sh.d_idx != 128) || sh.Bk % 16 || sh.Bk > 128 || sh.Bk <= 0)
        return msa_error(MSA_EUNSUPPORTED, "msa_cuda_index_scores: d_idx %d, block size %d "
                         "(64 or 128; a multiple of 16 up to 128)", sh.d_idx, sh.Bk);
    if (kv->n_seqs * sh.idx_heads > 65535)
        return msa_error(MSA_EUNSUPPORTED, "msa_cuda_index_scores: %d sequences x key heads",
                         kv->n_seqs * sh.idx_heads);
    if (((uintptr_t)kv->kidx | (uintptr_t)b->q_idx) & 15)
        return msa_error(MSA_EUNSUPPORTED, "msa_cuda_index_scores: kidx and q_idx must be "
                         "16-byte aligned");
    if (block0 < 0 || stride < block0 + kv->max_blocks)
        return msa_error(MSA_EINVAL, "msa_cuda_index_scores: blocks %d..%d over a stride of %d",
                         block0, block0 + kv->max_blocks - 1, stride);
    cudaStream_t st = (cudaStream_t)stream;
    int32_t *pos = (int32_t *)scratch;
    int32_t *len = (int32_t *)((char *)scratch + align16((size_t)b->n_q * 4));
    const int64_t delta = (int64_t)block0 * sh.Bk;
    if (delta > INT32_MAX) return msa_error(MSA_ERANGE, "msa_cuda_index_scores: block %d", block0);
    const int n = b->n_q > kv->n_seqs ? b->n_q : kv->n_seqs;
    shift_positions_kernel<<<(n + 255) / 256, 256, 0, st>>>(b->q_pos, kv->seq_len, b->n_q,
                                                            kv->n_seqs, (int)delta, pos, len);
    int rc = MSA_CUDA_LAUNCHED("index scores: shifted positions");
    if (rc) return rc;
    msa_paged_kv k2 = *kv;
    if (!k2.idx_indptr) k2.idx_indptr = kv->kv_indptr;
    if (!k2.idx_table) k2.idx_table = kv->kv_table;
    k2.seq_len = len;
    msa_attn_batch b2 = *b;
    b2.q_pos = pos;
    return msa_cuda_launch_index_scores_range(sh, &k2, &b2, scores + block0, stride, st);
}

/* ---- the generic scan and selection ----------------------------------------------- */

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) {
    return __bfloat162float(x);
}
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }

/* One thread per (row, group): block b = block0 + bb of the chunk (index
 * slot idx_table[bb]) gets the maximum of its visible token scores; only
 * blocks up to the row's local block are written. */
template <typename T>
__global__ void generic_scores_kernel(const T *__restrict__ qi, const T *__restrict__ kidx,
                                      const int32_t *__restrict__ table,
                                      const int32_t *__restrict__ posv,
                                      float *__restrict__ scores, int n, int Hkv, int KH, int di,
                                      int Bk, int block0, int nc, int stride, float scale) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n * Hkv) return;
    const int i = t / Hkv, g = t % Hkv, pos = posv[i];
    if (pos < 0) return;
    const int local = pos / Bk, kh = KH == 1 ? 0 : g;
    const T *q = qi + (size_t)t * di;
    float *sc = scores + (size_t)t * stride;
    for (int bb = 0; bb < nc; bb++) {
        const int b = block0 + bb;
        if (b > local) break;
        const int slot = table ? table[bb] : bb;
        float best = -INFINITY;
        if (slot >= 0)
            for (int j = b * Bk; j < b * Bk + Bk && j <= pos; j++) {
                const T *kr = kidx + (((size_t)slot * KH + kh) * Bk + (j % Bk)) * di;
                float s = 0.0f;
                for (int e = 0; e < di; e++) s += to_f(q[e]) * to_f(kr[e]);
                best = fmaxf(best, s * scale);
            }
        sc[b] = best;
    }
}

__global__ void generic_topk_kernel(const float *__restrict__ scores,
                                    const int32_t *__restrict__ posv, int32_t *__restrict__ sel,
                                    int n, int Hkv, int Bk, int top_k, int stride) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n * Hkv) return;
    const int pos = posv[t / Hkv];
    int32_t *o = sel + (size_t)t * top_k;
    if (pos < 0) {
        for (int k = 0; k < top_k; k++) o[k] = -1;
        return;
    }
    const int local = pos / Bk;
    const float *sc = scores + (size_t)t * stride;
    o[0] = local;
    float ps = INFINITY;
    int pb = -1;
    for (int k = 1; k < top_k; k++) {
        int bb = -1;
        float bs = -INFINITY;
        for (int b = 0; b < local && b < stride; b++) {
            const float s = sc[b];
            if (!(s > -INFINITY)) continue;
            const bool after = s < ps || (s == ps && b > pb); /* not yet taken */
            if (after && (bb < 0 || s > bs)) bb = b, bs = s;  /* ascending b: ties keep lower */
        }
        o[k] = bb;
        if (bb < 0) {
            for (int r = k + 1; r < top_k; r++) o[r] = -1;
            break;
        }
        ps = bs;
        pb = bb;
    }
}

extern "C" int msa_cuda_index_scores_generic(const msa_attn_config *cfg, const msa_paged_kv *kv,
                                             const msa_attn_batch *b, int block0, int stride,
                                             float *scores, void *stream) {
    if (!cfg || !kv || !b || !scores)
        return msa_error(MSA_EINVAL, "msa_cuda_index_scores_generic: NULL argument");
    if (b->n_q <= 0 || kv->max_blocks <= 0) return MSA_OK;
    if (kv->dtype != MSA_DTYPE_BF16 && kv->dtype != MSA_DTYPE_F16)
        return msa_error(MSA_EUNSUPPORTED, "msa_cuda_index_scores_generic: dtype %s",
                         msa_dtype_name(kv->dtype));
    const int Hkv = cfg->n_kv_heads, KH = cfg->idx_key_heads;
    if (Hkv <= 0 || (KH != 1 && KH != Hkv) || cfg->idx_dim <= 0 || cfg->block_size <= 0)
        return msa_error(MSA_EINVAL, "msa_cuda_index_scores_generic: bad shapes");
    if (block0 < 0 || stride < block0 + kv->max_blocks)
        return msa_error(MSA_EINVAL, "msa_cuda_index_scores_generic: blocks %d..%d over a "
                         "stride of %d", block0, block0 + kv->max_blocks - 1, stride);
    const int threads = b->n_q * Hkv;
    const float scale = 1.0f / sqrtf((float)cfg->idx_dim);
    const int32_t *table = kv->idx_table ? kv->idx_table : kv->kv_table;
    cudaStream_t st = (cudaStream_t)stream;
    if (kv->dtype == MSA_DTYPE_BF16)
        generic_scores_kernel<__nv_bfloat16><<<(threads + 63) / 64, 64, 0, st>>>(
            (const __nv_bfloat16 *)b->q_idx, (const __nv_bfloat16 *)kv->kidx, table, b->q_pos,
            scores, b->n_q, Hkv, KH, cfg->idx_dim, cfg->block_size, block0, kv->max_blocks,
            stride, scale);
    else
        generic_scores_kernel<__half><<<(threads + 63) / 64, 64, 0, st>>>(
            (const __half *)b->q_idx, (const __half *)kv->kidx, table, b->q_pos, scores, b->n_q,
            Hkv, KH, cfg->idx_dim, cfg->block_size, block0, kv->max_blocks, stride, scale);
    return MSA_CUDA_LAUNCHED("generic index scores");
}

extern "C" int msa_cuda_topk_generic(const msa_attn_config *cfg, const msa_attn_batch *b,
                                     int stride, const float *scores, int32_t *selected,
                                     void *stream) {
    if (!cfg || !b || !scores || !selected)
        return msa_error(MSA_EINVAL, "msa_cuda_topk_generic: NULL argument");
    if (b->n_q <= 0) return MSA_OK;
    if (cfg->top_k < 1 || cfg->block_size <= 0 || cfg->n_kv_heads <= 0)
        return msa_error(MSA_EINVAL, "msa_cuda_topk_generic: top_k %d", cfg->top_k);
    const int threads = b->n_q * cfg->n_kv_heads;
    generic_topk_kernel<<<(threads + 63) / 64, 64, 0, (cudaStream_t)stream>>>(
        scores, b->q_pos, selected, b->n_q, cfg->n_kv_heads, cfg->block_size, cfg->top_k,
        stride);
    return MSA_CUDA_LAUNCHED("generic top-k");
}
