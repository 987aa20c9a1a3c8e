/*
 * test-forward-kernels-cuda.c: the GPU forward pass's own kernels
 * (kernels/forward.cu, kernels/gemv.cu) against their C references
 * (kernels/forward_ref.c), op by op, over a grid of shapes that includes odd
 * ones (sizes that are not multiples of a warp, of the block size or of the
 * GEMV's 8-element words; one-element rows; more rows than threads).
 *
 * Inputs are drawn from the seeded generator of tests/testutil.h (the seed is
 * printed; MSA_TEST_SEED replays a run), never zeros. Outputs are poisoned
 * (NaN) before each launch, so that an element the kernel should have written
 * and did not shows up, and one it should not have written is checked to
 * still hold the poison. Values are compared by normalised error,
 *   nmse = sum (gpu - ref)^2 / sum ref^2,
 * as llama.cpp's test-backend-ops does: under 1e-5 for bf16 outputs (one
 * bf16 rounding is about 1e-6), under 1e-9 for fp32 outputs of sums (the
 * summation order differs; 1e-7 behind the GEMV's rmsnorm stage, see
 * TOL_F32_NORM); exact where there is no rounding to differ (embedding rows,
 * bias adds, argmax, the hash fill).
 *
 * Label gpu: exits 77 (skipped) when the build has no CUDA or no GPU is
 * visible.
 */
#include "engine/msa.h"
#include "base/base.h"
#include "tests/testutil.h"

#ifndef MSA_HAVE_CUDA
int main(void) { T_SKIP("built without CUDA"); }
#else

#include <cuda_runtime_api.h>

#include "kernels/cuda.h"
#include "kernels/forward_ops.h"

#define CU(expr)                                                                         \
    do {                                                                                 \
        cudaError_t e_ = (expr);                                                         \
        if (e_ != cudaSuccess) {                                                         \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr,                \
                    cudaGetErrorString(e_));                                             \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

#define TOL_BF16 1e-5
#define TOL_F32 1e-9
/* fp32 GEMV outputs behind the rmsnorm stage: the kernel rounds its input
 * u = bf16(rmsnorm(x) * w) from a float computation (tree-ordered sum of
 * squares), the reference from a double one, so for a handful of the in
 * elements the two land one bf16 step (2^-8 relative) apart. Each such
 * element moves y_i by at most 2^-8 of one of its terms; errors are taken
 * relative to the terms' sizes (gemv_err), so 1e-7 allows many such flips,
 * while a wrong element, row or chunk of the kernel costs far more. */
#define TOL_F32_NORM 1e-7
#define POISON_BF16 0x7fc1u /* a NaN no kernel produces */

static int g_sms;

/* ---- host helpers ------------------------------------------------------------ */

static float *rand_f32(size_t n, float sd) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = sd * t_randn();
    return p;
}
static uint16_t *rand_bf16(size_t n, float sd) {
    uint16_t *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = msa_f32_to_bf16(sd * t_randn());
    return p;
}
/* uniform in [-a, a): cheaper than normal for the large GEMV matrices */
static uint16_t *rand_bf16_uniform(size_t n, float a) {
    uint16_t *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = msa_f32_to_bf16(t_randf(-a, a));
    return p;
}
static uint16_t *poison_bf16(size_t n) {
    uint16_t *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = POISON_BF16;
    return p;
}
static float *poison_f32(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = NAN;
    return p;
}
static void *dup_host(const void *p, size_t bytes) {
    void *q = malloc(bytes ? bytes : 1);
    memcpy(q, p, bytes);
    return q;
}
static void *to_dev(const void *h, size_t bytes) {
    void *d = NULL;
    CU(cudaMalloc(&d, bytes ? bytes : 16));
    if (bytes) CU(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}
static void from_dev(void *h, const void *d, size_t bytes) {
    CU(cudaDeviceSynchronize());
    if (bytes) CU(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
}

/* Normalised error of got against want; an element that is NaN in want
 * (poison: not written) must be the same bits in got, and every other
 * element must be finite. Returns +inf on any such mismatch. */
static double nmse_bf16(const uint16_t *got, const uint16_t *want, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        float w = msa_bf16_to_f32(want[i]), g = msa_bf16_to_f32(got[i]);
        if (isnan(w)) {
            if (got[i] != want[i]) return INFINITY;
            continue;
        }
        if (!isfinite(g)) return INFINITY;
        num += ((double)g - w) * ((double)g - w);
        den += (double)w * w;
    }
    return den > 0 ? num / den : num;
}

/* Worst error per op, printed at the end. */
typedef struct {
    const char *name;
    double worst;
    int cases;
} op_stat;
static op_stat g_ops[32];
static int g_n_ops;
static void note(const char *op, double err) {
    int i = 0;
    while (i < g_n_ops && strcmp(g_ops[i].name, op)) i++;
    if (i == g_n_ops && g_n_ops < 32) g_ops[g_n_ops++] = (op_stat){op, 0, 0};
    if (i == g_n_ops) return;
    if (!(err <= g_ops[i].worst)) g_ops[i].worst = err;
    g_ops[i].cases++;
}

/* ---- embedding, rmsnorm, SwiGLU, bias ---------------------------------------- */

static void test_embed(void) {
    const int Ds[] = {1, 7, 64, 300, 2049}, ns[] = {1, 5, 33}, V = 37;
    for (int a = 0; a < 5; a++)
        for (int b = 0; b < 3; b++) {
            const int D = Ds[a], n = ns[b];
            uint16_t *emb = rand_bf16((size_t)V * D, 1.0f);
            int32_t *tok = malloc(n * sizeof *tok);
            for (int i = 0; i < n; i++) tok[i] = t_randint(V);
            float *want = poison_f32((size_t)n * D), *got = poison_f32((size_t)n * D);
            msa_fwd_embed_ref(emb, tok, want, n, D);
            void *de = to_dev(emb, (size_t)V * D * 2), *dt = to_dev(tok, n * 4);
            float *dx = to_dev(got, (size_t)n * D * 4);
            CHECK_OK(msa_fwd_embed(de, dt, dx, n, D, NULL));
            from_dev(got, dx, (size_t)n * D * 4);
            CHECKF(!memcmp(got, want, (size_t)n * D * 4), "embed n %d D %d: rows differ", n, D);
            note("embed (exact)", memcmp(got, want, (size_t)n * D * 4) ? 1 : 0);
            CU(cudaFree(de)); CU(cudaFree(dt)); CU(cudaFree(dx));
            free(emb); free(tok); free(want); free(got);
        }
}

static void test_rmsnorm(void) {
    const int Ds[] = {1, 7, 63, 256, 1000, 2051}, rs[] = {1, 3, 17};
    for (int a = 0; a < 6; a++)
        for (int b = 0; b < 3; b++) {
            const int D = Ds[a], rows = rs[b];
            float *x = rand_f32((size_t)rows * D, 3.0f), *w = rand_f32(D, 1.0f);
            uint16_t *want = poison_bf16((size_t)rows * D), *got = poison_bf16((size_t)rows * D);
            msa_fwd_rmsnorm_ref(x, w, want, rows, D, 1e-5f);
            float *dx = to_dev(x, (size_t)rows * D * 4), *dw = to_dev(w, D * 4);
            uint16_t *dout = to_dev(got, (size_t)rows * D * 2);
            CHECK_OK(msa_fwd_rmsnorm(dx, dw, dout, rows, D, 1e-5f, NULL));
            from_dev(got, dout, (size_t)rows * D * 2);
            double e = nmse_bf16(got, want, (size_t)rows * D);
            CHECKF(e < TOL_BF16, "rmsnorm rows %d D %d: nmse %.3g", rows, D, e);
            note("rmsnorm", e);
            CU(cudaFree(dx)); CU(cudaFree(dw)); CU(cudaFree(dout));
            free(x); free(w); free(want); free(got);
        }
}

static void test_swiglu_bias(void) {
    const int Fs[] = {1, 5, 64, 1000, 8193}, ns[] = {1, 3, 17};
    for (int a = 0; a < 5; a++)
        for (int b = 0; b < 3; b++) {
            const int F = Fs[a], n = ns[b];
            float *y = rand_f32((size_t)n * 2 * F, 2.0f);
            uint16_t *want = poison_bf16((size_t)n * F), *got = poison_bf16((size_t)n * F);
            msa_fwd_swiglu_ref(y, want, n, F);
            float *dy = to_dev(y, (size_t)n * 2 * F * 4);
            uint16_t *dh = to_dev(got, (size_t)n * F * 2);
            CHECK_OK(msa_fwd_swiglu(dy, dh, n, F, NULL));
            from_dev(got, dh, (size_t)n * F * 2);
            double e = nmse_bf16(got, want, (size_t)n * F);
            CHECKF(e < TOL_BF16, "swiglu n %d F %d: nmse %.3g", n, F, e);
            note("swiglu", e);
            /* the bias add over (n, F) */
            float *bias = rand_f32(F, 1.0f), *x = dup_host(y, (size_t)n * F * 4);
            float *dbias = to_dev(bias, F * 4);
            msa_fwd_add_bias_ref(x, bias, n, F);
            CHECK_OK(msa_fwd_add_bias(dy, dbias, n, F, NULL));
            float *gx = malloc((size_t)n * F * 4);
            from_dev(gx, dy, (size_t)n * F * 4);
            CHECKF(!memcmp(gx, x, (size_t)n * F * 4), "add_bias n %d D %d: differs", n, F);
            note("add_bias (exact)", memcmp(gx, x, (size_t)n * F * 4) ? 1 : 0);
            CU(cudaFree(dy)); CU(cudaFree(dh)); CU(cudaFree(dbias));
            free(y); free(want); free(got); free(bias); free(x); free(gx);
        }
}

/* ---- argmax ---------------------------------------------------------------- */

static void test_argmax(void) {
    const int Vs[] = {1, 7, 1000, 4097, 128256}, rs[] = {1, 3};
    for (int a = 0; a < 5; a++)
        for (int b = 0; b < 2; b++)
            for (int kind = 0; kind < 3; kind++) {
                const int V = Vs[a], rows = rs[b];
                /* kind 0: normal values; 1: small integers (many ties of the
                 * maximum); 2: NaN and -inf sprinkled, and a row all -inf */
                float *lg = malloc((size_t)rows * V * 4);
                for (size_t i = 0; i < (size_t)rows * V; i++) {
                    lg[i] = kind == 1 ? (float)t_randint(5) : t_randn();
                    if (kind == 2 && t_randint(10) == 0) lg[i] = t_randint(2) ? NAN : -INFINITY;
                }
                if (kind == 2 && rows > 1)
                    for (int j = 0; j < V; j++) lg[(size_t)V + j] = -INFINITY;
                int32_t want[3], got[3] = {-7, -7, -7};
                msa_fwd_argmax_ref(lg, rows, V, want);
                float *dl = to_dev(lg, (size_t)rows * V * 4);
                int32_t *dout = to_dev(got, sizeof got);
                CHECK_OK(msa_fwd_argmax(dl, rows, V, dout, NULL));
                from_dev(got, dout, rows * 4);
                int bad = memcmp(got, want, rows * 4) != 0;
                CHECKF(!bad, "argmax V %d rows %d kind %d: %d vs %d", V, rows, kind, got[0], want[0]);
                note("argmax (exact)", bad);
                CU(cudaFree(dl)); CU(cudaFree(dout));
                free(lg);
            }
}

/* ---- qkv post-processing and the trained index ------------------------------------- */

typedef struct {
    int Hq, Hkv, d;
} heads;

/* Distinct random positions for n rows below cap. */
static void rand_positions(int32_t *pos, int n, int cap) {
    for (int i = 0; i < n; i++) {
        int p, dupl;
        do {
            p = t_randint(cap);
            dupl = 0;
            for (int j = 0; j < i; j++) dupl |= pos[j] == p;
        } while (dupl);
        pos[i] = p;
    }
}

static void test_qkv_post(void) {
    const heads hs[] = {{8, 4, 8}, {4, 4, 2}, {6, 2, 64}, {32, 8, 128}, {3, 1, 6}};
    const int Bks[] = {16, 5}, ns[] = {1, 9};
    for (int hi = 0; hi < 5; hi++)
        for (int v = 0; v < 32; v++) {
            const int neox = v & 1, use_bias = (v >> 1) & 1, trained = (v >> 2) & 1,
                      rows = (v >> 3) & 1, Bk = Bks[(v >> 4) & 1];
            for (int ni = 0; ni < 2; ni++) {
                const heads h = hs[hi];
                const int n = ns[ni], d = h.d, G = h.Hq / h.Hkv;
                const int Nqkv = (h.Hq + 2 * h.Hkv) * d + 3; /* 3 trailing columns, as an index would */
                const int cap = 300, cap_blocks = (cap + Bk - 1) / Bk;
                const size_t mem_n = rows ? (size_t)n * h.Hkv * d : (size_t)cap_blocks * h.Hkv * Bk * d;
                const size_t q_n = (size_t)n * h.Hq * d, qi_n = (size_t)n * h.Hkv * d;
                float *y = rand_f32((size_t)n * Nqkv, 1.0f), *bias = rand_f32(Nqkv, 0.5f);
                float *freq = malloc((d / 2) * sizeof *freq);
                for (int p = 0; p < d / 2; p++) freq[p] = 1.0f / powf(10000.0f, (float)(2 * p) / d);
                int32_t pos[9];
                rand_positions(pos, n, cap);
                uint16_t *w[5], *g[5];
                const size_t sz[5] = {q_n, qi_n, mem_n, mem_n, mem_n}; /* q, qi, k, v, kidx */
                for (int i = 0; i < 5; i++) w[i] = poison_bf16(sz[i]), g[i] = poison_bf16(sz[i]);
                msa_fwd_qkv a;
                memset(&a, 0, sizeof a);
                a.y = y; a.bias = use_bias ? bias : NULL; a.pos = pos; a.inv_freq = freq;
                a.q = w[0]; a.qi = trained ? NULL : w[1]; a.kc = w[2]; a.vc = w[3];
                a.kidx = trained ? NULL : w[4];
                a.Nqkv = Nqkv; a.Hq = h.Hq; a.Hkv = h.Hkv; a.d = d; a.G = G; a.Bk = Bk;
                a.neox = neox; a.rows = rows;
                msa_fwd_qkv_post_ref(&a, n);
                msa_fwd_qkv da = a;
                da.y = to_dev(y, (size_t)n * Nqkv * 4);
                da.bias = use_bias ? to_dev(bias, Nqkv * 4) : NULL;
                da.pos = to_dev(pos, n * 4);
                da.inv_freq = to_dev(freq, (d / 2) * 4);
                uint16_t *dg[5];
                for (int i = 0; i < 5; i++) dg[i] = to_dev(g[i], sz[i] * 2);
                da.q = dg[0]; da.qi = trained ? NULL : dg[1]; da.kc = dg[2]; da.vc = dg[3];
                da.kidx = trained ? NULL : dg[4];
                CHECK_OK(msa_fwd_qkv_post(&da, n, NULL));
                double worst = 0;
                for (int i = 0; i < 5; i++) {
                    from_dev(g[i], dg[i], sz[i] * 2);
                    double e = nmse_bf16(g[i], w[i], sz[i]);
                    if (!(e <= worst)) worst = e;
                    CU(cudaFree(dg[i]));
                    free(w[i]); free(g[i]);
                }
                CHECKF(worst < TOL_BF16, "qkv_post %d/%d/%d n %d Bk %d neox %d bias %d trained %d "
                       "rows %d: nmse %.3g", h.Hq, h.Hkv, d, n, Bk, neox, use_bias, trained, rows, worst);
                note("qkv_post", worst);
                CU(cudaFree((void *)da.y)); CU(cudaFree((void *)da.pos));
                CU(cudaFree((void *)da.inv_freq));
                if (da.bias) CU(cudaFree((void *)da.bias));
                free(y); free(bias); free(freq);
            }
        }
}

static void test_index_rope(void) {
    const int Hkvs[] = {1, 4, 2, 8}, dis[] = {2, 64, 6, 128}, Bks[] = {16, 7}, ns[] = {1, 6};
    for (int c = 0; c < 4; c++)
        for (int v = 0; v < 16; v++) {
            const int Hkv = Hkvs[c], di = dis[c], neox = v & 1, rows = (v >> 1) & 1,
                      Bk = Bks[(v >> 2) & 1], n = ns[(v >> 3) & 1];
            const int off0 = 11, Nqkv = off0 + (Hkv + 1) * di + 5, cap = 200;
            const int cap_blocks = (cap + Bk - 1) / Bk;
            const size_t k_n = rows ? (size_t)n * di : (size_t)cap_blocks * Bk * di;
            const size_t q_n = (size_t)n * Hkv * di;
            float *y = rand_f32((size_t)n * Nqkv, 2.0f), *qn = rand_f32(di, 0.3f),
                  *kn = rand_f32(di, 0.3f);
            float *freq = malloc((di / 2) * sizeof *freq);
            for (int p = 0; p < di / 2; p++) freq[p] = 1.0f / powf(500000.0f, (float)(2 * p) / di);
            int32_t pos[6];
            rand_positions(pos, n, cap);
            uint16_t *wq = poison_bf16(q_n), *wk = poison_bf16(k_n), *gq = poison_bf16(q_n),
                     *gk = poison_bf16(k_n);
            msa_fwd_index a;
            memset(&a, 0, sizeof a);
            a.y = y; a.pos = pos; a.inv_freq = freq; a.qn = qn; a.kn = kn; a.qi = wq; a.kidx = wk;
            a.Nqkv = Nqkv; a.off0 = off0; a.Hkv = Hkv; a.di = di; a.Bk = Bk; a.neox = neox;
            a.rows = rows; a.eps = 1e-6f;
            msa_fwd_index_rope_ref(&a, n);
            msa_fwd_index da = a;
            da.y = to_dev(y, (size_t)n * Nqkv * 4);
            da.pos = to_dev(pos, n * 4);
            da.inv_freq = to_dev(freq, (di / 2) * 4);
            da.qn = to_dev(qn, di * 4);
            da.kn = to_dev(kn, di * 4);
            da.qi = to_dev(gq, q_n * 2);
            da.kidx = to_dev(gk, k_n * 2);
            CHECK_OK(msa_fwd_index_rope(&da, n, NULL));
            from_dev(gq, da.qi, q_n * 2);
            from_dev(gk, da.kidx, k_n * 2);
            double e = fmax(nmse_bf16(gq, wq, q_n), nmse_bf16(gk, wk, k_n));
            CHECKF(e < TOL_BF16, "index_rope Hkv %d di %d n %d Bk %d neox %d rows %d: nmse %.3g",
                   Hkv, di, n, Bk, neox, rows, e);
            note("index_rope", e);
            CU(cudaFree((void *)da.y)); CU(cudaFree((void *)da.pos));
            CU(cudaFree((void *)da.inv_freq)); CU(cudaFree((void *)da.qn));
            CU(cudaFree((void *)da.kn)); CU(cudaFree(da.qi)); CU(cudaFree(da.kidx));
            free(y); free(qn); free(kn); free(freq); free(wq); free(wk); free(gq); free(gk);
        }
}

/* ---- decode GEMV ---------------------------------------------------------------- */

/* The error of fp32 GEMV outputs, relative to the size of the terms that
 * make them: sum_i (got_i - want_i)^2 / sum_i S_i^2 with
 * S_i = |y0_i| + sum_j |W_ij| |u_j| (u the input row: xb, or rmsnorm(xf) *
 * nw behind the norm stage). Against sum_i want_i^2 instead, a case of few
 * outputs whose terms cancel (outd 1, y0 near -W u: seen for 1 seed in 8 on
 * the H200) turns a rounding-sized difference into a large ratio; S_i bounds
 * every rounding difference of output i whatever the cancellation. */
static double gemv_err(const float *got, const float *want, const uint16_t *W, const uint16_t *xb,
                       const float *xf, const float *nw, float eps, int mode, const float *y0,
                       int in, int outd) {
    double r = 1.0;
    if (mode == MSA_FWD_GEMV_NORM) {
        double ss = 0;
        for (int j = 0; j < in; j++) ss += (double)xf[j] * xf[j];
        r = 1.0 / sqrt(ss / in + eps);
    }
    double num = 0, den = 0;
    for (int i = 0; i < outd; i++) {
        if (!isfinite(got[i])) return INFINITY;
        double S = y0 ? fabs(y0[i]) : 0;
        for (int j = 0; j < in; j++) {
            double u = mode == MSA_FWD_GEMV_NORM ? fabs((double)xf[j] * nw[j]) * r
                                                 : fabs((double)msa_bf16_to_f32(xb[j]));
            S += fabs((double)msa_bf16_to_f32(W[(size_t)i * in + j])) * u;
        }
        num += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
        den += S * S;
    }
    return den > 0 ? num / den : num;
}

/* One GEMV case: in, outd, mode, output kind (0 y, 1 y +=, 2 SwiGLU pair),
 * epilogue, v3. */
static void gemv_case(void *dws, int in, int outd, int mode, int out_kind, int epi, int v3) {
    const int rows_w = out_kind == 2 ? 2 * outd : outd;
    uint16_t *W = rand_bf16_uniform((size_t)rows_w * in, sqrtf(3.0f / (float)in));
    uint16_t *xb = rand_bf16(in, 1.0f);
    float *xf = rand_f32(in, 2.0f), *nw = rand_f32(in, 1.0f);
    float *y0 = rand_f32(outd, 1.0f);
    float *wy = out_kind == 2 ? NULL : dup_host(y0, outd * 4), *gy = out_kind == 2 ? NULL : dup_host(y0, outd * 4);
    uint16_t *wh = out_kind == 2 ? poison_bf16(outd) : NULL, *gh = out_kind == 2 ? poison_bf16(outd) : NULL;

    /* the qkv epilogue: one row of a small training-free layout over y */
    msa_fwd_qkv qa, dqa;
    memset(&qa, 0, sizeof qa);
    const int Hkv = 2, G = 2, Hq = Hkv * G, d = 4, Bk = 16;
    uint16_t *qw[5] = {0}, *qg[5] = {0}, *qd[5] = {0}; /* q, q_idx, K, V, k_idx */
    const size_t mem = (size_t)4 * Hkv * Bk * d;
    const size_t qs[5] = {(size_t)Hq * d, (size_t)Hkv * d, mem, mem, mem};
    float freq[2] = {1.0f, 0.01f};
    int32_t pos = 37;
    float *dfreq = NULL;
    int32_t *dpos = NULL;
    if (epi == MSA_FWD_EPI_QKV) { /* y must hold (Hq + 2 Hkv) d columns */
        qa.bias = NULL; qa.pos = &pos; qa.inv_freq = freq;
        qa.Nqkv = outd; qa.Hq = Hq; qa.Hkv = Hkv; qa.d = d; qa.G = G; qa.Bk = Bk;
        for (int i = 0; i < 5; i++) qw[i] = poison_bf16(qs[i]), qg[i] = poison_bf16(qs[i]);
        qa.q = qw[0]; qa.qi = qw[1]; qa.kc = qw[2]; qa.vc = qw[3]; qa.kidx = qw[4];
    }

    msa_fwd_gemv_args g;
    memset(&g, 0, sizeof g);
    g.W = W; g.xb = xb; g.xf = xf; g.nw = nw; g.eps = 1e-5f; g.mode = mode; g.in = in;
    g.outd = outd; g.y = wy; g.accumulate = out_kind == 1; g.h = wh; g.epi = epi; g.v3 = v3;
    int32_t wamax = -5, gamax = -5;
    g.amax = &wamax;
    if (epi == MSA_FWD_EPI_QKV) {
        qa.y = wy;
        g.qkv = &qa;
    }
    msa_fwd_gemv_ref(&g);

    msa_fwd_gemv_args dg = g;
    dg.W = to_dev(W, (size_t)rows_w * in * 2);
    dg.xb = to_dev(xb, in * 2);
    dg.xf = to_dev(xf, in * 4);
    dg.nw = to_dev(nw, in * 4);
    dg.y = out_kind == 2 ? NULL : to_dev(gy, outd * 4);
    dg.h = out_kind == 2 ? to_dev(gh, outd * 2) : NULL;
    dg.amax = to_dev(&gamax, 4);
    dg.workspace = dws;
    dg.sms = (in + outd) % 2 ? 0 : g_sms; /* 0: asked of the device */
    if (epi == MSA_FWD_EPI_QKV) {
        dqa = qa;
        dqa.y = dg.y;
        dpos = to_dev(&pos, 4);
        dfreq = to_dev(freq, sizeof freq);
        dqa.pos = dpos;
        dqa.inv_freq = dfreq;
        for (int i = 0; i < 5; i++) qd[i] = to_dev(qg[i], qs[i] * 2);
        dqa.q = qd[0]; dqa.qi = qd[1]; dqa.kc = qd[2]; dqa.vc = qd[3]; dqa.kidx = qd[4];
        dg.qkv = &dqa;
    }
    CHECK_OK(msa_fwd_gemv(&dg, NULL));
    double e;
    const char *what;
    if (out_kind == 2) {
        from_dev(gh, dg.h, outd * 2);
        e = nmse_bf16(gh, wh, outd);
        what = "gemv gate/up + SwiGLU";
        CHECKF(e < TOL_BF16, "gemv in %d outd %d mode %d swiglu v3 %d: nmse %.3g", in, outd, mode, v3, e);
    } else {
        from_dev(gy, dg.y, outd * 4);
        e = gemv_err(gy, wy, W, xb, xf, nw, g.eps, mode, out_kind == 1 ? y0 : NULL, in, outd);
        what = mode == MSA_FWD_GEMV_NORM ? (out_kind == 1 ? "gemv norm -> y +=" : "gemv norm -> y")
                                         : (out_kind == 1 ? "gemv y +=" : "gemv y");
        CHECKF(e < (mode == MSA_FWD_GEMV_NORM ? TOL_F32_NORM : TOL_F32),
               "gemv in %d outd %d mode %d acc %d epi %d v3 %d: nmse %.3g", in, outd, mode,
               out_kind, epi, v3, e);
    }
    note(what, e);
    if (epi == MSA_FWD_EPI_ARGMAX) {
        /* the epilogue's argmax is that of the GPU's own y, exactly (the
         * reference's y may order near-ties differently) */
        int32_t own;
        msa_fwd_argmax_ref(gy, 1, outd, &own);
        from_dev(&gamax, dg.amax, 4);
        const int want = v3 ? -5 : own; /* v3: no epilogue, untouched */
        CHECKF(gamax == want, "gemv argmax epilogue in %d outd %d v3 %d: %d, want %d", in, outd, v3,
               gamax, want);
        note("gemv argmax epilogue (exact)", gamax != want);
    }
    if (epi == MSA_FWD_EPI_QKV) {
        /* the epilogue against the reference post-processing of the GPU's y */
        qa.y = gy;
        if (!v3) msa_fwd_qkv_post_ref(&qa, 1);
        double worst = 0;
        for (int i = 0; i < 5; i++) {
            from_dev(qg[i], qd[i], qs[i] * 2);
            double ei = nmse_bf16(qg[i], qw[i], qs[i]);
            if (!(ei <= worst)) worst = ei;
        }
        CHECKF(worst < TOL_BF16, "gemv qkv epilogue in %d outd %d v3 %d: nmse %.3g", in, outd, v3, worst);
        note("gemv qkv epilogue", worst);
        for (int i = 0; i < 5; i++) {
            CU(cudaFree(qd[i]));
            free(qw[i]); free(qg[i]);
        }
        CU(cudaFree(dpos)); CU(cudaFree(dfreq));
    }
    CU(cudaFree((void *)dg.W)); CU(cudaFree((void *)dg.xb)); CU(cudaFree((void *)dg.xf));
    CU(cudaFree((void *)dg.nw)); CU(cudaFree(dg.amax));
    if (dg.y) CU(cudaFree(dg.y));
    if (dg.h) CU(cudaFree(dg.h));
    free(W); free(xb); free(xf); free(nw); free(y0); free(wy); free(gy); free(wh); free(gh);
}

static void test_gemv(void) {
    void *ws;
    CU(cudaMalloc(&ws, msa_fwd_gemv_workspace_size()));
    CU(cudaMemset(ws, 0, msa_fwd_gemv_workspace_size()));
    /* in: one word, odd numbers of words, past one 1024-element chunk, past
     * the shared-memory norm stage (4096); outd: 1, odd, more rows than
     * warp slots */
    const int ins[] = {8, 24, 1000, 2048, 4104, 8192}, outs[] = {1, 7, 33, 1000, 2049, 20000};
    for (int a = 0; a < 6; a++)
        for (int b = 0; b < 6; b++)
            for (int v3 = 0; v3 < 2; v3++) {
                const int in = ins[a], outd = outs[b];
                if ((size_t)in * outd > (size_t)40 << 20) continue; /* the reference's time */
                gemv_case(ws, in, outd, MSA_FWD_GEMV_PLAIN, 0, MSA_FWD_EPI_NONE, v3);
                gemv_case(ws, in, outd, MSA_FWD_GEMV_NORM, 1, MSA_FWD_EPI_NONE, v3);
                gemv_case(ws, in, outd, MSA_FWD_GEMV_PLAIN, 1, MSA_FWD_EPI_NONE, v3);
                gemv_case(ws, in, outd, MSA_FWD_GEMV_NORM, 2, MSA_FWD_EPI_NONE, v3);
                gemv_case(ws, in, outd, MSA_FWD_GEMV_NORM, 0, MSA_FWD_EPI_ARGMAX, v3);
            }
    /* the qkv epilogue: y of (Hq + 2 Hkv) d = 32 columns (gemv_case's layout) */
    for (int a = 0; a < 6; a++)
        for (int v3 = 0; v3 < 2; v3++) gemv_case(ws, ins[a], 32, MSA_FWD_GEMV_NORM, 0, MSA_FWD_EPI_QKV, v3);
    /* refused shapes */
    msa_fwd_gemv_args g;
    memset(&g, 0, sizeof g);
    g.W = ws; g.xb = ws; g.y = ws; g.workspace = ws; g.outd = 4;
    g.in = 12;
    CHECK(msa_fwd_gemv(&g, NULL) == MSA_EUNSUPPORTED);
    g.in = MSA_FWD_GEMV_MAX_IN + 8;
    CHECK(msa_fwd_gemv(&g, NULL) == MSA_EUNSUPPORTED);
    g.in = 16;
    g.workspace = NULL;
    CHECK(msa_fwd_gemv(&g, NULL) == MSA_EINVAL);
    CU(cudaDeviceSynchronize());
    CU(cudaFree(ws));
}

/* ---- generic attention ------------------------------------------------------------ */

static void test_generic_attention(void) {
    const heads hs[] = {{8, 4, 8}, {2, 1, 3}, {6, 3, 64}, {4, 2, 256}};
    const int Bks[] = {5, 16}, ks[] = {1, 3, 8}, ns[] = {1, 7};
    for (int hi = 0; hi < 4; hi++)
        for (int v = 0; v < 24; v++) {
            const heads h = hs[hi];
            const int Bk = Bks[v & 1], top_k = ks[(v >> 1) % 3], with_sel = (v / 6) & 1,
                      with_table = (v / 12) & 1;
            for (int ni = 0; ni < 2; ni++) {
                const int n = ns[ni], d = h.d, cap = 300, nb = (cap + Bk - 1) / Bk;
                const int slots = nb + 3;
                const size_t kv_n = (size_t)slots * h.Hkv * Bk * d, q_n = (size_t)n * h.Hq * d;
                uint16_t *k = rand_bf16(kv_n, 1.0f), *vv = rand_bf16(kv_n, 1.0f),
                         *q = rand_bf16(q_n, 1.0f);
                int32_t pos[7], *sel = NULL, *table = NULL;
                rand_positions(pos, n, cap);
                if (with_sel) { /* random blocks, some -1, some past the row's local block */
                    sel = malloc((size_t)n * h.Hkv * top_k * 4);
                    for (int i = 0; i < n; i++)
                        for (int j = 0; j < h.Hkv * top_k; j++) {
                            int u = t_randint(10), b = t_randint(pos[i] / Bk + 1);
                            if (j % top_k == 0) b = pos[i] / Bk; /* the local block */
                            else if (u == 0) b = -1;
                            else if (u == 1) b = pos[i] / Bk + 1 + t_randint(3);
                            sel[(size_t)i * h.Hkv * top_k + j] = b;
                        }
                }
                if (with_table) { /* a permutation of the slots, one block unmapped */
                    table = malloc(nb * 4);
                    for (int b = 0; b < nb; b++) table[b] = b + 3;
                    for (int b = nb - 1; b > 0; b--) {
                        int j = t_randint(b + 1), t = table[b];
                        table[b] = table[j], table[j] = t;
                    }
                    table[t_randint(nb)] = -1;
                }
                const float scale = 1.0f / sqrtf((float)d);
                uint16_t *want = poison_bf16(q_n), *got = poison_bf16(q_n);
                msa_fwd_generic_attention_ref(q, k, vv, pos, sel, want, n, h.Hq, h.Hkv, d, Bk,
                                              top_k, scale, table);
                uint16_t *dq = to_dev(q, q_n * 2), *dk = to_dev(k, kv_n * 2),
                         *dv = to_dev(vv, kv_n * 2), *dout = to_dev(got, q_n * 2);
                int32_t *dpos = to_dev(pos, n * 4);
                int32_t *dsel = sel ? to_dev(sel, (size_t)n * h.Hkv * top_k * 4) : NULL;
                int32_t *dtab = table ? to_dev(table, nb * 4) : NULL;
                CHECK_OK(msa_fwd_generic_attention(dq, dk, dv, dpos, dsel, dout, n, h.Hq, h.Hkv, d,
                                                   Bk, top_k, scale, dtab, NULL));
                from_dev(got, dout, q_n * 2);
                double e = nmse_bf16(got, want, q_n);
                CHECKF(e < TOL_BF16, "generic attention %d/%d/%d n %d Bk %d k %d sel %d table %d: "
                       "nmse %.3g", h.Hq, h.Hkv, d, n, Bk, top_k, with_sel, with_table, e);
                note("generic attention", e);
                CU(cudaFree(dq)); CU(cudaFree(dk)); CU(cudaFree(dv)); CU(cudaFree(dout));
                CU(cudaFree(dpos));
                if (dsel) CU(cudaFree(dsel));
                if (dtab) CU(cudaFree(dtab));
                free(k); free(vv); free(q); free(sel); free(table); free(want); free(got);
            }
        }
    /* a head dim past the limit is refused, nothing run */
    void *p;
    CU(cudaMalloc(&p, 256));
    int32_t zero = 0;
    int32_t *dz = to_dev(&zero, 4);
    CHECK(msa_fwd_generic_attention(p, p, p, dz, NULL, p, 1, 1, 1, MSA_FWD_GENERIC_MAX_D + 1, 16,
                                    1, 1.0f, NULL, NULL) == MSA_EUNSUPPORTED);
    CHECK(msa_fwd_generic_attention(p, p, p, dz, NULL, p, 1, 3, 2, 8, 16, 1, 1.0f, NULL, NULL) ==
          MSA_EINVAL);
    CU(cudaFree(p)); CU(cudaFree(dz));
}

/* ---- fills ------------------------------------------------------------------------ */

static void test_fills(void) {
    const size_t ns[] = {1, 1000, ((size_t)1 << 20) + 3};
    for (int a = 0; a < 3; a++) {
        const size_t n = ns[a];
        const uint64_t seed = t_rand_u64();
        const float scale = 0.5f + t_randf(0.0f, 2.0f);
        uint16_t *want = malloc(n * 2), *got = malloc(n * 2);
        msa_fwd_fill_uniform_bf16_ref(want, n, seed, scale);
        uint16_t *d;
        CU(cudaMalloc((void **)&d, n * 2));
        CHECK_OK(msa_fwd_fill_uniform_bf16(d, n, seed, scale, NULL));
        from_dev(got, d, n * 2);
        int bad = memcmp(got, want, n * 2) != 0;
        CHECKF(!bad, "fill_uniform_bf16 n %zu: differs from the reference", n);
        note("fill uniform (exact)", bad);
        /* not all one value: the test would pass on a constant fill otherwise */
        int varied = 0;
        for (size_t i = 1; i < n; i++) varied |= want[i] != want[0];
        CHECK(n == 1 || varied);
        float *f = malloc(n * 4), v = t_randn();
        float *df;
        CU(cudaMalloc((void **)&df, n * 4));
        CHECK_OK(msa_fwd_fill_f32(df, n, v, NULL));
        from_dev(f, df, n * 4);
        size_t wrong = 0;
        for (size_t i = 0; i < n; i++) wrong += f[i] != v;
        CHECKF(wrong == 0, "fill_f32 n %zu: %zu elements differ", n, wrong);
        note("fill f32 (exact)", wrong != 0);
        CU(cudaFree(d)); CU(cudaFree(df));
        free(want); free(got); free(f);
    }
    CHECK_OK(msa_fwd_spin(1000, NULL));
    CU(cudaDeviceSynchronize());
}

int main(void) {
    if (msa_cuda_device_count() <= 0) T_SKIP("no CUDA device");
    t_seed();
    CU(cudaDeviceGetAttribute(&g_sms, cudaDevAttrMultiProcessorCount, 0));
    test_embed();
    test_rmsnorm();
    test_swiglu_bias();
    test_argmax();
    test_qkv_post();
    test_index_rope();
    test_gemv();
    test_generic_attention();
    test_fills();
    for (int i = 0; i < g_n_ops; i++)
        printf("  %-32s %4d cases, worst %s %.3g\n", g_ops[i].name, g_ops[i].cases,
               strstr(g_ops[i].name, "exact") ? "mismatches" : "nmse", g_ops[i].worst);
    return t_done("test-forward-kernels-cuda");
}
#endif
