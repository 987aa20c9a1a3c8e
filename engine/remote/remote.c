/*
 * remote.c: the remote tier of msa.h section 6: push, pull, compare, list,
 * remove and gc of sessions on an S3-compatible object store (s3.c).
 *
 * It sits on the store's public API (msa_store_session_*, read_tokens,
 * read_block, txn_*) and on the block codec of persist/ for the bytes of
 * block objects. Layout under the remote's prefix:
 *
 *   objects/<sha256 of the object's bytes>
 *       "MSR1" u32 magic, u32 kind (1 KV block, 2 tokens), u32 count
 *       (the block's filled rows, or the number of tokens), u32 0, then
 *       the payload: a block value exactly as the store's codec writes it
 *       (persist/internal.h "MSB1", lossless, with its own CRC32Cs), or
 *       count little-endian int32 tokens.
 *   sessions/<escaped name>.json
 *       the manifest (JSON, keys sorted, compact), with its SHA-256 in the
 *       object's x-amz-meta-sha256 so a changed manifest is refused:
 *       {"format": "msa-mem-remote", "version": 1, "name", "fingerprint",
 *        "shape": {...}, "tokens": N, "generation": G, "pushed_by",
 *        "pushed_at", "token_chunks": [[hash, n], ...],
 *        "layers": [[[hash, n_tokens, tag, bytes], ...], ...]}
 *
 * Names are escaped so that keys hold only A-Z a-z 0-9 - _ . and ~: any
 * other byte (and a leading '.') becomes "~XX".
 *
 * A push reuses the remote's entries for what the local session shares
 * with it (the full blocks and token chunks of the remote's prefix: equal
 * tokens, same session) and uploads the rest: the remote's partial last
 * block and everything after it. A pull fetches the blocks from the local
 * session's last (partial) block on. Work is spread over n_threads workers
 * (pool_run: the tier's own kept threads), each with its own curl handle
 * and store session handle.
 */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/msa.h"
#include "engine/pull/sha256.h"
#include "engine/remote/s3.h"
#include "persist/internal.h"

#define OBJ_MAGIC 0x3152534du /* "MSR1" */
#define OBJ_HDR 16
#define TOK_CHUNK 4096
#define PULL_BATCH_BYTES ((uint64_t)256 << 20)
#define HASH_HEX 65

struct msa_remote {
    msa_s3_config cfg;
    char prefix[512];   /* "" or "p/" */
    int n_threads;
};

msa_remote_params msa_remote_default_params(void) {
    msa_remote_params p;
    memset(&p, 0, sizeof p);
    p.max_retries = 5;
    p.timeout_s = 30;
    p.connect_timeout_s = 10;
    p.n_threads = 8;
    return p;
}

int msa_remote_open(const msa_remote_params *p, msa_remote **out) {
    if (!out) return msa_error(MSA_EINVAL, "remote: NULL out");
    *out = NULL;
    if (!p || !p->url) return msa_error(MSA_EINVAL, "remote: no URL given (s3://BUCKET/PREFIX)");
    if (strncmp(p->url, "s3://", 5))
        return msa_error(MSA_EINVAL, "remote: '%s' is not an s3://BUCKET[/PREFIX] URL", p->url);
    msa_remote *r = calloc(1, sizeof *r);
    if (!r) return msa_error(MSA_ENOMEM, "remote: out of memory");
    const char *b = p->url + 5, *slash = strchr(b, '/');
    size_t bl = slash ? (size_t)(slash - b) : strlen(b);
    if (bl < 3 || bl >= sizeof r->cfg.bucket) {
        free(r);
        return msa_error(MSA_EINVAL, "remote: '%s' names no bucket (3-63 characters)", p->url);
    }
    for (size_t i = 0; i < bl; i++) {
        char c = b[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.')) {
            free(r);
            return msa_error(MSA_EINVAL, "remote: bucket '%.*s' may hold only a-z 0-9 . -", (int)bl, b);
        }
    }
    memcpy(r->cfg.bucket, b, bl);
    if (slash) {
        const char *pre = slash + 1;
        size_t pl = strlen(pre);
        while (pl && pre[pl - 1] == '/') pl--;
        if (pl + 2 >= sizeof r->prefix) { free(r); return msa_error(MSA_EINVAL, "remote: prefix too long"); }
        if (pl) snprintf(r->prefix, sizeof r->prefix, "%.*s/", (int)pl, pre);
    }
    if (p->endpoint && *p->endpoint) {
        if (strncmp(p->endpoint, "http://", 7) && strncmp(p->endpoint, "https://", 8)) {
            free(r);
            return msa_error(MSA_EINVAL, "remote: endpoint '%s' is not an http(s):// URL", p->endpoint);
        }
        if (strlen(p->endpoint) >= sizeof r->cfg.endpoint) { free(r); return msa_error(MSA_EINVAL, "remote: endpoint too long"); }
        snprintf(r->cfg.endpoint, sizeof r->cfg.endpoint, "%s", p->endpoint);
    }
    if (p->region && *p->region) snprintf(r->cfg.region, sizeof r->cfg.region, "%s", p->region);
    r->cfg.max_retries = p->max_retries >= 0 ? p->max_retries : 5;
    r->cfg.stall_timeout_s = p->timeout_s > 0 ? p->timeout_s : 30;
    r->cfg.connect_timeout_s = p->connect_timeout_s > 0 ? p->connect_timeout_s : 10;
    r->cfg.backoff_s = 0.2;
    r->n_threads = p->n_threads > 0 ? (p->n_threads > 64 ? 64 : p->n_threads) : 8;
    int rc = msa_s3_load_credentials(&r->cfg, p->profile);
    if (rc) { free(r); return rc; }
    *out = r;
    return MSA_OK;
}

void msa_remote_close(msa_remote *r) {
    if (!r) return;
    memset(r->cfg.secret_key, 0, sizeof r->cfg.secret_key);
    free(r);
}

/* ---- keys, hashes, objects ---------------------------------------------------- */

static void hex_of(const uint8_t *d, char out[HASH_HEX]) { msa_sha256_hex(d, out); }

static void obj_key(const msa_remote *r, const char *hash, char *key, size_t n) {
    snprintf(key, n, "%sobjects/%s", r->prefix, hash);
}

static int escape_name(const char *name, char *out, size_t n) {
    static const char hx[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; name[i]; i++) {
        unsigned char c = (unsigned char)name[i];
        int plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || (c == '.' && i > 0);
        if (o + 4 >= n) return -1;
        if (plain) out[o++] = (char)c;
        else { out[o++] = '~'; out[o++] = hx[c >> 4]; out[o++] = hx[c & 15]; }
    }
    out[o] = 0;
    return 0;
}

static int unescape_name(const char *in, size_t len, char *out, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (o + 1 >= n) return -1;
        if (in[i] == '~') {
            if (i + 2 >= len) return -1;
            char h[3] = {in[i + 1], in[i + 2], 0};
            char *e;
            unsigned long v = strtoul(h, &e, 16);
            if (*e || !v) return -1;
            out[o++] = (char)v;
            i += 2;
        } else out[o++] = in[i];
    }
    out[o] = 0;
    return 0;
}

static int manifest_key(const msa_remote *r, const char *name, char *key, size_t n) {
    char esc[3 * MSA_STORE_NAME_MAX + 4];
    if (!name || !*name || strlen(name) > MSA_STORE_NAME_MAX || escape_name(name, esc, sizeof esc))
        return msa_error(MSA_EINVAL, "remote: bad session name");
    if ((size_t)snprintf(key, n, "%ssessions/%s.json", r->prefix, esc) >= n)
        return msa_error(MSA_EINVAL, "remote: key too long");
    return MSA_OK;
}

/* Builds an object: header + payload, into a malloc'ed buffer; hash it. */
static int make_object(uint32_t kind, uint32_t count, const void *payload, size_t len,
                       uint8_t **out, size_t *out_len, char hash[HASH_HEX]) {
    uint8_t *o = malloc(OBJ_HDR + len);
    if (!o) return msa_error(MSA_ENOMEM, "remote: out of memory");
    msa_put_le32(o, OBJ_MAGIC);
    msa_put_le32(o + 4, kind);
    msa_put_le32(o + 8, count);
    msa_put_le32(o + 12, 0);
    memcpy(o + OBJ_HDR, payload, len);
    uint8_t d[MSA_SHA256_DIGEST_SIZE];
    msa_sha256(o, OBJ_HDR + len, d);
    hex_of(d, hash);
    *out = o;
    *out_len = OBJ_HDR + len;
    return MSA_OK;
}

/* Checks a fetched object against its name and expected kind/count. */
static int check_object(const char *hash, const uint8_t *b, size_t len, uint32_t kind,
                        uint32_t count) {
    uint8_t d[MSA_SHA256_DIGEST_SIZE];
    char hx[HASH_HEX];
    msa_sha256(b, len, d);
    hex_of(d, hx);
    if (strcmp(hx, hash))
        return msa_error(MSA_ECORRUPT, "object %.16s...: SHA-256 of its %zu bytes is %.16s...: refused",
                         hash, len, hx);
    if (len < OBJ_HDR || msa_get_le32(b) != OBJ_MAGIC || msa_get_le32(b + 4) != kind ||
        msa_get_le32(b + 8) != count)
        return msa_error(MSA_ECORRUPT, "object %.16s...: not the %s the manifest names", hash,
                         kind == 1 ? "block" : "token chunk");
    if (kind == 1 && msa_block_verify(b + OBJ_HDR, len - OBJ_HDR))
        return msa_error_context(MSA_ECORRUPT, "object %.16s...", hash);
    if (kind == 2 && len != OBJ_HDR + 4 * (size_t)count)
        return msa_error(MSA_ECORRUPT, "object %.16s...: token chunk of the wrong size", hash);
    return MSA_OK;
}

/* GET an object and verify it; a bad one is fetched again (3 tries). */
static int fetch_object(msa_remote *r, msa_s3 *s3, const char *hash, uint32_t kind,
                        uint32_t count, msa_s3_resp *resp) {
    char key[2048];
    obj_key(r, hash, key, sizeof key);
    int rc = MSA_OK;
    for (int attempt = 0; attempt < 3; attempt++) {
        rc = msa_s3_get(s3, key, 0, resp);
        if (rc == MSA_ENOTFOUND)
            return msa_error(MSA_ENOTFOUND, "object %s is referenced by the manifest but missing "
                             "on the remote", hash);
        if (rc) return rc;
        rc = check_object(hash, resp->body, resp->len, kind, count);
        if (!rc) return MSA_OK;
        msa_s3_resp_free(resp);
    }
    return msa_error_context(rc, "after 3 fetches");
}

/* ---- parallel workers ------------------------------------------------------------ */

typedef struct pool_thread {
    msa_s3 *s3;
    msa_store_session *ss;
    void *buf;           /* per-thread scratch */
} pool_thread;

typedef struct pool {
    msa_remote *r;
    msa_store *store;
    const char *name;
    int64_t n, next;
    int (*fn)(struct pool *p, pool_thread *t, int64_t i);
    void *ctx;
    int failed;
    int status;
    char msg[1024];
    pthread_mutex_t mu;
} pool;

/* One worker: its own curl handle (and store session), tasks from the
 * shared counter until none are left or one failed. */
static void pool_worker(void *u, int64_t w) {
    (void)w;
    pool *p = u;
    pool_thread t = {0};
    int rc = msa_s3_open(&p->r->cfg, &t.s3);
    if (!rc && p->store) rc = msa_store_session_open(p->store, p->name, NULL, &t.ss);
    for (;;) {
        if (rc) {
            pthread_mutex_lock(&p->mu);
            if (!p->failed) {
                p->failed = 1;
                p->status = rc;
                snprintf(p->msg, sizeof p->msg, "%s", msa_last_error());
            }
            pthread_mutex_unlock(&p->mu);
            break;
        }
        if (__atomic_load_n(&p->failed, __ATOMIC_RELAXED)) break;
        int64_t i = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED);
        if (i >= p->n) break;
        rc = p->fn(p, &t, i);
    }
    msa_store_session_close(t.ss);
    msa_s3_close(t.s3);
    free(t.buf);
}

/* The remote tier's own worker threads, process-wide, created as needed
 * (at most 63) and kept: network jobs must not hold the compute pool
 * (msa_parallel_for runs one job at a time, and a push can take minutes),
 * and threads that lived only for one call would leak the codec's
 * per-thread zstd contexts each time. One remote job runs at a time; the
 * calling thread works too. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    int n_workers, want, active;
    uint64_t gen;
    pool *job;
} rp = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, NULL};
static pthread_mutex_t rp_job_mu = PTHREAD_MUTEX_INITIALIZER;

static void *rp_thread(void *u) {
    (void)u;
    /* 0: a thread made for the job being posted takes part in it (gen is
       raised after the thread is created, and is 1 or more from then on) */
    uint64_t seen = 0;
    pthread_mutex_lock(&rp.mu);
    for (;;) {
        while (rp.gen == seen || rp.want == 0) {
            if (rp.gen != seen && rp.want == 0) seen = rp.gen; /* that job is full */
            pthread_cond_wait(&rp.wake, &rp.mu);
        }
        seen = rp.gen;
        rp.want--;
        pool *j = rp.job;
        pthread_mutex_unlock(&rp.mu);
        pool_worker(j, 0);
        pthread_mutex_lock(&rp.mu);
        if (--rp.active == 0) pthread_cond_broadcast(&rp.done);
    }
    return NULL;
}

/* Runs p->fn over [0, p->n) on n_threads workers; the first failure stops
 * the others and is returned with its message. */
static int pool_run(pool *p, int n_threads) {
    p->next = 0;
    p->failed = 0;
    p->status = 0;
    pthread_mutex_init(&p->mu, NULL);
    if (n_threads > p->n) n_threads = (int)(p->n > 0 ? p->n : 1);
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 64) n_threads = 64;
    pthread_mutex_lock(&rp_job_mu);
    pthread_mutex_lock(&rp.mu);
    while (rp.n_workers < n_threads - 1) {
        pthread_t th;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        int e = pthread_create(&th, &a, rp_thread, NULL);
        pthread_attr_destroy(&a);
        if (e) break; /* fewer helpers: still correct */
        rp.n_workers++;
    }
    int helpers = n_threads - 1 < rp.n_workers ? n_threads - 1 : rp.n_workers;
    rp.job = p;
    rp.want = helpers;
    rp.active = helpers;
    rp.gen++;
    pthread_cond_broadcast(&rp.wake);
    pthread_mutex_unlock(&rp.mu);
    pool_worker(p, 0);
    pthread_mutex_lock(&rp.mu);
    while (rp.active > 0) pthread_cond_wait(&rp.done, &rp.mu);
    rp.job = NULL;
    pthread_mutex_unlock(&rp.mu);
    pthread_mutex_unlock(&rp_job_mu);
    pthread_mutex_destroy(&p->mu);
    if (p->failed) return msa_error(p->status, "%s", p->msg);
    return MSA_OK;
}

/* ---- manifests --------------------------------------------------------------------- */

typedef struct mblock {
    char hash[HASH_HEX];
    uint32_t n;       /* filled rows, or tokens of a chunk */
    uint32_t bytes;   /* object size */
    char *tag;        /* malloc'ed; NULL for token chunks */
} mblock;

typedef struct manifest {
    char name[MSA_STORE_NAME_MAX + 1];
    char fingerprint[MSA_STORE_FINGERPRINT_MAX + 1];
    msa_store_shape shape;
    uint64_t n_tokens, generation;
    int64_t pushed_at;
    char pushed_by[128];
    size_t n_chunks;
    mblock *chunks;
    uint64_t n_blocks;   /* per layer */
    mblock **layers;     /* [n_layers][n_blocks] */
    int top_k;           /* the session's stored top-k (0: none) */
} manifest;

static void manifest_free(manifest *m) {
    if (!m) return;
    free(m->chunks);
    if (m->layers) {
        for (int l = 0; l < m->shape.n_layers; l++) {
            if (!m->layers[l]) continue;
            for (uint64_t b = 0; b < m->n_blocks; b++) free(m->layers[l][b].tag);
            free(m->layers[l]);
        }
    }
    free(m->layers);
    memset(m, 0, sizeof *m);
}

static int dtype_parse(const char *s, msa_dtype *out) {
    for (int d = MSA_DTYPE_F32; d <= MSA_DTYPE_BF16; d++)
        if (s && !strcmp(s, msa_dtype_name((msa_dtype)d))) { *out = (msa_dtype)d; return 0; }
    return -1;
}

static int is_hash(const char *s) {
    if (!s || strlen(s) != 64) return 0;
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

static uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

static json_t *manifest_json(const manifest *m) {
    json_t *chunks = json_array(), *layers = json_array();
    for (size_t i = 0; i < m->n_chunks; i++)
        json_array_append_new(chunks, json_pack("[s, I]", m->chunks[i].hash, (json_int_t)m->chunks[i].n));
    for (int l = 0; l < m->shape.n_layers; l++) {
        json_t *lay = json_array();
        for (uint64_t b = 0; b < m->n_blocks; b++) {
            const mblock *e = &m->layers[l][b];
            json_array_append_new(lay, json_pack("[s, I, s, I]", e->hash, (json_int_t)e->n,
                                                 e->tag ? e->tag : "", (json_int_t)e->bytes));
        }
        json_array_append_new(layers, lay);
    }
    const msa_store_shape *h = &m->shape;
    return json_pack("{s:s, s:i, s:s, s:s, s:{s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:s}, s:I, s:I, s:s, s:I, s:o, s:o, s:{s:i}}",
                     "format", "msa-mem-remote", "version", 1, "name", m->name,
                     "fingerprint", m->fingerprint,
                     "shape", "layers", h->n_layers, "kv_heads", h->n_kv_heads, "head_dim", h->head_dim,
                     "index_key_heads", h->idx_key_heads, "index_dim", h->idx_dim,
                     "block_size", h->block_size, "kv_dtype", msa_dtype_name(h->kv_dtype),
                     "index_dtype", msa_dtype_name(h->idx_dtype),
                     "tokens", (json_int_t)m->n_tokens, "generation", (json_int_t)m->generation,
                     "pushed_by", m->pushed_by, "pushed_at", (json_int_t)m->pushed_at,
                     "token_chunks", chunks, "layers", layers, "params", "top_k", m->top_k);
}

#define BAD(...) do { rc = msa_error(MSA_ECORRUPT, __VA_ARGS__); goto done; } while (0)

/* Parses and checks a manifest: every count consistent with the shape. */
static int manifest_parse(const char *key, const char *text, size_t len, manifest *m) {
    memset(m, 0, sizeof *m);
    json_error_t je;
    int rc = MSA_OK;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!j) return msa_error(MSA_ECORRUPT, "manifest %s: not JSON (%s, line %d)", key, je.text, je.line);
    const char *fmt = NULL, *name = NULL, *fp = NULL, *kvd = NULL, *idd = NULL, *by = "";
    int version = 0;
    json_int_t tokens = -1, gen = 0, at = 0;
    json_t *shape = NULL, *chunks = NULL, *layers = NULL, *params = NULL;
    if (json_unpack_ex(j, &je, 0, "{s:s, s:i, s:s, s:s, s:o, s:I, s:I, s?s, s?I, s:o, s:o, s?o}",
                       "format", &fmt, "version", &version, "name", &name, "fingerprint", &fp,
                       "shape", &shape, "tokens", &tokens, "generation", &gen, "pushed_by", &by,
                       "pushed_at", &at, "token_chunks", &chunks, "layers", &layers,
                       "params", &params))
        BAD("manifest %s: %s", key, je.text);
    if (params && (json_unpack(params, "{s?i}", "top_k", &m->top_k) || m->top_k < 0 || m->top_k > 65536))
        BAD("manifest %s: bad params", key);
    if (strcmp(fmt, "msa-mem-remote")) BAD("manifest %s: format '%s' is not msa-mem-remote", key, fmt);
    if (version != 1) { rc = msa_error(MSA_EVERSION, "manifest %s: version %d (this build reads 1)", key, version); goto done; }
    msa_store_shape *h = &m->shape;
    if (json_unpack_ex(shape, &je, 0, "{s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:s}", "layers", &h->n_layers,
                       "kv_heads", &h->n_kv_heads, "head_dim", &h->head_dim, "index_key_heads",
                       &h->idx_key_heads, "index_dim", &h->idx_dim, "block_size", &h->block_size,
                       "kv_dtype", &kvd, "index_dtype", &idd))
        BAD("manifest %s: shape: %s", key, je.text);
    if (dtype_parse(kvd, &h->kv_dtype) || dtype_parse(idd, &h->idx_dtype) || h->n_layers < 1 ||
        h->n_layers > 4096 || h->n_kv_heads < 1 || h->head_dim < 1 || h->idx_key_heads < 1 ||
        h->idx_dim < 1 || h->block_size < 1 || h->block_size > 65536)
        BAD("manifest %s: bad shape", key);
    if (strlen(name) > MSA_STORE_NAME_MAX || !*fp || strlen(fp) > MSA_STORE_FINGERPRINT_MAX || tokens < 0 || gen < 1)
        BAD("manifest %s: bad name, fingerprint, tokens or generation", key);
    snprintf(m->name, sizeof m->name, "%s", name);
    snprintf(m->fingerprint, sizeof m->fingerprint, "%s", fp);
    snprintf(m->pushed_by, sizeof m->pushed_by, "%s", by ? by : "");
    m->n_tokens = (uint64_t)tokens;
    m->generation = (uint64_t)gen;
    m->pushed_at = at;
    if (!json_is_array(chunks) || json_array_size(chunks) != ceil_div(m->n_tokens, TOK_CHUNK))
        BAD("manifest %s: token_chunks do not cover %llu tokens", key, (unsigned long long)m->n_tokens);
    m->n_chunks = json_array_size(chunks);
    m->chunks = calloc(m->n_chunks ? m->n_chunks : 1, sizeof *m->chunks);
    if (!m->chunks) { rc = msa_error(MSA_ENOMEM, "remote: out of memory"); goto done; }
    for (size_t i = 0; i < m->n_chunks; i++) {
        const char *hs;
        json_int_t n;
        if (json_unpack(json_array_get(chunks, i), "[s, I]", &hs, &n) || !is_hash(hs))
            BAD("manifest %s: token chunk %zu malformed", key, i);
        uint64_t want = i + 1 < m->n_chunks ? TOK_CHUNK : m->n_tokens - (uint64_t)i * TOK_CHUNK;
        if ((uint64_t)n != want) BAD("manifest %s: token chunk %zu holds %lld tokens, not %llu", key, i, (long long)n, (unsigned long long)want);
        memcpy(m->chunks[i].hash, hs, HASH_HEX);
        m->chunks[i].n = (uint32_t)n;
    }
    uint64_t Bk = (uint64_t)h->block_size;
    m->n_blocks = ceil_div(m->n_tokens, Bk);
    if (!json_is_array(layers) || json_array_size(layers) != (size_t)h->n_layers)
        BAD("manifest %s: %zu layers listed, shape says %d", key, json_array_size(layers), h->n_layers);
    m->layers = calloc((size_t)h->n_layers, sizeof *m->layers);
    if (!m->layers) { rc = msa_error(MSA_ENOMEM, "remote: out of memory"); goto done; }
    for (int l = 0; l < h->n_layers; l++) {
        json_t *lay = json_array_get(layers, (size_t)l);
        if (!json_is_array(lay) || json_array_size(lay) != m->n_blocks)
            BAD("manifest %s: layer %d does not list %llu blocks", key, l, (unsigned long long)m->n_blocks);
        m->layers[l] = calloc(m->n_blocks ? m->n_blocks : 1, sizeof **m->layers);
        if (!m->layers[l]) { rc = msa_error(MSA_ENOMEM, "remote: out of memory"); goto done; }
        for (uint64_t b = 0; b < m->n_blocks; b++) {
            const char *hs, *tag;
            json_int_t n, bytes;
            if (json_unpack(json_array_get(lay, b), "[s, I, s, I]", &hs, &n, &tag, &bytes) || !is_hash(hs) ||
                strlen(tag) > MSA_STORE_TAG_MAX || bytes < 0 || bytes > UINT32_MAX)
                BAD("manifest %s: layer %d block %llu malformed", key, l, (unsigned long long)b);
            uint64_t want = b + 1 < m->n_blocks ? Bk : m->n_tokens - b * Bk;
            if ((uint64_t)n != want) BAD("manifest %s: layer %d block %llu holds %lld rows, not %llu", key, l, (unsigned long long)b, (long long)n, (unsigned long long)want);
            mblock *e = &m->layers[l][b];
            memcpy(e->hash, hs, HASH_HEX);
            e->n = (uint32_t)n;
            e->bytes = (uint32_t)bytes;
            e->tag = strdup(tag);
            if (!e->tag) { rc = msa_error(MSA_ENOMEM, "remote: out of memory"); goto done; }
        }
    }
done:
    json_decref(j);
    if (rc) manifest_free(m);
    return rc;
}

/* GETs and parses the manifest of `name`: MSA_ENOTFOUND when absent. */
static int manifest_get(msa_remote *r, msa_s3 *s3, const char *name, manifest *m, char etag[128]) {
    char key[2048];
    int rc = manifest_key(r, name, key, sizeof key);
    if (rc) return rc;
    msa_s3_resp resp;
    for (int attempt = 0;; attempt++) {
        rc = msa_s3_get(s3, key, 0, &resp);
        if (rc == MSA_ENOTFOUND && strstr(msa_last_error(), "NoSuchBucket"))
            return msa_error(MSA_ENOTFOUND, "bucket '%s' does not exist (create it first, e.g. "
                             "`aws s3 mb s3://%s`)", r->cfg.bucket, r->cfg.bucket);
        if (rc == MSA_ENOTFOUND) return msa_error(MSA_ENOTFOUND, "no session '%s' on the remote", name);
        if (rc) return rc;
        uint8_t d[MSA_SHA256_DIGEST_SIZE];
        char hx[HASH_HEX];
        msa_sha256(resp.body, resp.len, d);
        hex_of(d, hx);
        if (strcmp(hx, resp.meta_sha256)) {
            msa_s3_resp_free(&resp);
            rc = msa_error(MSA_ECORRUPT, "manifest %s: its SHA-256 does not match x-amz-meta-sha256 "
                           "(changed or truncated): refused", key);
            if (attempt < 2) continue;
            return rc;
        }
        break;
    }
    rc = manifest_parse(key, (const char *)resp.body, resp.len, m);
    if (!rc && strcmp(m->name, name)) {
        rc = msa_error(MSA_ECORRUPT, "manifest %s names session '%s'", key, m->name);
        manifest_free(m);
    }
    if (etag) snprintf(etag, 128, "%s", resp.etag);
    msa_s3_resp_free(&resp);
    return rc;
}

/* ---- tokens ------------------------------------------------------------------------- */

typedef struct tok_fetch {
    const manifest *m;
    int32_t *out;
} tok_fetch;

static int tok_task(pool *p, pool_thread *t, int64_t i) {
    tok_fetch *f = p->ctx;
    const mblock *c = &f->m->chunks[i];
    msa_s3_resp resp;
    int rc = fetch_object(p->r, t->s3, c->hash, 2, c->n, &resp);
    if (rc) return rc;
    const uint8_t *b = resp.body + OBJ_HDR;
    for (uint32_t k = 0; k < c->n; k++) f->out[(size_t)i * TOK_CHUNK + k] = (int32_t)msa_get_le32(b + 4 * k);
    msa_s3_resp_free(&resp);
    return MSA_OK;
}

/* All the manifest's tokens, fetched and verified (malloc'ed). */
static int remote_tokens(msa_remote *r, const manifest *m, int32_t **out) {
    *out = malloc((m->n_tokens ? m->n_tokens : 1) * sizeof **out);
    if (!*out) return msa_error(MSA_ENOMEM, "remote: out of memory");
    tok_fetch f = {m, *out};
    pool p = {.r = r, .n = (int64_t)m->n_chunks, .fn = tok_task, .ctx = &f};
    int rc = pool_run(&p, r->n_threads);
    if (rc) { free(*out); *out = NULL; }
    return rc;
}

static int local_tokens(msa_store_session *s, uint64_t n, int32_t **out) {
    *out = malloc((n ? n : 1) * sizeof **out);
    if (!*out) return msa_error(MSA_ENOMEM, "remote: out of memory");
    int rc = n ? msa_store_read_tokens(s, 0, n, *out) : MSA_OK;
    if (rc) { free(*out); *out = NULL; }
    return rc;
}

static int shape_eq(const msa_store_shape *a, const msa_store_shape *b) {
    return a->n_layers == b->n_layers && a->n_kv_heads == b->n_kv_heads && a->head_dim == b->head_dim &&
           a->idx_key_heads == b->idx_key_heads && a->idx_dim == b->idx_dim &&
           a->block_size == b->block_size && a->kv_dtype == b->kv_dtype && a->idx_dtype == b->idx_dtype;
}

static int check_binding(const char *name, const msa_store_session_info *li, const manifest *m) {
    if (strcmp(li->fingerprint, m->fingerprint))
        return msa_error(MSA_EMODEL, "session '%s': the local copy is bound to model %.16s..., the "
                         "remote one to %.16s...", name, li->fingerprint, m->fingerprint);
    if (!shape_eq(&li->shape, &m->shape))
        return msa_error(MSA_EMODEL, "session '%s': local and remote copies have different shapes", name);
    return MSA_OK;
}

static msa_remote_relation relate(const int32_t *a, uint64_t na, const int32_t *b, uint64_t nb) {
    uint64_t n = na < nb ? na : nb;
    if (n && memcmp(a, b, n * sizeof *a)) return MSA_REMOTE_DIVERGED;
    if (na == nb) return MSA_REMOTE_SAME;
    return na > nb ? MSA_REMOTE_LOCAL_AHEAD : MSA_REMOTE_REMOTE_AHEAD;
}

static msa_codec_shape codec_shape(const msa_store_shape *h) {
    msa_codec_shape c = {h->n_kv_heads, h->head_dim, h->idx_key_heads, h->idx_dim, h->block_size,
                         h->kv_dtype, h->idx_dtype};
    return c;
}

/* ---- push ------------------------------------------------------------------------- */

typedef struct push_ctx {
    manifest *m;          /* the new manifest being filled */
    uint64_t first_block; /* blocks [first_block, n_blocks) of every layer go */
    uint64_t nb_new;
    const int32_t *tokens;
    size_t first_chunk;
    uint64_t sent, present, bytes_sent;
    int moved;            /* the local session changed under the push */
} push_ctx;

static int upload(pool *p, pool_thread *t, const char *hash, const uint8_t *o, size_t len, push_ctx *c) {
    char key[2048];
    obj_key(p->r, hash, key, sizeof key);
    int rc = msa_s3_put(t->s3, key, o, len, MSA_S3_PUT_CREATE, NULL, NULL, NULL);
    if (rc == MSA_EEXIST) { __atomic_add_fetch(&c->present, 1, __ATOMIC_RELAXED); return MSA_OK; }
    if (rc) return rc;
    __atomic_add_fetch(&c->sent, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&c->bytes_sent, len, __ATOMIC_RELAXED);
    return MSA_OK;
}

static int push_task(pool *p, pool_thread *t, int64_t i) {
    push_ctx *c = p->ctx;
    manifest *m = c->m;
    const msa_store_shape *h = &m->shape;
    uint64_t n_blk_tasks = (uint64_t)h->n_layers * c->nb_new;
    int rc;
    if ((uint64_t)i >= n_blk_tasks) { /* a token chunk */
        size_t ci = c->first_chunk + (size_t)((uint64_t)i - n_blk_tasks);
        mblock *e = &m->chunks[ci];
        uint8_t *pay = malloc(4 * (size_t)e->n), *o;
        if (!pay) return msa_error(MSA_ENOMEM, "remote: out of memory");
        for (uint32_t k = 0; k < e->n; k++) msa_put_le32(pay + 4 * k, (uint32_t)c->tokens[ci * TOK_CHUNK + k]);
        size_t len;
        rc = make_object(2, e->n, pay, 4 * (size_t)e->n, &o, &len, e->hash);
        free(pay);
        if (rc) return rc;
        e->bytes = (uint32_t)len;
        rc = upload(p, t, e->hash, o, len, c);
        free(o);
        return rc;
    }
    int layer = (int)((uint64_t)i / c->nb_new);
    uint64_t blk = c->first_block + (uint64_t)i % c->nb_new;
    size_t kvb = (size_t)h->n_kv_heads * h->block_size * h->head_dim * msa_dtype_size(h->kv_dtype);
    size_t ixb = (size_t)h->idx_key_heads * h->block_size * h->idx_dim * msa_dtype_size(h->idx_dtype);
    if (!t->buf) {
        t->buf = malloc(2 * kvb + ixb);
        if (!t->buf) return msa_error(MSA_ENOMEM, "remote: out of memory");
    }
    uint8_t *k = t->buf, *v = k + kvb, *ix = v + kvb;
    msa_store_block_info bi;
    rc = msa_store_read_block(t->ss, layer, blk, k, v, ix, &bi);
    if (rc) return rc;
    mblock *e = &m->layers[layer][blk];
    if ((uint32_t)bi.n_tokens != e->n) { /* the partial block grew: a writer appended */
        __atomic_store_n(&c->moved, 1, __ATOMIC_RELAXED);
        return msa_error(MSA_EBUSY, "session '%s' was appended to during the push", m->name);
    }
    msa_codec_shape cs = codec_shape(h);
    void *val;
    size_t vlen;
    rc = msa_block_encode(&cs, bi.n_tokens, k, v, ix, 1, MSA_STORE_LOSSLESS, &val, &vlen, NULL);
    if (rc) return rc;
    uint8_t *o;
    size_t len;
    rc = make_object(1, (uint32_t)bi.n_tokens, val, vlen, &o, &len, e->hash);
    free(val);
    if (rc) return rc;
    e->bytes = (uint32_t)len;
    e->tag = strdup(bi.tag);
    if (!e->tag) { free(o); return msa_error(MSA_ENOMEM, "remote: out of memory"); }
    rc = upload(p, t, e->hash, o, len, c);
    free(o);
    return rc;
}

static void stats_begin(msa_remote *r, msa_remote_stats *st, double *t0, long *q0, long *r0) {
    if (st) memset(st, 0, sizeof *st);
    *t0 = msa_now();
    *q0 = __atomic_load_n(&r->cfg.requests, __ATOMIC_RELAXED);
    *r0 = __atomic_load_n(&r->cfg.retries, __ATOMIC_RELAXED);
}

static void stats_end(msa_remote *r, msa_remote_stats *st, double t0, long q0, long r0) {
    if (!st) return;
    st->seconds = msa_now() - t0;
    st->requests = (uint64_t)(__atomic_load_n(&r->cfg.requests, __ATOMIC_RELAXED) - q0);
    st->retries = (uint64_t)(__atomic_load_n(&r->cfg.retries, __ATOMIC_RELAXED) - r0);
}

/* One attempt: 1 when the manifest CAS lost and the push should start over. */
static int push_once(msa_remote *r, msa_s3 *s3, msa_store *store, const char *name,
                     msa_remote_stats *st, int *again) {
    *again = 0;
    msa_store_session *ls = NULL;
    msa_store_session_info li;
    manifest old, nm;
    memset(&old, 0, sizeof old);
    memset(&nm, 0, sizeof nm);
    int32_t *lt = NULL, *rt = NULL;
    char etag[128] = "", mkey[2048];
    int have_old = 0, rc;
    char *body = NULL;
    if ((rc = manifest_key(r, name, mkey, sizeof mkey))) return rc;
    if ((rc = msa_store_session_open(store, name, NULL, &ls))) return rc;
    if ((rc = msa_store_session_stat(ls, &li))) goto out;
    if ((rc = local_tokens(ls, li.n_tokens, &lt))) goto out;
    rc = manifest_get(r, s3, name, &old, etag);
    if (rc == MSA_ENOTFOUND) rc = MSA_OK;
    else if (rc) goto out;
    else have_old = 1;
    if (have_old) {
        if ((rc = check_binding(name, &li, &old))) goto out;
        if ((rc = remote_tokens(r, &old, &rt))) goto out;
        msa_remote_relation rel = relate(lt, li.n_tokens, rt, old.n_tokens);
        msa_session_params lp;
        if ((rc = msa_store_session_get_params(ls, &lp))) goto out;
        if (rel == MSA_REMOTE_SAME && lp.top_k == old.top_k) {
            if (st) { st->up_to_date = 1; st->generation = old.generation; }
            goto out;
        }
        if (rel != MSA_REMOTE_LOCAL_AHEAD && rel != MSA_REMOTE_SAME) {
            rc = msa_error(MSA_EBUSY,
                           "conflict: session '%s' on the remote (%llu tokens, generation %llu, pushed "
                           "by %s) is %s the local one (%llu tokens): nothing was pushed and the local "
                           "session is unchanged; pull it (when the remote is ahead), or fork the "
                           "local session and push the fork",
                           name, (unsigned long long)old.n_tokens, (unsigned long long)old.generation,
                           old.pushed_by[0] ? old.pushed_by : "?",
                           rel == MSA_REMOTE_REMOTE_AHEAD ? "ahead of" : "diverged from",
                           (unsigned long long)li.n_tokens);
            goto out;
        }
    }
    /* the new manifest */
    const msa_store_shape *h = &li.shape;
    snprintf(nm.name, sizeof nm.name, "%s", name);
    snprintf(nm.fingerprint, sizeof nm.fingerprint, "%s", li.fingerprint);
    nm.shape = *h;
    nm.n_tokens = li.n_tokens;
    nm.generation = have_old ? old.generation + 1 : 1;
    nm.pushed_at = (int64_t)time(NULL);
    msa_session_params sp;
    if ((rc = msa_store_session_get_params(ls, &sp))) goto out;
    nm.top_k = sp.top_k;
    gethostname(nm.pushed_by, sizeof nm.pushed_by - 1);
    nm.n_chunks = (size_t)ceil_div(li.n_tokens, TOK_CHUNK);
    nm.n_blocks = ceil_div(li.n_tokens, (uint64_t)h->block_size);
    nm.chunks = calloc(nm.n_chunks ? nm.n_chunks : 1, sizeof *nm.chunks);
    nm.layers = calloc((size_t)h->n_layers, sizeof *nm.layers);
    if (!nm.chunks || !nm.layers) { rc = msa_error(MSA_ENOMEM, "remote: out of memory"); goto out; }
    for (int l = 0; l < h->n_layers; l++)
        if (!(nm.layers[l] = calloc(nm.n_blocks ? nm.n_blocks : 1, sizeof **nm.layers))) {
            rc = msa_error(MSA_ENOMEM, "remote: out of memory");
            goto out;
        }
    uint64_t Bk = (uint64_t)h->block_size;
    uint64_t keep_blocks = have_old ? old.n_tokens / Bk : 0;       /* the remote's full blocks */
    size_t keep_chunks = have_old ? (size_t)(old.n_tokens / TOK_CHUNK) : 0;
    for (size_t i = 0; i < nm.n_chunks; i++) {
        nm.chunks[i].n = (uint32_t)(i + 1 < nm.n_chunks ? TOK_CHUNK : li.n_tokens - (uint64_t)i * TOK_CHUNK);
        if (i < keep_chunks) { memcpy(nm.chunks[i].hash, old.chunks[i].hash, HASH_HEX); nm.chunks[i].bytes = old.chunks[i].bytes; }
    }
    for (int l = 0; l < h->n_layers; l++)
        for (uint64_t b = 0; b < nm.n_blocks; b++) {
            mblock *e = &nm.layers[l][b];
            e->n = (uint32_t)(b + 1 < nm.n_blocks ? Bk : li.n_tokens - b * Bk);
            if (b < keep_blocks) {
                memcpy(e->hash, old.layers[l][b].hash, HASH_HEX);
                e->bytes = old.layers[l][b].bytes;
                if (!(e->tag = strdup(old.layers[l][b].tag))) { rc = msa_error(MSA_ENOMEM, "remote: out of memory"); goto out; }
            }
        }
    push_ctx c = {.m = &nm, .first_block = keep_blocks, .nb_new = nm.n_blocks - keep_blocks,
                  .tokens = lt, .first_chunk = keep_chunks};
    pool p = {.r = r, .store = store, .name = name,
              .n = (int64_t)((uint64_t)h->n_layers * c.nb_new + (nm.n_chunks - keep_chunks)),
              .fn = push_task, .ctx = &c};
    rc = pool_run(&p, r->n_threads);
    if (st) {
        st->objects_sent += c.sent;
        st->objects_present += c.present;
        st->bytes_sent += c.bytes_sent;
    }
    if (rc) {
        if (c.moved) *again = 1;
        goto out;
    }
    json_t *j = manifest_json(&nm);
    body = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    if (!body) { rc = msa_error(MSA_ENOMEM, "remote: out of memory"); goto out; }
    uint8_t d[MSA_SHA256_DIGEST_SIZE];
    char hx[HASH_HEX], newtag[128];
    msa_sha256(body, strlen(body), d);
    hex_of(d, hx);
    rc = msa_s3_put(s3, mkey, body, strlen(body), have_old ? MSA_S3_PUT_IF_MATCH : MSA_S3_PUT_CREATE,
                    etag, hx, newtag);
    if (rc == MSA_EBUSY || rc == MSA_EEXIST) {
        /* lost the compare-and-swap, or a retried PUT that had landed: look */
        manifest now;
        int32_t *nt = NULL;
        int g = manifest_get(r, s3, name, &now, NULL);
        if (!g && now.n_tokens == li.n_tokens && !(g = remote_tokens(r, &now, &nt)) &&
            relate(lt, li.n_tokens, nt, now.n_tokens) == MSA_REMOTE_SAME) {
            rc = MSA_OK; /* the remote holds exactly what we wanted */
            nm.generation = now.generation;
        } else {
            *again = 1;
            rc = msa_error(MSA_EBUSY, "conflict: session '%s' was pushed by another store during "
                           "this push (manifest compare-and-swap lost); the local session is "
                           "unchanged", name);
        }
        free(nt);
        if (!g) manifest_free(&now);
    }
    if (!rc && st) st->generation = nm.generation;
out:
    if (st) { st->tokens_local = li.n_tokens; st->tokens_remote = rc ? (have_old ? old.n_tokens : 0) : li.n_tokens; }
    free(body);
    free(lt);
    free(rt);
    manifest_free(&old);
    manifest_free(&nm);
    msa_store_session_close(ls);
    return rc;
}

int msa_remote_push(msa_remote *r, msa_store *store, const char *name, msa_remote_stats *st) {
    if (!r || !store || !name) return msa_error(MSA_EINVAL, "remote push: NULL argument");
    double t0;
    long q0, r0;
    stats_begin(r, st, &t0, &q0, &r0);
    msa_s3 *s3;
    int rc = msa_s3_open(&r->cfg, &s3);
    if (rc) return rc;
    for (int attempt = 0; attempt < 3; attempt++) {
        int again;
        rc = push_once(r, s3, store, name, st, &again);
        if (!again) break;
    }
    msa_s3_close(s3);
    stats_end(r, st, t0, q0, r0);
    return rc;
}

/* ---- pull ------------------------------------------------------------------------- */

typedef struct fetched {
    uint8_t *obj;
    size_t len;
} fetched;

typedef struct pull_ctx {
    const manifest *m;
    uint64_t b0, nb;   /* block range of this batch */
    fetched *got;      /* [n_layers][nb] */
    uint64_t fetched_n, bytes;
} pull_ctx;

static int pull_task(pool *p, pool_thread *t, int64_t i) {
    pull_ctx *c = p->ctx;
    int layer = (int)((uint64_t)i / c->nb);
    uint64_t b = c->b0 + (uint64_t)i % c->nb;
    const mblock *e = &c->m->layers[layer][b];
    msa_s3_resp resp;
    int rc = fetch_object(p->r, t->s3, e->hash, 1, e->n, &resp);
    if (rc) return msa_error_context(rc, "layer %d block %llu", layer, (unsigned long long)b);
    c->got[i].obj = resp.body;
    c->got[i].len = resp.len;
    __atomic_add_fetch(&c->fetched_n, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&c->bytes, resp.len, __ATOMIC_RELAXED);
    return MSA_OK;
}

int msa_remote_pull(msa_remote *r, msa_store *store, const char *name, msa_remote_stats *st) {
    if (!r || !store || !name) return msa_error(MSA_EINVAL, "remote pull: NULL argument");
    double t0;
    long q0, r0;
    stats_begin(r, st, &t0, &q0, &r0);
    msa_s3 *s3 = NULL;
    msa_store_session *ls = NULL;
    manifest m;
    memset(&m, 0, sizeof m);
    int32_t *lt = NULL, *rt = NULL;
    fetched *got = NULL;
    size_t got_n = 0;
    uint8_t *buf = NULL;
    msa_store_session_info li;
    memset(&li, 0, sizeof li);
    int rc = msa_s3_open(&r->cfg, &s3);
    if (rc) return rc;
    if ((rc = manifest_get(r, s3, name, &m, NULL))) goto out;
    if ((rc = remote_tokens(r, &m, &rt))) goto out;
    rc = msa_store_session_open(store, name, NULL, &ls);
    if (rc == MSA_ENOTFOUND) {
        if ((rc = msa_store_session_create(store, name, m.fingerprint, &m.shape))) goto out;
        rc = msa_store_session_open(store, name, NULL, &ls);
    }
    if (rc) goto out;
    /* the remote's parameters where the local session has none */
    msa_session_params sp;
    if ((rc = msa_store_session_get_params(ls, &sp))) goto out;
    if (!sp.top_k && m.top_k) {
        sp.top_k = m.top_k;
        if ((rc = msa_store_session_set_params(ls, &sp))) goto out;
    }
    if ((rc = msa_store_session_stat(ls, &li))) goto out;
    if ((rc = check_binding(name, &li, &m))) goto out;
    if ((rc = local_tokens(ls, li.n_tokens, &lt))) goto out;
    msa_remote_relation rel = relate(lt, li.n_tokens, rt, m.n_tokens);
    if (st) st->generation = m.generation;
    if (rel == MSA_REMOTE_SAME || rel == MSA_REMOTE_LOCAL_AHEAD) {
        if (st) { st->up_to_date = rel == MSA_REMOTE_SAME; st->local_ahead = rel == MSA_REMOTE_LOCAL_AHEAD; }
        goto out;
    }
    if (rel == MSA_REMOTE_DIVERGED) {
        rc = msa_error(MSA_EBUSY, "conflict: session '%s' diverged: the local copy (%llu tokens) is "
                       "not a prefix of the remote one (%llu tokens, generation %llu, pushed by %s); "
                       "nothing was pulled; fork or remove the local session, then pull",
                       name, (unsigned long long)li.n_tokens, (unsigned long long)m.n_tokens,
                       (unsigned long long)m.generation, m.pushed_by[0] ? m.pushed_by : "?");
        goto out;
    }
    const msa_store_shape *h = &m.shape;
    uint64_t Bk = (uint64_t)h->block_size, have = li.n_tokens;
    size_t kvb = (size_t)h->n_kv_heads * h->block_size * h->head_dim * msa_dtype_size(h->kv_dtype);
    size_t ixb = (size_t)h->idx_key_heads * h->block_size * h->idx_dim * msa_dtype_size(h->idx_dtype);
    if (!(buf = malloc(2 * kvb + ixb))) { rc = msa_error(MSA_ENOMEM, "remote: out of memory"); goto out; }
    msa_codec_shape cs = codec_shape(h);
    uint64_t b = have / Bk;
    while (b < m.n_blocks) {
        /* a batch of block indices [b, b1) of every layer, ~256 MiB of objects */
        uint64_t b1 = b, bytes = 0;
        while (b1 < m.n_blocks && (b1 == b || bytes < PULL_BATCH_BYTES)) {
            for (int l = 0; l < h->n_layers; l++) bytes += m.layers[l][b1].bytes;
            b1++;
        }
        uint64_t nb = b1 - b;
        got_n = (size_t)(nb * (uint64_t)h->n_layers);
        got = calloc(got_n, sizeof *got);
        if (!got) { rc = msa_error(MSA_ENOMEM, "remote: out of memory"); goto out; }
        pull_ctx c = {.m = &m, .b0 = b, .nb = nb, .got = got};
        pool p = {.r = r, .n = (int64_t)(nb * (uint64_t)h->n_layers), .fn = pull_task, .ctx = &c};
        rc = pool_run(&p, r->n_threads);
        if (st) { st->objects_fetched += c.fetched_n; st->bytes_fetched += c.bytes; }
        if (rc) goto out;
        msa_store_txn *t;
        if ((rc = msa_store_txn_begin(ls, &t))) goto out;
        uint64_t upto = b1 * Bk < m.n_tokens ? b1 * Bk : m.n_tokens;
        rc = msa_store_txn_put_tokens(t, rt + have, (size_t)(upto - have));
        for (uint64_t bi = 0; !rc && bi < nb; bi++)
            for (int l = 0; !rc && l < h->n_layers; l++) {
                fetched *f = &got[(uint64_t)l * nb + bi];
                const mblock *e = &m.layers[l][b + bi];
                uint8_t *k = buf, *v = k + kvb, *ix = v + kvb;
                int nt;
                rc = msa_block_decode(&cs, f->obj + OBJ_HDR, f->len - OBJ_HDR, k, v, ix, &nt, 1);
                if (rc) rc = msa_error_context(rc, "object %.16s... (layer %d block %llu)", e->hash, l,
                                               (unsigned long long)(b + bi));
                else if ((uint32_t)nt != e->n)
                    rc = msa_error(MSA_ECORRUPT, "object %.16s...: %d rows, the manifest says %u", e->hash, nt, e->n);
                else rc = msa_store_txn_put_block(t, l, b + bi, nt, k, v, ix, e->tag);
                free(f->obj);
                f->obj = NULL;
            }
        if (rc) { msa_store_txn_abort(t); goto out; }
        if ((rc = msa_store_txn_commit(t))) {
            if (rc == MSA_EBUSY) msa_error_context(rc, "pull of '%s': a local writer appended meanwhile", name);
            goto out;
        }
        for (size_t i = 0; i < (size_t)(nb * (uint64_t)h->n_layers); i++) free(got[i].obj);
        free(got);
        got = NULL;
        have = upto;
        b = b1;
    }
    if (have < m.n_tokens) { /* cannot happen: blocks cover the tokens */
        rc = msa_error(MSA_ECORRUPT, "manifest of '%s': blocks do not cover its tokens", name);
        goto out;
    }
    li.n_tokens = have;
out:
    if (got) { /* what a failed batch fetched */
        for (size_t i = 0; i < got_n; i++) free(got[i].obj);
        free(got);
    }
    free(buf);
    free(lt);
    free(rt);
    if (st) { st->tokens_local = li.n_tokens; st->tokens_remote = m.n_tokens; }
    manifest_free(&m);
    msa_store_session_close(ls);
    msa_s3_close(s3);
    stats_end(r, st, t0, q0, r0);
    return rc;
}

/* ---- compare, list, remove ------------------------------------------------------ */

int msa_remote_compare(msa_remote *r, msa_store *store, const char *name, msa_remote_relation *rel) {
    if (!r || !store || !name || !rel) return msa_error(MSA_EINVAL, "remote compare: NULL argument");
    msa_s3 *s3;
    int rc = msa_s3_open(&r->cfg, &s3);
    if (rc) return rc;
    manifest m;
    int32_t *lt = NULL, *rt = NULL;
    msa_store_session *ls = NULL;
    msa_store_session_info li;
    int rm = manifest_get(r, s3, name, &m, NULL);
    if (rm && rm != MSA_ENOTFOUND) { msa_s3_close(s3); return rm; }
    int lo = msa_store_session_open(store, name, NULL, &ls);
    if (lo && lo != MSA_ENOTFOUND) { rc = lo; goto out; }
    if (rm && lo) { rc = msa_error(MSA_ENOTFOUND, "no session '%s' here or on the remote", name); goto out; }
    if (rm) { *rel = MSA_REMOTE_ONLY_LOCAL; goto out; }
    if (lo) { *rel = MSA_REMOTE_ONLY_REMOTE; goto out; }
    if ((rc = msa_store_session_stat(ls, &li)) || (rc = check_binding(name, &li, &m)) ||
        (rc = local_tokens(ls, li.n_tokens, &lt)) || (rc = remote_tokens(r, &m, &rt)))
        goto out;
    *rel = relate(lt, li.n_tokens, rt, m.n_tokens);
out:
    if (!rm) manifest_free(&m);
    free(lt);
    free(rt);
    msa_store_session_close(ls);
    msa_s3_close(s3);
    return rc;
}

typedef struct keylist {
    char **keys;
    int64_t *mtime, *size;
    size_t n, cap;
} keylist;

static void keylist_free(keylist *k) {
    for (size_t i = 0; i < k->n; i++) free(k->keys[i]);
    free(k->keys);
    free(k->mtime);
    free(k->size);
    memset(k, 0, sizeof *k);
}

static int collect(void *ctx, const msa_s3_object *o) {
    keylist *k = ctx;
    if (k->n == k->cap) {
        size_t cap = k->cap ? 2 * k->cap : 256;
        char **nk = realloc(k->keys, cap * sizeof *nk);
        if (nk) k->keys = nk;
        int64_t *nm = realloc(k->mtime, cap * sizeof *nm);
        if (nm) k->mtime = nm;
        int64_t *ns = realloc(k->size, cap * sizeof *ns);
        if (ns) k->size = ns;
        if (!nk || !nm || !ns) return msa_error(MSA_ENOMEM, "remote: out of memory");
        k->cap = cap;
    }
    if (!(k->keys[k->n] = strdup(o->key))) return msa_error(MSA_ENOMEM, "remote: out of memory");
    k->mtime[k->n] = o->last_modified;
    k->size[k->n] = o->size;
    k->n++;
    return 0;
}

/* Names of the sessions on the remote, from the manifest keys. */
static int session_names(msa_remote *r, msa_s3 *s3, keylist *names) {
    char pre[1024];
    snprintf(pre, sizeof pre, "%ssessions/", r->prefix);
    keylist keys = {0};
    int rc = msa_s3_list(s3, pre, collect, &keys);
    size_t pl = strlen(pre);
    for (size_t i = 0; !rc && i < keys.n; i++) {
        const char *k = keys.keys[i];
        size_t kl = strlen(k);
        if (kl < pl + 6 || strncmp(k, pre, pl) || strcmp(k + kl - 5, ".json")) continue;
        char name[MSA_STORE_NAME_MAX + 1];
        if (unescape_name(k + pl, kl - pl - 5, name, sizeof name)) continue; /* not ours */
        msa_s3_object o = {0};
        snprintf(o.key, sizeof o.key, "%s", name);
        rc = collect(names, &o);
    }
    keylist_free(&keys);
    return rc;
}

static int cmp_info(const void *a, const void *b) {
    return strcmp(((const msa_remote_session_info *)a)->name, ((const msa_remote_session_info *)b)->name);
}

int msa_remote_list(msa_remote *r, msa_remote_session_info **out, size_t *n) {
    if (!r || !out || !n) return msa_error(MSA_EINVAL, "remote list: NULL argument");
    *out = NULL;
    *n = 0;
    msa_s3 *s3;
    int rc = msa_s3_open(&r->cfg, &s3);
    if (rc) return rc;
    keylist names = {0};
    msa_remote_session_info *v = NULL;
    if ((rc = session_names(r, s3, &names))) goto out;
    v = calloc(names.n ? names.n : 1, sizeof *v);
    if (!v) { rc = msa_error(MSA_ENOMEM, "remote: out of memory"); goto out; }
    size_t k = 0;
    for (size_t i = 0; i < names.n; i++) {
        manifest m;
        rc = manifest_get(r, s3, names.keys[i], &m, NULL);
        if (rc == MSA_ENOTFOUND) { rc = 0; continue; } /* removed meanwhile */
        if (rc) goto out;
        msa_remote_session_info *e = &v[k++];
        snprintf(e->name, sizeof e->name, "%s", m.name);
        snprintf(e->fingerprint, sizeof e->fingerprint, "%s", m.fingerprint);
        e->shape = m.shape;
        e->n_tokens = m.n_tokens;
        e->n_blocks = m.n_blocks;
        e->generation = m.generation;
        e->pushed_at = m.pushed_at;
        snprintf(e->pushed_by, sizeof e->pushed_by, "%s", m.pushed_by);
        for (size_t c = 0; c < m.n_chunks; c++) e->bytes += m.chunks[c].bytes;
        for (int l = 0; l < m.shape.n_layers; l++)
            for (uint64_t b = 0; b < m.n_blocks; b++) e->bytes += m.layers[l][b].bytes;
        manifest_free(&m);
    }
    qsort(v, k, sizeof *v, cmp_info);
    *out = v;
    *n = k;
    v = NULL;
out:
    free(v);
    keylist_free(&names);
    msa_s3_close(s3);
    return rc;
}

void msa_remote_list_free(msa_remote_session_info *list) { free(list); }

int msa_remote_remove(msa_remote *r, const char *name) {
    if (!r || !name) return msa_error(MSA_EINVAL, "remote remove: NULL argument");
    char key[2048];
    int rc = manifest_key(r, name, key, sizeof key);
    if (rc) return rc;
    msa_s3 *s3;
    if ((rc = msa_s3_open(&r->cfg, &s3))) return rc;
    msa_s3_resp resp;
    rc = msa_s3_get(s3, key, 1, &resp);
    if (rc == MSA_ENOTFOUND) rc = msa_error(MSA_ENOTFOUND, "no session '%s' on the remote", name);
    else if (!rc) { msa_s3_resp_free(&resp); rc = msa_s3_delete(s3, key); }
    msa_s3_close(s3);
    return rc;
}

/* ---- gc ------------------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

typedef struct gc_ctx {
    keylist *objs;
    char **del;
    size_t n_del;
} gc_ctx;

static int gc_task(pool *p, pool_thread *t, int64_t i) {
    gc_ctx *g = p->ctx;
    return msa_s3_delete(t->s3, g->del[i]);
}

int msa_remote_gc(msa_remote *r, int64_t min_age_s, int dry_run, msa_remote_gc_stats *st) {
    if (!r) return msa_error(MSA_EINVAL, "remote gc: NULL remote");
    msa_remote_gc_stats s;
    memset(&s, 0, sizeof s);
    msa_s3 *s3;
    int rc = msa_s3_open(&r->cfg, &s3);
    if (rc) return rc;
    keylist objs = {0}, names = {0};
    char **refs = NULL, **del = NULL;
    size_t n_refs = 0, cap_refs = 0, n_del = 0;
    char pre[1024];
    snprintf(pre, sizeof pre, "%sobjects/", r->prefix);
    size_t pl = strlen(pre);
    /* objects first: one created after this listing is not a candidate */
    int64_t now = (int64_t)time(NULL);
    if ((rc = msa_s3_list(s3, pre, collect, &objs))) goto out;
    if ((rc = session_names(r, s3, &names))) goto out;
    for (size_t i = 0; i < names.n; i++) {
        manifest m;
        rc = manifest_get(r, s3, names.keys[i], &m, NULL);
        if (rc == MSA_ENOTFOUND) { rc = 0; continue; }
        if (rc) { msa_error_context(rc, "gc stopped, nothing deleted"); goto out; }
        s.manifests++;
        size_t need = n_refs + m.n_chunks + (size_t)m.n_blocks * (size_t)m.shape.n_layers;
        if (need > cap_refs) {
            size_t cap = cap_refs ? cap_refs : 1024;
            while (cap < need) cap *= 2;
            char **nr = realloc(refs, cap * sizeof *nr);
            if (!nr) { manifest_free(&m); rc = msa_error(MSA_ENOMEM, "remote: out of memory"); goto out; }
            refs = nr;
            cap_refs = cap;
        }
        int oom = 0;
        for (size_t c = 0; c < m.n_chunks; c++) oom |= !(refs[n_refs++] = strdup(m.chunks[c].hash));
        for (int l = 0; l < m.shape.n_layers; l++)
            for (uint64_t b = 0; b < m.n_blocks; b++) oom |= !(refs[n_refs++] = strdup(m.layers[l][b].hash));
        manifest_free(&m);
        if (oom) { rc = msa_error(MSA_ENOMEM, "remote: out of memory"); goto out; }
    }
    qsort(refs, n_refs, sizeof *refs, cmp_str);
    size_t distinct = 0;
    for (size_t i = 0; i < n_refs; i++) if (!i || strcmp(refs[i], refs[i - 1])) distinct++;
    s.referenced = distinct;
    s.objects = objs.n;
    del = calloc(objs.n ? objs.n : 1, sizeof *del);
    if (!del) { rc = msa_error(MSA_ENOMEM, "remote: out of memory"); goto out; }
    for (size_t i = 0; i < objs.n; i++) {
        const char *k = objs.keys[i];
        if (strncmp(k, pre, pl)) continue;
        const char *h = k + pl;
        if (!is_hash(h)) continue; /* not ours: never touched */
        if (refs && bsearch(&h, refs, n_refs, sizeof *refs, cmp_str)) continue;
        if (min_age_s > 0 && (objs.mtime[i] == 0 || now - objs.mtime[i] < min_age_s)) { s.kept_young++; continue; }
        del[n_del++] = objs.keys[i];
        s.deleted++;
        s.bytes_deleted += (uint64_t)(objs.size[i] > 0 ? objs.size[i] : 0);
    }
    if (!dry_run && n_del) {
        gc_ctx g = {&objs, del, n_del};
        pool p = {.r = r, .n = (int64_t)n_del, .fn = gc_task, .ctx = &g};
        rc = pool_run(&p, r->n_threads);
    }
out:
    if (st) *st = s;
    for (size_t i = 0; i < n_refs; i++) free(refs[i]);
    free(refs);
    free(del);
    keylist_free(&objs);
    keylist_free(&names);
    msa_s3_close(s3);
    return rc;
}
