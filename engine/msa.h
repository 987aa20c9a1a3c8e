/*
 * msa.h: the public interface of msa-mem, an agent-memory engine built on
 * MiniMax Sparse Attention (MSA).
 *
 * This is the only installed header. It has four layers, lowest first:
 *
 *   1. Status codes and version.
 *   2. MSA attention over paged KV memory, for frameworks that run their own
 *      model (index scoring, Top-k block selection, block-sparse attention,
 *      and the dense baseline), on the CPU or on a CUDA stream.
 *   3. The store: named sessions kept as compressed KV blocks in an LMDB
 *      environment, with fsck, fork, export and import.
 *   4. The engine: a model (GGUF or Hugging Face directory), its tokenizer,
 *      and sessions that are appended to and generated from through MSA.
 *
 * Conventions.
 *   - Every function that can fail returns an int status: MSA_OK (0) or one of
 *     the negative MSA_E* codes. msa_strerror() names the code and
 *     msa_last_error() gives the detailed message of the last failure on the
 *     calling thread (which file, which block, what the system said).
 *   - Objects are opaque handles created by an _open or _init function and
 *     released by the matching _close or _free, which accept NULL.
 *   - Params structs are initialised with their _default_params() and then
 *     changed field by field, so that new fields can be added later.
 *   - Unless a function says otherwise, a handle may be used by one thread at
 *     a time; distinct handles may be used from distinct threads.
 *   - The library never calls exit() or abort() on I/O, CUDA or input errors.
 */
#ifndef MSA_H
#define MSA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(MSA_BUILD_SHARED)
#define MSA_API __declspec(dllexport)
#elif defined(__GNUC__)
#define MSA_API __attribute__((visibility("default")))
#else
#define MSA_API
#endif

/* ------------------------------------------------------------------------ */
/* 1. Version and status                                                    */
/* ------------------------------------------------------------------------ */

#define MSA_VERSION_MAJOR 0
#define MSA_VERSION_MINOR 1
#define MSA_VERSION_PATCH 0
#define MSA_VERSION_NUMBER \
    (MSA_VERSION_MAJOR * 10000 + MSA_VERSION_MINOR * 100 + MSA_VERSION_PATCH)

/* The library's version as "MAJOR.MINOR.PATCH", plus build features
 * (e.g. "0.1.0 cuda"). The string is static. */
MSA_API const char *msa_version(void);

typedef enum msa_status {
    MSA_OK = 0,
    MSA_EINVAL = -1,       /* an argument or a shape is invalid */
    MSA_ENOMEM = -2,       /* host or device memory exhausted */
    MSA_EIO = -3,          /* an operating-system I/O error */
    MSA_ECORRUPT = -4,     /* stored data failed its checksum or is malformed */
    MSA_ENOTFOUND = -5,    /* no such session, file, tensor or key */
    MSA_EEXIST = -6,       /* the name is already taken */
    MSA_EVERSION = -7,     /* a file or store of a format version we do not read */
    MSA_EMODEL = -8,       /* a session bound to another model */
    MSA_EUNSUPPORTED = -9, /* valid input that this build cannot handle */
    MSA_ECUDA = -10,       /* a CUDA or cuBLAS call failed */
    MSA_ENOSPC = -11,      /* no space left on device (or the store's map is full) */
    MSA_EBUSY = -12,       /* the resource is locked by another writer */
    MSA_EFORMAT = -13,     /* an input file is truncated or not of its format */
    MSA_ENET = -14,        /* a network transfer failed */
    MSA_EINTR = -15,       /* interrupted by the caller (callback or signal) */
    MSA_ENODEV = -16,      /* no usable GPU, or a build without CUDA */
    MSA_ERANGE = -17,      /* a value outside its limits (context, pool size) */
    MSA_EAUTH = -18,       /* a server refused the credentials */
    MSA_EFAILED = -19      /* a session failed earlier and must be closed and
                              reopened (msa_session_open, "Failed sessions") */
} msa_status;

/* A short, static description of a status code ("checksum mismatch or
 * corrupt data"). Unknown codes give "unknown error". */
MSA_API const char *msa_strerror(int status);

/* The detailed message of the last failure on the calling thread, e.g.
 * "session 'notes', layer 3, block 17: checksum mismatch". The string is
 * valid until the next failing call on this thread. Empty when none. */
MSA_API const char *msa_last_error(void);

/* ------------------------------------------------------------------------ */
/* 2. MSA attention over paged KV memory                                    */
/* ------------------------------------------------------------------------ */
/*
 * Shapes. A layer has Hq query heads in Hkv GQA groups of G = Hq/Hkv heads,
 * head dim d. Its index branch has one index query head per group (dim
 * d_idx) and either one index key head shared by all groups (MSA, trained
 * index) or one per group (training-free indexes): idx_key_heads is 1 or Hkv.
 *
 * Memory is paged in blocks of Bk tokens. A pool holds physical block slots:
 *
 *   k, v   : [n_slots][Hkv][Bk][d]            (one slot = one block of a layer)
 *   kidx   : [n_idx_slots][idx_key_heads][Bk][d_idx]
 *
 * Each sequence maps its logical blocks 0..nb-1 to slots through a block
 * table in CSR form (as FlashInfer does): the blocks of sequence s are
 * table[indptr[s] .. indptr[s+1]-1]. Index keys have their own table, so
 * that index keys can stay resident while KV blocks are paged: the KV table
 * only needs valid entries for the blocks that the step selects (other
 * entries may be -1).
 *
 * Queries. A batch holds n_q query rows; the rows of sequence s are
 * q_indptr[s] .. q_indptr[s+1]-1, row i sits at absolute position q_pos[i]
 * and sees the tokens j <= q_pos[i] (q_pos[i] < seq_len[s]). Decode is one
 * row per sequence; a prefill chunk is several rows of one sequence whose
 * keys were written to the pool before the call.
 *
 * Selection (DESIGN.md section 1): token score s = q_idx . k_idx / sqrt(d_idx);
 * block score = max over the visible tokens of the block, -inf when none;
 * per (row, group) the local block q_pos/Bk is always taken and the other
 * top_k - 1 slots go to the best visible non-local blocks (higher score
 * first, then lower block id). Rows that see top_k blocks or fewer take all
 * of them, and MSA equals dense attention.
 */

typedef enum msa_dtype {
    MSA_DTYPE_F32 = 0,
    MSA_DTYPE_F16 = 1,
    MSA_DTYPE_BF16 = 2
} msa_dtype;

/* "f32", "f16", "bf16"; "?" for a value outside the enum. Static string. */
MSA_API const char *msa_dtype_name(msa_dtype dtype);

/* Bytes of one element: 4 for MSA_DTYPE_F32, 2 for the half types. */
MSA_API size_t msa_dtype_size(msa_dtype dtype);

/* Converts n elements from src (of src_type) to dst (of dst_type), e.g.
 * a framework's fp32 keys to the bf16 a CUDA session stores. Rounding to a
 * half type is to nearest even; NaN stays NaN, values beyond f16's range
 * become infinities. Converting a type to itself copies. dst and src must
 * not overlap.
 * Returns MSA_OK or MSA_EINVAL (NULL pointers with n > 0, an unknown
 * dtype); dst is untouched after a failure. */
MSA_API int msa_dtype_convert(void *dst, msa_dtype dst_type, const void *src,
                              msa_dtype src_type, size_t n);

typedef enum msa_device_kind {
    MSA_DEVICE_CPU = 0,
    MSA_DEVICE_CUDA = 1
} msa_device_kind;

typedef struct msa_attn_config {
    int n_q_heads;      /* Hq */
    int n_kv_heads;     /* Hkv; Hq % Hkv == 0 */
    int head_dim;       /* d */
    int idx_dim;        /* d_idx */
    int idx_key_heads;  /* 1 (shared index key) or Hkv (one per group) */
    int block_size;     /* Bk, tokens per block (default 128) */
    int top_k;          /* k, blocks read per (row, group) (default 16) */
    float scale;        /* softmax scale; 0 means 1/sqrt(head_dim) */
} msa_attn_config;

/* Defaults: Bk 128, k 16, idx_key_heads 1, scale 0; head counts and dims 0
 * (the caller must set them). */
MSA_API msa_attn_config msa_attn_default_config(void);

typedef struct msa_paged_kv {
    msa_dtype dtype;           /* of k, v and kidx */
    const void *k;             /* [n_slots][Hkv][Bk][d] */
    const void *v;             /* [n_slots][Hkv][Bk][d] */
    const int32_t *kv_indptr;  /* [n_seqs + 1] */
    const int32_t *kv_table;   /* [kv_indptr[n_seqs]] logical block -> slot */
    const void *kidx;          /* [n_idx_slots][idx_key_heads][Bk][d_idx] */
    const int32_t *idx_indptr; /* [n_seqs + 1]; NULL: same as kv_indptr */
    const int32_t *idx_table;  /* NULL: same as kv_table */
    const int32_t *seq_len;    /* [n_seqs] tokens held by each sequence */
    int n_seqs;
    int max_blocks;            /* upper bound on the logical blocks of any
                                  sequence; required on CUDA (the tables live
                                  on the device), computed when 0 on the CPU */
} msa_paged_kv;

typedef struct msa_attn_batch {
    int n_q;                   /* query rows */
    const int32_t *q_indptr;   /* [n_seqs + 1] rows of each sequence */
    const int32_t *q_pos;      /* [n_q] absolute position of each row */
    const void *q;             /* [n_q][Hq][d], same dtype as the KV */
    const void *q_idx;         /* [n_q][Hkv][d_idx] index queries */
    void *out;                 /* [n_q][Hq][d] output, same dtype */
    float *lse;                /* optional [n_q][Hq]: natural-log sum-exp of
                                  the scaled scores each row attended over */
    int32_t *selected;         /* optional [n_q][Hkv][top_k]: chosen logical
                                  blocks, local block first, then by score;
                                  -1 pads rows that see fewer blocks */
} msa_attn_batch;

/* Where a call runs. On the CPU, n_threads workers (0: one per core). On
 * CUDA, all pointers in the call are device pointers except the config and
 * the structs themselves, work is queued on `stream` (a cudaStream_t, NULL
 * for the default stream) and the call returns without synchronising; the
 * caller provides `workspace` of at least msa_attention_workspace_size()
 * bytes. */
typedef struct msa_exec {
    msa_device_kind device;
    int n_threads;
    void *stream;
    void *workspace;
    size_t workspace_size;
} msa_exec;

/* CPU execution with one worker per core. */
MSA_API msa_exec msa_exec_default(void);

/* Bytes of device workspace msa_attention() and msa_index_select() need for
 * this config and a batch of n_q rows over sequences of at most
 * max_blocks logical blocks. 0 on the CPU. */
MSA_API size_t msa_attention_workspace_size(const msa_attn_config *cfg,
                                            int n_q, int max_blocks);

/* The whole MSA step: index scores, block max-pool, Top-k per (row, group),
 * and exact attention over the selected blocks. Writes batch->out and, when
 * given, batch->lse and batch->selected.
 *
 * Returns MSA_OK; MSA_EINVAL for inconsistent shapes (the message says
 * which), a row position at or past its sequence length, or a selected
 * block whose KV slot is -1; MSA_EUNSUPPORTED for a dtype or head dim the
 * device cannot run (CPU: F32 only; CUDA: F16/BF16, d in {64, 128});
 * MSA_ENODEV when CUDA is asked for and not available; MSA_ECUDA when a
 * launch fails. Outputs are unspecified after a failure; inputs are never
 * written. */
MSA_API int msa_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                          const msa_attn_batch *batch, const msa_exec *exec);

/* Selection alone: fills batch->selected (required) from q_idx and the index
 * keys; reads no K/V (kv->k, kv->v and the KV table may be NULL). This is the
 * first half of a paged step: page in the selected blocks, then call
 * msa_sparse_attention(). Errors as msa_attention(). */
MSA_API int msa_index_select(const msa_attn_config *cfg, const msa_paged_kv *kv,
                             const msa_attn_batch *batch, const msa_exec *exec);

/* Exact attention over the blocks in batch->selected (an input here, as
 * msa_index_select() wrote it). Index keys and q_idx are not read. Errors as
 * msa_attention(). */
MSA_API int msa_sparse_attention(const msa_attn_config *cfg,
                                 const msa_paged_kv *kv,
                                 const msa_attn_batch *batch,
                                 const msa_exec *exec);

/* Dense causal attention over every visible token: the baseline that MSA is
 * checked and timed against. Ignores the index fields and top_k. Errors as
 * msa_attention(). */
MSA_API int msa_dense_attention(const msa_attn_config *cfg,
                                const msa_paged_kv *kv,
                                const msa_attn_batch *batch,
                                const msa_exec *exec);

/* Whether this build has CUDA and a GPU is visible (1) or not (0). */
MSA_API int msa_cuda_available(void);

/* ------------------------------------------------------------------------ */
/* 3. The store                                                             */
/* ------------------------------------------------------------------------ */
/* 3a. Stores and sessions on disk (persist/) */
/*
 * A store is an LMDB environment in a directory. It holds named sessions;
 * a session is bound to one model (its fingerprint) and one set of shapes,
 * and records its token sequence and, for every layer and every block of
 * block_size tokens, the K block, the V block and the index keys of that
 * block, compressed (zstd over byte planes; optionally fp8 for K/V) and
 * checksummed (CRC32C). The last, partly filled block is stored too and
 * rewritten as it fills, so a session resumes exactly where it stopped.
 *
 * Layouts handed to and from the store, per (layer, block):
 *
 *   k, v : [n_kv_heads][block_size][head_dim]       kv_dtype
 *   kidx : [idx_key_heads][block_size][idx_dim]     idx_dtype
 *
 * Only the first n_tokens rows of each head are stored; on read the rows
 * past n_tokens are zero.
 *
 * Transactions. Writes go through msa_store_txn_*: begin, put tokens and
 * blocks, commit. A commit is atomic (LMDB): after a crash the store holds
 * every session exactly as of its last commit. One forward chunk (the
 * tokens and, for every layer, the blocks they touch) is meant to be one
 * transaction. Puts are compressed and buffered in memory; the LMDB write
 * lock is only taken inside msa_store_txn_commit(), which also grows the map
 * when it is full and retries.
 *
 * Processes. Many readers and one writer at a time, across processes, as
 * LMDB allows. A handle (msa_store, msa_store_session, msa_store_txn) is
 * used by one thread at a time; distinct handles may be used from distinct
 * threads. The on-disk format has its own version (MSA_STORE_FORMAT_VERSION),
 * separate from the library's.
 */

#define MSA_STORE_FORMAT_VERSION 2
#define MSA_STORE_NAME_MAX 255        /* bytes in a session name */
#define MSA_STORE_FINGERPRINT_MAX 128 /* bytes in a model fingerprint */
#define MSA_STORE_TAG_MAX 1024        /* bytes in a block's source tag */

typedef struct msa_store msa_store;
typedef struct msa_store_session msa_store_session;
typedef struct msa_store_txn msa_store_txn;

/* K/V codecs. Index keys are always stored losslessly. */
typedef enum msa_store_lossy {
    MSA_STORE_LOSSLESS = 0, /* byte-plane shuffle + zstd; exact */
    MSA_STORE_LOSSY_FP8 = 1 /* fp8 e4m3 with one f32 scale per row, + zstd */
} msa_store_lossy;

typedef struct msa_store_params {
    const char *dir;    /* NULL: $XDG_DATA_HOME/msa-mem, else
                           ~/.local/share/msa-mem (msa_store_default_dir) */
    int durable;        /* 1 (default): every commit is fsync'ed. 0: commits
                           reach the OS only (MDB_NOSYNC, segment files
                           not fdatasynced); msa_store_sync() makes them
                           durable; a crash of the machine (not of the
                           process) may lose the latest commits, or leave
                           blocks that their checksums then report damaged */
    int readonly;       /* 0 (default). 1: open for reading only */
    int create;         /* 1 (default): create the directory and the store
                           when missing */
    size_t map_size;    /* initial map size in bytes (default 1 GiB); the
                           map grows by itself */
    size_t map_max;     /* the map never grows past this (default 0: no
                           limit); commits that need more give MSA_ENOSPC */
    int level;          /* zstd level for new blocks (default 1) */
    msa_store_lossy lossy; /* codec for new K/V blocks (default lossless) */
    int max_readers;    /* LMDB reader slots (default 126) */
    size_t segment_min; /* a full block whose stored value has at least this
                           many bytes is appended to a segment file beside
                           LMDB, which keeps a pointer to it (default 32 KiB;
                           0: the default; SIZE_MAX: every block in LMDB).
                           Partial blocks always stay in LMDB. docs/store.md */
} msa_store_params;

/* Defaults as listed in msa_store_params. */
MSA_API msa_store_params msa_store_default_params(void);

/* The default store directory into buf: $XDG_DATA_HOME/msa-mem, else
 * $HOME/.local/share/msa-mem. Returns MSA_OK, MSA_ERANGE when buf is too
 * small, MSA_ENOTFOUND when neither variable is set. */
MSA_API int msa_store_default_dir(char *buf, size_t n);

/* Opens (and, when params->create, creates) the store in params->dir and
 * stores the handle in *out. Stale reader slots of dead processes are
 * cleared.
 *
 * Returns MSA_OK; MSA_EFORMAT when the directory holds other files but no
 * store (nothing is created there) or its LMDB holds no store magic;
 * MSA_EVERSION for a store of a newer format version; MSA_ENOTFOUND when it
 * does not exist and create is 0; MSA_EIO, MSA_ENOMEM, MSA_EBUSY (reader
 * table full); MSA_EINVAL for bad params. On failure *out is NULL and
 * nothing was created except, when create is set, missing directories. */
MSA_API int msa_store_open(const msa_store_params *params, msa_store **out);

/* Closes the store. Sessions and transactions opened from it must be
 * closed first. Accepts NULL. */
MSA_API void msa_store_close(msa_store *store);

/* The store's directory (valid until msa_store_close). */
MSA_API const char *msa_store_dir(const msa_store *store);

/* Flushes committed data to disk (for stores opened with durable = 0).
 * Returns MSA_OK or MSA_EIO; the store stays usable. */
MSA_API int msa_store_sync(msa_store *store);

/* Threads that compress the blocks of this handle's append transactions
 * (0, the default: one per core; 1: each put is compressed on the calling
 * thread as it is made). With more than one, puts copy the caller's rows
 * and are compressed in batches (16 MiB of raw rows, and at commit) on the
 * process's thread pool (msa_parallel_for); the commit is still one LMDB
 * transaction. Applies to transactions begun afterwards. */
MSA_API void msa_store_set_threads(msa_store *store, int n_threads);

/* What a session is: bound at creation, never changed. */
typedef struct msa_store_shape {
    int n_layers;
    int n_kv_heads;     /* Hkv */
    int head_dim;       /* d */
    int idx_key_heads;  /* 1 or Hkv */
    int idx_dim;        /* d_idx */
    int block_size;     /* Bk tokens per block */
    msa_dtype kv_dtype;
    msa_dtype idx_dtype;
} msa_store_shape;

/* A session as msa_store_list() and msa_store_session_stat() report it. */
typedef struct msa_store_session_info {
    char name[MSA_STORE_NAME_MAX + 1];
    char fingerprint[MSA_STORE_FINGERPRINT_MAX + 1];
    msa_store_shape shape;
    uint64_t n_tokens;
    uint64_t n_blocks;      /* blocks per layer (the last may be partial) */
    uint64_t raw_bytes;     /* K, V and index keys before compression */
    uint64_t stored_bytes;  /* compressed blocks and tokens on disk; blocks
                               shared with a fork count in both */
    double ratio;           /* raw_bytes / stored block bytes (0 if empty) */
    int64_t created;        /* Unix seconds */
    int64_t last_use;       /* Unix seconds of the last commit */
    char parent[MSA_STORE_NAME_MAX + 1]; /* forked from ("" if none) */
} msa_store_session_info;

/* All sessions, sorted by name, into a malloc'ed array (*out, *n; free
 * with msa_store_list_free). Returns MSA_OK (also with *n = 0), MSA_ENOMEM,
 * MSA_EIO, MSA_ECORRUPT for an unreadable session record (named). On
 * failure *out is NULL and *n is 0. */
MSA_API int msa_store_list(msa_store *store, msa_store_session_info **out,
                           size_t *n);
MSA_API void msa_store_list_free(msa_store_session_info *list);

/* Creates an empty session bound to `fingerprint` (1..128 printable bytes)
 * and `shape`. Returns MSA_OK; MSA_EEXIST when the name is taken; MSA_EINVAL
 * for an empty or too long name or fingerprint or a bad shape; MSA_ENOSPC,
 * MSA_EIO. On failure the store is unchanged. */
MSA_API int msa_store_session_create(msa_store *store, const char *name,
                                     const char *fingerprint,
                                     const msa_store_shape *shape);

/* Opens a session for reading and appending. When `fingerprint` is not
 * NULL it must equal the session's, else MSA_EMODEL (the message names
 * both). Returns MSA_OK, MSA_ENOTFOUND, MSA_EMODEL, MSA_ECORRUPT (bad
 * session record), MSA_ENOMEM, MSA_EBUSY (reader table full). On failure
 * *out is NULL. */
MSA_API int msa_store_session_open(msa_store *store, const char *name,
                                   const char *fingerprint,
                                   msa_store_session **out);

/* Closes a session handle (its transaction must be finished). Accepts NULL. */
MSA_API void msa_store_session_close(msa_store_session *s);

/* The session's current state (re-read from the store, so commits of other
 * handles and processes show). Returns MSA_OK, MSA_ENOTFOUND (removed
 * meanwhile), MSA_ECORRUPT, MSA_EIO. */
MSA_API int msa_store_session_stat(msa_store_session *s,
                                   msa_store_session_info *out);

/* Reads tokens [start, start + n) into out. Returns MSA_OK; MSA_ERANGE when
 * the range passes the end; MSA_ECORRUPT (naming session and chunk);
 * MSA_ENOTFOUND when the session was removed. out is unspecified on
 * failure. */
MSA_API int msa_store_read_tokens(msa_store_session *s, uint64_t start,
                                  uint64_t n, int32_t *out);

/* Per-block metadata. */
typedef struct msa_store_block_info {
    int n_tokens;                    /* rows filled, 1..block_size */
    char tag[MSA_STORE_TAG_MAX + 1]; /* source tag ("src/main.c:10-42") */
    uint32_t stored_bytes;           /* compressed size of the block */
    int lossy;                       /* codec used (msa_store_lossy) */
} msa_store_block_info;

/* Reads, verifies and decompresses the block (layer, block) into the
 * caller's buffers (any of k, v, kidx may be NULL to skip it; info too).
 * Every read verifies the block's CRC32C; a bad block is never returned as
 * data. Returns MSA_OK; MSA_ENOTFOUND for a block past the end; MSA_EINVAL
 * for a layer out of range; MSA_ECORRUPT naming session, layer and block;
 * MSA_ENOMEM. Buffers are unspecified on failure. */
MSA_API int msa_store_read_block(msa_store_session *s, int layer,
                                 uint64_t block, void *k, void *v, void *kidx,
                                 msa_store_block_info *info);

/* Reads the index keys of blocks [first, first + n) of one layer into out,
 * [n][idx_key_heads][block_size][idx_dim] (rows past a block's n_tokens are
 * zero), in one read transaction. Errors as msa_store_read_block(), plus
 * MSA_ERANGE when the range passes the last block. */
MSA_API int msa_store_read_index(msa_store_session *s, int layer,
                                 uint64_t first, uint64_t n, void *out);

/* Starts an append to the session. One transaction per session handle at a
 * time. Returns MSA_OK, MSA_EBUSY (the handle has one open), MSA_ENOMEM,
 * MSA_ENOTFOUND. */
MSA_API int msa_store_txn_begin(msa_store_session *s, msa_store_txn **out);

/* Appends n tokens. Returns MSA_OK, MSA_ENOMEM (the txn stays usable), or
 * MSA_EINVAL. */
MSA_API int msa_store_txn_put_tokens(msa_store_txn *t, const int32_t *tokens,
                                     size_t n);

/* Puts the block (layer, block): K, V and index keys of its first n_tokens
 * rows, with a source tag (NULL: ""). All three are required and travel
 * together. Per layer, blocks go in order: `block` must be the layer's
 * current last block when it is partial (a rewrite, n_tokens not smaller
 * than before) or the next one. The data is compressed now, or copied and
 * compressed with other puts of the transaction on several threads
 * (msa_store_set_threads); either way the caller's buffers may be reused
 * when this returns. Returns MSA_OK; MSA_EINVAL (names the rule broken; the
 * txn stays usable); MSA_ENOMEM (after a failed batch compression, also of
 * an earlier put: the txn then only aborts, its commit returns the error). */
MSA_API int msa_store_txn_put_block(msa_store_txn *t, int layer, uint64_t block,
                                    int n_tokens, const void *k, const void *v,
                                    const void *kidx, const char *tag);

/* What a transaction wrote so far. lossy errors are over K and V values of
 * lossy blocks: the largest absolute error and the RMS error relative to
 * the RMS of the data (0 when lossless). */
typedef struct msa_store_txn_stats {
    uint64_t raw_bytes, stored_bytes, blocks, tokens;
    double lossy_max_abs_err, lossy_rel_rms_err;
} msa_store_txn_stats;
MSA_API void msa_store_txn_stats_get(const msa_store_txn *t,
                                     msa_store_txn_stats *out);

/* Commits and frees the transaction (also on failure). Every layer must
 * then cover exactly the session's tokens (index keys and KV never part).
 * Returns MSA_OK; MSA_EINVAL when a layer's blocks do not cover the tokens;
 * MSA_EBUSY when another handle or process appended to the session since
 * begin; MSA_ENOTFOUND (removed meanwhile); MSA_ENOSPC when the disk or
 * map_max is reached; MSA_EIO; MSA_ENOMEM. On failure nothing of the
 * transaction is in the store. */
MSA_API int msa_store_txn_commit(msa_store_txn *t);

/* Drops the transaction. Accepts NULL. */
MSA_API void msa_store_txn_abort(msa_store_txn *t);

/* Removes a session; blocks shared with forks stay for them. Returns
 * MSA_OK, MSA_ENOTFOUND, MSA_ENOSPC, MSA_EIO. It does not look at
 * msa_session handles: a writer of the session then fails; use
 * msa_session_remove() (section 5), which refuses a session in use. */
MSA_API int msa_store_remove(msa_store *store, const char *name);

/* Makes dst a copy of src that shares src's blocks (reference counted,
 * copy on write for the partial last block); both then grow independently.
 * Costs a few bytes per block, not the blocks. Returns MSA_OK,
 * MSA_ENOTFOUND, MSA_EEXIST, MSA_EINVAL, MSA_ENOSPC, MSA_EIO. On failure the
 * store is unchanged. */
MSA_API int msa_store_fork(msa_store *store, const char *src, const char *dst);

/* Writes one session into a portable file (format "MSAMEMX1": records with
 * a CRC32C each and a final record counting them). Blocks are copied
 * compressed and verified on the way. Returns MSA_OK, MSA_ENOTFOUND,
 * MSA_ECORRUPT (a bad block; the file is removed), MSA_EIO, MSA_ENOSPC. */
MSA_API int msa_store_export(msa_store *store, const char *name,
                             const char *path);

/* Reads a file written by msa_store_export into a new session `name` (NULL:
 * the name in the file). The whole file is verified inside one write
 * transaction. Returns MSA_OK; MSA_EFORMAT for a truncated, tampered or
 * foreign file; MSA_EVERSION for a newer file format; MSA_EEXIST;
 * MSA_ENOSPC; MSA_EIO. On failure the store is unchanged. */
MSA_API int msa_store_import(msa_store *store, const char *path,
                             const char *name);

/* Rewrites the store without free pages (mdb_env_copy2 MDB_CP_COMPACT into
 * a temporary file, fsync, rename over data.mdb) and reopens it. Needs the
 * store to be open in this process only. Returns MSA_OK; MSA_EBUSY when
 * another process has it open; MSA_ENOSPC, MSA_EIO (the original is kept;
 * the handle stays usable, except after MSA_EIO on reopen, which the
 * message says). saved (optional) gets bytes freed on disk. */
MSA_API int msa_store_compact(msa_store *store, int64_t *saved);

/* Checks the whole store: every session record, token chunk, block entry
 * and block checksum, decodes every block, and recounts block references.
 * Each finding is passed to `report` (may be NULL) as one line naming
 * session, layer and block. Returns MSA_OK when clean, MSA_ECORRUPT when
 * anything was found (*n_findings says how many), or MSA_EIO/MSA_ENOMEM
 * when the check itself could not run. Changes nothing. */
MSA_API int msa_store_fsck(msa_store *store,
                           void (*report)(void *ctx, const char *finding),
                           void *ctx, uint64_t *n_findings);

/* 3a'. Damaged stores: what fsck finds and what salvage copies (persist/) */
/*
 * Damage is reported, never trusted: every LMDB page is checked before LMDB
 * walks it (at msa_store_open: branch and leaf pages; in msa_store_fsck
 * also the header of every overflow page), so a flipped bit in the file
 * gives MSA_ECORRUPT naming table and page instead of an assertion in
 * LMDB; the store's own records and blocks carry CRC32C checksums,
 * verified on every read. A store that fails the page check does not open
 * at all; msa_store_salvage() reads it without LMDB and copies what is
 * intact into a new store.
 */

/* What msa_store_salvage() found and copied. */
typedef struct msa_store_salvage_stats {
    uint64_t sessions_seen;      /* session records read */
    uint64_t sessions_copied;    /* copied whole (or intact, in a dry run) */
    uint64_t sessions_truncated; /* copied up to their first damaged block or
                                    token chunk */
    uint64_t sessions_lost;      /* left out: their record is damaged (records
                                    on a damaged page whose name cannot be
                                    read are not counted: `damaged` is) */
    uint64_t tokens_copied, tokens_lost;
    uint64_t blocks_copied;      /* (layer, block) entries */
    uint64_t damaged;            /* damaged pages, records and blocks found */
} msa_store_salvage_stats;

/* Copies every intact session of the store in src_dir into a new store in
 * dst_dir, reading the source without LMDB (so a damaged file is read as
 * far as its pages allow) and verifying every record and block in full. A
 * session whose records all check out is copied whole; one with a damaged
 * or missing block or token chunk is copied up to that damage, cut at a
 * block boundary (in every layer), so the copy is a consistent session
 * that continues; one whose record is damaged is left out. Blocks shared by
 * forks stay shared. Every finding and every session's fate is passed to
 * `report` (may be NULL) as one line. dst_dir NULL: a dry run, nothing is
 * written (what fsck lists for a store that does not open).
 * The source is never written; it must not be open in another process
 * (its lock is taken exclusively).
 * Returns MSA_OK when the salvage ran, whatever it left out (*stats says:
 * stats->damaged > 0 when anything was damaged); MSA_EINVAL (no src_dir);
 * MSA_ENOTFOUND (no store there); MSA_EEXIST (dst_dir holds a store);
 * MSA_EBUSY (src in use); MSA_EFORMAT, MSA_EVERSION (not a store we read);
 * MSA_ECORRUPT when nothing can be read (the file's meta pages or its table
 * of tables are damaged); MSA_ENOSPC, MSA_EIO, MSA_ENOMEM writing the copy.
 * After a failure while writing, dst_dir holds the sessions copied so far
 * (each one whole or not at all). stats may be NULL. */
MSA_API int msa_store_salvage(const char *src_dir, const char *dst_dir,
                              void (*report)(void *ctx, const char *line),
                              void *ctx, msa_store_salvage_stats *stats);

/* Checks one session of an open store the way opening it for generation
 * reads it: its record, every token chunk, every block entry, and the index
 * keys of every block (their plane checksums); with `full`, every block
 * decoded in full as fsck does. Each damaged block or chunk is passed to
 * `report` (may be NULL) as one line naming layer and block; *n_damaged
 * (may be NULL) gets their number. Returns MSA_OK when intact,
 * MSA_ECORRUPT when something is damaged, MSA_ENOTFOUND, MSA_EIO,
 * MSA_ENOMEM. Changes nothing. */
MSA_API int msa_store_session_check(msa_store_session *s, int full,
                                    void (*report)(void *ctx, const char *line),
                                    void *ctx, uint64_t *n_damaged);

/* 3b. The pager and its counters (memory/) */

/* Counters of the block pager that stands between the store and attention
 * (DESIGN.md section 2). Two tiers: the host cache of decompressed blocks
 * (filled from the store) and, on CUDA, the GPU block pool (filled from the
 * host cache). On a CPU-only run the host cache is the pool and the gpu_*
 * fields stay 0.
 *
 * A lookup is one distinct block that one kv step needs from a tier; the
 * open tail block of each layer (the one still being appended to) is always
 * resident and is not counted as a lookup. Invariants: hits + misses ==
 * lookups per tier; bytes_store_to_host == host_misses * block_bytes;
 * bytes_host_to_gpu == gpu_misses * block_bytes, where block_bytes is the
 * K plus V size of one block. host_lookups == gpu_misses on CUDA. */
typedef struct msa_pager_stats {
    uint64_t gpu_lookups, gpu_hits, gpu_misses, gpu_evictions;
    uint64_t host_lookups, host_hits, host_misses, host_evictions;
    uint64_t bytes_store_to_host;  /* K+V bytes read from the block source */
    uint64_t bytes_host_to_gpu;    /* K+V bytes of paged blocks copied up */
    uint64_t bytes_tail_to_gpu;    /* rows of the open tail blocks copied up */
    uint64_t bytes_index_to_gpu;   /* index-key bytes copied up */
    uint64_t blocks_written;       /* completed blocks handed to the store */
    uint64_t steps;                /* kv views served */
    int64_t gpu_slots, host_slots; /* capacity of each tier, in blocks */
    int64_t block_bytes;           /* K+V bytes of one block */
    double seconds_store;          /* wall time spent in block-source reads */
} msa_pager_stats;


/* ------------------------------------------------------------------------ */
/* 4. The engine: models, tokenizers, sessions                              */
/* ------------------------------------------------------------------------ */
/* 4a. Models (engine/model*) */
/*
 * A model is a Llama-family transformer (GGUF "llama" or "qwen2", or a
 * Hugging Face directory) held as fp32 on the CPU: F32 tensors are mapped
 * from the file, F16/BF16/Q8_0 ones converted on load (so a model costs
 * 4 bytes per parameter of RAM). Models without trained MSA index weights
 * get the training-free index of docs/index.md; a trained index is stored
 * as the GGUF tensors blk.N.msa_idx_q.weight, blk.N.msa_idx_k.weight,
 * blk.N.msa_idx_q_norm.weight and blk.N.msa_idx_k_norm.weight.
 */
typedef struct msa_model msa_model;

typedef struct msa_model_params {
    int n_threads;           /* CPU workers (0: one per core) */
    msa_device_kind device;  /* where the forward pass runs (CPU for now) */
    int no_fingerprint_cache;/* 1: neither read nor write the fingerprint
                                cache (~/.cache/msa-mem/fingerprints) */
} msa_model_params;

/* n_threads 0, device CPU, fingerprint cache on. */
MSA_API msa_model_params msa_model_default_params(void);

typedef struct msa_model_info {
    char arch[32];           /* "llama", "qwen2" */
    int n_layers;
    int dim;                 /* model (embedding) dim */
    int n_heads;             /* query heads Hq */
    int n_kv_heads;          /* Hkv */
    int head_dim;            /* d */
    int ff_dim;              /* feed-forward hidden dim */
    int vocab_size;
    int context_length;      /* trained context */
    float rope_theta;
    int has_trained_index;   /* 1: trained MSA index weights in the file */
    int idx_dim;             /* d_idx: trained dim, or head_dim (training-free) */
    int idx_key_heads;       /* 1 (trained, shared) or Hkv (training-free) */
    char fingerprint[72];    /* SHA-256 hex of shapes and tensor bytes */
} msa_model_info;

/* Opens a model: a GGUF file or a Hugging Face directory (config.json +
 * safetensors). params NULL: defaults. Computes the fingerprint (SHA-256 of
 * every tensor's name, type, shape and bytes) once and caches it in
 * $XDG_CACHE_HOME/msa-mem/fingerprints (else ~/.cache/...), keyed by the
 * file's device, inode, size, mtime and ctime and a sample of its bytes, so
 * that a changed file is always hashed again (docs/models.md; an unwritable
 * cache just means recomputing). On success *out owns the model; free it
 * with msa_model_free().
 * Returns MSA_OK; MSA_ENOTFOUND (no such file), MSA_EINVAL (a FIFO, device
 * or socket, refused without waiting on it), MSA_EIO, MSA_EFORMAT (not a
 * valid model file, a tensor missing, of the wrong shape or overlapping
 * another, a context length of 0, RoPE theta <= 0 or not finite: the
 * message names it), MSA_EVERSION (GGUF version), MSA_EUNSUPPORTED (another
 * architecture or tensor type, the message names it), MSA_ENOMEM. *out is
 * NULL after a failure. */
MSA_API int msa_model_open(const char *path, const msa_model_params *params,
                           msa_model **out);

/* Releases the model and its mapping. Accepts NULL. */
MSA_API void msa_model_free(msa_model *m);

/* Copies the model's description into *info. MSA_OK or MSA_EINVAL. */
MSA_API int msa_model_get_info(const msa_model *m, msa_model_info *info);

/* Converts a llama2.c checkpoint (MODEL.bin) and its tokenizer
 * (TOKENIZER.bin) into a GGUF v3 file of architecture "llama" at out_path,
 * tokenizer embedded, F32 tensors. The output is written to a temporary
 * file beside it, fsync'ed and renamed, so it is never left half-written;
 * an existing out_path is replaced, unless it is one of the inputs.
 * Returns MSA_OK; MSA_ENOTFOUND (an input missing), MSA_EEXIST (out_path
 * is an input, compared by device and inode), MSA_EINVAL (an input is not
 * a regular file), MSA_EFORMAT (an input truncated or inconsistent: the
 * message says which), MSA_EIO / MSA_ENOSPC (writing; nothing is left
 * behind), MSA_ENOMEM. */
MSA_API int msa_convert_llama2c(const char *model_bin, const char *tokenizer_bin,
                                const char *out_path);

/* Calibration: training a model's MSA index (engine/calibrate/) */
/*
 * A model without trained index weights can be given some: for every
 * layer, W_q_idx (one index query head per KV group, Hkv*d_idx x dim),
 * W_k_idx (one index key head shared by all groups, d_idx x dim) and the
 * two index RMSNorm weights (scale 1+w) are fitted with Adam, full batch,
 * to the KL alignment loss of DESIGN.md section 1: the teacher is the
 * model's dense attention over the visible tokens, averaged over the G
 * query heads of each group; the student is the softmax of the index
 * scores. The model's own forward pass gives the inputs, detached, so only
 * the index weights learn. The result is a new GGUF: the input model (every
 * metadata key and tensor) plus blk.N.msa_idx_{q,k,q_norm,k_norm}.weight
 * (F32) and <arch>.msa.index_dim; msa_model_open() of it reports
 * has_trained_index = 1. `msa-mem calibrate` is this on text files.
 *
 * Cost: every layer's teacher is kept in RAM, n_seq * Hkv * T(T+1)/2 floats
 * per layer (T = seq_len), so long sequences cost quadratically. Work runs
 * on the CPU only, on n_threads workers.
 */

/* Called every log_every Adam steps of each layer and after its last step,
 * with the mean KL per (row, group) at that step. */
typedef void (*msa_calib_step_fn)(void *user, int layer, int step, double loss);

typedef struct msa_calib_params {
    int idx_dim;              /* d_idx, even, 2..4096 (default 32) */
    int steps;                /* Adam steps per layer (default 200; 0: the
                                 initial weights are written) */
    float lr;                 /* Adam learning rate (default 0.02) */
    int seq_len;              /* tokens per calibration sequence, BOS first
                                 (default 256) */
    int32_t bos;              /* prepended to every sequence; -1 (default):
                                 none. Usually msa_tokenizer_bos(). */
    int n_threads;            /* CPU workers; 0: one per core */
    uint64_t seed;            /* weight initialisation (default 1) */
    msa_calib_step_fn on_step;/* optional progress; NULL: none */
    void *user;               /* passed to on_step */
    int log_every;            /* steps between on_step calls (default 50) */
} msa_calib_params;

/* idx_dim 32, steps 200, lr 0.02, seq_len 256, bos -1, n_threads 0,
 * seed 1, no callback, log_every 50. */
MSA_API msa_calib_params msa_calib_default_params(void);

enum { MSA_CALIB_MAX_LAYERS = 256 };

typedef struct msa_calib_result {
    int n_layers;             /* layers trained */
    int n_seq, seq_len;       /* the token stream was cut into n_seq
                                 sequences of seq_len (BOS included) */
    /* mean KL per (row, group) before the first and after the last step,
     * per layer (entries n_layers.. are 0) */
    double loss_first[MSA_CALIB_MAX_LAYERS], loss_last[MSA_CALIB_MAX_LAYERS];
    double seconds_inputs;    /* forward passes that gather the teacher */
    double seconds_train;     /* the Adam steps */
} msa_calib_result;

/* Trains the index of every layer of `m`, a GGUF model without a trained
 * index, on `tokens` (n_tokens text ids of the model's vocabulary, without
 * BOS; cut into sequences of seq_len with params->bos first), and writes
 * the result to out_path (to a temporary name first, then renamed, so
 * out_path is never left half-written). params NULL: defaults. `res` may
 * be NULL; when given it is filled on success. The model is read only
 * (its weights are not changed) but must not be used by another thread
 * during the call; the caller keeps ownership of everything passed in.
 * on_step runs on the calling thread.
 * Returns MSA_OK;
 *   MSA_EINVAL        NULL m, tokens or out_path, fewer than 2 tokens, a
 *                     token outside the vocabulary, or a parameter out of
 *                     its range (the message names it);
 *   MSA_EUNSUPPORTED  the model has a trained index already, was not opened
 *                     from a GGUF file, has more than MSA_CALIB_MAX_LAYERS
 *                     layers, uses scaled RoPE with idx_dim > head_dim, or
 *                     holds tensor types the writer cannot copy;
 *   MSA_EEXIST        out_path is the model's own file (by device and
 *                     inode; checked before any work);
 *   MSA_ENOMEM        the teacher or the weights do not fit in RAM;
 *   MSA_EIO, MSA_ENOSPC  writing out_path;
 *   and the forward pass's errors.
 * After a failure out_path is untouched and *res unspecified; the model
 * is unchanged and usable. */
MSA_API int msa_calibrate(msa_model *m, const int32_t *tokens, size_t n_tokens,
                          const msa_calib_params *params, const char *out_path,
                          msa_calib_result *res);

/* How much of the model's dense attention MSA's block selection keeps, as
 * an evaluation of an index (trained, or the training-free one): runs
 * `tokens` through `m` in sequences of seq_len (bos first when bos >= 0)
 * with blocks of block_size and top_k selected blocks, and for every
 * layer, row and query head takes the share of the head's dense softmax
 * mass that falls in the blocks its group selected. *mean receives the
 * average share and *min the smallest; either may be NULL. 1.0 means the
 * selection lost nothing. Same threading rule as msa_calibrate().
 * Returns MSA_OK; MSA_EINVAL (NULL m or tokens, n_tokens 0, seq_len < 2,
 * block_size or top_k < 1), MSA_ENOMEM, and the forward pass's errors.
 * After a failure *mean and *min are untouched. */
MSA_API int msa_calib_selected_mass(msa_model *m, const int32_t *tokens, size_t n_tokens,
                                    int seq_len, int32_t bos, int block_size, int top_k,
                                    double *mean, double *min);

/* 4b. Tokenizers (engine/tokenizer*) */
/*
 * Two families, loaded from what a model ships with:
 *   - SentencePiece-style ("llama" in GGUF, llama2.c's tokenizer.bin): spaces
 *     become U+2581, a dummy space is prepended, the best-scoring adjacent
 *     pair is merged repeatedly, and characters outside the vocabulary fall
 *     back to <0xNN> byte tokens.
 *   - Byte-level BPE ("gpt2" in GGUF, Hugging Face tokenizer.json): text is
 *     split by the pre-tokenizer's regex (GPT-2, Llama-3 or Qwen2 variant),
 *     bytes are mapped to printable characters, and merges apply by rank.
 * Ids are int32_t. A tokenizer is immutable once open: msa_tokenize(),
 * msa_detokenize() and the lookups may run on one handle from many threads.
 */
typedef struct msa_tokenizer msa_tokenizer;

/* Flags for msa_tokenize(). */
enum {
    MSA_TOK_ADD_BOS = 1,       /* put the BOS token first (if the vocab has one) */
    MSA_TOK_ADD_EOS = 2,       /* put the EOS token last (if the vocab has one) */
    MSA_TOK_PARSE_SPECIAL = 4  /* turn the text of control/special tokens
                                  ("<|eot_id|>", "<s>") into their ids; off,
                                  they are tokenized as plain text */
};

/* Flags for msa_detokenize() and the streaming decoder. */
enum {
    MSA_DETOK_SPECIAL = 1,     /* render control tokens (BOS, EOS, ...) as
                                  their text; by default they render as "" */
    MSA_DETOK_KEEP_SPACE = 2   /* SentencePiece: keep the dummy space that
                                  starts the first piece (or the piece after
                                  BOS); by default it is dropped */
};

/* Opens a tokenizer from `path`: a GGUF file (vocab-only or a full model;
 * only its metadata is read), a Hugging Face tokenizer.json (with
 * tokenizer_config.json beside it read for BOS/EOS when present), a
 * directory holding tokenizer.json, or a llama2.c tokenizer .bin. On
 * success *out owns the tokenizer (free with msa_tokenizer_free()).
 * Returns MSA_ENOTFOUND (no such file, or a directory without
 * tokenizer.json), MSA_EIO, MSA_EFORMAT (malformed file), MSA_EUNSUPPORTED
 * (a tokenizer model or pre-tokenizer this build does not know: the message
 * names it), MSA_ENOMEM. On failure *out is NULL. */
MSA_API int msa_tokenizer_open(const char *path, msa_tokenizer **out);

/* Releases a tokenizer; NULL is accepted. */
MSA_API void msa_tokenizer_free(msa_tokenizer *tok);

/* Encodes `len` bytes of `text` (UTF-8; invalid bytes are kept as byte
 * tokens, never dropped) into ids[0 .. *n_out-1]. With cap too small,
 * returns MSA_ERANGE, *n_out = the count needed and ids[0 .. cap-1] holds
 * the first ids, so a caller can retry with a larger array. Returns
 * MSA_EINVAL for NULL arguments (text may be NULL when len is 0),
 * MSA_ENOMEM. */
MSA_API int msa_tokenize(const msa_tokenizer *tok, const char *text, size_t len,
                         int flags, int32_t *ids, size_t cap, size_t *n_out);

/* Decodes n ids into buf as raw bytes (no terminating NUL; the result is the
 * original text's bytes, which may end inside a UTF-8 sequence if the ids
 * do). With cap too small returns MSA_ERANGE, *len_out = the bytes needed
 * and buf holds a prefix. Returns MSA_EINVAL for an id outside the vocab. */
MSA_API int msa_detokenize(const msa_tokenizer *tok, const int32_t *ids,
                           size_t n, int flags, char *buf, size_t cap,
                           size_t *len_out);

/* The vocabulary string of `id` as stored ("\xe2\x96\x81the" in
 * SentencePiece vocabs, "\xc4\xa0the" in byte-level ones): *piece points
 * into the tokenizer, is not NUL-terminated, and lives as long as it.
 * Returns MSA_EINVAL for an id outside the vocab. */
MSA_API int msa_token_piece(const msa_tokenizer *tok, int32_t id,
                            const char **piece, size_t *len);

/* The id of a vocabulary string (exact match of the stored form), or -1. */
MSA_API int32_t msa_token_lookup(const msa_tokenizer *tok, const char *piece,
                                 size_t len);

/* Vocabulary size; BOS / EOS ids (-1 when the vocab has none). */
MSA_API int32_t msa_tokenizer_n_vocab(const msa_tokenizer *tok);
MSA_API int32_t msa_tokenizer_bos(const msa_tokenizer *tok);
MSA_API int32_t msa_tokenizer_eos(const msa_tokenizer *tok);

/* Whether the vocabulary asks for BOS at the start of a text
 * (tokenizer.ggml.add_bos_token, tokenizer_config.json's add_bos_token, or
 * a default for the family): callers pass MSA_TOK_ADD_BOS when it is 1. */
MSA_API int msa_tokenizer_add_bos(const msa_tokenizer *tok);

/* Whether `id` ends generation (EOS, or another end-of-turn control token
 * such as "<|eot_id|>" or "<|im_end|>"). */
MSA_API int msa_token_is_eog(const msa_tokenizer *tok, int32_t id);

/* A short, static name of the tokenizer: "spm", "bpe:gpt-2", "bpe:llama-bpe",
 * "bpe:qwen2", ... */
MSA_API const char *msa_tokenizer_kind(const msa_tokenizer *tok);

/* Streaming decoder: turns ids, one at a time, into text that never ends
 * inside a UTF-8 sequence. Bytes of an incomplete character are held until
 * the next id completes it; bytes that cannot start or continue a valid
 * character come out as U+FFFD. The struct is the caller's (stack or heap);
 * its fields are private. Initialise with msa_detok_stream_init(); no free
 * is needed. One stream per thread at a time. */
typedef struct msa_detok_stream {
    const msa_tokenizer *tok;
    int flags;
    int32_t prev;             /* last id pushed, -1 at the start */
    unsigned char pend[4];    /* bytes of an unfinished character */
    int n_pend;
} msa_detok_stream;

/* Starts a stream over `tok` with MSA_DETOK_* flags. */
MSA_API void msa_detok_stream_init(msa_detok_stream *s, const msa_tokenizer *tok,
                                   int flags);

/* Decodes one id and writes the text it completes to buf (no NUL), *len_out
 * bytes, possibly 0. MSA_DETOK_STREAM_MAX bytes of buf are always enough for
 * ids whose piece is at most 64 bytes; with cap too small returns
 * MSA_ERANGE with *len_out = the bytes needed and the stream unchanged.
 * MSA_EINVAL for an id outside the vocab (stream unchanged). */
#define MSA_DETOK_STREAM_MAX 256
MSA_API int msa_detok_stream_push(msa_detok_stream *s, int32_t id, char *buf,
                                  size_t cap, size_t *len_out);

/* Ends the stream: held bytes of an unfinished character come out as one
 * U+FFFD (at most 3 bytes into buf). The stream may then be reused as if
 * just initialised. MSA_ERANGE when cap < 3 and bytes are held. */
MSA_API int msa_detok_stream_flush(msa_detok_stream *s, char *buf, size_t cap,
                                   size_t *len_out);

/* 4c. Downloads (engine/pull*) */
/*
 * msa_pull() fetches one file (a GGUF model, a safetensors shard, a
 * tokenizer.json) over HTTP(S), resumably and verified.
 *
 * Sources. An http:// or https:// URL, or a Hugging Face shorthand
 * ORG/REPO:PATH or ORG/REPO@REVISION:PATH, which stands for
 * ENDPOINT/ORG/REPO/resolve/REVISION/PATH (ENDPOINT: params.endpoint, else
 * $HF_ENDPOINT, else https://huggingface.co; REVISION defaults to main).
 *
 * Destination. A file path; a path ending in '/' or naming a directory
 * receives the source's file name; NULL means the models folder
 * ($XDG_DATA_HOME/msa-mem/models/, else ~/.local/share/msa-mem/models/),
 * created when missing. Data is written to DEST.part and renamed to DEST
 * only when complete and verified, so nothing posing as a model is ever
 * left at DEST by a failure. An existing DEST.part is resumed with an HTTP
 * Range request (206 and a Content-Range that starts where the file ends
 * are required; a server that ignores Range is read again from the start).
 *
 * Verification. The SHA-256 of the whole file (a resumed prefix is read
 * back and hashed again) is checked against, in this order of preference:
 * params.sha256; X-Linked-Etag (Hugging Face, LFS files, on the redirect);
 * X-Checksum-Sha256 (64 hex digits); Repr-Digest or Digest with sha-256
 * (base64); and a strong ETag of exactly 64 hex digits. Servers that state
 * none of these are trusted for the bytes they send (result.verified = 0).
 *
 * Credentials. The token (params.token, else $HF_TOKEN) is sent as
 * "Authorization: Bearer" only to the Hugging Face endpoint's host (for a
 * shorthand, or a URL on that host) and never forwarded on a redirect to
 * another host (Hugging Face redirects LFS files to a CDN). TLS peer and
 * host verification are always on.
 */

/* Called as bytes arrive (and about ten times a second while waiting to
 * retry): `done` counts bytes of the file on disk, the resumed prefix
 * included; `total` is the file's size, 0 while unknown. Return non-zero to
 * cancel: msa_pull() then returns MSA_EINTR and keeps DEST.part. */
typedef int (*msa_pull_progress_fn)(void *user, uint64_t done, uint64_t total);

typedef struct msa_pull_params {
    const char *endpoint;   /* Hugging Face endpoint; NULL: $HF_ENDPOINT or
                               https://huggingface.co */
    const char *token;      /* bearer token; NULL: $HF_TOKEN; "" for none */
    const char *sha256;     /* expected digest (64 hex digits), or NULL */
    int max_retries;        /* extra attempts after transient failures
                               (connection lost, timeouts, HTTP 408/429/5xx);
                               default 5 */
    double retry_wait_s;    /* first wait before a retry, doubled each time
                               up to 30 s (Retry-After is honoured up to
                               60 s); default 1 */
    long connect_timeout_s; /* default 30 */
    long stall_timeout_s;   /* give up on (and retry) a transfer that moves
                               no bytes for this long; default 60 */
    int resume;             /* reuse an existing DEST.part (default 1); 0
                               starts over */
    int overwrite;          /* replace an existing DEST (default 0) */
} msa_pull_params;

/* Defaults as listed in msa_pull_params. */
MSA_API msa_pull_params msa_pull_default_params(void);

typedef struct msa_pull_result {
    char path[4096];        /* where the file now is */
    char url[4096];         /* the URL first requested (credentials never
                               appear in it) */
    uint64_t bytes;         /* size of the file */
    uint64_t resumed_bytes; /* bytes kept from an earlier attempt (a DEST.part
                               left by an earlier call, or a connection lost
                               during this one); 0: fetched whole */
    char sha256[65];        /* lowercase hex digest of the whole file */
    int verified;           /* 1 when a stated digest was checked */
    char verified_by[32];   /* which: "--sha256" (the caller's params.sha256),
                               "X-Linked-Etag", ... or "" */
} msa_pull_result;

/* Downloads `source` to `dest` (NULL: the models folder) as described
 * above. `params` may be NULL (defaults); `progress` may be NULL; `result`
 * may be NULL and is filled on success. Blocks until done; safe to call
 * from several threads for distinct destinations.
 *
 * Returns MSA_OK, or:
 *   MSA_EINVAL     a malformed source, or no file name to derive DEST from.
 *   MSA_EEXIST     DEST exists and params.overwrite is 0.
 *   MSA_EBUSY      another msa_pull() is writing DEST.part.
 *   MSA_ENOTFOUND  HTTP 404; DEST.part is removed.
 *   MSA_EAUTH      HTTP 401 or 403: set HF_TOKEN (or params.token) to a
 *                  token with access, and accept the model's terms on the
 *                  website for gated repositories.
 *   MSA_ECORRUPT   the SHA-256 differs from the one stated, or the server
 *                  sent more or fewer bytes than it announced; DEST.part is
 *                  removed.
 *   MSA_ENOSPC     the disk is full (checked against the announced size
 *                  before writing, and on every write); DEST.part is kept.
 *   MSA_ENET       a network or TLS failure that outlasted the retries, or
 *                  an HTTP status not listed here; DEST.part is kept and
 *                  the next call resumes it.
 *   MSA_EINTR      cancelled by `progress`; DEST.part is kept.
 *   MSA_EIO        a local file could not be created, written or renamed.
 * msa_last_error() says which file, which URL and what the server or the
 * system said. After any failure DEST is untouched; an empty DEST.part is
 * never left behind. */
MSA_API int msa_pull(const char *source, const char *dest,
                     const msa_pull_params *params,
                     msa_pull_progress_fn progress, void *user,
                     msa_pull_result *result);

/* 4d. Sessions and generation (engine/session*) */
/*
 * An engine is a model, its tokenizer and a store. A session is a named,
 * append-only token sequence whose keys and values live in the store as
 * blocks; appending text runs the model over it (prefill) and commits the
 * new blocks, generating continues from the last token. Nothing is ever
 * re-prefilled: a session reopened by another process continues with the
 * same logits as one that never stopped.
 *
 * What makes that exact: every token's keys and values are stored, and a
 * reopened session that generates first recomputes the logits of its last
 * token by running that one token's query over the stored memory without
 * appending (one token of work, whatever the session's length; the same
 * arithmetic as the original step, so the same logits).
 *
 * Failures. Every change to a session is a store transaction (3a): an
 * append or a generation that fails is rolled back, in the store and in
 * this process, to the session's last commit, and the handle stays usable
 * (the call can be retried once the cause, e.g. a full disk, is gone).
 * Rolling back in memory means reloading the session's index keys from the
 * store into a fresh pager.
 *
 * Failed sessions. When that reload fails as well (the store cannot be
 * read, memory is exhausted), or the pager cannot be re-made when a long
 * session outgrows it, the memory in this process matches no commit. The
 * call that hit it returns MSA_EFAILED, and the handle stays failed
 * (sticky): from then on every call on it returns MSA_EFAILED (pointer
 * results are NULL, msa_session_explain_reset does nothing), and
 * msa_last_error() gives the original failure, the failed reload and the
 * number of tokens the store keeps. Only msa_session_close (and
 * msa_session_name) work as usual: close the handle and open the session
 * again, which then holds exactly its last commit. A failed session changes
 * nothing in the store; its lock is held until it is closed.
 */

typedef struct msa_engine msa_engine;
typedef struct msa_session msa_session;

typedef struct msa_engine_params {
    const char *model_path;   /* GGUF file or Hugging Face directory */
    const char *store_dir;    /* NULL: $XDG_DATA_HOME/msa-mem */
    msa_device_kind device;   /* MSA_DEVICE_CPU (default) or MSA_DEVICE_CUDA */
    int cuda_device;          /* GPU ordinal when device is CUDA */
    int n_threads;            /* CPU workers; 0: one per core */
    int block_size;           /* Bk for new sessions; 0: 128 */
    int top_k;                /* k of the sessions this engine creates
                                 (stored with them) and of those that
                                 store none; 0: 16. A session's stored k
                                 wins (section 5, msa_session_params) */
    int prefill_chunk;        /* tokens per forward chunk when appending; 0: 256 */
    size_t host_cache_bytes;  /* decompressed-block cache; 0: 1 GiB */
    int durable;              /* fsync every commit (default 1) */
    int dense;                /* 1: dense attention instead of MSA (comparisons) */
    size_t gpu_pool_bytes;    /* CUDA: K+V bytes of the GPU block pool; 0: 2 GiB
                                 (or MSA_GPU_POOL_BYTES) */
    size_t gpu_index_bytes;   /* CUDA: GPU bytes for index keys; layers beyond it
                                 stream theirs in chunks at each step; 0: 1 GiB */
} msa_engine_params;

MSA_API msa_engine_params msa_engine_default_params(void);

/* Opens the model and the store. On success *out owns both; free it with
 * msa_engine_free().
 * Returns MSA_OK;
 *   MSA_EINVAL      NULL params or out, no model path, an unknown device, a
 *                   negative block_size, top_k or prefill_chunk;
 *   MSA_ENOTFOUND   the model file is missing;
 *   MSA_EFORMAT     a model file we cannot read (the reason given), a
 *                   tokenizer larger than the model's vocabulary, or a store
 *                   directory that holds other files;
 *   MSA_EUNSUPPORTED  a model we cannot run, or MSA_DEVICE_CUDA in a build
 *                   without CUDA;
 *   MSA_EVERSION    a store of a newer format;
 *   MSA_EBUSY       the store's reader table is full;
 *   MSA_ENODEV, MSA_ECUDA  no such GPU, or uploading the model failed;
 *   MSA_EIO, MSA_ENOMEM.
 * Nothing is left open after a failure. */
MSA_API int msa_engine_open(const msa_engine_params *params, msa_engine **out);
MSA_API void msa_engine_free(msa_engine *engine);

/* The engine's tokenizer (owned by the engine) and model fingerprint (a
 * 64-hex-digit string, static for the engine's life). */
MSA_API const struct msa_tokenizer *msa_engine_tokenizer(const msa_engine *engine);
MSA_API const char *msa_engine_fingerprint(const msa_engine *engine);

/* The engine's store (for the msa_store_* functions: list, fork, export...)
 * and model (for msa_model_get_info). Both owned by the engine. */
MSA_API msa_store *msa_engine_store(msa_engine *engine);
MSA_API const msa_model *msa_engine_model(const msa_engine *engine);

enum {
    MSA_SESSION_OPEN = 0,       /* the session must exist */
    MSA_SESSION_CREATE = 1,     /* create it when missing */
    MSA_SESSION_EXCLUSIVE = 2   /* with CREATE: fail with MSA_EEXIST if it exists */
};

/* Opens (or creates, per `flags`) the session `name` of the engine's store.
 * Opening reads the session's tokens and index keys, never its KV blocks
 * (those are paged in on demand). One writer per session at a time: every
 * handle is a writer, held by a lock file beside the store. On success
 * *out owns the handle; close it with msa_session_close().
 * Returns MSA_OK;
 *   MSA_EINVAL      NULL engine or out, an empty name, one longer than
 *                   MSA_STORE_NAME_MAX bytes or with a control character;
 *   MSA_ENOTFOUND   no such session and no MSA_SESSION_CREATE;
 *   MSA_EEXIST      MSA_SESSION_CREATE | MSA_SESSION_EXCLUSIVE and it exists;
 *   MSA_EMODEL      written by another model (the message names both
 *                   fingerprints), or with other shapes than this model's;
 *   MSA_EUNSUPPORTED  stored with the other device's key dtype (bf16 from
 *                   CUDA, f32 from the CPU; the message says which
 *                   --device reads it);
 *   MSA_EBUSY       open in another handle or process, or the store's
 *                   reader table is full;
 *   MSA_ECORRUPT    a bad session record, token chunk or index-key block
 *                   (named);
 *   MSA_ENOSPC      creating it on a full disk (or map_max reached);
 *   MSA_EIO         the lock file or the store could not be read or written;
 *   MSA_ENOMEM      the tokens or the pager's tables do not fit;
 *   MSA_ECUDA, MSA_ENODEV  the GPU pager (CUDA engines).
 * On failure *out is NULL and nothing is held (no lock, no memory). The
 * store is unchanged, except that a session MSA_SESSION_CREATE made stays
 * in it, empty, when a later step failed. */
MSA_API int msa_session_open(msa_engine *engine, const char *name, int flags,
                             msa_session **out);

/* Closes the handle: drops what is in memory, aborts a transaction left
 * open (there is none between calls: every append and generation commits
 * before it returns) and releases the session's lock. Works on a failed
 * session too; accepts NULL. Nothing committed is lost. */
MSA_API void msa_session_close(msa_session *session);

/* Progress of long appends: called after every committed chunk with the
 * tokens done and the total; return non-zero to stop (MSA_EINTR; what was
 * committed stays). */
typedef int (*msa_progress_fn)(void *user, int64_t done, int64_t total);

/* Appends text (tokenized without BOS unless the session is empty) or
 * tokens to the session and runs the model over them, committing each
 * chunk's blocks and tokens in one store transaction. `source` tags the
 * blocks ("src/main.c:1-80", "turn 3"; NULL: none).
 * Returns MSA_OK;
 *   MSA_EINVAL      NULL session, NULL text/tokens with a non-zero length,
 *                   or a token outside the vocabulary (nothing appended);
 *   MSA_EINTR       `progress` asked to stop (the chunks done are committed);
 *   MSA_ENOSPC      the disk is full or the store's map_max is reached;
 *   MSA_EIO         the store could not be read or written;
 *   MSA_ECORRUPT    a stored block the model attended over failed its
 *                   checksum (named; never attended over);
 *   MSA_EBUSY       another handle of the store appended to this session
 *                   meanwhile (through msa_store_*), or its reader table is
 *                   full;
 *   MSA_ENOTFOUND   the session was removed from the store meanwhile;
 *   MSA_ENOMEM      host (or GPU) memory exhausted;
 *   MSA_ERANGE      positions past 2^31 tokens;
 *   MSA_ECUDA       a CUDA call failed (CUDA engines);
 *   MSA_EFAILED     the session failed, now or earlier (see "Failed
 *                   sessions" above): close and reopen it.
 * After any failure but MSA_EFAILED the session, in the store and in this
 * handle, holds exactly what was committed before it (whole chunks) and
 * stays usable; the logits of its last token are recomputed when it next
 * generates. */
MSA_API int msa_session_append_text(msa_session *session, const char *text,
                                    size_t len, const char *source,
                                    msa_progress_fn progress, void *user);
MSA_API int msa_session_append_tokens(msa_session *session,
                                      const int32_t *tokens, size_t n,
                                      const char *source,
                                      msa_progress_fn progress, void *user);

typedef struct msa_sampling_params {
    float temperature;     /* 0: greedy (default) */
    int top_k;             /* 0: off */
    float top_p;           /* 1: off */
    float min_p;           /* 0: off */
    float repeat_penalty;  /* 1: off */
    int repeat_last_n;     /* tokens the penalty looks back over (64) */
    uint64_t seed;         /* same seed, same session: same tokens */
} msa_sampling_params;

MSA_API msa_sampling_params msa_sampling_default_params(void);

/* Called for every generated token with the text it completes (whole UTF-8
 * characters only; may be empty). Return non-zero to stop. */
typedef int (*msa_token_fn)(void *user, int32_t token, const char *text,
                            size_t len);

typedef struct msa_generate_params {
    msa_sampling_params sampling;
    int max_tokens;        /* default 128 */
    int stop_at_eos;       /* default 1 */
    const char *source;    /* tag of the generated blocks ("turn 4 reply") */
} msa_generate_params;

MSA_API msa_generate_params msa_generate_default_params(void);

/* Generates up to max_tokens tokens, appending each to the session (and
 * committing at the end, or every block) and calling `on_token`. An empty
 * session first gets the vocabulary's BOS token (stored, source "bos", not
 * passed to on_token) and generates from it. Returns MSA_OK when max_tokens,
 * EOS or the callback stopped it. *n_generated (may be NULL) receives the
 * count of tokens passed to on_token.
 * Other returns:
 *   MSA_EINVAL      NULL session, an empty session whose vocabulary has no
 *                   BOS token (append a prompt first), or sampling
 *                   parameters out of range (nothing generated);
 *   MSA_EUNSUPPORTED  recomputing the last logits of a reopened session of
 *                   more than 1024 layers;
 *   MSA_EFAILED     the session failed, now or earlier (see "Failed
 *                   sessions" above): close and reopen it;
 *   and the store and forward-pass errors of msa_session_append_tokens()
 *   (MSA_ENOSPC, MSA_EIO, MSA_ECORRUPT, MSA_EBUSY, MSA_ENOTFOUND,
 *   MSA_ENOMEM, MSA_ERANGE, MSA_ECUDA).
 * After a failure other than MSA_EFAILED the session holds the tokens
 * generated up to its last commit (every block_size tokens): those after it,
 * at most one block's worth, already passed to on_token, are rolled back,
 * and the handle stays usable. */
MSA_API int msa_session_generate(msa_session *session,
                                 const msa_generate_params *params,
                                 msa_token_fn on_token, void *user,
                                 int *n_generated);

typedef struct msa_session_info {
    int64_t n_tokens;        /* tokens in the session */
    int64_t n_blocks;        /* KV blocks per layer, the partial one included */
    int n_layers, block_size, top_k; /* top_k: the session's (section 5) */
    uint64_t bytes_on_disk;  /* compressed blocks and metadata */
    uint64_t bytes_raw;      /* the same uncompressed */
    char fingerprint[72];    /* the model that wrote it */
    msa_pager_stats pager;   /* counters since the session was opened */
    double last_step_ms;     /* the last decode step's model time */
    double store_write_ms;   /* time the appends since the session was opened
                                spent handing blocks to the store and
                                committing them (compression, segment and
                                LMDB writes): of an ingest's time, the part
                                that storing adds */
} msa_session_info;

/* Fills *info (zeroed first). Returns MSA_OK; MSA_EINVAL (NULL argument);
 * MSA_ENOTFOUND (removed from the store meanwhile), MSA_ECORRUPT (its
 * record), MSA_EIO, MSA_EBUSY (reader table full) from the store;
 * MSA_EFAILED for a failed session. *info stays zeroed on failure; the
 * session is unchanged. */
MSA_API int msa_session_get_info(msa_session *session, msa_session_info *info);

/* Selections recorded since the session was opened (or last reset): how
 * often each block was read, summed over layers, groups and steps, with
 * its source tag (empty when its block cannot be read); most-read first.
 * Fills up to `cap` entries, *n gets the number filled. Returns MSA_OK;
 * MSA_EINVAL (NULL session, or NULL out with cap > 0); MSA_ENOMEM;
 * MSA_EFAILED for a failed session. On failure *n is 0. The reset clears
 * the counts; it does nothing for NULL or a failed session. */
typedef struct msa_block_reads {
    int64_t block;           /* logical block id */
    int64_t first_token;     /* token range the block covers */
    int64_t n_tokens;
    uint64_t reads;
    char source[128];        /* the tag given when it was written */
} msa_block_reads;

MSA_API int msa_session_explain(msa_session *session, msa_block_reads *out,
                                size_t cap, size_t *n);
MSA_API void msa_session_explain_reset(msa_session *session);

/* The session's tokens (a view valid until the next change of the session;
 * after a failed append, its committed tokens), and its name ("" for NULL).
 * For NULL or a failed session the tokens are NULL with *n = 0 (and
 * msa_last_error() says why). */
MSA_API const int32_t *msa_session_tokens(const msa_session *session,
                                          int64_t *n);
MSA_API const char *msa_session_name(const msa_session *session);

/* ---- chat ---------------------------------------------------------------- */

typedef enum msa_chat_template {
    MSA_CHAT_PLAIN = 0,   /* "User: ...\nAssistant:" */
    MSA_CHAT_LLAMA3 = 1,  /* <|start_header_id|>role<|end_header_id|> ... <|eot_id|> */
    MSA_CHAT_CHATML = 2,  /* <|im_start|>role ... <|im_end|> (Qwen2) */
    MSA_CHAT_LLAMA2 = 3   /* [INST] ... [/INST] */
} msa_chat_template;

/* "plain", "llama3", "chatml" (or "qwen2"), "llama2" to a template, or
 * MSA_EINVAL. */
MSA_API int msa_chat_template_from_name(const char *name);
MSA_API const char *msa_chat_template_name(int tmpl);

/* The template a model's Jinja chat template (tokenizer.chat_template)
 * corresponds to, by its markers; MSA_CHAT_PLAIN when none match or NULL. */
MSA_API int msa_chat_template_detect(const char *jinja);

/* The engine's template: detected from the model's metadata. */
MSA_API int msa_engine_chat_template(const msa_engine *engine);

/* Renders one message (role "system", "user" or "assistant") and, when
 * add_generation_prompt, the header that opens the assistant's reply.
 * snprintf semantics: returns the length of the whole text, writes at most
 * cap - 1 bytes and a terminating NUL. */
MSA_API size_t msa_chat_render(int tmpl, const char *role, const char *content,
                               int add_generation_prompt, char *buf, size_t cap);

/* Appends one chat message to the session, rendered with `tmpl` (< 0: the
 * engine's) and tokenized with special tokens recognised, tagged "turn N"
 * (N counts messages) unless `source` is given. Errors (and the state they
 * leave) as msa_session_append_text(); MSA_EINVAL also for NULL content. */
MSA_API int msa_session_append_message(msa_session *session, int tmpl,
                                       const char *role, const char *content,
                                       int add_generation_prompt,
                                       const char *source);


/* ------------------------------------------------------------------------ */
/* 5. Session parameters, disk usage and removal of sessions in use         */
/* ------------------------------------------------------------------------ */

/* A session's own settings, kept in its record in the store, so that fork,
 * export and import carry them and every process, C or Python, that opens
 * the session uses them. 0 in a field means "not set": the engine's value
 * applies. */
typedef struct msa_session_params {
    int top_k;          /* MSA blocks each decode step reads per KV group,
                           the local block included (1..65536; 0: not set) */
    int reserved[7];    /* 0 */
} msa_session_params;

/* All fields 0 (nothing set). */
MSA_API msa_session_params msa_session_default_params(void);

/* The parameters stored in the session's record (re-read from the store).
 * Returns MSA_OK; MSA_EINVAL (NULL argument); MSA_ENOTFOUND (removed
 * meanwhile); MSA_ECORRUPT (its record); MSA_EIO. *out is zeroed on
 * failure. */
MSA_API int msa_store_session_get_params(msa_store_session *s,
                                         msa_session_params *out);

/* Replaces the parameters in the session's record, in one write
 * transaction (appends are not disturbed: a writer's commit keeps them).
 * Returns MSA_OK; MSA_EINVAL (NULL argument, a field out of range or a
 * reserved field not 0: the message names it); MSA_ENOTFOUND (removed
 * meanwhile); MSA_ECORRUPT; MSA_ENOSPC; MSA_EIO. On failure the record is
 * unchanged. A session record with parameters is stored in record version
 * 2, which builds before this one do not read (MSA_EVERSION). */
MSA_API int msa_store_session_set_params(msa_store_session *s,
                                         const msa_session_params *params);

/* The session's parameters as this handle uses them: the stored ones, and
 * for a field not stored, the engine's (so top_k is never 0).
 * Returns MSA_OK, MSA_EINVAL (NULL argument), MSA_EFAILED. */
MSA_API int msa_session_get_params(msa_session *session,
                                   msa_session_params *out);

/* Stores the session's parameters (fields 0 keep their current value) and
 * applies them to this handle at once: the next step reads params->top_k
 * blocks (the last token's logits are recomputed with it). Returns MSA_OK;
 * MSA_EINVAL (NULL argument, a field out of range); the store's errors of
 * msa_store_session_set_params(), after which neither the store nor the
 * handle changed; MSA_EFAILED for a failed session, or when the stored
 * change could not be applied because reopening the session's memory
 * failed (the session is then failed: close and reopen it, and it runs
 * with the new parameters). */
MSA_API int msa_session_set_params(msa_session *session,
                                   const msa_session_params *params);

/* Bytes on disk of a session, split into what it alone uses and what it
 * shares with forks (a block shared by n sessions is in the shared_bytes
 * of each of them, so summing shared_bytes over sessions counts it n
 * times). own_bytes + shared_bytes is the session's bytes_on_disk. With
 * name NULL, the whole store: own_bytes are the blocks used by one session
 * and every session's tokens, shared_bytes every shared block once, so
 * own_bytes + shared_bytes is what the store holds (LMDB's own pages
 * aside). Token bytes count 4 per token. */
typedef struct msa_store_usage {
    uint64_t own_bytes;
    uint64_t shared_bytes;
    uint64_t own_blocks;    /* blocks (over all layers) */
    uint64_t shared_blocks;
    /* whole store only (name NULL): the size of the segment files, and what
     * in them no block uses (removed sessions' blocks, headers, padding,
     * what a killed writer left), which `msa_store_compact` returns */
    uint64_t segment_file_bytes;
    uint64_t segment_unused_bytes;
} msa_store_usage;

/* Fills *out (zeroed first). Returns MSA_OK; MSA_EINVAL (NULL store or
 * out); MSA_ENOTFOUND (no such session); MSA_ECORRUPT (a record or block
 * entry that does not decode, named); MSA_EIO. Reads the session's block
 * entries: O(blocks). */
MSA_API int msa_store_usage_get(msa_store *store, const char *name,
                                msa_store_usage *out);

/* Removes session `name` from `store` unless it is open: a session that an
 * msa_session handle holds (for writing, in this or any other process) is
 * busy, as it is for a second writer. msa_store_remove() does not look at
 * those handles; this does, and holds the session's lock while it removes
 * it, so that no writer opens it meanwhile. Returns MSA_OK; MSA_EBUSY (in
 * use: nothing removed, the message says so); MSA_EINVAL (NULL or invalid
 * name); MSA_ENOTFOUND; MSA_ENOSPC; MSA_EIO (also: the lock file could not
 * be opened). */
MSA_API int msa_session_remove(msa_store *store, const char *name);

/* ------------------------------------------------------------------------ */
/* 6. The remote tier: sessions shared through an S3-compatible store       */
/* ------------------------------------------------------------------------ */
/*
 * A remote is a bucket (and a key prefix) of an S3-compatible object store,
 * spoken to over S3's own API with libcurl's SigV4 signing. It holds, under
 * PREFIX/:
 *
 *   objects/<sha256>       immutable objects named by the SHA-256 of their
 *                          bytes: one per (layer, block) of K, V and index
 *                          keys (the store's block codec), and token chunks
 *                          of up to 4096 tokens. Written create-only
 *                          (If-None-Match: *); the same content is one object.
 *   sessions/<name>.json   one manifest per session: fingerprint, shape,
 *                          tokens (as chunk objects), the block objects of
 *                          every layer with their fill and source tag, and a
 *                          generation; replaced only by compare-and-swap on
 *                          its ETag (If-Match), so of two stores that push
 *                          one session at once exactly one wins.
 *
 * The local store stays the cache and the point of durability: sessions are
 * written locally (msa_store_txn_*, msa_session_*) and copied by
 * msa_remote_push(); msa_remote_pull() copies the remote's newer tokens and
 * blocks into the local store. A session moves only forwards: a push needs
 * the remote's tokens to be a prefix of the local ones, a pull the local
 * ones a prefix of the remote's; otherwise the two diverged and the call
 * returns MSA_EBUSY (a conflict) and changes nothing on either side.
 *
 * Every fetched object is checked against its name (SHA-256) and then
 * decoded with the block codec's CRC32C checks; a bad object is fetched
 * again (twice) and then refused with MSA_ECORRUPT, never stored. Requests
 * that fail with a connection error, a timeout or HTTP 5xx/429 are retried
 * with exponential backoff, max_retries times.
 *
 * Credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN),
 * else the profile (params.profile, AWS_PROFILE, "default") of
 * ~/.aws/credentials (AWS_SHARED_CREDENTIALS_FILE) or ~/.aws/config
 * (AWS_CONFIG_FILE). Region: params.region, AWS_REGION, AWS_DEFAULT_REGION,
 * the profile's region, us-east-1. https is always verified.
 *
 * A handle may be used by one thread at a time. Push, pull, list and gc
 * run n_threads parallel requests on worker threads that the remote tier
 * keeps for the process (not the compute pool of msa_parallel_for); calls
 * from several threads or handles run their transfers one after another.
 */

typedef struct msa_remote msa_remote;

typedef struct msa_remote_params {
    const char *url;        /* "s3://BUCKET" or "s3://BUCKET/PREFIX" (required) */
    const char *endpoint;   /* "http://127.0.0.1:8333": a custom S3-compatible
                               server, addressed path-style (ENDPOINT/BUCKET/KEY).
                               NULL: AWS, https://BUCKET.s3.REGION.amazonaws.com */
    const char *region;     /* NULL: from the environment or profile */
    const char *profile;    /* NULL: AWS_PROFILE, else "default" */
    int max_retries;        /* retries of a failed request (default 5) */
    int timeout_s;          /* a transfer that moves nothing this long fails
                               (and is retried); default 30 */
    int connect_timeout_s;  /* default 10 */
    int n_threads;          /* parallel requests (default 8) */
} msa_remote_params;

/* Defaults as listed in msa_remote_params. */
MSA_API msa_remote_params msa_remote_default_params(void);

/* Checks the params, finds the credentials and prepares the handle; makes
 * no request. Returns MSA_OK; MSA_EINVAL (a URL that is not s3://BUCKET...,
 * an endpoint that is not http(s)); MSA_EAUTH (no credentials found; the
 * message says where it looked); MSA_ENOMEM. On failure *out is NULL. */
MSA_API int msa_remote_open(const msa_remote_params *params, msa_remote **out);

/* Closes the handle. Accepts NULL. */
MSA_API void msa_remote_close(msa_remote *remote);

/* What a push, pull or sync step did. */
typedef struct msa_remote_stats {
    uint64_t objects_sent;    /* objects uploaded */
    uint64_t objects_present; /* objects the remote already had */
    uint64_t objects_fetched; /* objects downloaded and verified */
    uint64_t bytes_sent, bytes_fetched;
    uint64_t requests, retries; /* HTTP requests made, of which retries */
    uint64_t tokens_local, tokens_remote; /* after the call */
    uint64_t generation;      /* the manifest's generation after the call */
    int up_to_date;           /* 1 when nothing had to move */
    int local_ahead;          /* pull: the local session is ahead (push it) */
    double seconds;
} msa_remote_stats;

/* Copies the local session `name` to the remote: the objects the remote
 * lacks, then the manifest by compare-and-swap. Returns MSA_OK (also when
 * it was up to date); MSA_ENOTFOUND (no such local session); MSA_EBUSY (a
 * conflict: the remote session is not a prefix of the local one, or it
 * moved again during the push three times; the message names both token
 * counts and the remote's generation; nothing local changed, and objects
 * already uploaded are harmless: gc removes them); MSA_EMODEL (the remote
 * session is bound to another model or shape); MSA_ECORRUPT (a bad remote
 * manifest or token chunk); MSA_EAUTH; MSA_ENET (after the retries); the
 * store's read errors. st (may be NULL) gets the counts. */
MSA_API int msa_remote_push(msa_remote *remote, msa_store *store, const char *name,
                            msa_remote_stats *st);

/* Copies the remote session `name` into the local store, creating it when
 * missing, in transactions of at most ~256 MiB of blocks (each leaves the
 * local session a consistent prefix, so an interrupted pull continues where
 * it stopped). Returns MSA_OK (st->local_ahead = 1 when the local session
 * already extends the remote one: nothing was changed); MSA_ENOTFOUND (not
 * on the remote); MSA_EBUSY (the sessions diverged, or a local writer
 * appended meanwhile; nothing was changed); MSA_EMODEL (local session of
 * another model or shape); MSA_ECORRUPT (an object failed its checks three
 * times, named; no transaction holding it was committed); MSA_EAUTH;
 * MSA_ENET; the store's write errors. */
MSA_API int msa_remote_pull(msa_remote *remote, msa_store *store, const char *name,
                            msa_remote_stats *st);

/* How a local and a remote session relate (msa_remote_compare). */
typedef enum msa_remote_relation {
    MSA_REMOTE_SAME = 0,         /* same tokens */
    MSA_REMOTE_LOCAL_AHEAD = 1,  /* remote tokens are a strict prefix: push */
    MSA_REMOTE_REMOTE_AHEAD = 2, /* local tokens are a strict prefix: pull */
    MSA_REMOTE_DIVERGED = 3,     /* neither: a conflict */
    MSA_REMOTE_ONLY_LOCAL = 4,
    MSA_REMOTE_ONLY_REMOTE = 5
} msa_remote_relation;

/* Compares the session on both sides into *rel. Returns MSA_OK,
 * MSA_ENOTFOUND (on neither side), and the errors of push. */
MSA_API int msa_remote_compare(msa_remote *remote, msa_store *store, const char *name,
                               msa_remote_relation *rel);

/* A session as the remote holds it. */
typedef struct msa_remote_session_info {
    char name[MSA_STORE_NAME_MAX + 1];
    char fingerprint[MSA_STORE_FINGERPRINT_MAX + 1];
    msa_store_shape shape;
    uint64_t n_tokens, n_blocks; /* blocks per layer */
    uint64_t bytes;              /* bytes of the objects it references */
    uint64_t generation;
    int64_t pushed_at;           /* Unix seconds */
    char pushed_by[128];         /* host name of the last push */
} msa_remote_session_info;

/* Every session on the remote, sorted by name, into a malloc'ed array (free
 * with msa_remote_list_free). Returns MSA_OK, MSA_ECORRUPT (an unreadable
 * manifest, named), MSA_EAUTH, MSA_ENET, MSA_ENOMEM. */
MSA_API int msa_remote_list(msa_remote *remote, msa_remote_session_info **out,
                            size_t *n);
MSA_API void msa_remote_list_free(msa_remote_session_info *list);

/* Removes a session's manifest from the remote (its objects stay until
 * msa_remote_gc). Returns MSA_OK, MSA_ENOTFOUND, MSA_EAUTH, MSA_ENET. */
MSA_API int msa_remote_remove(msa_remote *remote, const char *name);

typedef struct msa_remote_gc_stats {
    uint64_t manifests;      /* sessions read */
    uint64_t referenced;     /* distinct objects they reference */
    uint64_t objects;        /* objects listed */
    uint64_t deleted, bytes_deleted; /* (would be, with dry_run) */
    uint64_t kept_young;     /* unreferenced but newer than min_age_s */
} msa_remote_gc_stats;

/* Deletes the objects that no manifest references and that are older than
 * min_age_s seconds (objects of a push in flight are younger than its
 * manifest; 3600 is a safe value), never a referenced one: objects are
 * listed first, then every manifest is read, and any manifest that cannot
 * be read stops the gc before anything is deleted. dry_run: count only.
 * Returns MSA_OK, MSA_ECORRUPT (an unreadable manifest; nothing deleted),
 * MSA_EAUTH, MSA_ENET. */
MSA_API int msa_remote_gc(msa_remote *remote, int64_t min_age_s, int dry_run,
                          msa_remote_gc_stats *st);

#ifdef __cplusplus
}
#endif

#endif /* MSA_H */
