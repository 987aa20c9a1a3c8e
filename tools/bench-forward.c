/*
 * bench-forward.c: the GPU forward pass's own kernels (kernels/forward.cu,
 * kernels/gemv.cu, launchers in kernels/forward_ops.h) one at a time, at the
 * shapes of the model benchmark (Llama-3.2-1B: hidden 2048, 32 query heads,
 * 8 KV heads, head dim 64, FFN 8192, vocab 128256; a trained index of
 * d_idx 128) for a decode step (1 row) and a prefill chunk (1024 rows).
 *
 * Every row is first validated against its C reference (kernels/
 * forward_ref.c) on the same inputs, by normalised error (nmse = sum (gpu -
 * ref)^2 / sum ref^2, under 1e-5 for bf16 outputs and 1e-9 for fp32 sums,
 * 1e-7 for the GEMVs behind the rmsnorm stage),
 * and only timed when it passes. Timing: after a warm-up, 5 runs of R
 * back-to-back launches between CUDA events, the median run divided by R.
 * Launch overhead is included, which is what a decode step without a graph
 * pays; the GEMVs use programmatic dependent launch, so consecutive
 * launches overlap as they do in the forward pass. Bytes are counted
 * explicitly per row (each input read once, each output written once) and
 * the rate is given against a device-to-device copy measured in the same
 * run (bytes read + written).
 *
 *   bench-forward [--reps R]
 *
 * Exit status 1 when any row fails validation. docs/bench-kernels.md says
 * how to run it on the GPU machine.
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "engine/msa.h"
#include "kernels/forward_ops.h"

#define CU(expr)                                                                          \
    do {                                                                                  \
        cudaError_t e_ = (expr);                                                          \
        if (e_ != cudaSuccess) {                                                          \
            fprintf(stderr, "bench-forward: %s: %s\n", #expr, cudaGetErrorString(e_));    \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)
#define OK(expr)                                                                          \
    do {                                                                                  \
        int r_ = (expr);                                                                  \
        if (r_) {                                                                         \
            fprintf(stderr, "bench-forward: %s: %s (%s)\n", #expr, msa_strerror(r_),      \
                    msa_last_error());                                                    \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

/* Llama-3.2-1B */
#define D 2048
#define HQ 32
#define HKV 8
#define HD 64
#define FF 8192
#define VOCAB 128256
#define DI 128
#define NQKV ((HQ + 2 * HKV) * HD)
#define PREFILL 1024

static int g_reps = 50, g_failures, g_sms;
static double g_copy_gbs;
static cudaStream_t g_st;

/* ---- inputs ---------------------------------------------------------------- */

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static float randn(void) { /* sum of 4 uniforms, variance matched */
    float s = 0;
    for (int i = 0; i < 4; i++) {
        g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
        s += (float)((g_rng * 0x2545F4914F6CDD1DULL) >> 40) * (1.0f / 16777216.0f);
    }
    return (s - 2.0f) * 1.7320508f;
}
static float *h_f32(size_t n, float sd) {
    float *p = malloc(n * 4);
    for (size_t i = 0; i < n; i++) p[i] = sd * randn();
    return p;
}
static uint16_t *h_bf16(size_t n, float sd) {
    uint16_t *p = malloc(n * 2);
    for (size_t i = 0; i < n; i++) p[i] = msa_f32_to_bf16(sd * randn());
    return p;
}
static void *d_copy(const void *h, size_t bytes) {
    void *d;
    CU(cudaMalloc(&d, bytes));
    CU(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}
static void *h_back(const void *d, size_t bytes) {
    void *h = malloc(bytes);
    CU(cudaStreamSynchronize(g_st));
    CU(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
    return h;
}

static double nmse_bf16(const uint16_t *got, const uint16_t *want, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        const double g = msa_bf16_to_f32(got[i]), w = msa_bf16_to_f32(want[i]);
        if (!isfinite(g)) return INFINITY;
        num += (g - w) * (g - w), den += w * w;
    }
    return den > 0 ? num / den : num;
}
static double nmse_f32(const float *got, const float *want, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return INFINITY;
        num += ((double)got[i] - want[i]) * ((double)got[i] - want[i]), den += (double)want[i] * want[i];
    }
    return den > 0 ? num / den : num;
}

/* ---- timing ----------------------------------------------------------------- */

typedef void (*launch_fn)(void *ctx);

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double time_ms(launch_fn f, void *ctx) {
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    for (int i = 0; i < 3; i++) f(ctx);
    double t[5];
    for (int r = 0; r < 5; r++) {
        CU(cudaEventRecord(e0, g_st));
        for (int i = 0; i < g_reps; i++) f(ctx);
        CU(cudaEventRecord(e1, g_st));
        CU(cudaEventSynchronize(e1));
        float ms;
        CU(cudaEventElapsedTime(&ms, e0, e1));
        t[r] = ms / g_reps;
    }
    qsort(t, 5, sizeof *t, cmp_d);
    CU(cudaEventDestroy(e0));
    CU(cudaEventDestroy(e1));
    return t[2];
}

/* One table row: validation result, then (when it passed) the timing. */
static void row(const char *name, const char *shape, double err, double tol, double bytes,
                launch_fn f, void *ctx) {
    const int pass = err < tol;
    if (!pass) {
        g_failures++;
        printf("| %-30s | %-22s | FAIL nmse %.2e (tolerance %.0e) | not timed |\n", name, shape, err, tol);
        return;
    }
    const double ms = time_ms(f, ctx), gbs = bytes / (ms * 1e-3) / 1e9;
    printf("| %-30s | %-22s | %9.2e | %11.0f | %8.4f | %7.1f | %5.1f%% |\n", name, shape, err, bytes,
           ms, gbs, 100.0 * gbs / g_copy_gbs);
    fflush(stdout);
}

/* ---- the rows ------------------------------------------------------------------ */

typedef struct {
    int n;
    const uint16_t *emb;
    const int32_t *tok;
    float *x;
} embed_ctx;
static void run_embed(void *c) {
    embed_ctx *e = c;
    OK(msa_fwd_embed(e->emb, e->tok, e->x, e->n, D, g_st));
}

static void bench_embed(int n) {
    const int V = 4096; /* rows drawn from a smaller table: the bytes are the same */
    uint16_t *emb = h_bf16((size_t)V * D, 1.0f);
    int32_t *tok = malloc(n * 4);
    for (int i = 0; i < n; i++) tok[i] = (int)(randn() * 1000 + 2048) & (V - 1);
    float *want = malloc((size_t)n * D * 4);
    msa_fwd_embed_ref(emb, tok, want, n, D);
    embed_ctx c = {n, d_copy(emb, (size_t)V * D * 2), d_copy(tok, n * 4), NULL};
    CU(cudaMalloc((void **)&c.x, (size_t)n * D * 4));
    run_embed(&c);
    float *got = h_back(c.x, (size_t)n * D * 4);
    char shape[64];
    snprintf(shape, sizeof shape, "%d x %d", n, D);
    row("embed", shape, nmse_f32(got, want, (size_t)n * D), 1e-12, (double)n * D * 6 + n * 4,
        run_embed, &c);
    CU(cudaFree((void *)c.emb)); CU(cudaFree((void *)c.tok)); CU(cudaFree(c.x));
    free(emb); free(tok); free(want); free(got);
}

typedef struct {
    int n;
    const float *x, *w;
    uint16_t *out;
} rms_ctx;
static void run_rms(void *c) {
    rms_ctx *r = c;
    OK(msa_fwd_rmsnorm(r->x, r->w, r->out, r->n, D, 1e-5f, g_st));
}

static void bench_rmsnorm(int n) {
    float *x = h_f32((size_t)n * D, 2.0f), *w = h_f32(D, 1.0f);
    uint16_t *want = malloc((size_t)n * D * 2);
    msa_fwd_rmsnorm_ref(x, w, want, n, D, 1e-5f);
    rms_ctx c = {n, d_copy(x, (size_t)n * D * 4), d_copy(w, D * 4), NULL};
    CU(cudaMalloc((void **)&c.out, (size_t)n * D * 2));
    run_rms(&c);
    uint16_t *got = h_back(c.out, (size_t)n * D * 2);
    char shape[64];
    snprintf(shape, sizeof shape, "%d x %d", n, D);
    row("rmsnorm -> bf16", shape, nmse_bf16(got, want, (size_t)n * D), 1e-5,
        (double)n * D * 6 + D * 4, run_rms, &c);
    CU(cudaFree((void *)c.x)); CU(cudaFree((void *)c.w)); CU(cudaFree(c.out));
    free(x); free(w); free(want); free(got);
}

typedef struct {
    int n;
    msa_fwd_qkv a;
} qkv_ctx;
static void run_qkv(void *c) {
    qkv_ctx *q = c;
    OK(msa_fwd_qkv_post(&q->a, q->n, g_st));
}

/* The training-free layout: q, q_idx and the k, v, k_idx rows in staging
 * (the paged path's layout: each row written once). */
static void bench_qkv(int n) {
    const size_t qd = (size_t)HQ * HD, kvd = (size_t)HKV * HD;
    float *y = h_f32((size_t)n * NQKV, 1.0f), *freq = malloc(HD / 2 * 4);
    for (int p = 0; p < HD / 2; p++) freq[p] = 1.0f / powf(500000.0f, (float)(2 * p) / HD);
    int32_t *pos = malloc(n * 4);
    for (int i = 0; i < n; i++) pos[i] = 4096 + i;
    uint16_t *w[5];
    const size_t sz[5] = {n * qd, n * kvd, n * kvd, n * kvd, n * kvd};
    for (int i = 0; i < 5; i++) w[i] = malloc(sz[i] * 2);
    msa_fwd_qkv a;
    memset(&a, 0, sizeof a);
    a.y = y; a.pos = pos; a.inv_freq = freq;
    a.q = w[0]; a.qi = w[1]; a.kc = w[2]; a.vc = w[3]; a.kidx = w[4];
    a.Nqkv = NQKV; a.Hq = HQ; a.Hkv = HKV; a.d = HD; a.G = HQ / HKV; a.Bk = 128; a.rows = 1;
    msa_fwd_qkv_post_ref(&a, n);
    qkv_ctx c = {n, a};
    c.a.y = d_copy(y, (size_t)n * NQKV * 4);
    c.a.pos = d_copy(pos, n * 4);
    c.a.inv_freq = d_copy(freq, HD / 2 * 4);
    uint16_t *dv[5];
    for (int i = 0; i < 5; i++) CU(cudaMalloc((void **)&dv[i], sz[i] * 2));
    c.a.q = dv[0]; c.a.qi = dv[1]; c.a.kc = dv[2]; c.a.vc = dv[3]; c.a.kidx = dv[4];
    run_qkv(&c);
    double err = 0;
    for (int i = 0; i < 5; i++) {
        uint16_t *g = h_back(dv[i], sz[i] * 2);
        err = fmax(err, nmse_bf16(g, w[i], sz[i]));
        free(g);
    }
    char shape[64];
    snprintf(shape, sizeof shape, "%d x %d/%d/%d", n, HQ, HKV, HD);
    row("qkv post (RoPE, q_idx mean)", shape, err, 1e-5,
        (double)n * ((qd + 2 * kvd) * 4 + (qd + 4 * kvd) * 2), run_qkv, &c);
    CU(cudaFree((void *)c.a.y)); CU(cudaFree((void *)c.a.pos)); CU(cudaFree((void *)c.a.inv_freq));
    for (int i = 0; i < 5; i++) {
        CU(cudaFree(dv[i]));
        free(w[i]);
    }
    free(y); free(freq); free(pos);
}

typedef struct {
    int n;
    msa_fwd_index a;
} idx_ctx;
static void run_idx(void *c) {
    idx_ctx *x = c;
    OK(msa_fwd_index_rope(&x->a, x->n, g_st));
}

static void bench_index(int n) {
    const int off0 = NQKV, Nq = NQKV + (HKV + 1) * DI;
    float *y = h_f32((size_t)n * Nq, 1.0f), *qn = h_f32(DI, 0.2f), *kn = h_f32(DI, 0.2f);
    float *freq = malloc(DI / 2 * 4);
    for (int p = 0; p < DI / 2; p++) freq[p] = 1.0f / powf(500000.0f, (float)(2 * p) / DI);
    int32_t *pos = malloc(n * 4);
    for (int i = 0; i < n; i++) pos[i] = 4096 + i;
    const size_t q_n = (size_t)n * HKV * DI, k_n = (size_t)n * DI;
    uint16_t *wq = malloc(q_n * 2), *wk = malloc(k_n * 2);
    msa_fwd_index a;
    memset(&a, 0, sizeof a);
    a.y = y; a.pos = pos; a.inv_freq = freq; a.qn = qn; a.kn = kn; a.qi = wq; a.kidx = wk;
    a.Nqkv = Nq; a.off0 = off0; a.Hkv = HKV; a.di = DI; a.Bk = 128; a.rows = 1; a.eps = 1e-5f;
    msa_fwd_index_rope_ref(&a, n);
    idx_ctx c = {n, a};
    c.a.y = d_copy(y, (size_t)n * Nq * 4);
    c.a.pos = d_copy(pos, n * 4);
    c.a.inv_freq = d_copy(freq, DI / 2 * 4);
    c.a.qn = d_copy(qn, DI * 4);
    c.a.kn = d_copy(kn, DI * 4);
    CU(cudaMalloc((void **)&c.a.qi, q_n * 2));
    CU(cudaMalloc((void **)&c.a.kidx, k_n * 2));
    run_idx(&c);
    uint16_t *gq = h_back(c.a.qi, q_n * 2), *gk = h_back(c.a.kidx, k_n * 2);
    char shape[64];
    snprintf(shape, sizeof shape, "%d x %d+1 x %d", n, HKV, DI);
    row("trained index (norm, RoPE)", shape, fmax(nmse_bf16(gq, wq, q_n), nmse_bf16(gk, wk, k_n)),
        1e-5, (double)n * (HKV + 1) * DI * 6, run_idx, &c);
    CU(cudaFree((void *)c.a.y)); CU(cudaFree((void *)c.a.pos)); CU(cudaFree((void *)c.a.inv_freq));
    CU(cudaFree((void *)c.a.qn)); CU(cudaFree((void *)c.a.kn)); CU(cudaFree(c.a.qi));
    CU(cudaFree(c.a.kidx));
    free(y); free(qn); free(kn); free(freq); free(pos); free(wq); free(wk); free(gq); free(gk);
}

typedef struct {
    int n;
    const float *y;
    uint16_t *h;
    float *x;
    const float *b;
} ew_ctx;
static void run_swiglu(void *c) {
    ew_ctx *e = c;
    OK(msa_fwd_swiglu(e->y, e->h, e->n, FF, g_st));
}
static void run_bias(void *c) {
    ew_ctx *e = c;
    OK(msa_fwd_add_bias(e->x, e->b, e->n, D, g_st));
}

static void bench_swiglu_bias(int n) {
    float *y = h_f32((size_t)n * 2 * FF, 2.0f);
    uint16_t *want = malloc((size_t)n * FF * 2);
    msa_fwd_swiglu_ref(y, want, n, FF);
    ew_ctx c = {n, d_copy(y, (size_t)n * 2 * FF * 4), NULL, NULL, NULL};
    CU(cudaMalloc((void **)&c.h, (size_t)n * FF * 2));
    run_swiglu(&c);
    uint16_t *got = h_back(c.h, (size_t)n * FF * 2);
    char shape[64];
    snprintf(shape, sizeof shape, "%d x %d", n, FF);
    row("swiglu -> bf16", shape, nmse_bf16(got, want, (size_t)n * FF), 1e-5,
        (double)n * FF * 10, run_swiglu, &c);
    /* bias over (n, D): validated on one add (timing repeats it in place) */
    float *x = h_f32((size_t)n * D, 1.0f), *b = h_f32(D, 1.0f), *xr = malloc((size_t)n * D * 4);
    memcpy(xr, x, (size_t)n * D * 4);
    msa_fwd_add_bias_ref(xr, b, n, D);
    c.x = d_copy(x, (size_t)n * D * 4);
    c.b = d_copy(b, D * 4);
    run_bias(&c);
    float *gx = h_back(c.x, (size_t)n * D * 4);
    snprintf(shape, sizeof shape, "%d x %d", n, D);
    row("bias add (fp32, in place)", shape, nmse_f32(gx, xr, (size_t)n * D), 1e-12,
        (double)n * D * 8 + D * 4, run_bias, &c);
    CU(cudaFree((void *)c.y)); CU(cudaFree(c.h)); CU(cudaFree(c.x)); CU(cudaFree((void *)c.b));
    free(y); free(want); free(got); free(x); free(b); free(xr); free(gx);
}

typedef struct {
    int rows;
    const float *lg;
    int32_t *out;
} am_ctx;
static void run_argmax(void *c) {
    am_ctx *a = c;
    OK(msa_fwd_argmax(a->lg, a->rows, VOCAB, a->out, g_st));
}

static void bench_argmax(int rows) {
    float *lg = h_f32((size_t)rows * VOCAB, 3.0f);
    int32_t *want = malloc(rows * 4);
    msa_fwd_argmax_ref(lg, rows, VOCAB, want);
    am_ctx c = {rows, d_copy(lg, (size_t)rows * VOCAB * 4), NULL};
    CU(cudaMalloc((void **)&c.out, rows * 4));
    run_argmax(&c);
    int32_t *got = h_back(c.out, rows * 4);
    int bad = 0;
    for (int r = 0; r < rows; r++) bad += got[r] != want[r];
    char shape[64];
    snprintf(shape, sizeof shape, "%d x %d", rows, VOCAB);
    row("argmax (mismatches)", shape, bad, 0.5, (double)rows * VOCAB * 4, run_argmax, &c);
    CU(cudaFree((void *)c.lg)); CU(cudaFree(c.out));
    free(lg); free(want); free(got);
}

typedef struct {
    msa_fwd_gemv_args g;
} gemv_ctx;
static void run_gemv(void *c) { OK(msa_fwd_gemv(&((gemv_ctx *)c)->g, g_st)); }

/* One GEMV of the decode step: out_kind 0 y =, 1 y +=, 2 gate/up SwiGLU. */
static void bench_gemv(const char *name, int in, int outd, int mode, int out_kind, int epi, int v3,
                       void *ws) {
    const int rows_w = out_kind == 2 ? 2 * outd : outd;
    uint16_t *W = h_bf16((size_t)rows_w * in, 1.0f / sqrtf((float)in)), *xb = h_bf16(in, 1.0f);
    float *xf = h_f32(in, 2.0f), *nw = h_f32(in, 1.0f), *y0 = h_f32(outd, 1.0f);
    float *wy = malloc(outd * 4);
    memcpy(wy, y0, outd * 4);
    uint16_t *wh = malloc(outd * 2);
    /* the qkv epilogue's layout: this GEMV's y, training-free, staging rows */
    const size_t qd = (size_t)HQ * HD, kvd = (size_t)HKV * HD;
    float freq[HD / 2];
    for (int p = 0; p < HD / 2; p++) freq[p] = 1.0f / powf(500000.0f, (float)(2 * p) / HD);
    int32_t pos = 4096, amax_w = 0;
    uint16_t *qw[5], *qdv[5];
    const size_t qs[5] = {qd, kvd, kvd, kvd, kvd};
    msa_fwd_qkv qa, dqa;
    memset(&qa, 0, sizeof qa);
    for (int i = 0; i < 5; i++) qw[i] = malloc(qs[i] * 2);
    qa.pos = &pos; qa.inv_freq = freq; qa.q = qw[0]; qa.qi = qw[1]; qa.kc = qw[2]; qa.vc = qw[3];
    qa.kidx = qw[4]; qa.Nqkv = NQKV; qa.Hq = HQ; qa.Hkv = HKV; qa.d = HD; qa.G = HQ / HKV;
    qa.Bk = 128; qa.rows = 1; qa.y = wy;
    msa_fwd_gemv_args g;
    memset(&g, 0, sizeof g);
    g.W = W; g.xb = xb; g.xf = xf; g.nw = nw; g.eps = 1e-5f; g.mode = mode; g.in = in;
    g.outd = outd; g.y = out_kind == 2 ? NULL : wy; g.accumulate = out_kind == 1;
    g.h = out_kind == 2 ? wh : NULL; g.epi = epi; g.qkv = &qa; g.amax = &amax_w; g.v3 = v3;
    msa_fwd_gemv_ref(&g);
    gemv_ctx c;
    c.g = g;
    c.g.W = d_copy(W, (size_t)rows_w * in * 2);
    c.g.xb = d_copy(xb, in * 2);
    c.g.xf = d_copy(xf, in * 4);
    c.g.nw = d_copy(nw, in * 4);
    c.g.y = out_kind == 2 ? NULL : d_copy(y0, outd * 4);
    c.g.h = NULL; /* set: the kernel reads W as gate/up pairs */
    if (out_kind == 2) CU(cudaMalloc((void **)&c.g.h, outd * 2));
    CU(cudaMalloc((void **)&c.g.amax, 4));
    c.g.workspace = ws;
    c.g.sms = g_sms;
    dqa = qa;
    dqa.y = c.g.y;
    dqa.pos = d_copy(&pos, 4);
    dqa.inv_freq = d_copy(freq, sizeof freq);
    for (int i = 0; i < 5; i++) CU(cudaMalloc((void **)&qdv[i], qs[i] * 2));
    dqa.q = qdv[0]; dqa.qi = qdv[1]; dqa.kc = qdv[2]; dqa.vc = qdv[3]; dqa.kidx = qdv[4];
    c.g.qkv = &dqa;
    run_gemv(&c);
    double err;
    if (out_kind == 2) {
        uint16_t *gh = h_back(c.g.h, outd * 2);
        err = nmse_bf16(gh, wh, outd);
        free(gh);
    } else {
        float *gy = h_back(c.g.y, outd * 4);
        err = nmse_f32(gy, wy, outd);
        if (epi == MSA_FWD_EPI_ARGMAX && !v3) { /* the epilogue: the argmax of the GPU's own y */
            int32_t own, *ga = h_back(c.g.amax, 4);
            msa_fwd_argmax_ref(gy, 1, outd, &own);
            if (*ga != own) err = INFINITY;
            free(ga);
        }
        if (epi == MSA_FWD_EPI_QKV && !v3) { /* the epilogue on the GPU's own y */
            qa.y = gy;
            msa_fwd_qkv_post_ref(&qa, 1);
            for (int i = 0; i < 5; i++) {
                uint16_t *gq = h_back(qdv[i], qs[i] * 2);
                if (nmse_bf16(gq, qw[i], qs[i]) >= 1e-5) err = INFINITY;
                free(gq);
            }
        }
        free(gy);
    }
    /* bytes: the weights, the input (x and the norm weights for NORM), the
     * output (read and written when accumulating) */
    const double bytes = (double)rows_w * in * 2 + (mode == MSA_FWD_GEMV_NORM ? in * 8.0 : in * 2.0) +
                         (out_kind == 2 ? outd * 2.0 : out_kind == 1 ? outd * 8.0 : outd * 4.0);
    char nm[64], shape[64];
    snprintf(nm, sizeof nm, "gemv %s%s", name, v3 ? " (v3)" : "");
    snprintf(shape, sizeof shape, "%d -> %d%s", in, out_kind == 2 ? 2 * outd : outd,
             out_kind == 2 ? " (pairs)" : "");
    /* fp32 outputs: 1e-9, or 1e-7 behind the norm stage, whose bf16 rounding
     * of u can land one step apart from the reference's for a few of the in
     * elements (tests/test-forward-kernels-cuda.c says more) */
    row(nm, shape, err, out_kind == 2 ? 1e-5 : mode == MSA_FWD_GEMV_NORM ? 1e-7 : 1e-9, bytes,
        run_gemv, &c);
    CU(cudaFree((void *)c.g.W)); CU(cudaFree((void *)c.g.xb)); CU(cudaFree((void *)c.g.xf));
    CU(cudaFree((void *)c.g.nw)); CU(cudaFree(c.g.amax));
    if (c.g.h) CU(cudaFree(c.g.h));
    if (c.g.y) CU(cudaFree(c.g.y));
    CU(cudaFree((void *)dqa.pos)); CU(cudaFree((void *)dqa.inv_freq));
    for (int i = 0; i < 5; i++) {
        CU(cudaFree(qdv[i]));
        free(qw[i]);
    }
    free(W); free(xb); free(xf); free(nw); free(y0); free(wy); free(wh);
}

typedef struct {
    int n, Hq, Hkv, d, Bk, top_k;
    const uint16_t *q, *k, *v;
    const int32_t *pos, *sel;
    uint16_t *out;
} ga_ctx;
static void run_ga(void *c) {
    ga_ctx *a = c;
    OK(msa_fwd_generic_attention(a->q, a->k, a->v, a->pos, a->sel, a->out, a->n, a->Hq, a->Hkv,
                                 a->d, a->Bk, a->top_k, 1.0f / sqrtf((float)a->d), NULL, g_st));
}

/* The generic attention at stories260K's shape (8/4/8, the model it exists
 * for), dense over L tokens: n rows at the end of the sequence. */
static void bench_generic(int n, int L) {
    const int Hq = 8, Hkv = 4, d = 8, Bk = 16, nb = (L + Bk - 1) / Bk;
    const size_t kv_n = (size_t)nb * Hkv * Bk * d, q_n = (size_t)n * Hq * d;
    uint16_t *q = h_bf16(q_n, 1.0f), *k = h_bf16(kv_n, 1.0f), *v = h_bf16(kv_n, 1.0f);
    int32_t *pos = malloc(n * 4);
    for (int i = 0; i < n; i++) pos[i] = L - n + i;
    uint16_t *want = malloc(q_n * 2);
    msa_fwd_generic_attention_ref(q, k, v, pos, NULL, want, n, Hq, Hkv, d, Bk, 0,
                                  1.0f / sqrtf((float)d), NULL);
    ga_ctx c = {n, Hq, Hkv, d, Bk, 0, d_copy(q, q_n * 2), d_copy(k, kv_n * 2), d_copy(v, kv_n * 2),
                d_copy(pos, n * 4), NULL, NULL};
    CU(cudaMalloc((void **)&c.out, q_n * 2));
    run_ga(&c);
    uint16_t *got = h_back(c.out, q_n * 2);
    char shape[64];
    snprintf(shape, sizeof shape, "%d rows, L %d, 8/4/8", n, L);
    /* bytes: K and V of the visible tokens once, q and out */
    row("generic attention (dense)", shape, nmse_bf16(got, want, q_n), 1e-5,
        (double)L * Hkv * d * 4 + q_n * 4.0, run_ga, &c);
    CU(cudaFree((void *)c.q)); CU(cudaFree((void *)c.k)); CU(cudaFree((void *)c.v));
    CU(cudaFree((void *)c.pos)); CU(cudaFree(c.out));
    free(q); free(k); free(v); free(pos); free(want); free(got);
}

typedef struct {
    uint16_t *p;
    size_t n;
} fill_ctx;
static void run_fill(void *c) {
    fill_ctx *f = c;
    OK(msa_fwd_fill_uniform_bf16(f->p, f->n, 7, 1.0f, g_st));
}

static void bench_fill(size_t n) {
    uint16_t *want = malloc(n * 2);
    msa_fwd_fill_uniform_bf16_ref(want, n, 7, 1.0f);
    fill_ctx c = {NULL, n};
    CU(cudaMalloc((void **)&c.p, n * 2));
    run_fill(&c);
    uint16_t *got = h_back(c.p, n * 2);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += got[i] != want[i];
    char shape[64];
    snprintf(shape, sizeof shape, "%zu bf16", n);
    row("random fill (mismatches)", shape, (double)bad, 0.5, (double)n * 2, run_fill, &c);
    CU(cudaFree(c.p));
    free(want); free(got);
}

static double copy_gbs(void) {
    const size_t bytes = (size_t)1 << 30;
    void *a, *b;
    CU(cudaMalloc(&a, bytes));
    CU(cudaMalloc(&b, bytes));
    CU(cudaMemsetAsync(a, 1, bytes, g_st));
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    CU(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, g_st));
    CU(cudaEventRecord(e0, g_st));
    for (int i = 0; i < 5; i++) CU(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, g_st));
    CU(cudaEventRecord(e1, g_st));
    CU(cudaEventSynchronize(e1));
    float ms;
    CU(cudaEventElapsedTime(&ms, e0, e1));
    CU(cudaFree(a)); CU(cudaFree(b));
    CU(cudaEventDestroy(e0)); CU(cudaEventDestroy(e1));
    return 2.0 * bytes * 5 / (ms * 1e-3) / 1e9;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) g_reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench-forward [--reps R]\n");
            return 2;
        }
    }
    if (g_reps < 1) g_reps = 1;
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev <= 0) {
        printf("bench-forward: no CUDA device\n");
        return 77;
    }
    struct cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, 0));
    g_sms = prop.multiProcessorCount;
    CU(cudaStreamCreateWithFlags(&g_st, cudaStreamNonBlocking));
    g_copy_gbs = copy_gbs();
    printf("device: %s, %d SMs; device-to-device copy %.0f GB/s (read + written)\n", prop.name, g_sms,
           g_copy_gbs);
    printf("%d launches per timing, median of 5; nmse against kernels/forward_ref.c\n\n", g_reps);
    printf("| %-30s | %-22s | %9s | %11s | %8s | %7s | %6s |\n", "kernel", "shape", "nmse", "bytes",
           "ms", "GB/s", "copy");
    printf("|%s|%s|%s|%s|%s|%s|%s|\n", "--------------------------------", "------------------------",
           "-----------", "-------------", "----------", "---------", "--------");
    bench_embed(1);
    bench_embed(PREFILL);
    bench_rmsnorm(1);
    bench_rmsnorm(PREFILL);
    bench_qkv(1);
    bench_qkv(PREFILL);
    bench_index(1);
    bench_index(PREFILL);
    bench_swiglu_bias(1);
    bench_swiglu_bias(PREFILL);
    bench_argmax(1);
    void *ws;
    CU(cudaMalloc(&ws, msa_fwd_gemv_workspace_size()));
    CU(cudaMemset(ws, 0, msa_fwd_gemv_workspace_size()));
    for (int v3 = 0; v3 < 2; v3++) {
        bench_gemv("qkv (norm, qkv epilogue)", D, NQKV, MSA_FWD_GEMV_NORM, 0, MSA_FWD_EPI_QKV, v3, ws);
        bench_gemv("o (y +=)", HQ * HD, D, MSA_FWD_GEMV_PLAIN, 1, MSA_FWD_EPI_NONE, v3, ws);
        bench_gemv("gate/up + SwiGLU (norm)", D, FF, MSA_FWD_GEMV_NORM, 2, MSA_FWD_EPI_NONE, v3, ws);
        bench_gemv("down (y +=)", FF, D, MSA_FWD_GEMV_PLAIN, 1, MSA_FWD_EPI_NONE, v3, ws);
        bench_gemv("classifier (norm, argmax)", D, VOCAB, MSA_FWD_GEMV_NORM, 0, MSA_FWD_EPI_ARGMAX, v3,
                   ws);
    }
    CU(cudaFree(ws));
    bench_generic(1, 512);
    bench_generic(256, 512);
    bench_fill((size_t)64 << 20);
    CU(cudaStreamDestroy(g_st));
    if (g_failures) printf("\nbench-forward: %d rows failed validation\n", g_failures);
    return g_failures ? 1 : 0;
}
