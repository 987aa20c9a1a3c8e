/*
 * kvmem.h: what a forward pass needs from the memory that holds one
 * session's keys, values and index keys, whatever tier they live in.
 *
 * The forward pass of layer l for a chunk of n new tokens does:
 *
 *   append(l, n, k, v, kidx)        the chunk's rows join the layer's memory
 *   index_view(l, &kv)              index keys of every block (resident)
 *   msa_index_select(..., &kv, ...) Top-k blocks per (row, group)
 *   kv_view(l, selected, &kv)       those blocks made resident, table filled
 *   msa_sparse_attention(...)       exact attention over them
 *
 * Two implementations: memory/kvcache.c keeps everything in host RAM (the
 * simplest correct memory, used by tests and short sessions); the pager in
 * memory/ backs it with the store and a bounded host cache / GPU pool
 * (memory/pager.h, msa_kvmem_paged_init). On a CUDA pager the views hold
 * device pointers and kv_view accepts `selected` in host or device memory
 * (a device selection is copied back, which waits for the stream).
 *
 * All sessions hold one sequence (n_seqs = 1). Host rows are fp32.
 */
#ifndef MSA_KVMEM_H
#define MSA_KVMEM_H

#include "engine/msa.h"

typedef struct msa_kvmem msa_kvmem;

typedef struct msa_kvmem_ops {
    /* Appends n tokens' rows to `layer`: k, v [n][Hkv][d] and kidx
     * [n][idx_key_heads][d_idx], fp32. Rows take positions
     * len .. len+n-1 where len is the layer's length before the call. */
    int (*append)(msa_kvmem *m, int layer, int n, const float *k,
                  const float *v, const float *kidx);
    /* Fills the index half of `kv` (kidx, idx_indptr, idx_table, seq_len,
     * n_seqs = 1, max_blocks) for `layer`. Valid until the next call on this
     * memory. */
    int (*index_view)(msa_kvmem *m, int layer, msa_paged_kv *kv);
    /* Makes every block named in `selected` ([n_sel] logical block ids, -1
     * entries ignored) resident and fills the KV half of `kv` (k, v,
     * kv_indptr, kv_table, dtype) so that those entries are valid. Valid
     * until the next call on this memory. */
    int (*kv_view)(msa_kvmem *m, int layer, const int32_t *selected,
                   int n_sel, msa_paged_kv *kv);
    /* Tokens held by `layer`. */
    int64_t (*length)(msa_kvmem *m, int layer);
} msa_kvmem_ops;

struct msa_kvmem {
    const msa_kvmem_ops *ops;
};

#endif /* MSA_KVMEM_H */
