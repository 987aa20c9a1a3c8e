/*
 * forward.c: the CPU forward pass, in llama2.c's order, through the MSA core.
 *
 * For a chunk of n tokens at positions pos0..pos0+n-1, per layer:
 *   xb = rmsnorm(x) * attn_norm
 *   q, k, v = xb Wq^T (+bq), xb Wk^T (+bk), xb Wv^T (+bv)
 *   RoPE on q and k (interleaved pairs, or rotate-half when rope_neox)
 *   index branch: trained (q_idx = rope(norm(xb Wqi^T)), k_idx =
 *     rope(norm(xb Wki^T)), one key head) or training-free (k_idx = the
 *     group's post-RoPE key, q_idx = the mean of the group's G post-RoPE query
 *     heads; docs/index.md says why)
 *   mem.append(k, v, k_idx); msa_index_select -> mem.kv_view ->
 *     msa_sparse_attention (or every block and msa_dense_attention in dense
 *     mode)
 *   x += attn Wo^T (+bo)
 *   x += W2 (silu(W1 xb') * W3 xb'),  xb' = rmsnorm(x) * ffn_norm
 * then logits = rmsnorm(x) * output_norm Wout^T for the last row (or all).
 *
 * Matmuls run over msa_parallel_for in tasks of output rows; each task
 * walks the chunk's rows in groups of four so that a weight row is loaded
 * once per four inputs. Every output element is one fixed-order dot
 * product, so results do not depend on the thread count.
 *
 * A weight kept quantized (msa_qmat, engine/model/model.h) is multiplied by
 * kernels/qgemm.h instead: the layer input is quantized once to 8 bits per
 * block of 32 (struct act: once for q, k and v, once for gate and up) and
 * each task computes a range of output rows over all the chunk's rows.
 * That changes the results (the activations are rounded; docs/models.md
 * gives the measured logit differences); they still do not depend on the
 * thread count. A weight with an fp32 pointer is multiplied in fp32 as
 * before, so MSA_CPU_WEIGHTS=f32 gives the exact path.
 *
 * All buffers of a call are carved from one scratch allocation in the model,
 * grown on demand (run.c's RunState, sized for the chunk).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/model.h"
#include "base/base.h"
#include "kernels/qgemm.h"
#include "kernels/ref.h"

msa_forward_opts msa_forward_default_opts(void) {
    msa_forward_opts o;
    memset(&o, 0, sizeof o);
    o.block_size = 128;
    o.top_k = 16;
    return o;
}

/* ---- matmul ------------------------------------------------------------------- */

typedef struct mm_task {
    float *out;        /* (n, dout) */
    const float *x;    /* (n, din) */
    const float *w;    /* (dout, din) */
    const float *b;    /* (dout) or NULL */
    int n, din, dout, rows_per_task;
} mm_task;

static void mm_run(void *ctx, int64_t t) {
    const mm_task *T = ctx;
    int r0 = (int)t * T->rows_per_task;
    int r1 = r0 + T->rows_per_task < T->dout ? r0 + T->rows_per_task : T->dout;
    for (int i0 = 0; i0 < T->n; i0 += 4) {
        int i1 = i0 + 4 < T->n ? i0 + 4 : T->n;
        for (int r = r0; r < r1; r++) {
            const float *w = T->w + (size_t)r * T->din;
            float bias = T->b ? T->b[r] : 0.0f;
            for (int i = i0; i < i1; i++)
                T->out[(size_t)i * T->dout + r] = msa_ref_dot(T->x + (size_t)i * T->din, w, T->din) + bias;
        }
    }
}

/* out (n, dout) = x (n, din) W^T (+ b). */
static void matmul(float *out, const float *x, const float *w, const float *b, int n, int din,
                   int dout, int n_threads) {
    mm_task T = {out, x, w, b, n, din, dout, 0};
    /* About 64K multiply-adds per task, at least one row. */
    int64_t work = (int64_t)din * n;
    int rpt = (int)(65536 / (work ? work : 1));
    if (rpt < 1) rpt = 1;
    if (rpt > dout) rpt = dout;
    T.rows_per_task = rpt;
    int64_t tasks = (dout + rpt - 1) / rpt;
    if (tasks == 1) mm_run(&T, 0);
    else msa_parallel_for(tasks, n_threads, mm_run, &T);
}

/* ---- quantized matmul --------------------------------------------------------- */

/* A matmul input: x and, once a quantized weight needs it, x quantized. */
typedef struct act {
    const float *x;  /* (n, din) */
    int n, din;
    uint8_t *xq;     /* (n, msa_q8_row_bytes(din)) scratch */
    int ready;       /* 1: xq holds x */
    int n_threads;
} act;

static void act_set(act *a, const float *x, int n, int din) {
    a->x = x;
    a->n = n;
    a->din = din;
    a->ready = 0;
}

static void quant_run(void *ctx, int64_t i) {
    act *a = ctx;
    msa_q8_quantize_row(a->x + (size_t)i * a->din, a->din,
                        a->xq + (size_t)i * msa_q8_row_bytes(a->din));
}

typedef struct qmm_task {
    msa_qgemm_args g;
    int rows_per_task, dout;
} qmm_task;

static void qmm_run(void *ctx, int64_t t) {
    const qmm_task *T = ctx;
    msa_qgemm_args g = T->g;
    g.r0 = (int)t * T->rows_per_task;
    g.r1 = g.r0 + T->rows_per_task < T->dout ? g.r0 + T->rows_per_task : T->dout;
    msa_qgemm(&g);
}

/* out (n, dout) = x W^T (+ b), W fp32 (w) or quantized (q). */
static void linear(float *out, act *a, const float *w, const msa_qmat *q, const float *b, int dout) {
    if (w || !q || !q->data) {
        matmul(out, a->x, w, b, a->n, a->din, dout, a->n_threads);
        return;
    }
    if (!a->ready) {
        if (a->n >= 8) msa_parallel_for(a->n, a->n_threads, quant_run, a);
        else for (int i = 0; i < a->n; i++) quant_run(a, i);
        a->ready = 1;
    }
    qmm_task T;
    memset(&T, 0, sizeof T);
    T.g.type = q->type;
    T.g.W = q->data;
    T.g.w_row_bytes = q->row_bytes;
    T.g.K = a->din;
    T.g.a = a->xq;
    T.g.n = a->n;
    T.g.y = out;
    T.g.ldy = dout;
    T.g.bias = b;
    T.dout = dout;
    /* About 64K multiply-adds per task; with several input rows, tiles of
     * 16 weight rows (the AVX2 path reuses them over 64 input rows). */
    int64_t work = (int64_t)a->din * a->n;
    int rpt = (int)(65536 / (work ? work : 1));
    if (a->n > 1) rpt = rpt < 16 ? 16 : (rpt + 15) / 16 * 16;
    if (rpt < 1) rpt = 1;
    if (rpt > dout) rpt = dout;
    T.rows_per_task = rpt;
    int64_t tasks = (dout + rpt - 1) / rpt;
    if (tasks == 1) qmm_run(&T, 0);
    else msa_parallel_for(tasks, a->n_threads, qmm_run, &T);
}

/* ---- small ops ------------------------------------------------------------------- */

/* o = x / rms(x) * w over n elements (llama2.c's rmsnorm). scale1: Gemma
 * style (1 + w). */
static void rmsnorm(float *o, const float *x, const float *w, int n, float eps, int scale1) {
    float ss = 0.0f;
    for (int j = 0; j < n; j++) ss += x[j] * x[j];
    ss /= n;
    ss += eps;
    ss = 1.0f / sqrtf(ss);
    for (int j = 0; j < n; j++) o[j] = (scale1 ? 1.0f + w[j] : w[j]) * (ss * x[j]);
}

/* RoPE of one head vector v (d) at position pos. */
static void rope(const msa_model *m, float *v, int d, int pos) {
    int half = d / 2;
    for (int p = 0; p < half; p++) {
        float freq = m->rope_inv_freq ? m->rope_inv_freq[p]
                                      : 1.0f / powf(m->info.rope_theta, (float)(2 * p) / (float)d);
        float val = pos * freq;
        float fcr = cosf(val), fci = sinf(val);
        int a = m->rope_neox ? p : 2 * p, b = m->rope_neox ? p + half : 2 * p + 1;
        float v0 = v[a], v1 = v[b];
        v[a] = v0 * fcr - v1 * fci;
        v[b] = v0 * fci + v1 * fcr;
    }
}

/* ---- forward ------------------------------------------------------------------------ */

static int scratch(msa_model *m, size_t n) {
    if (m->scratch_floats >= n) return MSA_OK;
    float *p = realloc(m->scratch, n * sizeof *p);
    if (!p) return msa_error(MSA_ENOMEM, "forward: %zu floats of scratch", n);
    m->scratch = p;
    m->scratch_floats = n;
    return MSA_OK;
}

int msa_model_forward(msa_model *m, msa_kvmem *mem, const int32_t *tokens, int n, int pos0,
                      const msa_forward_opts *opts, float *logits) {
    if (!m || !mem || !tokens || n <= 0 || pos0 < 0 || !logits)
        return msa_error(MSA_EINVAL, "msa_model_forward: bad argument");
    if ((int64_t)pos0 + n > INT32_MAX)
        return msa_error(MSA_ERANGE, "msa_model_forward: position %lld", (long long)pos0 + n);
    msa_forward_opts o = opts ? *opts : msa_forward_default_opts();
    if (o.block_size <= 0 || o.top_k <= 0)
        return msa_error(MSA_EINVAL, "msa_model_forward: block size %d, top_k %d", o.block_size,
                         o.top_k);
    const msa_model_info *I = &m->info;
    const int D = I->dim, Hq = I->n_heads, Hkv = I->n_kv_heads, d = I->head_dim,
              F = I->ff_dim, V = I->vocab_size, G = Hq / Hkv;
    const int KH = I->idx_key_heads, di = I->idx_dim, qd = Hq * d, kvd = Hkv * d;
    const int nt = m->n_threads;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return msa_error(MSA_EINVAL, "msa_model_forward: token %d at row %d (vocab %d)",
                             tokens[i], i, V);
    for (int l = 0; l < I->n_layers; l++)
        if (mem->ops->length(mem, l) != pos0)
            return msa_error(MSA_EINVAL, "msa_model_forward: layer %d holds %lld tokens, "
                             "pos0 is %d", l, (long long)mem->ops->length(mem, l), pos0);

    /* Scratch, carved as run.c does. */
    const int nsel_max = n * Hkv * o.top_k;
    const int max_blocks = (pos0 + n + o.block_size - 1) / o.block_size;
    const int sel_dense = max_blocks;  /* dense mode lists every block once */
    int din_max = D > qd ? D : qd;
    if (F > din_max) din_max = F;
    const size_t xq_floats = ((size_t)n * msa_q8_row_bytes(din_max) + 3) / 4;
    size_t need = (size_t)n * (3 * D + 2 * qd + 2 * kvd + 2 * F + Hkv * di + KH * di) +
                  (size_t)(nsel_max > sel_dense ? nsel_max : sel_dense) + (size_t)n + xq_floats;
    int rc = scratch(m, need);
    if (rc) return rc;
    float *p = m->scratch;
    float *x = p;    p += (size_t)n * D;     /* (n, D) residual stream */
    float *xb = p;   p += (size_t)n * D;     /* (n, D) */
    float *xb2 = p;  p += (size_t)n * D;     /* (n, D) */
    float *q = p;    p += (size_t)n * qd;    /* (n, Hq, d) */
    float *att = p;  p += (size_t)n * qd;    /* (n, Hq, d) */
    float *k = p;    p += (size_t)n * kvd;   /* (n, Hkv, d) */
    float *v = p;    p += (size_t)n * kvd;   /* (n, Hkv, d) */
    float *hb = p;   p += (size_t)n * F;     /* (n, F) */
    float *hb2 = p;  p += (size_t)n * F;     /* (n, F) */
    float *qi = p;   p += (size_t)n * Hkv * di; /* (n, Hkv, di) */
    float *ki = p;   p += (size_t)n * KH * di;  /* (n, KH, di) */
    int32_t *sel = (int32_t *)p; p += (nsel_max > sel_dense ? nsel_max : sel_dense); /* (n, Hkv, k) */
    int32_t *qpos = (int32_t *)p; p += n;    /* (n) */
    act A;                                   /* the current matmul input */
    A.xq = (uint8_t *)p;                     /* (n, msa_q8_row_bytes(<= din_max)) */
    A.n_threads = nt;
    for (int i = 0; i < n; i++) qpos[i] = pos0 + i;
    int32_t q_indptr[2] = {0, n};

    msa_attn_config cfg = msa_attn_default_config();
    cfg.n_q_heads = Hq;
    cfg.n_kv_heads = Hkv;
    cfg.head_dim = d;
    cfg.idx_dim = di;
    cfg.idx_key_heads = KH;
    cfg.block_size = o.block_size;
    cfg.top_k = o.top_k;
    msa_exec ex = msa_exec_default();
    ex.n_threads = nt;

    for (int i = 0; i < n; i++) {
        if (m->tok_embd)
            memcpy(x + (size_t)i * D, m->tok_embd + (size_t)tokens[i] * D, (size_t)D * sizeof *x);
        else
            msa_ggml_to_f32(m->qtok_embd.type,
                            (const uint8_t *)m->qtok_embd.data +
                                (size_t)tokens[i] * m->qtok_embd.row_bytes,
                            x + (size_t)i * D, D);
    }

    for (int l = 0; l < I->n_layers; l++) {
        const msa_model_layer *L = &m->layers[l];
        for (int i = 0; i < n; i++)
            rmsnorm(xb + (size_t)i * D, x + (size_t)i * D, L->attn_norm, D, m->rms_eps, 0);
        act_set(&A, xb, n, D);
        linear(q, &A, L->wq, &L->qwq, L->bq, qd);
        linear(k, &A, L->wk, &L->qwk, L->bk, kvd);
        linear(v, &A, L->wv, &L->qwv, L->bv, kvd);
        for (int i = 0; i < n; i++) {
            for (int h = 0; h < Hq; h++) rope(m, q + (size_t)i * qd + h * d, d, pos0 + i);
            for (int h = 0; h < Hkv; h++) rope(m, k + (size_t)i * kvd + h * d, d, pos0 + i);
        }

        /* Index branch. */
        if (I->has_trained_index) {
            matmul(qi, xb, L->idx_q, NULL, n, D, Hkv * di, nt);
            matmul(ki, xb, L->idx_k, NULL, n, D, di, nt);
            for (int i = 0; i < n; i++) {
                for (int g = 0; g < Hkv; g++) {
                    float *r = qi + ((size_t)i * Hkv + g) * di;
                    rmsnorm(r, r, L->idx_q_norm, di, m->rms_eps, 1);
                    rope(m, r, di, pos0 + i);
                }
                float *r = ki + (size_t)i * di;
                rmsnorm(r, r, L->idx_k_norm, di, m->rms_eps, 1);
                rope(m, r, di, pos0 + i);
            }
        } else {
            /* k_idx = the group's key; q_idx = mean of its G query heads. */
            memcpy(ki, k, (size_t)n * kvd * sizeof *k);
            for (int i = 0; i < n; i++)
                for (int g = 0; g < Hkv; g++) {
                    float *r = qi + ((size_t)i * Hkv + g) * d;
                    for (int j = 0; j < d; j++) {
                        float s = 0.0f;
                        for (int h = 0; h < G; h++) s += q[(size_t)i * qd + (g * G + h) * d + j];
                        r[j] = s / (float)G;
                    }
                }
        }

        if ((rc = mem->ops->append(mem, l, n, k, v, ki)))
            return msa_error_context(rc, "forward: layer %d: append", l);
        msa_paged_kv kv;
        memset(&kv, 0, sizeof kv);
        if ((rc = mem->ops->index_view(mem, l, &kv)))
            return msa_error_context(rc, "forward: layer %d: index view", l);
        msa_attn_batch b;
        memset(&b, 0, sizeof b);
        b.n_q = n;
        b.q_indptr = q_indptr;
        b.q_pos = qpos;
        b.q = q;
        b.q_idx = qi;
        b.out = att;
        if (o.dense) {
            for (int j = 0; j < max_blocks; j++) sel[j] = j;
            if ((rc = mem->ops->kv_view(mem, l, sel, max_blocks, &kv)) ||
                (rc = msa_dense_attention(&cfg, &kv, &b, &ex)))
                return msa_error_context(rc, "forward: layer %d: dense attention", l);
        } else {
            b.selected = sel;
            if ((rc = msa_index_select(&cfg, &kv, &b, &ex)))
                return msa_error_context(rc, "forward: layer %d: index select", l);
            if ((rc = mem->ops->kv_view(mem, l, sel, nsel_max, &kv)) ||
                (rc = msa_sparse_attention(&cfg, &kv, &b, &ex)))
                return msa_error_context(rc, "forward: layer %d: sparse attention", l);
        }
        if (o.on_layer) {
            msa_forward_trace t = {l, n, pos0, Hkv, o.top_k, q, qi, att,
                                   o.dense ? NULL : sel};
            o.on_layer(o.user, &t);
        }

        act_set(&A, att, n, qd);
        linear(xb2, &A, L->wo, &L->qwo, L->bo, D);
        for (size_t j = 0; j < (size_t)n * D; j++) x[j] += xb2[j];

        for (int i = 0; i < n; i++)
            rmsnorm(xb + (size_t)i * D, x + (size_t)i * D, L->ffn_norm, D, m->rms_eps, 0);
        act_set(&A, xb, n, D);
        linear(hb, &A, L->w1, &L->qw1, NULL, F);
        linear(hb2, &A, L->w3, &L->qw3, NULL, F);
        for (size_t j = 0; j < (size_t)n * F; j++) {
            float val = hb[j];
            val *= (1.0f / (1.0f + expf(-val)));
            hb[j] = val * hb2[j];
        }
        act_set(&A, hb, n, F);
        linear(xb, &A, L->w2, &L->qw2, NULL, D);
        for (size_t j = 0; j < (size_t)n * D; j++) x[j] += xb[j];
    }

    int r0 = o.all_logits ? 0 : n - 1;
    for (int i = r0; i < n; i++)
        rmsnorm(x + (size_t)i * D, x + (size_t)i * D, m->output_norm, D, m->rms_eps, 0);
    act_set(&A, x + (size_t)r0 * D, n - r0, D);
    linear(logits, &A, m->output, &m->qoutput, NULL, V);
    return MSA_OK;
}
