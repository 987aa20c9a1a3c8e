/*
 * test-store-util.h: what the store's test programs share: a small session
 * shape, deterministic session content (every value is a function of the
 * seed, the layer and the token position, so a session of n tokens has
 * exactly one correct content), appending it, checking it, and hashing it.
 */
#ifndef MSA_TEST_STORE_UTIL_H
#define MSA_TEST_STORE_UTIL_H

#include <stdlib.h>
#include <string.h>

#include "engine/msa.h"
#include "base/base.h"
#include "persist/store_int.h"

static msa_store_shape ts_shape(void) {
    msa_store_shape s = {3, 2, 16, 1, 8, 16, MSA_DTYPE_BF16, MSA_DTYPE_BF16};
    return s;
}

static uint64_t ts_mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}

/* value of (which: 0 K, 1 V, 2 idx) at layer, head, token position, channel */
static uint16_t ts_val(uint64_t seed, int which, int layer, int head, uint64_t pos, int ch) {
    uint64_t h = ts_mix(seed ^ ts_mix(((uint64_t)which << 60) ^ ((uint64_t)layer << 48) ^
                                      ((uint64_t)head << 40) ^ (pos << 12) ^ (uint64_t)ch));
    float f = ((float)(h >> 40) / 16777216.0f - 0.5f) * (float)(1 + ch % 5);
    return msa_f32_to_bf16(f);
}

static int32_t ts_token(uint64_t seed, uint64_t pos) { return (int32_t)(ts_mix(seed + pos) % 50000); }

typedef struct ts_bufs {
    uint16_t *k, *v, *i;
    size_t kn, in;
} ts_bufs;

static void ts_bufs_init(ts_bufs *b, const msa_store_shape *s) {
    b->kn = (size_t)s->n_kv_heads * s->block_size * s->head_dim;
    b->in = (size_t)s->idx_key_heads * s->block_size * s->idx_dim;
    b->k = calloc(b->kn, 2);
    b->v = calloc(b->kn, 2);
    b->i = calloc(b->in, 2);
}

static void ts_bufs_free(ts_bufs *b) { free(b->k); free(b->v); free(b->i); }

/* Fills the buffers with the expected block (layer, block) of `fill` rows. */
static void ts_fill(ts_bufs *b, const msa_store_shape *s, uint64_t seed, int layer, uint64_t block, int fill) {
    memset(b->k, 0, b->kn * 2); memset(b->v, 0, b->kn * 2); memset(b->i, 0, b->in * 2);
    for (int h = 0; h < s->n_kv_heads; h++)
        for (int t = 0; t < fill; t++)
            for (int c = 0; c < s->head_dim; c++) {
                size_t o = ((size_t)h * s->block_size + t) * s->head_dim + c;
                uint64_t pos = block * s->block_size + t;
                b->k[o] = ts_val(seed, 0, layer, h, pos, c);
                b->v[o] = ts_val(seed, 1, layer, h, pos, c);
            }
    for (int h = 0; h < s->idx_key_heads; h++)
        for (int t = 0; t < fill; t++)
            for (int c = 0; c < s->idx_dim; c++)
                b->i[((size_t)h * s->block_size + t) * s->idx_dim + c] =
                    ts_val(seed, 2, layer, h, block * s->block_size + t, c);
}

/* Puts tokens [n0, n0 + c) and every block they touch, in an open txn. */
static int ts_put(msa_store_txn *x, const msa_store_shape *s, uint64_t seed, uint64_t n0, uint64_t c) {
    int32_t tok[256];
    for (uint64_t p = n0; p < n0 + c;) {
        int m = 0;
        while (m < 256 && p < n0 + c) tok[m++] = ts_token(seed, p++);
        int rc = msa_store_txn_put_tokens(x, tok, (size_t)m);
        if (rc) return rc;
    }
    ts_bufs b;
    ts_bufs_init(&b, s);
    int rc = MSA_OK;
    uint64_t end = n0 + c, bs = (uint64_t)s->block_size;
    for (int l = 0; l < s->n_layers && !rc; l++)
        for (uint64_t blk = n0 / bs; blk * bs < end && !rc; blk++) {
            int fill = (int)((end - blk * bs) < bs ? end - blk * bs : bs);
            ts_fill(&b, s, seed, l, blk, fill);
            char tag[64];
            snprintf(tag, sizeof tag, "turn %llu", (unsigned long long)blk);
            rc = msa_store_txn_put_block(x, l, blk, fill, b.k, b.v, b.i, tag);
        }
    ts_bufs_free(&b);
    return rc;
}

/* One transaction appending c tokens to a session of n0 tokens. */
static int ts_append(msa_store_session *ss, const msa_store_shape *s, uint64_t seed, uint64_t n0, uint64_t c) {
    msa_store_txn *x;
    int rc = msa_store_txn_begin(ss, &x);
    if (rc) return rc;
    rc = ts_put(x, s, seed, n0, c);
    if (rc) {
        msa_store_txn_abort(x);
        return rc;
    }
    return msa_store_txn_commit(x);
}

/* The hash of a session's content as a stream: tokens, then every layer's
 * blocks (K, V, index keys, tag). `from_store` reads it back; otherwise it
 * is generated. Returns 0 on a read error (with *rc set). */
static uint64_t ts_hash(msa_store_session *ss, const msa_store_shape *s, uint64_t seed, uint64_t n, int *rc) {
    uint32_t a = 0, b2 = 0x9e3779b9u;
    *rc = 0;
    int32_t tok[256];
    for (uint64_t p = 0; p < n;) {
        int m = 0;
        uint64_t p0 = p;
        while (m < 256 && p < n) tok[m++] = ts_token(seed, p++);
        if (ss && (*rc = msa_store_read_tokens(ss, p0, (uint64_t)m, tok))) return 0;
        a = msa_crc32c(a, tok, 4 * (size_t)m);
        b2 = msa_crc32c(b2, tok, 4 * (size_t)m);
    }
    ts_bufs bb;
    ts_bufs_init(&bb, s);
    uint64_t bs = (uint64_t)s->block_size;
    for (int l = 0; l < s->n_layers; l++)
        for (uint64_t blk = 0; blk * bs < n; blk++) {
            int fill = (int)((n - blk * bs) < bs ? n - blk * bs : bs);
            msa_store_block_info info;
            char tag[MSA_STORE_TAG_MAX + 1];
            snprintf(tag, sizeof tag, "turn %llu", (unsigned long long)blk);
            if (ss) {
                if ((*rc = msa_store_read_block(ss, l, blk, bb.k, bb.v, bb.i, &info))) {
                    ts_bufs_free(&bb);
                    return 0;
                }
                if (info.n_tokens != fill) a ^= 0xdeadu; /* fill mismatch changes the hash */
                snprintf(tag, sizeof tag, "%s", info.tag);
            } else {
                ts_fill(&bb, s, seed, l, blk, fill);
            }
            a = msa_crc32c(a, bb.k, bb.kn * 2); a = msa_crc32c(a, bb.v, bb.kn * 2);
            a = msa_crc32c(a, bb.i, bb.in * 2); a = msa_crc32c(a, tag, strlen(tag));
            b2 = msa_crc32c(b2 ^ a, bb.k, 64);
        }
    ts_bufs_free(&bb);
    return ((uint64_t)a << 32 | b2) ^ n;
}

/* The session's stored hash and token count (opens and closes it). */
static inline uint64_t ts_store_hash(msa_store *st, const char *name, uint64_t seed, uint64_t *n, int *rc) {
    msa_store_session *ss;
    *rc = msa_store_session_open(st, name, NULL, &ss);
    if (*rc) return 0;
    msa_store_session_info info;
    *rc = msa_store_session_stat(ss, &info);
    uint64_t h = 0;
    if (!*rc) {
        *n = info.n_tokens;
        h = ts_hash(ss, &info.shape, seed, info.n_tokens, rc);
    }
    msa_store_session_close(ss);
    return h;
}

/* Default store parameters, but for segment_min, which
 * MSA_TEST_SEGMENT_MIN sets (1: every full block goes to a segment file),
 * so that one test runs against both places a block can be kept. */
static msa_store_params ts_params(void) {
    msa_store_params p = msa_store_default_params();
    const char *e = getenv("MSA_TEST_SEGMENT_MIN");
    if (e && *e) p.segment_min = (size_t)strtoull(e, NULL, 0);
    return p;
}

static msa_store *ts_open(const char *dir) {
    msa_store_params p = ts_params();
    p.dir = dir;
    p.map_size = 4u << 20;
    msa_store *st = NULL;
    int rc = msa_store_open(&p, &st);
    if (rc) fprintf(stderr, "open %s: %s\n", dir, msa_last_error());
    return st;
}

static void ts_tmpdir(char *buf, size_t n, const char *tag) {
    const char *base = getenv("TMPDIR");
    snprintf(buf, n, "%s/msa-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    if (!mkdtemp(buf)) { perror("mkdtemp"); exit(1); }
}

static void ts_rmrf(const char *dir) {
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) {}
}

#endif
