/*
 * block_attn.cu: the attention launcher of the library (sparse over the
 * selected blocks, and the dense baseline). The kernels, their history and
 * the work decomposition are described in block_attn.cuh; this file picks
 * the version per call: sparse prefill runs v6 (block_attn6_kernel, 64-token
 * stages, 2 in flight, 4 warps), everything else block_attn_kernel in the
 * decode or prefill tiling. The older sparse prefill versions (v6 with
 * 32-token stages, v5, v4) are in kernels/lab/, outside the library.
 */
#include "kernels/block_attn.cuh"

int msa_cuda_attn_splits(const msa_cuda_shape &sh, int n_q, int max_blocks, int dense) {
    const long tiles = ((long)n_q * sh.G + 15) / 16 * sh.Hkv; /* CTAs without splitting */
    const long target = 4 * 132;                              /* about 4 waves on an H100 */
    long n = (target + tiles - 1) / tiles;
    long cap = dense ? (max_blocks + 3) / 4 : sh.top_k;       /* >= 4 blocks per split (dense) */
    if (n > cap) n = cap;
    if (n < 1) n = 1;
    /* keep the partials under 1 GB */
    while (n > 1 && (double)n_q * sh.Hq * n * (sh.d + 2) * 4 > 1e9) n--;
    return (int)n;
}

template <typename T, int D>
static int launch_d(attn_args &a, int n_q, bool sparse, bool prefill, bool few, cudaStream_t st) {
    if (prefill && sparse) return launch_attn6<T, D, 4, 64, 2>(a, n_q, st);
    /* dense prefill: 4 warps x 16 vectors; decode: 16 vectors, 2 warps
     * splitting each block's tokens (two CTAs fit on an SM, so one CTA's
     * loads overlap the other's math) */
    if (prefill) return launch_attn<T, D, 4, 1, false>(a, n_q, st);
    if (few) /* no more CTAs than SMs: nothing to overlap with, so 4 warps per block */
        return sparse ? launch_attn<T, D, 1, 4, true>(a, n_q, st) : launch_attn<T, D, 1, 4, false>(a, n_q, st);
    return sparse ? launch_attn<T, D, 1, 2, true>(a, n_q, st) : launch_attn<T, D, 1, 2, false>(a, n_q, st);
}

int msa_cuda_launch_block_attn(const msa_cuda_shape &sh, const msa_paged_kv *kv,
                               const msa_attn_batch *b, const int32_t *selected, int n_split,
                               float *partials, cudaStream_t st) {
    if (b->n_q <= 0 || kv->n_seqs <= 0) return MSA_OK;
    attn_args a;
    bool prefill = false, few = false;
    int rc = attn_prepare(sh, kv, b, selected, n_split, partials, false, &a, &prefill, &few);
    if (rc) return rc;
    const bool sparse = selected != NULL;
    const bool bf = kv->dtype == MSA_DTYPE_BF16;
    if (sh.d == 128) return bf ? launch_d<__nv_bfloat16, 128>(a, b->n_q, sparse, prefill, few, st)
                               : launch_d<__half, 128>(a, b->n_q, sparse, prefill, few, st);
    if (sh.d == 64) return bf ? launch_d<__nv_bfloat16, 64>(a, b->n_q, sparse, prefill, few, st)
                              : launch_d<__half, 64>(a, b->n_q, sparse, prefill, few, st);
    return msa_error(MSA_EUNSUPPORTED, "CUDA attention: head dim %d (64 or 128)", sh.d);
}
