/*
 * store.c: the store (an LMDB environment in a directory), its sessions,
 * append transactions and the read path.
 *
 * A transaction compresses each put at once and keeps the values in
 * memory; only msa_store_txn_commit() takes LMDB's write lock, writes
 * everything in one LMDB transaction and commits. That keeps the lock short
 * (other processes' writers wait for one commit, not for a forward pass),
 * and it lets a commit that hits MDB_MAP_FULL abort, grow the map and run
 * again from the buffered values. A commit checks that the session has not
 * moved since begin (its generation counter), so two appenders cannot
 * interleave.
 *
 * Known limits: a session's whole token list is rewritten only in its last
 * chunk (4096 tokens per LMDB value); block entries are one LMDB value per
 * (layer, block), so per-token decode appends rewrite the partial block of
 * every layer, which is what keeping the last block on disk costs.
 */
#include "persist/store_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

/* ---- the one LMDB -> MSA mapping ----------------------------------------- */

int msa_mdb_status(int rc, const char *fmt, ...) {
    int st;
    switch (rc) {
    case 0: return MSA_OK;
    case MDB_NOTFOUND: case ENOENT: st = MSA_ENOTFOUND; break;
    case MDB_MAP_FULL: case ENOSPC: case EDQUOT: st = MSA_ENOSPC; break;
    case MDB_READERS_FULL: case EAGAIN: case EBUSY: st = MSA_EBUSY; break;
    case ENOMEM: st = MSA_ENOMEM; break;
    case MDB_CORRUPTED: case MDB_PAGE_NOTFOUND: case MDB_INVALID: st = MSA_ECORRUPT; break;
    case MDB_VERSION_MISMATCH: st = MSA_EVERSION; break;
    case EINVAL: case MDB_BAD_VALSIZE: case MDB_BAD_DBI: st = MSA_EINVAL; break;
    default: st = MSA_EIO; break;
    }
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return msa_error(st, "%s: %s", what, mdb_strerror(rc));
}

int msa_put(MDB_txn *t, MDB_dbi d, MDB_val *k, MDB_val *v, unsigned flags) {
    int f = msa_fault_point();
    return f ? f : mdb_put(t, d, k, v, flags);
}

int msa_del(MDB_txn *t, MDB_dbi d, MDB_val *k) {
    int f = msa_fault_point();
    return f ? f : mdb_del(t, d, k, NULL);
}

int64_t msa_unix_now(void) { return (int64_t)time(NULL); }

/* ---- records ----------------------------------------------------------------- */

void msa_key_tokens(uint8_t k[12], uint64_t sid, uint32_t chunk) {
    msa_put_be64(k, sid);
    msa_put_be32(k + 8, chunk);
}

void msa_key_block(uint8_t k[20], uint64_t sid, uint32_t layer, uint64_t block) {
    msa_put_be64(k, sid);
    msa_put_be32(k + 8, layer);
    msa_put_be64(k + 12, block);
}

uint64_t msa_blocks_for(uint64_t n, int bs) { return (n + (uint64_t)bs - 1) / (uint64_t)bs; }

int msa_shape_check(const msa_store_shape *s) {
    if (!s || s->n_layers < 1 || s->n_layers > 4096 || s->n_kv_heads < 1 || s->n_kv_heads > 1024 ||
        s->head_dim < 1 || s->head_dim > 4096 || s->idx_dim < 1 || s->idx_dim > 4096 ||
        (s->idx_key_heads != 1 && s->idx_key_heads != s->n_kv_heads) || s->block_size < 1 ||
        s->block_size > 65536 || (unsigned)s->kv_dtype > MSA_DTYPE_BF16 ||
        (unsigned)s->idx_dtype > MSA_DTYPE_BF16)
        return msa_error(MSA_EINVAL, "invalid session shape (layers %d, kv heads %d, head dim %d, "
                         "index heads %d, index dim %d, block %d)",
                         s ? s->n_layers : 0, s ? s->n_kv_heads : 0, s ? s->head_dim : 0,
                         s ? s->idx_key_heads : 0, s ? s->idx_dim : 0, s ? s->block_size : 0);
    size_t kvb = (size_t)s->n_kv_heads * s->block_size * s->head_dim * msa_dtype_size(s->kv_dtype);
    if (kvb > (256u << 20))
        return msa_error(MSA_EINVAL, "a K block of %zu bytes is too large", kvb);
    return MSA_OK;
}

msa_codec_shape msa_codec_shape_of(const msa_store_shape *s) {
    msa_codec_shape c = {s->n_kv_heads, s->head_dim, s->idx_key_heads, s->idx_dim,
                         s->block_size, s->kv_dtype, s->idx_dtype};
    return c;
}

enum { SREC_FIXED = 104 };

size_t msa_srec_encode(const msa_srec *r, uint8_t *b) {
    size_t fl = strlen(r->fingerprint), pl = strlen(r->parent);
    uint32_t np = MSA_SREC_PARAMS;
    while (np && !r->params[np - 1]) np--;
    msa_put_le32(b + 4, np ? 2 : 1);
    msa_put_le64(b + 8, r->sid);
    msa_put_le64(b + 16, r->n_tokens);
    msa_put_le64(b + 24, r->raw_bytes);
    msa_put_le64(b + 32, r->stored_bytes);
    msa_put_le64(b + 40, r->gen);
    msa_put_le64(b + 48, (uint64_t)r->created);
    msa_put_le64(b + 56, (uint64_t)r->last_use);
    const msa_store_shape *s = &r->shape;
    int f[8] = {s->n_layers, s->n_kv_heads, s->head_dim, s->idx_key_heads,
                s->idx_dim, s->block_size, (int)s->kv_dtype, (int)s->idx_dtype};
    for (int i = 0; i < 8; i++) msa_put_le32(b + 64 + 4 * i, (uint32_t)f[i]);
    msa_put_le32(b + 96, (uint32_t)fl);
    msa_put_le32(b + 100, (uint32_t)pl);
    memcpy(b + SREC_FIXED, r->fingerprint, fl);
    memcpy(b + SREC_FIXED + fl, r->parent, pl);
    size_t n = SREC_FIXED + fl + pl;
    if (np) { /* version 2: the session's parameters */
        msa_put_le32(b + n, np);
        for (uint32_t i = 0; i < np; i++) msa_put_le32(b + n + 4 + 4 * i, (uint32_t)r->params[i]);
        n += 4 + 4 * (size_t)np;
    }
    msa_put_le32(b, msa_crc32c(0, b + 4, n - 4));
    return n;
}

int msa_srec_decode(const MDB_val *v, msa_srec *r) {
    const uint8_t *b = v->mv_data;
    memset(r, 0, sizeof *r);
    if (v->mv_size < SREC_FIXED) return msa_error(MSA_ECORRUPT, "session record too short");
    if (msa_crc32c(0, b + 4, v->mv_size - 4) != msa_get_le32(b))
        return msa_error(MSA_ECORRUPT, "session record checksum mismatch");
    uint32_t version = msa_get_le32(b + 4);
    if (version != 1 && version != 2) return msa_error(MSA_EVERSION, "session record version %u", version);
    uint32_t fl = msa_get_le32(b + 96), pl = msa_get_le32(b + 100);
    if (fl > MSA_STORE_FINGERPRINT_MAX || pl > MSA_STORE_NAME_MAX || SREC_FIXED + fl + pl > v->mv_size)
        return msa_error(MSA_ECORRUPT, "session record malformed");
    size_t end = SREC_FIXED + fl + pl;
    if (version == 2) { /* the session's parameters; more than we know are skipped */
        uint32_t np = end + 4 <= v->mv_size ? msa_get_le32(b + end) : 0;
        if (end + 4 > v->mv_size || np == 0 || np > 1024 || end + 4 + 4 * (size_t)np != v->mv_size)
            return msa_error(MSA_ECORRUPT, "session record malformed (parameters)");
        for (uint32_t i = 0; i < np && i < MSA_SREC_PARAMS; i++)
            r->params[i] = (int32_t)msa_get_le32(b + end + 4 + 4 * i);
        end += 4 + 4 * (size_t)np;
    }
    if (end != v->mv_size) return msa_error(MSA_ECORRUPT, "session record malformed");
    r->sid = msa_get_le64(b + 8);
    r->n_tokens = msa_get_le64(b + 16);
    r->raw_bytes = msa_get_le64(b + 24);
    r->stored_bytes = msa_get_le64(b + 32);
    r->gen = msa_get_le64(b + 40);
    r->created = (int64_t)msa_get_le64(b + 48);
    r->last_use = (int64_t)msa_get_le64(b + 56);
    int f[8];
    for (int i = 0; i < 8; i++) f[i] = (int)msa_get_le32(b + 64 + 4 * i);
    msa_store_shape s = {f[0], f[1], f[2], f[3], f[4], f[5], (msa_dtype)f[6], (msa_dtype)f[7]};
    r->shape = s;
    memcpy(r->fingerprint, b + SREC_FIXED, fl);
    memcpy(r->parent, b + SREC_FIXED + fl, pl);
    if (msa_shape_check(&s)) return msa_error(MSA_ECORRUPT, "session record has an invalid shape");
    return MSA_OK;
}

enum { BENT_FIXED = 28 };

size_t msa_bent_encode(const msa_bent *e, uint8_t *b) {
    size_t tl = strlen(e->tag);
    msa_put_le32(b + 4, e->n_tokens);
    msa_put_le64(b + 8, e->id);
    msa_put_le32(b + 16, e->stored_len);
    msa_put_le32(b + 20, e->raw_len);
    msa_put_le32(b + 24, (uint32_t)tl);
    memcpy(b + BENT_FIXED, e->tag, tl);
    msa_put_le32(b, msa_crc32c(0, b + 4, BENT_FIXED + tl - 4));
    return BENT_FIXED + tl;
}

int msa_bent_decode(const MDB_val *v, msa_bent *e) {
    const uint8_t *b = v->mv_data;
    if (v->mv_size < BENT_FIXED || msa_crc32c(0, b + 4, v->mv_size - 4) != msa_get_le32(b))
        return msa_error(MSA_ECORRUPT, "block entry checksum mismatch");
    uint32_t tl = msa_get_le32(b + 24);
    if (tl > MSA_STORE_TAG_MAX || BENT_FIXED + tl != v->mv_size)
        return msa_error(MSA_ECORRUPT, "block entry malformed");
    e->n_tokens = msa_get_le32(b + 4);
    e->id = msa_get_le64(b + 8);
    e->stored_len = msa_get_le32(b + 16);
    e->raw_len = msa_get_le32(b + 20);
    memcpy(e->tag, b + BENT_FIXED, tl);
    e->tag[tl] = 0;
    return MSA_OK;
}

int msa_get_srec(MDB_txn *t, msa_store *st, const char *name, msa_srec *r) {
    MDB_val k = {strlen(name), (void *)name}, v;
    int rc = mdb_get(t, st->sessions, &k, &v);
    if (rc == MDB_NOTFOUND) return msa_error(MSA_ENOTFOUND, "no session '%s'", name);
    if (rc) return msa_mdb_status(rc, "session '%s'", name);
    rc = msa_srec_decode(&v, r);
    return rc ? msa_error_context(rc, "session '%s'", name) : MSA_OK;
}

int msa_put_srec(MDB_txn *t, msa_store *st, const char *name, const msa_srec *r) {
    uint8_t buf[MSA_SREC_MAX];
    MDB_val k = {strlen(name), (void *)name}, v = {msa_srec_encode(r, buf), buf};
    int rc = msa_put(t, st->sessions, &k, &v, 0);
    return rc ? msa_mdb_status(rc, "session '%s': writing its record", name) : MSA_OK;
}

int msa_meta_next(MDB_txn *t, msa_store *st, const char *key, uint64_t *out, uint64_t n) {
    MDB_val k = {strlen(key), (void *)key}, v;
    uint64_t cur = 1;
    int rc = mdb_get(t, st->meta, &k, &v);
    if (rc == 0 && v.mv_size == 8) cur = msa_get_le64(v.mv_data);
    else if (rc && rc != MDB_NOTFOUND) return msa_mdb_status(rc, "store meta '%s'", key);
    *out = cur;
    uint8_t b[8];
    msa_put_le64(b, cur + n);
    v.mv_size = 8;
    v.mv_data = b;
    rc = msa_put(t, st->meta, &k, &v, 0);
    return rc ? msa_mdb_status(rc, "store meta '%s'", key) : MSA_OK;
}

int msa_block_addref(MDB_txn *t, msa_store *st, uint64_t id) {
    uint8_t kb[8], vb[4];
    msa_put_be64(kb, id);
    MDB_val k = {8, kb}, v;
    uint32_t n = 1;
    int rc = mdb_get(t, st->refs, &k, &v);
    if (rc == 0 && v.mv_size == 4) n = msa_get_le32(v.mv_data);
    else if (rc && rc != MDB_NOTFOUND) return msa_mdb_status(rc, "block %llu references", (unsigned long long)id);
    msa_put_le32(vb, n + 1);
    v.mv_size = 4;
    v.mv_data = vb;
    rc = msa_put(t, st->refs, &k, &v, 0);
    return rc ? msa_mdb_status(rc, "block %llu references", (unsigned long long)id) : MSA_OK;
}

int msa_block_release(MDB_txn *t, msa_store *st, uint64_t id) {
    uint8_t kb[8], vb[4];
    msa_put_be64(kb, id);
    MDB_val k = {8, kb}, v;
    int rc = mdb_get(t, st->refs, &k, &v);
    if (rc == 0 && v.mv_size == 4 && msa_get_le32(v.mv_data) > 2) {
        msa_put_le32(vb, msa_get_le32(v.mv_data) - 1);
        v.mv_size = 4;
        v.mv_data = vb;
        rc = msa_put(t, st->refs, &k, &v, 0);
    } else if (rc == 0) {
        rc = msa_del(t, st->refs, &k);
    } else if (rc == MDB_NOTFOUND) {
        /* LMDB frees as many pages as the overflow page's header says:
         * a damaged header would free pages that other values use */
        MDB_val bv;
        if (mdb_get(t, st->blocks, &k, &bv) == 0 &&
            !msa_raw_overflow_ok(st->map_base, st->map_size, st->psize, bv.mv_data, bv.mv_size))
            return msa_error(MSA_ECORRUPT, "releasing block %llu: its LMDB overflow page header is "
                             "damaged, its pages were not freed; `msa-mem salvage %s NEWDIR` copies "
                             "every intact session into a new store", (unsigned long long)id, st->dir);
        rc = msa_del(t, st->blocks, &k);
        if (rc == MDB_NOTFOUND) rc = 0; /* already gone: fsck reports such things */
    }
    return rc ? msa_mdb_status(rc, "releasing block %llu", (unsigned long long)id) : MSA_OK;
}

int msa_block_get(MDB_txn *t, msa_store *st, uint64_t id, MDB_val *v) {
    uint8_t kb[8];
    msa_put_be64(kb, id);
    MDB_val k = {8, kb};
    int rc = mdb_get(t, st->blocks, &k, v);
    if (rc == MDB_NOTFOUND) return MSA_ENOTFOUND;
    if (rc) return msa_mdb_status(rc, "reading block %llu", (unsigned long long)id);
    rc = msa_segs_resolve(st->segs, v);
    return rc ? msa_error_context(rc, "block %llu", (unsigned long long)id) : MSA_OK;
}

/* LMDB does not say where it mapped the file (mdb_env_info's me_mapaddr
 * is only the fixed address of MDB_FIXEDMAP). The store learns it from one
 * value it finds both through LMDB and in the file itself (lmdbraw.c): the
 * main table's record of the blocks table. msa_block_release needs it to
 * check an overflow page's header before LMDB frees the pages it names.
 * Called after every change of the map size (the map may move). */
static void learn_map_base(msa_store *st) {
    st->map_base = NULL;
    if (st->params.readonly) return;
    char path[4200];
    snprintf(path, sizeof path, "%s/data.mdb", st->dir);
    MDB_txn *t;
    if (mdb_txn_begin(st->env, NULL, MDB_RDONLY, &t)) return;
    MDB_dbi main_dbi;
    MDB_val k = {6, "blocks"}, v;
    msa_raw *r;
    if (mdb_dbi_open(t, NULL, 0, &main_dbi) == 0 && mdb_get(t, main_dbi, &k, &v) == 0 &&
        msa_raw_open(path, mdb_txn_id(t), &r) == 0) {
        const uint8_t *rv;
        size_t rl;
        if (msa_raw_get(r, msa_raw_main(r), "blocks", 6, &rv, &rl) == 0 && rl == v.mv_size &&
            !memcmp(rv, v.mv_data, rl))
            st->map_base = (const uint8_t *)v.mv_data - (rv - msa_raw_map(r));
        msa_raw_close(r);
    }
    mdb_txn_abort(t);
}

/* ---- transactions with map growth --------------------------------------------- */

static int grow_map(msa_store *st, const char *what) {
    size_t max = st->params.map_max;
    if (max && st->map_size >= max)
        return msa_error(MSA_ENOSPC, "%s: the store's map reached its limit of %zu bytes", what, max);
    size_t next = st->map_size * 2;
    if (next < st->map_size + (64u << 20)) next = st->map_size + (64u << 20);
    if (max && next > max) next = max;
    pthread_rwlock_wrlock(&st->grow);
    int rc = mdb_env_set_mapsize(st->env, next);
    pthread_rwlock_unlock(&st->grow);
    if (rc) return msa_mdb_status(rc, "%s: growing the map to %zu bytes", what, next);
    MDB_envinfo info;
    mdb_env_info(st->env, &info);
    st->map_size = info.me_mapsize;
    learn_map_base(st);
    return MSA_OK;
}

static int adopt_map_size(msa_store *st) {
    pthread_rwlock_wrlock(&st->grow);
    int rc = mdb_env_set_mapsize(st->env, 0);
    MDB_envinfo info;
    mdb_env_info(st->env, &info);
    st->map_size = info.me_mapsize;
    learn_map_base(st);
    pthread_rwlock_unlock(&st->grow);
    return rc;
}

/* Whether the store's file system is (nearly) full. LMDB turns a short
 * write, which is how a full disk usually shows first, into EIO ("short
 * write, filesystem full?" in mdb_page_flush), so a commit's EIO is
 * reported as MSA_ENOSPC when less than 1 MiB is left. */
static int disk_full(const msa_store *st) {
    struct statvfs v;
    return statvfs(st->dir, &v) == 0 && (uint64_t)v.f_bavail * v.f_frsize < (1u << 20);
}

int msa_with_write(msa_store *st, int (*fn)(MDB_txn *t, void *ctx), void *ctx, const char *what) {
    if (!st->env) return msa_error(MSA_EIO, "%s: the store handle is unusable after a failed reopen", what);
    if (st->params.readonly) return msa_error(MSA_EINVAL, "%s: the store is open read-only", what);
    for (int attempt = 0; attempt < 64; attempt++) {
        MDB_txn *t;
        pthread_rwlock_rdlock(&st->grow);
        int rc = mdb_txn_begin(st->env, NULL, 0, &t);
        pthread_rwlock_unlock(&st->grow);
        if (rc == MDB_MAP_RESIZED) {
            adopt_map_size(st);
            continue;
        }
        if (rc) return msa_mdb_status(rc, "%s: starting a write transaction", what);
        msa_error_clear();
        int st_rc = fn(t, ctx);
        if (st_rc == MSA_OK) {
            int f = msa_fault_point();
            rc = f ? f : mdb_txn_commit(t);
            if (f) mdb_txn_abort(t);
            if (rc == 0) return MSA_OK;
            if (rc == MDB_MAP_FULL) { /* the commit itself ran out of map */
                if ((st_rc = grow_map(st, what))) return st_rc;
                continue;
            }
            if (rc == EIO && disk_full(st)) /* LMDB reports a short write as EIO */
                return msa_error(MSA_ENOSPC, "%s: commit: no space left on device (%s)", what,
                                 st->dir);
            return msa_mdb_status(rc, "%s: commit", what);
        }
        mdb_txn_abort(t);
        /* fn ran out of map: LMDB reports MDB_MAP_FULL, which maps to
         * MSA_ENOSPC; grow unless the message came from a real disk */
        if (st_rc == MSA_ENOSPC && strstr(msa_last_error(), mdb_strerror(MDB_MAP_FULL))) {
            if ((st_rc = grow_map(st, what))) return st_rc;
            continue;
        }
        return st_rc;
    }
    return msa_error(MSA_EBUSY, "%s: gave up after repeated map resizes", what);
}

int msa_read_begin(msa_store *st, MDB_txn **t) {
    *t = NULL;
    if (!st->env) return msa_error(MSA_EIO, "%s: the store handle is unusable after a failed reopen", st->dir);
    for (int attempt = 0; attempt < 8; attempt++) {
        int rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, t);
        if (rc == 0) return MSA_OK;
        if (rc == MDB_MAP_RESIZED) {
            pthread_rwlock_unlock(&st->grow);
            adopt_map_size(st);
            pthread_rwlock_rdlock(&st->grow);
            continue;
        }
        if (rc == MDB_READERS_FULL) {
            int dead = 0;
            mdb_reader_check(st->env, &dead);
            if (dead) continue;
        }
        return msa_mdb_status(rc, "starting a read transaction");
    }
    return msa_error(MSA_EBUSY, "starting a read transaction: repeated map resizes");
}

void msa_read_end(msa_store *st, MDB_txn *t) {
    (void)st;
    if (t) mdb_txn_abort(t);
}

/* ---- open / close -------------------------------------------------------------- */

msa_store_params msa_store_default_params(void) {
    msa_store_params p;
    memset(&p, 0, sizeof p);
    p.durable = 1;
    p.create = 1;
    p.map_size = (size_t)1 << 30;
    p.level = 1;
    p.lossy = MSA_STORE_LOSSLESS;
    p.max_readers = 126;
    p.segment_min = MSA_SEG_MIN_VALUE;
    return p;
}

int msa_store_default_dir(char *buf, size_t n) {
    const char *x = getenv("XDG_DATA_HOME"), *h = getenv("HOME");
    int len;
    if (x && *x) len = snprintf(buf, n, "%s/msa-mem", x);
    else if (h && *h) len = snprintf(buf, n, "%s/.local/share/msa-mem", h);
    else return msa_error(MSA_ENOTFOUND, "no store directory: set XDG_DATA_HOME or HOME, or pass one");
    if (len < 0 || (size_t)len >= n) return msa_error(MSA_ERANGE, "store directory path too long");
    return MSA_OK;
}

static int mkdir_p(const char *path) {
    char tmp[4096];
    if (strlen(path) >= sizeof tmp) return msa_error(MSA_EINVAL, "path too long: %s", path);
    strcpy(tmp, path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) && errno != EEXIST) return msa_error(MSA_EIO, "mkdir %s: %s", tmp, strerror(errno));
        *p = '/';
    }
    if (mkdir(tmp, 0755) && errno != EEXIST) return msa_error(MSA_EIO, "mkdir %s: %s", tmp, strerror(errno));
    return MSA_OK;
}

#define LOCK_NAME "msa-mem.lock"

/* A directory we may create a store in: empty, or only our lock files. */
static int dir_is_free(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int ok = 1;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, LOCK_NAME) ||
            !strcmp(e->d_name, "lock.mdb"))
            continue;
        ok = 0;
        break;
    }
    closedir(d);
    return ok;
}

static int open_dbis(msa_store *st, MDB_txn *t, unsigned flags) {
    struct { const char *name; MDB_dbi *dbi; } dbs[] = {
        {"meta", &st->meta}, {"sessions", &st->sessions}, {"tokens", &st->tokens},
        {"blockmap", &st->blockmap}, {"blocks", &st->blocks}, {"refs", &st->refs}};
    for (int i = 0; i < 6; i++) {
        int rc = mdb_dbi_open(t, dbs[i].name, flags, dbs[i].dbi);
        if (rc == MDB_NOTFOUND) return msa_error(MSA_EFORMAT, "%s: not an msa-mem store (no '%s' table)", st->dir, dbs[i].name);
        if (rc) return msa_mdb_status(rc, "%s: opening table '%s'", st->dir, dbs[i].name);
    }
    return MSA_OK;
}

static int check_format(msa_store *st, MDB_txn *t) {
    MDB_val k = {6, "format"}, v;
    int rc = mdb_get(t, st->meta, &k, &v);
    if (rc == MDB_NOTFOUND) return msa_error(MSA_EFORMAT, "%s: not an msa-mem store (no format record)", st->dir);
    if (rc) return msa_mdb_status(rc, "%s: reading the format record", st->dir);
    const uint8_t *b = v.mv_data;
    if (v.mv_size != 16 || memcmp(b, MSA_STORE_MAGIC, 8) || msa_crc32c(0, b, 12) != msa_get_le32(b + 12))
        return msa_error(MSA_EFORMAT, "%s: not an msa-mem store (bad format record)", st->dir);
    uint32_t ver = msa_get_le32(b + 8);
    if (ver > MSA_STORE_FORMAT_VERSION || ver == 0)
        return msa_error(MSA_EVERSION, "%s: store format version %u, this build (%s) reads version %d "
                         "and older: open it with a newer msa-mem",
                         st->dir, ver, msa_version(), MSA_STORE_FORMAT_VERSION);
    st->format = ver;
    return MSA_OK;
}

int msa_put_format(MDB_txn *t, msa_store *st, uint32_t ver) {
    uint8_t b[16];
    memcpy(b, MSA_STORE_MAGIC, 8);
    msa_put_le32(b + 8, ver);
    msa_put_le32(b + 12, msa_crc32c(0, b, 12));
    MDB_val k = {6, "format"}, v = {16, b};
    int rc = msa_put(t, st->meta, &k, &v, 0);
    return rc ? msa_mdb_status(rc, "%s: writing the format record", st->dir) : MSA_OK;
}

static int init_store(msa_store *st) {
    MDB_txn *t;
    int rc = mdb_txn_begin(st->env, NULL, st->params.readonly ? MDB_RDONLY : 0, &t);
    if (rc) return msa_mdb_status(rc, "%s: starting a transaction", st->dir);
    /* A store's main table holds exactly our six tables; an empty one is a
     * store being created. Anything else is someone else's LMDB. */
    MDB_stat ms;
    MDB_dbi main_dbi;
    if ((rc = mdb_dbi_open(t, NULL, 0, &main_dbi)) || (rc = mdb_stat(t, main_dbi, &ms))) {
        mdb_txn_abort(t);
        return msa_mdb_status(rc, "%s: reading the main table", st->dir);
    }
    if (ms.ms_entries == 0) {
        if (st->params.readonly) {
            mdb_txn_abort(t);
            return msa_error(MSA_EFORMAT, "%s: empty environment, not an msa-mem store", st->dir);
        }
        if ((rc = open_dbis(st, t, MDB_CREATE))) goto fail;
        if ((rc = msa_put_format(t, st, MSA_STORE_FORMAT_VERSION))) goto fail;
        if ((rc = mdb_txn_commit(t))) return msa_mdb_status(rc, "%s: creating the store", st->dir);
        st->format = MSA_STORE_FORMAT_VERSION;
        return MSA_OK;
    }
    if ((rc = open_dbis(st, t, 0))) goto fail;
    if ((rc = check_format(st, t))) goto fail;
    if ((rc = mdb_txn_commit(t))) return msa_mdb_status(rc, "%s: opening tables", st->dir);
    return MSA_OK;
fail:
    mdb_txn_abort(t);
    return rc;
}

/* LMDB asserts where its pages are inconsistent and then aborts: nothing
 * can return from here. The trees are checked before LMDB walks them
 * (check_trees), so this is for damage the check cannot see; at least the
 * last line the user reads says what to do. */
static void lmdb_assert(MDB_env *env, const char *msg) {
    const char *dir = NULL;
    mdb_env_get_path(env, &dir);
    fprintf(stderr, "msa-mem: LMDB found the store %s damaged (%s); `msa-mem salvage %s NEWDIR` "
            "copies what is intact\n", dir ? dir : "", msg, dir ? dir : "DIR");
}

static void first_finding(void *ctx, const char *line) {
    char *buf = ctx;
    if (!buf[0]) snprintf(buf, 600, "%s", line);
}

/* Checks every LMDB tree of the snapshot a read transaction sees, page by
 * page (lmdbraw.c), so that no later LMDB call walks a damaged page: at
 * open, on branch and leaf pages (overflow pages are checked by fsck). */
static int check_trees(msa_store *st, int deep, void (*report)(void *, const char *), void *ctx,
                       uint64_t *n_findings) {
    char path[4200];
    snprintf(path, sizeof path, "%s/data.mdb", st->dir);
    *n_findings = 0;
    for (int attempt = 0; attempt < 8; attempt++) {
        MDB_txn *t;
        int rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, &t);
        if (rc == MDB_MAP_RESIZED) {
            mdb_env_set_mapsize(st->env, 0);
            continue;
        }
        if (rc) return msa_mdb_status(rc, "%s: starting a read transaction", st->dir);
        msa_raw *r;
        rc = msa_raw_open(path, mdb_txn_id(t), &r);
        if (rc == MSA_EBUSY) { /* a writer committed twice meanwhile */
            mdb_txn_abort(t);
            continue;
        }
        if (!rc) {
            rc = msa_raw_check(r, deep, report, ctx, n_findings);
            msa_raw_close(r);
        }
        mdb_txn_abort(t);
        return rc;
    }
    return msa_error(MSA_EBUSY, "%s: writers kept moving while the store was checked", st->dir);
}

int msa_store_check_trees(msa_store *st, int deep, void (*report)(void *, const char *), void *ctx,
                          uint64_t *n_findings) {
    pthread_rwlock_rdlock(&st->grow);
    int rc = check_trees(st, deep, report, ctx, n_findings);
    pthread_rwlock_unlock(&st->grow);
    return rc;
}

static int env_open_flags(msa_store *st, unsigned flags) {
    int rc = mdb_env_create(&st->env);
    if (rc) return rc;
    mdb_env_set_assert(st->env, lmdb_assert);
    mdb_env_set_maxdbs(st->env, 8);
    mdb_env_set_maxreaders(st->env, (unsigned)st->params.max_readers);
    mdb_env_set_mapsize(st->env, st->params.map_size);
    rc = mdb_env_open(st->env, st->dir, flags, 0644);
    if (rc) {
        mdb_env_close(st->env);
        st->env = NULL;
    }
    return rc;
}

int msa_store_env_open(msa_store *st) {
    /* readahead off: a block's index keys are read without its K and V
     * (codec.c prefetches exactly the planes a read needs) */
    unsigned flags = MDB_NOTLS | MDB_NORDAHEAD | (st->params.durable ? 0 : MDB_NOSYNC) |
                     (st->params.readonly ? MDB_RDONLY : 0);
    int rc = env_open_flags(st, flags);
    if ((rc == EACCES || rc == EROFS || rc == EPERM) && st->params.readonly) {
        /* a store we may read but not write (its lock file cannot be
         * opened for writing): read it without LMDB's lock table. Nobody
         * can write it through this process; a writer elsewhere is not
         * seen until it is reopened. */
        rc = env_open_flags(st, flags | MDB_NOLOCK);
    }
    if (rc == EACCES || rc == EROFS || rc == EPERM)
        return msa_error(MSA_EIO, "%s: the store is not writable (%s): this command writes to it; "
                         "ls, info, fsck and export read it as it is", st->dir, strerror(rc));
    if (rc) return msa_mdb_status(rc, "%s: opening the LMDB environment", st->dir);
    int dead = 0;
    mdb_reader_check(st->env, &dead);
    MDB_envinfo info;
    mdb_env_info(st->env, &info);
    st->map_size = info.me_mapsize;
    MDB_stat ms;
    mdb_env_stat(st->env, &ms);
    st->psize = ms.ms_psize;
    uint64_t nf = 0;
    char first[600] = "";
    rc = check_trees(st, 0, first_finding, first, &nf);
    if (!rc && nf)
        rc = msa_error(MSA_ECORRUPT, "%s: the store's file is damaged: %s%s; nothing was read or "
                       "changed. `msa-mem fsck` lists the damage; `msa-mem salvage %s NEWDIR` "
                       "(msa_store_salvage) copies every intact session into a new store",
                       st->dir, first, nf > 1 ? " (and more)" : "", st->dir);
    if (!rc) rc = init_store(st);
    if (!rc) learn_map_base(st);
    if (rc) {
        mdb_env_close(st->env);
        st->env = NULL;
    }
    return rc;
}

int msa_store_open(const msa_store_params *params, msa_store **out) {
    *out = NULL;
    msa_store_params p = params ? *params : msa_store_default_params();
    if (p.map_size < (1u << 20)) p.map_size = 1u << 20;
    if (p.map_max && p.map_size > p.map_max) p.map_size = p.map_max;
    if (p.max_readers < 1) p.max_readers = 126;
    if (!p.segment_min) p.segment_min = MSA_SEG_MIN_VALUE;
    if (p.level < -7 || p.level > 22) return msa_error(MSA_EINVAL, "zstd level %d out of range", p.level);
    char dbuf[4096];
    if (!p.dir || !*p.dir) {
        int rc = msa_store_default_dir(dbuf, sizeof dbuf);
        if (rc) return rc;
        p.dir = dbuf;
    }
    struct stat sb;
    char path[4200];
    if (stat(p.dir, &sb)) {
        if (!p.create || p.readonly) return msa_error(MSA_ENOTFOUND, "no store at %s", p.dir);
        int rc = mkdir_p(p.dir);
        if (rc) return rc;
    } else if (!S_ISDIR(sb.st_mode)) {
        return msa_error(MSA_EFORMAT, "%s is not a directory", p.dir);
    }
    snprintf(path, sizeof path, "%s/data.mdb", p.dir);
    if (access(path, F_OK)) {
        if (!p.create || p.readonly) return msa_error(MSA_ENOTFOUND, "no store at %s", p.dir);
        if (!dir_is_free(p.dir))
            return msa_error(MSA_EFORMAT, "%s holds other files and no msa-mem store; "
                             "refusing to create one there (use an empty or new directory)", p.dir);
    }
    msa_store *st = calloc(1, sizeof *st);
    if (!st || !(st->dir = strdup(p.dir))) {
        free(st);
        return msa_error(MSA_ENOMEM, "opening store %s", p.dir);
    }
    p.dir = st->dir;
    st->params = p;
    if (msa_segs_new(st->dir, &st->segs)) {
        free(st->dir);
        free(st);
        return msa_error(MSA_ENOMEM, "opening store %s", p.dir);
    }
    pthread_rwlock_init(&st->grow, NULL);
    pthread_mutex_init(&st->arena_mu, NULL);
    snprintf(path, sizeof path, "%s/" LOCK_NAME, st->dir);
    st->lock_fd = open(path, (p.readonly ? O_RDONLY : O_RDWR | O_CREAT) | O_CLOEXEC, 0644);
    if (st->lock_fd >= 0) flock(st->lock_fd, LOCK_SH);
    int rc = msa_store_env_open(st);
    if (rc) {
        msa_store_close(st);
        return rc;
    }
    *out = st;
    return MSA_OK;
}

static void arena_free(struct msa_arena *a);

void msa_store_close(msa_store *st) {
    if (!st) return;
    arena_free(st->spare);
    msa_segw_close(st->spare_w);
    msa_segs_free(st->segs);
    pthread_mutex_destroy(&st->arena_mu);
    if (st->env) mdb_env_close(st->env);
    if (st->lock_fd >= 0) close(st->lock_fd);
    pthread_rwlock_destroy(&st->grow);
    free(st->dir);
    free(st);
}

const char *msa_store_dir(const msa_store *st) { return st ? st->dir : NULL; }

void msa_store_set_threads(msa_store *st, int n_threads) { st->threads = n_threads < 0 ? 0 : n_threads; }

int msa_store_sync(msa_store *st) {
    /* segments first: LMDB's pointers must not reach the disk before the
     * bytes they name */
    int rc = st->params.readonly ? MSA_OK : msa_segs_sync(st->dir);
    if (rc) return rc;
    rc = mdb_env_sync(st->env, 1);
    return rc ? msa_mdb_status(rc, "%s: sync", st->dir) : MSA_OK;
}

/* ---- sessions -------------------------------------------------------------------- */

static int name_check(const char *name) {
    if (!name || !*name || strlen(name) > MSA_STORE_NAME_MAX)
        return msa_error(MSA_EINVAL, "session names are 1 to %d bytes", MSA_STORE_NAME_MAX);
    for (const char *c = name; *c; c++)
        if ((unsigned char)*c < 0x20) return msa_error(MSA_EINVAL, "session name with a control character");
    return MSA_OK;
}

int msa_name_check(const char *name) { return name_check(name); }

static int fp_check(const char *fp) {
    if (!fp || !*fp || strlen(fp) > MSA_STORE_FINGERPRINT_MAX)
        return msa_error(MSA_EINVAL, "model fingerprints are 1 to %d bytes", MSA_STORE_FINGERPRINT_MAX);
    for (const char *c = fp; *c; c++)
        if ((unsigned char)*c < 0x21 || (unsigned char)*c > 0x7e)
            return msa_error(MSA_EINVAL, "model fingerprint with a non-printable byte");
    return MSA_OK;
}

typedef struct create_ctx {
    msa_store *st;
    const char *name;
    msa_srec rec;
} create_ctx;

static int create_fn(MDB_txn *t, void *vp) {
    create_ctx *c = vp;
    MDB_val k = {strlen(c->name), (void *)c->name}, v;
    int rc = mdb_get(t, c->st->sessions, &k, &v);
    msa_srec old;
    if (rc == 0 && msa_srec_decode(&v, &old) == MSA_ECORRUPT)
        return msa_error(MSA_ECORRUPT, "session '%s' exists but its record is damaged; `msa-mem salvage "
                         "%s NEWDIR` copies every intact session into a new store", c->name, c->st->dir);
    if (rc == 0) return msa_error(MSA_EEXIST, "session '%s' already exists", c->name);
    if (rc != MDB_NOTFOUND) return msa_mdb_status(rc, "session '%s'", c->name);
    if ((rc = msa_meta_next(t, c->st, "next_session", &c->rec.sid, 1))) return rc;
    return msa_put_srec(t, c->st, c->name, &c->rec);
}

int msa_store_session_create(msa_store *st, const char *name, const char *fingerprint,
                             const msa_store_shape *shape) {
    int rc;
    if ((rc = name_check(name)) || (rc = fp_check(fingerprint)) || (rc = msa_shape_check(shape)))
        return rc;
    create_ctx c = {st, name, {0}};
    c.rec.shape = *shape;
    strcpy(c.rec.fingerprint, fingerprint);
    c.rec.created = c.rec.last_use = msa_unix_now();
    return msa_with_write(st, create_fn, &c, name);
}

static void info_of(const char *name, size_t name_len, const msa_srec *r, msa_store_session_info *o) {
    memset(o, 0, sizeof *o);
    memcpy(o->name, name, name_len);
    strcpy(o->fingerprint, r->fingerprint);
    strcpy(o->parent, r->parent);
    o->shape = r->shape;
    o->n_tokens = r->n_tokens;
    o->n_blocks = msa_blocks_for(r->n_tokens, r->shape.block_size);
    o->raw_bytes = r->raw_bytes;
    o->stored_bytes = r->stored_bytes + 4 * r->n_tokens;
    o->ratio = r->stored_bytes ? (double)r->raw_bytes / (double)r->stored_bytes : 0;
    o->created = r->created;
    o->last_use = r->last_use;
}

int msa_store_list(msa_store *st, msa_store_session_info **out, size_t *n) {
    *out = NULL;
    *n = 0;
    MDB_txn *t = NULL;
    MDB_cursor *c = NULL;
    pthread_rwlock_rdlock(&st->grow);
    int rc = msa_read_begin(st, &t);
    if (rc) goto done;
    if ((rc = mdb_cursor_open(t, st->sessions, &c))) {
        rc = msa_mdb_status(rc, "listing sessions");
        goto done;
    }
    size_t cap = 0;
    MDB_val k, v;
    for (int op = MDB_FIRST; (rc = mdb_cursor_get(c, &k, &v, op)) == 0; op = MDB_NEXT) {
        msa_srec r;
        if ((rc = msa_srec_decode(&v, &r))) {
            rc = msa_error_context(rc, "session '%.*s'", (int)k.mv_size, (char *)k.mv_data);
            break;
        }
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            void *p = realloc(*out, cap * sizeof **out);
            if (!p) { rc = msa_error(MSA_ENOMEM, "listing sessions"); break; }
            *out = p;
        }
        info_of(k.mv_data, k.mv_size < MSA_STORE_NAME_MAX ? k.mv_size : MSA_STORE_NAME_MAX, &r, &(*out)[(*n)++]);
    }
    if (rc == MDB_NOTFOUND) rc = MSA_OK;
    else if (rc > 0) rc = msa_mdb_status(rc, "listing sessions");
done:
    if (c) mdb_cursor_close(c);
    msa_read_end(st, t);
    pthread_rwlock_unlock(&st->grow);
    if (rc) {
        free(*out);
        *out = NULL;
        *n = 0;
    }
    return rc;
}

void msa_store_list_free(msa_store_session_info *list) { free(list); }

static int sess_read(msa_store_session *s, MDB_txn **t) {
    int f = msa_fault_read_point();
    if (f) return msa_mdb_status(f, "session '%s': starting a read transaction (injected fault)", s->name);
    pthread_rwlock_rdlock(&s->st->grow);
    int rc = msa_read_begin(s->st, t);
    if (rc) pthread_rwlock_unlock(&s->st->grow);
    return rc;
}

static void sess_read_end(msa_store_session *s, MDB_txn *t) {
    msa_read_end(s->st, t);
    pthread_rwlock_unlock(&s->st->grow);
}

int msa_store_session_open(msa_store *st, const char *name, const char *fingerprint,
                           msa_store_session **out) {
    *out = NULL;
    int rc = name_check(name);
    if (rc) return rc;
    msa_store_session *s = calloc(1, sizeof *s);
    if (!s) return msa_error(MSA_ENOMEM, "session '%s'", name);
    s->st = st;
    strcpy(s->name, name);
    MDB_txn *t;
    if ((rc = sess_read(s, &t))) {
        free(s);
        return rc;
    }
    rc = msa_get_srec(t, st, name, &s->rec);
    sess_read_end(s, t);
    if (!rc && fingerprint && strcmp(fingerprint, s->rec.fingerprint))
        rc = msa_error(MSA_EMODEL, "session '%s' was written by model %s, not by %s", name,
                       s->rec.fingerprint, fingerprint);
    if (rc) {
        free(s);
        return rc;
    }
    st->n_sessions_open++;
    *out = s;
    return MSA_OK;
}

void msa_store_session_close(msa_store_session *s) {
    if (!s) return;
    if (s->txn) msa_store_txn_abort(s->txn);
    s->st->n_sessions_open--;
    free(s);
}

/* Loads the session's record as of read transaction *t. A handle never
 * goes back in time: LMDB gives every read transaction a committed
 * snapshot, but not always one at least as new as the previous transaction
 * of the same process. A reader that is preempted between taking the last
 * transaction id and copying that id's meta page can get the meta of a
 * commit two steps later (the writer reuses the page), and the reader's
 * next transaction, at the id in between, is then older than what it has
 * seen (tests/test-store-concurrency.c found this on 2 cores: a stat saw
 * 952 tokens, the next read 945). Such a snapshot is consistent but stale;
 * it is dropped and a new transaction taken, which sees at least the state
 * already seen, since that state is committed. */
static int refresh(msa_store_session *s, MDB_txn **t) {
    for (int attempt = 0;; attempt++) {
        msa_srec r;
        int rc = msa_get_srec(*t, s->st, s->name, &r);
        if (rc) return rc;
        if (r.sid != s->rec.sid) return msa_error(MSA_ENOTFOUND, "session '%s' was removed", s->name);
        if (r.gen >= s->rec.gen) {
            s->rec = r;
            return MSA_OK;
        }
        if (attempt == 1000)
            return msa_error(MSA_EBUSY, "session '%s': the store keeps showing generation %llu "
                             "after %llu was read", s->name, (unsigned long long)r.gen,
                             (unsigned long long)s->rec.gen);
        msa_read_end(s->st, *t);
        sched_yield();
        if ((rc = msa_read_begin(s->st, t))) return rc;
    }
}

int msa_store_session_stat(msa_store_session *s, msa_store_session_info *out) {
    MDB_txn *t;
    int rc = sess_read(s, &t);
    if (rc) return rc;
    rc = refresh(s, &t);
    sess_read_end(s, t);
    if (!rc) info_of(s->name, strlen(s->name), &s->rec, out);
    return rc;
}

int msa_store_read_tokens(msa_store_session *s, uint64_t start, uint64_t n, int32_t *out) {
    MDB_txn *t;
    int rc = sess_read(s, &t);
    if (rc) return rc;
    if ((rc = refresh(s, &t))) goto done;
    if (start > s->rec.n_tokens || n > s->rec.n_tokens - start) {
        rc = msa_error(MSA_ERANGE, "session '%s': tokens %llu..%llu past its %llu tokens", s->name,
                       (unsigned long long)start, (unsigned long long)(start + n),
                       (unsigned long long)s->rec.n_tokens);
        goto done;
    }
    uint64_t pos = start;
    while (pos < start + n) {
        uint32_t chunk = (uint32_t)(pos / MSA_TOK_CHUNK);
        uint8_t kb[12];
        msa_key_tokens(kb, s->rec.sid, chunk);
        MDB_val k = {12, kb}, v;
        if ((rc = mdb_get(t, s->st->tokens, &k, &v))) {
            rc = rc == MDB_NOTFOUND ? msa_error(MSA_ECORRUPT, "session '%s': token chunk %u missing", s->name, chunk)
                                    : msa_mdb_status(rc, "session '%s': token chunk %u", s->name, chunk);
            goto done;
        }
        const uint8_t *b = v.mv_data;
        uint32_t cnt = v.mv_size >= 8 ? msa_get_le32(b + 4) : 0;
        if (v.mv_size < 8 || cnt > MSA_TOK_CHUNK || v.mv_size != 8 + 4 * (size_t)cnt ||
            msa_crc32c(0, b + 4, v.mv_size - 4) != msa_get_le32(b)) {
            rc = msa_error(MSA_ECORRUPT, "session '%s': token chunk %u checksum mismatch", s->name, chunk);
            goto done;
        }
        uint64_t off = pos - (uint64_t)chunk * MSA_TOK_CHUNK, take = cnt > off ? cnt - off : 0;
        if (take > start + n - pos) take = start + n - pos;
        if (!take) {
            rc = msa_error(MSA_ECORRUPT, "session '%s': token chunk %u is short", s->name, chunk);
            goto done;
        }
        for (uint64_t i = 0; i < take; i++)
            out[pos - start + i] = (int32_t)msa_get_le32(b + 8 + 4 * (off + i));
        pos += take;
    }
done:
    sess_read_end(s, t);
    return rc;
}

/* Readahead. A read that follows the previous one of the same layer and
 * kind (block b + 1 after b) asks the kernel for the next MSA_READAHEAD
 * blocks' bytes at once (madvise WILLNEED: one request each, in flight
 * together), so that reading a session in order, as opening it and
 * export do, keeps the disk busy instead of waiting for one block at a
 * time; reads of K and V ask for whole values, index-key reads for a
 * value's first page (its header) and its last bytes (the index planes
 * come last, and take at most their raw size plus a page). Random reads
 * (the pager's selected blocks) ask for nothing. Only a hint: failures
 * are ignored. */
enum { MSA_READAHEAD = 8 };

static void read_ahead(msa_store_session *s, MDB_txn *t, int layer, uint64_t block, int kv) {
    int seq = s->ra_layer == layer && s->ra_kv == kv && s->ra_last + 1 == block;
    s->ra_layer = layer;
    s->ra_kv = kv;
    s->ra_last = block;
    if (!seq) {
        s->ra_next = block + 1;
        return;
    }
    uint64_t nb = msa_blocks_for(s->rec.n_tokens, s->rec.shape.block_size), end = block + 1 + MSA_READAHEAD;
    if (end > nb) end = nb;
    if (s->ra_next < block + 1) s->ra_next = block + 1;
    const msa_store_shape *sh = &s->rec.shape;
    size_t idx = (size_t)sh->idx_key_heads * sh->block_size * sh->idx_dim * msa_dtype_size(sh->idx_dtype) + 4096;
    for (; s->ra_next < end; s->ra_next++) {
        uint8_t kb[20];
        msa_key_block(kb, s->rec.sid, (uint32_t)layer, s->ra_next);
        MDB_val key = {20, kb}, val;
        msa_bent e;
        if (mdb_get(t, s->st->blockmap, &key, &val) || msa_bent_decode(&val, &e) ||
            msa_block_get(t, s->st, e.id, &val))
            break;
        if (kv || val.mv_size <= idx + 4096) {
            msa_prefetch(val.mv_data, val.mv_size);
        } else {
            msa_prefetch(val.mv_data, 4096);
            msa_prefetch((const uint8_t *)val.mv_data + val.mv_size - idx, idx);
        }
    }
    msa_error_clear(); /* a failed lookup here is the next read's to report */
}

static int read_one(msa_store_session *s, MDB_txn *t, int layer, uint64_t block, void *k,
                    void *v, void *kidx, msa_store_block_info *info) {
    if (layer < 0 || layer >= s->rec.shape.n_layers)
        return msa_error(MSA_EINVAL, "session '%s': layer %d of %d", s->name, layer, s->rec.shape.n_layers);
    uint8_t kb[20];
    msa_key_block(kb, s->rec.sid, (uint32_t)layer, block);
    MDB_val key = {20, kb}, val;
    int rc = mdb_get(t, s->st->blockmap, &key, &val);
    if (rc == MDB_NOTFOUND)
        return msa_error(MSA_ENOTFOUND, "session '%s', layer %d, block %llu: no such block", s->name,
                         layer, (unsigned long long)block);
    if (rc) return msa_mdb_status(rc, "session '%s', layer %d, block %llu", s->name, layer, (unsigned long long)block);
    msa_bent e;
    if ((rc = msa_bent_decode(&val, &e)))
        return msa_error_context(rc, "session '%s', layer %d, block %llu", s->name, layer, (unsigned long long)block);
    rc = msa_block_get(t, s->st, e.id, &val);
    if (rc == MSA_ENOTFOUND)
        return msa_error(MSA_ECORRUPT, "session '%s', layer %d, block %llu: stored block %llu missing",
                         s->name, layer, (unsigned long long)block, (unsigned long long)e.id);
    if (rc) return msa_error_context(rc, "session '%s', layer %d, block %llu", s->name, layer, (unsigned long long)block);
    msa_codec_shape cs = msa_codec_shape_of(&s->rec.shape);
    int n = 0;
    read_ahead(s, t, layer, block, k || v);
    rc = msa_block_decode(&cs, val.mv_data, val.mv_size, k, v, kidx, &n, 0);
    if (!rc && (uint32_t)n != e.n_tokens) rc = msa_error(MSA_ECORRUPT, "fill %d, entry says %u", n, e.n_tokens);
    if (rc)
        return msa_error_context(rc, "session '%s', layer %d, block %llu", s->name, layer, (unsigned long long)block);
    if (info) {
        info->n_tokens = n;
        strcpy(info->tag, e.tag);
        info->stored_bytes = (uint32_t)val.mv_size;
        info->lossy = ((const uint8_t *)val.mv_data)[10];
    }
    return MSA_OK;
}

int msa_store_read_block(msa_store_session *s, int layer, uint64_t block, void *k, void *v,
                         void *kidx, msa_store_block_info *info) {
    MDB_txn *t;
    int rc = sess_read(s, &t);
    if (rc) return rc;
    if (!(rc = refresh(s, &t))) rc = read_one(s, t, layer, block, k, v, kidx, info);
    sess_read_end(s, t);
    return rc;
}

int msa_store_read_index(msa_store_session *s, int layer, uint64_t first, uint64_t n, void *out) {
    MDB_txn *t;
    int rc = sess_read(s, &t);
    if (rc) return rc;
    if ((rc = refresh(s, &t))) goto done;
    uint64_t nb = msa_blocks_for(s->rec.n_tokens, s->rec.shape.block_size);
    if (first > nb || n > nb - first) {
        rc = msa_error(MSA_ERANGE, "session '%s': blocks %llu..%llu past its %llu blocks", s->name,
                       (unsigned long long)first, (unsigned long long)(first + n), (unsigned long long)nb);
        goto done;
    }
    const msa_store_shape *sh = &s->rec.shape;
    size_t per = (size_t)sh->idx_key_heads * sh->block_size * sh->idx_dim * msa_dtype_size(sh->idx_dtype);
    for (uint64_t b = 0; b < n && !rc; b++)
        rc = read_one(s, t, layer, first + b, NULL, NULL, (uint8_t *)out + b * per, NULL);
done:
    sess_read_end(s, t);
    return rc;
}

/* ---- append transactions ---------------------------------------------------------- */

/* A put. With one compression thread it is encoded at once (val, len);
 * with more, the caller's rows are copied to `plain` and encoded with the
 * other buffered puts of the transaction in parallel (encode_pending). */
typedef struct pending {
    int layer, n_tokens;
    uint64_t block;
    uint32_t raw;
    void *val;
    size_t len;
    char *tag;
    void *plain;            /* K | V | index keys, caller layout, or NULL */
    int rc;                 /* of a deferred encode */
    char *msg;              /* its message (the worker's msa_last_error) */
    msa_codec_err err;
    int in_seg;             /* the value is in a segment file, at seg */
    msa_segptr seg;
} pending;

/* Buffered raw bytes that start a parallel encode of the puts so far. */
enum { MSA_ENCODE_BATCH = 16 << 20 };

/* Encoded values live in an arena of large chunks that the store keeps
 * from one transaction to the next (up to MSA_ARENA_KEEP bytes): freshly
 * mapped memory costs a page fault and a page clear per 4 KiB on first
 * touch, several times the cost of the copy, and a malloc per value of a
 * few hundred KiB is mapped afresh each time. */
enum { MSA_ARENA_CHUNK = 64 << 20 };
#define MSA_ARENA_KEEP ((size_t)256 << 20)

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t cap, used;
    max_align_t data[];
} arena_chunk;

struct msa_arena {
    arena_chunk *first, *cur;
    pthread_mutex_t mu;     /* encode workers allocate concurrently */
};

static void arena_free(struct msa_arena *a) {
    if (!a) return;
    for (arena_chunk *c = a->first, *n; c; c = n) {
        n = c->next;
        free(c);
    }
    pthread_mutex_destroy(&a->mu);
    free(a);
}

static struct msa_arena *arena_take(msa_store *st) {
    pthread_mutex_lock(&st->arena_mu);
    struct msa_arena *a = st->spare;
    st->spare = NULL;
    pthread_mutex_unlock(&st->arena_mu);
    if (a) return a;
    a = calloc(1, sizeof *a);
    if (a) pthread_mutex_init(&a->mu, NULL);
    return a;
}

/* Empties the arena and hands it back to the store (keeping at most
 * MSA_ARENA_KEEP bytes of chunks) or frees it. */
static void arena_give(msa_store *st, struct msa_arena *a) {
    if (!a) return;
    size_t kept = 0;
    arena_chunk **pp = &a->first;
    while (*pp) {
        arena_chunk *c = *pp;
        if (kept + c->cap > MSA_ARENA_KEEP) {
            *pp = c->next;
            free(c);
            continue;
        }
        kept += c->cap;
        c->used = 0;
        pp = &c->next;
    }
    a->cur = a->first;
    pthread_mutex_lock(&st->arena_mu);
    if (!st->spare) {
        st->spare = a;
        a = NULL;
    }
    pthread_mutex_unlock(&st->arena_mu);
    arena_free(a);
}

/* Where the arena's next allocation goes; arena_reset gives back what was
 * allocated since (nothing else may use it meanwhile). */
typedef struct arena_mark {
    arena_chunk *c;
    size_t used;
} arena_mark;

static arena_mark arena_here(struct msa_arena *a) {
    return (arena_mark){a->cur, a->cur ? a->cur->used : 0};
}

static void arena_reset(struct msa_arena *a, arena_mark m) {
    a->cur = m.c ? m.c : a->first;
    if (a->cur) a->cur->used = m.c ? m.used : 0;
}

static void *arena_alloc(struct msa_arena *a, size_t n) {
    n = (n + 63) & ~(size_t)63;
    void *r = NULL;
    pthread_mutex_lock(&a->mu);
    arena_chunk *c = a->cur;
    while (c && c->used + n > c->cap) {
        c = c->next;
        if (c) c->used = 0;
    }
    if (!c) {
        size_t cap = n > MSA_ARENA_CHUNK ? n : MSA_ARENA_CHUNK;
        c = malloc(sizeof *c + cap);
        if (c) {
            c->next = NULL;
            c->cap = cap;
            c->used = 0;
            arena_chunk **pp = &a->first;
            while (*pp) pp = &(*pp)->next;
            *pp = c;
        }
    }
    if (c) {
        r = (uint8_t *)c->data + c->used;
        c->used += n;
        a->cur = c;
    }
    pthread_mutex_unlock(&a->mu);
    return r;
}

struct msa_store_txn {
    msa_store_session *s;
    msa_srec base;          /* the session as of begin */
    msa_srec after;         /* as it is once the commit succeeds */
    int32_t *toks;
    size_t ntok, tok_cap;
    pending *p;
    size_t np, p_cap;
    uint64_t *covered;      /* [n_layers] tokens each layer's blocks cover */
    int64_t *last;          /* [n_layers] index in p of the layer's last put, -1 */
    msa_codec_err err;
    msa_store_txn_stats stats;
    int threads;            /* compression threads (msa_store_set_threads) */
    size_t n_plain;         /* puts waiting in `plain` (in the arena) */
    size_t plain_bytes;
    arena_mark batch;       /* the arena before the first `plain` of the batch */
    int failed;             /* a deferred encode failed: commit refuses */
    struct msa_arena *arena; /* holds every pending value */
    msa_segw **ws;          /* segment writers of this transaction; the last one is current */
    size_t nws;
    size_t n_seg;           /* puts whose value is in a segment */
    pthread_mutex_t seg_mu; /* encode workers append to the segment */
};

/* A full block of at least segment_min bytes goes to a segment file;
 * partial blocks, which are rewritten as they fill, stay in LMDB. */
static int goes_to_segment(const msa_store_txn *x, const pending *p) {
    return p->n_tokens == x->base.shape.block_size && p->len >= x->s->st->params.segment_min;
}

/* Appends p's encoded value to the transaction's current segment (taking
 * the handle's spare writer or creating a segment; a full one is sealed
 * and the next one opened). */
static int seg_append(msa_store_txn *x, pending *p, const void *val) {
    msa_store *st = x->s->st;
    msa_segw *w = x->nws ? x->ws[x->nws - 1] : NULL;
    int rc;
    if (!w || !msa_segw_fits(w, p->len)) {
        if (w && (rc = msa_segw_seal(w))) return rc;
        void *grown = realloc(x->ws, (x->nws + 1) * sizeof *x->ws);
        if (!grown) return msa_error(MSA_ENOMEM, "session '%s': segment writers", x->s->name);
        x->ws = grown;
        w = NULL;
        if (!x->nws) {
            pthread_mutex_lock(&st->arena_mu);
            w = st->spare_w;
            st->spare_w = NULL;
            pthread_mutex_unlock(&st->arena_mu);
            if (w && !msa_segw_mine(w)) { /* inherited through fork: the parent's to append to */
                msa_segw_close(w);
                w = NULL;
            }
        }
        if (!w && (rc = msa_segw_open(st->dir, st->params.durable, &w))) return rc;
        x->ws[x->nws++] = w;
    }
    if ((rc = msa_segw_append(w, val, p->len, &p->seg))) return rc;
    p->in_seg = 1;
    x->n_seg++;
    return MSA_OK;
}

/* The end of a transaction's writers: what they wrote since their last
 * commit is dropped; the current one stays with the store handle for its
 * next transaction, the others are closed. */
static void seg_release(msa_store_txn *x) {
    msa_store *st = x->s ? x->s->st : NULL;
    for (size_t i = 0; i < x->nws; i++) {
        msa_segw *w = x->ws[i];
        msa_segw_rewind(w);
        if (st && i + 1 == x->nws) {
            pthread_mutex_lock(&st->arena_mu);
            if (!st->spare_w) {
                st->spare_w = w;
                w = NULL;
            }
            pthread_mutex_unlock(&st->arena_mu);
        }
        msa_segw_close(w);
    }
    free(x->ws);
    x->ws = NULL;
    x->nws = 0;
}

int msa_store_txn_begin(msa_store_session *s, msa_store_txn **out) {
    *out = NULL;
    if (s->txn) return msa_error(MSA_EBUSY, "session '%s' already has a transaction open", s->name);
    MDB_txn *t;
    int rc = sess_read(s, &t);
    if (rc) return rc;
    rc = refresh(s, &t);
    sess_read_end(s, t);
    if (rc) return rc;
    int L = s->rec.shape.n_layers;
    msa_store_txn *x = calloc(1, sizeof *x);
    if (x) {
        x->covered = malloc(L * sizeof *x->covered);
        x->last = malloc(L * sizeof *x->last);
    }
    if (x) x->arena = arena_take(s->st);
    if (!x || !x->covered || !x->last || !x->arena) {
        if (x) { free(x->covered); free(x->last); arena_free(x->arena); free(x); }
        return msa_error(MSA_ENOMEM, "session '%s': beginning a transaction", s->name);
    }
    x->s = s;
    x->base = s->rec;
    x->threads = s->st->threads > 0 ? s->st->threads : msa_cpu_count();
    pthread_mutex_init(&x->seg_mu, NULL);
    for (int l = 0; l < L; l++) {
        x->covered[l] = s->rec.n_tokens;
        x->last[l] = -1;
    }
    s->txn = x;
    *out = x;
    return MSA_OK;
}

void msa_store_txn_abort(msa_store_txn *x) {
    if (!x) return;
    for (size_t i = 0; i < x->np; i++) {
        free(x->p[i].tag);
        free(x->p[i].msg);
    }
    free(x->p);
    free(x->toks);
    free(x->covered);
    free(x->last);
    seg_release(x);
    pthread_mutex_destroy(&x->seg_mu);
    if (x->s) {
        x->s->txn = NULL;
        arena_give(x->s->st, x->arena);
    } else {
        arena_free(x->arena);
    }
    free(x);
}

int msa_store_txn_put_tokens(msa_store_txn *x, const int32_t *tokens, size_t n) {
    if (!n) return MSA_OK;
    if (!tokens) return msa_error(MSA_EINVAL, "session '%s': NULL tokens", x->s->name);
    if (x->ntok + n > x->tok_cap) {
        size_t cap = x->tok_cap ? x->tok_cap : 1024;
        while (cap < x->ntok + n) cap *= 2;
        void *p = msa_fault_point() == ENOMEM ? NULL : realloc(x->toks, cap * sizeof *x->toks);
        if (!p) return msa_error(MSA_ENOMEM, "session '%s': %zu tokens", x->s->name, cap);
        x->toks = p;
        x->tok_cap = cap;
    }
    memcpy(x->toks + x->ntok, tokens, n * sizeof *tokens);
    x->ntok += n;
    x->stats.tokens += n;
    return MSA_OK;
}

typedef struct encode_job {
    msa_store_txn *x;
    size_t *idx;
} encode_job;

static void encode_task(void *ctx, int64_t i) {
    encode_job *j = ctx;
    msa_store_txn *x = j->x;
    pending *p = &x->p[j->idx[i]];
    const msa_store_shape *sh = &x->base.shape;
    msa_codec_shape cs = msa_codec_shape_of(sh);
    size_t kb = (size_t)sh->n_kv_heads * sh->block_size * sh->head_dim * msa_dtype_size(sh->kv_dtype);
    const uint8_t *b = p->plain;
    memset(&p->err, 0, sizeof p->err);
    const void *enc;
    p->rc = msa_block_encode_scratch(&cs, p->n_tokens, b, b + kb, b + 2 * kb, x->s->st->params.level,
                                     x->s->st->params.lossy, &enc, &p->len, &p->err);
    if (!p->rc && goes_to_segment(x, p)) {
        /* from this thread's encoder buffer into the segment's, in
         * whatever order the workers finish: each keeps its own offset */
        pthread_mutex_lock(&x->seg_mu);
        p->rc = seg_append(x, p, enc);
        pthread_mutex_unlock(&x->seg_mu);
    } else if (!p->rc) {
        p->val = arena_alloc(x->arena, p->len);
        if (p->val) memcpy(p->val, enc, p->len);
        else p->rc = msa_error(MSA_ENOMEM, "block encode: %zu bytes", p->len);
    }
    if (p->rc) p->msg = strdup(msa_last_error());
}

/* Encodes the buffered puts on up to x->threads threads. The first failure
 * (in put order) is returned with its message and poisons the transaction,
 * whose commit then refuses: its puts are not all there. */
static int encode_pending(msa_store_txn *x) {
    if (x->failed) return x->failed;
    if (!x->n_plain) return MSA_OK;
    size_t *idx = malloc(x->n_plain * sizeof *idx), m = 0;
    if (!idx || msa_fault_point() == ENOMEM) {
        free(idx);
        return x->failed = msa_error(MSA_ENOMEM, "session '%s': encoding %zu blocks", x->s->name, x->n_plain);
    }
    for (size_t i = 0; i < x->np; i++)
        if (x->p[i].plain) idx[m++] = i;
    encode_job j = {x, idx};
    msa_parallel_for((int64_t)m, x->threads, encode_task, &j);
    int rc = MSA_OK, all_in_seg = 1;
    for (size_t q = 0; q < m; q++) {
        pending *p = &x->p[idx[q]];
        p->plain = NULL;
        if (p->rc) {
            if (!rc)
                rc = msa_error(p->rc, "session '%s', layer %d, block %llu: %s", x->s->name, p->layer,
                               (unsigned long long)p->block, p->msg ? p->msg : "encode failed");
            continue;
        }
        x->err.max_abs = p->err.max_abs > x->err.max_abs ? p->err.max_abs : x->err.max_abs;
        x->err.sum_sq_err += p->err.sum_sq_err;
        x->err.sum_sq += p->err.sum_sq;
        x->stats.stored_bytes += p->len;
        if (!p->in_seg) all_in_seg = 0;
    }
    /* the batch's rows and values are in the arena after its mark: when
     * every value went to a segment, nothing there is needed any more */
    if (!rc && all_in_seg) arena_reset(x->arena, x->batch);
    free(idx);
    x->n_plain = 0;
    x->plain_bytes = 0;
    if (rc) x->failed = rc;
    return rc;
}

int msa_store_txn_put_block(msa_store_txn *x, int layer, uint64_t block, int n_tokens,
                            const void *k, const void *v, const void *kidx, const char *tag) {
    msa_store_session *s = x->s;
    const msa_store_shape *sh = &x->base.shape;
    int bs = sh->block_size;
    if (layer < 0 || layer >= sh->n_layers)
        return msa_error(MSA_EINVAL, "session '%s': layer %d of %d", s->name, layer, sh->n_layers);
    if (!k || !v || !kidx)
        return msa_error(MSA_EINVAL, "session '%s', layer %d, block %llu: K, V and index keys go together",
                         s->name, layer, (unsigned long long)block);
    if (n_tokens < 1 || n_tokens > bs)
        return msa_error(MSA_EINVAL, "session '%s', layer %d, block %llu: %d tokens in a block of %d",
                         s->name, layer, (unsigned long long)block, n_tokens, bs);
    if (!tag) tag = "";
    if (strlen(tag) > MSA_STORE_TAG_MAX)
        return msa_error(MSA_EINVAL, "session '%s': source tag longer than %d bytes", s->name, MSA_STORE_TAG_MAX);
    uint64_t cov = x->covered[layer], cur = cov / bs;
    uint64_t fill = cov - cur * bs; /* tokens already in block `cur` */
    if (block != cur)
        return msa_error(MSA_EINVAL, "session '%s', layer %d: block %llu out of order (the layer's next "
                         "block is %llu)", s->name, layer, (unsigned long long)block, (unsigned long long)cur);
    if ((uint64_t)n_tokens < fill)
        return msa_error(MSA_EINVAL, "session '%s', layer %d, block %llu: %d tokens, fewer than the %llu stored",
                         s->name, layer, (unsigned long long)block, n_tokens, (unsigned long long)fill);
    if (x->failed) return x->failed;
    msa_codec_shape cs = msa_codec_shape_of(sh);
    void *val = NULL, *plain = NULL;
    size_t len = 0;
    msa_segptr seg = {0, 0, 0, 0};
    int in_seg = 0;
    size_t es = msa_dtype_size(sh->kv_dtype), ies = msa_dtype_size(sh->idx_dtype);
    size_t kb = (size_t)sh->n_kv_heads * bs * sh->head_dim * es;
    size_t ib = (size_t)sh->idx_key_heads * bs * sh->idx_dim * ies;
    uint32_t raw = (uint32_t)(((size_t)sh->n_kv_heads * sh->head_dim * es * 2 +
                               (size_t)sh->idx_key_heads * sh->idx_dim * ies) * (size_t)n_tokens);
    int rc;
    if (x->threads > 1) { /* copy now, encode with the others later */
        if (!x->n_plain) x->batch = arena_here(x->arena);
        plain = msa_fault_point() == ENOMEM ? NULL : arena_alloc(x->arena, 2 * kb + ib);
        if (!plain)
            return msa_error(MSA_ENOMEM, "session '%s', layer %d, block %llu", s->name, layer, (unsigned long long)block);
        memcpy(plain, k, kb);
        memcpy((uint8_t *)plain + kb, v, kb);
        memcpy((uint8_t *)plain + 2 * kb, kidx, ib);
    } else {
        const void *enc;
        rc = msa_block_encode_scratch(&cs, n_tokens, k, v, kidx, s->st->params.level, s->st->params.lossy,
                                      &enc, &len, &x->err);
        if (rc) return msa_error_context(rc, "session '%s', layer %d, block %llu", s->name, layer, (unsigned long long)block);
        pending probe = {.n_tokens = n_tokens, .len = len};
        if (goes_to_segment(x, &probe)) {
            /* straight from the encoder's buffer into the segment's */
            if ((rc = seg_append(x, &probe, enc))) {
                x->failed = rc;
                return msa_error_context(rc, "session '%s', layer %d, block %llu", s->name, layer,
                                         (unsigned long long)block);
            }
            seg = probe.seg;
            in_seg = 1;
        } else {
            if (!(val = arena_alloc(x->arena, len)))
                return msa_error(MSA_ENOMEM, "session '%s', layer %d, block %llu: %zu bytes", s->name, layer,
                                 (unsigned long long)block, len);
            memcpy(val, enc, len);
        }
    }
    char *tg = strdup(tag);
    pending *slot = NULL;
    if (x->last[layer] >= 0 && x->p[x->last[layer]].block == block) {
        slot = &x->p[x->last[layer]]; /* a rewrite within this transaction */
        x->stats.raw_bytes -= slot->raw;
        if (slot->plain) {
            x->n_plain--;
            x->plain_bytes -= 2 * kb + ib;
        } else {
            x->stats.stored_bytes -= slot->len;
        }
        x->stats.blocks--;
        free(slot->tag);
        free(slot->msg);
    } else if (tg) {
        if (x->np == x->p_cap) {
            size_t cap = x->p_cap ? x->p_cap * 2 : 64;
            void *p = msa_fault_point() == ENOMEM ? NULL : realloc(x->p, cap * sizeof *x->p);
            if (p) {
                x->p = p;
                x->p_cap = cap;
            }
        }
        if (x->np < x->p_cap) {
            x->last[layer] = (int64_t)x->np;
            slot = &x->p[x->np++];
        }
    }
    if (!slot || !tg) {
        free(tg);
        if (slot) { /* the rewritten slot lost its value: drop it */
            *slot = x->p[--x->np];
            x->last[layer] = -1;
            for (int l = 0; l < sh->n_layers; l++)
                if (x->last[l] == (int64_t)x->np) x->last[l] = slot - x->p;
        }
        return msa_error(MSA_ENOMEM, "session '%s', layer %d, block %llu", s->name, layer, (unsigned long long)block);
    }
    *slot = (pending){layer, n_tokens, block, raw, val, len, tg, plain, 0, NULL, {0, 0, 0}, in_seg, seg};
    x->covered[layer] = block * bs + (uint64_t)n_tokens;
    x->stats.raw_bytes += raw;
    x->stats.stored_bytes += len;
    x->stats.blocks++;
    if (plain) {
        x->n_plain++;
        x->plain_bytes += 2 * kb + ib;
        if (x->plain_bytes >= MSA_ENCODE_BATCH) return encode_pending(x);
    }
    return MSA_OK;
}

void msa_store_txn_stats_get(const msa_store_txn *cx, msa_store_txn_stats *out) {
    /* stored sizes are known once the buffered puts are encoded; a failure
     * here is kept in the transaction and returned by its commit */
    msa_store_txn *x = (msa_store_txn *)cx;
    encode_pending(x);
    *out = x->stats;
    out->lossy_max_abs_err = x->err.max_abs;
    out->lossy_rel_rms_err = x->err.sum_sq > 0 ? sqrt(x->err.sum_sq_err / x->err.sum_sq) : 0;
}

static int append_tokens(MDB_txn *t, msa_store *st, const char *name, uint64_t sid, uint64_t have,
                         const int32_t *tok, size_t n) {
    uint8_t *buf = malloc(8 + 4 * MSA_TOK_CHUNK);
    if (!buf || msa_fault_point() == ENOMEM) {
        free(buf);
        return msa_error(MSA_ENOMEM, "session '%s': token chunk", name);
    }
    int rc = MSA_OK;
    size_t done = 0;
    while (done < n) {
        uint64_t pos = have + done;
        uint32_t chunk = (uint32_t)(pos / MSA_TOK_CHUNK), off = (uint32_t)(pos % MSA_TOK_CHUNK);
        uint8_t kb[12];
        msa_key_tokens(kb, sid, chunk);
        MDB_val k = {12, kb}, v;
        if (off) {
            int r = mdb_get(t, st->tokens, &k, &v);
            if (r || v.mv_size != 8 + 4 * (size_t)off) {
                rc = r ? msa_mdb_status(r, "session '%s': token chunk %u", name, chunk)
                       : msa_error(MSA_ECORRUPT, "session '%s': token chunk %u has the wrong size", name, chunk);
                break;
            }
            memcpy(buf + 8, (uint8_t *)v.mv_data + 8, 4 * (size_t)off);
        }
        uint32_t take = MSA_TOK_CHUNK - off;
        if (take > n - done) take = (uint32_t)(n - done);
        for (uint32_t i = 0; i < take; i++) msa_put_le32(buf + 8 + 4 * (off + i), (uint32_t)tok[done + i]);
        msa_put_le32(buf + 4, off + take);
        msa_put_le32(buf, msa_crc32c(0, buf + 4, 4 + 4 * (size_t)(off + take)));
        v.mv_size = 8 + 4 * (size_t)(off + take);
        v.mv_data = buf;
        int r = msa_put(t, st->tokens, &k, &v, 0);
        if (r) {
            rc = msa_mdb_status(r, "session '%s': writing token chunk %u", name, chunk);
            break;
        }
        done += take;
    }
    free(buf);
    return rc;
}

static int commit_fn(MDB_txn *t, void *vp) {
    msa_store_txn *x = vp;
    msa_store_session *s = x->s;
    msa_store *st = s->st;
    msa_srec r;
    int rc = msa_get_srec(t, st, s->name, &r);
    if (rc) return rc;
    if (r.sid != x->base.sid) return msa_error(MSA_ENOTFOUND, "session '%s' was removed", s->name);
    if (r.gen != x->base.gen)
        return msa_error(MSA_EBUSY, "session '%s' was appended to by another writer since this "
                         "transaction began", s->name);
    if ((rc = append_tokens(t, st, s->name, r.sid, r.n_tokens, x->toks, x->ntok))) return rc;
    uint64_t first_id;
    if ((rc = msa_meta_next(t, st, "next_block", &first_id, x->np))) return rc;
    for (size_t i = 0; i < x->np; i++) {
        pending *p = &x->p[i];
        uint8_t kb[20], ib[8], eb[BENT_FIXED + MSA_STORE_TAG_MAX];
        msa_key_block(kb, r.sid, (uint32_t)p->layer, p->block);
        MDB_val k = {20, kb}, v;
        int g = mdb_get(t, st->blockmap, &k, &v);
        if (g == 0) {
            msa_bent old;
            if ((rc = msa_bent_decode(&v, &old)))
                return msa_error_context(rc, "session '%s', layer %d, block %llu", s->name, p->layer,
                                         (unsigned long long)p->block);
            if ((rc = msa_block_release(t, st, old.id))) return rc;
            r.stored_bytes -= old.stored_len;
            r.raw_bytes -= old.raw_len;
        } else if (g != MDB_NOTFOUND) {
            return msa_mdb_status(g, "session '%s', layer %d, block %llu", s->name, p->layer,
                                  (unsigned long long)p->block);
        }
        msa_bent e = {(uint32_t)p->n_tokens, (uint32_t)p->len, p->raw, first_id + i, {0}};
        strcpy(e.tag, p->tag);
        msa_put_be64(ib, e.id);
        uint8_t pb[MSA_SEGPTR_LEN];
        MDB_val bk = {8, ib}, bv = {p->len, p->val};
        if (p->in_seg) bv = (MDB_val){msa_segptr_encode(&p->seg, pb), pb};
        if ((g = msa_put(t, st->blocks, &bk, &bv, MDB_APPEND)))
            return msa_mdb_status(g, "session '%s', layer %d, block %llu: writing", s->name, p->layer,
                                  (unsigned long long)p->block);
        v.mv_size = msa_bent_encode(&e, eb);
        v.mv_data = eb;
        if ((g = msa_put(t, st->blockmap, &k, &v, 0)))
            return msa_mdb_status(g, "session '%s', layer %d, block %llu: writing its entry", s->name,
                                  p->layer, (unsigned long long)p->block);
        r.stored_bytes += p->len;
        r.raw_bytes += p->raw;
    }
    /* segment pointers are format 2: older builds refuse the store */
    if (x->n_seg && st->format < 2 && (rc = msa_put_format(t, st, 2))) return rc;
    r.n_tokens += x->ntok;
    r.gen++;
    r.last_use = msa_unix_now();
    if ((rc = msa_put_srec(t, st, s->name, &r))) return rc;
    x->after = r; /* what the session is if this commits */
    return MSA_OK;
}

int msa_store_txn_commit(msa_store_txn *x) {
    msa_store_session *s = x->s;
    int erc = encode_pending(x); /* outside LMDB's write lock */
    if (erc) {
        msa_store_txn_abort(x);
        return erc;
    }
    uint64_t want = x->base.n_tokens + x->ntok;
    for (int l = 0; l < x->base.shape.n_layers; l++)
        if (x->covered[l] != want) {
            int rc = msa_error(MSA_EINVAL, "session '%s', layer %d: blocks cover %llu tokens, the session "
                               "would hold %llu; nothing committed", s->name, l,
                               (unsigned long long)x->covered[l], (unsigned long long)want);
            msa_store_txn_abort(x);
            return rc;
        }
    /* the segments' bytes are durable before LMDB names them */
    int rc = MSA_OK;
    for (size_t i = 0; i < x->nws && !rc; i++) rc = msa_segw_seal(x->ws[i]);
    if (!rc) rc = msa_with_write(s->st, commit_fn, x, s->name);
    if (rc == MSA_OK) {
        s->rec = x->after;
        for (size_t i = 0; i < x->nws; i++) msa_segw_commit(x->ws[i]);
        if (x->n_seg && s->st->format < 2) s->st->format = 2;
    }
    msa_store_txn_abort(x);
    return rc;
}
