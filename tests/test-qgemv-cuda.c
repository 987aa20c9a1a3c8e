/*
 * test-qgemv-cuda.c: the GPU kernels over ggml-quantized weights
 * (kernels/qgemv.cu) against the C dequantization (engine/model/
 * ggml_quant.c, itself equal bit for bit to gguf-py's, tests/
 * test_gguf_quant.py) and an exact (double) dot product.
 *
 * Blocks are random bytes with random finite fp16 scales, for every format;
 * inputs are drawn from the seeded generator (seed printed, MSA_TEST_SEED
 * replays). Checked:
 *   - dequantize to bf16: equal, bit for bit, to bf16(msa_ggml_to_f32);
 *   - the GEMV, PLAIN and NORM inputs, with and without accumulate, over
 *     stacked segments of different types (q, k, v of a layer) and the
 *     gate/up pair with SwiGLU: every row within the bound that the 8-bit
 *     input rounding allows, |y - exact| <= sum_j |W_j| amax_g(j) / 254
 *     (plus fp32 slack), and rows past the output untouched. The bound is
 *     tight enough that a wrong piece, scale, min or bit costs many times
 *     it; the worst ratio error / bound is printed.
 *
 * Label gpu: exits 77 (skipped) without CUDA or a GPU.
 */
#include "engine/msa.h"
#include "base/base.h"
#include "tests/testutil.h"

#ifndef MSA_HAVE_CUDA
int main(void) { T_SKIP("built without CUDA"); }
#else

#include <cuda_runtime_api.h>

#include "engine/model/gguf.h"
#include "kernels/cuda.h"
#include "kernels/forward_ops.h"
#include "kernels/qgemv.h"

#define CU(expr)                                                                         \
    do {                                                                                 \
        cudaError_t e_ = (expr);                                                         \
        if (e_ != cudaSuccess) {                                                         \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr,                \
                    cudaGetErrorString(e_));                                             \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

static const int TYPES[] = {MSA_GGML_Q4_0, MSA_GGML_Q4_1, MSA_GGML_Q5_0, MSA_GGML_Q5_1,
                            MSA_GGML_Q8_0, MSA_GGML_Q2_K, MSA_GGML_Q3_K, MSA_GGML_Q4_K,
                            MSA_GGML_Q5_K, MSA_GGML_Q6_K};
#define N_TYPES ((int)(sizeof TYPES / sizeof TYPES[0]))

/* where each format keeps its fp16 scales (byte offsets in a block; -1 ends) */
static void scale_offsets(int type, int off[3]) {
    off[0] = off[1] = off[2] = -1;
    switch (type) {
    case MSA_GGML_Q4_1: case MSA_GGML_Q5_1: case MSA_GGML_Q4_K: case MSA_GGML_Q5_K:
        off[0] = 0, off[1] = 2;
        break;
    case MSA_GGML_Q2_K: off[0] = 80, off[1] = 82; break;
    case MSA_GGML_Q3_K: off[0] = 108; break;
    case MSA_GGML_Q6_K: off[0] = 208; break;
    default: off[0] = 0; break;
    }
}

static uint16_t f32_to_f16(float f) { /* finite, normal range only: scales here */
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, e = (x >> 23) & 0xFF, m = x & 0x7FFFFF;
    int he = (int)e - 127 + 15;
    if (he <= 0) return (uint16_t)sign;
    return (uint16_t)(sign | (uint32_t)he << 10 | m >> 13);
}

/* rows x in elements of `type` as random blocks: random bytes, scales of
 * random sign and size around `scale` */
static uint8_t *rand_blocks(int type, int rows, int in, float scale) {
    const size_t rb = msa_fwd_qrow_bytes(type, in), n = rb * (size_t)rows;
    const int bs = msa_ggml_block_size(type), bb = (int)(rb / (size_t)(in / bs));
    uint8_t *w = malloc(n);
    for (size_t i = 0; i < n; i++) w[i] = (uint8_t)t_rand_u64();
    int off[3];
    scale_offsets(type, off);
    for (size_t b = 0; b < n / (size_t)bb; b++)
        for (int k = 0; k < 3 && off[k] >= 0; k++) {
            uint16_t h = f32_to_f16(t_randf(-1.5f, 1.5f) * scale);
            memcpy(w + b * (size_t)bb + off[k], &h, 2);
        }
    return w;
}

static void *to_dev(const void *h, size_t bytes) {
    void *d = NULL;
    CU(cudaMalloc(&d, bytes ? bytes : 16));
    if (h && bytes) CU(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}
static void from_dev(void *h, const void *d, size_t bytes) {
    CU(cudaDeviceSynchronize());
    CU(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
}

static double g_worst[16]; /* worst error / bound per type index */

static int type_index(int type) {
    for (int i = 0; i < N_TYPES; i++)
        if (TYPES[i] == type) return i;
    return 0;
}

/* ---- dequantize ----------------------------------------------------------------- */

static void test_dequant(void) {
    for (int ti = 0; ti < N_TYPES; ti++) {
        const int type = TYPES[ti], rows = 3 + t_randint(5), in = 256 * (1 + t_randint(3));
        const int64_t n = (int64_t)rows * in;
        uint8_t *w = rand_blocks(type, rows, in, 0.05f);
        float *ref = malloc((size_t)n * 4);
        msa_ggml_to_f32(type, w, ref, n);
        void *dw = to_dev(w, msa_fwd_qrow_bytes(type, in) * rows);
        uint16_t *dout = to_dev(NULL, (size_t)n * 2), *out = malloc((size_t)n * 2);
        CHECK_OK(msa_fwd_dequant_bf16(dw, type, n, dout, 0));
        from_dev(out, dout, (size_t)n * 2);
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++) bad += out[i] != msa_f32_to_bf16(ref[i]);
        CHECKF(bad == 0, "dequantize %s: %lld of %lld elements differ", msa_ggml_type_name(type),
               (long long)bad, (long long)n);
        cudaFree(dw);
        cudaFree(dout);
        free(w), free(ref), free(out);
    }
    /* refused: a count that is not whole blocks, an unknown type */
    uint16_t *dout = to_dev(NULL, 64);
    CHECK(msa_fwd_dequant_bf16(dout, MSA_GGML_Q4_K, 32, dout, 0) == MSA_EUNSUPPORTED);
    CHECK(msa_fwd_dequant_bf16(dout, MSA_GGML_F16, 32, dout, 0) == MSA_EUNSUPPORTED);
    cudaFree(dout);
}

/* ---- GEMV ----------------------------------------------------------------------- */

typedef struct seg_host {
    int type, rows;
    uint8_t *w;   /* host blocks */
    float *f;     /* (rows, in) dequantized */
    void *dw;
} seg_host;

/* The input row exactly as the kernel builds it (before its 8-bit
 * rounding): PLAIN bf16 xb; NORM bf16(nw * (r * xf)), r from a double sum
 * (the kernel sums in fp32 in a tree; the two r differ in the last bits,
 * which flips the bf16 rounding of an occasional element: NORM's bound
 * allows for that). amax per group of 32 of that row. */
static void input_row(int mode, const uint16_t *xb, const float *xf, const float *nw, float eps, int in,
                      float *u, float *amax) {
    float r = 1.0f;
    if (mode == MSA_FWD_GEMV_NORM) {
        double ss = 0;
        for (int j = 0; j < in; j++) ss += (double)xf[j] * xf[j];
        r = (float)(1.0 / sqrt(ss / in + eps));
    }
    for (int j = 0; j < in; j++)
        u[j] = mode == MSA_FWD_GEMV_NORM ? msa_bf16_to_f32(msa_f32_to_bf16(nw[j] * (r * xf[j])))
                                         : msa_bf16_to_f32(xb[j]);
    for (int g = 0; g < in / 32; g++) {
        float a = 0;
        for (int j = 32 * g; j < 32 * g + 32; j++) a = fmaxf(a, fabsf(u[j]));
        amax[g] = a;
    }
}

/* exact dot of row `row` of a dequantized matrix with u, and its error bound */
static void row_ref(const float *wr, const float *u, const float *amax, int in, int norm, double *dot,
                    double *bound) {
    double s = 0, b = 0, mag = 0, big = 0;
    for (int j = 0; j < in; j++) {
        const double t = fabs((double)wr[j]);
        s += (double)wr[j] * u[j];
        b += t * amax[j / 32] / 254.0;
        mag += t * fabs(u[j]);
        if (t * fabs(u[j]) > big) big = t * fabs(u[j]);
    }
    /* fp32 sums of the per-piece products, and under NORM up to 8 elements
     * of u one bf16 step (2^-8) away from ours */
    *bound = 1.0001 * b + 1e-6 * mag + 1e-30 + (norm ? 8.0 * big / 256.0 : 0.0);
    *dot = s;
}

static void run_gemv(const int *types, const int *rows, int nseg, int in, int mode, int accumulate,
                     int swiglu) {
    seg_host S[MSA_FWD_QGEMV_MAX_SEG];
    msa_fwd_qgemv_args g;
    memset(&g, 0, sizeof g);
    int outd = 0;
    for (int m = 0; m < nseg; m++) {
        S[m].type = types[m];
        S[m].rows = rows[m];
        S[m].w = rand_blocks(types[m], rows[m], in, 0.02f);
        S[m].f = malloc((size_t)rows[m] * in * 4);
        msa_ggml_to_f32(types[m], S[m].w, S[m].f, (int64_t)rows[m] * in);
        S[m].dw = to_dev(S[m].w, msa_fwd_qrow_bytes(types[m], in) * rows[m]);
        g.seg[m] = (msa_fwd_qmat){S[m].dw, types[m], rows[m]};
        outd += rows[m];
    }
    if (swiglu) outd = rows[0];
    g.nseg = nseg;
    g.in = in;
    g.mode = mode;
    g.eps = 1e-6f;
    g.accumulate = accumulate;
    uint16_t *xb = malloc((size_t)in * 2);
    float *xf = malloc((size_t)in * 4), *nw = malloc((size_t)in * 4);
    const float spread = t_randf(0.1f, 4.0f); /* inputs of a few magnitudes per group */
    for (int j = 0; j < in; j++) {
        const float v = t_randn() * (j % 97 == 0 ? 8.0f : 1.0f) * spread;
        xb[j] = msa_f32_to_bf16(v);
        xf[j] = v;
        nw[j] = t_randf(0.5f, 1.5f);
    }
    float *u = malloc((size_t)in * 4), *amax = malloc((size_t)(in / 32) * 4);
    input_row(mode, xb, xf, nw, g.eps, in, u, amax);
    void *dxb = to_dev(xb, (size_t)in * 2), *dxf = to_dev(xf, (size_t)in * 4), *dnw = to_dev(nw, (size_t)in * 4);
    if (mode == MSA_FWD_GEMV_PLAIN) g.xb = dxb;
    else g.xf = dxf, g.nw = dnw;
    const int pad = 8;
    float *y0 = malloc((size_t)(outd + pad) * 4), *y = malloc((size_t)(outd + pad) * 4);
    for (int i = 0; i < outd + pad; i++) y0[i] = i < outd && accumulate ? t_randn() : NAN;
    uint16_t *h = malloc((size_t)(outd + pad) * 2);
    for (int i = 0; i < outd + pad; i++) h[i] = 0x7fc1u;
    float *dy = to_dev(y0, (size_t)(outd + pad) * 4);
    uint16_t *dh = to_dev(h, (size_t)(outd + pad) * 2);
    if (swiglu) g.h = dh;
    else g.y = dy;
    void *ws = to_dev(NULL, msa_fwd_qgemv_workspace_size(in));
    g.workspace = ws;
    CHECK_OK(msa_fwd_qgemv(&g, 0));
    CU(cudaDeviceSynchronize());
    from_dev(y, dy, (size_t)(outd + pad) * 4);
    from_dev(h, dh, (size_t)(outd + pad) * 2);

    int bad = 0;
    double worst = 0;
    if (swiglu) {
        for (int r = 0; r < outd; r++) {
            double gd, gb, ud, ub;
            row_ref(S[0].f + (size_t)r * in, u, amax, in, mode, &gd, &gb);
            row_ref(S[1].f + (size_t)r * in, u, amax, in, mode, &ud, &ub);
            const double sg = gd / (1.0 + exp(-gd));
            /* silu' is within [-0.1, 1.1]: the product moves by at most this */
            const double b = 1.1 * gb * (fabs(ud) + ub) + (fabs(sg) + 1.1 * gb) * ub +
                             fabs(sg * ud) / 256.0 + 1e-30;
            const double got = msa_bf16_to_f32(h[r]), e = fabs(got - sg * ud);
            if (!(e <= b)) bad++;
            if (e / b > worst) worst = e / b;
        }
        for (int r = outd; r < outd + pad; r++) bad += h[r] != 0x7fc1u;
    } else {
        int r = 0;
        for (int m = 0; m < nseg; m++)
            for (int lr = 0; lr < S[m].rows; lr++, r++) {
                double d, b;
                row_ref(S[m].f + (size_t)lr * in, u, amax, in, mode, &d, &b);
                const double want = (accumulate ? (double)y0[r] : 0.0) + d;
                b += accumulate ? fabs(want) * 1e-6 : 0.0;
                const double e = fabs((double)y[r] - want);
                if (!(e <= b)) {
                    if (bad < 3)
                        fprintf(stderr, "  row %d (%s): got %.7g want %.7g bound %.3g\n", r,
                                msa_ggml_type_name(S[m].type), y[r], want, b);
                    bad++;
                }
                if (e / b > worst) worst = e / b;
            }
        for (int i = outd; i < outd + pad; i++) bad += !isnan(y[i]);
    }
    CHECKF(bad == 0, "qgemv %s%s in %d, %d segments (first %s, %d rows)%s%s: %d rows off", 
           swiglu ? "swiglu " : "", mode == MSA_FWD_GEMV_NORM ? "norm" : "plain", in, nseg,
           msa_ggml_type_name(types[0]), rows[0], accumulate ? " accumulate" : "", "", bad);
    const int ti = type_index(types[0]);
    if (worst > g_worst[ti]) g_worst[ti] = worst;
    for (int m = 0; m < nseg; m++) {
        cudaFree(S[m].dw);
        free(S[m].w), free(S[m].f);
    }
    cudaFree(ws), cudaFree(dxb), cudaFree(dxf), cudaFree(dnw), cudaFree(dy), cudaFree(dh);
    free(xb), free(xf), free(nw), free(u), free(amax), free(y0), free(y), free(h);
}

static void test_gemv(void) {
    static const int INS[] = {256, 768, 1536, 2048, 8960};
    static const int ROWS[] = {1, 7, 64, 333, 1536};
    for (int ti = 0; ti < N_TYPES; ti++) {
        for (int k = 0; k < 4; k++) {
            const int type = TYPES[ti], in = INS[t_randint(5)], rows = ROWS[t_randint(5)];
            run_gemv(&type, &rows, 1, in, k & 1, k >> 1, 0);
        }
    }
    /* a layer's q, k, v in three types, and a segment boundary inside a warp's rows */
    for (int k = 0; k < 4; k++) {
        int types[3], rows[3] = {1536, 256, 256};
        for (int m = 0; m < 3; m++) types[m] = TYPES[t_randint(N_TYPES)];
        rows[1] += t_randint(5);
        run_gemv(types, rows, 3, 1536, k & 1, 0, 0);
    }
    /* gate/up with SwiGLU */
    for (int k = 0; k < 3; k++) {
        const int t0 = TYPES[t_randint(N_TYPES)], types[2] = {t0, TYPES[t_randint(N_TYPES)]};
        const int rows[2] = {k == 0 ? 9 : 2048, k == 0 ? 9 : 2048};
        run_gemv(types, rows, 2, 1536, k & 1, 0, 1);
    }
}

static void test_refusals(void) {
    void *d = to_dev(NULL, 4096);
    msa_fwd_qgemv_args g;
    memset(&g, 0, sizeof g);
    g.seg[0] = (msa_fwd_qmat){d, MSA_GGML_Q4_K, 1};
    g.nseg = 1;
    g.in = 128; /* not whole super-blocks */
    g.xb = d;
    g.y = d;
    CHECK(msa_fwd_qgemv(&g, 0) == MSA_EINVAL); /* no workspace */
    g.workspace = d;
    CHECK(msa_fwd_qgemv(&g, 0) == MSA_EUNSUPPORTED);
    g.in = 256;
    g.seg[0].type = MSA_GGML_F16;
    CHECK(msa_fwd_qgemv(&g, 0) == MSA_EUNSUPPORTED);
    g.seg[0].type = MSA_GGML_Q8_0;
    g.seg[0].w = (char *)d + 2; /* misaligned */
    CHECK(msa_fwd_qgemv(&g, 0) == MSA_EINVAL);
    g.seg[0].w = d;
    g.nseg = 0;
    CHECK(msa_fwd_qgemv(&g, 0) == MSA_EINVAL);
    CU(cudaDeviceSynchronize());
    cudaFree(d);
}

int main(void) {
    /* the kernels' type ids are GGUF's */
    CHECK(MSA_GGML_Q4_0 == 2 && MSA_GGML_Q4_1 == 3 && MSA_GGML_Q5_0 == 6 && MSA_GGML_Q5_1 == 7 &&
          MSA_GGML_Q8_0 == 8 && MSA_GGML_Q2_K == 10 && MSA_GGML_Q3_K == 11 && MSA_GGML_Q4_K == 12 &&
          MSA_GGML_Q5_K == 13 && MSA_GGML_Q6_K == 14);
    for (int ti = 0; ti < N_TYPES; ti++) CHECK(msa_fwd_qtype_supported(TYPES[ti]));
    for (int ti = 0; ti < N_TYPES; ti++)
        CHECK(msa_fwd_qrow_bytes(TYPES[ti], 256) == msa_ggml_row_bytes(TYPES[ti], 256));
    if (t_failures) return t_done("test-qgemv-cuda");
    if (msa_cuda_device_count() <= 0) T_SKIP("no CUDA device");
    t_seed();
    test_dequant();
    test_gemv();
    test_refusals();
    for (int ti = 0; ti < N_TYPES; ti++)
        printf("  qgemv %-5s worst error / bound %.3f\n", msa_ggml_type_name(TYPES[ti]), g_worst[ti]);
    return t_done("test-qgemv-cuda");
}

#endif
