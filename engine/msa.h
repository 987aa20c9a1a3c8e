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
    MSA_ENOSPC = -11,      /* the disk (or the store's map) is full */
    MSA_EBUSY = -12,       /* the resource is locked by another writer */
    MSA_EFORMAT = -13,     /* an input file is truncated or not of its format */
    MSA_ENET = -14,        /* a network transfer failed */
    MSA_EINTR = -15,       /* interrupted by the caller (callback or signal) */
    MSA_ENODEV = -16,      /* no usable GPU, or a build without CUDA */
    MSA_ERANGE = -17,      /* a value outside its limits (context, pool size) */
    MSA_EAUTH = -18        /* a server refused the credentials */
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

/* 4b. Tokenizers (engine/tokenizer*) */

/* 4c. Downloads (engine/pull*) */

/* 4d. Sessions and generation (engine/session*) */
/*
 * An engine is a model, its tokenizer and a store. A session is a named,
 * append-only token sequence whose keys and values live in the store as
 * blocks; appending text runs the model over it (prefill) and commits the
 * new blocks, generating continues from the last token. Nothing is ever
 * re-prefilled: a session reopened by another process continues with the
 * same logits as one that never stopped.
 *
 * One detail makes that exact: the last token of a session is kept
 * "pending" (stored as a token, not yet run through the model). The next
 * append or generate runs it first. So a session's KV always covers
 * n_tokens - 1 tokens, and resuming needs nothing but the stored blocks.
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
    int top_k;                /* k; 0: 16 */
    int prefill_chunk;        /* tokens per forward chunk when appending; 0: 256 */
    size_t host_cache_bytes;  /* decompressed-block cache; 0: 1 GiB */
    int durable;              /* fsync every commit (default 1) */
    int dense;                /* 1: dense attention instead of MSA (comparisons) */
} msa_engine_params;

MSA_API msa_engine_params msa_engine_default_params(void);

/* Opens the model and the store. On success *out owns both; free it with
 * msa_engine_free(). Returns MSA_OK, MSA_EINVAL (no model path),
 * MSA_ENOTFOUND (model file missing), MSA_EFORMAT / MSA_EUNSUPPORTED (a model
 * file we cannot read, with the reason), MSA_EVERSION (store of another
 * format), MSA_EIO, MSA_ENOMEM. Nothing is left open after a failure. */
MSA_API int msa_engine_open(const msa_engine_params *params, msa_engine **out);
MSA_API void msa_engine_free(msa_engine *engine);

/* The engine's tokenizer (owned by the engine) and model fingerprint (a
 * 64-hex-digit string, static for the engine's life). */
MSA_API const struct msa_tokenizer *msa_engine_tokenizer(const msa_engine *engine);
MSA_API const char *msa_engine_fingerprint(const msa_engine *engine);

enum {
    MSA_SESSION_OPEN = 0,       /* the session must exist */
    MSA_SESSION_CREATE = 1,     /* create it when missing */
    MSA_SESSION_EXCLUSIVE = 2   /* with CREATE: fail with MSA_EEXIST if it exists */
};

/* Opens (or creates, per `flags`) the session `name` of the engine's store.
 * A session written by another model is refused with MSA_EMODEL; a missing
 * one without MSA_SESSION_CREATE is MSA_ENOTFOUND. Opening reads the
 * session's tokens and index keys, never its KV blocks (those are paged in
 * on demand). One writer per session at a time: a second open for writing,
 * from any process, returns MSA_EBUSY. */
MSA_API int msa_session_open(msa_engine *engine, const char *name, int flags,
                             msa_session **out);
MSA_API void msa_session_close(msa_session *session);

/* Progress of long appends: called after every committed chunk with the
 * tokens done and the total; return non-zero to stop (MSA_EINTR; what was
 * committed stays). */
typedef int (*msa_progress_fn)(void *user, int64_t done, int64_t total);

/* Appends text (tokenized without BOS unless the session is empty) or
 * tokens to the session and runs the model over them, committing each
 * chunk's blocks and tokens in one store transaction. `source` tags the
 * blocks ("src/main.c:1-80", "turn 3"; NULL: none). On failure the session
 * holds exactly what was committed before it (whole chunks). */
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
 * committing at the end, or every block) and calling `on_token`. Returns
 * MSA_OK when max_tokens, EOS or the callback stopped it. *n_generated
 * (may be NULL) receives the count. */
MSA_API int msa_session_generate(msa_session *session,
                                 const msa_generate_params *params,
                                 msa_token_fn on_token, void *user,
                                 int *n_generated);

typedef struct msa_session_info {
    int64_t n_tokens;        /* tokens in the session (the last one pending) */
    int64_t n_blocks;        /* KV blocks per layer, the partial one included */
    int n_layers, block_size, top_k;
    uint64_t bytes_on_disk;  /* compressed blocks and metadata */
    uint64_t bytes_raw;      /* the same uncompressed */
    char fingerprint[72];    /* the model that wrote it */
    msa_pager_stats pager;   /* counters since the session was opened */
    double last_step_ms;     /* the last decode step's model time */
} msa_session_info;

MSA_API int msa_session_get_info(msa_session *session, msa_session_info *info);

/* Selections recorded since the session was opened (or last reset): how
 * often each block was read, summed over layers, groups and steps, with
 * its source tag; most-read first. Fills up to `cap` entries, *n gets the
 * number filled. */
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

/* The session's tokens (a view valid until the next change of the session)
 * and its name. */
MSA_API const int32_t *msa_session_tokens(const msa_session *session,
                                          int64_t *n);
MSA_API const char *msa_session_name(const msa_session *session);


#ifdef __cplusplus
}
#endif

#endif /* MSA_H */
