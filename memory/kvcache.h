/*
 * kvcache.h: the simplest layer memory (memory/kvmem.h), everything in host
 * RAM with identity block tables; see kvcache.c. engine/model/model.h adds
 * msa_kvcache_params_for(), which reads these parameters off a model.
 */
#ifndef MSA_KVCACHE_H
#define MSA_KVCACHE_H

#include <stdint.h>

#include "memory/kvmem.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct msa_kvcache_params {
    int n_layers;
    int n_kv_heads;     /* Hkv */
    int head_dim;       /* d */
    int idx_key_heads;  /* 1 or Hkv */
    int idx_dim;        /* di */
    int block_size;     /* Bk */
} msa_kvcache_params;

/* A memory holding everything in host RAM: per layer, slots grow by
 * doubling, block tables are the identity. MSA_OK, MSA_EINVAL, MSA_ENOMEM
 * (*out NULL). Free with msa_kvcache_free(). */
int msa_kvcache_init(const msa_kvcache_params *p, msa_kvmem **out);
void msa_kvcache_free(msa_kvmem *mem);

/* Direct read access to a layer (tests): k, v (n_blocks, Hkv, Bk, d), kidx
 * (n_blocks, KH, Bk, di), and the token count. Valid until the next append.
 * Any output may be NULL. MSA_OK or MSA_EINVAL. */
int msa_kvcache_layer(msa_kvmem *mem, int layer, const float **k, const float **v,
                      const float **kidx, int64_t *len);

/* Drops every layer's tokens at positions >= len (len <= current length).
 * MSA_OK or MSA_EINVAL. */
int msa_kvcache_truncate(msa_kvmem *mem, int64_t len);

#ifdef __cplusplus
}
#endif

#endif /* MSA_KVCACHE_H */
