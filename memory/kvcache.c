/*
 * kvcache.c: the simplest layer memory (memory/kvmem.h): every layer's keys,
 * values and index keys in host RAM, in the paged layout the MSA core reads,
 * with logical block b stored in slot b (identity block tables). Slots grow
 * by doubling. It is what tests and short sessions use; the pager in memory/
 * replaces it when a session must outgrow RAM or persist.
 *
 * Per layer:
 *   k, v : (cap_blocks, Hkv, Bk, d)   token t of head h at [t/Bk][h][t%Bk]
 *   kidx : (cap_blocks, KH, Bk, di)
 * Slots past the layer's length hold stale or uninitialised rows; the
 * attention core never reads positions at or past seq_len.
 */
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "memory/kvcache.h"

typedef struct kv_layer {
    float *k, *v, *kidx;
    int64_t cap_blocks;
    int32_t len;
} kv_layer;

typedef struct kvcache {
    msa_kvmem base;            /* first: a kvcache is an msa_kvmem */
    msa_kvcache_params p;
    kv_layer *layers;
    int32_t *ident;            /* (ident_cap) 0, 1, 2, ... */
    int64_t ident_cap;
    int32_t indptr[2];
    int32_t seq_len;
} kvcache;

static int grow_ident(kvcache *c, int64_t n) {
    if (n <= c->ident_cap) return MSA_OK;
    int64_t cap = c->ident_cap ? c->ident_cap : 16;
    while (cap < n) cap *= 2;
    int32_t *p = realloc(c->ident, (size_t)cap * sizeof *p);
    if (!p) return msa_error(MSA_ENOMEM, "kvcache: block table");
    for (int64_t i = c->ident_cap; i < cap; i++) p[i] = (int32_t)i;
    c->ident = p;
    c->ident_cap = cap;
    return MSA_OK;
}

static int kv_append(msa_kvmem *mem, int layer, int n, const float *k, const float *v,
                     const float *kidx) {
    kvcache *c = (kvcache *)mem;
    const msa_kvcache_params *P = &c->p;
    if (layer < 0 || layer >= P->n_layers || n < 0 || (n && (!k || !v || !kidx)))
        return msa_error(MSA_EINVAL, "kvcache: append to layer %d of %d rows", layer, n);
    kv_layer *L = &c->layers[layer];
    if ((int64_t)L->len + n > INT32_MAX)
        return msa_error(MSA_ERANGE, "kvcache: layer %d would hold %lld tokens", layer,
                         (long long)L->len + n);
    const int Bk = P->block_size, Hkv = P->n_kv_heads, d = P->head_dim, KH = P->idx_key_heads,
              di = P->idx_dim;
    int64_t need = ((int64_t)L->len + n + Bk - 1) / Bk;
    if (need > L->cap_blocks) {
        int64_t cap = L->cap_blocks ? L->cap_blocks : 4;
        while (cap < need) cap *= 2;
        size_t kvb = (size_t)Hkv * Bk * d, ib = (size_t)KH * Bk * di;
        float *nk = realloc(L->k, (size_t)cap * kvb * sizeof *nk);
        if (!nk) return msa_error(MSA_ENOMEM, "kvcache: %lld blocks", (long long)cap);
        L->k = nk;
        float *nv = realloc(L->v, (size_t)cap * kvb * sizeof *nv);
        if (!nv) return msa_error(MSA_ENOMEM, "kvcache: %lld blocks", (long long)cap);
        L->v = nv;
        float *ni = realloc(L->kidx, (size_t)cap * ib * sizeof *ni);
        if (!ni) return msa_error(MSA_ENOMEM, "kvcache: %lld index blocks", (long long)cap);
        L->kidx = ni;
        L->cap_blocks = cap;
    }
    int rc = grow_ident(c, need);
    if (rc) return rc;
    for (int i = 0; i < n; i++) {
        int64_t t = (int64_t)L->len + i, blk = t / Bk, off = t % Bk;
        for (int h = 0; h < Hkv; h++) {
            size_t dst = (((size_t)blk * Hkv + h) * Bk + off) * d;
            memcpy(L->k + dst, k + ((size_t)i * Hkv + h) * d, (size_t)d * sizeof(float));
            memcpy(L->v + dst, v + ((size_t)i * Hkv + h) * d, (size_t)d * sizeof(float));
        }
        for (int h = 0; h < KH; h++) {
            size_t dst = (((size_t)blk * KH + h) * Bk + off) * di;
            memcpy(L->kidx + dst, kidx + ((size_t)i * KH + h) * di, (size_t)di * sizeof(float));
        }
    }
    L->len += n;
    return MSA_OK;
}

static int kv_index_view(msa_kvmem *mem, int layer, msa_paged_kv *kv) {
    kvcache *c = (kvcache *)mem;
    if (layer < 0 || layer >= c->p.n_layers || !kv)
        return msa_error(MSA_EINVAL, "kvcache: index view of layer %d", layer);
    const kv_layer *L = &c->layers[layer];
    int32_t nb = (int32_t)((L->len + c->p.block_size - 1) / c->p.block_size);
    c->indptr[0] = 0;
    c->indptr[1] = nb;
    c->seq_len = L->len;
    kv->dtype = MSA_DTYPE_F32;
    kv->kidx = L->kidx;
    kv->idx_indptr = c->indptr;
    kv->idx_table = c->ident;
    kv->seq_len = &c->seq_len;
    kv->n_seqs = 1;
    kv->max_blocks = nb;
    return MSA_OK;
}

static int kv_kv_view(msa_kvmem *mem, int layer, const int32_t *selected, int n_sel,
                      msa_paged_kv *kv) {
    kvcache *c = (kvcache *)mem;
    if (layer < 0 || layer >= c->p.n_layers || !kv)
        return msa_error(MSA_EINVAL, "kvcache: KV view of layer %d", layer);
    const kv_layer *L = &c->layers[layer];
    int32_t nb = (int32_t)((L->len + c->p.block_size - 1) / c->p.block_size);
    for (int i = 0; i < n_sel; i++)
        if (selected[i] >= nb)
            return msa_error(MSA_EINVAL, "kvcache: layer %d: block %d selected of %d", layer,
                             selected[i], nb);
    c->indptr[0] = 0;
    c->indptr[1] = nb;
    c->seq_len = L->len;
    kv->dtype = MSA_DTYPE_F32;
    kv->k = L->k;
    kv->v = L->v;
    kv->kv_indptr = c->indptr;
    kv->kv_table = c->ident;
    kv->seq_len = &c->seq_len;
    kv->n_seqs = 1;
    kv->max_blocks = nb;
    return MSA_OK;
}

static int64_t kv_length(msa_kvmem *mem, int layer) {
    kvcache *c = (kvcache *)mem;
    if (layer < 0 || layer >= c->p.n_layers) return 0;
    return c->layers[layer].len;
}

static const msa_kvmem_ops kvcache_ops = {kv_append, kv_index_view, kv_kv_view, kv_length};

int msa_kvcache_init(const msa_kvcache_params *p, msa_kvmem **out) {
    if (!out) return msa_error(MSA_EINVAL, "msa_kvcache_init: out is NULL");
    *out = NULL;
    if (!p || p->n_layers <= 0 || p->n_kv_heads <= 0 || p->head_dim <= 0 ||
        p->idx_key_heads <= 0 || p->idx_dim <= 0 || p->block_size <= 0)
        return msa_error(MSA_EINVAL, "msa_kvcache_init: bad parameters");
    kvcache *c = calloc(1, sizeof *c);
    if (!c) return msa_error(MSA_ENOMEM, "kvcache");
    c->base.ops = &kvcache_ops;
    c->p = *p;
    c->layers = calloc((size_t)p->n_layers, sizeof *c->layers);
    if (!c->layers) {
        free(c);
        return msa_error(MSA_ENOMEM, "kvcache");
    }
    *out = &c->base;
    return MSA_OK;
}

void msa_kvcache_free(msa_kvmem *mem) {
    if (!mem) return;
    kvcache *c = (kvcache *)mem;
    for (int l = 0; l < c->p.n_layers; l++) {
        free(c->layers[l].k);
        free(c->layers[l].v);
        free(c->layers[l].kidx);
    }
    free(c->layers);
    free(c->ident);
    free(c);
}

int msa_kvcache_layer(msa_kvmem *mem, int layer, const float **k, const float **v,
                      const float **kidx, int64_t *len) {
    kvcache *c = (kvcache *)mem;
    if (!mem || layer < 0 || layer >= c->p.n_layers)
        return msa_error(MSA_EINVAL, "msa_kvcache_layer: layer %d", layer);
    const kv_layer *L = &c->layers[layer];
    if (k) *k = L->k;
    if (v) *v = L->v;
    if (kidx) *kidx = L->kidx;
    if (len) *len = L->len;
    return MSA_OK;
}

int msa_kvcache_truncate(msa_kvmem *mem, int64_t len) {
    kvcache *c = (kvcache *)mem;
    if (!mem || len < 0) return msa_error(MSA_EINVAL, "msa_kvcache_truncate: bad argument");
    for (int l = 0; l < c->p.n_layers; l++)
        if (len > c->layers[l].len)
            return msa_error(MSA_EINVAL, "msa_kvcache_truncate: layer %d holds %d < %lld", l,
                             c->layers[l].len, (long long)len);
    for (int l = 0; l < c->p.n_layers; l++) c->layers[l].len = (int32_t)len;
    return MSA_OK;
}
