/*
 * model.h: the in-memory transformer (internal to the library): weights as
 * fp32 matrices, the CPU forward pass through the MSA core, and the host-RAM
 * layer memory (memory/kvcache.c) that tests and short sessions use.
 *
 * Loaders (engine/model/model.c for GGUF, engine/model/model_hf.c for Hugging Face
 * directories) fill an msa_model: hyperparameters in `info` and one
 * msa_model_layer per layer. Weights are fp32, row-major (out, in), exactly
 * as llama2.c's run.c holds them: a GGUF tensor with ggml ne = {in, out} is
 * that matrix. F32 tensors point into the file mapping; other types are
 * converted into buffers the model owns (msa_model_alloc()).
 *
 * Quantized weights: on the CPU, a matrix (and the embedding) whose ggml
 * type has a kernel in kernels/qgemm.h (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
 * Q2_K..Q6_K, K a multiple of the block) is not converted: its msa_qmat
 * points at the file's bytes in the mapping and its fp32 pointer is NULL,
 * and the forward pass multiplies on the blocks with 8-bit activations.
 * Every other type is converted to fp32 as before. MSA_CPU_WEIGHTS=f32 in
 * the environment at open converts everything (the exact fp32 path, which
 * the tight reference tests use); msa_model_expand_f32() does the same for
 * an open model (the CUDA upload and calibration read fp32 weights). A
 * weight whose fp32 pointer is set is always multiplied in fp32.
 *
 * RoPE convention: rope_neox == 0 rotates interleaved pairs (2i, 2i+1) of each
 * head, as llama2.c and llama.cpp's "normal" mode (GGUF llama) do;
 * rope_neox == 1 rotates pairs (i, i + d/2) ("rotate half"), as GGUF qwen2
 * (llama.cpp's NEOX mode) and unpermuted Hugging Face weights need. Pair i
 * of a head turns by pos * theta^(-2i/d) (rope_inv_freq overrides this when
 * set, for scaled RoPE).
 */
#ifndef MSA_MODEL_H
#define MSA_MODEL_H

#include <stdint.h>

#include "engine/model/gguf.h"
#include "engine/msa.h"
#include "memory/kvcache.h"
#include "memory/kvmem.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A weight matrix (rows, cols) kept in its file's bytes: row r at
 * data + r * row_bytes. data NULL: not kept so (the fp32 pointer beside it
 * holds the weight). */
typedef struct msa_qmat {
    const void *data;
    int type;          /* ggml type (MSA_GGML_*) */
    int rows, cols;
    size_t row_bytes;
} msa_qmat;

/* One transformer block. Dim names: D model dim, Hq/Hkv heads, d head dim,
 * F feed-forward dim, di index dim. Optional tensors are NULL when absent. */
typedef struct msa_model_layer {
    const float *attn_norm;  /* (D) */
    const float *wq;         /* (Hq*d, D) */
    const float *wk;         /* (Hkv*d, D) */
    const float *wv;         /* (Hkv*d, D) */
    const float *wo;         /* (D, Hq*d) */
    const float *bq;         /* (Hq*d) or NULL (qwen2 has q/k/v biases) */
    const float *bk;         /* (Hkv*d) or NULL */
    const float *bv;         /* (Hkv*d) or NULL */
    const float *bo;         /* (D) or NULL */
    const float *ffn_norm;   /* (D) */
    const float *w1;         /* (F, D) gate */
    const float *w2;         /* (D, F) down */
    const float *w3;         /* (F, D) up */
    /* trained MSA index (MiniMax-M3 layout), all NULL when absent */
    const float *idx_q;      /* (Hkv*di, D)  GGUF blk.N.msa_idx_q.weight */
    const float *idx_k;      /* (di, D)      GGUF blk.N.msa_idx_k.weight */
    const float *idx_q_norm; /* (di)         GGUF blk.N.msa_idx_q_norm.weight, scale 1+w */
    const float *idx_k_norm; /* (di)         GGUF blk.N.msa_idx_k_norm.weight, scale 1+w */
    /* the same matrices in their file's bytes, where the fp32 pointer is NULL */
    msa_qmat qwq, qwk, qwv, qwo, qw1, qw2, qw3;
} msa_model_layer;

struct msa_model {
    msa_model_info info;       /* public description (msa.h section 4a) */
    float rms_eps;
    int rope_neox;             /* 0: interleaved pairs, 1: rotate half */
    float *rope_inv_freq;      /* (d/2) or NULL: theta^(-2i/d) */
    const float *tok_embd;     /* (V, D) */
    const float *output_norm;  /* (D) */
    const float *output;       /* (V, D); == tok_embd when tied */
    msa_qmat qtok_embd, qoutput; /* quantized views where tok_embd / output are NULL */
    msa_model_layer *layers;   /* [n_layers] */
    int n_threads;             /* 0: one per core */
    msa_gguf *gguf;            /* the file the weights map, or NULL */
    void **owned;              /* buffers freed with the model */
    int n_owned, cap_owned;
    /* forward scratch, grown on demand (the model is one-thread-at-a-time) */
    float *scratch;
    size_t scratch_floats;
};

/* Allocates `n` floats owned by the model (freed by msa_model_free()).
 * MSA_OK or MSA_ENOMEM. */
int msa_model_alloc(msa_model *m, size_t n, float **out);

/* Converts every weight kept quantized (msa_qmat) to an fp32 buffer the
 * model owns and sets its fp32 pointer, so that everything that reads fp32
 * weights (the CUDA upload, calibration) can, and the CPU forward pass runs
 * the exact fp32 path from then on. Idempotent. MSA_OK or MSA_ENOMEM (the
 * weights converted so far stay converted; the model stays usable). */
int msa_model_expand_f32(msa_model *m);

/* Bytes of weights the model holds: in fp32 buffers (converted or mapped
 * F32) and in their quantized file bytes. For reports. */
void msa_model_weight_bytes(const msa_model *m, size_t *f32_bytes, size_t *quant_bytes);

/* The GGUF the model was loaded from (its metadata holds the tokenizer), or
 * NULL for other formats. Owned by the model. */
const msa_gguf *msa_model_gguf(const msa_model *m);

/* Checks the hyperparameters in m->info and that every required weight is
 * set; fills derived fields (head_dim when 0, idx fields). Loaders call it
 * last. MSA_OK or MSA_EFORMAT naming what is missing. */
int msa_model_validate(msa_model *m);

/* ---- forward pass (engine/forward/forward.c) -------------------------------------- */

/* What one layer's attention did, for tests and diagnostics. Pointers are
 * valid only during the callback. */
typedef struct msa_forward_trace {
    int layer;
    int n;                   /* rows of this call */
    int pos0;                /* position of row 0 */
    int n_kv_heads, top_k;
    const float *q;          /* (n, Hq, d) post-RoPE queries */
    const float *q_idx;      /* (n, Hkv, di) index queries */
    const float *attn_out;   /* (n, Hq, d) attention output (before wo) */
    const int32_t *selected; /* (n, Hkv, top_k) or NULL in dense mode */
} msa_forward_trace;

typedef struct msa_forward_opts {
    int block_size;          /* Bk; must equal the memory's block size */
    int top_k;               /* blocks per (row, group) */
    int dense;               /* 1: dense causal attention (the baseline) */
    int all_logits;          /* 1: logits for every row (n, V); 0: last row (V) */
    /* optional: called after each layer's attention */
    void (*on_layer)(void *user, const msa_forward_trace *t);
    void *user;
} msa_forward_opts;

/* Bk 128, k 16, MSA (not dense), last-row logits, no callback. */
msa_forward_opts msa_forward_default_opts(void);

/* Runs n tokens at positions pos0 .. pos0+n-1 through the model, appending
 * their keys, values and index keys to `mem` (every layer must hold exactly
 * pos0 tokens before the call), and writes logits (V floats, or n*V when
 * opts->all_logits). opts NULL: defaults.
 * Returns MSA_OK; MSA_EINVAL (bad arguments, a token id out of range,
 * pos0 not matching the memory, block size mismatch), MSA_ERANGE (past the
 * model's context length is allowed; past INT32 positions is not),
 * MSA_ENOMEM, or what the memory or the attention core return. After a
 * failure the memory may hold some of the chunk's rows in some layers: the
 * caller must discard it (or truncate it) before using it again. */
int msa_model_forward(msa_model *m, msa_kvmem *mem, const int32_t *tokens, int n, int pos0,
                      const msa_forward_opts *opts, float *logits);

/* ---- host-RAM layer memory (memory/kvcache.h) ----------------------------- */

/* The parameters that fit model `m` with blocks of `block_size`. */
msa_kvcache_params msa_kvcache_params_for(const msa_model *m, int block_size);

#ifdef __cplusplus
}
#endif

#endif /* MSA_MODEL_H */
