/*
 * bench-qgemm.c: the quantized products of kernels/qgemm.h, one thread,
 * per weight type: a decode GEMV (one activation row) and a prefill GEMM
 * (64 activation rows), each path validated against the portable one
 * before it is timed; the fp32 dot (kernels/ref.h, what the forward pass
 * runs on fp32 weights) as the baseline.
 *
 *   bench-qgemm [--rows 896] [--cols 4864] [--batch 64] [--reps 0 (auto)]
 *
 * Columns: ms per call (the best of 15 timings of this thread's CPU time,
 * so that waiting for a core on a shared machine is not counted), weight bytes read per call and
 * GB/s of them, GMAC/s (rows * cols * batch multiply-adds). Random blocks
 * (random bytes, fp16 scales replaced by finite ones), random activations.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/base.h"
#include "engine/model/gguf.h"
#include "kernels/qgemm.h"
#include "kernels/ref.h"

static uint64_t rs = 88172645463325252ULL;
static uint64_t rnd(void) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return rs;
}
static float rndf(void) { return (float)(rnd() >> 40) / 16777216.0f * 2.0f - 1.0f; }

typedef struct qtype {
    int type;
    const char *name;
    int block, bytes, f16_at[2];
} qtype;

static const qtype types[] = {
    {MSA_QT_Q8_0, "Q8_0", 32, 34, {0, -1}},    {MSA_QT_Q4_0, "Q4_0", 32, 18, {0, -1}},
    {MSA_QT_Q4_1, "Q4_1", 32, 20, {0, 2}},     {MSA_QT_Q5_0, "Q5_0", 32, 22, {0, -1}},
    {MSA_QT_Q5_1, "Q5_1", 32, 24, {0, 2}},     {MSA_QT_Q2_K, "Q2_K", 256, 84, {80, 82}},
    {MSA_QT_Q3_K, "Q3_K", 256, 110, {108, -1}}, {MSA_QT_Q4_K, "Q4_K", 256, 144, {0, 2}},
    {MSA_QT_Q5_K, "Q5_K", 256, 176, {0, 2}},   {MSA_QT_Q6_K, "Q6_K", 256, 210, {208, -1}},
};

typedef void (*run_fn)(const msa_qgemm_args *g);
static void run_portable(const msa_qgemm_args *g) { msa_qgemm_portable(g); }
static void run_avx2(const msa_qgemm_args *g) { msa_qgemm_avx2(g); }

/* This thread's CPU time: on a shared machine, the time the kernel ran,
 * not the time it waited for a core. */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

enum { TIMINGS = 15 };

static double time_it(run_fn f, const msa_qgemm_args *g, int reps) {
    double best = 1e30;
    for (int t = 0; t < TIMINGS; t++) {
        double a = cpu_now();
        for (int r = 0; r < reps; r++) f(g);
        double e = (cpu_now() - a) / reps;
        if (e < best) best = e;
    }
    return best;
}

typedef struct f32_args {
    const float *W, *x;
    float *y;
    int N, K, n;
} f32_args;

static double time_f32(const f32_args *a, int reps) {
    double best = 1e30;
    for (int t = 0; t < TIMINGS; t++) {
        double s = cpu_now();
        for (int r = 0; r < reps; r++)
            for (int i0 = 0; i0 < a->n; i0 += 4)
                for (int row = 0; row < a->N; row++)
                    for (int i = i0; i < i0 + 4 && i < a->n; i++)
                        a->y[(size_t)i * a->N + row] =
                            msa_ref_dot(a->x + (size_t)i * a->K, a->W + (size_t)row * a->K, a->K);
        double e = (cpu_now() - s) / reps;
        if (e < best) best = e;
    }
    return best;
}

static void row(const char *name, const char *path, int n, double s, double bytes, double macs) {
    printf("| %-5s | %-8s | %3d | %9.3f | %7.2f | %6.2f | %6.2f |\n", name, path, n, s * 1e3,
           bytes / 1e6, bytes / s / 1e9, macs / s / 1e9);
}

int main(int argc, char **argv) {
    int N = 896, K = 4864, B = 64, reps = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rows")) N = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--cols")) K = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch")) B = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
    }
    if (N < 1 || K < 256 || K % 256 || B < 1) {
        fprintf(stderr, "bench-qgemm: --rows >= 1, --cols a multiple of 256, --batch >= 1\n");
        return 2;
    }
    printf("bench-qgemm: W %d x %d, batch %d, one thread; msa_qgemm dispatch: %s\n", N, K, B,
           msa_qgemm_path());
    float *x = malloc(sizeof(float) * (size_t)B * K), *Wf = malloc(sizeof(float) * (size_t)N * K);
    float *y = malloc(sizeof(float) * (size_t)B * N), *y2 = malloc(sizeof(float) * (size_t)B * N);
    const size_t ab = msa_q8_row_bytes(K);
    uint8_t *a = malloc(ab * B), *W = malloc((size_t)N * K * 2);
    for (size_t i = 0; i < (size_t)B * K; i++) x[i] = rndf();
    for (size_t i = 0; i < (size_t)N * K; i++) Wf[i] = rndf() * 0.05f;
    for (int i = 0; i < B; i++) msa_q8_quantize_row(x + (size_t)i * K, K, a + i * ab);
    printf("| type | path | batch | ms | weight MB | GB/s | GMAC/s |\n|---|---|---:|---:|---:|---:|---:|\n");
    const int ns[2] = {1, B};
    for (int ni = 0; ni < (B > 1 ? 2 : 1); ni++) {
        const int n = ns[ni];
        const double macs = (double)N * K * n;
        f32_args fa = {Wf, x, y, N, K, n};
        int rp = reps ? reps : (int)(4e7 / macs) + 1;
        row("F32", "fp32 dot", n, time_f32(&fa, rp), (double)N * K * 4, macs);
        for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
            const qtype *t = &types[ti];
            const size_t rb = msa_ggml_row_bytes(t->type, K);
            for (size_t b = 0; b < rb * N / t->bytes; b++) {
                uint8_t *Bk = W + b * t->bytes;
                for (int j = 0; j < t->bytes; j++) Bk[j] = (uint8_t)rnd();
                for (int k = 0; k < 2; k++)
                    if (t->f16_at[k] >= 0) {
                        uint16_t h = msa_f32_to_f16(rndf() * 0.01f);
                        memcpy(Bk + t->f16_at[k], &h, 2);
                    }
            }
            msa_qgemm_args g = {t->type, W, rb, K, 0, N, a, n, y, N, NULL};
            msa_qgemm_portable(&g);
            const double bytes = (double)rb * N;
            row(t->name, "portable", n, time_it(run_portable, &g, rp), bytes, macs);
            msa_qgemm_args g2 = g;
            g2.y = y2;
            if (!msa_qgemm_avx2(&g2)) continue;
            /* validate against the portable path before timing */
            /* (both sum the same exact block integers: they differ by fp32
             * rounding of the block terms, small against the largest output) */
            double worst = 0, ymax = 1e-30;
            for (size_t i = 0; i < (size_t)n * N; i++) ymax = fmax(ymax, fabs(y[i]));
            for (size_t i = 0; i < (size_t)n * N; i++) {
                double e = fabs(y2[i] - y[i]) / ymax;
                if (!(e <= worst)) worst = isfinite(e) ? e : INFINITY;
            }
            if (!(worst < 1e-4)) {
                printf("| %-5s | avx2 | %d | INVALID: relative difference %.3g from portable |\n",
                       t->name, n, worst);
                continue;
            }
            row(t->name, "avx2", n, time_it(run_avx2, &g2, rp), bytes, macs);
        }
    }
    free(x), free(Wf), free(y), free(y2), free(a), free(W);
    return 0;
}
