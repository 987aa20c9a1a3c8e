/*
 * index_score.cu: the library's launchers of MSA's index scan (kernels and
 * version history in index_score.cuh): decode (at most 32 query vectors per
 * sequence and key head) runs index_scores_kernel with one 32-vector chunk,
 * prefill runs v5 (index_scores5_kernel). The previous prefill scan (v4:
 * index_scores_kernel with two 64-vector chunks) is in kernels/lab/.
 */
#include "kernels/index_score.cuh"

template <typename T, int DI>
static int launch_t(const msa_cuda_shape &sh, const msa_paged_kv *kv, const msa_attn_batch *bt,
                    float *scores, cudaStream_t st) {
    int qv, nbuf;
    index_chunking(sh, kv, bt, &qv, &nbuf);
    size_t smem = index_smem_bytes<DI>(sh.Bk, qv, nbuf);
    static size_t optin[MSA_CUDA_MAX_DEVICES], optin5[MSA_CUDA_MAX_DEVICES];
    int rc = msa_cuda_smem_optin((const void *)index_scores_kernel<T, DI>, index_smem_bytes<DI>(128, IDX_QV, 2), optin,
                                 "index scores: shared memory limit");
    if (rc) return rc;
    const int32_t *indptr = kv->idx_indptr ? kv->idx_indptr : kv->kv_indptr;
    const int32_t *table = kv->idx_table ? kv->idx_table : kv->kv_table;
    dim3 grid(kv->max_blocks, kv->n_seqs * sh.idx_heads);
    if (nbuf == 2) { /* prefill: v5 */
        rc = msa_cuda_smem_optin((const void *)index_scores5_kernel<T, DI>, index5_smem_bytes<DI>(128), optin5,
                                 "index scores v5: shared memory limit");
        if (rc) return rc;
        index_scores5_kernel<T, DI><<<grid, IDX_WARPS * 32, index5_smem_bytes<DI>(sh.Bk), st>>>(
            (const T *)kv->kidx, indptr, table, kv->seq_len, bt->q_indptr, bt->q_pos, (const T *)bt->q_idx, scores,
            sh.Hkv, sh.idx_heads, sh.Bk, kv->max_blocks, 1.0f / sqrtf((float)sh.d_idx));
        return MSA_CUDA_LAUNCHED("index scores kernel v5");
    }
    index_scores_kernel<T, DI><<<grid, IDX_WARPS * 32, smem, st>>>(
        (const T *)kv->kidx, indptr, table, kv->seq_len, bt->q_indptr, bt->q_pos,
        (const T *)bt->q_idx, scores, sh.Hkv, sh.idx_heads, sh.Bk, kv->max_blocks,
        1.0f / sqrtf((float)sh.d_idx), qv, nbuf);
    return MSA_CUDA_LAUNCHED("index scores kernel");
}

int msa_cuda_launch_index_scores(const msa_cuda_shape &sh, const msa_paged_kv *kv,
                                 const msa_attn_batch *b, float *scores, cudaStream_t st) {
    if (kv->max_blocks <= 0 || kv->n_seqs <= 0) return MSA_OK;
    if (sh.Bk % 16 || sh.Bk > 128)
        return msa_error(MSA_EUNSUPPORTED, "CUDA index scores: block size %d (need a multiple of 16, at most 128)", sh.Bk);
    if (kv->n_seqs * sh.idx_heads > 65535)
        return msa_error(MSA_EUNSUPPORTED, "CUDA index scores: %d sequences x key heads", kv->n_seqs * sh.idx_heads);
    const bool bf = kv->dtype == MSA_DTYPE_BF16;
    if (sh.d_idx == 128) return bf ? launch_t<__nv_bfloat16, 128>(sh, kv, b, scores, st)
                                   : launch_t<__half, 128>(sh, kv, b, scores, st);
    if (sh.d_idx == 64) return bf ? launch_t<__nv_bfloat16, 64>(sh, kv, b, scores, st)
                                  : launch_t<__half, 64>(sh, kv, b, scores, st);
    return msa_error(MSA_EUNSUPPORTED, "CUDA index scores: d_idx %d (64 or 128)", sh.d_idx);
}

/* ---- a range of blocks (kernels/index_paged.cu) ----------------------------------
 * The kernel above over the kv->max_blocks blocks of kv (grid x), writing
 * row (i, r) at scores[(i * Hkv + r) * stride + b]. index_paged.cu points
 * `scores` at the range's first column and passes positions and lengths
 * relative to the range, so that every CTA computes exactly what it
 * computes for the same block in a whole-sequence launch. */
template <typename T, int DI>
static int launch_range_t(const msa_cuda_shape &sh, const msa_paged_kv *kv,
                          const msa_attn_batch *bt, float *scores, int stride, cudaStream_t st) {
    int qv, nbuf;
    index_chunking(sh, kv, bt, &qv, &nbuf);
    size_t smem = index_smem_bytes<DI>(sh.Bk, qv, nbuf);
    static size_t optin[MSA_CUDA_MAX_DEVICES], optin5[MSA_CUDA_MAX_DEVICES];
    int rc = msa_cuda_smem_optin((const void *)index_scores_kernel<T, DI>, index_smem_bytes<DI>(128, IDX_QV, 2),
                                 optin, "index scores: shared memory limit");
    if (rc) return rc;
    dim3 grid(kv->max_blocks, kv->n_seqs * sh.idx_heads);
    if (nbuf == 2) { /* prefill: v5 */
        rc = msa_cuda_smem_optin((const void *)index_scores5_kernel<T, DI>, index5_smem_bytes<DI>(128), optin5,
                                 "index scores v5: shared memory limit");
        if (rc) return rc;
        index_scores5_kernel<T, DI><<<grid, IDX_WARPS * 32, index5_smem_bytes<DI>(sh.Bk), st>>>(
            (const T *)kv->kidx, kv->idx_indptr, kv->idx_table, kv->seq_len, bt->q_indptr, bt->q_pos,
            (const T *)bt->q_idx, scores, sh.Hkv, sh.idx_heads, sh.Bk, stride, 1.0f / sqrtf((float)sh.d_idx));
        return MSA_CUDA_LAUNCHED("index scores kernel v5 (block range)");
    }
    index_scores_kernel<T, DI><<<grid, IDX_WARPS * 32, smem, st>>>(
        (const T *)kv->kidx, kv->idx_indptr, kv->idx_table, kv->seq_len, bt->q_indptr, bt->q_pos,
        (const T *)bt->q_idx, scores, sh.Hkv, sh.idx_heads, sh.Bk, stride,
        1.0f / sqrtf((float)sh.d_idx), qv, nbuf);
    return MSA_CUDA_LAUNCHED("index scores kernel (block range)");
}

int msa_cuda_launch_index_scores_range(const msa_cuda_shape &sh, const msa_paged_kv *kv,
                                       const msa_attn_batch *b, float *scores, int stride,
                                       cudaStream_t st) {
    if (kv->max_blocks <= 0 || kv->n_seqs <= 0) return MSA_OK;
    const bool bf = kv->dtype == MSA_DTYPE_BF16;
    if (sh.d_idx == 128) return bf ? launch_range_t<__nv_bfloat16, 128>(sh, kv, b, scores, stride, st)
                                   : launch_range_t<__half, 128>(sh, kv, b, scores, stride, st);
    return bf ? launch_range_t<__nv_bfloat16, 64>(sh, kv, b, scores, stride, st)
              : launch_range_t<__half, 64>(sh, kv, b, scores, stride, st);
}
