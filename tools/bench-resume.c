/*
 * bench-resume.c: what resuming a stored session costs, against its size.
 *
 * A resumed session must be ready to decode after reading what it needs,
 * never after a re-prefill. What it needs is what the session layer reads
 * at open (engine/session/session.c, memory/pager.c load_stored): the session
 * record, all its tokens, the index keys of every block of every layer,
 * and K/V of each layer's partial last block. The KV of full blocks is
 * paged in on demand later and is not read here.
 *
 * For each size the tool writes a session of a Llama-3-8B-like shape (by
 * default 32 layers, 8 KV heads, head dim 128, bf16 K/V, one shared index
 * head of dim 128, blocks of 128) straight through the store API, with
 * KV-like synthetic data as `msa-mem bench store --realistic` makes it
 * (per-channel log-normal scales, 2% outliers, AR(1) along the sequence),
 * syncs and closes the store, drops the page cache (when permitted; else
 * it says the numbers are warm), and times in a fresh handle:
 *
 *   open      msa_store_open + msa_store_session_open + stat
 *   tokens    msa_store_read_tokens of all tokens
 *   index     msa_store_read_index of all blocks, layer by layer (one read
 *             transaction per layer)
 *   tail      msa_store_read_block (K and V) of every layer's last block
 *
 * then, after another drop, the same index keys block by block with
 * msa_store_read_block(k = v = NULL), one read transaction per block,
 * which is how the pager's read_index callback reads them today.
 *
 * Bytes: "logical" counts what the caller receives (tokens, raw index
 * keys, tail K/V rows); "disk" is what the kernel read from the device for
 * this process (/proc/self/io read_bytes, readahead included). Index keys
 * sit inside their block value after K and V, so reading them touches the
 * block's header and its index planes only; LMDB maps the file, so the
 * pages of K and V are not read unless readahead pulls them in.
 *
 * usage: bench-resume [--tokens 32K,128K] [--layers 32] [--dir DIR] [--keep]
 *                     [--tail N] [--threads N]
 * --tail N: the session holds tokens - N tokens, so each layer's last block
 * is partial (default 50). The store lives in DIR (default: a new
 * directory under $TMPDIR or /tmp) and is removed afterwards unless --keep.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/msa.h"
#include "base/base.h"

enum { POOL = 16 };

static uint64_t rs = 88172645463325252ull;
static double urand(void) {
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return (double)(rs >> 11) * (1.0 / 9007199254740992.0);
}
static float nrand(void) {
    double u = urand() + 1e-12, v = urand();
    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

/* one section [heads][bs][dim] of KV-like bf16 (as cli/cmd_bench_store.c) */
static void gen(uint16_t *buf, int heads, int bs, int dim) {
    for (int h = 0; h < heads; h++)
        for (int c = 0; c < dim; c++) {
            float scale = expf(0.5f * nrand()) * (urand() < 0.02 ? 8.f : 1.f);
            float bias = 0.3f * nrand(), x = nrand();
            for (int t = 0; t < bs; t++) {
                x = 0.8f * x + 0.6f * nrand();
                buf[((size_t)h * bs + t) * dim + c] = msa_f32_to_bf16(bias + scale * x);
            }
        }
}

static long long parse_count(const char *s) {
    char *e;
    double v = strtod(s, &e);
    if (*e == 'K' || *e == 'k') v *= 1024;
    else if (*e == 'M' || *e == 'm') v *= 1024 * 1024;
    return (long long)v;
}

/* bytes this process caused to be read from storage */
static long long io_read_bytes(void) {
    FILE *f = fopen("/proc/self/io", "r");
    if (!f) return -1;
    char line[128];
    long long v = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "read_bytes:", 11)) v = atoll(line + 11);
    fclose(f);
    return v;
}

static int drop_caches(void) {
    sync();
    FILE *f = fopen("/proc/sys/vm/drop_caches", "w");
    if (!f) return 0;
    int ok = fputs("3\n", f) >= 0;
    return fclose(f) == 0 && ok;
}

static int fail(int rc, const char *what) {
    fprintf(stderr, "bench-resume: %s: %s\n", what, msa_last_error());
    return rc ? rc : 1;
}

typedef struct shape_cfg {
    int layers, heads, dim, idim, bs, threads;
} shape_cfg;

static int write_session(msa_store *st, const char *name, const shape_cfg *c, long long tokens,
                         double *secs, double *raw, uint64_t *stored) {
    msa_store_shape sh = {c->layers, c->heads, c->dim, 1, c->idim, c->bs, MSA_DTYPE_BF16, MSA_DTYPE_BF16};
    int rc = msa_store_session_create(st, name, "bench-resume-synthetic", &sh);
    if (rc) return fail(rc, "create");
    size_t kb = (size_t)c->heads * c->bs * c->dim * 2, ib = (size_t)c->bs * c->idim * 2, per = 2 * kb + ib;
    uint8_t *pool = malloc((size_t)c->layers * POOL * per);
    long long chunk = 2048;
    int32_t *tok = malloc((size_t)chunk * 4);
    if (!pool || !tok) return fail(MSA_ENOMEM, "pool");
    for (int l = 0; l < c->layers; l++)
        for (int q = 0; q < POOL; q++) {
            uint8_t *b = pool + ((size_t)l * POOL + q) * per;
            gen((uint16_t *)b, c->heads, c->bs, c->dim);
            gen((uint16_t *)(b + kb), c->heads, c->bs, c->dim);
            gen((uint16_t *)(b + 2 * kb), 1, c->bs, c->idim);
        }
    msa_store_session *s;
    if ((rc = msa_store_session_open(st, name, NULL, &s))) return fail(rc, "open for writing");
    double t0 = msa_now();
    long long done = 0;
    *raw = 0;
    while (done < tokens && !rc) {
        long long n = tokens - done < chunk ? tokens - done : chunk;
        for (long long i = 0; i < n; i++) tok[i] = (int32_t)((done + i) * 7919 % 128000);
        msa_store_txn *x;
        rc = msa_store_txn_begin(s, &x);
        if (rc) break;
        rc = msa_store_txn_put_tokens(x, tok, (size_t)n);
        for (int l = 0; l < c->layers && !rc; l++)
            for (long long b = done / c->bs; b * c->bs < done + n && !rc; b++) {
                long long fill = done + n - b * c->bs < c->bs ? done + n - b * c->bs : c->bs;
                uint8_t *src = pool + ((size_t)l * POOL + (size_t)((b * 7 + l) % POOL)) * per;
                rc = msa_store_txn_put_block(x, l, (uint64_t)b, (int)fill, src, src + kb, src + 2 * kb,
                                             "bench-resume");
            }
        if (!rc) rc = msa_store_txn_commit(x);
        else msa_store_txn_abort(x);
        done += n;
        if (done % (64 * 1024) == 0 || done == tokens) {
            fprintf(stderr, "\r  writing: %lld / %lld tokens", done, tokens);
            fflush(stderr);
        }
    }
    fprintf(stderr, "\n");
    if (!rc) rc = msa_store_sync(st);
    *secs = msa_now() - t0;
    msa_store_session_info info;
    if (!rc) rc = msa_store_session_stat(s, &info);
    msa_store_session_close(s);
    free(pool);
    free(tok);
    if (rc) return fail(rc, "write");
    *raw = (double)info.raw_bytes;
    *stored = info.stored_bytes;
    return 0;
}

typedef struct resume_cost {
    double open_ms, tok_ms, idx_ms, tail_ms;
    long long disk_open, disk_tok, disk_idx, disk_tail;
    double logical_tok, logical_idx, logical_tail;
} resume_cost;

/* The resume reads of one session, in a fresh store handle. per_block:
 * index keys one block per call (the pager's way) instead of one call per
 * layer. */
static int resume(const char *dir, const char *name, int per_block, resume_cost *r) {
    memset(r, 0, sizeof *r);
    msa_store_params p = msa_store_default_params();
    p.dir = dir;
    p.create = 0;
    long long io0 = io_read_bytes();
    double t0 = msa_now();
    msa_store *st;
    int rc = msa_store_open(&p, &st);
    if (rc) return fail(rc, "open store");
    msa_store_session *s;
    if ((rc = msa_store_session_open(st, name, "bench-resume-synthetic", &s))) return fail(rc, "open session");
    msa_store_session_info info;
    if ((rc = msa_store_session_stat(s, &info))) return fail(rc, "stat");
    double t1 = msa_now();
    long long io1 = io_read_bytes();
    const msa_store_shape *sh = &info.shape;
    int32_t *tok = malloc(info.n_tokens * 4 + 4);
    if (!tok) return fail(MSA_ENOMEM, "tokens");
    if ((rc = msa_store_read_tokens(s, 0, info.n_tokens, tok))) return fail(rc, "read tokens");
    double t2 = msa_now();
    long long io2 = io_read_bytes();
    uint64_t nb = info.n_blocks;
    size_t ib = (size_t)sh->idx_key_heads * sh->block_size * sh->idx_dim * msa_dtype_size(sh->idx_dtype);
    size_t kb = (size_t)sh->n_kv_heads * sh->block_size * sh->head_dim * msa_dtype_size(sh->kv_dtype);
    uint8_t *idx = malloc(nb * ib), *k = malloc(kb), *v = malloc(kb);
    if (!idx || !k || !v) return fail(MSA_ENOMEM, "index buffer");
    for (int l = 0; l < sh->n_layers && !rc; l++) {
        if (!per_block) rc = msa_store_read_index(s, l, 0, nb, idx);
        else
            for (uint64_t b = 0; b < nb && !rc; b++)
                rc = msa_store_read_block(s, l, b, NULL, NULL, idx + b * ib, NULL);
    }
    if (rc) return fail(rc, "read index keys");
    double t3 = msa_now();
    long long io3 = io_read_bytes();
    uint64_t fill = info.n_tokens - (nb - 1) * (uint64_t)sh->block_size;
    if (fill < (uint64_t)sh->block_size)
        for (int l = 0; l < sh->n_layers && !rc; l++) rc = msa_store_read_block(s, l, nb - 1, k, v, NULL, NULL);
    if (rc) return fail(rc, "read the partial blocks");
    double t4 = msa_now();
    long long io4 = io_read_bytes();
    r->open_ms = (t1 - t0) * 1e3;
    r->tok_ms = (t2 - t1) * 1e3;
    r->idx_ms = (t3 - t2) * 1e3;
    r->tail_ms = (t4 - t3) * 1e3;
    r->disk_open = io1 - io0;
    r->disk_tok = io2 - io1;
    r->disk_idx = io3 - io2;
    r->disk_tail = io4 - io3;
    r->logical_tok = 4.0 * (double)info.n_tokens;
    r->logical_idx = (double)sh->n_layers * (double)info.n_tokens * sh->idx_key_heads * sh->idx_dim *
                     msa_dtype_size(sh->idx_dtype);
    r->logical_tail = fill < (uint64_t)sh->block_size
                          ? (double)sh->n_layers * 2.0 * fill * sh->n_kv_heads * sh->head_dim *
                                msa_dtype_size(sh->kv_dtype)
                          : 0;
    msa_store_session_close(s);
    msa_store_close(st);
    free(tok); free(idx); free(k); free(v);
    return 0;
}

static void print_cost(const char *how, const resume_cost *r, int cold) {
    double ms = r->open_ms + r->tok_ms + r->idx_ms + r->tail_ms;
    double logical = r->logical_tok + r->logical_idx + r->logical_tail;
    long long disk = r->disk_open + r->disk_tok + r->disk_idx + r->disk_tail;
    printf("  %-22s %s: total %9.1f ms  (open %.1f, tokens %.1f, index %.1f, tail %.1f)\n", how,
           cold ? "cold" : "WARM", ms, r->open_ms, r->tok_ms, r->idx_ms, r->tail_ms);
    printf("  %-22s       logical %8.1f MB (%.2f GB/s); disk read %8.1f MB (%.2f GB/s); index %.1f MB "
           "from disk for %.1f MB of keys\n", "", logical / 1e6, logical / ms / 1e6, (double)disk / 1e6,
           (double)disk / ms / 1e6, (double)r->disk_idx / 1e6, r->logical_idx / 1e6);
}

int main(int argc, char **argv) {
    shape_cfg c = {32, 8, 128, 128, 128, 0};
    long long sizes[8] = {32768, 131072};
    int n_sizes = 2, keep = 0, tail = 50;
    const char *dir_arg = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--tokens") && v) {
            n_sizes = 0;
            char *cp = strdup(v), *save = NULL;
            for (char *t = strtok_r(cp, ",", &save); t && n_sizes < 8; t = strtok_r(NULL, ",", &save))
                sizes[n_sizes++] = parse_count(t);
            free(cp);
            i++;
        } else if (!strcmp(a, "--layers") && v) { c.layers = atoi(v); i++; }
        else if (!strcmp(a, "--kv-heads") && v) { c.heads = atoi(v); i++; }
        else if (!strcmp(a, "--head-dim") && v) { c.dim = atoi(v); i++; }
        else if (!strcmp(a, "--index-dim") && v) { c.idim = atoi(v); i++; }
        else if (!strcmp(a, "--block") && v) { c.bs = atoi(v); i++; }
        else if (!strcmp(a, "--threads") && v) { c.threads = atoi(v); i++; }
        else if (!strcmp(a, "--tail") && v) { tail = atoi(v); i++; }
        else if (!strcmp(a, "--dir") && v) { dir_arg = v; i++; }
        else if (!strcmp(a, "--keep")) keep = 1;
        else {
            fprintf(stderr, "usage: bench-resume [--tokens 32K,128K,1M] [--layers 32] [--kv-heads 8] "
                            "[--head-dim 128]\n       [--index-dim 128] [--block 128] [--tail 50] "
                            "[--threads N] [--dir DIR] [--keep]\n");
            return 2;
        }
    }
    printf("bench-resume: %d layers, %d KV heads x %d, index 1 x %d, bf16, blocks of %d; KV-like synthetic data\n",
           c.layers, c.heads, c.dim, c.idim, c.bs);
    for (int si = 0; si < n_sizes; si++) {
        long long tokens = sizes[si] - tail;
        char dir[512];
        if (dir_arg) snprintf(dir, sizeof dir, "%s/resume-%lld", dir_arg, sizes[si]);
        else {
            snprintf(dir, sizeof dir, "%s/msa-resume-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
            if (!mkdtemp(dir)) return fail(MSA_EIO, "temporary directory");
        }
        msa_store_params p = msa_store_default_params();
        p.dir = dir;
        p.durable = 0; /* one msa_store_sync at the end */
        p.map_size = (size_t)1 << 34;
        msa_store *st;
        int rc = msa_store_open(&p, &st);
        if (rc) return fail(rc, "open store for writing");
        msa_store_set_threads(st, c.threads);
        double wsec, raw;
        uint64_t stored;
        if ((rc = write_session(st, "resume", &c, tokens, &wsec, &raw, &stored))) return rc;
        msa_store_close(st);
        printf("%lld tokens: written in %.1f s (%.2f GB raw, %.2f GB stored, %.2f GB/s raw)\n", tokens, wsec,
               raw / 1e9, (double)stored / 1e9, raw / wsec / 1e9);
        resume_cost r;
        int cold = drop_caches();
        if ((rc = resume(dir, "resume", 0, &r))) return rc;
        print_cost("read_index per layer", &r, cold);
        cold = drop_caches();
        if ((rc = resume(dir, "resume", 1, &r))) return rc;
        print_cost("read_block per block", &r, cold);
        if ((rc = resume(dir, "resume", 1, &r))) return rc;
        print_cost("read_block, again", &r, 0);
        fflush(stdout);
        if (!keep) {
            char cmd[600];
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
            if (system(cmd)) {}
        }
    }
    return 0;
}
