/*
 * calibrate.c: fitting a trained MSA index to a model that has none
 * (engine/calibrate/calibrate.h says what is fitted and to what).
 *
 * 1. Inputs. The calibration tokens are cut into sequences of T rows (BOS
 *    first) and each runs through msa_model_forward() in dense mode. Its
 *    on_layer trace gives the post-RoPE queries, the layer memory gives the
 *    post-RoPE keys: the teacher (head-averaged dense softmax of each group)
 *    comes from them. The layer input after attn_norm is not in the trace,
 *    so the residual stream is replayed beside the forward pass from the
 *    trace's attention output (x += attn Wo^T, then the SwiGLU block); the
 *    replayed input is checked against the trace by recomputing q from it
 *    (it must agree to rounding, else the calibration stops).
 * 2. Training, per layer, full batch, Adam. The loss and its gradient are
 *    written out by hand:
 *      u = W x, n = u * s with s = 1/sqrt(mean(u^2) + eps), a = (1+w) n,
 *      q = R(pos) a (RoPE, a rotation), same for the key;
 *      s_ij = q_i . k_j / sqrt(di), p = softmax over j <= i,
 *      loss = sum t_ij (log t_ij - log p_ij), dloss/ds_ij = p_ij - t_ij;
 *      dq_i = sum_j g_ij k_j / sqrt(di), dk_j = sum_(i >= j, r) g_ij q_ir / sqrt(di);
 *      da = R(pos)^T dq;  dw = sum da * n;  dn = (1+w) da;
 *      du = s (dn - n (dn . n) / di)    (the RMSNorm Jacobian);
 *      dW = sum over tokens du x^T.
 *    tests/test-calibrate.c checks it against finite differences.
 * 3. Output: the input GGUF's metadata and tensors, <arch>.msa.index_dim,
 *    and blk.N.msa_idx_{q,k,q_norm,k_norm}.weight in F32.
 *
 * Work is spread with msa_parallel_for over tokens (projections, norm and
 * RoPE), sequences (scores and softmax) and weight rows (dW). Memory: the
 * teacher is kept for every layer, packed lower-triangular, n_seq * Hkv *
 * T(T+1)/2 floats per layer.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/calibrate/calibrate.h"
#include "base/base.h"
#include "kernels/ref.h"

msa_calib_params msa_calib_default_params(void) {
    msa_calib_params p;
    memset(&p, 0, sizeof p);
    p.idx_dim = 32;
    p.steps = 200;
    p.lr = 0.02f;
    p.seq_len = 256;
    p.bos = -1;
    p.seed = 1;
    p.log_every = 50;
    return p;
}

/* ---- small helpers ----------------------------------------------------------- */

/* RoPE of v (d) at pos, exactly as engine/forward/forward.c turns it; sign -1 turns
 * it back (the transpose of the rotation). */
static void rope_turn(float theta, int neox, const float *inv_freq, float *v, int d, int pos,
                      int sign) {
    int half = d / 2;
    for (int p = 0; p < half; p++) {
        float freq = inv_freq ? inv_freq[p] : 1.0f / powf(theta, (float)(2 * p) / (float)d);
        float val = pos * freq;
        float fcr = cosf(val), fci = sign * sinf(val);
        int a = neox ? p : 2 * p, b = neox ? p + half : 2 * p + 1;
        float v0 = v[a], v1 = v[b];
        v[a] = v0 * fcr - v1 * fci;
        v[b] = v0 * fci + v1 * fcr;
    }
}

static float rms_scale(const float *u, int n, float eps) {
    float ss = 0.0f;
    for (int j = 0; j < n; j++) ss += u[j] * u[j];
    ss /= n;
    ss += eps;
    return 1.0f / sqrtf(ss);
}

typedef struct mm_ctx {
    float *out;
    const float *x, *w, *b;
    int n, din, dout;
} mm_ctx;

static void mm_task(void *c, int64_t t) {
    const mm_ctx *M = c;
    int i1 = (int)(t + 1) * 8 < M->n ? (int)(t + 1) * 8 : M->n;
    for (int i = (int)t * 8; i < i1; i++)
        for (int r = 0; r < M->dout; r++)
            M->out[(size_t)i * M->dout + r] =
                msa_ref_dot(M->x + (size_t)i * M->din, M->w + (size_t)r * M->din, M->din) +
                (M->b ? M->b[r] : 0.0f);
}

/* out (n, dout) = x (n, din) W^T (+ b). */
static void matmul(float *out, const float *x, const float *w, const float *b, int n, int din,
                   int dout, int nt) {
    mm_ctx M = {out, x, w, b, n, din, dout};
    msa_parallel_for((n + 7) / 8, nt, mm_task, &M);
}

/* Cuts tokens into sequences of T (BOS first). Returns the count, 0 on
 * allocation failure; *T may shrink to fit one short text. */
static int make_seqs(const int32_t *tokens, size_t n_tokens, int32_t bos, int *T,
                     int32_t **out) {
    int hb = bos >= 0;
    int per = *T - hb;
    size_t n_seq = n_tokens / (size_t)per;
    if (n_seq == 0) {
        n_seq = 1;
        per = (int)n_tokens;
        *T = per + hb;
    }
    int32_t *s = malloc(n_seq * (size_t)*T * sizeof *s);
    if (!s) return 0;
    for (size_t q = 0; q < n_seq; q++) {
        int32_t *r = s + q * (size_t)*T;
        if (hb) r[0] = bos;
        memcpy(r + hb, tokens + q * (size_t)per, (size_t)per * sizeof *r);
    }
    *out = s;
    return (int)n_seq;
}

/* ---- the loss and its gradient ------------------------------------------------ */

typedef struct loss_ctx {
    const msa_calib_layer *L;
    const float *wq, *wk, *qn, *kn;
    float *Q, *NQ, *SQ, *K, *NK, *SK; /* post-RoPE, normed (pre-scale), 1/rms */
    float *dQ, *dK;
    double *seq_loss;
    int grad;
    float *gw;                        /* (Hkv*di + di, D): gwq then gwk */
} loss_ctx;

static void fwd_tokens(void *c, int64_t t0) {
    const loss_ctx *C = c;
    const msa_calib_layer *L = C->L;
    const int D = L->D, Hkv = L->Hkv, di = L->di, N = L->n_seq * L->T;
    int t1 = (int)(t0 + 1) * 16 < N ? (int)(t0 + 1) * 16 : N;
    for (int t = (int)t0 * 16; t < t1; t++) {
        const float *x = L->x + (size_t)t * D;
        int pos = t % L->T;
        for (int r = 0; r <= Hkv; r++) { /* r == Hkv: the key */
            int key = r == Hkv;
            const float *W = key ? C->wk : C->wq + (size_t)r * di * D;
            const float *w = key ? C->kn : C->qn;
            float *n = key ? C->NK + (size_t)t * di : C->NQ + ((size_t)t * Hkv + r) * di;
            float *o = key ? C->K + (size_t)t * di : C->Q + ((size_t)t * Hkv + r) * di;
            for (int e = 0; e < di; e++) n[e] = msa_ref_dot(W + (size_t)e * D, x, D);
            float s = rms_scale(n, di, L->rms_eps);
            for (int e = 0; e < di; e++) {
                n[e] *= s;
                o[e] = (1.0f + w[e]) * n[e];
            }
            if (key) C->SK[t] = s;
            else C->SQ[(size_t)t * Hkv + r] = s;
            rope_turn(L->rope_theta, L->rope_neox, L->rope_inv_freq, o, di, pos, 1);
        }
    }
}

static void scores_seq(void *c, int64_t sq) {
    const loss_ctx *C = c;
    const msa_calib_layer *L = C->L;
    const int Hkv = L->Hkv, di = L->di, T = L->T;
    const size_t tri = (size_t)T * (T + 1) / 2;
    const float inv = 1.0f / sqrtf((float)di);
    float *sc = malloc((size_t)T * sizeof *sc);
    if (!sc) {
        C->seq_loss[sq] = NAN;
        return;
    }
    const size_t base = (size_t)sq * T;
    const float *K = C->K + base * di;
    float *dK = C->dK + base * di;
    if (C->grad) memset(dK, 0, (size_t)T * di * sizeof *dK);
    double loss = 0;
    for (int i = 0; i < T; i++)
        for (int r = 0; r < Hkv; r++) {
            const float *q = C->Q + ((base + i) * Hkv + r) * di;
            const float *tp = L->teacher + ((size_t)sq * Hkv + r) * tri + (size_t)i * (i + 1) / 2;
            float mx = -INFINITY;
            for (int j = 0; j <= i; j++) {
                sc[j] = msa_ref_dot(q, K + (size_t)j * di, di) * inv;
                if (sc[j] > mx) mx = sc[j];
            }
            /* KL = sum t log t - sum t s + log z (rows of t sum to 1). */
            float z = 0.0f, ts = 0.0f;
            for (int j = 0; j <= i; j++) {
                ts += tp[j] * sc[j];
                z += (sc[j] = expf(sc[j] - mx));
            }
            loss += (double)mx + log((double)z) - (double)ts;
            if (!L->plogp_set)
                for (int j = 0; j <= i; j++)
                    if (tp[j] > 0) loss += tp[j] * log((double)tp[j]);
            if (!C->grad) continue;
            float *dq = C->dQ + ((base + i) * Hkv + r) * di;
            memset(dq, 0, (size_t)di * sizeof *dq);
            const float iz = 1.0f / z;
            for (int j = 0; j <= i; j++) {
                float g = (sc[j] * iz - tp[j]) * inv;
                const float *kj = K + (size_t)j * di;
                float *dkj = dK + (size_t)j * di;
                for (int e = 0; e < di; e++) {
                    dq[e] += g * kj[e];
                    dkj[e] += g * q[e];
                }
            }
        }
    free(sc);
    C->seq_loss[sq] = loss;
}

/* Back through RoPE and the RMSNorm: dQ/dK become du; NQ/NK become da*n. */
static void bwd_tokens(void *c, int64_t t0) {
    const loss_ctx *C = c;
    const msa_calib_layer *L = C->L;
    const int Hkv = L->Hkv, di = L->di, N = L->n_seq * L->T;
    int t1 = (int)(t0 + 1) * 16 < N ? (int)(t0 + 1) * 16 : N;
    for (int t = (int)t0 * 16; t < t1; t++) {
        int pos = t % L->T;
        for (int r = 0; r <= Hkv; r++) {
            int key = r == Hkv;
            const float *w = key ? C->kn : C->qn;
            float *n = key ? C->NK + (size_t)t * di : C->NQ + ((size_t)t * Hkv + r) * di;
            float *d = key ? C->dK + (size_t)t * di : C->dQ + ((size_t)t * Hkv + r) * di;
            float s = key ? C->SK[t] : C->SQ[(size_t)t * Hkv + r];
            rope_turn(L->rope_theta, L->rope_neox, L->rope_inv_freq, d, di, pos, -1); /* da */
            float dot = 0.0f;
            for (int e = 0; e < di; e++) dot += (1.0f + w[e]) * d[e] * n[e];
            for (int e = 0; e < di; e++) {
                float da = d[e], ne = n[e];
                d[e] = s * ((1.0f + w[e]) * da - ne * dot / (float)di);
                n[e] = da * ne;
            }
        }
    }
}

static void dw_rows(void *c, int64_t row) {
    const loss_ctx *C = c;
    const msa_calib_layer *L = C->L;
    const int D = L->D, Hkv = L->Hkv, di = L->di, N = L->n_seq * L->T;
    int key = row >= (int64_t)Hkv * di;
    int e = key ? (int)row - Hkv * di : (int)row;
    float *g = C->gw + (size_t)row * D;
    memset(g, 0, (size_t)D * sizeof *g);
    for (int t = 0; t < N; t++) {
        float du = key ? C->dK[(size_t)t * di + e] : C->dQ[(size_t)t * Hkv * di + e];
        const float *x = L->x + (size_t)t * D;
        for (int k = 0; k < D; k++) g[k] += du * x[k];
    }
}

double msa_calib_layer_loss(const msa_calib_layer *L, const float *wq, const float *wk,
                            const float *qn, const float *kn, float *gwq, float *gwk,
                            float *gqn, float *gkn, int n_threads) {
    const int D = L->D, Hkv = L->Hkv, di = L->di, N = L->n_seq * L->T;
    const int grad = gwq != NULL;
    loss_ctx C;
    memset(&C, 0, sizeof C);
    C.L = L;
    C.wq = wq;
    C.wk = wk;
    C.qn = qn;
    C.kn = kn;
    C.grad = grad;
    size_t nq = (size_t)N * Hkv * di, nk = (size_t)N * di;
    size_t total = 3 * nq + (size_t)N * Hkv + 3 * nk + N + (grad ? (size_t)(Hkv + 1) * di * D : 0);
    float *buf = malloc(total * sizeof *buf);
    C.seq_loss = calloc((size_t)L->n_seq, sizeof *C.seq_loss);
    if (!buf || !C.seq_loss) {
        free(buf);
        free(C.seq_loss);
        return -1;
    }
    float *p = buf;
    C.Q = p;  p += nq;
    C.NQ = p; p += nq;
    C.dQ = p; p += nq;
    C.SQ = p; p += (size_t)N * Hkv;
    C.K = p;  p += nk;
    C.NK = p; p += nk;
    C.dK = p; p += nk;
    C.SK = p; p += N;
    C.gw = grad ? p : NULL;
    msa_parallel_for((N + 15) / 16, n_threads, fwd_tokens, &C);
    msa_parallel_for(L->n_seq, n_threads, scores_seq, &C);
    double loss = L->plogp_set ? L->plogp : 0;
    for (int s = 0; s < L->n_seq; s++) loss += C.seq_loss[s];
    if (grad && !isnan(loss)) {
        msa_parallel_for((N + 15) / 16, n_threads, bwd_tokens, &C);
        msa_parallel_for((int64_t)(Hkv + 1) * di, n_threads, dw_rows, &C);
        memcpy(gwq, C.gw, (size_t)Hkv * di * D * sizeof *gwq);
        memcpy(gwk, C.gw + (size_t)Hkv * di * D, (size_t)di * D * sizeof *gwk);
        memset(gqn, 0, (size_t)di * sizeof *gqn);
        memset(gkn, 0, (size_t)di * sizeof *gkn);
        for (size_t t = 0; t < (size_t)N; t++) {
            for (int r = 0; r < Hkv; r++)
                for (int e = 0; e < di; e++) gqn[e] += C.NQ[(t * Hkv + r) * di + e];
            for (int e = 0; e < di; e++) gkn[e] += C.NK[t * di + e];
        }
    }
    free(buf);
    free(C.seq_loss);
    return isnan(loss) ? -1 : loss;
}

/* ---- inputs from the forward pass ----------------------------------------------- */

typedef struct gather_ctx {
    msa_model *m;
    msa_kvmem *mem;
    int T, seq, bk;
    float *x, *xb, *tmp, *hb, *hb2, *qre; /* replayed residual stream and scratch */
    float **X, **teacher;                 /* per layer */
    const msa_forward_trace *t;           /* the current trace (teacher tasks) */
    const float *Kc;                      /* the layer's keys in the memory */
    float max_q_err;
} gather_ctx;

static void teacher_group(void *c, int64_t g) {
    const gather_ctx *C = c;
    const msa_model_info *I = &C->m->info;
    const int Hq = I->n_heads, Hkv = I->n_kv_heads, d = I->head_dim, G = Hq / Hkv, T = C->T;
    const size_t tri = (size_t)T * (T + 1) / 2;
    const float sc = 1.0f / sqrtf((float)d);
    float *pr = malloc((size_t)T * sizeof *pr);
    if (!pr) return; /* the caller's check finds the row sums wrong */
    float *tb = C->teacher[C->t->layer] + ((size_t)C->seq * Hkv + g) * tri;
    memset(tb, 0, tri * sizeof *tb);
    for (int i = 0; i < T; i++) {
        float *tp = tb + (size_t)i * (i + 1) / 2;
        for (int h = g * G; h < (g + 1) * G; h++) {
            const float *q = C->t->q + ((size_t)i * Hq + h) * d;
            float mx = -INFINITY;
            for (int j = 0; j <= i; j++) {
                const float *k = C->Kc + (((size_t)(j / C->bk) * Hkv + g) * C->bk + j % C->bk) * d;
                pr[j] = msa_ref_dot(q, k, d) * sc;
                if (pr[j] > mx) mx = pr[j];
            }
            double z = 0;
            for (int j = 0; j <= i; j++) z += (pr[j] = expf(pr[j] - mx));
            for (int j = 0; j <= i; j++) tp[j] += (float)(pr[j] / z) / (float)G;
        }
    }
    free(pr);
}

static void rmsnorm_rows(float *o, const float *x, const float *w, int n, int D, float eps) {
    for (int i = 0; i < n; i++) {
        float s = rms_scale(x + (size_t)i * D, D, eps);
        for (int j = 0; j < D; j++) o[(size_t)i * D + j] = w[j] * (s * x[(size_t)i * D + j]);
    }
}

static void gather_layer(void *user, const msa_forward_trace *t) {
    gather_ctx *C = user;
    msa_model *m = C->m;
    const msa_model_info *I = &m->info;
    const msa_model_layer *Ly = &m->layers[t->layer];
    const int D = I->dim, Hq = I->n_heads, Hkv = I->n_kv_heads, d = I->head_dim, F = I->ff_dim,
              T = C->T, nt = m->n_threads;
    /* The layer input after attn_norm, checked against the trace's q. */
    rmsnorm_rows(C->xb, C->x, Ly->attn_norm, T, D, m->rms_eps);
    memcpy(C->X[t->layer] + (size_t)C->seq * T * D, C->xb, (size_t)T * D * sizeof *C->xb);
    matmul(C->qre, C->xb, Ly->wq, Ly->bq, T, D, Hq * d, nt);
    for (int i = 0; i < T; i++)
        for (int h = 0; h < Hq; h++) {
            float *q = C->qre + ((size_t)i * Hq + h) * d;
            rope_turn(I->rope_theta, m->rope_neox, m->rope_inv_freq, q, d, i, 1);
            for (int e = 0; e < d; e++) {
                float err = fabsf(q[e] - t->q[((size_t)i * Hq + h) * d + e]) /
                            (1.0f + fabsf(q[e]));
                if (err > C->max_q_err) C->max_q_err = err;
            }
        }
    /* Teacher. */
    const float *K = NULL;
    int64_t len = 0;
    if (msa_kvcache_layer(C->mem, t->layer, &K, NULL, NULL, &len) || len != T) {
        C->max_q_err = INFINITY;
        return;
    }
    C->t = t;
    C->Kc = K;
    msa_parallel_for(Hkv, nt, teacher_group, C);
    /* The rest of the block, replayed. */
    matmul(C->tmp, t->attn_out, Ly->wo, Ly->bo, T, Hq * d, D, nt);
    for (size_t j = 0; j < (size_t)T * D; j++) C->x[j] += C->tmp[j];
    rmsnorm_rows(C->xb, C->x, Ly->ffn_norm, T, D, m->rms_eps);
    matmul(C->hb, C->xb, Ly->w1, NULL, T, D, F, nt);
    matmul(C->hb2, C->xb, Ly->w3, NULL, T, D, F, nt);
    for (size_t j = 0; j < (size_t)T * F; j++) {
        float v = C->hb[j];
        C->hb[j] = v * (1.0f / (1.0f + expf(-v))) * C->hb2[j];
    }
    matmul(C->tmp, C->hb, Ly->w2, NULL, T, F, D, nt);
    for (size_t j = 0; j < (size_t)T * D; j++) C->x[j] += C->tmp[j];
}

/* ---- Adam ------------------------------------------------------------------------ */

static uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static float rng_normal(uint64_t *s) {
    double u = ((rng_next(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double v = (rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* Trains one layer's weights P = [wq | wk | qn | kn] in place. */
static int train_layer(const msa_calib_layer *L, const msa_calib_params *p, int layer, float *P,
                       double *first, double *last) {
    const int D = L->D, Hkv = L->Hkv, di = L->di;
    const size_t nwq = (size_t)Hkv * di * D, nwk = (size_t)di * D;
    const size_t np = nwq + nwk + 2 * (size_t)di;
    float *G = malloc(np * sizeof *G), *M1 = calloc(np, sizeof *M1), *M2 = calloc(np, sizeof *M2);
    if (!G || !M1 || !M2) {
        free(G);
        free(M1);
        free(M2);
        return msa_error(MSA_ENOMEM, "calibrate: Adam state");
    }
    const double rows = (double)L->n_seq * L->T * Hkv;
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    int rc = MSA_OK;
    for (int step = 0; step <= p->steps; step++) {
        int final = step == p->steps;
        double loss = msa_calib_layer_loss(L, P, P + nwq, P + nwq + nwk, P + nwq + nwk + di,
                                           final ? NULL : G, final ? NULL : G + nwq,
                                           final ? NULL : G + nwq + nwk,
                                           final ? NULL : G + nwq + nwk + di, p->n_threads);
        if (loss < 0) {
            rc = msa_error(MSA_ENOMEM, "calibrate: layer %d: loss", layer);
            break;
        }
        loss /= rows;
        if (step == 0) *first = loss;
        if (final) *last = loss;
        if (p->on_step && (final || (p->log_every > 0 && step % p->log_every == 0)))
            p->on_step(p->user, layer, step, loss);
        if (final) break;
        float c1 = 1.0f - powf(b1, (float)(step + 1)), c2 = 1.0f - powf(b2, (float)(step + 1));
        for (size_t k = 0; k < np; k++) {
            float g = (float)(G[k] / rows);
            M1[k] = b1 * M1[k] + (1 - b1) * g;
            M2[k] = b2 * M2[k] + (1 - b2) * g * g;
            P[k] -= p->lr * (M1[k] / c1) / (sqrtf(M2[k] / c2) + eps);
        }
    }
    free(G);
    free(M1);
    free(M2);
    return rc;
}

/* ---- the command's engine ----------------------------------------------------------- */

static int write_out(msa_model *m, float **W, int di, const char *out_path) {
    const msa_gguf *g = m->gguf;
    const msa_model_info *I = &m->info;
    msa_gguf_writer *w = NULL;
    int rc = msa_gguf_writer_init(&w);
    if (rc) return rc;
    rc = msa_gguf_writer_protect_gguf(w, g); /* checked again right before the rename */
    for (int64_t i = 0; !rc && i < msa_gguf_n_kv(g); i++) rc = msa_gguf_writer_copy_kv(w, g, i);
    char key[128];
    snprintf(key, sizeof key, "%s.msa.index_dim", I->arch);
    if (!rc) rc = msa_gguf_writer_set_u32(w, key, (uint32_t)di);
    for (int64_t i = 0; !rc && i < msa_gguf_n_tensors(g); i++) {
        const msa_gguf_tensor *t = msa_gguf_tensor_at(g, i);
        if (!t->data) {
            rc = msa_error(MSA_EUNSUPPORTED, "calibrate: tensor '%s' of type %s cannot be copied",
                           t->name, msa_ggml_type_name(t->type));
            break;
        }
        rc = msa_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data);
    }
    const int64_t D = I->dim, Hkv = I->n_kv_heads;
    for (int l = 0; !rc && l < I->n_layers; l++) {
        char nm[96];
        const float *P = W[l];
        int64_t neq[2] = {D, Hkv * di}, nek[2] = {D, di}, nen[1] = {di};
        snprintf(nm, sizeof nm, "blk.%d.msa_idx_q.weight", l);
        if ((rc = msa_gguf_writer_add_tensor(w, nm, MSA_GGML_F32, 2, neq, P))) break;
        P += Hkv * di * D;
        snprintf(nm, sizeof nm, "blk.%d.msa_idx_k.weight", l);
        if ((rc = msa_gguf_writer_add_tensor(w, nm, MSA_GGML_F32, 2, nek, P))) break;
        P += di * D;
        snprintf(nm, sizeof nm, "blk.%d.msa_idx_q_norm.weight", l);
        if ((rc = msa_gguf_writer_add_tensor(w, nm, MSA_GGML_F32, 1, nen, P))) break;
        P += di;
        snprintf(nm, sizeof nm, "blk.%d.msa_idx_k_norm.weight", l);
        rc = msa_gguf_writer_add_tensor(w, nm, MSA_GGML_F32, 1, nen, P);
    }
    if (!rc) rc = msa_gguf_writer_write(w, out_path);
    msa_gguf_writer_free(w);
    return rc;
}

int msa_calibrate(msa_model *m, const int32_t *tokens, size_t n_tokens,
                  const msa_calib_params *params, const char *out_path, msa_calib_result *res) {
    msa_calib_params p = params ? *params : msa_calib_default_params();
    if (!m || !tokens || !out_path || n_tokens < 2)
        return msa_error(MSA_EINVAL, "calibrate: bad argument (%zu tokens)", n_tokens);
    /* The replay below multiplies fp32 weights and must reproduce the
     * forward pass's queries: quantized weights go to fp32 first. */
    int xrc = msa_model_expand_f32(m);
    if (xrc) return xrc;
    const msa_model_info *I = &m->info;
    const int D = I->dim, Hkv = I->n_kv_heads, di = p.idx_dim, Ln = I->n_layers;
    if (di < 2 || di % 2 || di > 4096 || p.steps < 0 || !(p.lr > 0) || p.seq_len < 2 ||
        p.seq_len > 65536)
        return msa_error(MSA_EINVAL, "calibrate: idx_dim %d (even, 2..4096), steps %d, lr %g, "
                         "seq_len %d", di, p.steps, (double)p.lr, p.seq_len);
    if (I->has_trained_index)
        return msa_error(MSA_EUNSUPPORTED, "calibrate: the model has a trained index already");
    if (!m->gguf) return msa_error(MSA_EUNSUPPORTED, "calibrate: the model is not a GGUF file");
    if (msa_gguf_is_file(m->gguf, out_path)) /* sessions are bound to it: never replace it */
        return msa_error(MSA_EEXIST, "calibrate: %s is the model being calibrated: refusing to "
                         "overwrite it (write to another file)", out_path);
    if (Ln > MSA_CALIB_MAX_LAYERS)
        return msa_error(MSA_EUNSUPPORTED, "calibrate: %d layers (at most %d)", Ln,
                         MSA_CALIB_MAX_LAYERS);
    if (m->rope_inv_freq && di > I->head_dim)
        return msa_error(MSA_EUNSUPPORTED, "calibrate: scaled RoPE with idx_dim %d > head dim %d",
                         di, I->head_dim);
    for (size_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= I->vocab_size)
            return msa_error(MSA_EINVAL, "calibrate: token %d at %zu", tokens[i], i);

    int T = p.seq_len;
    int32_t *seqs = NULL;
    int n_seq = make_seqs(tokens, n_tokens, p.bos, &T, &seqs);
    if (!n_seq) return msa_error(MSA_ENOMEM, "calibrate: sequences");
    const size_t tri = (size_t)T * (T + 1) / 2, N = (size_t)n_seq * T;
    const size_t np = (size_t)(Hkv + 1) * di * D + 2 * (size_t)di;
    int rc = MSA_OK;
    gather_ctx C;
    memset(&C, 0, sizeof C);
    C.m = m;
    C.T = T;
    C.bk = 64;
    C.X = calloc((size_t)Ln, sizeof *C.X);
    C.teacher = calloc((size_t)Ln, sizeof *C.teacher);
    float **W = calloc((size_t)Ln, sizeof *W);
    const int Hq = I->n_heads, d = I->head_dim, F = I->ff_dim;
    size_t scr = (size_t)T * (3 * D + 2 * F + Hq * d);
    float *scratch = malloc(scr * sizeof *scratch);
    float *logits = malloc((size_t)I->vocab_size * sizeof *logits);
    if (!C.X || !C.teacher || !W || !scratch || !logits) rc = msa_error(MSA_ENOMEM, "calibrate");
    for (int l = 0; !rc && l < Ln; l++) {
        C.X[l] = malloc(N * D * sizeof **C.X);
        C.teacher[l] = malloc((size_t)n_seq * Hkv * tri * sizeof **C.teacher);
        W[l] = calloc(np, sizeof **W);
        if (!C.X[l] || !C.teacher[l] || !W[l])
            rc = msa_error(MSA_ENOMEM, "calibrate: layer %d inputs (%zu tokens)", l, N);
    }
    if (!rc) {
        float *s = scratch;
        C.x = s;   s += (size_t)T * D;
        C.xb = s;  s += (size_t)T * D;
        C.tmp = s; s += (size_t)T * D;
        C.hb = s;  s += (size_t)T * F;
        C.hb2 = s; s += (size_t)T * F;
        C.qre = s;
    }

    /* 1. Inputs. */
    double t0 = msa_now();
    msa_forward_opts o = msa_forward_default_opts();
    o.block_size = C.bk;
    o.dense = 1;
    o.on_layer = gather_layer;
    o.user = &C;
    for (int s = 0; !rc && s < n_seq; s++) {
        msa_kvcache_params kp = msa_kvcache_params_for(m, C.bk);
        if ((rc = msa_kvcache_init(&kp, &C.mem))) break;
        C.seq = s;
        const int32_t *toks = seqs + (size_t)s * T;
        for (int i = 0; i < T; i++)
            memcpy(C.x + (size_t)i * D, m->tok_embd + (size_t)toks[i] * D, (size_t)D * sizeof *C.x);
        rc = msa_model_forward(m, C.mem, toks, T, 0, &o, logits);
        msa_kvcache_free(C.mem);
        C.mem = NULL;
        if (!rc && !(C.max_q_err < 1e-3f))
            rc = msa_error(MSA_EUNSUPPORTED, "calibrate: the replayed layer input does not "
                           "reproduce the forward pass's queries (relative error %g)",
                           (double)C.max_q_err);
    }
    double t1 = msa_now();

    /* 2. Training. */
    uint64_t rng = p.seed ? p.seed : 1;
    for (int l = 0; !rc && l < Ln; l++) {
        msa_calib_layer L = {D, Hkv, di, n_seq, T, m->rms_eps, I->rope_theta, m->rope_neox,
                             m->rope_inv_freq, C.X[l], C.teacher[l], 0, 0};
        /* The teacher's sum t log t, once (a constant of the loss). */
        for (size_t k = 0; k < (size_t)n_seq * Hkv * tri; k++)
            if (C.teacher[l][k] > 0) L.plogp += C.teacher[l][k] * log((double)C.teacher[l][k]);
        L.plogp_set = 1;
        float sc = 1.0f / sqrtf((float)D);
        for (size_t k = 0; k < (size_t)(Hkv + 1) * di * D; k++) W[l][k] = sc * rng_normal(&rng);
        double first = 0, last = 0;
        rc = train_layer(&L, &p, l, W[l], &first, &last);
        if (res) {
            res->loss_first[l] = first;
            res->loss_last[l] = last;
        }
    }
    double t2 = msa_now();

    /* 3. Output. */
    if (!rc) rc = write_out(m, W, di, out_path);
    if (res) {
        res->n_layers = Ln;
        res->n_seq = n_seq;
        res->seq_len = T;
        res->seconds_inputs = t1 - t0;
        res->seconds_train = t2 - t1;
    }
    for (int l = 0; l < Ln; l++) {
        if (C.X) free(C.X[l]);
        if (C.teacher) free(C.teacher[l]);
        if (W) free(W[l]);
    }
    free(C.X);
    free(C.teacher);
    free(W);
    free(scratch);
    free(logits);
    free(seqs);
    return rc;
}

/* ---- evaluation: dense mass inside the selected blocks ------------------------------- */

typedef struct mass_ctx {
    msa_model *m;
    msa_kvmem *mem;
    int bk;
    double sum, min;
    long n;
    int rc;
} mass_ctx;

static void mass_layer(void *user, const msa_forward_trace *t) {
    mass_ctx *C = user;
    const msa_model_info *I = &C->m->info;
    const int Hq = I->n_heads, Hkv = I->n_kv_heads, d = I->head_dim, G = Hq / Hkv, bk = C->bk;
    const float *K = NULL;
    int64_t len = 0;
    if (!t->selected || msa_kvcache_layer(C->mem, t->layer, &K, NULL, NULL, &len) ||
        len != t->pos0 + t->n) {
        C->rc = MSA_EINVAL;
        return;
    }
    int nb = (int)((len + bk - 1) / bk);
    char *in_sel = malloc((size_t)nb);
    float *pr = malloc((size_t)len * sizeof *pr);
    if (!in_sel || !pr) {
        free(in_sel);
        free(pr);
        C->rc = MSA_ENOMEM;
        return;
    }
    const float sc = 1.0f / sqrtf((float)d);
    for (int i = 0; i < t->n; i++) {
        int pos = t->pos0 + i;
        for (int g = 0; g < Hkv; g++) {
            memset(in_sel, 0, (size_t)nb);
            const int32_t *sl = t->selected + ((size_t)i * Hkv + g) * t->top_k;
            for (int s = 0; s < t->top_k; s++)
                if (sl[s] >= 0 && sl[s] < nb) in_sel[sl[s]] = 1;
            for (int h = g * G; h < (g + 1) * G; h++) {
                const float *q = t->q + ((size_t)i * Hq + h) * d;
                float mx = -INFINITY;
                for (int j = 0; j <= pos; j++) {
                    pr[j] = msa_ref_dot(q, K + (((size_t)(j / bk) * Hkv + g) * bk + j % bk) * d, d) * sc;
                    if (pr[j] > mx) mx = pr[j];
                }
                double z = 0, zs = 0;
                for (int j = 0; j <= pos; j++) {
                    double e = exp((double)(pr[j] - mx));
                    z += e;
                    if (in_sel[j / bk]) zs += e;
                }
                double mass = zs / z;
                C->sum += mass;
                C->n++;
                if (mass < C->min) C->min = mass;
            }
        }
    }
    free(in_sel);
    free(pr);
}

int msa_calib_selected_mass(msa_model *m, const int32_t *tokens, size_t n_tokens, int seq_len,
                            int32_t bos, int block_size, int top_k, double *mean, double *min) {
    if (!m || !tokens || n_tokens < 1 || seq_len < 2 || block_size < 1 || top_k < 1)
        return msa_error(MSA_EINVAL, "calibrate: selected mass: bad argument");
    int T = seq_len;
    int32_t *seqs = NULL;
    int n_seq = make_seqs(tokens, n_tokens, bos, &T, &seqs);
    float *logits = malloc((size_t)m->info.vocab_size * sizeof *logits);
    if (!n_seq || !logits) {
        free(seqs);
        free(logits);
        return msa_error(MSA_ENOMEM, "calibrate: selected mass");
    }
    mass_ctx C = {m, NULL, block_size, 0, 1, 0, MSA_OK};
    msa_forward_opts o = msa_forward_default_opts();
    o.block_size = block_size;
    o.top_k = top_k;
    o.on_layer = mass_layer;
    o.user = &C;
    int rc = MSA_OK;
    for (int s = 0; !rc && s < n_seq; s++) {
        msa_kvcache_params kp = msa_kvcache_params_for(m, block_size);
        if ((rc = msa_kvcache_init(&kp, &C.mem))) break;
        rc = msa_model_forward(m, C.mem, seqs + (size_t)s * T, T, 0, &o, logits);
        if (!rc && C.rc) rc = msa_error(C.rc, "calibrate: selected mass");
        msa_kvcache_free(C.mem);
        C.mem = NULL;
    }
    if (!rc) {
        if (mean) *mean = C.sum / (C.n ? C.n : 1);
        if (min) *min = C.min;
    }
    free(seqs);
    free(logits);
    return rc;
}
