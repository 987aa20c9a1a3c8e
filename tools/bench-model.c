/*
 * bench-model.c: the model benchmark on CUDA. A Llama-3.2-1B-shaped model
 * (16 layers, hidden 2048, 32 query heads, 8 KV heads, head dim 64, FFN
 * 8192, vocab 128256, tied classifier) with random bf16 weights drawn on the
 * GPU (engine/forward/forward_cuda.cu, msa_cuda_model_random), timed end to end
 * through msa_cuda_model_forward():
 *
 *   - prefill: one chunk of P tokens (default 4096) into an empty memory,
 *     MSA (Bk 128, k 16) and dense;
 *   - batch-1 greedy decode with L tokens of memory (default 4K, 32K, 128K,
 *     512K), MSA and dense in the same run. The memory is filled with random
 *     K/V/index keys on the GPU rather than by prefilling L tokens (the
 *     per-step cost depends on L, not on the values); each step appends its
 *     token and waits for its argmax on the host, as a real decode does;
 *   - the same with a trained index (one shared index key head, d_idx 128,
 *     as MiniMax-M3), whose index keys are 4x smaller than the training-free
 *     index's per-group keys.
 *
 * Ceilings measured in the same run: HBM bandwidth by a device-to-device
 * copy (bytes read + written), and from it the weight-bandwidth floor of a
 * decode step (weight bytes / bandwidth). Targets checked at the end:
 * decode at 4K within 1.5x of that floor; decode at 128K no more than 1.3x
 * the time per token at 4K.
 *
 * Per-kernel timing (--profile): at 4K (and 128K when timed) one decode step
 * is also run eagerly with CUDA events around every launch
 * (msa_cuda_model_profile), summed by kind, with the bytes each kind must
 * move and the rate it reached; the sum of the kernels against the graph
 * replay's time per token says what the gaps between kernels cost. Done for
 * the default (GEMV v4), GEMV v3 (set_options bit 8) and the step without
 * attention.
 *
 * With --model FILE (a GGUF, e.g. a Q4_K_M file people download), the
 * same decode (MSA, graphs, memory filled with random K/V) and prefill run
 * on that model's real weights instead, twice in one run: with its matrices
 * as the file's quantized bytes (kernels/qgemv.cu) and expanded to bf16
 * (MSA_CUDA_WEIGHTS=bf16), each against its own weight floor.
 *
 *   bench-model [--lengths 4096,32768,131072,524288] [--steps 32]
 *               [--prefill 4096 (0: none)] [--no-trained] [--profile] [--json FILE]
 *               [--model FILE.gguf]
 */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/forward/model_cuda.h"
#include "engine/model/model.h"
#include "base/base.h"

#define MAX_LEN 16
#define BK 128
#define TOPK 16

static void die(const char *what, int rc) {
    fprintf(stderr, "bench-model: %s: %s (%s)\n", what, msa_strerror(rc), msa_last_error());
    exit(1);
}
#define OK(expr, what)                \
    do {                              \
        int rc_ = (expr);             \
        if (rc_) die(what, rc_);      \
    } while (0)

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* HBM bandwidth: median of 10 copies of 2 GiB, bytes read + written. */
static double measure_bw(void) {
    const size_t n = (size_t)2 << 30;
    void *a, *b;
    if (cudaMalloc(&a, n) || cudaMalloc(&b, n)) {
        fprintf(stderr, "bench-model: cannot allocate the copy buffers\n");
        exit(1);
    }
    cudaMemset(a, 1, n);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    double t[10];
    for (int i = -2; i < 10; i++) {
        cudaEventRecord(e0, 0);
        cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, 0);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        if (i >= 0) t[i] = ms * 1e-3;
    }
    cudaFree(a);
    cudaFree(b);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaError_t e = cudaGetLastError();
    if (e) {
        fprintf(stderr, "bench-model: bandwidth copy: %s\n", cudaGetErrorString(e));
        exit(1);
    }
    return 2.0 * n / median(t, 10);
}

typedef struct row {
    char what[48];
    long long L;
    double ms_per_tok, tok_s, bytes; /* bytes: the step's counted traffic (decode) */
} row;
static row rows[64];
static int n_rows;

static void add_row(const char *what, long long L, double ms, double bytes) {
    row *r = &rows[n_rows++];
    snprintf(r->what, sizeof r->what, "%s", what);
    r->L = L;
    r->ms_per_tok = ms;
    r->tok_s = 1e3 / ms;
    r->bytes = bytes;
}

/* Prefill of P tokens into an empty memory: median seconds of 3 (after one
 * warm-up). */
static double time_prefill(msa_cuda_model *cm, msa_cuda_kv *kv, const int32_t *tok, int P,
                           int dense) {
    msa_forward_opts o = msa_forward_default_opts();
    o.block_size = BK;
    o.top_k = TOPK;
    o.dense = dense;
    double t[3];
    for (int i = -1; i < 3; i++) {
        OK(msa_cuda_kv_truncate(kv, 0), "truncate");
        int32_t am;
        double t0 = msa_now();
        OK(msa_cuda_model_forward(cm, kv, tok, P, 0, &o, NULL, &am), "prefill");
        if (i >= 0) t[i] = msa_now() - t0;
    }
    return median(t, 3);
}

/* Greedy decode of `steps` tokens after 3 warm-up steps, starting at a
 * memory of L tokens; milliseconds per token (host clock, argmax back on
 * the host every step). `graph`: the bits of msa_cuda_model_set_options'
 * use_graph (1 graphs, 2 cuBLAS instead of the GEMV, 4 skip attention). */
static double time_decode(msa_cuda_model *cm, msa_cuda_kv *kv, long long L, int steps,
                          int dense, int graph) {
    msa_forward_opts o = msa_forward_default_opts();
    o.block_size = BK;
    o.top_k = TOPK;
    o.dense = dense;
    msa_cuda_model_set_options(cm, graph, 0);
    OK(msa_cuda_kv_truncate(kv, L), "truncate");
    int32_t tok = 1;
    double t0 = 0;
    for (int s = -3; s < steps; s++) {
        if (s == 0) t0 = msa_now();
        int64_t pos = msa_cuda_kv_length(kv);
        OK(msa_cuda_model_forward(cm, kv, &tok, 1, (int)pos, &o, NULL, &tok), "decode");
    }
    double ms = (msa_now() - t0) * 1e3 / steps;
    msa_cuda_model_set_options(cm, 1, 0);
    return ms;
}

/* One decode step at L, `steps` times, eager with per-launch events; prints
 * the sums per kind per step. graph_ms: the same variant's time per token
 * with the graph (host clock), for the gap line. */
static void profile_decode(msa_cuda_model *cm, msa_cuda_kv *kv, long long L, int steps,
                           int bits, const char *label, double graph_ms) {
    msa_forward_opts o = msa_forward_default_opts();
    o.block_size = BK;
    o.top_k = TOPK;
    msa_cuda_model_set_options(cm, bits, 0);
    OK(msa_cuda_kv_truncate(kv, L), "truncate");
    int32_t tok = 1;
    for (int s = -3; s < steps; s++) {
        if (s == 0) msa_cuda_model_profile(cm, 1);
        int64_t pos = msa_cuda_kv_length(kv);
        OK(msa_cuda_model_forward(cm, kv, &tok, 1, (int)pos, &o, NULL, &tok), "decode");
    }
    msa_cuda_prof p;
    msa_cuda_model_profile_read(cm, &p);
    msa_cuda_model_profile(cm, 0);
    msa_cuda_model_set_options(cm, 1, 0);
    const int n = p.steps > 0 ? p.steps : 1;
    printf("\nper-kernel timing, %s, L=%lld (eager, events around each launch, %d steps)\n",
           label, L, p.steps);
    printf("| kind | launches/step | us/step | MB/step | GB/s |\n|---|---:|---:|---:|---:|\n");
    double sum = 0;
    for (int k = 0; k < MSA_CUDA_PROF_KINDS; k++) {
        if (!p.launches[k]) continue;
        const double us = p.ms[k] * 1e3 / n, mb = p.bytes[k] / 1e6 / n;
        if (k != MSA_CUDA_PROF_STEP && k != MSA_CUDA_PROF_COPY) sum += us;
        if (k == MSA_CUDA_PROF_STEP)
            printf("| %s | | %.1f | | |\n", msa_cuda_prof_name(k), us);
        else
            printf("| %s | %.1f | %.1f | %.3f | %.0f |\n", msa_cuda_prof_name(k),
                   (double)p.launches[k] / n, us, mb, us > 0 ? mb * 1e3 / us : 0);
    }
    printf("kernels summed %.1f us; step %.1f us eager with events; graph replay %.1f us/token "
           "(host clock, incl. upload, download, host)\n",
           sum, p.ms[MSA_CUDA_PROF_STEP] * 1e3 / n, graph_ms * 1e3);
    fflush(stdout);
}

/* --model: decode and prefill of a real GGUF, quantized then bf16 weights. */
static void bench_file(const char *path, const long long *lens, int n_lens, int steps, int P,
                       double bw, int profile) {
    msa_model *m;
    OK(msa_model_open(path, NULL, &m), "open model");
    const msa_model_info *I = &m->info;
    printf("model %s: %d layers, hidden %d, %d/%d heads of %d, FFN %d, vocab %d\n", path,
           I->n_layers, I->dim, I->n_heads, I->n_kv_heads, I->head_dim, I->ff_dim, I->vocab_size);
    int32_t *ptok = malloc((size_t)(P > 0 ? P : 1) * sizeof *ptok);
    for (int i = 0; i < P; i++) ptok[i] = (int32_t)((i * 7919u + 13) % (unsigned)I->vocab_size);
    double q4k = 0, qfloor = 0;
    for (int bf = 0; bf < 2; bf++) {
        const char *tag = bf ? "bf16 weights" : "quantized weights";
        if (bf) setenv("MSA_CUDA_WEIGHTS", "bf16", 1);
        msa_cuda_model *cm;
        OK(msa_cuda_model_upload(m, 0, &cm), "upload");
        unsetenv("MSA_CUDA_WEIGHTS");
        const double wbytes = (double)msa_cuda_model_weight_bytes(cm), floor_ms = wbytes / bw * 1e3;
        printf("%s: %.3f GB read per decode step; floor %.3f ms/token\n", tag, wbytes / 1e9, floor_ms);
        msa_cuda_kv *kv;
        long long cap = (lens[0] > P ? lens[0] : P) + 4 * BK;
        OK(msa_cuda_kv_init(cm, BK, cap, &kv), "memory");
        if (P > 0) {
            const double t = time_prefill(cm, kv, ptok, P, 0);
            printf("prefill %d tokens, %s: %.1f ms, %.0f tok/s\n", P, tag, t * 1e3, P / t);
            add_row(bf ? "prefill, bf16 weights" : "prefill, quantized weights", P, t * 1e3 / P, 0);
        }
        OK(msa_cuda_kv_fill_random(kv, lens[0], 7), "fill memory");
        for (int li = 0; li < n_lens; li++) {
            const double ms = time_decode(cm, kv, lens[li], steps, 0, 1);
            printf("decode L=%lld %s: %.3f ms/token (%.2fx its floor)\n", lens[li], tag, ms, ms / floor_ms);
            add_row(bf ? "decode, bf16 weights" : "decode, quantized weights", lens[li], ms, wbytes);
            if (lens[li] == 4096 && !bf) q4k = ms, qfloor = floor_ms;
            if (profile && lens[li] == 4096) profile_decode(cm, kv, lens[li], steps, 1, tag, ms);
        }
        msa_cuda_kv_free(kv);
        msa_cuda_model_free(cm);
    }
    printf("\n| what | memory tokens | ms/token | tokens/s | weight GB/step | GB/s |\n|---|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < n_rows; i++) {
        const row *r = &rows[i];
        if (r->bytes > 0)
            printf("| %s | %lld | %.3f | %.1f | %.3f | %.0f |\n", r->what, r->L, r->ms_per_tok, r->tok_s,
                   r->bytes / 1e9, r->bytes / 1e9 / (r->ms_per_tok * 1e-3));
        else
            printf("| %s | %lld (chunk) | %.4f | %.0f | | |\n", r->what, r->L, r->ms_per_tok, r->tok_s);
    }
    if (q4k > 0)
        printf("target: quantized decode at 4K / its floor = %.2fx (target <= 1.5x): %s\n", q4k / qfloor,
               q4k / qfloor <= 1.5 ? "met" : "missed");
    free(ptok);
    msa_model_free(m);
}

int main(int argc, char **argv) {
    long long lens[MAX_LEN] = {524288, 131072, 32768, 4096};
    const char *model_file = NULL;
    int n_lens = 4, steps = 32, P = 4096;
    const char *json = NULL;
    int no_trained = 0, profile = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-trained")) no_trained = 1;
        else if (!strcmp(argv[i], "--profile")) profile = 1;
        else if (!strcmp(argv[i], "--prefill") && i + 1 < argc) P = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else if (!strcmp(argv[i], "--model") && i + 1 < argc) model_file = argv[++i];
        else if (!strcmp(argv[i], "--lengths") && i + 1 < argc) {
            n_lens = 0;
            for (char *p = argv[++i], *e; *p && n_lens < MAX_LEN; p = *e ? e + 1 : e) {
                lens[n_lens++] = strtoll(p, &e, 10);
                if (e == p) break;
            }
        } else {
            fprintf(stderr, "usage: bench-model [--lengths a,b,..] [--steps N] [--prefill P] "
                            "[--no-trained] [--profile] [--json FILE] [--model FILE.gguf]\n");
            return 2;
        }
    }
    /* longest first: the memory is filled once and truncated down */
    for (int i = 0; i < n_lens; i++)
        for (int j = i + 1; j < n_lens; j++)
            if (lens[j] > lens[i]) {
                long long t = lens[i];
                lens[i] = lens[j];
                lens[j] = t;
            }
    if (!msa_cuda_available()) {
        printf("bench-model: no CUDA device\n");
        return 77;
    }
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("device: %s, %d SMs, %.1f GiB\n", prop.name, prop.multiProcessorCount,
           prop.totalGlobalMem / 1073741824.0);
    const double bw = measure_bw();
    printf("HBM bandwidth (device-to-device copy, read + write): %.0f GB/s\n", bw / 1e9);
    if (model_file) {
        bench_file(model_file, lens, n_lens, steps, P, bw, profile);
        return 0;
    }

    msa_model_info info;
    memset(&info, 0, sizeof info);
    info.n_layers = 16;
    info.dim = 2048;
    info.n_heads = 32;
    info.n_kv_heads = 8;
    info.head_dim = 64;
    info.ff_dim = 8192;
    info.vocab_size = 128256;
    info.rope_theta = 500000.0f;
    const long long maxL = lens[0];
    int32_t *ptok = malloc((size_t)(P > 0 ? P : 1) * sizeof *ptok);
    for (int i = 0; i < P; i++) ptok[i] = (int32_t)((i * 7919u + 13) % (unsigned)info.vocab_size);

    double floor_ms = 0, wbytes = 0;
    double msa4k = 0, msa128k = 0, tr4k = 0, tr128k = 0;
    for (int trained = 0; trained < 2 - no_trained; trained++) {
        info.has_trained_index = trained;
        info.idx_dim = trained ? 128 : 0;
        const char *tag = trained ? "MSA trained idx" : "MSA";
        msa_cuda_model *cm;
        OK(msa_cuda_model_random(&info, 42 + trained, 0, &cm), "random model");
        const msa_model_info *I = msa_cuda_model_info(cm);
        wbytes = (double)msa_cuda_model_weight_bytes(cm);
        floor_ms = wbytes / bw * 1e3;
        if (!trained)
            printf("weights read per decode step: %.3f GB; floor %.3f ms/token\n", wbytes / 1e9,
                   floor_ms);
        msa_cuda_kv *kv;
        long long cap = (maxL > P ? maxL : P) + 4 * BK;
        OK(msa_cuda_kv_init(cm, BK, cap, &kv), "memory");
        double t = P > 0 ? time_prefill(cm, kv, ptok, P, 0) : 0;
        if (P > 0) {
            add_row(trained ? "prefill MSA trained idx" : "prefill MSA", P, t * 1e3 / P, 0);
            printf("prefill %d tokens, %s: %.1f ms, %.0f tok/s\n", P, tag, t * 1e3, P / t);
        }
        if (!trained && P > 0) {
            t = time_prefill(cm, kv, ptok, P, 1);
            add_row("prefill dense", P, t * 1e3 / P, 0);
            printf("prefill %d tokens, dense: %.1f ms, %.0f tok/s\n", P, t * 1e3, P / t);
            msa_cuda_model_set_options(cm, 1 | 4, 0);
            t = time_prefill(cm, kv, ptok, P, 0);
            msa_cuda_model_set_options(cm, 1, 0);
            add_row("prefill without attention (diag.)", P, t * 1e3 / P, 0);
            printf("prefill %d tokens, no attention: %.1f ms\n", P, t * 1e3);
        }
        OK(msa_cuda_kv_fill_random(kv, maxL, 7), "fill memory");
        /* bytes a decode step must read: weights, every index key, the
         * selected K/V (MSA) or every K/V (dense) */
        const double ikb = (double)I->n_layers * I->idx_key_heads * I->idx_dim * 2;
        const double kvb = (double)I->n_layers * I->n_kv_heads * I->head_dim * 2 * 2;
        for (int li = 0; li < n_lens; li++) {
            const long long L = lens[li];
            double ms = time_decode(cm, kv, L, steps, 0, 1);
            double sel = (double)(L < (long long)TOPK * BK ? L : TOPK * BK) * kvb;
            add_row(tag, L, ms, wbytes + L * ikb + sel);
            printf("decode L=%lld %s: %.3f ms/token, %.1f tok/s\n", L, tag, ms, 1e3 / ms);
            if (L == 4096) *(trained ? &tr4k : &msa4k) = ms;
            if (L == 131072) *(trained ? &tr128k : &msa128k) = ms;
            if (profile && !trained && L == 131072)
                profile_decode(cm, kv, L, steps, 1, "MSA (GEMV v4)", ms);
            if (!trained) {
                ms = time_decode(cm, kv, L, steps, 1, 1);
                add_row("dense", L, ms, wbytes + L * kvb);
                printf("decode L=%lld dense: %.3f ms/token, %.1f tok/s\n", L, ms, 1e3 / ms);
                if (L == 4096) {
                    ms = time_decode(cm, kv, L, steps, 0, 0);
                    add_row("MSA, no CUDA graph", L, ms, wbytes + L * ikb + sel);
                    printf("decode L=%lld MSA eager: %.3f ms/token\n", L, ms);
                    ms = time_decode(cm, kv, L, steps, 0, 3);
                    add_row("MSA, cuBLAS instead of the GEMV", L, ms, wbytes + L * ikb + sel);
                    printf("decode L=%lld MSA cuBLAS: %.3f ms/token\n", L, ms);
                    const double v4ms = msa4k;
                    const double v3ms = time_decode(cm, kv, L, steps, 0, 1 | 8);
                    add_row("MSA, GEMV v3", L, v3ms, wbytes + L * ikb + sel);
                    printf("decode L=%lld MSA GEMV v3: %.3f ms/token\n", L, v3ms);
                    ms = time_decode(cm, kv, L, steps, 0, 1 | 4);
                    add_row("step without attention (diag.)", L, ms, wbytes);
                    printf("decode L=%lld without attention: %.3f ms/token\n", L, ms);
                    const double noatt = ms;
                    ms = time_decode(cm, kv, L, steps, 0, 1 | 4 | 8);
                    add_row("same, GEMV v3 (diag.)", L, ms, wbytes);
                    printf("decode L=%lld without attention, GEMV v3: %.3f ms/token\n", L, ms);
                    if (profile) {
                        profile_decode(cm, kv, L, steps, 1, "MSA (GEMV v4)", v4ms);
                        profile_decode(cm, kv, L, steps, 1 | 8, "MSA (GEMV v3)", v3ms);
                        profile_decode(cm, kv, L, steps, 1 | 4, "without attention (GEMV v4)",
                                       noatt);
                    }
                    ms = time_decode(cm, kv, L, steps, 0, 1 | 2 | 4);
                    add_row("same, cuBLAS (diag.)", L, ms, wbytes);
                    printf("decode L=%lld without attention, cuBLAS: %.3f ms/token\n", L, ms);
                }
            }
            fflush(stdout);
        }
        msa_cuda_kv_free(kv);
        msa_cuda_model_free(cm);
    }

    printf("\n| what | memory tokens | ms/token | tokens/s | counted GB/step | GB/s |\n");
    printf("|---|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < n_rows; i++) {
        const row *r = &rows[i];
        if (r->bytes > 0)
            printf("| %s | %lld | %.3f | %.1f | %.3f | %.0f |\n", r->what, r->L, r->ms_per_tok,
                   r->tok_s, r->bytes / 1e9, r->bytes / 1e9 / (r->ms_per_tok * 1e-3));
        else
            printf("| %s | %lld (chunk) | %.4f | %.0f | | |\n", r->what, r->L, r->ms_per_tok,
                   r->tok_s);
    }
    printf("\nweight floor %.3f ms/token (%.3f GB at %.0f GB/s)\n", floor_ms, wbytes / 1e9, bw / 1e9);
    if (msa4k > 0)
        printf("target 1: MSA decode at 4K / floor = %.2fx (target <= 1.5x): %s\n",
               msa4k / floor_ms, msa4k / floor_ms <= 1.5 ? "met" : "missed");
    if (msa4k > 0 && msa128k > 0)
        printf("target 2: MSA decode 128K / 4K = %.2fx (target <= 1.3x): %s\n", msa128k / msa4k,
               msa128k / msa4k <= 1.3 ? "met" : "missed");
    if (tr4k > 0 && tr128k > 0)
        printf("target 2, trained index (1 key head, d_idx 128): 128K / 4K = %.2fx: %s\n",
               tr128k / tr4k, tr128k / tr4k <= 1.3 ? "met" : "missed");
    if (json) {
        FILE *f = fopen(json, "w");
        if (f) {
            fprintf(f, "{\"device\": \"%s\", \"hbm_gbs\": %.1f, \"weight_gb\": %.4f, "
                       "\"floor_ms\": %.4f, \"rows\": [\n", prop.name, bw / 1e9, wbytes / 1e9,
                    floor_ms);
            for (int i = 0; i < n_rows; i++)
                fprintf(f, "  {\"what\": \"%s\", \"tokens\": %lld, \"ms_per_token\": %.5f, "
                           "\"tokens_per_s\": %.2f}%s\n", rows[i].what, rows[i].L,
                        rows[i].ms_per_tok, rows[i].tok_s, i + 1 < n_rows ? "," : "");
            fprintf(f, "]}\n");
            fclose(f);
        }
    }
    free(ptok);
    return 0;
}
