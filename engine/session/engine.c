/*
 * engine.c: an engine is a model, its tokenizer and a store, opened
 * together so that every session the engine opens is bound to that model.
 *
 * The tokenizer comes from the model file itself (GGUF metadata) or, for a
 * Hugging Face directory, from its tokenizer.json. The chat template is
 * recognised from the model's own template text (tokenizer.chat_template in
 * GGUF, chat_template in tokenizer_config.json).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/session/engine.h"
#include "engine/tokenizer/tokenizer.h"
#include "base/base.h"
#ifdef MSA_HAVE_CUDA
#include "engine/forward/model_cuda.h"
#endif

msa_engine_params msa_engine_default_params(void) {
    msa_engine_params p;
    memset(&p, 0, sizeof p);
    p.device = MSA_DEVICE_CPU;
    p.durable = 1;
    return p;
}

/* The chat template text of a Hugging Face directory, or NULL. */
static char *hf_chat_template(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) return NULL;
    const char *s = json_string_value(json_object_get(root, "chat_template"));
    char *out = s ? strdup(s) : NULL;
    json_decref(root);
    return out;
}

int msa_engine_open(const msa_engine_params *params, msa_engine **out) {
    if (!out) return msa_error(MSA_EINVAL, "msa_engine_open: out is NULL");
    *out = NULL;
    if (!params || !params->model_path || !*params->model_path)
        return msa_error(MSA_EINVAL, "msa_engine_open: no model path given");
#ifndef MSA_HAVE_CUDA
    if (params->device == MSA_DEVICE_CUDA)
        return msa_error(MSA_EUNSUPPORTED, "this build has no CUDA support: the model "
                         "runs on the CPU only (use --device cpu)");
#endif
    if (params->device != MSA_DEVICE_CPU && params->device != MSA_DEVICE_CUDA)
        return msa_error(MSA_EINVAL, "msa_engine_open: unknown device %d", (int)params->device);
    if (params->block_size < 0 || params->top_k < 0 || params->prefill_chunk < 0)
        return msa_error(MSA_EINVAL, "msa_engine_open: negative block_size, top_k or prefill_chunk");

    msa_engine *e = calloc(1, sizeof *e);
    if (!e) return msa_error(MSA_ENOMEM, "msa_engine_open: out of memory");
    e->p = *params;
    e->p.model_path = e->model_path = strdup(params->model_path);
    e->p.store_dir = NULL;
    if (e->p.block_size == 0) e->p.block_size = 128;
    if (e->p.top_k == 0) e->p.top_k = 16;
    if (e->p.prefill_chunk == 0) e->p.prefill_chunk = 256;
    if (e->p.host_cache_bytes == 0) e->p.host_cache_bytes = (size_t)1 << 30;
    e->kv_dtype = MSA_DTYPE_F32;
    e->gpu_pool_bytes = (size_t)2 << 30;
    e->gpu_index_bytes = (size_t)1 << 30;
    const char *pool = getenv("MSA_GPU_POOL_BYTES");
    if (pool && *pool && strtoull(pool, NULL, 10) > 0)
        e->gpu_pool_bytes = (size_t)strtoull(pool, NULL, 10);
    if (params->gpu_pool_bytes) e->gpu_pool_bytes = params->gpu_pool_bytes;
    if (params->gpu_index_bytes) e->gpu_index_bytes = params->gpu_index_bytes;

    msa_model_params mp = msa_model_default_params();
    mp.n_threads = params->n_threads;
    int rc = msa_model_open(e->model_path, &mp, &e->model);
    if (rc) goto fail;
    e->model->n_threads = params->n_threads;
    if ((rc = msa_model_get_info(e->model, &e->info))) goto fail;
#ifdef MSA_HAVE_CUDA
    if (params->device == MSA_DEVICE_CUDA) {
        /* bf16 weights uploaded once; sessions page bf16 blocks through a
         * GPU pool. The decode graph is off: the pager's host work sits
         * between the launches of every layer. */
        /* the upload takes quantized matrices as their bytes, and converts
         * what it keeps in bf16 a slice at a time */
        rc = msa_cuda_model_upload(e->model, params->cuda_device, &e->cm);
        if (rc) {
            msa_error_context(rc, "model '%s': uploading to GPU %d", e->model_path,
                              params->cuda_device);
            goto fail;
        }
        msa_cuda_model_set_options(e->cm, 0, 0);
        e->kv_dtype = MSA_DTYPE_BF16;
    }
#endif

    const msa_gguf *g = msa_model_gguf(e->model);
    char *jinja = NULL;
    if (g) {
        rc = msa_tokenizer_from_gguf(g, &e->tok);
        const char *s;
        size_t n;
        if (msa_gguf_get_str(g, "tokenizer.chat_template", &s, &n) == MSA_OK)
            jinja = strndup(s, n);
    } else {
        rc = msa_tokenizer_open(e->model_path, &e->tok);
        jinja = hf_chat_template(e->model_path);
    }
    if (rc) {
        msa_error_context(rc, "model '%s': tokenizer", e->model_path);
        free(jinja);
        goto fail;
    }
    e->chat_template = msa_chat_template_detect(jinja);
    free(jinja);
    if (msa_tokenizer_n_vocab(e->tok) > e->info.vocab_size) {
        rc = msa_error(MSA_EFORMAT, "model '%s': tokenizer has %d tokens, the model %d",
                       e->model_path, msa_tokenizer_n_vocab(e->tok), e->info.vocab_size);
        goto fail;
    }

    msa_store_params sp = msa_store_default_params();
    sp.dir = params->store_dir;
    sp.durable = params->durable;
    rc = msa_store_open(&sp, &e->store);
    if (rc) goto fail;
    *out = e;
    return MSA_OK;
fail:
    msa_engine_free(e);
    return rc;
}

void msa_engine_free(msa_engine *e) {
    if (!e) return;
    msa_store_close(e->store);
    msa_tokenizer_free(e->tok);
    msa_model_free(e->model);
#ifdef MSA_HAVE_CUDA
    msa_cuda_model_free(e->cm);
#endif
    free(e->model_path);
    free(e);
}

const msa_tokenizer *msa_engine_tokenizer(const msa_engine *e) { return e ? e->tok : NULL; }

const char *msa_engine_fingerprint(const msa_engine *e) {
    return e ? e->info.fingerprint : "";
}

int msa_engine_chat_template(const msa_engine *e) {
    return e ? e->chat_template : MSA_CHAT_PLAIN;
}

msa_store *msa_engine_store(msa_engine *e) { return e ? e->store : NULL; }

const msa_model *msa_engine_model(const msa_engine *e) { return e ? e->model : NULL; }
