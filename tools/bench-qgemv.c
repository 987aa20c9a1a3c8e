/*
 * bench-qgemv.c: the decode GEMV over ggml-quantized weights
 * (kernels/qgemv.cu) at the shapes of Qwen2.5-Coder-1.5B (hidden 1536, FFN
 * 8960, 2 KV heads of 128, vocab 151936), for every format, against the
 * bf16 GEMV of the same shape (kernels/gemv.cu) and a device-to-device
 * copy, all measured in the same run.
 *
 * Each row streams distinct copies of its weights through a 1 GB pool of
 * random blocks, so that none is still in L2 when it is read again, so the time is
 * that of reading from HBM. Timing: a warm-up pass, then 5 runs of one
 * launch per copy between CUDA events; the median run divided by the
 * copies. Columns: microseconds per GEMV, weight bytes per GEMV, their
 * rate, that rate as a share of the copy rate (bytes read + written / time
 * of cudaMemcpy of 1 GB), and the time against the bf16 GEMV's.
 *
 *   bench-qgemv
 *
 * Correctness is test-qgemv-cuda's; this only times. docs/bench-kernels.md
 * has the figures and the command.
 */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "engine/model/gguf.h"
#include "engine/msa.h"
#include "kernels/cuda.h"
#include "kernels/forward_ops.h"
#include "kernels/qgemv.h"

#define CU(expr)                                                                         \
    do {                                                                                 \
        cudaError_t e_ = (expr);                                                         \
        if (e_ != cudaSuccess) {                                                         \
            fprintf(stderr, "bench-qgemv: %s: %s\n", #expr, cudaGetErrorString(e_));     \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)
#define OK(expr)                                                                         \
    do {                                                                                 \
        if ((expr) != MSA_OK) {                                                          \
            fprintf(stderr, "bench-qgemv: %s: %s\n", #expr, msa_last_error());           \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

static int cmp_f(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* fills device memory with random bytes (through a host buffer) */
static void fill_random(void *d, size_t bytes, uint64_t *seed) {
    const size_t chunk = 64u << 20;
    uint8_t *h = malloc(chunk);
    for (size_t off = 0; off < bytes; off += chunk) {
        const size_t n = bytes - off < chunk ? bytes - off : chunk;
        for (size_t i = 0; i < n; i++) {
            *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
            h[i] = (uint8_t)(*seed >> 56);
        }
        CU(cudaMemcpy((char *)d + off, h, n, cudaMemcpyHostToDevice));
    }
    free(h);
}

/* k-quant blocks with random bytes would put random (often huge or NaN)
 * fp16 scales in; the timing does not depend on values, but keep them
 * finite: every 16-bit word with an all-ones exponent is masked */
static void tame_halves(void *d, size_t bytes) {
    const size_t chunk = 64u << 20;
    uint16_t *h = malloc(chunk);
    for (size_t off = 0; off + 2 <= bytes; off += chunk) {
        size_t n = bytes - off < chunk ? bytes - off : chunk;
        n &= ~(size_t)1;
        CU(cudaMemcpy(h, (char *)d + off, n, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < n / 2; i++)
            if ((h[i] & 0x7c00) == 0x7c00) h[i] &= 0xbfff;
        CU(cudaMemcpy((char *)d + off, h, n, cudaMemcpyHostToDevice));
    }
    free(h);
}

typedef struct shape {
    const char *name;
    int outd, in, swiglu;
} shape;

int main(void) {
    if (msa_cuda_device_count() <= 0) {
        fprintf(stderr, "bench-qgemv: no CUDA device\n");
        return 77;
    }
    struct cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, 0));
    int sms = prop.multiProcessorCount;
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));

    /* copy rate */
    const size_t cb = 1u << 30;
    void *ca, *cbuf;
    CU(cudaMalloc(&ca, cb));
    CU(cudaMalloc(&cbuf, cb));
    CU(cudaMemcpy(cbuf, ca, cb, cudaMemcpyDeviceToDevice));
    float cms[5];
    for (int r = 0; r < 5; r++) {
        CU(cudaEventRecord(e0, 0));
        CU(cudaMemcpy(cbuf, ca, cb, cudaMemcpyDeviceToDevice));
        CU(cudaEventRecord(e1, 0));
        CU(cudaEventSynchronize(e1));
        CU(cudaEventElapsedTime(&cms[r], e0, e1));
    }
    qsort(cms, 5, sizeof cms[0], cmp_f);
    const double copy_gbs = 2.0 * cb / (cms[2] * 1e-3) / 1e9;
    CU(cudaFree(ca));
    CU(cudaFree(cbuf));
    printf("bench-qgemv on %s (%d SMs); copy %.0f GB/s (read + write)\n", prop.name, sms, copy_gbs);
    printf("%-10s %-5s %2s %9s %10s %8s %6s %8s\n", "matrix", "type", "v", "us", "MB", "GB/s", "copy%",
           "vs bf16");

    static const shape SHAPES[] = {
        {"qkv", 1536 + 2 * 256, 1536, 0}, {"o", 1536, 1536, 0}, {"gate/up", 8960, 1536, 1},
        {"down", 1536, 8960, 0},          {"output", 151936, 1536, 0},
    };
    static const int TYPES[] = {MSA_GGML_Q4_0, MSA_GGML_Q4_1, MSA_GGML_Q5_0, MSA_GGML_Q5_1,
                                MSA_GGML_Q8_0, MSA_GGML_Q2_K, MSA_GGML_Q3_K, MSA_GGML_Q4_K,
                                MSA_GGML_Q5_K, MSA_GGML_Q6_K};
    const int n_types = (int)(sizeof TYPES / sizeof TYPES[0]);
    float *y;
    uint16_t *xb, *h;
    float *xf, *nw;
    CU(cudaMalloc((void **)&y, 200000 * 4));
    CU(cudaMalloc((void **)&h, 200000 * 2));
    CU(cudaMalloc((void **)&xb, 16384 * 2));
    CU(cudaMalloc((void **)&xf, 16384 * 4));
    CU(cudaMalloc((void **)&nw, 16384 * 4));
    fill_random(xb, 16384 * 2, &seed);
    tame_halves(xb, 16384 * 2);
    void *ws;
    CU(cudaMalloc(&ws, msa_fwd_gemv_workspace_size()));
    CU(cudaMemset(ws, 0, msa_fwd_gemv_workspace_size()));
    void *qws;
    CU(cudaMalloc(&qws, msa_fwd_qgemv_workspace_size(16384)));

    /* one pool of random blocks that every row streams through */
    const size_t pool_bytes = (size_t)1 << 30;
    char *pool;
    CU(cudaMalloc((void **)&pool, pool_bytes));
    fill_random(pool, pool_bytes, &seed);
    tame_halves(pool, pool_bytes);

    for (size_t si = 0; si < sizeof SHAPES / sizeof SHAPES[0]; si++) {
        const shape *S = &SHAPES[si];
        const int mats = S->swiglu ? 2 : 1;
        /* bf16 baseline */
        double bf_us = 0;
        for (int vi = -1; vi < 3 * n_types; vi++) {
            const int ti = vi < 0 ? -1 : vi / 3, variant = vi < 0 ? 0 : vi % 3 + 1;
            const int type = ti < 0 ? -1 : TYPES[ti];
            const size_t per = ti < 0 ? (size_t)S->outd * S->in * 2 * mats
                                      : msa_fwd_qrow_bytes(type, S->in) * S->outd * mats;
            int copies = (int)(pool_bytes / per);
            if (copies > 4096) copies = 4096;
            char *w = pool;
            float ms[6];
            for (int r = 0; r < 6; r++) {
                CU(cudaEventRecord(e0, 0));
                for (int c = 0; c < copies; c++) {
                    char *wc = w + per * (size_t)c;
                    if (ti < 0) {
                        msa_fwd_gemv_args g;
                        memset(&g, 0, sizeof g);
                        g.W = (const uint16_t *)wc;
                        g.xb = xb;
                        g.mode = MSA_FWD_GEMV_PLAIN;
                        g.in = S->in;
                        g.outd = S->outd;
                        if (S->swiglu) g.h = h;
                        else g.y = y;
                        g.workspace = ws;
                        g.sms = sms;
                        OK(msa_fwd_gemv(&g, 0));
                    } else {
                        msa_fwd_qgemv_args g;
                        memset(&g, 0, sizeof g);
                        g.seg[0] = (msa_fwd_qmat){wc, type, S->outd};
                        g.nseg = 1;
                        if (S->swiglu) {
                            g.seg[1] = (msa_fwd_qmat){wc + per / 2, type, S->outd};
                            g.nseg = 2;
                            g.h = h;
                        } else {
                            g.y = y;
                        }
                        g.xb = xb;
                        g.mode = MSA_FWD_GEMV_PLAIN;
                        g.in = S->in;
                        g.workspace = qws;
                        g.variant = variant;
                        g.sms = sms;
                        OK(msa_fwd_qgemv(&g, 0));
                    }
                }
                CU(cudaEventRecord(e1, 0));
                CU(cudaEventSynchronize(e1));
                CU(cudaEventElapsedTime(&ms[r], e0, e1));
            }
            qsort(ms + 1, 5, sizeof ms[0], cmp_f); /* run 0 is the warm-up */
            const double us = ms[3] * 1e3 / copies, gbs = per / (us * 1e-6) / 1e9;
            if (ti < 0) bf_us = us;
            printf("%-10s %-5s v%d %9.2f %10.2f %8.0f %5.0f%% %8.2f\n", S->name,
                   ti < 0 ? "BF16" : msa_ggml_type_name(type), variant, us, per / 1e6, gbs,
                   100.0 * gbs / copy_gbs, us / bf_us);
        }
    }
    return 0;
}
