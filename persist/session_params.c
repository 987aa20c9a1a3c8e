/*
 * session_params.c: a session's parameters in its record, and what a
 * session (or the store) holds on disk on its own and shared with forks.
 *
 * Parameters (msa_session_params) live in the session record
 * (store_int.h, msa_srec.params), so that every operation that copies the
 * record (fork, export, import) carries them with no code of its own, and
 * every commit keeps them: commit_fn rewrites the record it reads inside
 * its write transaction. Setting them does not count as an append (gen is
 * unchanged), so a writer's open transaction still commits.
 *
 * Usage. A block is shared when the refs table counts more than one
 * reference to it (forks share blocks; refs holds only counts > 1). A
 * session's own bytes are its unshared blocks and its tokens; its shared
 * bytes are the blocks it shares. For the whole store the shared blocks
 * are counted once each, from the refs table, and the own bytes are what
 * the session records count minus every reference to a shared block.
 */
#include "persist/store_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>

msa_session_params msa_session_default_params(void) {
    msa_session_params p;
    memset(&p, 0, sizeof p);
    return p;
}

static void params_from_rec(const msa_srec *r, msa_session_params *out) {
    memset(out, 0, sizeof *out);
    out->top_k = r->params[0];
    for (int i = 0; i < 7; i++) out->reserved[i] = r->params[1 + i];
}

static int params_check(const msa_session_params *p, const char *name) {
    if (p->top_k < 0 || p->top_k > 65536)
        return msa_error(MSA_EINVAL, "session '%s': top_k %d is outside 1..65536 (0: not set)",
                         name, p->top_k);
    for (int i = 0; i < 7; i++)
        if (p->reserved[i])
            return msa_error(MSA_EINVAL, "session '%s': msa_session_params.reserved[%d] is %d, "
                             "must be 0", name, i, p->reserved[i]);
    return MSA_OK;
}

int msa_store_session_get_params(msa_store_session *s, msa_session_params *out) {
    if (out) memset(out, 0, sizeof *out);
    if (!s || !out) return msa_error(MSA_EINVAL, "msa_store_session_get_params: NULL argument");
    msa_store_session_info info; /* re-reads the record (stat refreshes s->rec) */
    int rc = msa_store_session_stat(s, &info);
    if (rc) return rc;
    params_from_rec(&s->rec, out);
    return MSA_OK;
}

typedef struct set_ctx {
    msa_store_session *s;
    const msa_session_params *p;
    msa_srec after;
} set_ctx;

static int set_fn(MDB_txn *t, void *vp) {
    set_ctx *c = vp;
    msa_srec r;
    int rc = msa_get_srec(t, c->s->st, c->s->name, &r);
    if (rc) return rc;
    if (r.sid != c->s->rec.sid)
        return msa_error(MSA_ENOTFOUND, "session '%s' was removed", c->s->name);
    memset(r.params, 0, sizeof r.params);
    r.params[0] = c->p->top_k;
    for (int i = 0; i < 7; i++) r.params[1 + i] = c->p->reserved[i];
    if ((rc = msa_put_srec(t, c->s->st, c->s->name, &r))) return rc;
    c->after = r;
    return MSA_OK;
}

int msa_store_session_set_params(msa_store_session *s, const msa_session_params *p) {
    if (!s || !p) return msa_error(MSA_EINVAL, "msa_store_session_set_params: NULL argument");
    int rc = params_check(p, s->name);
    if (rc) return rc;
    if (s->st->params.readonly)
        return msa_error(MSA_EINVAL, "session '%s': the store is open read-only", s->name);
    set_ctx c = {s, p, {0}};
    rc = msa_with_write(s->st, set_fn, &c, s->name);
    if (rc) return msa_error_context(rc, "session '%s': storing its parameters", s->name);
    if (c.after.gen >= s->rec.gen) s->rec = c.after;
    return MSA_OK;
}

/* ---- usage -------------------------------------------------------------------- */

/* References to block `id` (1 when the refs table has no entry). */
static int refs_of(MDB_txn *t, msa_store *st, uint64_t id, uint32_t *n) {
    uint8_t kb[8];
    msa_put_be64(kb, id);
    MDB_val k = {8, kb}, v;
    int rc = mdb_get(t, st->refs, &k, &v);
    *n = 1;
    if (rc == MDB_NOTFOUND) return MSA_OK;
    if (rc) return msa_mdb_status(rc, "block %llu references", (unsigned long long)id);
    if (v.mv_size == 4) *n = msa_get_le32(v.mv_data);
    return MSA_OK;
}

static int session_usage(MDB_txn *t, msa_store *st, const char *name, msa_store_usage *out) {
    msa_srec r;
    int rc = msa_get_srec(t, st, name, &r);
    if (rc) return rc;
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(t, st->blockmap, &c))) return msa_mdb_status(rc, "opening a cursor");
    uint8_t pre[8];
    msa_put_be64(pre, r.sid);
    MDB_val k = {8, pre}, v;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size == 20 && !memcmp(k.mv_data, pre, 8)) {
        msa_bent e;
        if ((rc = msa_bent_decode(&v, &e))) {
            rc = msa_error_context(rc, "session '%s', layer %u, block %llu", name,
                                   msa_get_be32((uint8_t *)k.mv_data + 8),
                                   (unsigned long long)msa_get_be64((uint8_t *)k.mv_data + 12));
            break;
        }
        uint32_t n;
        if ((rc = refs_of(t, st, e.id, &n))) break;
        if (n > 1) {
            out->shared_bytes += e.stored_len;
            out->shared_blocks++;
        } else {
            out->own_bytes += e.stored_len;
            out->own_blocks++;
        }
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND) rc = MSA_OK;
    else if (rc > 0 || rc < -30000) rc = msa_mdb_status(rc, "session '%s': reading its block entries", name);
    if (!rc) out->own_bytes += 4 * r.n_tokens;
    return rc;
}

/* The segment files' sizes, and what in them no block pointer names. */
static int segment_usage(MDB_txn *t, msa_store *st, msa_store_usage *out) {
    uint64_t *ids, *sizes;
    size_t n;
    int rc = msa_segs_list(st->dir, &ids, &sizes, &n);
    if (rc || !n) return rc;
    for (size_t i = 0; i < n; i++) out->segment_file_bytes += sizes[i];
    free(ids);
    free(sizes);
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(t, st->blocks, &c))) return msa_mdb_status(rc, "opening a cursor");
    uint64_t live = 0;
    MDB_val k, v;
    for (int op = MDB_FIRST; (rc = mdb_cursor_get(c, &k, &v, op)) == 0; op = MDB_NEXT)
        if (msa_segptr_is(v.mv_data, v.mv_size)) live += msa_value_stored_len(v.mv_data, v.mv_size);
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND) return msa_mdb_status(rc, "reading block pointers");
    out->segment_unused_bytes = out->segment_file_bytes > live ? out->segment_file_bytes - live : 0;
    return MSA_OK;
}

static int store_usage(MDB_txn *t, msa_store *st, msa_store_usage *out) {
    uint64_t referenced = 0, referenced_blocks = 0, shared_refs = 0, shared_ref_blocks = 0;
    MDB_cursor *c;
    int rc = mdb_cursor_open(t, st->sessions, &c);
    if (rc) return msa_mdb_status(rc, "opening a cursor");
    MDB_val k, v;
    for (int op = MDB_FIRST; (rc = mdb_cursor_get(c, &k, &v, op)) == 0; op = MDB_NEXT) {
        msa_srec r;
        if ((rc = msa_srec_decode(&v, &r))) {
            rc = msa_error_context(rc, "session '%.*s'", (int)k.mv_size, (char *)k.mv_data);
            break;
        }
        referenced += r.stored_bytes;
        referenced_blocks += msa_blocks_for(r.n_tokens, r.shape.block_size) * (uint64_t)r.shape.n_layers;
        out->own_bytes += 4 * r.n_tokens;
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND) return rc > 0 || rc < -30000 ? msa_mdb_status(rc, "listing sessions") : rc;
    if ((rc = mdb_cursor_open(t, st->refs, &c))) return msa_mdb_status(rc, "opening a cursor");
    for (int op = MDB_FIRST; (rc = mdb_cursor_get(c, &k, &v, op)) == 0; op = MDB_NEXT) {
        uint32_t n = v.mv_size == 4 ? msa_get_le32(v.mv_data) : 1;
        MDB_val bv;
        int g = mdb_get(t, st->blocks, &k, &bv);
        if (g == MDB_NOTFOUND || n < 2) continue; /* fsck reports those */
        if (g) { rc = g; break; }
        uint64_t len = msa_value_stored_len(bv.mv_data, bv.mv_size);
        out->shared_bytes += len;
        out->shared_blocks++;
        shared_refs += (uint64_t)n * len;
        shared_ref_blocks += n;
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND) return msa_mdb_status(rc, "reading block references");
    out->own_bytes += referenced > shared_refs ? referenced - shared_refs : 0;
    out->own_blocks = referenced_blocks > shared_ref_blocks ? referenced_blocks - shared_ref_blocks : 0;
    return segment_usage(t, st, out);
}

int msa_store_usage_get(msa_store *st, const char *name, msa_store_usage *out) {
    if (out) memset(out, 0, sizeof *out);
    if (!st || !out) return msa_error(MSA_EINVAL, "msa_store_usage_get: NULL argument");
    MDB_txn *t = NULL;
    pthread_rwlock_rdlock(&st->grow);
    int rc = msa_read_begin(st, &t);
    if (!rc) rc = name ? session_usage(t, st, name, out) : store_usage(t, st, out);
    if (t) msa_read_end(st, t);
    pthread_rwlock_unlock(&st->grow);
    if (rc) memset(out, 0, sizeof *out);
    return rc;
}
