/*
 * index_score_lab.cu: v4's prefill index scan (index_scores_kernel of
 * kernels/index_score.cuh with double-buffered 64-vector query chunks), the
 * default before v5. Decode (one 32-vector chunk) is the same in both, and
 * goes to the library's launcher, as does index_version 0 or 5.
 */
#include "kernels/index_score.cuh"
#include "kernels/lab/lab.h"

template <typename T, int DI>
static int launch_v4(const msa_cuda_shape &sh, const msa_paged_kv *kv, const msa_attn_batch *bt,
                     float *scores, int qv, int nbuf, cudaStream_t st) {
    static size_t optin[MSA_CUDA_MAX_DEVICES];
    int rc = msa_cuda_smem_optin((const void *)index_scores_kernel<T, DI>, index_smem_bytes<DI>(128, IDX_QV, 2), optin,
                                 "index scores: shared memory limit");
    if (rc) return rc;
    const int32_t *indptr = kv->idx_indptr ? kv->idx_indptr : kv->kv_indptr;
    const int32_t *table = kv->idx_table ? kv->idx_table : kv->kv_table;
    dim3 grid(kv->max_blocks, kv->n_seqs * sh.idx_heads);
    index_scores_kernel<T, DI><<<grid, IDX_WARPS * 32, index_smem_bytes<DI>(sh.Bk, qv, nbuf), st>>>(
        (const T *)kv->kidx, indptr, table, kv->seq_len, bt->q_indptr, bt->q_pos,
        (const T *)bt->q_idx, scores, sh.Hkv, sh.idx_heads, sh.Bk, kv->max_blocks,
        1.0f / sqrtf((float)sh.d_idx), qv, nbuf);
    return MSA_CUDA_LAUNCHED("index scores kernel v4");
}

int msa_cuda_lab_launch_index_scores(const msa_cuda_shape &sh, const msa_paged_kv *kv,
                                     const msa_attn_batch *b, float *scores, cudaStream_t st,
                                     const msa_cuda_tuning *tune) {
    const int ver = tune ? tune->index_version : 0;
    if (ver != 0 && ver != 4 && ver != 5)
        return msa_error(MSA_EUNSUPPORTED, "CUDA index scores (lab): version %d (0, 4 or 5)", ver);
    if (ver != 4 || kv->max_blocks <= 0 || kv->n_seqs <= 0)
        return msa_cuda_launch_index_scores(sh, kv, b, scores, st);
    int qv, nbuf;
    index_chunking(sh, kv, b, &qv, &nbuf);
    if (nbuf != 2) return msa_cuda_launch_index_scores(sh, kv, b, scores, st); /* decode */
    /* the library launcher's shape checks, then v4 */
    if (sh.Bk % 16 || sh.Bk > 128)
        return msa_error(MSA_EUNSUPPORTED, "CUDA index scores: block size %d (need a multiple of 16, at most 128)", sh.Bk);
    if (kv->n_seqs * sh.idx_heads > 65535)
        return msa_error(MSA_EUNSUPPORTED, "CUDA index scores: %d sequences x key heads", kv->n_seqs * sh.idx_heads);
    const bool bf = kv->dtype == MSA_DTYPE_BF16;
    if (sh.d_idx == 128) return bf ? launch_v4<__nv_bfloat16, 128>(sh, kv, b, scores, qv, nbuf, st)
                                   : launch_v4<__half, 128>(sh, kv, b, scores, qv, nbuf, st);
    if (sh.d_idx == 64) return bf ? launch_v4<__nv_bfloat16, 64>(sh, kv, b, scores, qv, nbuf, st)
                                  : launch_v4<__half, 64>(sh, kv, b, scores, qv, nbuf, st);
    return msa_error(MSA_EUNSUPPORTED, "CUDA index scores: d_idx %d (64 or 128)", sh.d_idx);
}
