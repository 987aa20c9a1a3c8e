/*
 * model_cuda.h: the transformer forward pass on a CUDA GPU (internal to the
 * library; engine/forward/forward_cuda.cu).
 *
 * A msa_cuda_model holds a model's weights on the GPU as bf16 (uploaded once
 * from the CPU model's fp32 arrays, or drawn at random on the GPU for the
 * benchmark), a cuBLAS handle, a stream and the scratch of a forward call.
 * A msa_cuda_kv is a GPU-resident layer memory for it: per layer, K, V and
 * index keys as bf16 blocks of Bk tokens, slot b holding logical block b
 * (the block table is the identity). The forward pass computes exactly what
 * engine/forward/forward.c computes (same order, same index branch), with bf16
 * weights and activations and fp32 accumulation, and runs MSA through the
 * public msa_index_select / msa_sparse_attention (or msa_dense_attention) on
 * the CUDA backend when the head dims are 64 or 128; other head dims use a
 * simple generic CUDA attention (msa_fwd_generic_attention, kernels/forward.cu).
 * The forward pass's own kernels are in kernels/ (kernels/forward_ops.h).
 *
 * Only compiled with CUDA (MSA_HAVE_CUDA); the CPU build never sees these
 * symbols. Handles are used by one thread at a time.
 */
#ifndef MSA_MODEL_CUDA_H
#define MSA_MODEL_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* C headers without extern "C" of their own (model.h brings gguf.h) */
#include "engine/model/model.h"
#include "memory/kvmem.h"

typedef struct msa_cuda_model msa_cuda_model;
typedef struct msa_cuda_kv msa_cuda_kv;

/* Uploads model `m` (fp32, host) to GPU `cuda_device` as bf16 weights (norms
 * and biases stay fp32). `m` is not needed afterwards. MSA_OK; MSA_ENODEV (no
 * GPU), MSA_ENOMEM (device memory), MSA_ECUDA (a CUDA or cuBLAS call failed,
 * the message says which). *out is NULL after a failure. */
int msa_cuda_model_upload(const msa_model *m, int cuda_device, msa_cuda_model **out);

/* A model of the shapes in `info` (n_layers, dim, n_heads, n_kv_heads,
 * head_dim, ff_dim, vocab_size, rope_theta; has_trained_index with idx_dim
 * for a trained index of one shared key head) whose weights are drawn at
 * random on the GPU from `seed` (matrices uniform with std 1/sqrt(fan-in),
 * norms 1). Nothing is built on the host. For benchmarks. Errors as
 * msa_cuda_model_upload(), MSA_EINVAL for bad shapes. */
int msa_cuda_model_random(const msa_model_info *info, uint64_t seed, int cuda_device,
                          msa_cuda_model **out);

/* Frees the model's device memory, handle and stream. Accepts NULL. */
void msa_cuda_model_free(msa_cuda_model *cm);

/* The model's shapes (info.idx_dim and idx_key_heads filled as the CPU
 * model does). */
const msa_model_info *msa_cuda_model_info(const msa_cuda_model *cm);

/* Bytes of weights one decode step reads: every layer's matrices and norms,
 * the final norm and the classifier (the embedding row is not counted). */
size_t msa_cuda_model_weight_bytes(const msa_cuda_model *cm);

/* The model's stream (a cudaStream_t); every call queues its work there. */
void *msa_cuda_model_stream(const msa_cuda_model *cm);

/* Options that only the GPU path has, as bits of `use_graph`:
 *   1  (default on) single-token calls replay a CUDA graph of the whole
 *      step, captured on the second call with the same shapes;
 *   2  (default off) single-token calls use rmsnorm + cuBLAS + swiglu
 *      instead of the decode GEMV kernel (rmsnorm staged in the GEMV,
 *      SwiGLU in the gate/up epilogue), which is the default;
 *   4  diagnostic for benchmarks: skip the attention (wrong results);
 *   8  (default off) the decode GEMV as v3 (for comparisons): qkv
 *      post-processing and argmax as their own launches, the down
 *      projection one row per warp, instead of v4's fused epilogues and
 *      split row.
 * generic_attention (default 0): use the generic attention kernels even
 * where the fast ones apply (tests). */
void msa_cuda_model_set_options(msa_cuda_model *cm, int use_graph, int generic_attention);

/* Per-kernel timing of single-token steps (bench-model --profile). While on,
 * msa_cuda_model_forward() runs single-token steps eagerly (no graph, no
 * programmatic dependent launch overlap), holds the stream with a short spin
 * kernel until the whole step is queued, and brackets every launch (or
 * group of launches from kernels/) with CUDA events; the elapsed times are
 * summed by kind with the bytes each launch must read or write. Turning it
 * on (or off) clears the sums. */
enum {
    MSA_CUDA_PROF_EMBED,      /* embedding row */
    MSA_CUDA_PROF_QKV,        /* qkv GEMV (rmsnorm staged; with the qkv epilogue when fused) */
    MSA_CUDA_PROF_QKV_POST,   /* bias, RoPE, index query mean, K/V append (own launch) */
    MSA_CUDA_PROF_ATT_SELECT, /* msa_index_select: index scores + top-k */
    MSA_CUDA_PROF_ATT_SPARSE, /* msa_sparse_attention (or dense): attention + combine */
    MSA_CUDA_PROF_O,          /* wo GEMV (+= residual) */
    MSA_CUDA_PROF_GATE_UP,    /* w1/w3 GEMV with SwiGLU */
    MSA_CUDA_PROF_DOWN,       /* w2 GEMV (+= residual) */
    MSA_CUDA_PROF_CLASSIFIER, /* final rmsnorm + classifier GEMV (+ argmax when fused) */
    MSA_CUDA_PROF_ARGMAX,     /* argmax launch (when not fused) */
    MSA_CUDA_PROF_COPY,       /* token upload and argmax / logits download */
    MSA_CUDA_PROF_STEP,       /* the whole step, first launch to last */
    MSA_CUDA_PROF_KINDS
};
typedef struct msa_cuda_prof {
    double ms[MSA_CUDA_PROF_KINDS];    /* summed over steps */
    double bytes[MSA_CUDA_PROF_KINDS]; /* summed over steps */
    long launches[MSA_CUDA_PROF_KINDS];
    int steps;
} msa_cuda_prof;
void msa_cuda_model_profile(msa_cuda_model *cm, int on);
/* The sums so far (MSA_OK), names[kind] the kinds' names. */
int msa_cuda_model_profile_read(const msa_cuda_model *cm, msa_cuda_prof *out);
const char *msa_cuda_prof_name(int kind);

/* A GPU layer memory for `cm` with room for `capacity` tokens in blocks of
 * `block_size` (a multiple of 16, at most 128). Bytes: n_layers * capacity *
 * 2 * (2 * Hkv * d + KH * di). MSA_OK, MSA_EINVAL, MSA_ENOMEM, MSA_ECUDA. */
int msa_cuda_kv_init(msa_cuda_model *cm, int block_size, int64_t capacity, msa_cuda_kv **out);
void msa_cuda_kv_free(msa_cuda_kv *kv);

/* Tokens held (every layer holds the same number). */
int64_t msa_cuda_kv_length(const msa_cuda_kv *kv);

/* Drops the tokens at positions >= len (len <= length); the rows stay in
 * device memory and are overwritten by later appends. */
int msa_cuda_kv_truncate(msa_cuda_kv *kv, int64_t len);

/* Fills every layer's K, V and index keys for positions 0 .. len-1 with
 * random values (uniform in [-1, 1], drawn on the GPU from `seed`) and sets
 * the length to len. Stands in for a prefill of len tokens in benchmarks.
 * MSA_OK, MSA_ERANGE (len > capacity), MSA_ECUDA. */
int msa_cuda_kv_fill_random(msa_cuda_kv *kv, int64_t len, uint64_t seed);

/* The forward pass of msa_model_forward() on the GPU: runs n tokens (host
 * array) at positions pos0 .. pos0+n-1, appending their keys, values and
 * index keys to `kv` (which must hold exactly pos0 tokens). opts NULL:
 * defaults; opts->block_size must equal the memory's; opts->on_layer is not
 * supported (MSA_EUNSUPPORTED). Outputs, each optional (NULL): `logits`
 * (host, V floats, or n*V with all_logits) and `argmax` (host, 1 or n ints:
 * the index of the largest logit of each row, lowest index on ties).
 * Returns when the outputs are on the host. MSA_OK; MSA_EINVAL (arguments,
 * token ids, pos0 not the memory's length), MSA_ERANGE (past the memory's
 * capacity), MSA_ENOMEM, MSA_ECUDA, or what the attention core returns.
 * After a failure the memory may hold part of the chunk: truncate it to
 * pos0. */
int msa_cuda_model_forward(msa_cuda_model *cm, msa_cuda_kv *kv, const int32_t *tokens, int n,
                           int pos0, const msa_forward_opts *opts, float *logits,
                           int32_t *argmax);

/* The forward pass over an msa_kvmem instead of a msa_cuda_kv: what the
 * sessions run on the GPU, with the pager (memory/pager.h) in CUDA mode and
 * bf16 blocks. Per layer the chunk's k, v, k_idx rows are computed into a
 * staging buffer, downloaded and widened to fp32 (exact) for the memory's
 * append, then index_view (device index keys), the selection (on the GPU,
 * brought back to the host), kv_view (device block table) and the attention
 * over the pool. A layer whose index keys the pager streams (beyond its
 * gpu_index_bytes) is scored chunk by chunk as msa_kvmem_paged_index_scan
 * pages the keys in, then one top-k selects: the same selection as with
 * resident keys. Each layer waits for the stream twice (rows, selection),
 * and the host work of the pager sits between the launches, so this path
 * never uses the decode graph. opts->on_layer is called with the selection
 * only (q, q_idx, attn_out NULL). `mem` must hold exactly pos0 tokens (its
 * layer 0 length). Outputs and errors as msa_cuda_model_forward(); after a
 * failure the memory may hold part of the chunk (the session reloads it). */
int msa_cuda_model_forward_mem(msa_cuda_model *cm, msa_kvmem *mem, const int32_t *tokens, int n,
                               int pos0, const msa_forward_opts *opts, float *logits,
                               int32_t *argmax);

/* Seconds the paged path has spent moving rows to the memory (download,
 * widening, append), summed over calls: the cost of appending through the
 * host. */
double msa_cuda_model_append_seconds(const msa_cuda_model *cm);

#ifdef __cplusplus
}
#endif

#endif /* MSA_MODEL_CUDA_H */
