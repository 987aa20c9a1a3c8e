/*
 * fsck.c: msa_store_fsck(), a read-only walk over the whole store in one
 * read transaction. It checks the format record; every session record;
 * that token chunks are contiguous, checksummed and add up to the
 * session's tokens; that every layer has exactly the blocks its tokens
 * need, each full but the last; every block entry and block value (header
 * and plane checksums, then a full decode and the checksum of the decoded
 * data); the byte counters; and the reference counts of shared blocks
 * against the entries that use them, including blocks nobody uses.
 */
#include "persist/store_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct fsck {
    msa_store *st;
    MDB_txn *t;
    void (*report)(void *, const char *);
    void *ctx;
    uint64_t findings;
    uint64_t *ids;  /* every block id referenced by an entry */
    size_t n_ids, cap_ids;
    void *kbuf, *vbuf, *ibuf;
    size_t kcap;
    int oom;
} fsck;

static void finding(fsck *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void finding(fsck *f, const char *fmt, ...) {
    char line[1400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    f->findings++;
    if (f->report) f->report(f->ctx, line);
}

static void add_id(fsck *f, uint64_t id) {
    if (f->n_ids == f->cap_ids) {
        size_t cap = f->cap_ids ? f->cap_ids * 2 : 1024;
        void *p = realloc(f->ids, cap * sizeof *f->ids);
        if (!p) { f->oom = 1; return; }
        f->ids = p;
        f->cap_ids = cap;
    }
    f->ids[f->n_ids++] = id;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void check_session(fsck *f, const char *name, const msa_srec *r) {
    msa_store *st = f->st;
    const msa_store_shape *sh = &r->shape;
    /* tokens */
    uint64_t tokens = 0;
    uint32_t chunk = 0;
    MDB_cursor *c;
    uint8_t pre[8];
    msa_put_be64(pre, r->sid);
    mdb_cursor_open(f->t, st->tokens, &c);
    MDB_val k = {8, pre}, v;
    int rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    for (; rc == 0 && k.mv_size == 12 && !memcmp(k.mv_data, pre, 8); rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        uint32_t ch = msa_get_be32((uint8_t *)k.mv_data + 8);
        const uint8_t *b = v.mv_data;
        uint32_t cnt = v.mv_size >= 8 ? msa_get_le32(b + 4) : 0;
        if (ch != chunk) finding(f, "session '%s': token chunk %u where %u was expected", name, ch, chunk);
        if (v.mv_size < 8 || v.mv_size != 8 + 4 * (size_t)cnt || msa_crc32c(0, b + 4, v.mv_size - 4) != msa_get_le32(b))
            finding(f, "session '%s': token chunk %u checksum mismatch", name, ch);
        else if (cnt != MSA_TOK_CHUNK && (uint64_t)ch * MSA_TOK_CHUNK + cnt != r->n_tokens)
            finding(f, "session '%s': token chunk %u holds %u tokens", name, ch, cnt);
        tokens += cnt;
        chunk = ch + 1;
    }
    mdb_cursor_close(c);
    if (tokens != r->n_tokens)
        finding(f, "session '%s': %llu tokens stored, the record says %llu", name, (unsigned long long)tokens,
                (unsigned long long)r->n_tokens);
    /* blocks */
    uint64_t nb = msa_blocks_for(r->n_tokens, sh->block_size), raw = 0, stored = 0;
    size_t kb = (size_t)sh->n_kv_heads * sh->block_size * sh->head_dim * msa_dtype_size(sh->kv_dtype);
    size_t ib = (size_t)sh->idx_key_heads * sh->block_size * sh->idx_dim * msa_dtype_size(sh->idx_dtype);
    if (kb + ib > f->kcap) {
        free(f->kbuf); free(f->vbuf); free(f->ibuf);
        f->kbuf = malloc(kb); f->vbuf = malloc(kb); f->ibuf = malloc(ib);
        f->kcap = kb + ib;
        if (!f->kbuf || !f->vbuf || !f->ibuf) { f->oom = 1; f->kcap = 0; return; }
    }
    msa_codec_shape cs = msa_codec_shape_of(sh);
    int64_t layer = 0;
    uint64_t next = 0;
    mdb_cursor_open(f->t, st->blockmap, &c);
    k.mv_size = 8;
    k.mv_data = pre;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    for (; rc == 0 && k.mv_size == 20 && !memcmp(k.mv_data, pre, 8); rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        uint32_t l = msa_get_be32((uint8_t *)k.mv_data + 8);
        uint64_t b = msa_get_be64((uint8_t *)k.mv_data + 12);
        if ((int64_t)l != layer) {
            for (; layer < (int64_t)l && layer < sh->n_layers; layer++, next = 0)
                if (next != nb) finding(f, "session '%s', layer %lld: %llu blocks, %llu expected", name,
                                        (long long)layer, (unsigned long long)next, (unsigned long long)nb);
            if (l >= (uint32_t)sh->n_layers) {
                finding(f, "session '%s': block entry for layer %u of %d", name, l, sh->n_layers);
                continue;
            }
        }
        if (b != next) finding(f, "session '%s', layer %u, block %llu: expected block %llu", name, l,
                               (unsigned long long)b, (unsigned long long)next);
        next = b + 1;
        msa_bent e;
        if (msa_bent_decode(&v, &e)) {
            finding(f, "session '%s', layer %u, block %llu: block entry checksum mismatch", name, l, (unsigned long long)b);
            continue;
        }
        add_id(f, e.id);
        uint32_t want = b + 1 < nb ? (uint32_t)sh->block_size : (uint32_t)(r->n_tokens - (nb - 1) * sh->block_size);
        if (b < nb && e.n_tokens != want)
            finding(f, "session '%s', layer %u, block %llu: %u tokens, %u expected", name, l, (unsigned long long)b,
                    e.n_tokens, want);
        raw += e.raw_len;
        stored += e.stored_len;
        MDB_val bv;
        msa_error_clear();
        int g = msa_block_get(f->t, st, e.id, &bv);
        if (g) {
            if (g == MSA_ENOTFOUND)
                finding(f, "session '%s', layer %u, block %llu: stored block %llu missing", name, l,
                        (unsigned long long)b, (unsigned long long)e.id);
            else
                finding(f, "session '%s', layer %u, block %llu: %s", name, l, (unsigned long long)b, msa_last_error());
            continue;
        }
        int n = 0;
        if (msa_block_decode(&cs, bv.mv_data, bv.mv_size, f->kbuf, f->vbuf, f->ibuf, &n, 1))
            finding(f, "session '%s', layer %u, block %llu: %s", name, l, (unsigned long long)b, msa_last_error());
        else if ((uint32_t)n != e.n_tokens || bv.mv_size != e.stored_len)
            finding(f, "session '%s', layer %u, block %llu: entry does not match the stored block", name, l,
                    (unsigned long long)b);
    }
    mdb_cursor_close(c);
    for (; layer < sh->n_layers; layer++, next = 0)
        if (next != nb) finding(f, "session '%s', layer %lld: %llu blocks, %llu expected", name, (long long)layer,
                                (unsigned long long)next, (unsigned long long)nb);
    if (raw != r->raw_bytes || stored != r->stored_bytes)
        finding(f, "session '%s': byte counters (%llu raw, %llu stored) do not match its blocks (%llu, %llu)",
                name, (unsigned long long)r->raw_bytes, (unsigned long long)r->stored_bytes,
                (unsigned long long)raw, (unsigned long long)stored);
}

int msa_store_fsck(msa_store *st, void (*report)(void *, const char *), void *ctx, uint64_t *n_findings) {
    if (n_findings) *n_findings = 0;
    fsck f = {st, NULL, report, ctx, 0, NULL, 0, 0, NULL, NULL, NULL, 0, 0};
    /* LMDB's own pages first, overflow page headers included: the walk
     * below trusts them (lmdbraw.c) */
    uint64_t tree_findings = 0;
    int rc = msa_store_check_trees(st, 1, report, ctx, &tree_findings);
    if (rc) return rc;
    if (tree_findings) {
        if (n_findings) *n_findings = tree_findings;
        return msa_error(MSA_ECORRUPT, "fsck: %llu damaged LMDB pages or values; the store's records were "
                         "not read. `msa-mem salvage %s NEWDIR` (msa_store_salvage) copies every intact "
                         "session into a new store", (unsigned long long)tree_findings, st->dir);
    }
    pthread_rwlock_rdlock(&st->grow);
    rc = msa_read_begin(st, &f.t);
    if (rc) {
        pthread_rwlock_unlock(&st->grow);
        return rc;
    }
    MDB_cursor *c;
    MDB_val k, v;
    mdb_cursor_open(f.t, st->sessions, &c);
    for (int op = MDB_FIRST; mdb_cursor_get(c, &k, &v, op) == 0 && !f.oom; op = MDB_NEXT) {
        char name[MSA_STORE_NAME_MAX + 1];
        size_t nl = k.mv_size < MSA_STORE_NAME_MAX ? k.mv_size : MSA_STORE_NAME_MAX;
        memcpy(name, k.mv_data, nl);
        name[nl] = 0;
        msa_srec r;
        msa_error_clear();
        if (msa_srec_decode(&v, &r)) {
            finding(&f, "session '%s': %s", name, msa_last_error());
            continue;
        }
        check_session(&f, name, &r);
    }
    mdb_cursor_close(c);
    /* references: every stored block is used by as many entries as refs says */
    qsort(f.ids, f.n_ids, sizeof *f.ids, cmp_u64);
    mdb_cursor_open(f.t, st->blocks, &c);
    size_t i = 0;
    for (int op = MDB_FIRST; !f.oom && mdb_cursor_get(c, &k, &v, op) == 0; op = MDB_NEXT) {
        uint64_t id = k.mv_size == 8 ? msa_get_be64(k.mv_data) : 0;
        while (i < f.n_ids && f.ids[i] < id) i++; /* missing ones were reported per entry */
        size_t users = 0;
        while (i < f.n_ids && f.ids[i] == id) { users++; i++; }
        uint32_t refs = 1;
        MDB_val rv;
        if (mdb_get(f.t, st->refs, &k, &rv) == 0 && rv.mv_size == 4) refs = msa_get_le32(rv.mv_data);
        if (!users) finding(&f, "stored block %llu is used by no session (leaked)", (unsigned long long)id);
        else if (users != refs)
            finding(&f, "stored block %llu has %u references recorded, %zu entries use it", (unsigned long long)id,
                    refs, users);
    }
    mdb_cursor_close(c);
    msa_read_end(st, f.t);
    pthread_rwlock_unlock(&st->grow);
    free(f.ids);
    free(f.kbuf); free(f.vbuf); free(f.ibuf);
    if (f.oom) return msa_error(MSA_ENOMEM, "fsck ran out of memory");
    if (n_findings) *n_findings = f.findings;
    return f.findings ? msa_error(MSA_ECORRUPT, "fsck: %llu problems found; `msa-mem salvage %s NEWDIR` "
                                  "(msa_store_salvage) copies every intact session and block into a new store",
                                  (unsigned long long)f.findings, st->dir) : MSA_OK;
}

/* ---- one session, as opening it reads it ----------------------------------- */

int msa_store_session_check(msa_store_session *s, int full, void (*report)(void *, const char *), void *ctx,
                            uint64_t *n_damaged) {
    if (n_damaged) *n_damaged = 0;
    msa_store *st = s->st;
    fsck f = {st, NULL, report, ctx, 0, NULL, 0, 0, NULL, NULL, NULL, 0, 0};
    pthread_rwlock_rdlock(&st->grow);
    int rc = msa_read_begin(st, &f.t);
    if (rc) {
        pthread_rwlock_unlock(&st->grow);
        return rc;
    }
    msa_srec r;
    msa_error_clear();
    rc = msa_get_srec(f.t, st, s->name, &r);
    if (rc == MSA_ECORRUPT) {
        finding(&f, "%s", msa_last_error());
        rc = MSA_OK;
        goto done;
    }
    if (rc) goto done;
    const msa_store_shape *sh = &r.shape;
    /* tokens */
    for (uint32_t c = 0; (uint64_t)c * MSA_TOK_CHUNK < r.n_tokens; c++) {
        uint8_t kb[12];
        msa_key_tokens(kb, r.sid, c);
        MDB_val k = {12, kb}, v;
        uint64_t want = r.n_tokens - (uint64_t)c * MSA_TOK_CHUNK;
        if (want > MSA_TOK_CHUNK) want = MSA_TOK_CHUNK;
        int g = mdb_get(f.t, st->tokens, &k, &v);
        const uint8_t *b = v.mv_data;
        if (g) finding(&f, "session '%s': token chunk %u is missing", s->name, c);
        else if (v.mv_size < 8 || v.mv_size != 8 + 4 * (size_t)msa_get_le32(b + 4) ||
                 msa_crc32c(0, b + 4, v.mv_size - 4) != msa_get_le32(b) || msa_get_le32(b + 4) != want)
            finding(&f, "session '%s': token chunk %u checksum mismatch", s->name, c);
    }
    /* blocks */
    size_t kb = (size_t)sh->n_kv_heads * sh->block_size * sh->head_dim * msa_dtype_size(sh->kv_dtype);
    size_t ib = (size_t)sh->idx_key_heads * sh->block_size * sh->idx_dim * msa_dtype_size(sh->idx_dtype);
    f.kbuf = malloc(kb);
    f.vbuf = malloc(kb);
    f.ibuf = malloc(ib);
    if (!f.kbuf || !f.vbuf || !f.ibuf) {
        rc = msa_error(MSA_ENOMEM, "session '%s': checking its blocks", s->name);
        goto done;
    }
    msa_codec_shape cs = msa_codec_shape_of(sh);
    uint64_t nb = msa_blocks_for(r.n_tokens, sh->block_size);
    for (int l = 0; l < sh->n_layers; l++)
        for (uint64_t b = 0; b < nb; b++) {
            uint8_t key[20];
            msa_key_block(key, r.sid, (uint32_t)l, b);
            MDB_val k = {20, key}, v, bv;
            msa_bent e;
            if (mdb_get(f.t, st->blockmap, &k, &v)) {
                finding(&f, "session '%s', layer %d, block %llu: its block entry is missing", s->name, l,
                        (unsigned long long)b);
                continue;
            }
            if (msa_bent_decode(&v, &e)) {
                finding(&f, "session '%s', layer %d, block %llu: block entry checksum mismatch", s->name, l,
                        (unsigned long long)b);
                continue;
            }
            msa_error_clear();
            int g = msa_block_get(f.t, st, e.id, &bv);
            if (g) {
                if (g == MSA_ENOTFOUND)
                    finding(&f, "session '%s', layer %d, block %llu: stored block %llu missing", s->name, l,
                            (unsigned long long)b, (unsigned long long)e.id);
                else
                    finding(&f, "session '%s', layer %d, block %llu: %s", s->name, l, (unsigned long long)b,
                            msa_last_error());
                continue;
            }
            /* the partial last block is read whole when the session opens */
            int all = full || (b + 1 == nb && r.n_tokens % (uint64_t)sh->block_size);
            int n = 0;
            msa_error_clear();
            if (msa_block_decode(&cs, bv.mv_data, bv.mv_size, all ? f.kbuf : NULL, all ? f.vbuf : NULL, f.ibuf,
                                 &n, all))
                finding(&f, "session '%s', layer %d, block %llu: %s", s->name, l, (unsigned long long)b,
                        msa_last_error());
            else if ((uint32_t)n != e.n_tokens)
                finding(&f, "session '%s', layer %d, block %llu: entry does not match the stored block", s->name,
                        l, (unsigned long long)b);
        }
done:
    msa_read_end(st, f.t);
    pthread_rwlock_unlock(&st->grow);
    free(f.kbuf); free(f.vbuf); free(f.ibuf);
    if (rc) return rc;
    if (n_damaged) *n_damaged = f.findings;
    return f.findings ? msa_error(MSA_ECORRUPT, "session '%s': %llu damaged blocks or records", s->name,
                                  (unsigned long long)f.findings) : MSA_OK;
}
