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
 * block, once as the write left it (blocks in segment files are written
 * with O_DIRECT, so this pass reads them from the disk) and once more
 * (from the page cache). Both run on one thread unless --threads N
 * compresses on N threads, so GB/s is per core by default. GB is 1e9
 * bytes of raw K, V and index keys. --baseline first runs the same bench
 * with every block kept in LMDB (segment_min SIZE_MAX, the store before
 * segment files) and prints the ratios of the two runs.
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

typedef struct bench_cfg {
    long long tokens, chunk;
    int layers, heads, dim, bs, idim, level, realistic, lossy, nosync, keep, threads;
    msa_dtype dt;
} bench_cfg;

typedef struct bench_res {
    double w_gbs, c_gbs, r_gbs, r2_gbs, w_cpu, commit_cpu, commit_share, med, p99, per_tok, raw_tok, raw,
        ratio;
} bench_res;

/* The pool of blocks the writes take from (generation is not timed). */
static uint8_t *make_pool(const bench_cfg *c, size_t kb, size_t ib) {
    uint8_t *pool = malloc((size_t)c->layers * POOL * (2 * kb + ib));
    if (!pool) return NULL;
    for (int l = 0; l < c->layers; l++)
        for (int q = 0; q < POOL; q++) {
            uint8_t *b = pool + ((size_t)l * POOL + q) * (2 * kb + ib);
            gen(b, c->heads, c->bs, c->dim, c->dt, c->realistic);
            gen(b + kb, c->heads, c->bs, c->dim, c->dt, c->realistic);
            gen(b + 2 * kb, 1, c->bs, c->idim, c->dt, c->realistic);
        }
    return pool;
}

/* Reads every block of every layer: raw bytes read over the seconds. */
static int read_pass(msa_cli *cli, msa_store_session *s, const bench_cfg *c, const char *what, uint8_t *rk,
                     uint8_t *rv, uint8_t *ri, double *gbs) {
    uint64_t nb = ((uint64_t)c->tokens + c->bs - 1) / c->bs;
    size_t es = msa_dtype_size(c->dt);
    msa_progress pr;
    msa_progress_begin(&pr, cli, what, (double)nb * c->layers, "blocks");
    double t0 = msa_cli_now(), rraw = 0;
    int rc = MSA_OK;
    for (int l = 0; l < c->layers && !rc; l++) {
        for (uint64_t b = 0; b < nb && !rc; b++) {
            msa_store_block_info bi;
            rc = msa_store_read_block(s, l, b, rk, rv, ri, &bi);
            rraw += (double)bi.n_tokens * (2.0 * c->heads * c->dim + c->idim) * es;
        }
        msa_progress_update(&pr, (double)(l + 1) * nb);
    }
    double t = msa_cli_now() - t0;
    msa_progress_end(&pr);
    *gbs = rraw / t / 1e9;
    return rc;
}

/* One bench in the store at dir (segment_min as msa_store_params has it). */
static int bench_run(msa_cli *cli, const bench_cfg *c, const char *dir, size_t segment_min, const uint8_t *pool,
                     bench_res *out) {
    msa_store_params p = msa_store_default_params();
    p.dir = dir;
    p.level = c->level;
    p.lossy = c->lossy ? MSA_STORE_LOSSY_FP8 : MSA_STORE_LOSSLESS;
    p.durable = !c->nosync;
    p.segment_min = segment_min;
    msa_store *st;
    int rc = msa_store_open(&p, &st);
    if (rc) return msa_cli_fail(rc, "opening the store");
    msa_store_set_threads(st, c->threads);
    char name[64];
    snprintf(name, sizeof name, "bench-%d-%s", (int)getpid(), segment_min == SIZE_MAX ? "lmdb" : "seg");
    msa_store_shape sh = {c->layers, c->heads, c->dim, 1, c->idim, c->bs, c->dt, c->dt};
    if ((rc = msa_store_session_create(st, name, "bench-synthetic", &sh))) {
        msa_store_close(st);
        return msa_cli_fail(rc, "bench");
    }
    int bs = c->bs;
    size_t es = msa_dtype_size(c->dt), kb = (size_t)c->heads * bs * c->dim * es, ib = (size_t)bs * c->idim * es;
    uint8_t *rk = malloc(kb), *rv = malloc(kb), *ri = malloc(ib);
    long long n_chunks = (c->tokens + c->chunk - 1) / c->chunk;
    double *lat = malloc((size_t)n_chunks * sizeof *lat);
    int32_t *tok = malloc((size_t)c->chunk * 4);
    msa_store_session *s = NULL;
    if (!rk || !rv || !ri || !lat || !tok) rc = MSA_ENOMEM;
    else rc = msa_store_session_open(st, name, NULL, &s);
    for (long long i = 0; !rc && i < c->chunk; i++) tok[i] = (int32_t)(i * 7919 % 32000);
    msa_progress pr;
    msa_progress_begin(&pr, cli, "write", (double)c->tokens, "tokens");
    double t_put = 0, t_commit = 0, raw = 0, c_put = 0, c_commit = 0;
    long long done = 0;
    for (long long ch = 0; ch < n_chunks && !rc; ch++) {
        long long n = c->tokens - done < c->chunk ? c->tokens - done : c->chunk;
        msa_store_txn *x;
        double c0 = cpu_now(), t0 = msa_cli_now();
        rc = msa_store_txn_begin(s, &x);
        if (rc) break;
        rc = msa_store_txn_put_tokens(x, tok, (size_t)n);
        for (int l = 0; l < c->layers && !rc; l++)
            for (long long b = done / bs; b * bs < done + n && !rc; b++) {
                long long fill = done + n - b * bs < bs ? done + n - b * bs : bs;
                const uint8_t *src = pool + ((size_t)l * POOL + (size_t)((b * 7 + l) % POOL)) * (2 * kb + ib);
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
        t_put += t1 - t0;
        t_commit += t2 - t1;
        c_put += c1 - c0;
        c_commit += c2 - c1;
        lat[ch] = t2 - t1;
        done += n;
        msa_progress_update(&pr, (double)done);
    }
    msa_progress_end(&pr);
    if (rc) rc = msa_cli_fail(rc, "bench write");
    if (!rc && (rc = read_pass(cli, s, c, "read ", rk, rv, ri, &out->r_gbs))) rc = msa_cli_fail(rc, "bench read");
    if (!rc && (rc = read_pass(cli, s, c, "read again", rk, rv, ri, &out->r2_gbs))) rc = msa_cli_fail(rc, "bench read");
    if (!rc) {
        msa_store_session_info info;
        msa_store_session_stat(s, &info);
        qsort(lat, (size_t)n_chunks, sizeof *lat, cmp_d);
        /* nearest-rank percentiles: the p99 is never below the median */
        out->med = lat[(n_chunks - 1) / 2];
        out->p99 = lat[(size_t)ceil(0.99 * (double)n_chunks) - 1];
        out->w_gbs = raw / (t_put + t_commit) / 1e9;
        out->c_gbs = raw / t_put / 1e9;
        /* per CPU second: raw bytes over the CPU time the write used */
        out->w_cpu = raw / (c_put + c_commit) / 1e9;
        out->commit_cpu = raw / c_commit / 1e9;
        out->commit_share = t_commit / (t_put + t_commit);
        out->per_tok = (double)info.stored_bytes / (double)c->tokens;
        out->raw_tok = raw / (double)c->tokens;
        out->raw = raw;
        out->ratio = info.ratio;
    }
    msa_store_session_close(s);
    if (!c->keep) msa_store_remove(st, name);
    msa_store_close(st);
    free(rk); free(rv); free(ri); free(lat); free(tok);
    return rc;
}

static json_t *res_json(const bench_res *r) {
    return json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "write_gbps_per_core",
                     r->w_gbs, "compress_gbps_per_core", r->c_gbs, "read_gbps_per_core", r->r_gbs,
                     "read_again_gbps_per_core", r->r2_gbs, "ratio", r->ratio, "commit_ms_median", r->med * 1e3,
                     "commit_ms_p99", r->p99 * 1e3, "bytes_on_disk_per_token", r->per_tok, "raw_bytes_per_token",
                     r->raw_tok, "raw_gb", r->raw / 1e9, "write_gb_per_cpu_s", r->w_cpu, "commit_gb_per_cpu_s",
                     r->commit_cpu);
}

static void res_print(const char *title, const bench_res *r, int threads) {
    printf("%s\n", title);
    printf("  write  %.2f GB/s%s (compress %.2f GB/s, commit %.1f%% of the time), %.2f GB raw\n", r->w_gbs,
           threads == 1 ? " per core" : "", r->c_gbs, 100 * r->commit_share, r->raw / 1e9);
    printf("         %.2f GB per CPU second (commit alone %.2f GB per CPU second)\n", r->w_cpu, r->commit_cpu);
    printf("  read   %.2f GB/s per core as written, %.2f again (read + verify + decompress)\n", r->r_gbs, r->r2_gbs);
    printf("  ratio  %.3fx; %.0f bytes on disk per token (%.0f raw)\n", r->ratio, r->per_tok, r->raw_tok);
    printf("  commit median %.2f ms, p99 %.2f ms\n", r->med * 1e3, r->p99 * 1e3);
}

int msa_cmd_bench(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv) || argc < 2 || strcmp(argv[1], "store")) {
        if (!msa_cli_wants_help(argc, argv))
            return msa_cli_usage_error("bench", "only `bench store` is available here");
        printf("usage: msa-mem bench store [--tokens N] [--layers L] [--kv-heads H] [--head-dim D]\n"
               "         [--dtype bf16|f16|f32] [--realistic] [--chunk N] [--block N] [--index-dim D]\n"
               "         [--level N] [--lossy] [--no-sync] [--threads N] [--in-lmdb | --baseline] [--keep]\n\n"
               "Writes a synthetic session into the store (a temporary one unless --store\n"
               "is given) and reports write (compress + commit) and read (read + verify +\n"
               "decompress) throughput in GB/s of raw KV (per core with --threads 1, the\n"
               "default; --threads N compresses on N threads), the compression ratio,\n"
               "commit latency (median, p99) and bytes on disk per token. Reads run\n"
               "twice: as the write left the data (full blocks are written past the page\n"
               "cache, so from the disk) and again (page cache). Data: Gaussian bf16 by\n"
               "default, KV-like (scaled channels, outliers, smooth in time) with\n"
               "--realistic. Defaults: 64K tokens, 32 layers, 8 KV heads, head dim 128,\n"
               "bf16, blocks of 128, index dim 128, chunks of 2048 tokens, zstd level 1.\n"
               "--in-lmdb keeps every block in LMDB instead of segment files; --baseline\n"
               "runs that first, then the default, and prints the ratios.\n\n"
               "Examples:\n  msa-mem bench store --tokens 1M --layers 32 --kv-heads 8 --head-dim 128 --realistic\n"
               "  msa-mem bench store --tokens 32K --realistic --baseline --json\n");
        return 0;
    }
    bench_cfg c = {65536, 2048, 32, 8, 128, 128, 128, 1, 0, 0, 0, 0, 1, MSA_DTYPE_BF16};
    int in_lmdb = 0, baseline = 0;
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
        NUM("--tokens", c.tokens) NUM("--layers", c.layers) NUM("--kv-heads", c.heads) NUM("--head-dim", c.dim)
        NUM("--chunk", c.chunk) NUM("--block", c.bs) NUM("--index-dim", c.idim) NUM("--threads", c.threads)
#undef NUM
        if (!strcmp(a, "--level") && v) { c.level = atoi(v); i++; continue; }
        if (!strcmp(a, "--dtype") && v) {
            if (!strcmp(v, "bf16")) c.dt = MSA_DTYPE_BF16;
            else if (!strcmp(v, "f16") || !strcmp(v, "fp16")) c.dt = MSA_DTYPE_F16;
            else if (!strcmp(v, "f32") || !strcmp(v, "fp32")) c.dt = MSA_DTYPE_F32;
            else return msa_cli_usage_error("bench", "unknown dtype '%s'", v);
            i++;
            continue;
        }
        if (!strcmp(a, "--realistic")) { c.realistic = 1; continue; }
        if (!strcmp(a, "--lossy")) { c.lossy = 1; continue; }
        if (!strcmp(a, "--no-sync")) { c.nosync = 1; continue; }
        if (!strcmp(a, "--keep")) { c.keep = 1; continue; }
        if (!strcmp(a, "--in-lmdb")) { in_lmdb = 1; continue; }
        if (!strcmp(a, "--baseline")) { baseline = 1; continue; }
        return msa_cli_usage_error("bench", "unknown option '%s'", a);
    }
    if (in_lmdb && baseline) return msa_cli_usage_error("bench", "--in-lmdb and --baseline exclude each other");
    if (c.chunk % c.bs) c.chunk = (c.chunk / c.bs + 1) * c.bs;
    char tmp[256] = "";
    const char *dir = cli->store_dir;
    if (!dir) {
        snprintf(tmp, sizeof tmp, "%s/msa-bench-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        if (!mkdtemp(tmp)) return msa_cli_fail(MSA_EIO, "creating a temporary store");
        dir = tmp;
    }
    size_t es = msa_dtype_size(c.dt), kb = (size_t)c.heads * c.bs * c.dim * es, ib = (size_t)c.bs * c.idim * es;
    uint8_t *pool = make_pool(&c, kb, ib);
    int rc = pool ? MSA_OK : msa_cli_fail(MSA_ENOMEM, "bench");
    bench_res base = {0}, r = {0};
    if (!rc && baseline) rc = bench_run(cli, &c, dir, SIZE_MAX, pool, &base);
    if (!rc) rc = bench_run(cli, &c, dir, in_lmdb ? SIZE_MAX : 0, pool, &r);
    const char *data = c.realistic ? "KV-like synthetic (log-normal channel scales, 2% outliers x8, AR(1) rho 0.8)"
                                   : "Gaussian N(0,1)";
    const char *where = in_lmdb ? "every block in LMDB" : "full blocks in segment files";
    if (!rc && cli->json) {
        json_t *j = json_pack("{s:I, s:i, s:i, s:i, s:i, s:s, s:s, s:b, s:b, s:i, s:I, s:i, s:s}", "tokens",
                              (json_int_t)c.tokens, "layers", c.layers, "kv_heads", c.heads, "head_dim", c.dim,
                              "block_size", c.bs, "dtype", msa_dtype_name(c.dt), "data", data, "lossy", c.lossy,
                              "durable", !c.nosync, "level", c.level, "chunk_tokens", (json_int_t)c.chunk,
                              "threads", c.threads, "blocks", where);
        json_t *rj = res_json(&r);
        json_object_update(j, rj);
        json_decref(rj);
        if (baseline) {
            json_object_set_new(j, "baseline_in_lmdb", res_json(&base));
            json_object_set_new(j, "write_ratio", json_real(r.w_gbs / base.w_gbs));
            json_object_set_new(j, "write_cpu_ratio", json_real(r.w_cpu / base.w_cpu));
            json_object_set_new(j, "read_again_ratio", json_real(r.r2_gbs / base.r2_gbs));
            json_object_set_new(j, "commit_p99_ratio", json_real(r.p99 / base.p99));
        }
        char *sj = json_dumps(j, JSON_INDENT(2));
        puts(sj);
        free(sj);
        json_decref(j);
    } else if (!rc) {
        printf("store bench: %lld tokens, %d layers, %d KV heads x %d, index 1 x %d, %s, blocks of %d\n", c.tokens,
               c.layers, c.heads, c.dim, c.idim, msa_dtype_name(c.dt), c.bs);
        printf("data: %s; codec %s, zstd level %d; %s commits of %lld tokens; %d compression thread%s\n", data,
               c.lossy ? "fp8 e4m3 (lossy)" : "lossless", c.level, c.nosync ? "unsynced" : "durable", c.chunk,
               c.threads, c.threads == 1 ? "" : "s");
        if (baseline) res_print("baseline: every block in LMDB", &base, c.threads);
        res_print(where, &r, c.threads);
        if (baseline)
            printf("ratios (segment files / LMDB): write %.2fx, write per CPU second %.2fx, read again %.2fx, "
                   "commit p99 %.2fx\n", r.w_gbs / base.w_gbs, r.w_cpu / base.w_cpu, r.r2_gbs / base.r2_gbs,
                   r.p99 / base.p99);
    }
    if (*tmp && !c.keep) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
        if (system(cmd)) {}
    }
    free(pool);
    return rc;
}
