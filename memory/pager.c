/*
 * pager.c: paged KV memory for one session (pager.h): a host cache of
 * decompressed blocks over a block source and, with CUDA, a GPU block pool
 * over the host cache, exposed to the forward pass as an msa_kvmem.
 *
 * One kv_view is one "step" of the pager. The step number is the pin epoch
 * of both slot maps: every block the step selects is pinned until the next
 * step, so a later miss of the same step can never evict it. On CUDA the
 * step number also indexes the event rings of gpupool.h:
 *   - a GPU slot remembers the last step that read it (pool_use); before a
 *     copy overwrites it, the copy stream waits for compute[use + 1], i.e.
 *     for the attention queued by that step. Victims are usually old, so the
 *     copies of step t overlap the attention of step t-1;
 *   - a host slot remembers the last step whose copies read it (host_dma);
 *     before the source or a completed block overwrites it, the host waits
 *     for copy[dma].
 *
 * The layout of a slot is the pool layout of msa.h: K and V live in two
 * arenas [slots + n_layers][Hkv][Bk][d]; the last n_layers slots of each
 * tier are the layers' open tail blocks, never evicted. Rows appended go to
 * the host tail slot (converted from fp32 to the pager's dtype) and reach
 * the GPU tail slot as the rows not yet copied, at the next step that
 * selects the tail block.
 *
 * Overlap: a step's copies are queued together on the copy stream and run
 * while the host fills and uploads the block table; copies into slots that
 * the in-flight attention does not read start without waiting for it. A
 * selection in device memory has to be copied back first, which waits for
 * the compute stream, so in a decode step where the GPU selects, the copies
 * cannot overlap that layer's own selection; they overlap the caller's
 * later work only through the events. Misses of a step are read from the
 * source in parallel when the source is thread-safe.
 *
 * Index keys are held per layer in a growing host array [blocks][ikh][Bk]
 * [d_idx] (pinned on CUDA) and mirrored on the GPU while they fit
 * gpu_index_bytes: new rows are copied up at each index_view. A layer that
 * outgrows the budget is streamed instead (msa_kvmem_paged_index_scan):
 * its resident copy is dropped and every scan copies its blocks, chunk by
 * chunk, into a ring of two halves of GPU index slots on the copy stream.
 * Each chunk is one step of the event rings: the copy into a half waits for
 * compute[use + 1] where `use` is the step whose scoring last read that
 * half (so the copy of chunk c+1 overlaps the scoring of chunk c), and the
 * compute stream waits for copy[step] before the chunk is scored. The ring
 * comes out of the same budget; when the resident layers leave no room for
 * two blocks, every layer is streamed. Known limit: a step's distinct
 * blocks must fit in each tier.
 */
#include "memory/pager.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "memory/slotmap.h"
#ifdef MSA_HAVE_CUDA
#include "memory/gpupool.h"
#endif

typedef struct pager_layer {
    int64_t len;            /* tokens */
    int64_t done;           /* blocks handed to write_block (or stored at
                               open); the tail block id. Tail rows are
                               len - done * Bk, 0..Bk. */
    void *kidx;             /* host index keys [idx_cap][ikh][Bk][d_idx] */
    int64_t idx_cap;
    int32_t *kv_table;      /* host [max_blocks] */
    int32_t meta[4];        /* indptr {0, nb}, seq_len, unused */
    /* GPU side */
    void *dev_idx;          /* [dev_idx_cap][ikh][Bk][d_idx] */
    int64_t dev_idx_cap;
    int64_t idx_gpu_len;    /* index rows already on the GPU */
    int64_t gpu_tail_block; /* block whose rows the GPU tail slot holds */
    int64_t gpu_tail_rows;
    int64_t tail_dma;       /* last step whose copies read the host tail */
    int kidx_pinned;        /* kidx from msa_gpu_host_alloc */
    int streamed;           /* index keys beyond the budget: no dev_idx */
    int64_t idx_dma;        /* last step whose copies read kidx */
} pager_layer;

typedef struct pager {
    msa_kvmem base; /* first: the msa_kvmem handle points here */
    msa_pager_params p;
    msa_block_source src;
    int L, Hkv, d, ikh, di, Bk;
    int64_t max_blocks;
    size_t es, half_bytes, block_bytes, idx_block_bytes;
    pager_layer *layers;
    int64_t step;
    /* host tier */
    msa_slotmap host;
    int host_slots;
    char *host_k, *host_v; /* [host_slots + L][Hkv][Bk][d] */
    int host_pinned;
    int64_t *host_dma;     /* [host_slots] */
    /* scratch and host-side tables */
    int64_t *mark;         /* [max_blocks] step that last listed the block */
    int32_t *ident;        /* [max_blocks] 0, 1, 2, ... */
    int32_t *uniq, *miss, *rd_block, *rd_slot, *rd_rc;
    int32_t *sel_host;
    size_t sel_cap;
    msa_pager_stats st;
    uint8_t *bad;          /* [L][max_blocks] 1: a stored block failed its checksum;
                              NULL until one does */
    int64_t n_bad;
    uint64_t index_chunks; /* chunks of streamed index scans (reset with st) */
    /* GPU tier */
    int gpu;
#ifdef MSA_HAVE_CUDA
    msa_gpu *g;
    msa_slotmap pool;
    int pool_slots;
    char *dev_k, *dev_v;   /* [pool_slots + L][Hkv][Bk][d] */
    int32_t *dev_tables;   /* [L][max_blocks] */
    int32_t *dev_ident;    /* [max_blocks] */
    int32_t *dev_meta;     /* [L][4] */
    int64_t *pool_use;     /* [pool_slots] */
    size_t dev_idx_bytes;  /* allocated for index keys, all layers */
    char *ring;            /* streamed index keys: 2 halves of ring_C blocks */
    int64_t ring_C;
    int64_t ring_use[2];   /* step whose scoring last read each half */
#endif
} pager;

#define KEY(P, layer, b) ((int64_t)(layer) * (P)->max_blocks + (b))

static inline int64_t n_blocks(const pager *P, const pager_layer *L) {
    return (L->len + P->Bk - 1) / P->Bk;
}

msa_pager_params msa_pager_default_params(void) {
    msa_pager_params p;
    memset(&p, 0, sizeof p);
    p.cfg = msa_attn_default_config();
    p.max_tokens = (int64_t)1 << 20;
    p.dtype = MSA_DTYPE_F32;
    p.device = MSA_DEVICE_CPU;
    p.host_cache_bytes = (size_t)1 << 30;
    p.gpu_pool_bytes = (size_t)4 << 30;
    p.gpu_index_bytes = (size_t)1 << 30;
    return p;
}

size_t msa_pager_block_bytes(const msa_pager_params *p) {
    return 2 * (size_t)p->cfg.n_kv_heads * (size_t)p->cfg.block_size *
           (size_t)p->cfg.head_dim * msa_dtype_size(p->dtype);
}

/* ---- damaged blocks --------------------------------------------------------
 *
 * A stored block whose index keys or K/V fail their checksum (the source
 * returns MSA_ECORRUPT) is left out: its index keys are zeros, and kv_view
 * replaces every selection entry naming it by -1, so attention never reads
 * it (the other selected blocks are attended over as usual; the slot is not
 * given to the next best block). The open tail block cannot be left out: a
 * damaged one fails the open. */

static int is_bad(const pager *P, int layer, int64_t b) {
    return P->bad && P->bad[KEY(P, layer, b)];
}

static int mark_bad(pager *P, int layer, int64_t b) {
    if (!P->bad && !(P->bad = calloc((size_t)P->L * (size_t)P->max_blocks, 1)))
        return msa_error(MSA_ENOMEM, "pager: damaged-block table");
    if (!P->bad[KEY(P, layer, b)]) P->n_bad++;
    P->bad[KEY(P, layer, b)] = 1;
    return MSA_OK;
}

/* ---- source reads -------------------------------------------------------- */

typedef struct read_job {
    pager *P;
    int layer;
    int first_bad;         /* lowest list index that failed, n when none */
    char msg[512];
    pthread_mutex_t mu;
} read_job;

static void read_one(void *ctx, int64_t i) {
    read_job *J = ctx;
    pager *P = J->P;
    size_t off = (size_t)P->rd_slot[i] * P->half_bytes;
    msa_error_clear();
    int rc = P->src.read_block(P->src.ctx, J->layer, P->rd_block[i], P->host_k + off,
                               P->host_v + off);
    P->rd_rc[i] = rc;
    if (rc != MSA_OK) {
        pthread_mutex_lock(&J->mu);
        if (i < J->first_bad) {
            J->first_bad = (int)i;
            const char *m = msa_last_error();
            snprintf(J->msg, sizeof J->msg, "%s", m[0] ? m : msa_strerror(rc));
        }
        pthread_mutex_unlock(&J->mu);
    }
}

/* Reads the n listed blocks (rd_block -> rd_slot) of `layer` from the
 * source into host slots. A block that fails leaves the cache (its slot is
 * released) and the first failure, in list order, is returned with the
 * layer and block named. */
static int read_listed(pager *P, int layer, int n) {
    if (n == 0) return MSA_OK;
    read_job J;
    J.P = P;
    J.layer = layer;
    J.first_bad = n;
    J.msg[0] = 0;
    pthread_mutex_init(&J.mu, NULL);
    double t0 = msa_now();
    if (P->src.thread_safe && n > 1)
        msa_parallel_for(n, P->p.n_threads, read_one, &J);
    else
        for (int i = 0; i < n; i++) read_one(&J, i);
    P->st.seconds_store += msa_now() - t0;
    pthread_mutex_destroy(&J.mu);
    P->st.host_misses += (uint64_t)n;
    P->st.bytes_store_to_host += (uint64_t)n * P->block_bytes;
    if (J.first_bad == n) return MSA_OK;
    int first_other = -1;
    for (int i = 0; i < n; i++) {
        if (P->rd_rc[i] == MSA_OK) continue;
        msa_slotmap_release(&P->host, P->rd_slot[i]);
        if (P->rd_rc[i] == MSA_ECORRUPT) {
            int rc = mark_bad(P, layer, P->rd_block[i]); /* left out from now on */
            if (rc != MSA_OK) return rc;
        } else if (first_other < 0) {
            first_other = i;
        }
    }
    if (first_other < 0) return MSA_OK;
    int rc = P->rd_rc[first_other];
    return msa_error(rc, "layer %d, block %lld: reading from the block source: %s", layer,
                     (long long)P->rd_block[first_other],
                     first_other == J.first_bad ? J.msg : msa_strerror(rc));
}

/* ---- the ops ----------------------------------------------------------------- */

static int host_wait(pager *P, int64_t dma_step);

static int grow_index(pager *P, pager_layer *L, int64_t blocks) {
    if (blocks <= L->idx_cap) return MSA_OK;
    int64_t cap = L->idx_cap ? L->idx_cap : 16;
    while (cap < blocks) cap *= 2;
    if (cap > P->max_blocks) cap = P->max_blocks;
#ifdef MSA_HAVE_CUDA
    if (P->gpu) {
        /* pinned, so that the streamed scan's copies run asynchronously */
        int pinned = 0;
        void *nk = msa_gpu_host_alloc((size_t)cap * P->idx_block_bytes, &pinned);
        if (!nk)
            return msa_error(MSA_ENOMEM, "pager: index keys for %lld blocks", (long long)cap);
        int rc = host_wait(P, L->idx_dma); /* no copy may still read the old array */
        if (rc != MSA_OK) {
            msa_gpu_host_free(nk, pinned);
            return rc;
        }
        if (L->kidx) memcpy(nk, L->kidx, (size_t)L->idx_cap * P->idx_block_bytes);
        msa_gpu_host_free(L->kidx, L->kidx_pinned);
        L->kidx = nk;
        L->kidx_pinned = pinned;
        L->idx_cap = cap;
        return MSA_OK;
    }
#endif
    void *nk = realloc(L->kidx, (size_t)cap * P->idx_block_bytes);
    if (!nk)
        return msa_error(MSA_ENOMEM, "pager: index keys for %lld blocks", (long long)cap);
    L->kidx = nk;
    L->idx_cap = cap;
    return MSA_OK;
}

static void put_rows(pager *P, char *dst, const float *src, int n, int heads, int dim,
                     int row0) {
    /* src [n][heads][dim] fp32 -> dst [heads][Bk][dim] at rows row0.. */
    for (int t = 0; t < n; t++)
        for (int h = 0; h < heads; h++) {
            const float *s = src + ((size_t)t * heads + h) * dim;
            size_t o = ((size_t)h * P->Bk + row0 + t) * dim;
            switch (P->p.dtype) {
            case MSA_DTYPE_F32: memcpy((float *)dst + o, s, (size_t)dim * 4); break;
            case MSA_DTYPE_BF16:
                for (int x = 0; x < dim; x++) ((uint16_t *)dst)[o + x] = msa_f32_to_bf16(s[x]);
                break;
            case MSA_DTYPE_F16:
                for (int x = 0; x < dim; x++) ((uint16_t *)dst)[o + x] = msa_f32_to_f16(s[x]);
                break;
            }
        }
}

static char *tail_k(pager *P, int layer) {
    return P->host_k + (size_t)(P->host_slots + layer) * P->half_bytes;
}
static char *tail_v(pager *P, int layer) {
    return P->host_v + (size_t)(P->host_slots + layer) * P->half_bytes;
}

static int host_wait(pager *P, int64_t dma_step) {
#ifdef MSA_HAVE_CUDA
    if (P->gpu && dma_step >= 0) return msa_gpu_host_wait_copy(P->g, dma_step);
#endif
    (void)P;
    (void)dma_step;
    return MSA_OK;
}

/* The full tail block of `layer` goes to the store, then into the host
 * cache (when a slot is free of the current step's pins), and the tail
 * moves on. On a write failure nothing changes and the error is returned. */
static int complete_block(pager *P, int layer) {
    pager_layer *L = &P->layers[layer];
    int64_t b = L->done;
    const char *kidx = (const char *)L->kidx + (size_t)b * P->idx_block_bytes;
    msa_error_clear();
    int rc = P->src.write_block(P->src.ctx, layer, b, tail_k(P, layer), tail_v(P, layer), kidx);
    if (rc != MSA_OK)
        return msa_error_context(rc, "layer %d, block %lld: writing the completed block "
                                     "(kept in memory, retried at the next append)",
                                 layer, (long long)b);
    P->st.blocks_written++;
    int64_t old;
    int s = msa_slotmap_victim(&P->host, P->step, &old);
    if (s >= 0) {
        if (old >= 0) P->st.host_evictions++;
        rc = host_wait(P, P->host_dma[s]);
        if (rc != MSA_OK) {
            msa_slotmap_release(&P->host, s);
            return rc;
        }
        memcpy(P->host_k + (size_t)s * P->half_bytes, tail_k(P, layer), P->half_bytes);
        memcpy(P->host_v + (size_t)s * P->half_bytes, tail_v(P, layer), P->half_bytes);
        msa_slotmap_insert(&P->host, s, KEY(P, layer, b), P->step);
        P->host_dma[s] = -1;
    }
    L->done = b + 1;
    return MSA_OK;
}

static int op_append(msa_kvmem *m, int layer, int n, const float *k, const float *v,
                     const float *kidx) {
    pager *P = (pager *)m;
    if (layer < 0 || layer >= P->L || n < 0 || (n > 0 && (!k || !v || !kidx)))
        return msa_error(MSA_EINVAL, "pager append: layer %d of %d, %d rows", layer, P->L, n);
    if (!P->src.write_block)
        return msa_error(MSA_EUNSUPPORTED, "pager append: the block source takes no writes");
    pager_layer *L = &P->layers[layer];
    if (L->len + n > P->p.max_tokens)
        return msa_error(MSA_ERANGE, "pager append: layer %d would hold %lld tokens, over "
                                     "max_tokens %lld", layer, (long long)(L->len + n),
                         (long long)P->p.max_tokens);
    int rc;
    int i = 0;
    while (n > 0 || L->len - L->done * P->Bk == P->Bk) {
        int rows = (int)(L->len - L->done * P->Bk);
        if (rows == P->Bk) {
            if ((rc = complete_block(P, layer)) != MSA_OK) return rc;
            continue;
        }
        if (rows == 0 && (rc = host_wait(P, L->tail_dma)) != MSA_OK) return rc;
        if ((rc = grow_index(P, L, L->done + 1)) != MSA_OK) return rc;
        int take = n < P->Bk - rows ? n : P->Bk - rows;
        put_rows(P, tail_k(P, layer), k + (size_t)i * P->Hkv * P->d, take, P->Hkv, P->d, rows);
        put_rows(P, tail_v(P, layer), v + (size_t)i * P->Hkv * P->d, take, P->Hkv, P->d, rows);
        put_rows(P, (char *)L->kidx + (size_t)L->done * P->idx_block_bytes,
                 kidx + (size_t)i * P->ikh * P->di, take, P->ikh, P->di, rows);
        L->len += take;
        i += take;
        n -= take;
    }
    return MSA_OK;
}

static int64_t op_length(msa_kvmem *m, int layer) {
    pager *P = (pager *)m;
    return layer >= 0 && layer < P->L ? P->layers[layer].len : 0;
}

static void set_meta(pager *P, pager_layer *L) {
    L->meta[0] = 0;
    L->meta[1] = (int32_t)n_blocks(P, L);
    L->meta[2] = (int32_t)L->len;
    L->meta[3] = 0;
}

#ifdef MSA_HAVE_CUDA
/* Chunks of a streamed scan hold at most this many blocks (32 MiB of bf16
 * index keys at Bk = d_idx = 128): big enough that a copy takes much longer
 * than the launches around it. */
#define INDEX_CHUNK_MAX 1024

/* `L` gives up its resident index keys and is streamed from now on. */
static void stream_layer(pager *P, pager_layer *L) {
    if (L->streamed) return;
    msa_gpu_dfree(L->dev_idx); /* cudaFree waits for the kernels reading it */
    P->dev_idx_bytes -= (size_t)L->dev_idx_cap * P->idx_block_bytes;
    L->dev_idx = NULL;
    L->dev_idx_cap = 0;
    L->idx_gpu_len = 0;
    L->streamed = 1;
}

/* The ring of GPU index slots, out of the budget the resident layers leave
 * (all of it when they leave less than two blocks). */
static int ensure_ring(pager *P) {
    if (P->ring) return MSA_OK;
    size_t budget = P->p.gpu_index_bytes, ibb = P->idx_block_bytes;
    if (P->dev_idx_bytes + 2 * ibb > budget)
        for (int l = 0; l < P->L; l++) stream_layer(P, &P->layers[l]);
    int64_t C = (int64_t)((budget - P->dev_idx_bytes) / (2 * ibb));
    if (C > INDEX_CHUNK_MAX) C = INDEX_CHUNK_MAX;
    if (C > P->max_blocks) C = P->max_blocks;
    if (C < 1)
        return msa_error(MSA_ERANGE, "pager: gpu_index_bytes %zu holds fewer than two blocks of "
                                     "index keys (%zu bytes each)", budget, ibb);
    int rc = msa_gpu_malloc((void **)&P->ring, (size_t)(2 * C) * ibb, "the index-key ring");
    if (rc != MSA_OK) return rc;
    P->ring_C = C;
    P->ring_use[0] = P->ring_use[1] = -1;
    return MSA_OK;
}

/* The GPU side of a layer's index keys: its resident copy grown and brought
 * up to date, or, when the budget cannot hold it, the layer streamed. */
static int index_on_gpu(pager *P, int layer) {
    pager_layer *L = &P->layers[layer];
    int64_t nb = n_blocks(P, L);
    int rc;
    size_t ibb = P->idx_block_bytes;
    if (!L->streamed && nb > L->dev_idx_cap) {
        int64_t cap = L->dev_idx_cap ? L->dev_idx_cap : 16;
        while (cap < nb) cap *= 2;
        if (cap > P->max_blocks) cap = P->max_blocks;
        size_t used = P->dev_idx_bytes + (P->ring ? (size_t)(2 * P->ring_C) * ibb : 0);
        size_t want = used + (size_t)(cap - L->dev_idx_cap) * ibb;
        if (want > P->p.gpu_index_bytes) {
            cap = nb;
            want = used + (size_t)(cap - L->dev_idx_cap) * ibb;
        }
        if (want > P->p.gpu_index_bytes) {
            stream_layer(P, L);
        } else {
            void *nd;
            if ((rc = msa_gpu_malloc(&nd, (size_t)cap * ibb, "index keys")) != MSA_OK) return rc;
            if (L->dev_idx) {
                size_t keep = (size_t)(L->idx_gpu_len / P->Bk) * ibb;
                if (keep && (rc = msa_gpu_upload(P->g, nd, L->dev_idx, keep)) != MSA_OK) {
                    msa_gpu_dfree(nd);
                    return rc;
                }
                msa_gpu_dfree(L->dev_idx); /* cudaFree waits for the copy */
            }
            P->dev_idx_bytes += (size_t)(cap - L->dev_idx_cap) * ibb;
            L->dev_idx = nd;
            L->dev_idx_cap = cap;
            L->idx_gpu_len = L->idx_gpu_len / P->Bk * P->Bk;
        }
    }
    if (L->streamed) return ensure_ring(P);
    if (L->idx_gpu_len < L->len) {
        int64_t b0 = L->idx_gpu_len / P->Bk;
        size_t bytes = (size_t)(nb - b0) * ibb;
        rc = msa_gpu_upload(P->g, (char *)L->dev_idx + (size_t)b0 * ibb,
                            (char *)L->kidx + (size_t)b0 * ibb, bytes);
        if (rc != MSA_OK) return rc;
        P->st.bytes_index_to_gpu += bytes;
        L->idx_gpu_len = L->len;
    }
    return MSA_OK;
}
#endif

static int op_index_view(msa_kvmem *m, int layer, msa_paged_kv *kv) {
    pager *P = (pager *)m;
    if (layer < 0 || layer >= P->L || !kv)
        return msa_error(MSA_EINVAL, "pager index_view: layer %d of %d", layer, P->L);
    pager_layer *L = &P->layers[layer];
    int64_t nb = n_blocks(P, L);
    set_meta(P, L);
    kv->dtype = P->p.dtype;
    kv->n_seqs = 1;
    kv->max_blocks = nb > 0 ? (int)nb : 1;
    if (!P->gpu) {
        kv->kidx = L->kidx;
        kv->idx_indptr = L->meta;
        kv->idx_table = P->ident;
        kv->seq_len = &L->meta[2];
        return MSA_OK;
    }
#ifdef MSA_HAVE_CUDA
    int rc = index_on_gpu(P, layer);
    if (rc != MSA_OK) return rc;
    int32_t *meta = P->dev_meta + 4 * layer;
    if ((rc = msa_gpu_upload(P->g, meta, L->meta, sizeof L->meta)) != MSA_OK) return rc;
    kv->kidx = L->streamed ? NULL : L->dev_idx; /* streamed: msa_kvmem_paged_index_scan */
    kv->idx_indptr = meta;
    kv->idx_table = P->dev_ident;
    kv->seq_len = meta + 2;
    return MSA_OK;
#else
    return msa_error(MSA_ENODEV, "pager: built without CUDA");
#endif
}

/* GPU half of a step: the listed misses (P->miss, n_miss blocks already in
 * host slots) get pool slots and are copied up; the tail rows follow. */
#ifdef MSA_HAVE_CUDA
static int gpu_queue_copies(pager *P, int layer, int n_miss, int tail_used) {
    pager_layer *L = &P->layers[layer];
    int64_t wait_step = -1;
    int rc = MSA_OK;
    /* rd_slot is free again: reuse it for the pool slots of the misses */
    int32_t *pslot = P->rd_slot;
    for (int i = 0; i < n_miss; i++) {
        int64_t key = KEY(P, layer, P->miss[i]), old;
        int s = msa_slotmap_victim(&P->pool, P->step, &old);
        if (s < 0) return msa_error(MSA_ERANGE, "pager: every GPU slot is pinned");
        if (old >= 0) P->st.gpu_evictions++;
        if (P->pool_use[s] >= 0 && P->pool_use[s] + 1 > wait_step) wait_step = P->pool_use[s] + 1;
        msa_slotmap_insert(&P->pool, s, key, P->step);
        P->pool_use[s] = P->step;
        pslot[i] = s;
    }
    if (n_miss > 0 && (rc = msa_gpu_copy_wait_compute(P->g, wait_step)) != MSA_OK) return rc;
    /* rd_block is free too: the host slots of the misses; one call queues
     * all of the step's block copies (gpupool.h: msa_gpu_copy_blocks) */
    int32_t *hslot = P->rd_block;
    for (int i = 0; i < n_miss; i++) {
        int hs = msa_slotmap_find(&P->host, KEY(P, layer, P->miss[i]));
        hslot[i] = hs;
        P->host_dma[hs] = P->step;
        P->st.bytes_host_to_gpu += P->block_bytes;
    }
    if (n_miss > 0)
        rc = msa_gpu_copy_blocks(P->g, P->dev_k, P->dev_v, P->host_k, P->host_v, P->half_bytes,
                                 hslot, pslot, n_miss);
    if (rc != MSA_OK) {
        /* the copies may not have happened: forget the slots */
        for (int i = 0; i < n_miss; i++) msa_slotmap_release(&P->pool, pslot[i]);
        return rc;
    }
    if (tail_used) {
        int64_t rows = L->len - L->done * P->Bk;
        if (L->gpu_tail_block != L->done) {
            /* a new block: rows from 0, after all attention queued so far */
            if ((rc = msa_gpu_copy_wait_compute(P->g, P->step)) != MSA_OK) return rc;
            L->gpu_tail_block = L->done;
            L->gpu_tail_rows = 0;
        }
        if (rows > L->gpu_tail_rows) {
            size_t es = P->es, pitch = (size_t)P->Bk * P->d * es;
            size_t r0 = (size_t)L->gpu_tail_rows * P->d * es;
            size_t width = (size_t)(rows - L->gpu_tail_rows) * P->d * es;
            size_t dof = (size_t)(P->pool_slots + layer) * P->half_bytes + r0;
            rc = msa_gpu_copy2d(P->g, P->dev_k + dof, pitch, tail_k(P, layer) + r0, pitch, width,
                                (size_t)P->Hkv);
            if (rc == MSA_OK)
                rc = msa_gpu_copy2d(P->g, P->dev_v + dof, pitch, tail_v(P, layer) + r0, pitch,
                                    width, (size_t)P->Hkv);
            if (rc != MSA_OK) {
                L->gpu_tail_block = -1;
                return rc;
            }
            P->st.bytes_tail_to_gpu += 2 * width * (size_t)P->Hkv;
            L->gpu_tail_rows = rows;
            L->tail_dma = P->step;
        }
    }
    return MSA_OK;
}

/* Queues the step's copies and always closes the step, so that the host
 * slots that the copies read are covered by copy[step] even after a failure. */
static int gpu_page_in(pager *P, int layer, int n_miss, int tail_used) {
    int rc = gpu_queue_copies(P, layer, n_miss, tail_used);
    int rc2 = msa_gpu_end_step(P->g, P->step);
    return rc != MSA_OK ? rc : rc2;
}
#endif

static int op_kv_view(msa_kvmem *m, int layer, const int32_t *selected, int n_sel,
                      msa_paged_kv *kv) {
    pager *P = (pager *)m;
    if (layer < 0 || layer >= P->L || n_sel < 0 || (n_sel > 0 && !selected) || !kv)
        return msa_error(MSA_EINVAL, "pager kv_view: layer %d of %d, %d selected", layer, P->L,
                         n_sel);
    pager_layer *L = &P->layers[layer];
    int64_t nb = n_blocks(P, L);
    int64_t step = ++P->step;
    int rc;
    P->st.steps++;
    const int32_t *sel = selected;
#ifdef MSA_HAVE_CUDA
    if (P->gpu) {
        if ((rc = msa_gpu_begin_step(P->g, step)) != MSA_OK) return rc;
        if (n_sel > 0 && msa_gpu_is_device_ptr(selected)) {
            if ((size_t)n_sel > P->sel_cap) {
                int32_t *ns = realloc(P->sel_host, (size_t)n_sel * sizeof *ns);
                if (!ns) return msa_error(MSA_ENOMEM, "pager: selection of %d entries", n_sel);
                P->sel_host = ns;
                P->sel_cap = (size_t)n_sel;
            }
            rc = msa_gpu_download(P->g, P->sel_host, selected, (size_t)n_sel * sizeof *sel);
            if (rc != MSA_OK) return rc;
            sel = P->sel_host;
        }
    }
#endif
    /* distinct blocks, the tail apart; damaged ones are dropped from the
     * selection (kvmem.h: the caller's array, written to -1) */
    int n_u = 0, tail_used = 0;
    for (int i = 0; i < n_sel; i++) {
        int32_t b = sel[i];
        if (b < 0) continue;
        if (b < nb && is_bad(P, layer, b)) {
            ((int32_t *)sel)[i] = -1;
            continue;
        }
        if (b >= nb)
            return msa_error(MSA_EINVAL, "pager kv_view: layer %d: selected block %d, but the "
                                         "layer holds %lld blocks", layer, b, (long long)nb);
        if (b == L->done) {
            tail_used = 1;
            continue;
        }
        if (P->mark[b] == step) continue;
        P->mark[b] = step;
        P->uniq[n_u++] = b;
    }
    int tier_slots = P->host_slots;
    const char *tier = "host cache", *knob = "host_cache_bytes";
#ifdef MSA_HAVE_CUDA
    if (P->gpu) {
        tier_slots = P->pool_slots;
        tier = "GPU pool";
        knob = "gpu_pool_bytes";
    }
#endif
    if (n_u > tier_slots)
        return msa_error(MSA_ERANGE, "pager: layer %d: this step selects %d distinct blocks "
                                     "besides the tail, more than the %s's %d slots of %zu "
                                     "bytes; raise %s to at least %zu",
                         layer, n_u, tier, tier_slots, P->block_bytes, knob,
                         (size_t)n_u * P->block_bytes);
    /* which of them the attention tier lacks */
    int n_miss = 0;
    for (int i = 0; i < n_u; i++) {
        int64_t key = KEY(P, layer, P->uniq[i]);
#ifdef MSA_HAVE_CUDA
        if (P->gpu) {
            P->st.gpu_lookups++;
            int s = msa_slotmap_find(&P->pool, key);
            if (s >= 0) {
                P->st.gpu_hits++;
                msa_slotmap_touch(&P->pool, s, step);
                P->pool_use[s] = step;
            } else {
                P->miss[n_miss++] = P->uniq[i];
            }
            continue;
        }
#endif
        (void)key;
        P->miss[n_miss++] = P->uniq[i];
    }
    if (P->gpu && n_miss > P->host_slots)
        return msa_error(MSA_ERANGE, "pager: layer %d: this step pages %d blocks through the "
                                     "host cache, which has %d slots of %zu bytes; raise "
                                     "host_cache_bytes to at least %zu",
                         layer, n_miss, P->host_slots, P->block_bytes,
                         (size_t)n_miss * P->block_bytes);
    /* host tier: hits stay, misses get slots and are read from the source */
    int n_rd = 0;
    for (int i = 0; i < n_miss; i++) {
        int64_t key = KEY(P, layer, P->miss[i]);
        P->st.host_lookups++;
        int s = msa_slotmap_find(&P->host, key);
        if (s >= 0) {
            P->st.host_hits++;
            msa_slotmap_touch(&P->host, s, step);
            continue;
        }
        int64_t old;
        s = msa_slotmap_victim(&P->host, step, &old);
        if (s < 0) return msa_error(MSA_ERANGE, "pager: every host slot is pinned");
        if (old >= 0) P->st.host_evictions++;
        if ((rc = host_wait(P, P->host_dma[s])) != MSA_OK) {
            msa_slotmap_release(&P->host, s);
            return rc;
        }
        msa_slotmap_insert(&P->host, s, key, step);
        P->host_dma[s] = -1;
        P->rd_block[n_rd] = P->miss[i];
        P->rd_slot[n_rd] = s;
        n_rd++;
    }
    int64_t bad_before = P->n_bad;
    if ((rc = read_listed(P, layer, n_rd)) != MSA_OK) {
#ifdef MSA_HAVE_CUDA
        if (P->gpu) msa_gpu_end_step(P->g, step); /* keep the event ring in step */
#endif
        return rc;
    }
    if (P->n_bad != bad_before) { /* blocks found damaged just now: out of this step too */
        for (int i = 0; i < n_sel; i++)
            if (sel[i] >= 0 && sel[i] < nb && is_bad(P, layer, sel[i])) ((int32_t *)sel)[i] = -1;
        int w = 0;
        for (int i = 0; i < n_u; i++)
            if (!is_bad(P, layer, P->uniq[i])) P->uniq[w++] = P->uniq[i];
        n_u = w;
        w = 0;
        for (int i = 0; i < n_miss; i++)
            if (!is_bad(P, layer, P->miss[i])) P->miss[w++] = P->miss[i];
        n_miss = w;
    }
#ifdef MSA_HAVE_CUDA
    /* a selection in device memory gets the entries of damaged blocks too */
    if (P->gpu && P->bad && sel == P->sel_host && n_sel > 0 &&
        (rc = msa_gpu_upload(P->g, (void *)selected, sel, (size_t)n_sel * sizeof *sel)) != MSA_OK) {
        msa_gpu_end_step(P->g, step);
        return rc;
    }
#endif
    /* the table: -1 but for the selected blocks */
    for (int64_t b = 0; b < nb; b++) L->kv_table[b] = -1;
    set_meta(P, L);
    kv->dtype = P->p.dtype;
    kv->n_seqs = 1;
    kv->max_blocks = nb > 0 ? (int)nb : 1;
    if (!P->gpu) {
        for (int i = 0; i < n_u; i++)
            L->kv_table[P->uniq[i]] = msa_slotmap_find(&P->host, KEY(P, layer, P->uniq[i]));
        if (tail_used) L->kv_table[L->done] = P->host_slots + layer;
        kv->k = P->host_k;
        kv->v = P->host_v;
        kv->kv_indptr = L->meta;
        kv->kv_table = L->kv_table;
        kv->seq_len = &L->meta[2];
        return MSA_OK;
    }
#ifdef MSA_HAVE_CUDA
    if ((rc = gpu_page_in(P, layer, n_miss, tail_used)) != MSA_OK) return rc;
    P->st.gpu_misses += (uint64_t)n_miss;
    for (int i = 0; i < n_u; i++)
        L->kv_table[P->uniq[i]] = msa_slotmap_find(&P->pool, KEY(P, layer, P->uniq[i]));
    if (tail_used) L->kv_table[L->done] = P->pool_slots + layer;
    int32_t *meta = P->dev_meta + 4 * layer, *table = P->dev_tables + (size_t)layer * P->max_blocks;
    if ((rc = msa_gpu_upload(P->g, meta, L->meta, sizeof L->meta)) != MSA_OK) return rc;
    if (nb > 0 &&
        (rc = msa_gpu_upload(P->g, table, L->kv_table, (size_t)nb * sizeof *table)) != MSA_OK)
        return rc;
    kv->k = P->dev_k;
    kv->v = P->dev_v;
    kv->kv_indptr = meta;
    kv->kv_table = table;
    kv->seq_len = meta + 2;
    return MSA_OK;
#else
    return msa_error(MSA_ENODEV, "pager: built without CUDA");
#endif
}

static const msa_kvmem_ops paged_ops = {
    .append = op_append,
    .index_view = op_index_view,
    .kv_view = op_kv_view,
    .length = op_length,
};

int msa_kvmem_paged_index_streamed(const msa_kvmem *m, int layer) {
    const pager *P = (const pager *)m;
    if (!m || m->ops != &paged_ops || layer < 0 || layer >= P->L) return 0;
    return P->layers[layer].streamed;
}

int msa_kvmem_paged_index_scan(msa_kvmem *m, int layer, msa_index_chunk_fn fn, void *user) {
    pager *P = (pager *)m;
    if (!m || m->ops != &paged_ops || !fn || layer < 0 || layer >= P->L)
        return msa_error(MSA_EINVAL, "pager index scan: not a pager, no callback or layer %d",
                         layer);
    msa_paged_kv kv;
    memset(&kv, 0, sizeof kv);
    int rc = op_index_view(m, layer, &kv);
    if (rc != MSA_OK) return rc;
    pager_layer *L = &P->layers[layer];
    int64_t nb = n_blocks(P, L);
    if (nb == 0) return MSA_OK;
    if (!L->streamed) return fn(user, &kv, 0, (int)nb);
#ifdef MSA_HAVE_CUDA
    const int64_t C = P->ring_C;
    const size_t ibb = P->idx_block_bytes;
    for (int64_t b0 = 0, c = 0; b0 < nb; b0 += C, c++) {
        const int h = (int)(c & 1);
        const int64_t n = nb - b0 < C ? nb - b0 : C;
        char *half = P->ring + (size_t)(h * C) * ibb;
        const int64_t w = ++P->step;
        rc = msa_gpu_begin_step(P->g, w);
        /* the half is free once the scoring that last read it has run */
        if (rc == MSA_OK && P->ring_use[h] >= 0)
            rc = msa_gpu_copy_wait_compute(P->g, P->ring_use[h] + 1);
        if (rc == MSA_OK)
            rc = msa_gpu_copy(P->g, half, (const char *)L->kidx + (size_t)b0 * ibb,
                              (size_t)n * ibb);
        L->idx_dma = w;
        int rc2 = msa_gpu_end_step(P->g, w); /* the compute stream waits for the copy */
        if (rc == MSA_OK) rc = rc2;
        if (rc != MSA_OK) return rc;
        P->st.bytes_index_to_gpu += (uint64_t)n * ibb;
        P->index_chunks++;
        kv.kidx = half;
        kv.max_blocks = (int)n;
        rc = fn(user, &kv, b0, (int)n);
        P->ring_use[h] = w;
        if (rc != MSA_OK) return rc;
    }
    return MSA_OK;
#else
    return msa_error(MSA_ENODEV, "pager: built without CUDA");
#endif
}

/* ---- lifetime -------------------------------------------------------------------- */

int64_t msa_kvmem_paged_damaged(const msa_kvmem *m) {
    return m ? ((const pager *)m)->n_bad : 0;
}

void msa_kvmem_paged_free(msa_kvmem *m) {
    pager *P = (pager *)m;
    if (!P) return;
#ifdef MSA_HAVE_CUDA
    if (P->g) msa_gpu_sync(P->g);
    msa_slotmap_free(&P->pool);
    msa_gpu_dfree(P->dev_k);
    msa_gpu_dfree(P->dev_v);
    msa_gpu_dfree(P->dev_tables);
    msa_gpu_dfree(P->dev_ident);
    msa_gpu_dfree(P->dev_meta);
    msa_gpu_dfree(P->ring);
    free(P->pool_use);
#endif
    if (P->layers)
        for (int l = 0; l < P->L; l++) {
#ifdef MSA_HAVE_CUDA
            if (P->gpu) {
                msa_gpu_host_free(P->layers[l].kidx, P->layers[l].kidx_pinned);
                P->layers[l].kidx = NULL;
            }
            msa_gpu_dfree(P->layers[l].dev_idx);
#endif
            free(P->layers[l].kidx);
            free(P->layers[l].kv_table);
        }
#ifdef MSA_HAVE_CUDA
    if (P->gpu) {
        msa_gpu_host_free(P->host_k, P->host_pinned);
        msa_gpu_host_free(P->host_v, P->host_pinned);
        P->host_k = P->host_v = NULL;
    }
    msa_gpu_free(P->g);
#endif
    free(P->host_k);
    free(P->host_v);
    free(P->layers);
    msa_slotmap_free(&P->host);
    free(P->host_dma);
    free(P->mark);
    free(P->bad);
    free(P->ident);
    free(P->uniq);
    free(P->miss);
    free(P->rd_block);
    free(P->rd_slot);
    free(P->rd_rc);
    free(P->sel_host);
    free(P);
}

static int check_params(const msa_pager_params *p) {
    const msa_attn_config *c = &p->cfg;
    if (p->n_layers < 1 || c->n_kv_heads < 1 || c->head_dim < 1 || c->idx_dim < 1 ||
        c->block_size < 1 || (c->idx_key_heads != 1 && c->idx_key_heads != c->n_kv_heads))
        return msa_error(MSA_EINVAL, "pager: bad shapes (layers %d, Hkv %d, d %d, d_idx %d, "
                                     "idx_key_heads %d, Bk %d)",
                         p->n_layers, c->n_kv_heads, c->head_dim, c->idx_dim, c->idx_key_heads,
                         c->block_size);
    if (p->dtype != MSA_DTYPE_F32 && p->dtype != MSA_DTYPE_F16 && p->dtype != MSA_DTYPE_BF16)
        return msa_error(MSA_EINVAL, "pager: dtype %d", (int)p->dtype);
    if (p->max_tokens < 1 || p->max_tokens / c->block_size >= INT32_MAX / 2)
        return msa_error(MSA_ERANGE, "pager: max_tokens %lld", (long long)p->max_tokens);
    if (p->device != MSA_DEVICE_CPU && p->device != MSA_DEVICE_CUDA)
        return msa_error(MSA_EINVAL, "pager: device %d", (int)p->device);
    return MSA_OK;
}

static int slots_for(size_t bytes, size_t block_bytes, const char *knob, int *out) {
    size_t n = bytes / block_bytes;
    if (n < 1)
        return msa_error(MSA_ERANGE, "pager: %s %zu holds no block of %zu bytes", knob, bytes,
                         block_bytes);
    *out = n > INT32_MAX / 2 ? INT32_MAX / 2 : (int)n;
    return MSA_OK;
}

static int load_stored(pager *P) {
    for (int l = 0; l < P->L; l++) {
        pager_layer *L = &P->layers[l];
        int64_t len = P->src.length ? P->src.length(P->src.ctx, l) : 0;
        if (len < 0 || len > P->p.max_tokens)
            return msa_error(MSA_ERANGE, "pager: layer %d: the source holds %lld tokens, "
                                         "max_tokens is %lld", l, (long long)len,
                             (long long)P->p.max_tokens);
        int64_t nb = (len + P->Bk - 1) / P->Bk;
        int rc = grow_index(P, L, nb > 0 ? nb : 1);
        if (rc != MSA_OK) return rc;
        if (nb > 0 && !P->src.read_index)
            return msa_error(MSA_EINVAL, "pager: the source holds tokens but no read_index");
        for (int64_t b = 0; b < nb; b++) {
            msa_error_clear();
            rc = P->src.read_index(P->src.ctx, l, b,
                                   (char *)L->kidx + (size_t)b * P->idx_block_bytes);
            if (rc == MSA_ECORRUPT && b < len / P->Bk) { /* a full block: left out */
                memset((char *)L->kidx + (size_t)b * P->idx_block_bytes, 0, P->idx_block_bytes);
                rc = mark_bad(P, l, b);
            }
            if (rc != MSA_OK)
                return msa_error_context(rc, "layer %d, block %lld: reading index keys", l,
                                         (long long)b);
        }
        L->len = len;
        L->done = len / P->Bk;
        if (len % P->Bk) {
            msa_error_clear();
            rc = P->src.read_block(P->src.ctx, l, L->done, tail_k(P, l), tail_v(P, l));
            if (rc != MSA_OK)
                return msa_error_context(rc, "layer %d, block %lld: reading the partial last "
                                             "block", l, (long long)L->done);
        }
    }
    return MSA_OK;
}

int msa_kvmem_paged_init(msa_kvmem **out, const msa_pager_params *params,
                         const msa_block_source *src) {
    if (!out || !params || !src || !src->read_block)
        return msa_error(MSA_EINVAL, "pager: NULL argument or source without read_block");
    *out = NULL;
    int rc = check_params(params);
    if (rc != MSA_OK) return rc;
#ifndef MSA_HAVE_CUDA
    if (params->device == MSA_DEVICE_CUDA)
        return msa_error(MSA_ENODEV, "pager: CUDA asked for in a build without CUDA");
#endif
    pager *P = calloc(1, sizeof *P);
    if (!P) return msa_error(MSA_ENOMEM, "pager");
    P->base.ops = &paged_ops;
    P->p = *params;
    P->src = *src;
    P->L = params->n_layers;
    P->Hkv = params->cfg.n_kv_heads;
    P->d = params->cfg.head_dim;
    P->ikh = params->cfg.idx_key_heads;
    P->di = params->cfg.idx_dim;
    P->Bk = params->cfg.block_size;
    P->max_blocks = (params->max_tokens + P->Bk - 1) / P->Bk;
    P->es = msa_dtype_size(params->dtype);
    P->half_bytes = (size_t)P->Hkv * P->Bk * P->d * P->es;
    P->block_bytes = 2 * P->half_bytes;
    P->idx_block_bytes = (size_t)P->ikh * P->Bk * P->di * P->es;
    P->gpu = params->device == MSA_DEVICE_CUDA;
    P->step = 16; /* past the event rings' initial entries */
    int64_t mb = P->max_blocks;

    if ((rc = slots_for(params->host_cache_bytes, P->block_bytes, "host_cache_bytes",
                        &P->host_slots)) != MSA_OK)
        goto fail;
    if ((rc = msa_slotmap_init(&P->host, P->host_slots, (int64_t)P->L * mb)) != MSA_OK) goto fail;
    size_t arena = (size_t)(P->host_slots + P->L) * P->half_bytes;
#ifdef MSA_HAVE_CUDA
    if (P->gpu) {
        if ((rc = msa_gpu_init(&P->g, params->stream)) != MSA_OK) goto fail;
        P->host_k = msa_gpu_host_alloc(arena, &P->host_pinned);
        P->host_v = msa_gpu_host_alloc(arena, &P->host_pinned);
    } else
#endif
    {
        P->host_k = malloc(arena);
        P->host_v = malloc(arena);
    }
    P->layers = calloc((size_t)P->L, sizeof *P->layers);
    P->host_dma = malloc((size_t)P->host_slots * sizeof *P->host_dma);
    P->mark = malloc((size_t)mb * sizeof *P->mark);
    P->ident = malloc((size_t)mb * sizeof *P->ident);
    P->uniq = malloc((size_t)mb * sizeof *P->uniq);
    P->miss = malloc((size_t)mb * sizeof *P->miss);
    P->rd_block = malloc((size_t)mb * sizeof *P->rd_block);
    P->rd_slot = malloc((size_t)mb * sizeof *P->rd_slot);
    P->rd_rc = malloc((size_t)mb * sizeof *P->rd_rc);
    if (!P->host_k || !P->host_v || !P->layers || !P->host_dma || !P->mark || !P->ident ||
        !P->uniq || !P->miss || !P->rd_block || !P->rd_slot || !P->rd_rc) {
        rc = msa_error(MSA_ENOMEM, "pager: host cache of %d slots (%zu bytes) and tables",
                       P->host_slots, 2 * arena);
        goto fail;
    }
    for (int s = 0; s < P->host_slots; s++) P->host_dma[s] = -1;
    for (int64_t b = 0; b < mb; b++) {
        P->mark[b] = -1;
        P->ident[b] = (int32_t)b;
    }
    for (int l = 0; l < P->L; l++) {
        pager_layer *L = &P->layers[l];
        L->kv_table = malloc((size_t)mb * sizeof *L->kv_table);
        if (!L->kv_table) {
            rc = msa_error(MSA_ENOMEM, "pager: block tables");
            goto fail;
        }
        L->gpu_tail_block = -1;
        L->tail_dma = -1;
        L->idx_dma = -1;
    }
#ifdef MSA_HAVE_CUDA
    if (P->gpu) {
        if (params->gpu_index_bytes < 2 * P->idx_block_bytes) {
            rc = msa_error(MSA_ERANGE, "pager: gpu_index_bytes %zu holds fewer than two blocks "
                                       "of index keys (%zu bytes each)",
                           params->gpu_index_bytes, P->idx_block_bytes);
            goto fail;
        }
        if ((rc = slots_for(params->gpu_pool_bytes, P->block_bytes, "gpu_pool_bytes",
                            &P->pool_slots)) != MSA_OK)
            goto fail;
        if ((rc = msa_slotmap_init(&P->pool, P->pool_slots, (int64_t)P->L * mb)) != MSA_OK)
            goto fail;
        size_t dev_arena = (size_t)(P->pool_slots + P->L) * P->half_bytes;
        if ((rc = msa_gpu_malloc((void **)&P->dev_k, dev_arena, "the GPU pool (K)")) != MSA_OK ||
            (rc = msa_gpu_malloc((void **)&P->dev_v, dev_arena, "the GPU pool (V)")) != MSA_OK ||
            (rc = msa_gpu_malloc((void **)&P->dev_tables, (size_t)P->L * mb * 4,
                                 "block tables")) != MSA_OK ||
            (rc = msa_gpu_malloc((void **)&P->dev_ident, (size_t)mb * 4, "index table")) !=
                MSA_OK ||
            (rc = msa_gpu_malloc((void **)&P->dev_meta, (size_t)P->L * 16, "block tables")) !=
                MSA_OK)
            goto fail;
        P->pool_use = malloc((size_t)P->pool_slots * sizeof *P->pool_use);
        if (!P->pool_use) {
            rc = msa_error(MSA_ENOMEM, "pager: GPU slot table");
            goto fail;
        }
        for (int s = 0; s < P->pool_slots; s++) P->pool_use[s] = -1;
        if ((rc = msa_gpu_upload(P->g, P->dev_ident, P->ident, (size_t)mb * 4)) != MSA_OK)
            goto fail;
    }
#endif
    if ((rc = load_stored(P)) != MSA_OK) goto fail;
    *out = &P->base;
    return MSA_OK;
fail:
    msa_kvmem_paged_free(&P->base);
    return rc;
}

void msa_kvmem_paged_stats(const msa_kvmem *m, msa_pager_stats *out) {
    const pager *P = (const pager *)m;
    *out = P->st;
    out->host_slots = P->host_slots;
#ifdef MSA_HAVE_CUDA
    out->gpu_slots = P->gpu ? P->pool_slots : 0;
#endif
    out->block_bytes = (int64_t)P->block_bytes;
}

void msa_kvmem_paged_reset_stats(msa_kvmem *m) {
    pager *P = (pager *)m;
    memset(&P->st, 0, sizeof P->st);
    P->index_chunks = 0;
}

void msa_kvmem_paged_index_info(const msa_kvmem *m, int *streamed_layers, int64_t *chunk_blocks,
                                uint64_t *chunks) {
    const pager *P = (const pager *)m;
    int n = 0;
    for (int l = 0; l < P->L; l++) n += P->layers[l].streamed;
    if (streamed_layers) *streamed_layers = n;
#ifdef MSA_HAVE_CUDA
    if (chunk_blocks) *chunk_blocks = P->ring ? P->ring_C : 0;
#else
    if (chunk_blocks) *chunk_blocks = 0;
#endif
    if (chunks) *chunks = P->index_chunks;
}

int msa_kvmem_paged_tail(msa_kvmem *m, int layer, int64_t *block, int *rows,
                         const void **k, const void **v, const void **kidx) {
    pager *P = (pager *)m;
    if (layer < 0 || layer >= P->L)
        return msa_error(MSA_EINVAL, "pager tail: layer %d of %d", layer, P->L);
    pager_layer *L = &P->layers[layer];
    *block = L->done;
    *rows = (int)(L->len - L->done * P->Bk);
    *k = tail_k(P, layer);
    *v = tail_v(P, layer);
    *kidx = L->done < L->idx_cap ? (const char *)L->kidx + (size_t)L->done * P->idx_block_bytes
                                 : NULL;
    return MSA_OK;
}
