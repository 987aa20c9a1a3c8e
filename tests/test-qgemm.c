/*
 * test-qgemm.c: the quantized products of kernels/qgemm.h against a plain
 * reference, for every weight type, on random blocks and random activations
 * (fresh seed each run, printed; MSA_TEST_SEED replays).
 *
 * Reference: the weight rows dequantized by engine/model/ggml_quant.c
 * (bit-exact to gguf-py), the quantized activations dequantized
 * (msa_q8_dequantize_row), their dot product summed in double. Both paths
 * (portable, and AVX2 where the CPU has it) must agree with it within
 *     tol_i = (K / 16 + 8) * 2^-24 * S_i,   S_i = sum_j |w_ij| |xq_j|
 * the classical bound for summing K / 16 fp32 block terms (a block term and
 * its minimum term per 32 elements) in any order, each rounded a few times;
 * the integer sums inside a block are exact. The change that quantizing the
 * activations makes is bounded separately: against the unquantized x,
 *     |y_i - w_i . x| <= sum_j |w_ij| d_b(j) / 2 + tol_i
 * since every q_j is x_j / d rounded to nearest (|x - d q| <= d / 2).
 *
 * Weight blocks are random bytes (every bit of every packed value and
 * scale takes both values) with their fp16 scales replaced by finite ones;
 * shapes cover one row, odd row counts, 1..4 activation rows (every tail of
 * the AVX2 path's 4-row tiles), more than its 64-row tile, a row range
 * r0 > 0 (the rows outside it must stay untouched) and a bias.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "engine/model/gguf.h"
#include "kernels/qgemm.h"
#include "tests/testutil.h"

typedef struct qtype {
    int type;
    const char *name;
    int block, bytes;
    int f16_at[2]; /* offsets of the block's fp16 scales (-1: none) */
} qtype;

static const qtype types[] = {
    {MSA_QT_Q4_0, "Q4_0", 32, 18, {0, -1}},    {MSA_QT_Q4_1, "Q4_1", 32, 20, {0, 2}},
    {MSA_QT_Q5_0, "Q5_0", 32, 22, {0, -1}},    {MSA_QT_Q5_1, "Q5_1", 32, 24, {0, 2}},
    {MSA_QT_Q8_0, "Q8_0", 32, 34, {0, -1}},    {MSA_QT_Q2_K, "Q2_K", 256, 84, {80, 82}},
    {MSA_QT_Q3_K, "Q3_K", 256, 110, {108, -1}}, {MSA_QT_Q4_K, "Q4_K", 256, 144, {0, 2}},
    {MSA_QT_Q5_K, "Q5_K", 256, 176, {0, 2}},   {MSA_QT_Q6_K, "Q6_K", 256, 210, {208, -1}},
};

static void rand_weights(const qtype *t, uint8_t *w, size_t nblocks) {
    for (size_t b = 0; b < nblocks; b++) {
        uint8_t *B = w + b * t->bytes;
        for (int j = 0; j < t->bytes; j++) B[j] = (uint8_t)t_rand_u64();
        for (int k = 0; k < 2; k++) {
            if (t->f16_at[k] < 0) continue;
            /* scales of either sign, over a few octaves */
            uint16_t h = msa_f32_to_f16(t_randf(-1.0f, 1.0f) * ldexpf(1.0f, -t_randint(8)));
            memcpy(B + t->f16_at[k], &h, 2);
        }
    }
}

/* Activations: normal, each block of 32 scaled by its own magnitude, some
 * blocks all zero, some with one outlier. */
static void rand_acts(float *x, int K) {
    for (int b = 0; b < K / 32; b++) {
        const int kind = t_randint(8);
        const float s = ldexpf(1.0f, t_randint(10) - 5);
        for (int j = 0; j < 32; j++) x[32 * b + j] = kind == 0 ? 0.0f : s * t_randn();
        if (kind == 1) x[32 * b + t_randint(32)] = 50.0f * s;
    }
}

typedef struct result {
    double worst;       /* max over outputs of |err| / tol */
    double worst_exact; /* against the unquantized x: max |err| / bound */
    double rel_exact;   /* max |err vs x| / S: what quantizing the activations costs */
} result;

static int run_case(const qtype *t, int N, int K, int n, int r0, int r1, int with_bias,
                    int path /* 0 portable, 1 avx2 */, result *res) {
    if (r1 > N) r1 = N;
    const size_t rb = msa_ggml_row_bytes(t->type, K), ab = msa_q8_row_bytes(K);
    uint8_t *W = malloc(rb * N);
    float *Wf = malloc(sizeof(float) * (size_t)N * K);
    float *x = malloc(sizeof(float) * (size_t)n * K), *xq = malloc(sizeof(float) * (size_t)n * K);
    uint8_t *a = malloc(ab * n);
    const int ldy = N + 3;
    float *y = malloc(sizeof(float) * (size_t)n * ldy), *bias = malloc(sizeof(float) * N);
    rand_weights(t, W, rb * N / t->bytes);
    msa_ggml_to_f32(t->type, W, Wf, (int64_t)N * K);
    for (int i = 0; i < n; i++) {
        rand_acts(x + (size_t)i * K, K);
        msa_q8_quantize_row(x + (size_t)i * K, K, a + i * ab);
        msa_q8_dequantize_row(a + i * ab, K, xq + (size_t)i * K);
    }
    for (int r = 0; r < N; r++) bias[r] = with_bias ? t_randn() : 0.0f;
    for (size_t j = 0; j < (size_t)n * ldy; j++) y[j] = NAN;
    msa_qgemm_args g = {t->type, W, rb, K, r0, r1, a, n, y, ldy, with_bias ? bias : NULL};
    int ran = 1;
    if (path == 0) msa_qgemm_portable(&g);
    else ran = msa_qgemm_avx2(&g);
    if (ran) {
        for (int i = 0; i < n; i++) {
            const float *xi = x + (size_t)i * K, *qi = xq + (size_t)i * K;
            const float *d = (const float *)(a + i * ab + K);
            for (int r = 0; r < N; r++) {
                const float got = y[(size_t)i * ldy + r];
                if (r < r0 || r >= r1) {
                    CHECKF(isnan(got), "%s: row %d outside [%d, %d) was written", t->name, r, r0, r1);
                    continue;
                }
                const float *w = Wf + (size_t)r * K;
                double ref = bias[r], ex = bias[r], S = fabs(bias[r]), B = 0;
                for (int j = 0; j < K; j++) {
                    ref += (double)w[j] * qi[j];
                    ex += (double)w[j] * xi[j];
                    S += fabs((double)w[j] * qi[j]);
                    B += fabs((double)w[j]) * d[j / 32] * 0.5;
                }
                const double tol = (K / 16 + 8) * ldexp(1.0, -24) * S + 1e-30;
                const double e = fabs(got - ref) / tol;
                if (!(e <= res->worst)) res->worst = isfinite(e) ? fmax(res->worst, e) : INFINITY;
                const double ee = fabs(got - ex) / (B * (1 + 1e-6) + tol);
                if (!(ee <= res->worst_exact))
                    res->worst_exact = isfinite(ee) ? fmax(res->worst_exact, ee) : INFINITY;
                if (S > 0) res->rel_exact = fmax(res->rel_exact, fabs(got - ex) / S);
            }
        }
    }
    free(W), free(Wf), free(x), free(xq), free(a), free(y), free(bias);
    return ran;
}

static void test_quantizer(void) {
    const int K = 256;
    float x[256], back[256];
    uint8_t a[512];
    CHECK(msa_q8_row_bytes(K) <= sizeof a);
    for (int rep = 0; rep < 20; rep++) {
        rand_acts(x, K);
        msa_q8_quantize_row(x, K, a);
        msa_q8_dequantize_row(a, K, back);
        const int8_t *qs = (const int8_t *)a;
        const float *d = (const float *)(a + K), *ds = d + K / 32;
        const int16_t *s16 = (const int16_t *)(ds + K / 32);
        for (int b = 0; b < K / 32; b++) {
            float amax = 0;
            int s[2] = {0, 0};
            for (int j = 0; j < 32; j++) {
                amax = fmaxf(amax, fabsf(x[32 * b + j]));
                s[j / 16] += qs[32 * b + j];
                CHECK(qs[32 * b + j] >= -127 && qs[32 * b + j] <= 127);
                CHECKF(fabsf(back[32 * b + j] - x[32 * b + j]) <= d[b] * 0.5f * (1 + 1e-6f),
                       "block %d element %d: %g -> %g (d %g)", b, j, x[32 * b + j],
                       back[32 * b + j], d[b]);
            }
            CHECK(d[b] == amax / 127.0f);
            CHECK(s16[2 * b] == s[0] && s16[2 * b + 1] == s[1]);
            CHECK(ds[b] == d[b] * (float)(s[0] + s[1]));
        }
        /* both quantizers write the same bytes */
        uint8_t p[512], v[512];
        msa_q8_quantize_row_portable(x, K, p);
        if (msa_q8_quantize_row_avx2(x, K, v))
            CHECKF(!memcmp(p, v, msa_q8_row_bytes(K)), "AVX2 and portable quantizers differ");
    }
}

int main(void) {
    t_seed();
    test_quantizer();
    const char *path_names[2] = {"portable", "avx2"};
    printf("dispatch: %s\n", msa_qgemm_path());
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const qtype *t = &types[ti];
        const int Ks[3] = {t->block, t->block == 32 ? 896 : 512, t->block == 32 ? 160 : 1024};
        for (int path = 0; path < 2; path++) {
            result res = {0, 0, 0};
            int ran = 1;
            for (int kc = 0; kc < 3 && ran; kc++) {
                const int K = Ks[kc];
                CHECK(msa_qgemm_supported(t->type, K));
                for (int n = 1; n <= 5 && ran; n++)
                    ran = run_case(t, 1 + t_randint(7), K, n, 0, 0x7fffffff, n == 3, path, &res);
                /* the tile paths: more rows than a 64-row tile, a row range */
                if (ran && kc == 1) {
                    ran = run_case(t, 37, K, 67, 0, 37, 1, path, &res);
                    ran = ran && run_case(t, 40, K, 9, 5, 33, 0, path, &res);
                }
            }
            if (!ran) {
                printf("%-5s %-8s: not built or not on this CPU (the portable path runs instead)\n",
                       t->name, path_names[path]);
                continue;
            }
            printf("%-5s %-8s: worst err/tol %.3f; vs unquantized x: worst err/bound %.3f, "
                   "max err/S %.2e\n", t->name, path_names[path], res.worst, res.worst_exact,
                   res.rel_exact);
            CHECKF(res.worst <= 1.0, "%s %s: error %.3g times the tolerance", t->name,
                   path_names[path], res.worst);
            CHECKF(res.worst_exact <= 1.0, "%s %s: %.3g times the quantization bound", t->name,
                   path_names[path], res.worst_exact);
        }
    }
    CHECK(!msa_qgemm_supported(MSA_GGML_F16, 32));
    CHECK(!msa_qgemm_supported(MSA_QT_Q4_K, 896));
    return t_done("test-qgemm");
}
