/*
 * block_attn_lab.cu: the older sparse prefill attention kernels (kernels/
 * lab/lab.h lists them), instantiated from kernels/block_attn.cuh with the
 * shapes they had when they were the default. Decode, dense and the current
 * version go to the library's launcher.
 */
#include "kernels/block_attn.cuh"
#include "kernels/lab/lab.h"

template <typename T, int D>
static int launch_lab(attn_args &a, int n_q, int ver, cudaStream_t st) {
    if (ver == 7) return launch_attn6<T, D, 2, 32, 3>(a, n_q, st);
    if (ver == 5) {
        /* v5 gather: tiles of 16 vectors (one row, or 16/G rows), 2 token
         * warps, half blocks staged so that 3 CTAs share an SM */
        if (a.Bk % 32 == 0) return launch_attn<T, D, 1, 2, true, 2>(a, n_q, st);
        return launch_attn<T, D, 1, 2, true, 1>(a, n_q, st);
    }
    return launch_attn<T, D, 4, 1, true>(a, n_q, st); /* v4: 4 warps x 16 vectors */
}

int msa_cuda_lab_launch_block_attn(const msa_cuda_shape &sh, const msa_paged_kv *kv,
                                   const msa_attn_batch *b, const int32_t *selected, int n_split,
                                   float *partials, cudaStream_t st, const msa_cuda_tuning *tune) {
    const int ver = tune ? tune->attn_version : 0;
    if (ver != 0 && ver != 4 && ver != 5 && ver != 6 && ver != 7)
        return msa_error(MSA_EUNSUPPORTED, "CUDA attention (lab): version %d (0, 4, 5, 6 or 7)", ver);
    if (ver == 0 || ver == 6 || !selected || b->n_q <= 0 || kv->n_seqs <= 0)
        return msa_cuda_launch_block_attn(sh, kv, b, selected, n_split, partials, st);
    attn_args a;
    bool prefill = false, few = false;
    int rc = attn_prepare(sh, kv, b, selected, n_split, partials, ver == 4, &a, &prefill, &few);
    if (rc) return rc;
    if (!prefill) return msa_cuda_launch_block_attn(sh, kv, b, selected, n_split, partials, st);
    const bool bf = kv->dtype == MSA_DTYPE_BF16;
    if (sh.d == 128) return bf ? launch_lab<__nv_bfloat16, 128>(a, b->n_q, ver, st)
                               : launch_lab<__half, 128>(a, b->n_q, ver, st);
    if (sh.d == 64) return bf ? launch_lab<__nv_bfloat16, 64>(a, b->n_q, ver, st)
                              : launch_lab<__half, 64>(a, b->n_q, ver, st);
    return msa_error(MSA_EUNSUPPORTED, "CUDA attention: head dim %d (64 or 128)", sh.d);
}
