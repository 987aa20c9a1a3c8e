/*
 * pager.h: the block pager between a block source (the store) and the
 * attention kernels, and the msa_kvmem implementation built on it.
 *
 * Bytes flow source -> host cache -> GPU pool (DESIGN.md section 2):
 *
 *   block source    callbacks that deliver one decompressed, verified block
 *                   (K and V, [Hkv][Bk][d] each) or its index keys, and take
 *                   completed blocks to be written. The session layer wires
 *                   the store into it; tests use msa_memsource.
 *   host cache      a fixed number of block slots in host memory (pinned
 *                   when CUDA is on), sized in bytes, with a page table from
 *                   (layer, block) to slot and CLOCK eviction. On a CPU-only
 *                   run it is the pool that attention reads.
 *   GPU pool        fixed slots allocated once with cudaMalloc, its own page
 *                   table and CLOCK, filled from host slots with
 *                   cudaMemcpyAsync on a copy stream; events order the
 *                   copies against the caller's compute stream.
 *
 * A block that a step uses is pinned for that step (until the next call on
 * the memory), so eviction can never take it. Index keys of every block are
 * resident in host RAM (pinned on CUDA), and on the GPU within
 * gpu_index_bytes. A layer whose index keys outgrow that budget is
 * streamed: at every scan its keys are paged through a ring of GPU index
 * slots, chunk by chunk (msa_kvmem_paged_index_scan), the copy of the next
 * chunk overlapping the scoring of the current one.
 *
 * The open tail block of each layer (the one being appended to) lives in a
 * dedicated slot of each tier; when it fills it is handed to the source's
 * write_block callback and copied into the host cache.
 *
 * Folder-local header: the session layer includes it; it is not installed.
 */
#ifndef MSA_MEMORY_PAGER_H
#define MSA_MEMORY_PAGER_H

#include "engine/msa.h"
#include "memory/kvmem.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Where blocks come from and go to. Every callback returns MSA_OK or a
 * negative status (MSA_ECORRUPT for a block that failed its checksum,
 * MSA_EIO, MSA_ENOTFOUND...), and may describe it with msa_error(); the
 * pager adds the layer and block to the message. Buffers are in the
 * pager's dtype (msa_pager_params.dtype). */
typedef struct msa_block_source {
    void *ctx;
    /* K and V of one block: k_dst, v_dst [Hkv][Bk][d]. For the partial last
     * block of a stored session, rows past its length are ignored. */
    int (*read_block)(void *ctx, int layer, int64_t block, void *k_dst,
                      void *v_dst);
    /* Index keys of one block: kidx_dst [idx_key_heads][Bk][d_idx]. */
    int (*read_index)(void *ctx, int layer, int64_t block, void *kidx_dst);
    /* Tokens the source holds for `layer` when the pager opens (0 for a new
     * session); NULL means 0. */
    int64_t (*length)(void *ctx, int layer);
    /* Takes a completed block (K, V and its index keys, same shapes as
     * above; the buffers are only valid during the call). NULL: appending
     * is refused with MSA_EUNSUPPORTED. */
    int (*write_block)(void *ctx, int layer, int64_t block, const void *k,
                       const void *v, const void *kidx);
    /* Non-zero when read_block may be called from several threads at once;
     * the pager then reads the misses of a step in parallel. */
    int thread_safe;
} msa_block_source;

typedef struct msa_pager_params {
    msa_attn_config cfg;     /* n_kv_heads, head_dim, idx_dim, idx_key_heads
                                and block_size are used */
    int n_layers;
    int64_t max_tokens;      /* per layer; sizes the page tables */
    msa_dtype dtype;         /* of stored blocks: F32 for the CPU kernels,
                                BF16 or F16 for CUDA */
    msa_device_kind device;  /* where attention reads the pool */
    size_t host_cache_bytes; /* K+V bytes of host slots (tail slots extra) */
    size_t gpu_pool_bytes;   /* K+V bytes of GPU slots (tail slots extra) */
    size_t gpu_index_bytes;  /* GPU budget for index keys: resident layers
                                plus the ring of streamed ones; at least
                                two blocks of index keys */
    void *stream;            /* CUDA compute stream (cudaStream_t), NULL for
                                the default stream */
    int n_threads;           /* source-read workers, 0: one per core */
} msa_pager_params;

/* Defaults: dtype F32 on the CPU, host cache 1 GiB, GPU pool 4 GiB, GPU
 * index budget 1 GiB, max_tokens 1 Mi; cfg and n_layers must be set. */
msa_pager_params msa_pager_default_params(void);

/* Bytes of K plus V of one block under `p`. */
size_t msa_pager_block_bytes(const msa_pager_params *p);

/* Opens paged memory over `src` (copied; src->ctx must outlive the
 * memory). Reads the index keys of every stored block (a full block whose
 * index keys fail their checksum is left out: msa_kvmem_paged_damaged), and
 * the stored partial last block into its tail slot, so that appending continues where
 * the session stopped. *out is the msa_kvmem interface of the new pager
 * (free with msa_kvmem_paged_free).
 *
 * Returns MSA_OK; MSA_EINVAL for bad params (the message says which);
 * MSA_ERANGE when a tier holds no slot, a stored length exceeds max_tokens
 * or (CUDA) gpu_index_bytes holds fewer than two blocks of index keys;
 * MSA_ENODEV
 * for CUDA without a GPU; MSA_ENOMEM, MSA_ECUDA; any source error with the
 * layer and block named. Nothing is allocated after a failure. */
int msa_kvmem_paged_init(msa_kvmem **out, const msa_pager_params *params,
                         const msa_block_source *src);

/* Stored blocks left out because they failed their checksum (at open: index
 * keys; later: K/V when a step selected them). kv_view writes -1 over every
 * entry of `selected` that names one, so attention never reads it. */
int64_t msa_kvmem_paged_damaged(const msa_kvmem *m);

/* Releases everything; waits for pending copies. NULL is accepted. */
void msa_kvmem_paged_free(msa_kvmem *m);

/* Copies the counters out. `m` must come from msa_kvmem_paged_init. */
void msa_kvmem_paged_stats(const msa_kvmem *m, msa_pager_stats *out);

/* Sets every counter to 0 (capacities stay). */
void msa_kvmem_paged_reset_stats(msa_kvmem *m);

/* The open tail block of `layer` as the session layer stores it at commit:
 * its id, rows held (0..Bk) and K, V [Hkv][Bk][d], index keys
 * [idx_key_heads][Bk][d_idx] (host memory, valid until the next append).
 * Returns MSA_OK or MSA_EINVAL for a bad layer. */
int msa_kvmem_paged_tail(msa_kvmem *m, int layer, int64_t *block, int *rows,
                         const void **k, const void **v, const void **kidx);

/* ---- index keys beyond the GPU budget ------------------------------------
 *
 * On a CUDA pager, index_view gives a streamed layer's view with kidx NULL
 * (everything else filled: idx_indptr, idx_table, seq_len, max_blocks = the
 * layer's blocks); its index keys are scanned through the ring instead.
 */

/* Called once per chunk with a view of that chunk: kidx holds blocks
 * block0 .. block0 + n - 1 of the layer as slots 0 .. n-1 (idx_table the
 * identity, max_blocks = n; idx_indptr and seq_len the layer's own, as
 * index_view gives them). The callback queues its work on the pager's
 * compute stream (msa_pager_params.stream) and returns; the view is valid
 * for that work only (the pager reuses the slots two chunks later, after
 * that work has run). A non-zero return stops the scan and is returned. */
typedef int (*msa_index_chunk_fn)(void *user, const msa_paged_kv *chunk, int64_t block0,
                                  int n);

/* The index scan of `layer`: index_view's work, then `fn` over every block
 * of the layer. A resident layer (and every layer of a CPU pager) gives
 * one call with the whole view (block0 0). A streamed layer gives one call
 * per chunk of at most chunk_blocks (msa_kvmem_paged_index_info): the
 * chunk's index keys are copied from the host on the copy stream into one
 * half of the ring, after the work queued for the chunk that last used
 * that half, and the compute stream waits for the copy. Nothing waits on
 * the host. MSA_OK, MSA_EINVAL (not a pager, no fn, bad layer), MSA_ECUDA,
 * or what fn returned. */
int msa_kvmem_paged_index_scan(msa_kvmem *m, int layer, msa_index_chunk_fn fn, void *user);

/* 1 when `layer` of pager `m` is streamed (0 for anything else). */
int msa_kvmem_paged_index_streamed(const msa_kvmem *m, int layer);

/* Layers streamed, blocks per chunk of the ring (0: no ring yet) and
 * chunks scanned since the counters were last reset; each NULL-able.
 * Bytes copied for streamed scans count in bytes_index_to_gpu. */
void msa_kvmem_paged_index_info(const msa_kvmem *m, int *streamed_layers,
                                int64_t *chunk_blocks, uint64_t *chunks);

/* ---- the in-memory block source (tests, tools, unsaved sessions) ------- */

typedef struct msa_memsource msa_memsource;

/* An empty in-memory source for `p`'s shapes and dtype; blocks written
 * through its write_block are kept and read back. MSA_ENOMEM/MSA_EINVAL. */
int msa_memsource_init(msa_memsource **out, const msa_pager_params *p);
void msa_memsource_free(msa_memsource *ms);

/* Its callbacks (ctx = ms). */
msa_block_source msa_memsource_source(msa_memsource *ms);

/* Stores one block directly (K, V and index keys in the source dtype) and
 * sets the layer's length to at least (block + 1) * Bk, or `len` when
 * given (>= 0) for a partial last block. MSA_ENOMEM/MSA_EINVAL/MSA_ERANGE. */
int msa_memsource_put(msa_memsource *ms, int layer, int64_t block,
                      const void *k, const void *v, const void *kidx,
                      int64_t len);

#ifdef __cplusplus
}
#endif

#endif /* MSA_MEMORY_PAGER_H */
