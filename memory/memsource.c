/*
 * memsource.c: a block source that keeps blocks in host memory (pager.h).
 *
 * It stands in for the store where nothing needs to persist: the pager's
 * tests and benchmark, and sessions that are never saved. Blocks are kept
 * per layer in a growing array of pointers, each block one allocation of
 * K, V and index keys in the source dtype. Reads of a block never written
 * return MSA_ENOTFOUND. Concurrent reads are safe (nothing is modified by a
 * read); writes need the caller's exclusion, as the pager provides.
 */
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "memory/pager.h"

typedef struct mem_layer {
    char **blocks;   /* [cap] K | V | kidx, NULL when absent */
    int64_t cap;
    int64_t len;
} mem_layer;

struct msa_memsource {
    int L, Bk;
    size_t half, idx;
    mem_layer *layers;
};

int msa_memsource_init(msa_memsource **out, const msa_pager_params *p) {
    *out = NULL;
    if (!p || p->n_layers < 1 || p->cfg.block_size < 1)
        return msa_error(MSA_EINVAL, "memsource: bad params");
    msa_memsource *ms = calloc(1, sizeof *ms);
    if (!ms) return msa_error(MSA_ENOMEM, "memsource");
    ms->L = p->n_layers;
    ms->Bk = p->cfg.block_size;
    ms->half = msa_pager_block_bytes(p) / 2;
    ms->idx = (size_t)p->cfg.idx_key_heads * p->cfg.block_size * p->cfg.idx_dim *
              msa_dtype_size(p->dtype);
    ms->layers = calloc((size_t)ms->L, sizeof *ms->layers);
    if (!ms->layers) {
        free(ms);
        return msa_error(MSA_ENOMEM, "memsource");
    }
    *out = ms;
    return MSA_OK;
}

void msa_memsource_free(msa_memsource *ms) {
    if (!ms) return;
    for (int l = 0; l < ms->L; l++) {
        for (int64_t b = 0; b < ms->layers[l].cap; b++) free(ms->layers[l].blocks[b]);
        free(ms->layers[l].blocks);
    }
    free(ms->layers);
    free(ms);
}

int msa_memsource_put(msa_memsource *ms, int layer, int64_t block, const void *k,
                      const void *v, const void *kidx, int64_t len) {
    if (layer < 0 || layer >= ms->L || block < 0 || !k || !v || !kidx)
        return msa_error(MSA_EINVAL, "memsource: put layer %d block %lld", layer,
                         (long long)block);
    mem_layer *M = &ms->layers[layer];
    if (block >= M->cap) {
        int64_t cap = M->cap ? M->cap : 64;
        while (cap <= block) cap *= 2;
        char **nb = realloc(M->blocks, (size_t)cap * sizeof *nb);
        if (!nb) return msa_error(MSA_ENOMEM, "memsource: %lld blocks", (long long)cap);
        memset(nb + M->cap, 0, (size_t)(cap - M->cap) * sizeof *nb);
        M->blocks = nb;
        M->cap = cap;
    }
    if (!M->blocks[block] && !(M->blocks[block] = malloc(2 * ms->half + ms->idx)))
        return msa_error(MSA_ENOMEM, "memsource: block");
    char *d = M->blocks[block];
    memcpy(d, k, ms->half);
    memcpy(d + ms->half, v, ms->half);
    memcpy(d + 2 * ms->half, kidx, ms->idx);
    int64_t end = len >= 0 ? len : (block + 1) * ms->Bk;
    if (end > M->len) M->len = end;
    return MSA_OK;
}

static const char *get(msa_memsource *ms, int layer, int64_t block) {
    if (layer < 0 || layer >= ms->L || block < 0 || block >= ms->layers[layer].cap) return NULL;
    return ms->layers[layer].blocks[block];
}

static int ms_read_block(void *ctx, int layer, int64_t block, void *k, void *v) {
    msa_memsource *ms = ctx;
    const char *d = get(ms, layer, block);
    if (!d) return msa_error(MSA_ENOTFOUND, "memsource: no block %lld in layer %d",
                             (long long)block, layer);
    memcpy(k, d, ms->half);
    memcpy(v, d + ms->half, ms->half);
    return MSA_OK;
}

static int ms_read_index(void *ctx, int layer, int64_t block, void *kidx) {
    msa_memsource *ms = ctx;
    const char *d = get(ms, layer, block);
    if (!d) return msa_error(MSA_ENOTFOUND, "memsource: no block %lld in layer %d",
                             (long long)block, layer);
    memcpy(kidx, d + 2 * ms->half, ms->idx);
    return MSA_OK;
}

static int64_t ms_length(void *ctx, int layer) {
    msa_memsource *ms = ctx;
    return layer >= 0 && layer < ms->L ? ms->layers[layer].len : 0;
}

static int ms_write_block(void *ctx, int layer, int64_t block, const void *k, const void *v,
                          const void *kidx) {
    return msa_memsource_put(ctx, layer, block, k, v, kidx, -1);
}

msa_block_source msa_memsource_source(msa_memsource *ms) {
    msa_block_source s;
    memset(&s, 0, sizeof s);
    s.ctx = ms;
    s.read_block = ms_read_block;
    s.read_index = ms_read_index;
    s.length = ms_length;
    s.write_block = ms_write_block;
    s.thread_safe = 1;
    return s;
}
