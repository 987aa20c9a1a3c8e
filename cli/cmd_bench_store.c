/*
 * cmd_bench_store.c: `msa-mem bench store`, the store's write and read
 * throughput on synthetic KV.
 *
 * Data. Uniform random bits are not KV: they do not compress and say
 * nothing. By default the bench writes Gaussian values (N(0,1) in bf16),
 * which is close to the worst case for the codec; with --realistic it
 * writes KV-like data: per (layer, head, channel) a log-normal scale
 * (sigma 0.5) and a bias, 2% of channels outliers (x8), and values that
 * vary smoothly along the sequence (AR(1), rho 0.8). Real KV from a model
 * is measured by the engine's own benchmarks.
 *
 * A pool of 16 blocks per layer is generated up front, so generation is
 * not timed. Write = compress (put_block) + commit, one transaction per
 * chunk of tokens (all layers); read = read + verify + decompress every
 * block. Both run on one thread unless --threads N compresses on N
 * threads, so GB/s is per core by default. GB is 1e9 bytes of raw K, V
 * and index keys.
 */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

enum { POOL = 16 };

/* CPU seconds of the whole process (all threads): on a shared machine
 * wall time includes waiting for a core; this does not (nor fsync waits). */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rs = 88172645463325252ull;
static double urand(void) {
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return (double)(rs >> 11) * (1.0 / 9007199254740992.0);
}
static float nrand(void) {
    double u = urand() + 1e-12, v = urand();
    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

static void store_val(void *buf, size_t i, msa_dtype dt, float x) {
    msa_dtype_convert((char *)buf + i * msa_dtype_size(dt), dt, &x, MSA_DTYPE_F32, 1);
}

/* one section [heads][bs][dim] */
static void gen(void *buf, int heads, int bs, int dim, msa_dtype dt, int realistic) {
    for (int h = 0; h < heads; h++)
        for (int c = 0; c < dim; c++) {
            float scale = realistic ? expf(0.5f * nrand()) * (urand() < 0.02 ? 8.f : 1.f) : 1.f;
            float bias = realistic ? 0.3f * nrand() : 0.f, x = nrand();
            for (int t = 0; t < bs; t++) {
                x = realistic ? 0.8f * x + 0.6f * nrand() : nrand();
                store_val(buf, ((size_t)h * bs + t) * dim + c, dt, bias + scale * x);
            }
        }
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int msa_cmd_bench(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv) || argc < 2 || strcmp(argv[1], "store")) {
        if (!msa_cli_wants_help(argc, argv))
            return msa_cli_usage_error("bench", "only `bench store` is available here");
        printf("usage: msa-mem bench store [--tokens N] [--layers L] [--kv-heads H] [--head-dim D]\n"
               "         [--dtype bf16|f16|f32] [--realistic] [--chunk N] [--block N] [--index-dim D]\n"
               "         [--level N] [--lossy] [--no-sync] [--threads N] [--keep]\n\n"
               "Writes a synthetic session into the store (a temporary one unless --store\n"
               "is given) and reports write (compress + commit) and read (read + verify +\n"
               "decompress) throughput in GB/s of raw KV (per core with --threads 1, the\n"
               "default; --threads N compresses on N threads), the compression ratio,\n"
               "commit latency (median, p99) and bytes on disk per token. Data: Gaussian\n"
               "bf16 by default, KV-like (scaled channels, outliers, smooth in time) with\n"
               "--realistic. Defaults: 64K tokens, 32 layers, 8 KV heads, head dim 128,\n"
               "bf16, blocks of 128, index dim 128, chunks of 2048 tokens, zstd level 1.\n\n"
               "Examples:\n  msa-mem bench store --tokens 1M --layers 32 --kv-heads 8 --head-dim 128 --realistic\n"
               "  msa-mem bench store --tokens 32K --json\n");
        return 0;
    }
    long long tokens = 65536, chunk = 2048;
    int layers = 32, heads = 8, dim = 128, bs = 128, idim = 128, level = 1, realistic = 0, lossy = 0,
        nosync = 0, keep = 0, threads = 1;
    msa_dtype dt = MSA_DTYPE_BF16;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long x;
#define NUM(name, var)                                                                         \
    if (!strcmp(a, name)) {                                                                    \
        if (!v || (x = msa_cli_parse_count(v, 1)) <= 0)                                        \
            return msa_cli_usage_error("bench", "%s needs a positive count", name);            \
        var = x;                                                                               \
        i++;                                                                                   \
        continue;                                                                              \
    }
        NUM("--tokens", tokens) NUM("--layers", layers) NUM("--kv-heads", heads) NUM("--head-dim", dim)
        NUM("--chunk", chunk) NUM("--block", bs) NUM("--index-dim", idim) NUM("--threads", threads)
#undef NUM
        if (!strcmp(a, "--level") && v) { level = atoi(v); i++; continue; }
        if (!strcmp(a, "--dtype") && v) {
            if (!strcmp(v, "bf16")) dt = MSA_DTYPE_BF16;
            else if (!strcmp(v, "f16") || !strcmp(v, "fp16")) dt = MSA_DTYPE_F16;
            else if (!strcmp(v, "f32") || !strcmp(v, "fp32")) dt = MSA_DTYPE_F32;
            else return msa_cli_usage_error("bench", "unknown dtype '%s'", v);
            i++;
            continue;
        }
        if (!strcmp(a, "--realistic")) { realistic = 1; continue; }
        if (!strcmp(a, "--lossy")) { lossy = 1; continue; }
        if (!strcmp(a, "--no-sync")) { nosync = 1; continue; }
        if (!strcmp(a, "--keep")) { keep = 1; continue; }
        return msa_cli_usage_error("bench", "unknown option '%s'", a);
    }
    if (chunk % bs) chunk = (chunk / bs + 1) * bs;
    char tmp[256] = "";
    msa_store_params p = msa_store_default_params();
    p.dir = cli->store_dir;
    if (!p.dir) {
        snprintf(tmp, sizeof tmp, "%s/msa-bench-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        if (!mkdtemp(tmp)) return msa_cli_fail(MSA_EIO, "creating a temporary store");
        p.dir = tmp;
    }
    p.level = level;
    p.lossy = lossy ? MSA_STORE_LOSSY_FP8 : MSA_STORE_LOSSLESS;
    p.durable = !nosync;
    msa_store *st;
    int rc = msa_store_open(&p, &st);
    if (rc) return msa_cli_fail(rc, "opening the store");
    msa_store_set_threads(st, threads);
    char name[64];
    snprintf(name, sizeof name, "bench-%d", (int)getpid());
    msa_store_shape sh = {layers, heads, dim, 1, idim, bs, dt, dt};
    if ((rc = msa_store_session_create(st, name, "bench-synthetic", &sh))) {
        msa_store_close(st);
        return msa_cli_fail(rc, "bench");
    }
    size_t es = msa_dtype_size(dt), kb = (size_t)heads * bs * dim * es, ib = (size_t)bs * idim * es;
    uint8_t *pool = malloc((size_t)layers * POOL * (2 * kb + ib));
    uint8_t *rk = malloc(kb), *rv = malloc(kb), *ri = malloc(ib);
    long long n_chunks = (tokens + chunk - 1) / chunk;
    double *lat = malloc((size_t)n_chunks * sizeof *lat);
    int32_t *tok = malloc((size_t)chunk * 4);
    if (!pool || !rk || !rv || !ri || !lat || !tok) return msa_cli_fail(MSA_ENOMEM, "bench");
    for (int l = 0; l < layers; l++)
        for (int q = 0; q < POOL; q++) {
            uint8_t *b = pool + ((size_t)l * POOL + q) * (2 * kb + ib);
            gen(b, heads, bs, dim, dt, realistic);
            gen(b + kb, heads, bs, dim, dt, realistic);
            gen(b + 2 * kb, 1, bs, idim, dt, realistic);
        }
    for (long long i = 0; i < chunk; i++) tok[i] = (int32_t)(i * 7919 % 32000);
    msa_store_session *s;
    msa_store_session_open(st, name, NULL, &s);
    msa_progress pr;
    msa_progress_begin(&pr, cli, "write", (double)tokens, "tokens");
    double t_put = 0, t_commit = 0, raw = 0, stored = 0, c_put = 0, c_commit = 0;
    long long done = 0;
    for (long long c = 0; c < n_chunks && !rc; c++) {
        long long n = tokens - done < chunk ? tokens - done : chunk;
        msa_store_txn *x;
        double c0 = cpu_now(), t0 = msa_cli_now();
        rc = msa_store_txn_begin(s, &x);
        if (!rc) rc = msa_store_txn_put_tokens(x, tok, (size_t)n);
        for (int l = 0; l < layers && !rc; l++)
            for (long long b = done / bs; b * bs < done + n && !rc; b++) {
                long long fill = done + n - b * bs < bs ? done + n - b * bs : bs;
                uint8_t *src = pool + ((size_t)l * POOL + (size_t)((b * 7 + l) % POOL)) * (2 * kb + ib);
                rc = msa_store_txn_put_block(x, l, (uint64_t)b, (int)fill, src, src + kb, src + 2 * kb, "bench");
            }
        msa_store_txn_stats ts;
        if (!rc) msa_store_txn_stats_get(x, &ts);
        double t1 = msa_cli_now(), c1 = cpu_now();
        if (!rc) rc = msa_store_txn_commit(x);
        else msa_store_txn_abort(x);
        double t2 = msa_cli_now(), c2 = cpu_now();
        if (rc) break;
        raw += (double)ts.raw_bytes;
        stored += (double)ts.stored_bytes;
        t_put += t1 - t0;
        t_commit += t2 - t1;
        c_put += c1 - c0;
        c_commit += c2 - c1;
        lat[c] = t2 - t1;
        done += n;
        msa_progress_update(&pr, (double)done);
    }
    msa_progress_end(&pr);
    if (rc) {
        msa_store_session_close(s);
        msa_store_close(st);
        return msa_cli_fail(rc, "bench write");
    }
    /* read back every block of every layer */
    uint64_t nb = ((uint64_t)tokens + bs - 1) / bs;
    msa_progress_begin(&pr, cli, "read ", (double)nb * layers, "blocks");
    double t0 = msa_cli_now(), rraw = 0;
    for (int l = 0; l < layers && !rc; l++) {
        for (uint64_t b = 0; b < nb && !rc; b++) {
            msa_store_block_info bi;
            rc = msa_store_read_block(s, l, b, rk, rv, ri, &bi);
            rraw += (double)bi.n_tokens * (2.0 * heads * dim + idim) * es;
        }
        msa_progress_update(&pr, (double)(l + 1) * nb);
    }
    double t_read = msa_cli_now() - t0;
    msa_progress_end(&pr);
    if (rc) {
        msa_store_session_close(s);
        msa_store_close(st);
        return msa_cli_fail(rc, "bench read");
    }
    msa_store_session_info info;
    msa_store_session_stat(s, &info);
    msa_store_session_close(s);
    qsort(lat, (size_t)n_chunks, sizeof *lat, cmp_d);
    /* nearest-rank percentiles: the p99 is never below the median */
    double med = lat[(n_chunks - 1) / 2], p99 = lat[(size_t)ceil(0.99 * (double)n_chunks) - 1];
    double w_gbs = raw / (t_put + t_commit) / 1e9, c_gbs = raw / t_put / 1e9, r_gbs = rraw / t_read / 1e9;
    /* per CPU second: raw bytes over the CPU time the write used */
    double w_cpu = raw / (c_put + c_commit) / 1e9, commit_cpu = raw / c_commit / 1e9;
    double per_tok = (double)info.stored_bytes / (double)tokens, raw_tok = raw / (double)tokens;
    const char *data = realistic ? "KV-like synthetic (log-normal channel scales, 2% outliers x8, AR(1) rho 0.8)"
                                 : "Gaussian N(0,1)";
    if (cli->json) {
        json_t *j = json_pack("{s:I, s:i, s:i, s:i, s:i, s:s, s:s, s:b, s:b, s:i, s:I,"
                              " s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f}",
                              "tokens", (json_int_t)tokens, "layers", layers, "kv_heads", heads, "head_dim", dim,
                              "block_size", bs, "dtype", msa_dtype_name(dt), "data", data, "lossy", lossy,
                              "durable", !nosync, "level", level, "chunk_tokens", (json_int_t)chunk,
                              "threads", threads,
                              "write_gbps_per_core", w_gbs, "compress_gbps_per_core", c_gbs,
                              "read_gbps_per_core", r_gbs, "ratio", info.ratio, "commit_ms_median", med * 1e3,
                              "commit_ms_p99", p99 * 1e3, "bytes_on_disk_per_token", per_tok,
                              "raw_bytes_per_token", raw_tok, "raw_gb", raw / 1e9,
                              "write_gb_per_cpu_s", w_cpu, "commit_gb_per_cpu_s", commit_cpu,
                              "commit_cpu_share", c_commit / (t_commit > 0 ? t_commit : 1));
        char *sj = json_dumps(j, JSON_INDENT(2));
        puts(sj);
        free(sj);
        json_decref(j);
    } else {
        printf("store bench: %lld tokens, %d layers, %d KV heads x %d, index 1 x %d, %s, blocks of %d\n",
               tokens, layers, heads, dim, idim, msa_dtype_name(dt), bs);
        printf("data: %s; codec %s, zstd level %d; %s commits of %lld tokens; %d compression thread%s\n",
               data, lossy ? "fp8 e4m3 (lossy)" : "lossless", level, nosync ? "unsynced" : "durable", chunk,
               threads, threads == 1 ? "" : "s");
        printf("write  %.2f GB/s%s (compress %.2f GB/s, commit %.1f%% of the time), %.2f GB raw\n", w_gbs,
               threads == 1 ? " per core" : "", c_gbs, 100 * t_commit / (t_put + t_commit), raw / 1e9);
        printf("       %.2f GB per CPU second (commit alone %.2f GB per CPU second, %.0f%% of its wall time on CPU)\n",
               w_cpu, commit_cpu, 100 * c_commit / (t_commit > 0 ? t_commit : 1));
        printf("read   %.2f GB/s per core (read + verify + decompress)\n", r_gbs);
        printf("ratio  %.3fx; %.0f bytes on disk per token (%.0f raw)\n", info.ratio, per_tok, raw_tok);
        printf("commit median %.2f ms, p99 %.2f ms\n", med * 1e3, p99 * 1e3);
    }
    if (!keep) msa_store_remove(st, name);
    msa_store_close(st);
    if (*tmp && !keep) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
        if (system(cmd)) {}
    }
    free(pool); free(rk); free(rv); free(ri); free(lat); free(tok);
    (void)stored;
    return 0;
}
