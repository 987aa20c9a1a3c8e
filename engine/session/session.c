/*
 * session.c: sessions, the unit of memory. A session ties together
 *
 *   - its record in the store (tokens, and per layer the K/V blocks and
 *     index keys, compressed and checksummed),
 *   - the pager (memory/pager.h), which keeps every index key resident and
 *     pages in the K/V blocks each step selects, reading misses from the
 *     store through the block source below,
 *   - the model's forward pass, which appends each chunk's keys to the pager
 *     and attends through MSA.
 *
 * Appending runs the model over the new tokens in chunks; each chunk is one
 * store transaction holding its tokens, the blocks it completed (handed over
 * by the pager as they fill) and the rewritten partial last block of every
 * layer. A failure anywhere in a chunk aborts its transaction and reloads
 * the pager from the store, so the session is exactly its last commit.
 * When that reload fails too (the store cannot be read, memory is short),
 * the memory in this process no longer matches any commit: the session
 * enters a sticky failed state (`failed` below) in which every call but
 * close returns MSA_EFAILED, and the caller closes and reopens it. The store
 * is not touched by that state; it still holds the last commit.
 *
 * Every block carries a source tag ("src/util.c:12-40", "turn 3"), built
 * here from the source names given to the append calls and the line numbers
 * of the tokens, so that `ask --explain` can say where what it read came
 * from. Sources whose name holds a space ("turn 3") get no line numbers.
 *
 * Resuming: all tokens' keys are stored, so a reopened session needs only
 * the logits of its last token before it can generate. They are recomputed
 * by running that token once more over the stored memory with appending
 * switched off (replay_mem below): the same arithmetic as when it was first
 * run, one token of work.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/session/engine.h"
#include "engine/session/sampling.h"
#include "engine/pull/sha256.h"
#include "base/base.h"
#include "memory/pager.h"
#ifdef MSA_HAVE_CUDA
#include "engine/forward/model_cuda.h"
#endif

/* One run of tokens from one source inside a block ("a.c:3-9"). */
typedef struct tag_seg {
    char *src;
    int64_t first_line, last_line; /* 0: no line numbers */
} tag_seg;

typedef struct tag_builder {
    tag_seg *segs;
    int n, cap;
} tag_builder;

struct msa_session {
    msa_engine *e;
    char *name;
    msa_store_session *ss;
    msa_store_shape shape;
    msa_kvmem *mem;            /* the pager's memory */
    int lock_fd;
    int top_k;                 /* MSA blocks per step: the session's stored
                                  top_k, else the engine's */

    int32_t *tokens;           /* [n_tokens] */
    int64_t n_tokens, cap_tokens;

    float *logits;             /* [vocab] of the last token, when valid */
    int logits_valid;
    void *sample_work;

    /* an append in progress */
    msa_store_txn *txn;
    int write_rc;              /* first failure of a block write */
    char **chunk_tags;         /* tags of blocks first_tag_block.. */
    int64_t first_tag_block, n_chunk_tags;
    tag_builder tail;          /* segments of the open last block */
    int64_t tail_block;
    tag_builder saved_tail;    /* tail and tokens as of the last commit, */
    int64_t saved_tail_block;  /* restored when a transaction fails */
    int64_t n_committed;

    /* explain: how often each block was selected */
    uint64_t *reads;
    int64_t n_reads;
    int n_messages;
    double last_step_ms;
    double store_write_s;      /* in msa_store_txn_put_block and commit since open */
    int64_t pager_capacity;    /* max_tokens the pager was sized for */

    /* sticky: the memory could not be brought back to the last commit */
    int failed;
    char failed_why[768];      /* what happened, for every later MSA_EFAILED */
};

/* ---- tags ----------------------------------------------------------------- */

static void tags_clear(tag_builder *t) {
    for (int i = 0; i < t->n; i++) free(t->segs[i].src);
    t->n = 0;
}

static int tags_add(tag_builder *t, const char *src, int64_t line) {
    if (t->n > 0) {
        tag_seg *last = &t->segs[t->n - 1];
        if (!strcmp(last->src, src) &&
            (line == 0 ? last->first_line == 0 : line >= last->first_line && line <= last->last_line + 1)) {
            if (line > last->last_line) last->last_line = line;
            return MSA_OK;
        }
    }
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 4;
        tag_seg *s = realloc(t->segs, (size_t)cap * sizeof *s);
        if (!s) return msa_error(MSA_ENOMEM, "session: out of memory for block tags");
        t->segs = s;
        t->cap = cap;
    }
    char *copy = strdup(src);
    if (!copy) return msa_error(MSA_ENOMEM, "session: out of memory for block tags");
    t->segs[t->n++] = (tag_seg){copy, line, line};
    return MSA_OK;
}

/* dst (empty) becomes a copy of src, for rolling back a failed chunk. */
static int tags_copy(tag_builder *dst, const tag_builder *src) {
    for (int i = 0; i < src->n; i++) {
        int rc = tags_add(dst, src->segs[i].src, 0);
        if (rc) return rc;
        dst->segs[dst->n - 1].first_line = src->segs[i].first_line;
        dst->segs[dst->n - 1].last_line = src->segs[i].last_line;
    }
    return MSA_OK;
}

/* Renders "a.c:3-9 + b.c:1-4" (cut to the store's tag limit). */
static char *tags_render(const tag_builder *t) {
    char buf[MSA_STORE_TAG_MAX + 1];
    size_t len = 0;
    buf[0] = 0;
    for (int i = 0; i < t->n && len < sizeof buf - 1; i++) {
        const tag_seg *s = &t->segs[i];
        int w;
        if (s->first_line > 0)
            w = snprintf(buf + len, sizeof buf - len, "%s%s:%lld-%lld", i ? " + " : "", s->src,
                         (long long)s->first_line, (long long)s->last_line);
        else
            w = snprintf(buf + len, sizeof buf - len, "%s%s", i ? " + " : "", s->src);
        if (w < 0) break;
        len += (size_t)w;
        if (len >= sizeof buf) len = sizeof buf - 1;
    }
    return strdup(buf);
}

static void chunk_tags_free(msa_session *s) {
    for (int64_t i = 0; i < s->n_chunk_tags; i++) free(s->chunk_tags[i]);
    free(s->chunk_tags);
    s->chunk_tags = NULL;
    s->n_chunk_tags = 0;
}

/* Assigns tags to the blocks that tokens [pos0, pos0 + n) touch: the tags
 * of blocks completed by the chunk go to chunk_tags (looked up when the
 * pager writes them), the open block's stay in `tail`. lines[i] is token
 * i's line (0: none). */
static int tags_for_chunk(msa_session *s, int64_t pos0, int64_t n, const char *src,
                          const int64_t *lines) {
    int Bk = s->shape.block_size;
    chunk_tags_free(s);
    int64_t last_block = (pos0 + n - 1) / Bk;
    s->first_tag_block = s->tail_block;
    s->n_chunk_tags = last_block - s->tail_block + 1;
    s->chunk_tags = calloc((size_t)s->n_chunk_tags, sizeof *s->chunk_tags);
    if (!s->chunk_tags) return msa_error(MSA_ENOMEM, "session: out of memory for block tags");
    for (int64_t i = 0; i < n; i++) {
        int64_t b = (pos0 + i) / Bk;
        if (b != s->tail_block) {
            s->chunk_tags[s->tail_block - s->first_tag_block] = tags_render(&s->tail);
            tags_clear(&s->tail);
            s->tail_block = b;
        }
        int rc = tags_add(&s->tail, src, lines ? lines[i] : 0);
        if (rc) return rc;
    }
    s->chunk_tags[s->tail_block - s->first_tag_block] = tags_render(&s->tail);
    return MSA_OK;
}

static const char *tag_of(msa_session *s, int64_t block) {
    int64_t i = block - s->first_tag_block;
    if (i < 0 || i >= s->n_chunk_tags || !s->chunk_tags[i]) return "";
    return s->chunk_tags[i];
}

/* ---- the store as the pager's block source --------------------------------- */

static int src_read_block(void *ctx, int layer, int64_t block, void *k, void *v) {
    msa_session *s = ctx;
    return msa_store_read_block(s->ss, layer, (uint64_t)block, k, v, NULL, NULL);
}

static int src_read_index(void *ctx, int layer, int64_t block, void *kidx) {
    msa_session *s = ctx;
    return msa_store_read_block(s->ss, layer, (uint64_t)block, NULL, NULL, kidx, NULL);
}

static int64_t src_length(void *ctx, int layer) {
    msa_session *s = ctx;
    return s->n_tokens;
}

static int src_write_block(void *ctx, int layer, int64_t block, const void *k,
                           const void *v, const void *kidx) {
    msa_session *s = ctx;
    if (!s->txn)
        return msa_error(MSA_EINVAL, "session '%s': block %lld of layer %d completed "
                         "outside a transaction", s->name, (long long)block, layer);
    double t0 = msa_now();
    int rc = msa_store_txn_put_block(s->txn, layer, (uint64_t)block, s->shape.block_size,
                                     k, v, kidx, tag_of(s, block));
    s->store_write_s += msa_now() - t0;
    if (rc && !s->write_rc) s->write_rc = rc;
    return rc;
}

static int open_pager(msa_session *s) {
    msa_engine *e = s->e;
    msa_pager_params pp = msa_pager_default_params();
    pp.cfg = msa_attn_default_config();
    pp.cfg.n_q_heads = e->info.n_heads;
    pp.cfg.n_kv_heads = s->shape.n_kv_heads;
    pp.cfg.head_dim = s->shape.head_dim;
    pp.cfg.idx_dim = s->shape.idx_dim;
    pp.cfg.idx_key_heads = s->shape.idx_key_heads;
    pp.cfg.block_size = s->shape.block_size;
    pp.cfg.top_k = s->top_k;
    pp.n_layers = s->shape.n_layers;
    int64_t cap = 4 * s->n_tokens;
    if (cap < ((int64_t)1 << 20)) cap = (int64_t)1 << 20;
    pp.max_tokens = cap;
    pp.dtype = MSA_DTYPE_F32;
    pp.device = MSA_DEVICE_CPU;
#ifdef MSA_HAVE_CUDA
    if (e->cm) {
        /* index keys beyond gpu_index_bytes are streamed by the pager, so
         * the tables are sized as on the CPU */
        pp.dtype = e->kv_dtype;
        pp.device = MSA_DEVICE_CUDA;
        pp.stream = msa_cuda_model_stream(e->cm);
        pp.gpu_pool_bytes = e->gpu_pool_bytes;
        pp.gpu_index_bytes = e->gpu_index_bytes;
    }
#endif
    pp.host_cache_bytes = e->p.host_cache_bytes;
    pp.n_threads = e->p.n_threads;
    msa_block_source src = {
        .ctx = s,
        .read_block = src_read_block,
        .read_index = src_read_index,
        .length = src_length,
        .write_block = src_write_block,
        .thread_safe = 0,
    };
    msa_kvmem_paged_free(s->mem);
    s->mem = NULL;
    int rc = msa_kvmem_paged_init(&s->mem, &pp, &src);
    if (rc) return msa_error_context(rc, "session '%s': opening its memory", s->name);
    s->pager_capacity = cap;
    return MSA_OK;
}

/* ---- the failed state -------------------------------------------------------- */

/* Enters the sticky failed state: `why` (the cause and the failed reload)
 * is kept for the message of every later call. The pager is dropped (it
 * may be gone already); the store keeps the last commit. */
static int session_fail(msa_session *s, const char *why) {
    s->failed = 1;
    s->logits_valid = 0;
    msa_store_txn_abort(s->txn);
    s->txn = NULL;
    msa_kvmem_paged_free(s->mem);
    s->mem = NULL;
    snprintf(s->failed_why, sizeof s->failed_why, "%s", why);
    return msa_error(MSA_EFAILED, "session '%s' has failed and must be closed and reopened "
                     "(the store keeps its last commit, %lld tokens): %s", s->name,
                     (long long)s->n_committed, s->failed_why);
}

/* MSA_OK, or MSA_EFAILED for a session in the failed state. */
static int usable(const msa_session *s) {
    if (!s->failed) return MSA_OK;
    return msa_error(MSA_EFAILED, "session '%s' failed earlier and must be closed and "
                     "reopened (the store keeps its last commit, %lld tokens): %s", s->name,
                     (long long)s->n_committed, s->failed_why);
}

/* ---- the forward pass, on the engine's device ---------------------------------- */

static int run_forward(msa_session *s, msa_kvmem *mem, const int32_t *toks, int n, int64_t pos0,
                       const msa_forward_opts *o) {
#ifdef MSA_HAVE_CUDA
    if (s->e->cm)
        return msa_cuda_model_forward_mem(s->e->cm, mem, toks, n, (int)pos0, o, s->logits, NULL);
#endif
    return msa_model_forward(s->e->model, mem, toks, n, (int)pos0, o, s->logits);
}

/* ---- replaying the last token without appending ----------------------------- */

/* A view of the session memory that is one token shorter until the forward
 * pass "appends" to a layer, and drops what is appended: running the last
 * token through the model over it recomputes that token's logits exactly. */
typedef struct replay_mem {
    msa_kvmem base;
    msa_kvmem *inner;
    unsigned char appended[1024];
} replay_mem;

static int replay_append(msa_kvmem *m, int layer, int n, const float *k, const float *v,
                         const float *kidx) {
    replay_mem *r = (replay_mem *)m;
    if (layer < 0 || layer >= (int)sizeof r->appended || n != 1)
        return msa_error(MSA_EINVAL, "replay: unexpected append (layer %d, %d rows)", layer, n);
    r->appended[layer] = 1;
    return MSA_OK;
}

static int replay_index_view(msa_kvmem *m, int layer, msa_paged_kv *kv) {
    replay_mem *r = (replay_mem *)m;
    return r->inner->ops->index_view(r->inner, layer, kv);
}

static int replay_kv_view(msa_kvmem *m, int layer, const int32_t *sel, int n_sel,
                          msa_paged_kv *kv) {
    replay_mem *r = (replay_mem *)m;
    return r->inner->ops->kv_view(r->inner, layer, sel, n_sel, kv);
}

static int64_t replay_length(msa_kvmem *m, int layer) {
    replay_mem *r = (replay_mem *)m;
    int64_t n = r->inner->ops->length(r->inner, layer);
    return (layer >= 0 && layer < (int)sizeof r->appended && r->appended[layer]) ? n : n - 1;
}

static const msa_kvmem_ops replay_ops = {
    .append = replay_append,
    .index_view = replay_index_view,
    .kv_view = replay_kv_view,
    .length = replay_length,
};

/* ---- selections, for explain ----------------------------------------------- */

static void record_selection(void *user, const msa_forward_trace *t) {
    msa_session *s = user;
    if (!t->selected) return;
    int64_t need = (t->pos0 + t->n + s->shape.block_size - 1) / s->shape.block_size;
    if (need > s->n_reads) {
        int64_t cap = need * 2;
        uint64_t *r = realloc(s->reads, (size_t)cap * sizeof *r);
        if (!r) return; /* explain is best effort; the step itself is unaffected */
        memset(r + s->n_reads, 0, (size_t)(cap - s->n_reads) * sizeof *r);
        s->reads = r;
        s->n_reads = cap;
    }
    int64_t total = (int64_t)t->n * t->n_kv_heads * t->top_k;
    for (int64_t i = 0; i < total; i++) {
        int32_t b = t->selected[i];
        if (b >= 0 && b < s->n_reads) s->reads[b]++;
    }
}

static msa_forward_opts forward_opts(msa_session *s) {
    msa_forward_opts o = msa_forward_default_opts();
    o.block_size = s->shape.block_size;
    o.top_k = s->top_k;
    o.dense = s->e->p.dense;
    o.on_layer = record_selection;
    o.user = s;
    return o;
}

/* ---- open / close ------------------------------------------------------------ */

/* The session lock: an exclusive flock on STORE/session-<hash>.lock, held
 * by every msa_session handle and by msa_session_remove() while it
 * removes. The name may hold any characters, so the file is named by the
 * name's hash. msa_session_remove() unlinks the file of a removed session
 * while it holds the lock; a locker that opened the file before the unlink
 * and locked it after sees that the path no longer names its file and
 * starts again on a new one, so two holders never hold different files. */
static void lock_path(const char *dir, const char *name, char *path, size_t n) {
    char hex[MSA_SHA256_HEX_SIZE];
    uint8_t digest[MSA_SHA256_DIGEST_SIZE];
    msa_sha256(name, strlen(name), digest);
    msa_sha256_hex(digest, hex);
    snprintf(path, n, "%s/session-%.32s.lock", dir, hex);
}

/* Takes the lock of `name` into *fd. MSA_EBUSY when another handle (in any
 * process) holds it; MSA_EIO when the file cannot be opened. */
static int lock_take(const char *dir, const char *name, int *fd) {
    char path[4096];
    lock_path(dir, name, path, sizeof path);
    *fd = -1;
    for (int attempt = 0; attempt < 100; attempt++) {
        int f = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (f < 0)
            return msa_error_errno(errno, "session '%s': cannot open lock file %s", name, path);
        if (flock(f, LOCK_EX | LOCK_NB) != 0) {
            close(f);
            return msa_error(MSA_EBUSY, "session '%s' is in use: open for writing in another "
                             "process or handle", name);
        }
        struct stat a, b;
        if (fstat(f, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino &&
            a.st_dev == b.st_dev) {
            *fd = f;
            return MSA_OK;
        }
        close(f); /* unlinked by a removal meanwhile: lock the new file */
    }
    return msa_error(MSA_EBUSY, "session '%s': its lock file keeps being replaced", name);
}

static int lock_session(msa_session *s) {
    return lock_take(msa_store_dir(s->e->store), s->name, &s->lock_fd);
}

int msa_session_remove(msa_store *store, const char *name) {
    if (!store || !name || !*name)
        return msa_error(MSA_EINVAL, "msa_session_remove: no store or name");
    if (strlen(name) > MSA_STORE_NAME_MAX)
        return msa_error(MSA_EINVAL, "session names are 1 to %d bytes", MSA_STORE_NAME_MAX);
    for (const char *c = name; *c; c++)
        if ((unsigned char)*c < 0x20)
            return msa_error(MSA_EINVAL, "session name with a control character (byte %d at %d)",
                             (unsigned char)*c, (int)(c - name));
    int fd;
    int rc = lock_take(msa_store_dir(store), name, &fd);
    if (rc == MSA_EBUSY)
        return msa_error(MSA_EBUSY, "session '%s' is in use (open for writing in another process "
                         "or handle): not removed; close it first", name);
    if (rc) return rc;
    rc = msa_store_remove(store, name);
    if (rc == MSA_OK || rc == MSA_ENOTFOUND) {
        char path[4096];
        lock_path(msa_store_dir(store), name, path, sizeof path);
        unlink(path); /* still locked: see lock_take */
    }
    close(fd);
    return rc;
}

static int grow_tokens(msa_session *s, int64_t need) {
    if (need <= s->cap_tokens) return MSA_OK;
    int64_t cap = s->cap_tokens ? s->cap_tokens : 1024;
    while (cap < need) cap *= 2;
    int32_t *t = realloc(s->tokens, (size_t)cap * sizeof *t);
    if (!t) return msa_error(MSA_ENOMEM, "session '%s': out of memory for %lld tokens",
                             s->name, (long long)cap);
    s->tokens = t;
    s->cap_tokens = cap;
    return MSA_OK;
}

int msa_session_open(msa_engine *e, const char *name, int flags, msa_session **out) {
    if (!out) return msa_error(MSA_EINVAL, "msa_session_open: out is NULL");
    *out = NULL;
    if (!e || !name || !*name) return msa_error(MSA_EINVAL, "msa_session_open: no engine or name");
    msa_session *s = calloc(1, sizeof *s);
    if (!s) return msa_error(MSA_ENOMEM, "msa_session_open: out of memory");
    s->e = e;
    s->lock_fd = -1;
    s->name = strdup(name);
    int rc = s->name ? MSA_OK : msa_error(MSA_ENOMEM, "msa_session_open: out of memory");
    if (rc) goto fail;

    int created = 0;
    rc = msa_store_session_open(e->store, name, e->info.fingerprint, &s->ss);
    if (rc == MSA_OK && (flags & MSA_SESSION_CREATE) && (flags & MSA_SESSION_EXCLUSIVE)) {
        rc = msa_error(MSA_EEXIST, "session '%s' already exists", name);
        goto fail;
    }
    if (rc == MSA_ENOTFOUND && (flags & MSA_SESSION_CREATE)) {
        msa_store_shape shape = {
            .n_layers = e->info.n_layers,
            .n_kv_heads = e->info.n_kv_heads,
            .head_dim = e->info.head_dim,
            .idx_key_heads = e->info.idx_key_heads,
            .idx_dim = e->info.idx_dim,
            .block_size = e->p.block_size,
            .kv_dtype = e->kv_dtype,
            .idx_dtype = e->kv_dtype,
        };
        rc = msa_store_session_create(e->store, name, e->info.fingerprint, &shape);
        created = rc == MSA_OK;
        if (rc == MSA_OK || rc == MSA_EEXIST) /* EEXIST: created meanwhile */
            rc = msa_store_session_open(e->store, name, e->info.fingerprint, &s->ss);
    } else if (rc == MSA_ENOTFOUND) {
        msa_error(MSA_ENOTFOUND, "no session '%s' in store %s", name, msa_store_dir(e->store));
    }
    if (rc) goto fail;

    msa_store_session_info info;
    rc = msa_store_session_stat(s->ss, &info);
    if (rc) goto fail;
    s->shape = info.shape;
    if (s->shape.n_layers != e->info.n_layers || s->shape.n_kv_heads != e->info.n_kv_heads ||
        s->shape.head_dim != e->info.head_dim || s->shape.idx_dim != e->info.idx_dim ||
        s->shape.idx_key_heads != e->info.idx_key_heads) {
        rc = msa_error(MSA_EMODEL, "session '%s' was written with other shapes than this "
                       "model's", name);
        goto fail;
    }
    if (s->shape.kv_dtype != e->kv_dtype || s->shape.idx_dtype != e->kv_dtype) {
        /* a session's dtype is fixed at creation; no conversion between devices */
        int bf = s->shape.kv_dtype == MSA_DTYPE_BF16;
        rc = msa_error(MSA_EUNSUPPORTED, "session '%s' stores %s keys (created on %s); this "
                       "engine runs on %s and reads %s sessions only: open it with --device %s",
                       name, bf ? "bf16" : "f32", bf ? "CUDA" : "the CPU",
                       e->cm ? "CUDA" : "the CPU", e->cm ? "bf16" : "f32", bf ? "cuda" : "cpu");
        goto fail;
    }
    rc = lock_session(s);
    if (rc) goto fail;

    /* the session's parameters: a new session stores the engine's; one
     * that stores none (made before they were stored) runs with the
     * engine's */
    msa_session_params sp;
    rc = msa_store_session_get_params(s->ss, &sp);
    if (rc) goto fail;
    if (created && !sp.top_k) {
        sp.top_k = e->p.top_k;
        if ((rc = msa_store_session_set_params(s->ss, &sp))) goto fail;
    }
    s->top_k = sp.top_k > 0 ? sp.top_k : e->p.top_k;

    s->n_tokens = s->n_committed = (int64_t)info.n_tokens;
    rc = grow_tokens(s, s->n_tokens + 1);
    if (rc) goto fail;
    if (s->n_tokens) {
        rc = msa_store_read_tokens(s->ss, 0, (uint64_t)s->n_tokens, s->tokens);
        if (rc) goto fail;
    }
    s->tail_block = s->n_tokens / s->shape.block_size;
    if (s->n_tokens % s->shape.block_size) { /* continue the stored tag */
        msa_store_block_info bi;
        if (msa_store_read_block(s->ss, 0, (uint64_t)s->tail_block, NULL, NULL, NULL, &bi) ==
                MSA_OK && bi.tag[0] && (rc = tags_add(&s->tail, bi.tag, 0)))
            goto fail;
    }
    int V = e->info.vocab_size;
    s->logits = malloc((size_t)V * sizeof(float));
    s->sample_work = malloc(msa_sampler_work_size(V));
    if (!s->logits || !s->sample_work) {
        rc = msa_error(MSA_ENOMEM, "session '%s': out of memory", name);
        goto fail;
    }
    rc = open_pager(s);
    if (rc) goto fail;
    *out = s;
    return MSA_OK;
fail:
    msa_session_close(s);
    return rc;
}

void msa_session_close(msa_session *s) {
    if (!s) return;
    msa_store_txn_abort(s->txn);
    msa_kvmem_paged_free(s->mem);
    msa_store_session_close(s->ss);
    if (s->lock_fd >= 0) close(s->lock_fd);
    chunk_tags_free(s);
    tags_clear(&s->tail);
    free(s->tail.segs);
    tags_clear(&s->saved_tail);
    free(s->saved_tail.segs);
    free(s->tokens);
    free(s->logits);
    free(s->sample_work);
    free(s->reads);
    free(s->name);
    free(s);
}

const char *msa_session_name(const msa_session *s) { return s ? s->name : ""; }

const int32_t *msa_session_tokens(const msa_session *s, int64_t *n) {
    if (n) *n = 0;
    if (!s) return NULL;
    if (usable(s)) return NULL;
    if (n) *n = s->n_tokens;
    return s->tokens;
}

/* ---- parameters ---------------------------------------------------------------- */

int msa_session_get_params(msa_session *s, msa_session_params *out) {
    if (out) memset(out, 0, sizeof *out);
    if (!s || !out) return msa_error(MSA_EINVAL, "msa_session_get_params: NULL argument");
    int rc = usable(s);
    if (rc) return rc;
    out->top_k = s->top_k;
    return MSA_OK;
}

int msa_session_set_params(msa_session *s, const msa_session_params *p) {
    if (!s || !p) return msa_error(MSA_EINVAL, "msa_session_set_params: NULL argument");
    int rc = usable(s);
    if (rc) return rc;
    if (p->top_k < 0 || p->top_k > 65536)
        return msa_error(MSA_EINVAL, "session '%s': top_k %d is outside 1..65536 (0: keep %d)",
                         s->name, p->top_k, s->top_k);
    msa_session_params stored;
    if ((rc = msa_store_session_get_params(s->ss, &stored))) return rc;
    msa_session_params want = stored;
    if (p->top_k) want.top_k = p->top_k;
    for (int i = 0; i < 7; i++)
        if (p->reserved[i]) want.reserved[i] = p->reserved[i];
    if ((rc = msa_store_session_set_params(s->ss, &want))) return rc;
    if (want.top_k && want.top_k != s->top_k) {
        /* the pager's attention config holds k: reopen it (the store holds
         * everything it had, every append commits before it returns) */
        int old = s->top_k;
        s->top_k = want.top_k;
        if ((rc = open_pager(s))) {
            char why[768];
            snprintf(why, sizeof why, "reopening its memory for top_k %d (was %d): %.600s",
                     want.top_k, old, msa_last_error());
            return session_fail(s, why);
        }
        s->logits_valid = 0; /* the last logits were computed with the old k */
    }
    return MSA_OK;
}

/* ---- appending ----------------------------------------------------------------- */

/* An append is a store transaction that may span several forward calls:
 * txn_open() starts it and remembers what to roll back to, run_rows() runs
 * tokens through the model into it, txn_commit() writes the partial last
 * blocks and commits, txn_fail() aborts it and returns the session to its
 * last commit. Appends commit every chunk; generation commits once per
 * completed block and at its end, so a crash loses at most the generated
 * tokens of the current block, never a committed one. */

static int txn_open(msa_session *s) {
    if (s->txn) return MSA_OK;
    tags_clear(&s->saved_tail);
    int rc = tags_copy(&s->saved_tail, &s->tail);
    if (rc) return rc;
    s->saved_tail_block = s->tail_block;
    s->n_committed = s->n_tokens;
    s->write_rc = 0;
    return msa_store_txn_begin(s->ss, &s->txn);
}

/* Aborts the transaction and returns the session to its last commit;
 * returns rc (with the message of the failure), or MSA_EFAILED when the
 * pager cannot be reloaded and the session enters the failed state. */
static int txn_fail(msa_session *s, int rc) {
    msa_store_txn_abort(s->txn);
    s->txn = NULL;
    s->logits_valid = 0;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", msa_last_error());
    /* the pager may hold rows of the aborted transaction: reload it */
    s->n_tokens = s->n_committed;
    int reload = open_pager(s);
    tags_clear(&s->tail);
    tag_builder t = s->tail;
    s->tail = s->saved_tail;
    s->saved_tail = t;
    s->tail_block = s->saved_tail_block;
    chunk_tags_free(s);
    if (reload) {
        char why[768];
        snprintf(why, sizeof why, "%.400s (%s); then reloading its memory failed: %.300s",
                 msg, msa_strerror(rc), msa_last_error());
        return session_fail(s, why);
    }
    return msa_error(rc, "%s", msg);
}

static int txn_commit(msa_session *s) {
    if (!s->txn) return MSA_OK;
    int rc = s->write_rc;
    double t0 = msa_now();
    /* the partial last block of every layer, rewritten */
    for (int l = 0; !rc && l < s->shape.n_layers; l++) {
        int64_t block;
        int rows;
        const void *k, *v, *kidx;
        rc = msa_kvmem_paged_tail(s->mem, l, &block, &rows, &k, &v, &kidx);
        if (!rc && rows > 0)
            rc = msa_store_txn_put_block(s->txn, l, (uint64_t)block, rows, k, v, kidx,
                                         tag_of(s, block));
    }
    if (rc) return txn_fail(s, rc);
    rc = msa_store_txn_commit(s->txn); /* frees the txn, also on failure */
    s->txn = NULL;
    s->store_write_s += msa_now() - t0;
    if (rc) {
        msa_error_context(rc, "session '%s': committing tokens %lld..%lld", s->name,
                          (long long)s->n_committed, (long long)s->n_tokens);
        return txn_fail(s, rc);
    }
    s->n_committed = s->n_tokens;
    return MSA_OK;
}

/* Runs tokens [n_tokens, n_tokens + n) through the model into the open
 * transaction (opening one when needed). On failure the transaction is
 * aborted and the session is its last commit. */
static int run_rows(msa_session *s, const int32_t *toks, int n, const char *src,
                    const int64_t *lines) {
    int64_t pos0 = s->n_tokens;
    int rc;
    if (pos0 + n > s->pager_capacity) { /* the pager's tables are full: resize */
        if ((rc = txn_commit(s))) return rc;
        if ((rc = open_pager(s))) { /* committed, but the memory is gone */
            char why[768];
            snprintf(why, sizeof why, "resizing its memory for %lld tokens: %.600s",
                     (long long)(pos0 + n), msa_last_error());
            return session_fail(s, why);
        }
    }
    if ((rc = grow_tokens(s, pos0 + n + 1))) return rc;
    if ((rc = txn_open(s))) return rc;
    if ((rc = tags_for_chunk(s, pos0, n, src, lines))) return txn_fail(s, rc);
    msa_forward_opts o = forward_opts(s);
    double t0 = msa_now();
    rc = run_forward(s, s->mem, toks, n, pos0, &o);
    s->last_step_ms = 1e3 * (msa_now() - t0) / n;
    if (!rc && s->write_rc) rc = s->write_rc;
    if (!rc) rc = msa_store_txn_put_tokens(s->txn, toks, (size_t)n);
    if (rc) {
        msa_error_context(rc, "session '%s': appending %d tokens at %lld", s->name, n,
                          (long long)pos0);
        return txn_fail(s, rc);
    }
    memcpy(s->tokens + pos0, toks, (size_t)n * sizeof *toks);
    s->n_tokens = pos0 + n;
    s->logits_valid = 1;
    return MSA_OK;
}

/* Line of every token: 1 + newlines before it in the decoded text; all 0
 * when the source takes no line numbers (its name has a space). */
static int64_t *token_lines(msa_session *s, const int32_t *toks, size_t n, const char *src) {
    int64_t *lines = calloc(n ? n : 1, sizeof *lines);
    if (!lines || !src || strchr(src, ' ')) return lines;
    int64_t line = 1;
    for (size_t i = 0; i < n; i++) {
        lines[i] = line;
        const char *piece;
        size_t len;
        char buf[MSA_DETOK_STREAM_MAX];
        if (msa_detokenize(s->e->tok, &toks[i], 1, 0, buf, sizeof buf, &len) == MSA_OK) {
            for (size_t j = 0; j < len; j++) line += buf[j] == '\n';
        } else if (msa_token_piece(s->e->tok, toks[i], &piece, &len) == MSA_OK) {
            for (size_t j = 0; j < len; j++) line += piece[j] == '\n';
        }
    }
    return lines;
}

int msa_session_append_tokens(msa_session *s, const int32_t *toks, size_t n,
                              const char *source, msa_progress_fn progress, void *user) {
    if (!s || (!toks && n)) return msa_error(MSA_EINVAL, "msa_session_append_tokens: NULL argument");
    int rc = usable(s);
    if (rc) return rc;
    int V = s->e->info.vocab_size;
    for (size_t i = 0; i < n; i++)
        if (toks[i] < 0 || toks[i] >= V)
            return msa_error(MSA_EINVAL, "session '%s': token %d at %zu is outside the "
                             "vocabulary (0..%d)", s->name, toks[i], i, V - 1);
    const char *src = source && *source ? source : "";
    int64_t *lines = token_lines(s, toks, n, src);
    if (!lines) return msa_error(MSA_ENOMEM, "session '%s': out of memory", s->name);
    int chunk = s->e->p.prefill_chunk;
    for (size_t done = 0; done < n && !rc;) {
        int m = (int)(n - done < (size_t)chunk ? n - done : (size_t)chunk);
        rc = run_rows(s, toks + done, m, src, lines + done);
        if (!rc) rc = txn_commit(s);
        if (rc) break;
        done += (size_t)m;
        if (progress && progress(user, (int64_t)done, (int64_t)n)) {
            rc = msa_error(MSA_EINTR, "session '%s': append stopped after %zu of %zu tokens "
                           "(all of them committed)", s->name, done, n);
        }
    }
    free(lines);
    return rc;
}

static int tokenize_alloc(msa_session *s, const char *text, size_t len, int flags,
                          int32_t **out, size_t *n) {
    size_t cap = len + 16;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return msa_error(MSA_ENOMEM, "session '%s': out of memory", s->name);
    int rc = msa_tokenize(s->e->tok, text, len, flags, ids, cap, n);
    if (rc == MSA_ERANGE) {
        cap = *n;
        int32_t *more = realloc(ids, cap * sizeof *ids);
        if (!more) { free(ids); return msa_error(MSA_ENOMEM, "session: out of memory"); }
        ids = more;
        rc = msa_tokenize(s->e->tok, text, len, flags, ids, cap, n);
    }
    if (rc) { free(ids); return rc; }
    *out = ids;
    return MSA_OK;
}

int msa_session_append_text(msa_session *s, const char *text, size_t len, const char *source,
                            msa_progress_fn progress, void *user) {
    if (!s || (!text && len)) return msa_error(MSA_EINVAL, "msa_session_append_text: NULL argument");
    if (usable(s)) return MSA_EFAILED;
    int flags = 0;
    if (s->n_tokens == 0 && msa_tokenizer_add_bos(s->e->tok)) flags |= MSA_TOK_ADD_BOS;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tokenize_alloc(s, text, len, flags, &ids, &n);
    if (rc) return rc;
    rc = msa_session_append_tokens(s, ids, n, source, progress, user);
    free(ids);
    return rc;
}

int msa_session_append_message(msa_session *s, int tmpl, const char *role,
                               const char *content, int add_generation_prompt,
                               const char *source) {
    if (!s || !content) return msa_error(MSA_EINVAL, "msa_session_append_message: NULL argument");
    if (usable(s)) return MSA_EFAILED;
    if (tmpl < 0) tmpl = s->e->chat_template;
    size_t need = msa_chat_render(tmpl, role, content, add_generation_prompt, NULL, 0);
    char *text = malloc(need + 1);
    if (!text) return msa_error(MSA_ENOMEM, "session '%s': out of memory", s->name);
    msa_chat_render(tmpl, role, content, add_generation_prompt, text, need + 1);
    int flags = MSA_TOK_PARSE_SPECIAL;
    if (s->n_tokens == 0 && msa_tokenizer_add_bos(s->e->tok)) flags |= MSA_TOK_ADD_BOS;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tokenize_alloc(s, text, need, flags, &ids, &n);
    free(text);
    if (rc) return rc;
    char tag[64];
    s->n_messages++;
    if (!source) snprintf(tag, sizeof tag, "turn %d", s->n_messages);
    rc = msa_session_append_tokens(s, ids, n, source ? source : tag, NULL, NULL);
    free(ids);
    return rc;
}

/* ---- generation ------------------------------------------------------------------ */

msa_generate_params msa_generate_default_params(void) {
    msa_generate_params p;
    memset(&p, 0, sizeof p);
    p.sampling = msa_sampling_default_params();
    p.max_tokens = 128;
    p.stop_at_eos = 1;
    return p;
}

/* Makes s->logits those of the last token (recomputing them when the
 * session was just opened). */
static int ensure_logits(msa_session *s) {
    if (s->logits_valid) return MSA_OK;
    if (s->n_tokens == 0) { /* start from BOS alone, as the llama2.c reference program does */
        int32_t bos = msa_tokenizer_bos(s->e->tok);
        if (bos < 0)
            return msa_error(MSA_EINVAL, "session '%s' is empty and the model's vocabulary has no "
                             "BOS token to start from: append a prompt before generating", s->name);
        return msa_session_append_tokens(s, &bos, 1, "bos", NULL, NULL);
    }
    if (s->shape.n_layers > 1024)
        return msa_error(MSA_EUNSUPPORTED, "session '%s': more than 1024 layers", s->name);
    replay_mem r;
    memset(&r, 0, sizeof r);
    r.base.ops = &replay_ops;
    r.inner = s->mem;
    msa_forward_opts o = forward_opts(s);
    int rc = run_forward(s, &r.base, &s->tokens[s->n_tokens - 1], 1, s->n_tokens - 1, &o);
    if (rc) return msa_error_context(rc, "session '%s': recomputing the last logits", s->name);
    s->logits_valid = 1;
    return MSA_OK;
}

const float *msa_session_last_logits(msa_session *s) {
    if (!s || usable(s)) return NULL;
    return ensure_logits(s) == MSA_OK ? s->logits : NULL;
}

int msa_session_generate(msa_session *s, const msa_generate_params *params,
                         msa_token_fn on_token, void *user, int *n_generated) {
    if (n_generated) *n_generated = 0;
    if (!s) return msa_error(MSA_EINVAL, "msa_session_generate: session is NULL");
    int rc = usable(s);
    if (rc) return rc;
    msa_generate_params p = params ? *params : msa_generate_default_params();
    /* refused before anything happens (an empty session would get its BOS) */
    if ((rc = msa_sampling_check(&p.sampling)))
        return msa_error_context(rc, "session '%s'", s->name);
    if (p.max_tokens < 0)
        return msa_error(MSA_EINVAL, "session '%s': max_tokens %d is negative", s->name,
                         p.max_tokens);
    rc = ensure_logits(s);
    if (rc) return rc;
    const char *src = p.source && *p.source ? p.source : "generated";
    msa_detok_stream ds;
    msa_detok_stream_init(&ds, s->e->tok, 0);
    if (s->n_tokens > 0) ds.prev = s->tokens[s->n_tokens - 1];
    int V = s->e->info.vocab_size;
    int count = 0;
    for (; count < p.max_tokens; count++) {
        int n_recent = s->n_tokens < 256 ? (int)s->n_tokens : 256;
        int32_t tok = msa_sample(s->logits, V, &p.sampling, s->tokens + s->n_tokens - n_recent,
                                 n_recent, s->n_tokens, s->sample_work);
        if (tok < 0) { rc = tok; break; }
        int eog = msa_token_is_eog(s->e->tok, tok);
        /* the token joins the memory (EOS too: it ends the turn there) */
        rc = run_rows(s, &tok, 1, src, NULL);
        if (!rc && s->n_tokens % s->shape.block_size == 0) rc = txn_commit(s);
        if (rc) break;
        if (eog && p.stop_at_eos) { count++; break; }
        char buf[MSA_DETOK_STREAM_MAX];
        size_t len = 0;
        if (msa_detok_stream_push(&ds, tok, buf, sizeof buf, &len) != MSA_OK) len = 0;
        if (on_token && on_token(user, tok, buf, len)) { count++; break; }
    }
    int crc = txn_commit(s); /* what was generated before a failure stays */
    if (!rc) rc = crc;
    if (!rc && on_token) {
        char buf[8];
        size_t len = 0;
        if (msa_detok_stream_flush(&ds, buf, sizeof buf, &len) == MSA_OK && len)
            on_token(user, -1, buf, len);
    }
    if (n_generated) *n_generated = count;
    return rc;
}

/* ---- information --------------------------------------------------------------------- */

int msa_session_get_info(msa_session *s, msa_session_info *out) {
    if (!s || !out) return msa_error(MSA_EINVAL, "msa_session_get_info: NULL argument");
    memset(out, 0, sizeof *out);
    int rc = usable(s);
    if (rc) return rc;
    msa_store_session_info si;
    rc = msa_store_session_stat(s->ss, &si);
    if (rc) return rc;
    out->n_tokens = s->n_tokens;
    out->n_blocks = (int64_t)si.n_blocks;
    out->n_layers = s->shape.n_layers;
    out->block_size = s->shape.block_size;
    out->top_k = s->top_k;
    out->bytes_on_disk = si.stored_bytes;
    out->bytes_raw = si.raw_bytes;
    snprintf(out->fingerprint, sizeof out->fingerprint, "%.71s", si.fingerprint);
    msa_kvmem_paged_stats(s->mem, &out->pager);
    out->last_step_ms = s->last_step_ms;
    out->store_write_ms = 1e3 * s->store_write_s;
    return MSA_OK;
}

typedef struct read_rank {
    int64_t block;
    uint64_t reads;
} read_rank;

static int rank_desc(const void *a, const void *b) {
    const read_rank *x = a, *y = b;
    if (x->reads != y->reads) return x->reads > y->reads ? -1 : 1;
    return x->block < y->block ? -1 : x->block > y->block;
}

int msa_session_explain(msa_session *s, msa_block_reads *out, size_t cap, size_t *n) {
    if (n) *n = 0;
    if (!s || (!out && cap)) return msa_error(MSA_EINVAL, "msa_session_explain: NULL argument");
    int rc = usable(s);
    if (rc) return rc;
    size_t m = 0;
    for (int64_t b = 0; b < s->n_reads; b++) m += s->reads[b] > 0;
    read_rank *r = malloc((m ? m : 1) * sizeof *r);
    if (!r) return msa_error(MSA_ENOMEM, "msa_session_explain: out of memory");
    m = 0;
    for (int64_t b = 0; b < s->n_reads; b++)
        if (s->reads[b]) r[m++] = (read_rank){b, s->reads[b]};
    qsort(r, m, sizeof *r, rank_desc);
    size_t k = m < cap ? m : cap;
    int Bk = s->shape.block_size;
    for (size_t i = 0; i < k; i++) {
        msa_block_reads *o = &out[i];
        memset(o, 0, sizeof *o);
        o->block = r[i].block;
        o->reads = r[i].reads;
        o->first_token = r[i].block * Bk;
        int64_t left = s->n_tokens - o->first_token;
        o->n_tokens = left < Bk ? left : Bk;
        msa_store_block_info bi;
        if (msa_store_read_block(s->ss, 0, (uint64_t)r[i].block, NULL, NULL, NULL, &bi) == MSA_OK)
            snprintf(o->source, sizeof o->source, "%.127s", bi.tag);
    }
    free(r);
    if (n) *n = k;
    return MSA_OK;
}

void msa_session_explain_reset(msa_session *s) {
    if (s && !s->failed && s->reads) memset(s->reads, 0, (size_t)s->n_reads * sizeof *s->reads);
}
