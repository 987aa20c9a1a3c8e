/*
 * cuda_dispatch.cu: the C launchers of kernels/cuda.h. They turn the public
 * structs into the kernel shapes, carve the caller's workspace and queue the
 * kernels of index_score.cu, topk.cu and block_attn.cu on exec->stream.
 * Nothing here synchronises or allocates.
 *
 * Workspace (each piece 256-byte aligned), for n_q rows and max_blocks:
 *
 *   scores    [n_q][Hkv][max_blocks] f32   block scores (index -> top-k)
 *   selected  [n_q][Hkv][top_k]      i32   when the caller passes no selected
 *   partials  [n_q][Hq][n_split][d+2] f32  split-K partials (decode only)
 *
 * kernels/attention.c has validated the shapes on the host; the checks left
 * here are the ones only the device path has (dtype, head dims, workspace,
 * 16-byte alignment of the arrays the kernels read as vectors). The
 * pipeline itself is msa_cuda_run(), over a table of kernels (the
 * library's here; kernels/lab/ passes its older versions).
 */
#include "kernels/cuda_common.cuh"
#include "kernels/cuda.h"

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

static msa_cuda_shape make_shape(const msa_attn_config *cfg) {
    msa_cuda_shape sh;
    sh.Hq = cfg->n_q_heads;
    sh.Hkv = cfg->n_kv_heads;
    sh.G = cfg->n_kv_heads > 0 ? cfg->n_q_heads / cfg->n_kv_heads : 0;
    sh.d = cfg->head_dim;
    sh.d_idx = cfg->idx_dim;
    sh.idx_heads = cfg->idx_key_heads;
    sh.Bk = cfg->block_size;
    sh.top_k = cfg->top_k;
    sh.scale = cfg->scale > 0.0f ? cfg->scale : 1.0f / sqrtf((float)cfg->head_dim);
    return sh;
}

struct ws_layout {
    size_t scores, selected, partials, total;
    int split_sparse, split_dense;
};

static ws_layout ws_plan(const msa_cuda_shape &sh, int n_q, int max_blocks) {
    ws_layout w;
    w.split_sparse = msa_cuda_attn_splits(sh, n_q, max_blocks, 0);
    w.split_dense = msa_cuda_attn_splits(sh, n_q, max_blocks, 1);
    size_t ps = msa_cuda_partials_bytes(sh, n_q, w.split_sparse);
    size_t pd = msa_cuda_partials_bytes(sh, n_q, w.split_dense);
    w.scores = 0;
    w.selected = align256((size_t)n_q * sh.Hkv * max_blocks * sizeof(float));
    w.partials = w.selected + align256((size_t)n_q * sh.Hkv * sh.top_k * sizeof(int32_t));
    w.total = w.partials + align256(ps > pd ? ps : pd);
    return w;
}

extern "C" size_t msa_cuda_workspace_size(const msa_attn_config *cfg, int n_q, int max_blocks) {
    if (!cfg || n_q <= 0 || max_blocks <= 0 || cfg->n_kv_heads <= 0) return 0;
    return ws_plan(make_shape(cfg), n_q, max_blocks).total;
}

/* Checks shared by every launcher; fills the shape and the plan. */
static int prepare(const char *who, const msa_attn_config *cfg, const msa_paged_kv *kv,
                   const msa_attn_batch *b, const msa_exec *ex, msa_cuda_shape *sh, ws_layout *w,
                   bool needs_ws) {
    if (!cfg || !kv || !b || !ex) return msa_error(MSA_EINVAL, "%s: NULL argument", who);
    *sh = make_shape(cfg);
    if (kv->dtype != MSA_DTYPE_BF16 && kv->dtype != MSA_DTYPE_F16)
        return msa_error(MSA_EUNSUPPORTED, "%s: dtype %s on CUDA (bf16 or f16)", who, msa_dtype_name(kv->dtype));
    if (sh->Hkv <= 0 || sh->Hq % sh->Hkv)
        return msa_error(MSA_EINVAL, "%s: %d query heads over %d KV heads", who, sh->Hq, sh->Hkv);
    /* the kernels move 16-byte vectors */
    const void *ptrs[5] = {b->q, b->q_idx, kv->k, kv->v, kv->kidx};
    for (int i = 0; i < 5; i++)
        if ((uintptr_t)ptrs[i] & 15)
            return msa_error(MSA_EUNSUPPORTED, "%s: q, q_idx, k, v and kidx must be 16-byte aligned on CUDA", who);
    if (kv->max_blocks <= 0 && b->n_q > 0)
        return msa_error(MSA_EINVAL, "%s: kv->max_blocks must be set on CUDA", who);
    *w = ws_plan(*sh, b->n_q > 0 ? b->n_q : 1, kv->max_blocks > 0 ? kv->max_blocks : 1);
    if (needs_ws && b->n_q > 0 && (!ex->workspace || ex->workspace_size < w->total))
        return msa_error(MSA_EINVAL, "%s: workspace of %zu bytes given, %zu needed", who,
                         ex->workspace ? ex->workspace_size : (size_t)0, w->total);
    return MSA_OK;
}

static int select_into(const msa_cuda_impl *impl, const msa_cuda_shape &sh, const msa_paged_kv *kv,
                       const msa_attn_batch *b, const ws_layout &w, void *ws, int32_t *selected,
                       cudaStream_t st, const msa_cuda_tuning *tune) {
    if (sh.idx_heads != 1 && sh.idx_heads != sh.Hkv)
        return msa_error(MSA_EINVAL, "CUDA index: idx_key_heads %d (1 or %d)", sh.idx_heads, sh.Hkv);
    float *scores = (float *)((char *)ws + w.scores);
    int rc = impl->index_scores(sh, kv, b, scores, st, tune);
    if (rc) return rc;
    return msa_cuda_launch_topk(sh, kv, b, scores, selected, st, tune);
}

int msa_cuda_run(int call, const msa_cuda_impl *impl, const msa_attn_config *cfg,
                 const msa_paged_kv *kv, const msa_attn_batch *b, const msa_exec *ex,
                 const msa_cuda_tuning *tune) {
    static const char *const who[] = {"msa_attention (CUDA)", "msa_index_select (CUDA)",
                                      "msa_sparse_attention (CUDA)", "msa_dense_attention (CUDA)"};
    msa_cuda_shape sh;
    ws_layout w;
    int rc = prepare(who[call], cfg, kv, b, ex, &sh, &w, call != MSA_CUDA_CALL_DENSE);
    if (rc || b->n_q <= 0) return rc;
    cudaStream_t st = (cudaStream_t)ex->stream;
    switch (call) {
    case MSA_CUDA_CALL_SELECT:
        if (!b->selected) return msa_error(MSA_EINVAL, "msa_index_select: batch->selected is required");
        return select_into(impl, sh, kv, b, w, ex->workspace, b->selected, st, tune);
    case MSA_CUDA_CALL_SPARSE:
        if (!b->selected) return msa_error(MSA_EINVAL, "msa_sparse_attention: batch->selected is required");
        return impl->block_attn(sh, kv, b, b->selected, w.split_sparse,
                                (float *)((char *)ex->workspace + w.partials), st, tune);
    case MSA_CUDA_CALL_ATTN: {
        int32_t *sel = b->selected ? b->selected : (int32_t *)((char *)ex->workspace + w.selected);
        rc = select_into(impl, sh, kv, b, w, ex->workspace, sel, st, tune);
        if (rc) return rc;
        return impl->block_attn(sh, kv, b, sel, w.split_sparse,
                                (float *)((char *)ex->workspace + w.partials), st, tune);
    }
    default: {
        int split = w.split_dense;
        if (!ex->workspace || ex->workspace_size < w.total) split = 1; /* no room: one CTA per tile */
        return impl->block_attn(sh, kv, b, NULL, split,
                                split > 1 ? (float *)((char *)ex->workspace + w.partials) : NULL, st,
                                tune);
    }
    }
}

/* The library's kernels: the automatic versions only (the older ones are
 * in kernels/lab/). */
static int lib_index_scores(const msa_cuda_shape &sh, const msa_paged_kv *kv, const msa_attn_batch *b,
                            float *scores, cudaStream_t st, const msa_cuda_tuning *tune) {
    if (tune && tune->index_version != 0 && tune->index_version != 5)
        return msa_error(MSA_EUNSUPPORTED, "CUDA index scores: version %d is not in the library "
                         "(0 or 5; older ones: the kernel lab, kernels/lab/lab.h)", tune->index_version);
    return msa_cuda_launch_index_scores(sh, kv, b, scores, st);
}
static int lib_block_attn(const msa_cuda_shape &sh, const msa_paged_kv *kv, const msa_attn_batch *b,
                          const int32_t *selected, int n_split, float *partials, cudaStream_t st,
                          const msa_cuda_tuning *tune) {
    if (tune && tune->attn_version != 0 && tune->attn_version != 6)
        return msa_error(MSA_EUNSUPPORTED, "CUDA attention: version %d is not in the library "
                         "(0 or 6; older ones: the kernel lab, kernels/lab/lab.h)", tune->attn_version);
    return msa_cuda_launch_block_attn(sh, kv, b, selected, n_split, partials, st);
}
static const msa_cuda_impl lib_impl = {lib_index_scores, lib_block_attn};

extern "C" int msa_cuda_index_select(const msa_attn_config *cfg, const msa_paged_kv *kv,
                                     const msa_attn_batch *b, const msa_exec *ex,
                                     const msa_cuda_tuning *tune) {
    return msa_cuda_run(MSA_CUDA_CALL_SELECT, &lib_impl, cfg, kv, b, ex, tune);
}

extern "C" int msa_cuda_sparse_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                                         const msa_attn_batch *b, const msa_exec *ex,
                                         const msa_cuda_tuning *tune) {
    return msa_cuda_run(MSA_CUDA_CALL_SPARSE, &lib_impl, cfg, kv, b, ex, tune);
}

extern "C" int msa_cuda_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                                  const msa_attn_batch *b, const msa_exec *ex,
                                  const msa_cuda_tuning *tune) {
    return msa_cuda_run(MSA_CUDA_CALL_ATTN, &lib_impl, cfg, kv, b, ex, tune);
}

extern "C" int msa_cuda_dense_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                                        const msa_attn_batch *b, const msa_exec *ex,
                                        const msa_cuda_tuning *tune) {
    return msa_cuda_run(MSA_CUDA_CALL_DENSE, &lib_impl, cfg, kv, b, ex, tune);
}

extern "C" int msa_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no device" error */
        return 0;
    }
    return n;
}
