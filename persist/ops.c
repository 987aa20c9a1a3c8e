/*
 * ops.c: whole-session and whole-store operations: remove, fork, export,
 * import, compact and fsck.
 *
 * Export file ("MSAMEMX1", version 1), all integers little-endian:
 *
 *   header   "MSAMEMX1" u32 version u32 crc32c(first 12 bytes)
 *   records  u32 type, u32 length, payload, u32 crc32c(type, length, payload)
 *     1 SESSION  u32 name length, name, session record (as stored)
 *     2 TOKENS   u32 chunk, token chunk value (as stored)
 *     3 BLOCK    u32 layer, u64 block, u32 entry length, entry, block value
 *     4 END      u64 records before END, u64 tokens
 *
 * Import verifies every record's CRC, every block's checksums and that the
 * blocks and tokens add up to the session record, all inside one LMDB write
 * transaction that is only committed when the END record checks out; a
 * truncated or tampered file leaves the store as it was.
 */
#include "persist/store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* Visits every key with the first `plen` bytes of `prefix`. fn returns
 * nonzero to stop (passed back). */
static int scan_prefix(MDB_txn *t, MDB_dbi d, const uint8_t *prefix, size_t plen,
                       int (*fn)(void *ctx, MDB_val *k, MDB_val *v), void *ctx) {
    MDB_cursor *c;
    int rc = mdb_cursor_open(t, d, &c);
    if (rc) return msa_mdb_status(rc, "opening a cursor");
    MDB_val k = {plen, (void *)prefix}, v;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size >= plen && !memcmp(k.mv_data, prefix, plen)) {
        if ((rc = fn(ctx, &k, &v))) break;
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND) return MSA_OK;
    return rc > 0 || rc < -30000 ? msa_mdb_status(rc, "scanning") : rc;
}

/* ---- remove ---------------------------------------------------------------- */

typedef struct keylist {
    uint8_t (*keys)[20];
    uint64_t *ids;
    size_t n, cap;
} keylist;

static int keylist_add(keylist *l, const MDB_val *k, uint64_t id) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        void *a = msa_fault_point() == ENOMEM ? NULL : realloc(l->keys, cap * 20);
        if (!a) return msa_error(MSA_ENOMEM, "collecting keys");
        l->keys = a;
        void *b = realloc(l->ids, cap * 8);
        if (!b) return msa_error(MSA_ENOMEM, "collecting keys");
        l->ids = b;
        l->cap = cap;
    }
    memset(l->keys[l->n], 0, 20);
    memcpy(l->keys[l->n], k->mv_data, k->mv_size > 20 ? 20 : k->mv_size);
    l->ids[l->n++] = id;
    return MSA_OK;
}

static int collect_tok(void *ctx, MDB_val *k, MDB_val *v) {
    (void)v;
    return keylist_add(ctx, k, 0);
}

static int collect_blk(void *ctx, MDB_val *k, MDB_val *v) {
    msa_bent e;
    int rc = msa_bent_decode(v, &e);
    return rc ? rc : keylist_add(ctx, k, e.id);
}

typedef struct rm_ctx {
    msa_store *st;
    const char *name;
} rm_ctx;

static int remove_fn(MDB_txn *t, void *vp) {
    rm_ctx *c = vp;
    msa_srec r;
    int rc = msa_get_srec(t, c->st, c->name, &r);
    if (rc) return rc;
    uint8_t pre[8];
    msa_put_be64(pre, r.sid);
    keylist toks = {0}, blks = {0};
    if (!(rc = scan_prefix(t, c->st->tokens, pre, 8, collect_tok, &toks)))
        rc = scan_prefix(t, c->st->blockmap, pre, 8, collect_blk, &blks);
    for (size_t i = 0; !rc && i < toks.n; i++) {
        MDB_val k = {12, toks.keys[i]};
        int r2 = msa_del(t, c->st->tokens, &k);
        if (r2) rc = msa_mdb_status(r2, "session '%s': removing tokens", c->name);
    }
    for (size_t i = 0; !rc && i < blks.n; i++) {
        MDB_val k = {20, blks.keys[i]};
        int r2 = msa_del(t, c->st->blockmap, &k);
        if (r2) rc = msa_mdb_status(r2, "session '%s': removing a block entry", c->name);
        else rc = msa_block_release(t, c->st, blks.ids[i]);
    }
    free(toks.keys); free(toks.ids); free(blks.keys); free(blks.ids);
    if (rc) return rc;
    MDB_val k = {strlen(c->name), (void *)c->name};
    int r2 = msa_del(t, c->st->sessions, &k);
    return r2 ? msa_mdb_status(r2, "session '%s': removing its record", c->name) : MSA_OK;
}

int msa_store_remove(msa_store *st, const char *name) {
    if (!name || !*name) return msa_error(MSA_EINVAL, "no session name");
    rm_ctx c = {st, name};
    return msa_with_write(st, remove_fn, &c, name);
}

/* ---- fork -------------------------------------------------------------------- */

typedef struct fork_ctx {
    msa_store *st;
    const char *src, *dst;
    uint64_t new_sid;
    MDB_txn *t;
} fork_ctx;

static int fork_tok(void *vp, MDB_val *k, MDB_val *v) {
    fork_ctx *c = vp;
    uint8_t kb[12];
    memcpy(kb, k->mv_data, 12);
    msa_put_be64(kb, c->new_sid);
    MDB_val nk = {12, kb};
    int rc = msa_put(c->t, c->st->tokens, &nk, v, 0);
    return rc ? msa_mdb_status(rc, "fork '%s': copying tokens", c->dst) : 0;
}

static int fork_blk(void *vp, MDB_val *k, MDB_val *v) {
    fork_ctx *c = vp;
    msa_bent e;
    int rc = msa_bent_decode(v, &e);
    if (rc) return msa_error_context(rc, "fork of '%s'", c->src);
    uint8_t kb[20];
    memcpy(kb, k->mv_data, 20);
    msa_put_be64(kb, c->new_sid);
    MDB_val nk = {20, kb};
    if ((rc = msa_put(c->t, c->st->blockmap, &nk, v, 0)))
        return msa_mdb_status(rc, "fork '%s': copying a block entry", c->dst);
    return msa_block_addref(c->t, c->st, e.id);
}

static int fork_fn(MDB_txn *t, void *vp) {
    fork_ctx *c = vp;
    c->t = t;
    msa_srec r;
    int rc = msa_get_srec(t, c->st, c->src, &r);
    if (rc) return rc;
    MDB_val k = {strlen(c->dst), (void *)c->dst}, v;
    rc = mdb_get(t, c->st->sessions, &k, &v);
    if (rc == 0) return msa_error(MSA_EEXIST, "session '%s' already exists", c->dst);
    if (rc != MDB_NOTFOUND) return msa_mdb_status(rc, "session '%s'", c->dst);
    uint64_t old = r.sid;
    if ((rc = msa_meta_next(t, c->st, "next_session", &c->new_sid, 1))) return rc;
    uint8_t pre[8];
    msa_put_be64(pre, old);
    if ((rc = scan_prefix(t, c->st->tokens, pre, 8, fork_tok, c))) return rc;
    if ((rc = scan_prefix(t, c->st->blockmap, pre, 8, fork_blk, c))) return rc;
    r.sid = c->new_sid;
    r.gen = 0;
    r.created = r.last_use = msa_unix_now();
    snprintf(r.parent, sizeof r.parent, "%s", c->src);
    return msa_put_srec(t, c->st, c->dst, &r);
}

int msa_store_fork(msa_store *st, const char *src, const char *dst) {
    if (!src || !dst || !*dst || strlen(dst) > MSA_STORE_NAME_MAX || !strcmp(src, dst))
        return msa_error(MSA_EINVAL, "fork needs a source and a different, valid destination name");
    if (msa_name_check(dst)) return msa_error_context(MSA_EINVAL, "fork to '%s'", dst);
    fork_ctx c = {st, src, dst, 0, NULL};
    return msa_with_write(st, fork_fn, &c, dst);
}

/* ---- export ----------------------------------------------------------------- */

typedef struct imp_ctx {
    msa_store *st;
    const char *path, *name;
    char name_buf[MSA_STORE_NAME_MAX + 1];
    msa_segw *w;            /* full blocks go to this segment, as appends' do */
} imp_ctx;

/* Reads and verifies an export file into write transaction t; with t NULL
 * only verifies it (export reads back what it wrote). */
static int import_fn(MDB_txn *t, void *vp);

#define EXPORT_MAGIC "MSAMEMX1"
enum { EXPORT_VERSION = 1, REC_SESSION = 1, REC_TOKENS = 2, REC_BLOCK = 3, REC_END = 4 };

typedef struct exp_ctx {
    FILE *f;
    const char *name;
    uint64_t records;
    int err;
    MDB_txn *t;
    msa_store *st;
    msa_codec_shape cs;
    msa_srec r;
    uint32_t next_chunk;    /* token chunks come in order */
    uint64_t tokens;
    int64_t layer;          /* blocks come layer by layer, in order */
    uint64_t next_block, raw, stored;
    void *kbuf, *vbuf, *ibuf;
} exp_ctx;

static int put_record(exp_ctx *c, uint32_t type, const void *a, size_t an, const void *b, size_t bn,
                      const void *d, size_t dn) {
    uint8_t h[8];
    msa_put_le32(h, type);
    msa_put_le32(h + 4, (uint32_t)(an + bn + dn));
    uint32_t crc = msa_crc32c(0, h, 8);
    crc = msa_crc32c(crc, a, an);
    crc = msa_crc32c(crc, b, bn);
    crc = msa_crc32c(crc, d, dn);
    uint8_t cb[4];
    msa_put_le32(cb, crc);
    if (fwrite(h, 1, 8, c->f) != 8 || (an && fwrite(a, 1, an, c->f) != an) ||
        (bn && fwrite(b, 1, bn, c->f) != bn) || (dn && fwrite(d, 1, dn, c->f) != dn) ||
        fwrite(cb, 1, 4, c->f) != 4)
        return msa_error(errno == ENOSPC ? MSA_ENOSPC : MSA_EIO, "export '%s': write: %s", c->name, strerror(errno));
    c->records++;
    return MSA_OK;
}

static int exp_tok(void *vp, MDB_val *k, MDB_val *v) {
    exp_ctx *c = vp;
    /* what import will check, checked before it is written */
    uint32_t chunk = msa_get_be32((uint8_t *)k->mv_data + 8);
    const uint8_t *b = v->mv_data;
    uint32_t cnt = v->mv_size >= 8 ? msa_get_le32(b + 4) : 0;
    uint64_t want = c->r.n_tokens - (uint64_t)chunk * MSA_TOK_CHUNK;
    if (want > MSA_TOK_CHUNK) want = MSA_TOK_CHUNK;
    if (k->mv_size != 12 || chunk != c->next_chunk || v->mv_size < 8 || v->mv_size != 8 + 4 * (size_t)cnt ||
        msa_crc32c(0, b + 4, v->mv_size - 4) != msa_get_le32(b) || (uint64_t)chunk * MSA_TOK_CHUNK >= c->r.n_tokens ||
        cnt != want)
        return msa_error(MSA_ECORRUPT, "session '%s': token chunk %u is damaged (checksum, count or order)", c->name,
                         chunk);
    c->next_chunk++;
    c->tokens += cnt;
    uint8_t ch[4];
    msa_put_le32(ch, msa_get_be32((uint8_t *)k->mv_data + 8));
    return put_record(c, REC_TOKENS, ch, 4, v->mv_data, v->mv_size, NULL, 0);
}

static int exp_blk(void *vp, MDB_val *k, MDB_val *v) {
    exp_ctx *c = vp;
    const uint8_t *kb = k->mv_data;
    uint32_t layer = msa_get_be32(kb + 8);
    uint64_t block = msa_get_be64(kb + 12);
    msa_bent e;
    int rc = msa_bent_decode(v, &e);
    if (rc) return msa_error_context(rc, "session '%s', layer %u, block %llu", c->name, layer, (unsigned long long)block);
    MDB_val bv;
    if ((rc = msa_block_get(c->t, c->st, e.id, &bv)))
        return rc == MSA_ENOTFOUND
                   ? msa_error(MSA_ECORRUPT, "session '%s', layer %u, block %llu: stored block missing", c->name,
                               layer, (unsigned long long)block)
                   : msa_error_context(rc, "session '%s', layer %u, block %llu", c->name, layer,
                                       (unsigned long long)block);
    /* as fsck checks it: every plane, the decoded data, the entry */
    const msa_store_shape *sh = &c->r.shape;
    uint64_t nb = msa_blocks_for(c->r.n_tokens, sh->block_size);
    if ((int64_t)layer != c->layer) {
        if (c->layer >= 0 && c->next_block != nb)
            return msa_error(MSA_ECORRUPT, "session '%s', layer %lld: %llu of its %llu blocks are stored", c->name,
                             (long long)c->layer, (unsigned long long)c->next_block, (unsigned long long)nb);
        if ((int64_t)layer != c->layer + 1)
            return msa_error(MSA_ECORRUPT, "session '%s': layer %lld has no blocks", c->name, (long long)c->layer + 1);
        c->layer = layer;
        c->next_block = 0;
    }
    if (block != c->next_block || layer >= (uint32_t)sh->n_layers || block >= nb)
        return msa_error(MSA_ECORRUPT, "session '%s', layer %u, block %llu: out of order or past the session's "
                         "%llu blocks", c->name, layer, (unsigned long long)block, (unsigned long long)nb);
    c->next_block++;
    uint32_t want = block + 1 < nb ? (uint32_t)sh->block_size
                                   : (uint32_t)(c->r.n_tokens - (nb - 1) * sh->block_size);
    int n = 0;
    msa_error_clear();
    if ((rc = msa_block_verify(bv.mv_data, bv.mv_size)) ||
        (rc = msa_block_decode(&c->cs, bv.mv_data, bv.mv_size, c->kbuf, c->vbuf, c->ibuf, &n, 1)))
        return msa_error_context(rc, "session '%s', layer %u, block %llu", c->name, layer, (unsigned long long)block);
    if ((uint32_t)n != e.n_tokens || e.n_tokens != want || e.stored_len != bv.mv_size)
        return msa_error(MSA_ECORRUPT, "session '%s', layer %u, block %llu: its entry does not match the stored "
                         "block", c->name, layer, (unsigned long long)block);
    c->raw += e.raw_len;
    c->stored += e.stored_len;
    uint8_t hdr[20];
    msa_put_le32(hdr, layer);
    msa_put_le64(hdr + 4, block);
    msa_put_le32(hdr + 12, (uint32_t)v->mv_size);
    /* hdr[16..20) unused: keep the entry length field 4 bytes as documented */
    return put_record(c, REC_BLOCK, hdr, 16, v->mv_data, v->mv_size, bv.mv_data, bv.mv_size);
}

int msa_store_export(msa_store *st, const char *name, const char *path) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) return msa_error(MSA_EIO, "export '%s': %s: %s", name, tmp, strerror(errno));
    exp_ctx c;
    memset(&c, 0, sizeof c);
    c.f = f;
    c.name = name;
    c.st = st;
    c.layer = -1;
    MDB_txn *t = NULL;
    pthread_rwlock_rdlock(&st->grow);
    int rc = msa_read_begin(st, &t);
    msa_srec r;
    if (!rc) rc = msa_get_srec(t, st, name, &r);
    if (!rc) {
        c.r = r;
        c.cs = msa_codec_shape_of(&r.shape);
        size_t kb = (size_t)r.shape.n_kv_heads * r.shape.block_size * r.shape.head_dim * msa_dtype_size(r.shape.kv_dtype);
        size_t ib = (size_t)r.shape.idx_key_heads * r.shape.block_size * r.shape.idx_dim *
                    msa_dtype_size(r.shape.idx_dtype);
        c.kbuf = malloc(kb);
        c.vbuf = malloc(kb);
        c.ibuf = malloc(ib);
        if (!c.kbuf || !c.vbuf || !c.ibuf) rc = msa_error(MSA_ENOMEM, "export '%s': block buffers", name);
    }
    if (!rc) {
        c.t = t;
        uint8_t hdr[16];
        memcpy(hdr, EXPORT_MAGIC, 8);
        msa_put_le32(hdr + 8, EXPORT_VERSION);
        msa_put_le32(hdr + 12, msa_crc32c(0, hdr, 12));
        if (fwrite(hdr, 1, 16, f) != 16) rc = msa_error(MSA_EIO, "export '%s': write", name);
        MDB_val k = {strlen(name), (void *)name}, v;
        uint8_t nl[4];
        msa_put_le32(nl, (uint32_t)k.mv_size);
        if (!rc && !(rc = mdb_get(t, st->sessions, &k, &v)))
            rc = put_record(&c, REC_SESSION, nl, 4, name, k.mv_size, v.mv_data, v.mv_size);
        uint8_t pre[8];
        msa_put_be64(pre, r.sid);
        if (!rc) rc = scan_prefix(t, st->tokens, pre, 8, exp_tok, &c);
        if (!rc) rc = scan_prefix(t, st->blockmap, pre, 8, exp_blk, &c);
        uint64_t nb = msa_blocks_for(r.n_tokens, r.shape.block_size);
        if (!rc && c.tokens != r.n_tokens)
            rc = msa_error(MSA_ECORRUPT, "session '%s': %llu tokens stored, its record says %llu", name,
                           (unsigned long long)c.tokens, (unsigned long long)r.n_tokens);
        if (!rc && nb && (c.layer != r.shape.n_layers - 1 || c.next_block != nb))
            rc = msa_error(MSA_ECORRUPT, "session '%s': its layers do not all hold their %llu blocks", name,
                           (unsigned long long)nb);
        if (!rc && (c.raw != r.raw_bytes || c.stored != r.stored_bytes))
            rc = msa_error(MSA_ECORRUPT, "session '%s': its byte counters do not match its blocks", name);
        if (!rc) {
            uint8_t end[16];
            msa_put_le64(end, c.records);
            msa_put_le64(end + 8, r.n_tokens);
            rc = put_record(&c, REC_END, end, 16, NULL, 0, NULL, 0);
        }
    }
    if (t) msa_read_end(st, t);
    pthread_rwlock_unlock(&st->grow);
    if (!rc && (fflush(f) || fsync(fileno(f))))
        rc = msa_error(errno == ENOSPC ? MSA_ENOSPC : MSA_EIO, "export '%s': %s", name, strerror(errno));
    if (fclose(f) && !rc) rc = msa_error(MSA_EIO, "export '%s': close: %s", name, strerror(errno));
    free(c.kbuf); free(c.vbuf); free(c.ibuf);
    if (!rc) { /* read back what was written, as import will */
        imp_ctx ic = {st, tmp, name, {0}, NULL};
        int vrc = import_fn(NULL, &ic);
        if (vrc) rc = msa_error(vrc == MSA_EIO || vrc == MSA_ENOMEM ? vrc : MSA_EIO,
                                "export '%s': the written file does not read back (%s); nothing was exported",
                                name, msa_last_error());
    }
    if (rc && strstr(msa_last_error(), "damaged") == NULL && rc == MSA_ECORRUPT)
        rc = msa_error_context(rc, "export '%s': the session is damaged; `msa-mem salvage` copies it up to "
                               "its first damage", name);
    if (!rc && rename(tmp, path)) rc = msa_error(MSA_EIO, "export '%s': rename to %s: %s", name, path, strerror(errno));
    if (rc) unlink(tmp);
    return rc;
}

/* ---- import -------------------------------------------------------------------- */

static int read_exact(FILE *f, void *buf, size_t n, const char *path) {
    if (fread(buf, 1, n, f) != n)
        return ferror(f) ? msa_error(MSA_EIO, "import %s: read: %s", path, strerror(errno))
                         : msa_error(MSA_EFORMAT, "import %s: the file is truncated", path);
    return MSA_OK;
}

static int import_fn(MDB_txn *t, void *vp) {
    imp_ctx *c = vp;
    msa_store *st = c->st;
    if (c->w) msa_segw_rewind(c->w); /* a second attempt (the map grew): anew */
    FILE *f = fopen(c->path, "rb");
    if (!f) return msa_error_errno(errno, "import %s", c->path);
    /* a record never announces more than what is left of the file: checked
     * before its buffer is sized, so a hostile length costs nothing */
    struct stat fst;
    const uint64_t file_size = fstat(fileno(f), &fst) == 0 ? (uint64_t)fst.st_size : UINT64_MAX;
    uint64_t offset = 16;
    uint8_t hdr[16];
    uint8_t *buf = NULL;
    size_t cap = 0;
    int rc = read_exact(f, hdr, 16, c->path);
    if (!rc && (memcmp(hdr, EXPORT_MAGIC, 8) || msa_crc32c(0, hdr, 12) != msa_get_le32(hdr + 12)))
        rc = msa_error(MSA_EFORMAT, "import %s: not an msa-mem export file", c->path);
    if (!rc && msa_get_le32(hdr + 8) != EXPORT_VERSION)
        rc = msa_error(MSA_EVERSION, "import %s: export format version %u, this build reads %d", c->path,
                       msa_get_le32(hdr + 8), EXPORT_VERSION);
    msa_srec r;
    int have_session = 0, ended = 0;
    uint64_t records = 0, tokens = 0, blocks = 0, raw = 0, stored = 0, next_chunk = 0;
    uint64_t *next_block = NULL;
    const char *name = NULL;
    msa_codec_shape cs;
    while (!rc && !ended) {
        uint8_t rh[8];
        if ((rc = read_exact(f, rh, 8, c->path))) break;
        uint32_t type = msa_get_le32(rh), len = msa_get_le32(rh + 4);
        offset += 8;
        if (len > (1u << 30) || (uint64_t)len + 4 > file_size - (offset < file_size ? offset : file_size)) {
            rc = msa_error(MSA_EFORMAT, "import %s: record %llu announces %u bytes, more than the file holds "
                           "(truncated or not an export)", c->path, (unsigned long long)records, len);
            break;
        }
        offset += (uint64_t)len + 4;
        if (len + 4 > cap) {
            void *p = msa_fault_point() == ENOMEM ? NULL : realloc(buf, len + 4);
            if (!p) { rc = msa_error(MSA_ENOMEM, "import %s: %u bytes", c->path, len); break; }
            buf = p;
            cap = len + 4;
        }
        if ((rc = read_exact(f, buf, len + 4, c->path))) break;
        uint32_t crc = msa_crc32c(msa_crc32c(0, rh, 8), buf, len);
        if (crc != msa_get_le32(buf + len)) {
            rc = msa_error(MSA_EFORMAT, "import %s: record %llu checksum mismatch (tampered or damaged)",
                           c->path, (unsigned long long)records);
            break;
        }
        if (!have_session && type != REC_SESSION) {
            rc = msa_error(MSA_EFORMAT, "import %s: no session record first", c->path);
            break;
        }
        if (type == REC_SESSION) {
            uint32_t nl = len >= 4 ? msa_get_le32(buf) : 0;
            if (have_session || nl == 0 || nl > MSA_STORE_NAME_MAX || 4 + nl > len) {
                rc = msa_error(MSA_EFORMAT, "import %s: bad session record", c->path);
                break;
            }
            MDB_val v = {len - 4 - nl, buf + 4 + nl};
            if ((rc = msa_srec_decode(&v, &r))) { rc = msa_error_context(MSA_EFORMAT, "import %s", c->path); break; }
            if (!c->name) {
                memcpy(c->name_buf, buf + 4, nl);
                c->name_buf[nl] = 0;
            }
            name = c->name ? c->name : c->name_buf;
            MDB_val k = {strlen(name), (void *)name};
            int g = t ? mdb_get(t, st->sessions, &k, &v) : MDB_NOTFOUND;
            if (g == 0) { rc = msa_error(MSA_EEXIST, "import %s: session '%s' already exists", c->path, name); break; }
            if (g != MDB_NOTFOUND) { rc = msa_mdb_status(g, "import %s", c->path); break; }
            if (t && (rc = msa_meta_next(t, st, "next_session", &r.sid, 1))) break;
            next_block = calloc((size_t)r.shape.n_layers, sizeof *next_block);
            if (!next_block) { rc = msa_error(MSA_ENOMEM, "import %s", c->path); break; }
            cs = msa_codec_shape_of(&r.shape);
            have_session = 1;
        } else if (type == REC_TOKENS) {
            uint32_t chunk = len >= 12 ? msa_get_le32(buf) : 0;
            uint32_t cnt = len >= 12 ? msa_get_le32(buf + 8) : 0;
            if (len < 12 || chunk != next_chunk || len != 12 + 4 * cnt ||
                msa_crc32c(0, buf + 8, len - 8) != msa_get_le32(buf + 4)) {
                rc = msa_error(MSA_EFORMAT, "import %s: bad token chunk %u", c->path, chunk);
                break;
            }
            next_chunk++;
            tokens += cnt;
            uint8_t kb[12];
            msa_key_tokens(kb, r.sid, chunk);
            MDB_val k = {12, kb}, v = {len - 4, buf + 4};
            int g = t ? msa_put(t, st->tokens, &k, &v, 0) : 0;
            if (g) { rc = msa_mdb_status(g, "import %s: writing tokens", c->path); break; }
        } else if (type == REC_BLOCK) {
            uint32_t layer = len >= 16 ? msa_get_le32(buf) : 0, el = len >= 16 ? msa_get_le32(buf + 12) : 0;
            uint64_t block = len >= 16 ? msa_get_le64(buf + 4) : 0;
            msa_bent e;
            MDB_val ev = {el, buf + 16};
            if (len < 16 || 16 + (uint64_t)el > len || layer >= (uint32_t)r.shape.n_layers ||
                block != next_block[layer] || msa_bent_decode(&ev, &e)) {
                rc = msa_error(MSA_EFORMAT, "import %s: bad block record (layer %u, block %llu)", c->path,
                               layer, (unsigned long long)block);
                break;
            }
            next_block[layer]++;
            uint8_t *bval = buf + 16 + el;
            size_t blen = len - 16 - el;
            int n = 0;
            if (blen != e.stored_len || msa_block_verify(bval, blen) ||
                msa_block_decode(&cs, bval, blen, NULL, NULL, NULL, &n, 0) || (uint32_t)n != e.n_tokens) {
                rc = msa_error(MSA_EFORMAT, "import %s: layer %u, block %llu fails its checksum", c->path,
                               layer, (unsigned long long)block);
                break;
            }
            if (t && (rc = msa_meta_next(t, st, "next_block", &e.id, 1))) break;
            uint8_t kb[20], ib[8], eb[1100], pb[MSA_SEGPTR_LEN];
            msa_key_block(kb, r.sid, layer, block);
            msa_put_be64(ib, e.id);
            MDB_val bk = {8, ib}, bv = {blen, bval}, k = {20, kb}, v = {msa_bent_encode(&e, eb), eb};
            if (t && e.n_tokens == (uint32_t)r.shape.block_size && blen >= st->params.segment_min) {
                msa_segptr sp;
                if (!c->w && (rc = msa_segw_open(st->dir, st->params.durable, &c->w))) break;
                if (!msa_segw_fits(c->w, blen)) {
                    rc = msa_error(MSA_ENOSPC, "import %s: more than a segment holds", c->path);
                    break;
                }
                if ((rc = msa_segw_append(c->w, bval, blen, &sp))) break;
                bv = (MDB_val){msa_segptr_encode(&sp, pb), pb};
            }
            int g = t ? msa_put(t, st->blocks, &bk, &bv, MDB_APPEND) : 0;
            if (!g && t) g = msa_put(t, st->blockmap, &k, &v, 0);
            if (g) { rc = msa_mdb_status(g, "import %s: writing layer %u, block %llu", c->path, layer, (unsigned long long)block); break; }
            blocks++;
            raw += e.raw_len;
            stored += e.stored_len;
        } else if (type == REC_END) {
            if (len != 16 || msa_get_le64(buf) != records || msa_get_le64(buf + 8) != r.n_tokens) {
                rc = msa_error(MSA_EFORMAT, "import %s: the end record does not match", c->path);
                break;
            }
            ended = 1;
        } else {
            rc = msa_error(MSA_EFORMAT, "import %s: unknown record type %u", c->path, type);
            break;
        }
        records++;
    }
    if (!rc) {
        uint64_t nb = msa_blocks_for(r.n_tokens, r.shape.block_size);
        for (int l = 0; l < r.shape.n_layers && !rc; l++)
            if (next_block[l] != nb) rc = msa_error(MSA_EFORMAT, "import %s: layer %d has %llu of %llu blocks",
                                                    c->path, l, (unsigned long long)next_block[l], (unsigned long long)nb);
        if (!rc && (tokens != r.n_tokens || raw != r.raw_bytes || stored != r.stored_bytes))
            rc = msa_error(MSA_EFORMAT, "import %s: tokens or blocks do not add up to the session record", c->path);
        if (!rc && fgetc(f) != EOF) rc = msa_error(MSA_EFORMAT, "import %s: data after the end record", c->path);
    }
    if (!rc) {
        r.gen = 0;
        r.last_use = msa_unix_now();
        if (t) rc = msa_put_srec(t, st, name, &r);
    }
    /* segment pointers are format 2; the segment's bytes are durable
     * before LMDB names them */
    if (!rc && t && c->w && st->format < 2) rc = msa_put_format(t, st, 2);
    if (!rc && t && c->w) rc = msa_segw_seal(c->w);
    free(next_block);
    free(buf);
    fclose(f);
    (void)blocks;
    return rc;
}

int msa_store_import(msa_store *st, const char *path, const char *name) {
    if (name && (!*name || strlen(name) > MSA_STORE_NAME_MAX)) return msa_error(MSA_EINVAL, "bad session name");
    if (name && msa_name_check(name)) return msa_error_context(MSA_EINVAL, "import %s as '%s'", path, name);
    imp_ctx c = {st, path, name, {0}, NULL};
    int rc = msa_with_write(st, import_fn, &c, "import");
    if (c.w) {
        if (!rc) {
            msa_segw_commit(c.w);
            st->format = 2;
        }
        msa_segw_close(c.w); /* after a failure: nothing committed, the file goes */
    }
    return rc;
}

/* ---- compact ------------------------------------------------------------------- */

static int file_size(const char *path, int64_t *out) {
    struct stat sb;
    if (stat(path, &sb)) return -1;
    *out = sb.st_size;
    return 0;
}

static int cmp_id(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* One pointer of the blocks table, as compact sees it. */
typedef struct seg_use {
    uint64_t seg, block;
    uint32_t len;
} seg_use;

static int cmp_use(const void *a, const void *b) {
    const seg_use *x = a, *y = b;
    return x->seg < y->seg ? -1 : x->seg > y->seg ? 1 : (x->block > y->block) - (x->block < y->block);
}

/* Every segment pointer of the blocks table (sorted by segment). */
static int list_uses(msa_store *st, seg_use **out, size_t *n) {
    *out = NULL;
    *n = 0;
    size_t cap = 0;
    MDB_txn *t;
    pthread_rwlock_rdlock(&st->grow);
    int rc = msa_read_begin(st, &t);
    if (!rc) {
        MDB_cursor *c;
        MDB_val k, v;
        int g = mdb_cursor_open(t, st->blocks, &c), opened = !g;
        for (int op = MDB_FIRST; !g && !rc && (g = mdb_cursor_get(c, &k, &v, op)) == 0; op = MDB_NEXT) {
            msa_segptr p;
            if (!msa_segptr_is(v.mv_data, v.mv_size)) continue;
            if (k.mv_size != 8 || (rc = msa_segptr_decode(v.mv_data, v.mv_size, &p))) {
                rc = msa_error(MSA_ECORRUPT, "%s: compact: a damaged segment pointer (`msa-mem fsck` names it)",
                               st->dir);
                break;
            }
            if (*n == cap) {
                cap = cap ? 2 * cap : 1024;
                void *q = realloc(*out, cap * sizeof **out);
                if (!q) { rc = msa_error(MSA_ENOMEM, "%s: compact: segment pointers", st->dir); break; }
                *out = q;
            }
            (*out)[(*n)++] = (seg_use){p.seg, msa_get_be64(k.mv_data), p.len};
        }
        if (!rc && g && g != MDB_NOTFOUND) rc = msa_mdb_status(g, "%s: reading blocks", st->dir);
        if (opened) mdb_cursor_close(c);
        msa_read_end(st, t);
    }
    pthread_rwlock_unlock(&st->grow);
    if (!rc) qsort(*out, *n, sizeof **out, cmp_use);
    else { free(*out); *out = NULL; *n = 0; }
    return rc;
}

/* The blocks compact moves out of mostly dead segments, and where to. */
typedef struct moved {
    uint64_t block;
    msa_segptr to;
} moved;

typedef struct move_ctx {
    msa_store *st;
    moved *m;
    size_t n;
} move_ctx;

static int move_fn(MDB_txn *t, void *vp) {
    move_ctx *c = vp;
    for (size_t i = 0; i < c->n; i++) {
        uint8_t kb[8], pb[MSA_SEGPTR_LEN];
        msa_put_be64(kb, c->m[i].block);
        MDB_val k = {8, kb}, v = {msa_segptr_encode(&c->m[i].to, pb), pb};
        int rc = msa_put(t, c->st->blocks, &k, &v, 0);
        if (rc) return msa_mdb_status(rc, "%s: compact: moving block %llu", c->st->dir,
                                      (unsigned long long)c->m[i].block);
    }
    return MSA_OK;
}

/* Copies the live blocks of the segments marked in `rewrite` into new
 * segments and points the blocks table at the copies (one LMDB commit,
 * after the copies are durable). Each value is verified before it is
 * copied. */
static int move_blocks(msa_store *st, const seg_use *u, size_t nu, const uint64_t *rewrite, size_t nr) {
    moved *m = malloc((nu ? nu : 1) * sizeof *m);
    msa_segw *ws[64];
    size_t nm = 0, nw = 0;
    int rc = m ? MSA_OK : msa_error(MSA_ENOMEM, "%s: compact", st->dir);
    MDB_txn *t = NULL;
    pthread_rwlock_rdlock(&st->grow);
    if (!rc) rc = msa_read_begin(st, &t);
    for (size_t i = 0; !rc && i < nu; i++) {
        if (!bsearch(&u[i].seg, rewrite, nr, sizeof *rewrite, cmp_id)) continue;
        MDB_val v;
        if ((rc = msa_block_get(t, st, u[i].block, &v))) break;
        if ((rc = msa_block_verify(v.mv_data, v.mv_size))) {
            rc = msa_error(MSA_ECORRUPT, "%s: compact: block %llu is damaged (%s); nothing was moved. "
                           "`msa-mem salvage %s NEWDIR` copies every intact session into a new store", st->dir,
                           (unsigned long long)u[i].block, msa_last_error(), st->dir);
            break;
        }
        if (!nw || !msa_segw_fits(ws[nw - 1], v.mv_size)) {
            if (nw == sizeof ws / sizeof *ws) { rc = msa_error(MSA_ENOSPC, "%s: compact: too many segments", st->dir); break; }
            if (nw && (rc = msa_segw_seal(ws[nw - 1]))) break;
            if ((rc = msa_segw_open(st->dir, st->params.durable, &ws[nw]))) break;
            nw++;
        }
        m[nm].block = u[i].block;
        if ((rc = msa_segw_append(ws[nw - 1], v.mv_data, v.mv_size, &m[nm].to))) break;
        nm++;
    }
    if (t) msa_read_end(st, t);
    pthread_rwlock_unlock(&st->grow);
    if (!rc && nw) rc = msa_segw_seal(ws[nw - 1]);
    move_ctx c = {st, m, nm};
    if (!rc && nm) rc = msa_with_write(st, move_fn, &c, "compact");
    for (size_t i = 0; i < nw; i++) {
        if (!rc) msa_segw_commit(ws[i]);
        msa_segw_close(ws[i]); /* a failure leaves nothing committed: the file goes */
    }
    free(m);
    return rc;
}

/* Segment files after LMDB is compacted: a segment that no pointer names
 * (a removed session's, a killed writer's) is deleted; one whose live
 * blocks fill less than half of it has them copied to a new segment, then
 * is deleted. *freed gets the bytes given back. The caller holds the store
 * alone. A crash in the middle leaves either the old pointers or the new
 * ones, and the segment that is no longer named goes at the next compact. */
static int compact_segments(msa_store *st, int64_t *freed) {
    uint64_t *files, *sizes, *rewrite = NULL;
    size_t nf, nu = 0, nr = 0;
    seg_use *u = NULL;
    int rc = msa_segs_list(st->dir, &files, &sizes, &nf);
    if (rc || !nf) return rc;
    unsigned char *drop = calloc(nf, 1);
    if (!(rc = list_uses(st, &u, &nu)) && (!drop || !(rewrite = malloc(nf * sizeof *rewrite))))
        rc = msa_error(MSA_ENOMEM, "%s: compact", st->dir);
    int64_t kept_new = 0;
    for (size_t i = 0, j = 0; !rc && i < nf; i++) { /* both sorted by segment */
        uint64_t live = 0;
        while (j < nu && u[j].seg < files[i]) j++;
        for (; j < nu && u[j].seg == files[i]; j++) live += u[j].len;
        drop[i] = !live || 2 * live < sizes[i];
        if (live && drop[i]) {
            rewrite[nr++] = files[i];
            kept_new += (int64_t)live;
        }
    }
    /* once the blocks are moved, nothing names the rewritten segments */
    if (!rc && nr) rc = move_blocks(st, u, nu, rewrite, nr);
    if (!rc) {
        msa_segs_forget(st->segs);
        int64_t gone = 0;
        for (size_t i = 0; !rc && i < nf; i++) {
            uint64_t bytes = 0;
            if (drop[i] && !(rc = msa_segs_remove(st->dir, files[i], &bytes))) gone += (int64_t)bytes;
        }
        *freed += gone - kept_new;
    }
    free(files);
    free(sizes);
    free(drop);
    free(rewrite);
    free(u);
    return rc;
}

int msa_store_compact(msa_store *st, int64_t *saved) {
    if (saved) *saved = 0;
    if (st->params.readonly) return msa_error(MSA_EINVAL, "%s: compact needs a writable store", st->dir);
    if (st->n_sessions_open) return msa_error(MSA_EBUSY, "%s: close this store's sessions before compacting", st->dir);
    if (st->lock_fd < 0 || flock(st->lock_fd, LOCK_EX | LOCK_NB))
        return msa_error(MSA_EBUSY, "%s: the store is open in another process; compact needs it alone", st->dir);
    msa_segw_close(st->spare_w); /* cuts its file after its last commit */
    st->spare_w = NULL;
    char tmpdir[4200], tmpfile[4300], data[4200];
    snprintf(tmpdir, sizeof tmpdir, "%s/compact.tmp", st->dir);
    snprintf(tmpfile, sizeof tmpfile, "%s/data.mdb", tmpdir);
    snprintf(data, sizeof data, "%s/data.mdb", st->dir);
    unlink(tmpfile);
    mkdir(tmpdir, 0755);
    int64_t before = 0, after = 0;
    file_size(data, &before);
    /* the copy walks every page, overflow runs as long as their headers
     * say: check those headers too before LMDB trusts them */
    uint64_t nf = 0;
    int rc = msa_store_check_trees(st, 1, NULL, NULL, &nf);
    if (!rc && nf)
        rc = msa_error(MSA_ECORRUPT, "%s: compact: %llu damaged LMDB pages or values (`msa-mem fsck` lists them); "
                       "`msa-mem salvage %s NEWDIR` copies every intact session into a new store",
                       st->dir, (unsigned long long)nf, st->dir);
    if (rc) goto fail;
    rc = mdb_env_copy2(st->env, tmpdir, MDB_CP_COMPACT);
    if (rc) {
        rc = msa_mdb_status(rc, "%s: compact copy", st->dir);
        goto fail;
    }
    int fd = open(tmpfile, O_RDONLY);
    if (fd < 0 || fsync(fd)) {
        rc = msa_error(MSA_EIO, "%s: fsync of the compacted copy: %s", st->dir, strerror(errno));
        if (fd >= 0) close(fd);
        goto fail;
    }
    close(fd);
    file_size(tmpfile, &after);
    mdb_env_close(st->env);
    st->env = NULL;
    if (rename(tmpfile, data)) {
        rc = msa_error(MSA_EIO, "%s: renaming the compacted copy: %s", st->dir, strerror(errno));
    } else {
        int dfd = open(st->dir, O_RDONLY | O_DIRECTORY);
        if (dfd >= 0) { fsync(dfd); close(dfd); }
    }
    rmdir(tmpdir);
    int rc2 = msa_store_env_open(st);
    int64_t freed = 0;
    if (!rc && !rc2) rc = compact_segments(st, &freed);
    flock(st->lock_fd, LOCK_SH);
    if (rc2) return msa_error_context(rc2, "%s: reopening after compact (the store handle is unusable; "
                                      "close it and open again)", st->dir);
    if (!rc && saved) *saved = before - after + freed;
    return rc;
fail:
    unlink(tmpfile);
    rmdir(tmpdir);
    flock(st->lock_fd, LOCK_SH);
    return rc;
}
