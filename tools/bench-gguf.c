/*
 * bench-gguf.c: CPU prefill and decode of a real GGUF model through the
 * library's forward pass (engine/forward/forward.c), the figures that
 * tools/bench_cpu_llamacpp.py sets beside llama.cpp's (docs/models.md).
 *
 *   bench-gguf MODEL.gguf [--threads 2] [--prompt 512] [--decode 32] [--runs 3] [--json]
 *
 * One run: a fresh host-RAM memory (blocks of 128, k 16), the prompt (token
 * ids 1000 + (i * 7919) % 20000, a fixed sequence) prefilled as one chunk,
 * then --decode greedy steps of one token each, logits of the last row
 * only (what llama.cpp computes too). Prefill is timed as a whole (tokens/s),
 * decode per step (the mean over the steps, ms/token). Of --runs runs the
 * best of each is printed (the machine is shared; the best is the least
 * disturbed), with every run's figures beside it. Resident memory (VmHWM
 * of /proc/self/status) and the weight bytes the model holds (fp32 and
 * quantized) are printed too, and the CPU time of prefill and of a decode
 * step (all threads; the least of the runs): on a machine shared with
 * other work, CPU time / threads is what wall time would be on an idle one
 * if the threads never waited for each other. MSA_CPU_WEIGHTS=f32
 * benchmarks the fp32 path.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/base.h"
#include "engine/model/model.h"
#include "kernels/qgemm.h"
#include "memory/kvcache.h"

static long status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':') v = strtol(line + n + 1, NULL, 10);
    fclose(f);
    return v;
}

/* The process's CPU time (all threads): on a shared machine, what the work
 * cost, whatever the waiting for a core. */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

int main(int argc, char **argv) {
    const char *path = NULL;
    int threads = 2, P = 512, N = 32, runs = 3, json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--prompt") && i + 1 < argc) P = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--decode") && i + 1 < argc) N = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (argv[i][0] != '-' && !path) path = argv[i];
        else {
            fprintf(stderr, "usage: bench-gguf MODEL.gguf [--threads N] [--prompt P] "
                            "[--decode N] [--runs R] [--json]\n");
            return 2;
        }
    }
    if (!path || P < 1 || N < 1 || runs < 1 || threads < 0) {
        fprintf(stderr, "bench-gguf: a model path, --prompt >= 1, --decode >= 1, --runs >= 1\n");
        return 2;
    }
    msa_model_params mp = msa_model_default_params();
    mp.n_threads = threads;
    msa_model *m = NULL;
    double t0 = msa_now();
    if (msa_model_open(path, &mp, &m)) {
        fprintf(stderr, "bench-gguf: %s\n", msa_last_error());
        return 1;
    }
    const double t_open = msa_now() - t0;
    const int V = m->info.vocab_size;
    size_t fb = 0, qb = 0;
    msa_model_weight_bytes(m, &fb, &qb);
    int32_t *toks = malloc(sizeof *toks * (size_t)(P + N));
    float *logits = malloc(sizeof *logits * (size_t)V);
    if (!toks || !logits) return 1;
    for (int i = 0; i < P; i++) toks[i] = (int32_t)((1000 + (int64_t)i * 7919 % 20000) % V);
    msa_forward_opts o = msa_forward_default_opts();
    double best_pf = 0, best_dec = 1e30, best_pf_cpu = 1e30, best_dec_cpu = 1e30;
    char runs_txt[1024] = "";
    int first_ids[4] = {0};
    for (int r = 0; r < runs; r++) {
        msa_kvcache_params kp = msa_kvcache_params_for(m, o.block_size);
        msa_kvmem *mem = NULL;
        if (msa_kvcache_init(&kp, &mem)) {
            fprintf(stderr, "bench-gguf: %s\n", msa_last_error());
            return 1;
        }
        double a = msa_now(), ac = cpu_now();
        if (msa_model_forward(m, mem, toks, P, 0, &o, logits)) {
            fprintf(stderr, "bench-gguf: prefill: %s\n", msa_last_error());
            return 1;
        }
        const double pf = P / (msa_now() - a), pf_cpu = cpu_now() - ac;
        int32_t t = argmax(logits, V);
        a = msa_now();
        ac = cpu_now();
        for (int s = 0; s < N; s++) {
            if (r == 0 && s < 4) first_ids[s] = t;
            if (msa_model_forward(m, mem, &t, 1, P + s, &o, logits)) {
                fprintf(stderr, "bench-gguf: decode: %s\n", msa_last_error());
                return 1;
            }
            t = argmax(logits, V);
        }
        const double dec = (msa_now() - a) * 1e3 / N, dec_cpu = (cpu_now() - ac) * 1e3 / N;
        msa_kvcache_free(mem);
        if (pf_cpu < best_pf_cpu) best_pf_cpu = pf_cpu;
        if (dec_cpu < best_dec_cpu) best_dec_cpu = dec_cpu;
        if (pf > best_pf) best_pf = pf;
        if (dec < best_dec) best_dec = dec;
        size_t l = strlen(runs_txt);
        snprintf(runs_txt + l, sizeof runs_txt - l, "%s%.1f tok/s / %.2f ms", r ? ", " : "", pf, dec);
    }
    const char *mode = getenv("MSA_CPU_WEIGHTS");
    mode = mode && !strcmp(mode, "f32") ? "f32" : "quantized";
    if (json)
        printf("{\"engine\": \"msa-mem\", \"model\": \"%s\", \"weights\": \"%s\", \"qgemm\": \"%s\", "
               "\"threads\": %d, \"prompt\": %d, \"decode\": %d, \"runs\": %d, "
               "\"prefill_tok_s\": %.2f, \"decode_ms\": %.3f, \"prefill_cpu_s\": %.2f, "
               "\"decode_cpu_ms\": %.3f, \"rss_max_mb\": %.1f, "
               "\"weights_f32_mb\": %.1f, \"weights_quant_mb\": %.1f, \"open_s\": %.2f, "
               "\"first_ids\": [%d, %d, %d, %d]}\n",
               path, mode, msa_qgemm_path(), threads, P, N, runs, best_pf, best_dec, best_pf_cpu,
               best_dec_cpu, status_kb("VmHWM") / 1024.0, fb / 1e6, qb / 1e6, t_open, first_ids[0],
               first_ids[1], first_ids[2], first_ids[3]);
    else
        printf("%s (%s weights, qgemm %s), %d threads: prefill %d tokens %.1f tokens/s, "
               "decode %.2f ms/token (best of %d: %s); CPU time: prefill %.2f s, decode %.2f "
               "ms/token; resident max %.0f MB; weights %.0f MB fp32 + %.0f MB quantized; "
               "open %.2f s\n",
               path, mode, msa_qgemm_path(), threads, P, best_pf, best_dec, runs, runs_txt,
               best_pf_cpu, best_dec_cpu,
               status_kb("VmHWM") / 1024.0, fb / 1e6, qb / 1e6, t_open);
    free(toks);
    free(logits);
    msa_model_free(m);
    return 0;
}
