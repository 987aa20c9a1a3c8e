/*
 * safetensors.h: read-only access to Hugging Face safetensors files and to
 * model directories in Hugging Face's layout (engine-internal, not installed).
 *
 * A safetensors file is an 8-byte little-endian header length N, N bytes of
 * JSON that map each tensor name to {dtype, shape, data_offsets}, and then
 * the tensor bytes; offsets count from the first byte after the header. A
 * big model is split into model-0000i-of-0000n.safetensors shards, with
 * model.safetensors.index.json mapping each tensor name to its shard
 * ("weight_map").
 *
 * Files are mapped read-only and never trusted: the header length, every
 * offset, every shape product and every name is checked against the file
 * before anything points into it, and overlapping tensors or bytes that no
 * tensor covers are rejected (the format requires the data area to be fully
 * indexed). One caveat that no parser can cover: a file truncated by another
 * process while it is mapped faults (SIGBUS) on access.
 *
 * The second half of this header is the Hugging Face model directory loader
 * (engine/model/model_hf.c): config.json plus safetensors weights, for Llama and
 * Qwen2 architectures.
 */
#ifndef MSA_SAFETENSORS_H
#define MSA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "engine/msa.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MSA_ST_MAX_DIMS 8
/* Largest JSON header accepted (the reference implementation's limit too). */
#define MSA_ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

/* The element types of the format. Files may hold any of them; the engine
 * computes with F32, F16 and BF16 (msa_st_tensor.supported). */
typedef enum msa_st_dtype {
    MSA_ST_BOOL, MSA_ST_U8, MSA_ST_I8, MSA_ST_F8_E5M2, MSA_ST_F8_E4M3,
    MSA_ST_I16, MSA_ST_U16, MSA_ST_F16, MSA_ST_BF16, MSA_ST_I32, MSA_ST_U32,
    MSA_ST_F32, MSA_ST_F64, MSA_ST_I64, MSA_ST_U64,
    MSA_ST_N_DTYPES
} msa_st_dtype;

/* One tensor as found in a file. All pointers are borrowed from the
 * msa_safetensors that produced it and stay valid until it is closed. */
typedef struct msa_st_tensor {
    const char *name;          /* NUL-terminated */
    msa_st_dtype st_dtype;     /* the dtype as written in the file */
    int supported;             /* 1 when st_dtype is F32, F16 or BF16 */
    msa_dtype dtype;           /* the engine dtype when supported, else F32 */
    int n_dims;                /* 0 (a scalar) .. MSA_ST_MAX_DIMS */
    int64_t shape[MSA_ST_MAX_DIMS]; /* outermost first, row-major */
    int64_t n_elements;        /* product of the shape (1 for a scalar) */
    const void *data;          /* little-endian elements; NOT aligned in
                                  general (read with memcpy) */
    uint64_t size;             /* bytes at data == n_elements * elem size */
} msa_st_tensor;

typedef struct msa_safetensors msa_safetensors;

/* The format's name of a dtype ("BF16"); "?" when out of range. Static. */
const char *msa_st_dtype_name(msa_st_dtype dtype);

/* Bytes per element of a dtype (1, 2, 4 or 8); 0 when out of range. */
size_t msa_st_dtype_size(msa_st_dtype dtype);

/* Opens `path`: a .safetensors file, a model.safetensors.index.json, or a
 * directory holding model.safetensors.index.json (sharded; preferred when
 * both are present) or model.safetensors. Every file is mapped and fully
 * validated before this returns. On success *out owns the mappings; release
 * it with msa_safetensors_close().
 *
 * Returns MSA_OK; MSA_EINVAL for NULL arguments; MSA_ENOTFOUND when the
 * path, a shard or a tensor the index names does not exist; MSA_EIO when a
 * file cannot be read or mapped; MSA_EFORMAT when a file is truncated or not
 * valid safetensors (bad header length, bad JSON, a tensor whose offsets,
 * shape or dtype do not agree with the file, overlapping tensors, holes,
 * duplicate names, a shard name that is not a plain file name);
 * MSA_EUNSUPPORTED for more than MSA_ST_MAX_DIMS dimensions; MSA_ENOMEM.
 * On failure *out is NULL and nothing stays mapped. */
int msa_safetensors_open(const char *path, msa_safetensors **out);

/* Parses one safetensors image already in memory (`size` bytes at `data`).
 * The caller keeps the bytes alive and unchanged until
 * msa_safetensors_close(); nothing is copied. `label` names the buffer in
 * error messages (may be NULL). Statuses and the state after failure as
 * msa_safetensors_open(). Used by the fuzz and mutation tests. */
int msa_safetensors_open_memory(const void *data, size_t size,
                                const char *label, msa_safetensors **out);

/* Unmaps the files and frees everything. Accepts NULL. Every msa_st_tensor
 * obtained from `st` dangles afterwards. */
void msa_safetensors_close(msa_safetensors *st);

/* Number of tensors (over all shards). */
int msa_safetensors_count(const msa_safetensors *st);

/* The i-th tensor in name order (0 <= i < count) into *out. Returns MSA_OK,
 * or MSA_EINVAL when i is out of range (*out untouched). */
int msa_safetensors_get(const msa_safetensors *st, int i, msa_st_tensor *out);

/* Looks `name` up (binary search). Returns MSA_OK with *out filled, or
 * MSA_ENOTFOUND (an expected outcome for optional tensors such as biases;
 * a message naming the tensor is still recorded; *out untouched). */
int msa_safetensors_find(const msa_safetensors *st, const char *name,
                         msa_st_tensor *out);

/* Converts the n elements of a supported tensor `t` (F32, F16 or BF16),
 * starting at element `first`, to fp32 into dst (caller-owned, n floats).
 * Returns MSA_OK; MSA_EUNSUPPORTED for another dtype; MSA_ERANGE when
 * [first, first + n) is outside the tensor (dst untouched). */
int msa_st_tensor_read_f32(const msa_st_tensor *t, int64_t first, int64_t n,
                           float *dst);

/* ------------------------------------------------------------------------ */
/* Hugging Face model directories (engine/model/model_hf.c)                       */
/* ------------------------------------------------------------------------ */

typedef enum msa_hf_arch {
    MSA_HF_ARCH_LLAMA = 0, /* LlamaForCausalLM (and MistralForCausalLM) */
    MSA_HF_ARCH_QWEN2 = 1  /* Qwen2ForCausalLM: q/k/v biases */
} msa_hf_arch;

typedef enum msa_hf_rope_type {
    MSA_HF_ROPE_DEFAULT = 0, /* no rope_scaling */
    MSA_HF_ROPE_LLAMA3 = 1,  /* Llama 3.1 frequency-dependent scaling */
    MSA_HF_ROPE_LINEAR = 2   /* positions divided by factor */
} msa_hf_rope_type;

/* What config.json says, resolved (defaults filled in as Hugging Face's
 * configuration classes do). */
typedef struct msa_hf_config {
    msa_hf_arch arch;
    char arch_name[64];         /* as written, e.g. "LlamaForCausalLM" */
    int hidden_size;            /* d_model */
    int intermediate_size;      /* FFN hidden */
    int num_hidden_layers;
    int num_attention_heads;    /* Hq */
    int num_key_value_heads;    /* Hkv (default: Hq) */
    int head_dim;               /* default hidden_size / Hq */
    int vocab_size;
    int max_position_embeddings;
    int tie_word_embeddings;    /* lm_head shares embed_tokens */
    int attention_bias;         /* q/k/v (and o for Llama) carry biases */
    float rms_norm_eps;
    float rope_theta;           /* rope_theta, or rope_parameters.rope_theta */
    msa_hf_rope_type rope_type; /* from rope_scaling or rope_parameters */
    float rope_factor;          /* scaling factor (1 when none) */
    float rope_low_freq_factor; /* llama3 */
    float rope_high_freq_factor;/* llama3 */
    int rope_original_max_pos;  /* llama3: original_max_position_embeddings */
    char torch_dtype[16];       /* informational, "" when absent */
} msa_hf_config;

/* Parses the config.json text of `size` bytes (need not be NUL-terminated)
 * into *cfg. Returns MSA_OK; MSA_EFORMAT for bad JSON, a missing or
 * non-integer required field, or inconsistent sizes (heads not dividing,
 * non-positive sizes); MSA_EUNSUPPORTED for an architecture other than
 * Llama/Qwen2 or a rope_scaling type we cannot apply (yarn, dynamic, ...).
 * *cfg is unspecified after a failure. */
int msa_hf_config_parse(const char *json, size_t size, msa_hf_config *cfg);

/* Reads and parses `<dir>/config.json`. Statuses as msa_hf_config_parse(),
 * plus MSA_ENOTFOUND / MSA_EIO for the file itself. */
int msa_hf_config_read(const char *dir, msa_hf_config *cfg);

/* The inverse frequencies of RoPE pair i (0 <= i < head_dim/2) under cfg's
 * theta and rope_scaling: inv_freq[i] = theta^(-2i/head_dim), then scaled
 * as the llama3 / linear rules say. Writes head_dim/2 floats. */
void msa_hf_rope_inv_freq(const msa_hf_config *cfg, float *inv_freq);

/* Whether `path` is a directory holding config.json (1) or not (0): the
 * test msa_model_open() uses to hand a path to the Hugging Face loader. */
int msa_hf_is_model_dir(const char *path);

/* Fills `m` from the Hugging Face directory `dir` (config.json and the
 * safetensors weights); called by msa_model_open() (engine/model/model.c) with a
 * zeroed model whose n_threads is set. Every weight is converted to an fp32
 * buffer the model owns (msa_model_alloc), q_proj/k_proj rows (and biases)
 * permuted from rotate-half to interleaved RoPE order (m->rope_neox = 0), so
 * the files are closed again before this returns. The fingerprint is
 * SHA-256 over every tensor's name, dtype, shape and bytes.
 * Returns MSA_OK; what msa_hf_config_read() and msa_safetensors_open()
 * return; MSA_EFORMAT for a missing tensor or one of the wrong shape (the
 * message names it); MSA_EUNSUPPORTED for a tensor that is not F32, F16 or
 * BF16; MSA_ENOMEM. On failure `m` holds whatever was loaded so far and
 * the caller frees it with msa_model_free(). */
int msa_model_load_hf(const char *dir, const msa_model_params *p, msa_model *m);

#ifdef __cplusplus
}
#endif

#endif /* MSA_SAFETENSORS_H */
