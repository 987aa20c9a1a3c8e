/*
 * salvage.c: msa_store_salvage(), which copies every intact session of a
 * store, damaged or not, into a new store, and says what it left out.
 *
 * The source is read through lmdbraw.c, never through LMDB: a damaged page
 * is reported and the entries below it are unreachable, while everything
 * else is still found (each lookup descends the tree checking every page
 * it passes). Every record read is verified as the store verifies it: the
 * session record's CRC, every token chunk's CRC and count, every block
 * entry's CRC, and every block value decoded in full with its plane and
 * plain checksums.
 *
 * A session is copied whole when all of that holds. Otherwise it is copied
 * up to its first damage: the tokens and, in every layer, the blocks before
 * the first block (of any layer) or token chunk that is damaged or missing,
 * cut at a block boundary so that every layer covers exactly its tokens and
 * the copy continues like any session (fsck is clean on the new store).
 * A session whose record is damaged is left out (its name is reported when
 * the key can still be read). Blocks that forks share stay shared in the
 * new store (one copy, references counted).
 *
 * Each session is one write transaction of the new store. The source must
 * not be written meanwhile: its lock is taken exclusively, as compact does.
 */
#include "persist/store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <unistd.h>

/* src block id -> dst block id, open addressing; `fresh` marks entries of the
 * transaction being written (dropped when it is run again, kept at commit) */
typedef struct idmap {
    uint64_t *src, *dst;
    uint8_t *fresh;
    size_t cap, n;
} idmap;

static size_t idmap_slot(const idmap *m, uint64_t id) {
    uint64_t h = id * 0x9E3779B97F4A7C15ull;
    size_t i = (size_t)(h >> 17) & (m->cap - 1);
    while (m->src[i] && m->src[i] != id) i = (i + 1) & (m->cap - 1);
    return i;
}

static int idmap_put(idmap *m, uint64_t id, uint64_t to) {
    if ((m->n + 1) * 2 > m->cap) {
        idmap o = *m;
        size_t cap = o.cap ? o.cap * 2 : 1024;
        m->src = calloc(cap, 8);
        m->dst = calloc(cap, 8);
        m->fresh = calloc(cap, 1);
        m->cap = cap;
        m->n = 0;
        if (!m->src || !m->dst || !m->fresh) {
            free(m->src); free(m->dst); free(m->fresh);
            *m = o;
            return msa_error(MSA_ENOMEM, "salvage: block map of %zu entries", cap);
        }
        for (size_t i = 0; i < o.cap; i++)
            if (o.src[i]) {
                size_t s = idmap_slot(m, o.src[i]);
                m->src[s] = o.src[i];
                m->dst[s] = o.dst[i];
                m->fresh[s] = o.fresh[i];
                m->n++;
            }
        free(o.src); free(o.dst); free(o.fresh);
    }
    size_t s = idmap_slot(m, id);
    if (!m->src[s]) m->n++;
    m->src[s] = id;
    m->dst[s] = to;
    m->fresh[s] = 1;
    return MSA_OK;
}

static uint64_t idmap_get(const idmap *m, uint64_t id) {
    if (!m->cap || !id) return 0;
    size_t s = idmap_slot(m, id);
    return m->src[s] == id ? m->dst[s] : 0;
}

/* fresh entries become permanent (commit) or go away (a rerun) */
static void idmap_settle(idmap *m, int keep) {
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->src[i] || !m->fresh[i]) continue;
        m->fresh[i] = 0;
        if (!keep) { /* re-insert the rest: deletion in open addressing */
            m->src[i] = 0;
            m->n--;
        }
    }
    if (!keep && m->cap) { /* rebuild the chains the deletions broke */
        idmap o = *m;
        m->src = calloc(o.cap, 8);
        m->dst = calloc(o.cap, 8);
        m->fresh = calloc(o.cap, 1);
        if (!m->src || !m->dst || !m->fresh) { /* keep the old arrays: lookups may miss, never mislead */
            free(m->src); free(m->dst); free(m->fresh);
            *m = o;
            return;
        }
        m->n = 0;
        for (size_t i = 0; i < o.cap; i++)
            if (o.src[i]) {
                size_t s = idmap_slot(m, o.src[i]);
                m->src[s] = o.src[i];
                m->dst[s] = o.dst[i];
                m->n++;
            }
        free(o.src); free(o.dst); free(o.fresh);
    }
}

/* Entries of pages no intact tree reaches (msa_raw_scan), recognised by
 * their own checksums, for the lookups that the damaged trees fail. */
enum { T_SESSIONS, T_TOKENS, T_BLOCKMAP, T_BLOCKS };

typedef struct orphan {
    int table;
    const uint8_t *key, *val;
    size_t klen, vlen;
} orphan;

typedef struct orphans {
    orphan *v;
    size_t n, cap;
    int oom;
} orphans;

static int orphan_cmp(const void *a, const void *b) {
    const orphan *x = a, *y = b;
    if (x->table != y->table) return x->table - y->table;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = memcmp(x->key, y->key, n);
    return c ? c : (x->klen < y->klen ? -1 : x->klen > y->klen);
}

static int collect_orphan(void *ctx, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl, unsigned fl) {
    orphans *o = ctx;
    int table = -1;
    MDB_val mv = {vl, (void *)v};
    msa_bent e;
    msa_srec r;
    if (fl & 0x02) return 0; /* a named table's record */
    msa_segptr sp;
    if (kl == 8 && vl >= 24 && msa_get_le32(v) == MSA_BLOCK_MAGIC && !msa_block_verify(v, vl)) table = T_BLOCKS;
    else if (kl == 8 && msa_segptr_is(v, vl) && !msa_segptr_decode(v, vl, &sp)) table = T_BLOCKS;
    else if (kl == 20 && !msa_bent_decode(&mv, &e)) table = T_BLOCKMAP;
    else if (kl == 12 && vl >= 8 && vl == 8 + 4 * (size_t)msa_get_le32(v + 4) &&
             msa_crc32c(0, v + 4, vl - 4) == msa_get_le32(v)) table = T_TOKENS;
    else if (kl >= 1 && kl <= MSA_STORE_NAME_MAX && !msa_srec_decode(&mv, &r)) table = T_SESSIONS;
    if (table < 0) return 0;
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 256;
        void *p = realloc(o->v, cap * sizeof *o->v);
        if (!p) { o->oom = 1; return -1; }
        o->v = p;
        o->cap = cap;
    }
    o->v[o->n++] = (orphan){table, k, v, kl, vl};
    return 0;
}

typedef struct sv {
    msa_raw *r;
    orphans lost;           /* sorted */
    msa_raw_db meta, sessions, tokens, blockmap, blocks;
    int have_sessions, have_tokens, have_blockmap, have_blocks;
    void (*report)(void *, const char *);
    void *ctx;
    msa_store_salvage_stats *stats;
    msa_store *dst;
    idmap ids;
    void *kbuf, *vbuf, *ibuf;
    size_t kcap, icap;
    msa_segs *segs;         /* the source's segment files */
} sv;

static void say(sv *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(sv *s, const char *fmt, ...) {
    char line[1600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (s->report) s->report(s->ctx, line);
}

static void damage_line(void *ctx, const char *line) {
    sv *s = ctx;
    s->stats->damaged++;
    say(s, "damaged: %s", line);
}

/* One session's record, as found. */
typedef struct found {
    char name[MSA_STORE_NAME_MAX + 1];
    uint8_t *rec;
    size_t len;
} found;

typedef struct found_list {
    found *v;
    size_t n, cap;
    int oom;
} found_list;

static int collect_session(void *ctx, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl, unsigned fl) {
    (void)fl;
    found_list *l = ctx;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        void *p = realloc(l->v, cap * sizeof *l->v);
        if (!p) { l->oom = 1; return -1; }
        l->v = p;
        l->cap = cap;
    }
    found *f = &l->v[l->n];
    size_t n = kl < MSA_STORE_NAME_MAX ? kl : MSA_STORE_NAME_MAX;
    memcpy(f->name, k, n);
    f->name[n] = 0;
    f->rec = malloc(vl ? vl : 1);
    if (!f->rec) { l->oom = 1; return -1; }
    memcpy(f->rec, v, vl);
    f->len = vl;
    l->n++;
    return 0;
}

/* A value by key: through the table's tree, else among the orphans. */
static int lookup(sv *s, int table, const msa_raw_db *db, int have, const void *key, size_t klen,
                  const uint8_t **val, size_t *len) {
    int rc = have ? msa_raw_get(s->r, db, key, klen, val, len) : MSA_ECORRUPT;
    if (rc == MSA_OK || !s->lost.n) return rc;
    orphan q = {table, key, NULL, klen, 0};
    orphan *f = bsearch(&q, s->lost.v, s->lost.n, sizeof q, orphan_cmp);
    if (!f) return rc;
    *val = f->val;
    *len = f->vlen;
    return MSA_OK;
}

/* The tokens of chunk `c` that can be trusted: count, or -1 when damaged. */
static int64_t chunk_ok(sv *s, const msa_srec *r, uint32_t c, const uint8_t **val, size_t *len) {
    uint8_t kb[12];
    msa_key_tokens(kb, r->sid, c);
    if (lookup(s, T_TOKENS, &s->tokens, s->have_tokens, kb, 12, val, len)) return -1;
    const uint8_t *b = *val;
    uint32_t cnt = *len >= 8 ? msa_get_le32(b + 4) : 0;
    if (*len < 8 || cnt > MSA_TOK_CHUNK || *len != 8 + 4 * (size_t)cnt ||
        msa_crc32c(0, b + 4, *len - 4) != msa_get_le32(b))
        return -1;
    return cnt;
}

/* Block (layer, b) of a session: its entry and value, verified in full.
 * Returns MSA_OK or a status with the reason in msa_last_error(). */
static int block_ok(sv *s, const msa_srec *r, int layer, uint64_t b, msa_bent *e, const uint8_t **val,
                    size_t *len) {
    const msa_store_shape *sh = &r->shape;
    uint8_t kb[20];
    msa_key_block(kb, r->sid, (uint32_t)layer, b);
    const uint8_t *ev;
    size_t el;
    int rc = lookup(s, T_BLOCKMAP, &s->blockmap, s->have_blockmap, kb, 20, &ev, &el);
    if (rc) return msa_error(MSA_ECORRUPT, "its block entry is %s", rc == MSA_ENOTFOUND ? "missing" : "on a damaged page");
    MDB_val v = {el, (void *)ev};
    if ((rc = msa_bent_decode(&v, e))) return rc;
    uint8_t ib[8];
    msa_put_be64(ib, e->id);
    rc = lookup(s, T_BLOCKS, &s->blocks, s->have_blocks, ib, 8, val, len);
    if (rc) return msa_error(MSA_ECORRUPT, "stored block %llu is %s", (unsigned long long)e->id,
                             rc == MSA_ENOTFOUND ? "missing" : "on a damaged page");
    MDB_val bv = {*len, (void *)*val};
    if ((rc = msa_segs_resolve(s->segs, &bv)))
        return msa_error_context(rc, "stored block %llu", (unsigned long long)e->id);
    *val = bv.mv_data;
    *len = bv.mv_size;
    uint64_t nb = msa_blocks_for(r->n_tokens, sh->block_size);
    uint32_t want = b + 1 < nb ? (uint32_t)sh->block_size : (uint32_t)(r->n_tokens - (nb - 1) * sh->block_size);
    if (e->n_tokens != want || e->stored_len != *len)
        return msa_error(MSA_ECORRUPT, "its entry does not match the session (%u tokens, %u bytes)", e->n_tokens,
                         e->stored_len);
    size_t kbytes = (size_t)sh->n_kv_heads * sh->block_size * sh->head_dim * msa_dtype_size(sh->kv_dtype);
    size_t ibytes = (size_t)sh->idx_key_heads * sh->block_size * sh->idx_dim * msa_dtype_size(sh->idx_dtype);
    if (kbytes > s->kcap || ibytes > s->icap) {
        free(s->kbuf); free(s->vbuf); free(s->ibuf);
        s->kbuf = malloc(kbytes);
        s->vbuf = malloc(kbytes);
        s->ibuf = malloc(ibytes);
        s->kcap = kbytes;
        s->icap = ibytes;
        if (!s->kbuf || !s->vbuf || !s->ibuf) {
            s->kcap = s->icap = 0;
            return msa_error(MSA_ENOMEM, "salvage: block buffers");
        }
    }
    msa_codec_shape cs = msa_codec_shape_of(sh);
    int n = 0;
    if ((rc = msa_block_decode(&cs, *val, *len, s->kbuf, s->vbuf, s->ibuf, &n, 1))) return rc;
    if ((uint32_t)n != e->n_tokens) return msa_error(MSA_ECORRUPT, "fill %d, its entry says %u", n, e->n_tokens);
    return MSA_OK;
}

typedef struct wr {
    sv *s;
    const char *name;
    msa_srec r;         /* the source record */
    uint64_t keep;      /* tokens copied */
} wr;

static int write_fn(MDB_txn *t, void *vp) {
    wr *w = vp;
    sv *s = w->s;
    msa_store *st = s->dst;
    const msa_store_shape *sh = &w->r.shape;
    idmap_settle(&s->ids, 0); /* a rerun: forget what the last attempt added */
    MDB_val k = {strlen(w->name), (void *)w->name}, v;
    int rc = mdb_get(t, st->sessions, &k, &v);
    if (rc == 0) return msa_error(MSA_EEXIST, "salvage: session '%s' is in the new store twice", w->name);
    msa_srec n = w->r;
    if ((rc = msa_meta_next(t, st, "next_session", &n.sid, 1))) return rc;
    n.n_tokens = w->keep;
    n.gen = 0;
    n.raw_bytes = n.stored_bytes = 0;
    /* tokens */
    uint8_t *buf = NULL;
    for (uint32_t c = 0; (uint64_t)c * MSA_TOK_CHUNK < w->keep; c++) {
        const uint8_t *val;
        size_t len;
        int64_t cnt = chunk_ok(s, &w->r, c, &val, &len);
        uint64_t take = w->keep - (uint64_t)c * MSA_TOK_CHUNK;
        if (take > MSA_TOK_CHUNK) take = MSA_TOK_CHUNK;
        if (cnt < (int64_t)take) { free(buf); return msa_error(MSA_ECORRUPT, "salvage: token chunk %u changed", c); }
        uint8_t kb[12];
        msa_key_tokens(kb, n.sid, c);
        MDB_val tk = {12, kb}, tv = {len, (void *)val};
        if ((uint64_t)cnt != take) { /* the cut falls in this chunk */
            if (!buf && !(buf = malloc(8 + 4 * MSA_TOK_CHUNK))) return msa_error(MSA_ENOMEM, "salvage: tokens");
            memcpy(buf + 8, val + 8, 4 * take);
            msa_put_le32(buf + 4, (uint32_t)take);
            msa_put_le32(buf, msa_crc32c(0, buf + 4, 4 + 4 * take));
            tv.mv_size = 8 + 4 * take;
            tv.mv_data = buf;
        }
        if ((rc = msa_put(t, st->tokens, &tk, &tv, 0))) {
            free(buf);
            return msa_mdb_status(rc, "salvage: session '%s': writing tokens", w->name);
        }
    }
    free(buf);
    /* blocks */
    uint64_t nb = msa_blocks_for(w->keep, sh->block_size);
    for (int l = 0; l < sh->n_layers; l++)
        for (uint64_t b = 0; b < nb; b++) {
            msa_bent e;
            const uint8_t *val;
            size_t len;
            if ((rc = block_ok(s, &w->r, l, b, &e, &val, &len)))
                return msa_error_context(rc, "salvage: session '%s', layer %d, block %llu changed", w->name, l,
                                         (unsigned long long)b);
            uint64_t to = idmap_get(&s->ids, e.id);
            if (to) {
                if ((rc = msa_block_addref(t, st, to))) return rc;
            } else {
                if ((rc = msa_meta_next(t, st, "next_block", &to, 1))) return rc;
                uint8_t ib[8];
                msa_put_be64(ib, to);
                MDB_val bk = {8, ib}, bv = {len, (void *)val};
                if ((rc = msa_put(t, st->blocks, &bk, &bv, MDB_APPEND)))
                    return msa_mdb_status(rc, "salvage: session '%s': writing a block", w->name);
                if ((rc = idmap_put(&s->ids, e.id, to))) return rc;
            }
            e.id = to;
            uint8_t kb[20], eb[1100];
            msa_key_block(kb, n.sid, (uint32_t)l, b);
            MDB_val ek = {20, kb}, ev = {msa_bent_encode(&e, eb), eb};
            if ((rc = msa_put(t, st->blockmap, &ek, &ev, 0)))
                return msa_mdb_status(rc, "salvage: session '%s': writing a block entry", w->name);
            n.raw_bytes += e.raw_len;
            n.stored_bytes += e.stored_len;
        }
    return msa_put_srec(t, st, w->name, &n);
}

/* Verifies one session and copies what is intact. */
static int salvage_one(sv *s, const found *f) {
    msa_store_salvage_stats *x = s->stats;
    msa_srec r;
    MDB_val v = {f->len, f->rec};
    msa_error_clear();
    if (msa_srec_decode(&v, &r)) {
        x->sessions_lost++;
        x->damaged++;
        say(s, "session '%s': left out: %s", f->name, msa_last_error());
        return MSA_OK;
    }
    const msa_store_shape *sh = &r.shape;
    uint64_t keep = r.n_tokens;
    char why[900] = "";
    /* tokens: the first chunk that is damaged, missing or short */
    for (uint32_t c = 0; (uint64_t)c * MSA_TOK_CHUNK < r.n_tokens; c++) {
        const uint8_t *val;
        size_t len;
        int64_t cnt = chunk_ok(s, &r, c, &val, &len);
        uint64_t want = r.n_tokens - (uint64_t)c * MSA_TOK_CHUNK;
        if (want > MSA_TOK_CHUNK) want = MSA_TOK_CHUNK;
        if (cnt != (int64_t)want) {
            keep = (uint64_t)c * MSA_TOK_CHUNK;
            snprintf(why, sizeof why, "token chunk %u is %s", c, cnt < 0 ? "damaged or missing" : "short");
            break;
        }
    }
    if (keep < r.n_tokens) keep = keep / (uint64_t)sh->block_size * (uint64_t)sh->block_size;
    /* blocks: every layer up to the cut so far */
    for (int l = 0; l < sh->n_layers; l++) {
        uint64_t nb = msa_blocks_for(keep, sh->block_size);
        for (uint64_t b = 0; b < nb; b++) {
            msa_bent e;
            const uint8_t *val;
            size_t len;
            msa_error_clear();
            int rc = block_ok(s, &r, l, b, &e, &val, &len);
            if (rc == MSA_ENOMEM) return rc;
            if (rc) {
                keep = b * (uint64_t)sh->block_size;
                snprintf(why, sizeof why, "layer %d, block %llu: %s", l, (unsigned long long)b, msa_last_error());
                x->damaged++;
                break;
            }
        }
    }
    if (keep < r.n_tokens && why[0] && strncmp(why, "layer", 5)) x->damaged++;
    if (s->dst) {
        wr w = {s, f->name, r, keep};
        int rc = msa_with_write(s->dst, write_fn, &w, f->name);
        idmap_settle(&s->ids, rc == MSA_OK);
        if (rc) return msa_error_context(rc, "salvage: copying session '%s'", f->name);
    }
    x->tokens_copied += keep;
    x->tokens_lost += r.n_tokens - keep;
    x->blocks_copied += msa_blocks_for(keep, sh->block_size) * (uint64_t)sh->n_layers;
    const char *verb = s->dst ? "copied" : "intact";
    if (keep == r.n_tokens) {
        x->sessions_copied++;
        say(s, "session '%s': %s (%llu tokens)", f->name, verb, (unsigned long long)keep);
    } else {
        x->sessions_truncated++;
        say(s, "session '%s': %s %llu of %llu tokens, up to its first damage: %s", f->name,
            s->dst ? "copied the first" : "only the first", (unsigned long long)keep,
            (unsigned long long)r.n_tokens, why);
    }
    return MSA_OK;
}

static void session_page_damage(void *ctx, const char *line) {
    sv *s = ctx;
    say(s, "the sessions table has a damaged page (%s): its sessions are looked for among the pages "
        "no intact tree reaches", line);
}

int msa_store_salvage(const char *src_dir, const char *dst_dir, void (*report)(void *ctx, const char *line),
                      void *ctx, msa_store_salvage_stats *stats) {
    msa_store_salvage_stats local;
    if (!stats) stats = &local;
    memset(stats, 0, sizeof *stats);
    if (!src_dir || !*src_dir) return msa_error(MSA_EINVAL, "salvage: no source store");
    char path[4200];
    if (dst_dir) {
        snprintf(path, sizeof path, "%s/data.mdb", dst_dir);
        if (!access(path, F_OK))
            return msa_error(MSA_EEXIST, "salvage: %s already holds a store; give a new directory", dst_dir);
    }
    snprintf(path, sizeof path, "%s/msa-mem.lock", src_dir);
    int lock = open(path, O_RDONLY | O_CLOEXEC);
    if (lock >= 0 && flock(lock, LOCK_EX | LOCK_NB)) {
        close(lock);
        return msa_error(MSA_EBUSY, "salvage: %s is in use by another process; salvage needs it alone", src_dir);
    }
    snprintf(path, sizeof path, "%s/data.mdb", src_dir);
    sv s;
    memset(&s, 0, sizeof s);
    s.report = report;
    s.ctx = ctx;
    s.stats = stats;
    int rc = msa_segs_new(src_dir, &s.segs);
    if (!rc) rc = msa_raw_open(path, 0, &s.r);
    if (rc == MSA_ENOTFOUND) rc = msa_error(MSA_ENOTFOUND, "salvage: no store at %s", src_dir);
    if (rc) goto done;
    uint64_t nf = 0;
    if ((rc = msa_raw_check(s.r, 1, damage_line, &s, &nf))) goto done;
    if (nf) { /* what the damaged pages cut off is still in the file */
        uint64_t np = 0;
        rc = msa_raw_scan(s.r, collect_orphan, &s.lost, &np);
        if (s.lost.oom) rc = msa_error(MSA_ENOMEM, "salvage: %zu loose entries", s.lost.n);
        if (rc) goto done;
        qsort(s.lost.v, s.lost.n, sizeof *s.lost.v, orphan_cmp);
        say(&s, "read %llu pages that no intact tree reaches: %zu entries recognised by their checksums",
            (unsigned long long)np, s.lost.n);
    }
    /* a table the damaged main table no longer names: its entries are
     * among the loose pages the scan reads */
    int have_meta = !msa_raw_find_db(s.r, "meta", &s.meta);
    s.have_sessions = !msa_raw_find_db(s.r, "sessions", &s.sessions);
    if (!have_meta && !s.lost.n) {
        rc = msa_error(MSA_ECORRUPT, "salvage: %s: the store's tables cannot be found (the LMDB main table is "
                       "damaged) and no page outside them holds a record: nothing can be salvaged", src_dir);
        goto done;
    }
    s.have_tokens = !msa_raw_find_db(s.r, "tokens", &s.tokens);
    s.have_blockmap = !msa_raw_find_db(s.r, "blockmap", &s.blockmap);
    s.have_blocks = !msa_raw_find_db(s.r, "blocks", &s.blocks);
    if (!have_meta) {
        say(&s, "the store's format record cannot be read (its table is lost): reading it as format version %d",
            MSA_STORE_FORMAT_VERSION);
    } else {
        const uint8_t *fv;
        size_t fl;
        int g = msa_raw_get(s.r, &s.meta, "format", 6, &fv, &fl);
        if (g || fl != 16 || memcmp(fv, MSA_STORE_MAGIC, 8) || msa_crc32c(0, fv, 12) != msa_get_le32(fv + 12)) {
            rc = msa_error(g == MSA_ENOTFOUND ? MSA_EFORMAT : MSA_ECORRUPT,
                           "salvage: %s: %s", src_dir, g == MSA_ENOTFOUND ? "not an msa-mem store (no format record)"
                                                                           : "the format record is damaged");
            goto done;
        }
        if (msa_get_le32(fv + 8) > MSA_STORE_FORMAT_VERSION) {
            rc = msa_error(MSA_EVERSION, "salvage: %s: store format version %u; this build reads %d", src_dir,
                           msa_get_le32(fv + 8), MSA_STORE_FORMAT_VERSION);
            goto done;
        }
    }
    found_list fl = {0};
    uint64_t bad_pages = 0;
    if (s.have_sessions)
        rc = msa_raw_iter(s.r, &s.sessions, "sessions", NULL, 0, collect_session, &fl, session_page_damage, &s,
                          &bad_pages);
    if (fl.oom) rc = msa_error(MSA_ENOMEM, "salvage: session list");
    /* sessions whose records only loose pages hold */
    size_t in_tree = fl.n;
    for (size_t i = 0; !rc && i < s.lost.n; i++) {
        orphan *o = &s.lost.v[i];
        if (o->table != T_SESSIONS) continue;
        int dup = 0;
        for (size_t j = 0; j < fl.n && !dup; j++)
            dup = strlen(fl.v[j].name) == o->klen && !memcmp(fl.v[j].name, o->key, o->klen);
        if (dup) continue;
        if (collect_session(&fl, o->key, o->klen, o->val, o->vlen, 0)) rc = msa_error(MSA_ENOMEM, "salvage");
    }
    if (fl.n > in_tree)
        say(&s, "%zu session records were found on pages the sessions table no longer reaches", fl.n - in_tree);
    stats->sessions_seen = fl.n;
    if (!rc && dst_dir) {
        msa_store_params p = msa_store_default_params();
        p.dir = dst_dir;
        rc = msa_store_open(&p, &s.dst);
    }
    uint64_t not_names = 0;
    for (size_t i = 0; !rc && i < fl.n; i++) {
        /* session names have no control characters (name_check): such a key
         * is not a session, the table's damaged record points elsewhere */
        const char *c = fl.v[i].name;
        while (*c && (unsigned char)*c >= 0x20) c++;
        if (*c || !fl.v[i].name[0]) {
            not_names++;
            continue;
        }
        rc = salvage_one(&s, &fl.v[i]);
    }
    if (not_names) {
        stats->damaged++;
        say(&s, "the sessions table holds %llu keys that are no session names: its record in the main table is "
            "damaged", (unsigned long long)not_names);
    }
    for (size_t i = 0; i < fl.n; i++) free(fl.v[i].rec);
    free(fl.v);
done:
    msa_store_close(s.dst);
    msa_raw_close(s.r);
    msa_segs_free(s.segs);
    free(s.ids.src); free(s.ids.dst); free(s.ids.fresh);
    free(s.kbuf); free(s.vbuf); free(s.ibuf);
    free(s.lost.v);
    if (lock >= 0) close(lock);
    return rc;
}
