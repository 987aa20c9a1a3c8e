/*
 * bench-pager.c: what the block pager (memory/) costs.
 *
 *   copy     (CUDA) host-to-device throughput: one large pinned copy (the
 *            peak of this machine, measured in the same run), then under
 *            each block-copy method of gpupool.h (memcpy, runs, batch,
 *            gather): msa_gpu_copy_blocks of 64 scattered blocks, and the
 *            pager itself paging a step of 64 blocks (GPU misses, host
 *            hits) through kv_view, in order and in random order. Bytes are
 *            counted as K+V of the blocks moved.
 *   decode   a decode-like access pattern: every step appends one token per
 *            layer, and each of the Hkv groups selects k blocks per layer
 *            (the local block plus k-1 others), mostly the ones of the last
 *            step with `changes` of them replaced. Pool sizes 100%, 25% and
 *            5% of the session's blocks; hit rates and pager time per step
 *            (index_view + kv_view of every layer, copies finished). No
 *            attention runs: this times the pager alone.
 *
 * Usage: bench-pager [--cpu] [--json] [--layers L] [--blocks B] [--steps N]
 *                    [--hkv H] [--dim D] [--changes C] [--seed S]
 * Defaults: CUDA 4 layers x 2560 blocks, Hkv 8, d 128, bf16 (5.4 GB);
 * CPU 2 layers x 1280 blocks, Hkv 4, d 64, fp32 (0.7 GB); 200 steps,
 * 2 changes. Every block passes through the pool once before the timed
 * steps (steady state); 20 more untimed steps follow.
 * The tables go to stdout; --json adds one JSON document after them.
 * Without CUDA (or with --cpu) only the decode part runs, with the host
 * cache as the pool and fp32 blocks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/msa.h"
#include "base/base.h"
#include "memory/pager.h"

#ifdef MSA_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "memory/gpupool.h"
#endif

static uint64_t rng = 88172645463325252ULL;
static uint64_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

#ifdef MSA_HAVE_CUDA
static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static double median(double *x, int n) {
    qsort(x, n, sizeof *x, cmp_double);
    return x[n / 2];
}
#endif

#define DIE(...)                                                                  \
    do {                                                                          \
        fprintf(stderr, __VA_ARGS__);                                             \
        fprintf(stderr, "\n");                                                    \
        exit(1);                                                                  \
    } while (0)
#define OK(x)                                                                     \
    do {                                                                          \
        int rc_ = (x);                                                            \
        if (rc_) DIE("%s: %s: %s", #x, msa_strerror(rc_), msa_last_error());       \
    } while (0)

typedef struct opts {
    int cpu, json, layers, blocks, steps, hkv, dim, changes;
} opts;

/* A source of `blocks` full blocks per layer filled with random bits (not
 * zeros: the copy engines and caches must see real data). */
static msa_memsource *make_source(const msa_pager_params *p, int blocks) {
    msa_memsource *ms;
    OK(msa_memsource_init(&ms, p));
    size_t half = msa_pager_block_bytes(p) / 2;
    size_t idx = (size_t)p->cfg.idx_key_heads * p->cfg.block_size * p->cfg.idx_dim *
                 msa_dtype_size(p->dtype);
    uint64_t *k = malloc(half), *v = malloc(half), *ki = malloc(idx);
    /* small finite values in every dtype (random high bits under 0x3f00 per
     * 16-bit word); each block is a random rotation of one random buffer,
     * so that gigabytes are made at memcpy speed */
    for (size_t i = 0; i < half / 8; i++) k[i] = rnd() & 0x3f3f3f3f3f3f3f00ULL;
    for (size_t i = 0; i < idx / 8; i++) ki[i] = rnd() & 0x3f3f3f3f3f3f3f00ULL;
    for (int l = 0; l < p->n_layers; l++)
        for (int b = 0; b < blocks; b++) {
            size_t r = (size_t)(rnd() % (half / 8));
            memcpy(v, k + r, (half / 8 - r) * 8);
            memcpy(v + (half / 8 - r), k, r * 8);
            OK(msa_memsource_put(ms, l, b, v, k, ki, -1));
        }
    free(k), free(v), free(ki);
    return ms;
}

static msa_pager_params bench_params(const opts *o, int gpu) {
    msa_pager_params p = msa_pager_default_params();
    p.cfg.n_kv_heads = o->hkv;
    p.cfg.n_q_heads = o->hkv * 8;
    p.cfg.head_dim = o->dim;
    p.cfg.idx_dim = 128;
    p.cfg.idx_key_heads = 1;
    p.cfg.block_size = 128;
    p.cfg.top_k = 16;
    p.n_layers = o->layers;
    p.max_tokens = (int64_t)(o->blocks + o->steps / 128 + 4) * 128;
    p.dtype = gpu ? MSA_DTYPE_BF16 : MSA_DTYPE_F32;
    p.device = gpu ? MSA_DEVICE_CUDA : MSA_DEVICE_CPU;
    p.gpu_index_bytes = (size_t)4 << 30;
    return p;
}

/* ---- copy throughput ------------------------------------------------------------ */

enum { N_H2D = 4 };

typedef struct copy_result {
    double peak_gbs;
    /* per msa_gpu_h2d method: raw scattered blocks through
     * msa_gpu_copy_blocks, and the pager's kv_view with blocks in order
     * (consecutive host and GPU slots) and in random order */
    double scattered_gbs[N_H2D], pager_seq_gbs[N_H2D], pager_rand_gbs[N_H2D];
    int method;             /* the default method (msa_gpu_init) */
    size_t block_bytes;
    int blocks_per_step;
} copy_result;

#ifdef MSA_HAVE_CUDA
#define CU(x)                                                                     \
    do {                                                                          \
        cudaError_t e_ = (x);                                                     \
        if (e_ != cudaSuccess) DIE("%s: %s", #x, cudaGetErrorString(e_));          \
    } while (0)

/* k distinct values of 0..n-1 in random order (partial Fisher-Yates). */
static void pick(int32_t *out, int k, int n, int32_t *scratch) {
    for (int i = 0; i < n; i++) scratch[i] = i;
    for (int i = 0; i < k; i++) {
        int j = i + (int)(rnd() % (uint64_t)(n - i));
        int32_t t = scratch[i];
        scratch[i] = scratch[j];
        scratch[j] = t;
        out[i] = scratch[i];
    }
}

/* Pager kv_view throughput under method m: 21 steps of per_step blocks, all
 * GPU misses that hit the host cache; `random`: the blocks of a step are a
 * random choice of one half of the session (alternating halves, so none is
 * in the pool), else blocks 0..per_step-1 and per_step..2 per_step-1 in
 * turn. Every step is timed on the host (kv_view plus the copies). */
static double bench_pager_path(msa_pager_params p, int n, int per_step, int m, int random,
                               msa_memsource *ms) {
    static const char *names[N_H2D] = {"memcpy", "runs", "batch", "gather"};
    setenv("MSA_PAGER_H2D", names[m], 1);
    msa_block_source src = msa_memsource_source(ms);
    msa_kvmem *mem;
    OK(msa_kvmem_paged_init(&mem, &p, &src));
    unsetenv("MSA_PAGER_H2D");
    cudaStream_t s = (cudaStream_t)p.stream;
    int32_t *sel = malloc(sizeof(int32_t) * per_step), *scratch = malloc(sizeof(int32_t) * n);
    msa_paged_kv kv;
    double t[21];
    int reps = 21;
    msa_pager_stats st0, st1;
    for (int rep = -n / per_step; rep < reps; rep++) { /* first: fill the host cache */
        if (rep < 0) {
            int base = (rep + n / per_step) * per_step;
            for (int i = 0; i < per_step; i++) sel[i] = base + i;
        } else if (random) {
            pick(sel, per_step, n / 2, scratch);
            for (int i = 0; i < per_step; i++) sel[i] += (rep % 2) * (n / 2);
        } else {
            for (int i = 0; i < per_step; i++) sel[i] = (rep % 2) * per_step + i;
        }
        CU(cudaStreamSynchronize(s));
        if (rep == 0) msa_kvmem_paged_stats(mem, &st0);
        double t0 = msa_now();
        OK(mem->ops->kv_view(mem, 0, sel, per_step, &kv));
        CU(cudaStreamSynchronize(s));
        if (rep >= 0) t[rep] = msa_now() - t0;
    }
    msa_kvmem_paged_stats(mem, &st1);
    if (st1.gpu_misses - st0.gpu_misses != (uint64_t)reps * per_step ||
        st1.host_misses != st0.host_misses)
        DIE("bench-pager: the copy steps were not all GPU misses and host hits");
    msa_kvmem_paged_free(mem);
    free(sel), free(scratch);
    return (double)per_step * msa_pager_block_bytes(&p) / median(t + 1, reps - 1) / 1e9;
}

static copy_result bench_copy(const opts *o) {
    copy_result r;
    memset(&r, 0, sizeof r);
    opts oc = *o;
    oc.layers = 1;
    oc.blocks = 512;
    msa_pager_params p = bench_params(&oc, 1);
    size_t bb = msa_pager_block_bytes(&p), half = bb / 2;
    int per_step = 64, n = oc.blocks;
    r.block_bytes = bb;
    r.blocks_per_step = per_step;
    size_t total = (size_t)per_step * bb;
    /* peak: one pinned copy of a step's bytes */
    char *hk, *hv, *dk, *dv;
    CU(cudaHostAlloc((void **)&hk, (size_t)n * half, cudaHostAllocMapped));
    CU(cudaHostAlloc((void **)&hv, (size_t)n * half, cudaHostAllocMapped));
    CU(cudaMalloc((void **)&dk, (size_t)n * half));
    CU(cudaMalloc((void **)&dv, (size_t)n * half));
    for (size_t i = 0; i < (size_t)n * half / 8; i++) {
        ((uint64_t *)hk)[i] = rnd();
        ((uint64_t *)hv)[i] = rnd();
    }
    cudaStream_t s;
    CU(cudaStreamCreate(&s));
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    double t[21];
    for (int rep = 0; rep < 21; rep++) {
        CU(cudaEventRecord(e0, s));
        CU(cudaMemcpyAsync(dk, hk + (size_t)(rep % 4) * total, total, cudaMemcpyHostToDevice, s));
        CU(cudaEventRecord(e1, s));
        CU(cudaEventSynchronize(e1));
        float ms;
        CU(cudaEventElapsedTime(&ms, e0, e1));
        t[rep] = ms * 1e-3;
    }
    r.peak_gbs = total / median(t + 1, 20) / 1e9;
    /* scattered: K and V of random host slots into random GPU slots through
     * msa_gpu_copy_blocks on its copy stream, timed on the compute stream
     * the way the pager orders it (begin_step, wait, copies, end_step) */
    msa_gpu *g;
    OK(msa_gpu_init(&g, s));
    r.method = (int)msa_gpu_get_h2d(g);
    int32_t *hs = malloc(sizeof(int32_t) * per_step), *ds = malloc(sizeof(int32_t) * per_step);
    int32_t *scratch = malloc(sizeof(int32_t) * n);
    int64_t w = 100;
    for (int m = 0; m < N_H2D; m++) {
        msa_gpu_set_h2d(g, (msa_gpu_h2d)m);
        for (int rep = -1; rep < 21; rep++) {
            pick(hs, per_step, n, scratch);
            pick(ds, per_step, n, scratch);
            CU(cudaEventRecord(e0, s));
            OK(msa_gpu_begin_step(g, ++w));
            OK(msa_gpu_copy_wait_compute(g, w));
            OK(msa_gpu_copy_blocks(g, dk, dv, hk, hv, half, hs, ds, per_step));
            OK(msa_gpu_end_step(g, w));
            CU(cudaEventRecord(e1, s));
            CU(cudaEventSynchronize(e1));
            float ms;
            CU(cudaEventElapsedTime(&ms, e0, e1));
            if (rep >= 0) t[rep] = ms * 1e-3;
        }
        /* the last step's blocks arrived intact */
        char *back = malloc(half);
        for (int i = 0; i < per_step; i += 7) {
            CU(cudaMemcpy(back, dv + (size_t)ds[i] * half, half, cudaMemcpyDeviceToHost));
            if (memcmp(back, hv + (size_t)hs[i] * half, half))
                DIE("bench-pager: %s: block %d arrived wrong", msa_gpu_h2d_name(m), i);
        }
        free(back);
        r.scattered_gbs[m] = total / median(t + 1, 20) / 1e9;
    }
    msa_gpu_free(g);
    free(hs), free(ds), free(scratch);
    cudaFreeHost(hk);
    cudaFreeHost(hv);
    cudaFree(dk);
    cudaFree(dv);
    /* the pager: host cache holds every block, GPU pool one step */
    p.host_cache_bytes = (size_t)(n + 1) * bb;
    p.gpu_pool_bytes = (size_t)per_step * bb;
    p.stream = s;
    msa_memsource *ms = make_source(&p, n);
    for (int m = 0; m < N_H2D; m++) {
        r.pager_seq_gbs[m] = bench_pager_path(p, n, per_step, m, 0, ms);
        r.pager_rand_gbs[m] = bench_pager_path(p, n, per_step, m, 1, ms);
    }
    msa_memsource_free(ms);
    cudaStreamDestroy(s);
    return r;
}
#endif

static const char *h2d_name(int m) {
#ifdef MSA_HAVE_CUDA
    return msa_gpu_h2d_name((msa_gpu_h2d)m);
#else
    (void)m;
    return "";
#endif
}

/* ---- decode pattern ------------------------------------------------------------- */

typedef struct decode_result {
    double pool_frac;
    int pool_slots, host_slots;
    double gpu_hit, host_hit, ms_per_step, gbs_store, gbs_h2d;
    uint64_t gpu_misses, host_misses, evictions;
} decode_result;

static decode_result bench_decode(const opts *o, int gpu, double frac, msa_memsource *ms,
                                  int32_t *sel_state) {
    decode_result r;
    memset(&r, 0, sizeof r);
    r.pool_frac = frac;
    msa_pager_params p = bench_params(o, gpu);
    size_t bb = msa_pager_block_bytes(&p);
    int64_t session = (int64_t)o->layers * o->blocks;
    int64_t slots = (int64_t)(session * frac + 0.5);
    int k = p.cfg.top_k, H = p.cfg.n_kv_heads;
    if (slots < H * (k - 1) + 1) slots = H * (k - 1) + 1;
    if (gpu) {
        p.gpu_pool_bytes = (size_t)slots * bb;
        p.host_cache_bytes = (size_t)(session + H * k) * bb;
    } else {
        p.host_cache_bytes = (size_t)slots * bb;
    }
#ifdef MSA_HAVE_CUDA
    cudaStream_t s = NULL;
    if (gpu) {
        CU(cudaStreamCreate(&s));
        p.stream = s;
    }
#endif
    msa_block_source src = msa_memsource_source(ms);
    msa_kvmem *m;
    OK(msa_kvmem_paged_init(&m, &p, &src));
    int rows = H * p.cfg.head_dim, irows = p.cfg.idx_dim;
    float *k1 = malloc(sizeof(float) * rows), *v1 = malloc(sizeof(float) * rows),
          *ki1 = malloc(sizeof(float) * irows);
    for (int i = 0; i < rows; i++) k1[i] = v1[i] = (float)(rnd() % 1000) * 1e-3f;
    for (int i = 0; i < irows; i++) ki1[i] = (float)(rnd() % 1000) * 1e-3f;
    int n_sel = H * k, warm = 20;
    double t_total = 0;
    msa_paged_kv kv;
    /* prewarm: every stored block passes through the pool once, so that the
     * numbers are of a steady state rather than of first touches */
    int chunk = H * (k - 1);
    int32_t *all = malloc(sizeof(int32_t) * chunk);
    for (int l = 0; l < o->layers; l++)
        for (int b0 = 0; b0 < o->blocks; b0 += chunk) {
            int n = o->blocks - b0 < chunk ? o->blocks - b0 : chunk;
            for (int i = 0; i < n; i++) all[i] = b0 + i;
            OK(m->ops->kv_view(m, l, all, n, &kv));
        }
    free(all);
    for (int step = -warm; step < o->steps; step++) {
        if (step == 0) msa_kvmem_paged_reset_stats(m);
        double t0 = msa_now();
        for (int l = 0; l < o->layers; l++) {
            OK(m->ops->append(m, l, 1, k1, v1, ki1));
            int64_t len = m->ops->length(m, l);
            int32_t local = (int32_t)((len - 1) / 128), nb_old = local; /* blocks before it */
            int32_t *sel = sel_state + (size_t)l * n_sel;
            for (int g = 0; g < H; g++) {
                int32_t *e = sel + g * k;
                e[0] = local;
                /* a few changes per step; the first step of a layer fills all */
                int fill = e[1] < 0, change = fill ? k - 1 : o->changes;
                for (int c = 0; c < change; c++) {
                    int j = fill ? 1 + c : 1 + (int)(rnd() % (k - 1));
                    for (;;) { /* a block not already in this group's set */
                        int32_t b = (int32_t)(rnd() % nb_old), dup = 0;
                        for (int u = 0; u < k; u++) dup |= e[u] == b;
                        if (!dup) {
                            e[j] = b;
                            break;
                        }
                    }
                }
            }
            OK(m->ops->index_view(m, l, &kv));
            OK(m->ops->kv_view(m, l, sel, n_sel, &kv));
        }
#ifdef MSA_HAVE_CUDA
        if (gpu) CU(cudaStreamSynchronize(s));
#endif
        if (step >= 0) t_total += msa_now() - t0;
    }
    msa_pager_stats st;
    msa_kvmem_paged_stats(m, &st);
    r.pool_slots = (int)(gpu ? st.gpu_slots : st.host_slots);
    r.host_slots = (int)st.host_slots;
    r.gpu_hit = st.gpu_lookups ? (double)st.gpu_hits / st.gpu_lookups : 0;
    r.host_hit = st.host_lookups ? (double)st.host_hits / st.host_lookups : 0;
    r.ms_per_step = t_total / o->steps * 1e3;
    r.gbs_store = st.bytes_store_to_host / t_total / 1e9;
    r.gbs_h2d = st.bytes_host_to_gpu / t_total / 1e9;
    r.gpu_misses = st.gpu_misses;
    r.host_misses = st.host_misses;
    r.evictions = gpu ? st.gpu_evictions : st.host_evictions;
    msa_kvmem_paged_free(m);
#ifdef MSA_HAVE_CUDA
    if (s) cudaStreamDestroy(s);
#endif
    free(k1), free(v1), free(ki1);
    return r;
}

int main(int argc, char **argv) {
    opts o = {0, 0, -1, -1, 200, -1, -1, 2};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--cpu")) o.cpu = 1;
        else if (!strcmp(a, "--json")) o.json = 1;
        else if (!strcmp(a, "--layers") && more) o.layers = atoi(argv[++i]);
        else if (!strcmp(a, "--blocks") && more) o.blocks = atoi(argv[++i]);
        else if (!strcmp(a, "--steps") && more) o.steps = atoi(argv[++i]);
        else if (!strcmp(a, "--hkv") && more) o.hkv = atoi(argv[++i]);
        else if (!strcmp(a, "--dim") && more) o.dim = atoi(argv[++i]);
        else if (!strcmp(a, "--changes") && more) o.changes = atoi(argv[++i]);
        else if (!strcmp(a, "--seed") && more) rng = strtoull(argv[++i], NULL, 0) | 1;
        else DIE("usage: bench-pager [--cpu] [--json] [--layers L] [--blocks B] [--steps N] "
                 "[--hkv H] [--dim D] [--changes C] [--seed S]");
    }
    int gpu = !o.cpu && msa_cuda_available();
    /* defaults: a session whose 5% still holds a step's blocks of every
     * layer (L * (Hkv * 15 + 1) slots) */
    if (o.layers < 0) o.layers = gpu ? 4 : 2;
    if (o.blocks < 0) o.blocks = gpu ? 2560 : 1280;
    if (o.hkv < 0) o.hkv = gpu ? 8 : 4;
    if (o.dim < 0) o.dim = gpu ? 128 : 64;
    if (o.layers < 1 || o.blocks < 32 || o.steps < 1 || o.hkv < 1 || o.dim < 1 || o.changes < 0 ||
        o.changes > 15)
        DIE("bench-pager: bad sizes");
    printf("bench-pager: %s, %s blocks of Hkv %d x Bk 128 x d %d, %d layers x %d blocks, "
           "k 16, %d changes per group per step, %d steps\n",
           gpu ? "CUDA pool" : "CPU (host cache is the pool)", gpu ? "bf16" : "fp32", o.hkv,
           o.dim, o.layers, o.blocks, o.changes, o.steps);
    copy_result cr;
    memset(&cr, 0, sizeof cr);
#ifdef MSA_HAVE_CUDA
    if (gpu) {
        cr = bench_copy(&o);
        printf("\nhost-to-device, %d blocks of %zu bytes per step (default method: %s)\n",
               cr.blocks_per_step, cr.block_bytes, msa_gpu_h2d_name(cr.method));
        printf("  %-34s %8.2f GB/s\n", "one pinned copy (peak)", cr.peak_gbs);
        printf("  %-8s %-16s %8s %7s %11s %7s %11s %7s\n", "method", "", "scattered", "%peak",
               "pager seq", "%peak", "pager rand", "%peak");
        for (int m = 0; m < N_H2D; m++)
            printf("  %-25s %8.2f %6.1f%% %11.2f %6.1f%% %11.2f %6.1f%%\n",
                   msa_gpu_h2d_name(m), cr.scattered_gbs[m],
                   100 * cr.scattered_gbs[m] / cr.peak_gbs, cr.pager_seq_gbs[m],
                   100 * cr.pager_seq_gbs[m] / cr.peak_gbs, cr.pager_rand_gbs[m],
                   100 * cr.pager_rand_gbs[m] / cr.peak_gbs);
    }
#endif
    msa_pager_params p = bench_params(&o, gpu);
    msa_memsource *ms = NULL;
    double fracs[3] = {1.0, 0.25, 0.05};
    decode_result dr[3];
    int n_sel = o.hkv * 16;
    int32_t *sel_state = malloc(sizeof(int32_t) * o.layers * n_sel);
    for (int f = 0; f < 3; f++) {
        rng = 12345; /* the same access pattern at every pool size */
        for (int i = 0; i < o.layers * n_sel; i++) sel_state[i] = -1;
        /* a fresh copy of the session: the previous run appended to it */
        msa_memsource_free(ms);
        ms = make_source(&p, o.blocks);
        dr[f] = bench_decode(&o, gpu, fracs[f], ms, sel_state);
    }
    printf("\ndecode pattern, %.1f MB per block\n", msa_pager_block_bytes(&p) / 1e6);
    printf("  %-6s %7s %9s %9s %10s %11s %11s %10s\n", "pool", "slots", "pool hit", "host hit",
           "ms/step", "store GB/s", "h2d GB/s", "evictions");
    for (int f = 0; f < 3; f++)
        printf("  %5.0f%% %7d %8.2f%% %8.2f%% %10.3f %11.2f %11.2f %10llu\n",
               100 * dr[f].pool_frac, dr[f].pool_slots,
               100 * (gpu ? dr[f].gpu_hit : dr[f].host_hit), 100 * dr[f].host_hit,
               dr[f].ms_per_step, dr[f].gbs_store, dr[f].gbs_h2d,
               (unsigned long long)dr[f].evictions);
    if (o.json) {
        printf("{\"device\": \"%s\", \"dtype\": \"%s\", \"hkv\": %d, \"dim\": %d, \"block_size\": 128, "
               "\"top_k\": 16, \"layers\": %d, \"blocks_per_layer\": %d, \"steps\": %d, "
               "\"changes\": %d, \"block_bytes\": %zu,\n",
               gpu ? "cuda" : "cpu", gpu ? "bf16" : "f32", o.hkv, o.dim, o.layers, o.blocks,
               o.steps, o.changes, msa_pager_block_bytes(&p));
        printf(" \"copy\": {\"peak_gbs\": %.3f, \"blocks_per_step\": %d, \"default_method\": "
               "\"%s\", \"methods\": {",
               cr.peak_gbs, cr.blocks_per_step, gpu ? h2d_name(cr.method) : "");
        for (int m = 0; m < N_H2D && gpu; m++)
            printf("%s\"%s\": {\"scattered_gbs\": %.3f, \"pager_seq_gbs\": %.3f, "
                   "\"pager_rand_gbs\": %.3f}",
                   m ? ", " : "", h2d_name(m), cr.scattered_gbs[m], cr.pager_seq_gbs[m],
                   cr.pager_rand_gbs[m]);
        printf("}},\n");
        printf(" \"decode\": [");
        for (int f = 0; f < 3; f++)
            printf("%s\n  {\"pool_fraction\": %.2f, \"pool_slots\": %d, \"pool_hit_rate\": %.5f, "
                   "\"host_hit_rate\": %.5f, \"ms_per_step\": %.4f, \"store_gbs\": %.3f, "
                   "\"h2d_gbs\": %.3f, \"evictions\": %llu}",
                   f ? "," : "", dr[f].pool_frac, dr[f].pool_slots,
                   gpu ? dr[f].gpu_hit : dr[f].host_hit, dr[f].host_hit, dr[f].ms_per_step,
                   dr[f].gbs_store, dr[f].gbs_h2d, (unsigned long long)dr[f].evictions);
        printf("]}\n");
    }
    msa_memsource_free(ms);
    free(sel_state);
    return 0;
}
