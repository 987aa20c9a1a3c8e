/*
 * engine.h: the engine and session structs, shared by engine.c and
 * session.c (internal; the public view is msa.h section 4d).
 */
#ifndef MSA_ENGINE_H
#define MSA_ENGINE_H

#include "engine/model/model.h"
#include "engine/msa.h"

struct msa_engine {
    msa_engine_params p;   /* as given, with defaults filled in */
    char *model_path;
    msa_model *model;
    msa_model_info info;
    msa_tokenizer *tok;
    msa_store *store;
    int chat_template;
    /* The GPU path (device CUDA): the model's bf16 weights on the GPU, and
     * what sessions' pagers get. kv_dtype is the dtype of the sessions this
     * engine creates and opens: F32 on the CPU, BF16 on CUDA. */
    struct msa_cuda_model *cm;
    msa_dtype kv_dtype;
    size_t gpu_pool_bytes;   /* K+V of the GPU pool; MSA_GPU_POOL_BYTES, else 2 GiB */
    size_t gpu_index_bytes;  /* resident index keys on the GPU; 1 GiB */
};

/* The logits of the session's last token (recomputed when it was just
 * opened), vocab_size floats owned by the session, valid until its next
 * call; NULL on failure (msa_error says why). For tests that compare the
 * CPU and CUDA paths; not part of the public API. */
const float *msa_session_last_logits(msa_session *s);

#endif /* MSA_ENGINE_H */
