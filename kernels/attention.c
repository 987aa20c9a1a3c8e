/*
 * attention.c: the public MSA attention calls (engine/msa.h section 2):
 * argument validation and dispatch to the CPU references (kernels/ref.h) or
 * the CUDA launchers (kernels/cuda.h).
 *
 * Every check that can be made on the host is made here, on the calling
 * thread, before any work starts, so that a failure leaves a message that
 * names the field and the value ("kv->idx_table[7] = -1: sequence 0, block
 * 7, seen by row 3 (q_pos 1000)"). On the CPU that includes the metadata
 * arrays (positions, CSR tables, slots, the selection); on CUDA those live on
 * the device, so only the config, dtypes, head dims, pointers and
 * workspace are checked and the kernels treat bad metadata as empty.
 *
 * The CPU backend is fp32 only. Its references trust what this file checked.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "kernels/ref.h"
#ifdef MSA_HAVE_CUDA
#include "kernels/cuda.h"
#endif

/* What a call reads and writes. */
enum {
    NEED_INDEX = 1, /* q_idx, kidx, index table */
    NEED_KV = 2,    /* q, k, v, KV table, out */
    SEL_IN = 4,     /* batch->selected is an input */
    SEL_OUT = 8,    /* batch->selected is a required output */
};

msa_attn_config msa_attn_default_config(void) {
    msa_attn_config c;
    memset(&c, 0, sizeof c);
    c.idx_key_heads = 1;
    c.block_size = 128;
    c.top_k = 16;
    c.scale = 0.0f;
    return c;
}

msa_exec msa_exec_default(void) {
    msa_exec e;
    memset(&e, 0, sizeof e);
    e.device = MSA_DEVICE_CPU;
    return e;
}

int msa_cuda_available(void) {
#ifdef MSA_HAVE_CUDA
    return msa_cuda_device_count() > 0;
#else
    return 0;
#endif
}

size_t msa_attention_workspace_size(const msa_attn_config *cfg, int n_q, int max_blocks) {
#ifdef MSA_HAVE_CUDA
    if (!cfg || n_q <= 0 || max_blocks <= 0) return 0;
    return msa_cuda_workspace_size(cfg, n_q, max_blocks);
#else
    (void)cfg, (void)n_q, (void)max_blocks;
    return 0;
#endif
}

/* ---- host checks (both devices) ------------------------------------------ */

static int check_config(const char *fn, const msa_attn_config *c, int need) {
    if (c->n_q_heads <= 0)
        return msa_error(MSA_EINVAL, "%s: cfg->n_q_heads = %d, must be > 0", fn, c->n_q_heads);
    if (c->n_kv_heads <= 0)
        return msa_error(MSA_EINVAL, "%s: cfg->n_kv_heads = %d, must be > 0", fn, c->n_kv_heads);
    if (c->n_q_heads % c->n_kv_heads)
        return msa_error(MSA_EINVAL, "%s: cfg->n_kv_heads = %d does not divide "
                         "cfg->n_q_heads = %d", fn, c->n_kv_heads, c->n_q_heads);
    if (c->block_size <= 0)
        return msa_error(MSA_EINVAL, "%s: cfg->block_size = %d, must be > 0", fn, c->block_size);
    if ((need & (NEED_INDEX | SEL_IN)) && c->top_k <= 0)
        return msa_error(MSA_EINVAL, "%s: cfg->top_k = %d, must be > 0", fn, c->top_k);
    if (need & NEED_KV) {
        if (c->head_dim <= 0)
            return msa_error(MSA_EINVAL, "%s: cfg->head_dim = %d, must be > 0", fn, c->head_dim);
        if (!(c->scale >= 0.0f) || isinf(c->scale))
            return msa_error(MSA_EINVAL, "%s: cfg->scale = %g, must be finite and >= 0 "
                             "(0 means 1/sqrt(head_dim))", fn, (double)c->scale);
    }
    if (need & NEED_INDEX) {
        if (c->idx_dim <= 0)
            return msa_error(MSA_EINVAL, "%s: cfg->idx_dim = %d, must be > 0", fn, c->idx_dim);
        if (c->idx_key_heads != 1 && c->idx_key_heads != c->n_kv_heads)
            return msa_error(MSA_EINVAL, "%s: cfg->idx_key_heads = %d, must be 1 or "
                             "n_kv_heads = %d", fn, c->idx_key_heads, c->n_kv_heads);
    }
    return MSA_OK;
}

#define NEED_PTR(ptr)                                                          \
    do {                                                                       \
        if (!(ptr)) return msa_error(MSA_EINVAL, "%s: %s is NULL", fn, #ptr);  \
    } while (0)

/* Struct fields and pointers, no array contents: valid on both devices. */
static int check_host(const char *fn, const msa_attn_config *cfg, const msa_paged_kv *kv,
                      const msa_attn_batch *batch, const msa_exec *exec, int need) {
    if (!cfg || !kv || !batch)
        return msa_error(MSA_EINVAL, "%s: %s is NULL", fn, !cfg ? "cfg" : !kv ? "kv" : "batch");
    if (exec->device != MSA_DEVICE_CPU && exec->device != MSA_DEVICE_CUDA)
        return msa_error(MSA_EINVAL, "%s: exec->device = %d is not a msa_device_kind", fn,
                         (int)exec->device);
    if (exec->device == MSA_DEVICE_CPU && exec->n_threads < 0)
        return msa_error(MSA_EINVAL, "%s: exec->n_threads = %d, must be >= 0 (0: one per "
                         "core)", fn, exec->n_threads);
    int rc = check_config(fn, cfg, need);
    if (rc) return rc;
    if (kv->dtype != MSA_DTYPE_F32 && kv->dtype != MSA_DTYPE_F16 && kv->dtype != MSA_DTYPE_BF16)
        return msa_error(MSA_EINVAL, "%s: kv->dtype = %d is not a msa_dtype", fn, (int)kv->dtype);
    if (kv->n_seqs <= 0)
        return msa_error(MSA_EINVAL, "%s: kv->n_seqs = %d, must be > 0", fn, kv->n_seqs);
    if (kv->max_blocks < 0)
        return msa_error(MSA_EINVAL, "%s: kv->max_blocks = %d, must be >= 0", fn, kv->max_blocks);
    if (batch->n_q < 0)
        return msa_error(MSA_EINVAL, "%s: batch->n_q = %d, must be >= 0", fn, batch->n_q);
    NEED_PTR(kv->seq_len);
    NEED_PTR(batch->q_indptr);
    if (batch->n_q > 0) NEED_PTR(batch->q_pos);
    if (need & NEED_KV) {
        NEED_PTR(kv->k);
        NEED_PTR(kv->v);
        NEED_PTR(kv->kv_indptr);
        NEED_PTR(kv->kv_table);
        if (batch->n_q > 0) {
            NEED_PTR(batch->q);
            NEED_PTR(batch->out);
        }
    }
    if (need & NEED_INDEX) {
        NEED_PTR(kv->kidx);
        if (!kv->idx_indptr && !kv->kv_indptr)
            return msa_error(MSA_EINVAL, "%s: kv->idx_indptr is NULL (same as KV) and so is "
                             "kv->kv_indptr", fn);
        if (!kv->idx_table && !kv->kv_table)
            return msa_error(MSA_EINVAL, "%s: kv->idx_table is NULL (same as KV) and so is "
                             "kv->kv_table", fn);
        if (batch->n_q > 0) NEED_PTR(batch->q_idx);
    }
    if ((need & (SEL_IN | SEL_OUT)) && batch->n_q > 0) NEED_PTR(batch->selected);
    return MSA_OK;
}

/* ---- CPU checks of the metadata arrays -------------------------------------- */

static int64_t n_blocks_of(int64_t len, int Bk) { return (len + Bk - 1) / Bk; }

/* Checks one CSR table against the sequence lengths. */
static int check_csr(const char *fn, const char *name, const int32_t *indptr,
                     const msa_paged_kv *kv, int Bk) {
    if (indptr[0] < 0)
        return msa_error(MSA_EINVAL, "%s: %s[0] = %d, must be >= 0", fn, name, indptr[0]);
    for (int s = 0; s < kv->n_seqs; s++) {
        int64_t have = (int64_t)indptr[s + 1] - indptr[s];
        int64_t nb = n_blocks_of(kv->seq_len[s], Bk);
        if (have < nb)
            return msa_error(MSA_EINVAL, "%s: %s gives sequence %d %lld table entries "
                             "(%s[%d] = %d, %s[%d] = %d) but its seq_len %d needs %lld "
                             "blocks of %d tokens", fn, name, s, (long long)have, name, s,
                             indptr[s], name, s + 1, indptr[s + 1], kv->seq_len[s],
                             (long long)nb, Bk);
    }
    return MSA_OK;
}

/* Checks the slots of blocks 0 .. local of every row's sequence. */
static int check_slots(const char *fn, const char *tname, const int32_t *indptr,
                       const int32_t *table, const msa_ref_problem *p) {
    for (int s = 0; s < p->n_seqs; s++) {
        int top = -1, who = -1; /* the largest local block, and its row */
        for (int i = p->q_indptr[s]; i < p->q_indptr[s + 1]; i++)
            if (p->q_pos[i] / p->Bk > top) top = p->q_pos[i] / p->Bk, who = i;
        for (int b = 0; b <= top; b++) {
            int32_t slot = table[indptr[s] + b];
            if (slot < 0)
                return msa_error(MSA_EINVAL, "%s: %s[%d] = %d: sequence %d, block %d, seen "
                                 "by row %d (q_pos %d), has no slot", fn, tname,
                                 indptr[s] + b, slot, s, b, who, p->q_pos[who]);
        }
    }
    return MSA_OK;
}

/* Checks a selection [n_q][Hkv][top_k]: entries -1 or visible blocks
 * 0 .. local, no block twice in a (row, group), and (when the KV is read)
 * each block with a KV slot. `origin` says who wrote it, for the message. */
static int check_selected(const char *fn, const msa_ref_problem *p, const int32_t *sel,
                          int check_kv, const char *origin) {
    int max_local = 0;
    for (int i = 0; i < p->n_q; i++)
        if (p->q_pos[i] / p->Bk > max_local) max_local = p->q_pos[i] / p->Bk;
    unsigned char *seen = calloc((size_t)max_local + 1, 1);
    if (!seen)
        return msa_error(MSA_ENOMEM, "%s: cannot allocate %d bytes", fn, max_local + 1);
    int rc = MSA_OK;
    for (int i = 0; i < p->n_q && !rc; i++) {
        int s = msa_ref_row_seq(p, i), local = p->q_pos[i] / p->Bk;
        for (int g = 0; g < p->Hkv && !rc; g++) {
            const int32_t *e = sel + ((size_t)i * p->Hkv + g) * p->top_k;
            int j = 0;
            for (; j < p->top_k; j++) {
                int32_t b = e[j];
                if (b == -1) continue;
                size_t at = ((size_t)i * p->Hkv + g) * p->top_k + j;
                if (b < 0 || b > local) {
                    rc = msa_error(MSA_EINVAL, "%s: %sselected[%zu] = %d (row %d, group %d, "
                                   "entry %d): must be -1 or a visible block 0..%d "
                                   "(q_pos %d)", fn, origin, at, b, i, g, j, local,
                                   p->q_pos[i]);
                    break;
                }
                if (seen[b]) {
                    rc = msa_error(MSA_EINVAL, "%s: %sselected[%zu] = %d (row %d, group %d, "
                                   "entry %d): block %d is selected twice", fn, origin, at,
                                   b, i, g, j, b);
                    break;
                }
                seen[b] = 1;
                if (check_kv) {
                    int32_t slot = p->kv_table[p->kv_indptr[s] + b];
                    if (slot < 0) {
                        rc = msa_error(MSA_EINVAL, "%s: %sselected[%zu] = %d (row %d, group "
                                       "%d) but kv->kv_table[%d] = %d: the selected block "
                                       "has no KV slot", fn, origin, at, b, i, g,
                                       p->kv_indptr[s] + b, slot);
                        break;
                    }
                }
            }
            for (int u = 0; u < j; u++) /* clear what this (row, group) marked */
                if (e[u] >= 0 && e[u] <= local) seen[e[u]] = 0;
        }
    }
    free(seen);
    return rc;
}

/* Checks the metadata arrays and fills the problem for the references. */
static int check_cpu(const char *fn, const msa_attn_config *cfg, const msa_paged_kv *kv,
                     const msa_attn_batch *batch, const msa_exec *exec, int need,
                     msa_ref_problem *p) {
    if (kv->dtype != MSA_DTYPE_F32)
        return msa_error(MSA_EUNSUPPORTED, "%s: kv->dtype = %s: the CPU backend runs F32 "
                         "only (convert to F32, or run on CUDA)", fn,
                         msa_dtype_name(kv->dtype));
    const int Bk = cfg->block_size;
    memset(p, 0, sizeof *p);
    p->Hq = cfg->n_q_heads;
    p->Hkv = cfg->n_kv_heads;
    p->G = p->Hq / p->Hkv;
    p->d = cfg->head_dim;
    p->di = cfg->idx_dim;
    p->KH = cfg->idx_key_heads;
    p->Bk = Bk;
    p->top_k = cfg->top_k;
    p->scale = cfg->scale > 0.0f ? cfg->scale
                                 : (cfg->head_dim > 0 ? 1.0f / sqrtf((float)cfg->head_dim) : 1.0f);
    p->k = kv->k;
    p->v = kv->v;
    p->kidx = kv->kidx;
    p->kv_indptr = kv->kv_indptr;
    p->kv_table = kv->kv_table;
    p->idx_indptr = kv->idx_indptr ? kv->idx_indptr : kv->kv_indptr;
    p->idx_table = kv->idx_table ? kv->idx_table : kv->kv_table;
    p->seq_len = kv->seq_len;
    p->n_seqs = kv->n_seqs;
    p->n_q = batch->n_q;
    p->q_indptr = batch->q_indptr;
    p->q_pos = batch->q_pos;
    p->q = batch->q;
    p->q_idx = batch->q_idx;
    p->out = batch->out;
    p->lse = batch->lse;
    p->n_threads = exec->n_threads;

    for (int s = 0; s < kv->n_seqs; s++) {
        if (kv->seq_len[s] < 0)
            return msa_error(MSA_EINVAL, "%s: kv->seq_len[%d] = %d, must be >= 0", fn, s,
                             kv->seq_len[s]);
        int64_t nb = n_blocks_of(kv->seq_len[s], Bk);
        if (kv->max_blocks > 0 && nb > kv->max_blocks)
            return msa_error(MSA_EINVAL, "%s: kv->seq_len[%d] = %d needs %lld blocks of %d, "
                             "more than kv->max_blocks = %d", fn, s, kv->seq_len[s],
                             (long long)nb, Bk, kv->max_blocks);
    }
    if (batch->q_indptr[0] != 0)
        return msa_error(MSA_EINVAL, "%s: batch->q_indptr[0] = %d, must be 0", fn,
                         batch->q_indptr[0]);
    for (int s = 0; s < kv->n_seqs; s++)
        if (batch->q_indptr[s + 1] < batch->q_indptr[s])
            return msa_error(MSA_EINVAL, "%s: batch->q_indptr decreases at sequence %d "
                             "(%d then %d)", fn, s, batch->q_indptr[s], batch->q_indptr[s + 1]);
    if (batch->q_indptr[kv->n_seqs] != batch->n_q)
        return msa_error(MSA_EINVAL, "%s: batch->q_indptr[n_seqs = %d] = %d, must equal "
                         "batch->n_q = %d", fn, kv->n_seqs, batch->q_indptr[kv->n_seqs],
                         batch->n_q);
    for (int s = 0; s < kv->n_seqs; s++)
        for (int i = batch->q_indptr[s]; i < batch->q_indptr[s + 1]; i++)
            if (batch->q_pos[i] < 0 || batch->q_pos[i] >= kv->seq_len[s])
                return msa_error(MSA_EINVAL, "%s: batch->q_pos[%d] = %d is outside sequence "
                                 "%d (seq_len %d)", fn, i, batch->q_pos[i], s, kv->seq_len[s]);
    int rc;
    if (need & NEED_INDEX) {
        const char *ip = kv->idx_indptr ? "kv->idx_indptr" : "kv->kv_indptr (as idx_indptr)";
        const char *it = kv->idx_table ? "kv->idx_table" : "kv->kv_table (as idx_table)";
        if ((rc = check_csr(fn, ip, p->idx_indptr, kv, Bk))) return rc;
        if ((rc = check_slots(fn, it, p->idx_indptr, p->idx_table, p))) return rc;
    }
    if (need & NEED_KV) {
        if ((rc = check_csr(fn, "kv->kv_indptr", kv->kv_indptr, kv, Bk))) return rc;
        /* dense reads every visible block; sparse reads the selected ones,
         * checked with the selection */
        if (!(need & (NEED_INDEX | SEL_IN)) &&
            (rc = check_slots(fn, "kv->kv_table", kv->kv_indptr, kv->kv_table, p)))
            return rc;
    }
    if ((need & SEL_IN) && (rc = check_selected(fn, p, batch->selected, 1, "batch->")))
        return rc;
    return MSA_OK;
}

/* ---- CUDA ------------------------------------------------------------------ */

enum { CALL_ATTN, CALL_SELECT, CALL_SPARSE, CALL_DENSE };

static int run_cuda(const char *fn, int call, const msa_attn_config *cfg,
                    const msa_paged_kv *kv, const msa_attn_batch *batch,
                    const msa_exec *exec, int need) {
#ifdef MSA_HAVE_CUDA
    if (kv->dtype == MSA_DTYPE_F32)
        return msa_error(MSA_EUNSUPPORTED, "%s: kv->dtype = F32: the CUDA backend runs F16 "
                         "and BF16", fn);
    if ((need & NEED_KV) && cfg->head_dim != 64 && cfg->head_dim != 128)
        return msa_error(MSA_EUNSUPPORTED, "%s: cfg->head_dim = %d: the CUDA backend runs "
                         "head dims 64 and 128", fn, cfg->head_dim);
    if (kv->max_blocks <= 0)
        return msa_error(MSA_EINVAL, "%s: kv->max_blocks = %d: on CUDA it must be set (> 0) "
                         "to the most logical blocks of any sequence", fn, kv->max_blocks);
    if (!msa_cuda_available())
        return msa_error(MSA_ENODEV, "%s: exec->device is CUDA but no CUDA device is "
                         "visible", fn);
    size_t ws = msa_cuda_workspace_size(cfg, batch->n_q, kv->max_blocks);
    if (ws > 0 && (!exec->workspace || exec->workspace_size < ws))
        return msa_error(MSA_EINVAL, "%s: exec->workspace %s (%zu bytes) but this call needs "
                         "%zu bytes (msa_attention_workspace_size)", fn,
                         exec->workspace ? "is too small" : "is NULL", exec->workspace_size, ws);
    if (batch->n_q == 0) return MSA_OK;
    switch (call) {
    case CALL_ATTN: return msa_cuda_attention(cfg, kv, batch, exec, NULL);
    case CALL_SELECT: return msa_cuda_index_select(cfg, kv, batch, exec, NULL);
    case CALL_SPARSE: return msa_cuda_sparse_attention(cfg, kv, batch, exec, NULL);
    default: return msa_cuda_dense_attention(cfg, kv, batch, exec, NULL);
    }
#else
    (void)call, (void)cfg, (void)kv, (void)batch, (void)exec, (void)need;
    return msa_error(MSA_ENODEV, "%s: exec->device is CUDA but this build of msa-mem has "
                     "no CUDA backend (configure with -DMSA_CUDA=ON and nvcc on PATH)", fn);
#endif
}

/* ---- the public calls ---------------------------------------------------------- */

static int run(const char *fn, int call, int need, const msa_attn_config *cfg,
               const msa_paged_kv *kv, const msa_attn_batch *batch, const msa_exec *exec) {
    msa_exec cpu = msa_exec_default();
    if (!exec) exec = &cpu;
    int rc = check_host(fn, cfg, kv, batch, exec, need);
    if (rc) return rc;
    if (exec->device == MSA_DEVICE_CUDA) return run_cuda(fn, call, cfg, kv, batch, exec, need);

    msa_ref_problem p;
    if ((rc = check_cpu(fn, cfg, kv, batch, exec, need, &p))) return rc;
    if (batch->n_q == 0) return MSA_OK;
    switch (call) {
    case CALL_SELECT:
        return msa_ref_index_select(&p, batch->selected);
    case CALL_SPARSE:
        return msa_ref_sparse_attention(&p, batch->selected);
    case CALL_DENSE:
        return msa_ref_dense_attention(&p);
    default: {
        int32_t *sel = batch->selected, *own = NULL;
        if (!sel) {
            size_t n = (size_t)batch->n_q * p.Hkv * p.top_k;
            sel = own = malloc(n * sizeof(int32_t));
            if (!own)
                return msa_error(MSA_ENOMEM, "%s: cannot allocate %zu bytes for the "
                                 "selection", fn, n * sizeof(int32_t));
        }
        rc = msa_ref_index_select(&p, sel);
        if (!rc) rc = check_selected(fn, &p, sel, 1, "");
        if (!rc) rc = msa_ref_sparse_attention(&p, sel);
        free(own);
        return rc;
    }
    }
}

int msa_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                  const msa_attn_batch *batch, const msa_exec *exec) {
    return run("msa_attention", CALL_ATTN, NEED_INDEX | NEED_KV, cfg, kv, batch, exec);
}

int msa_index_select(const msa_attn_config *cfg, const msa_paged_kv *kv,
                     const msa_attn_batch *batch, const msa_exec *exec) {
    return run("msa_index_select", CALL_SELECT, NEED_INDEX | SEL_OUT, cfg, kv, batch, exec);
}

int msa_sparse_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                         const msa_attn_batch *batch, const msa_exec *exec) {
    return run("msa_sparse_attention", CALL_SPARSE, NEED_KV | SEL_IN, cfg, kv, batch, exec);
}

int msa_dense_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                        const msa_attn_batch *batch, const msa_exec *exec) {
    return run("msa_dense_attention", CALL_DENSE, NEED_KV, cfg, kv, batch, exec);
}
