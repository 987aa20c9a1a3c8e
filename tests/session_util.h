/*
 * session_util.h: what the session tests share: the model and store paths,
 * a prompt, an engine opener, and greedy generation into an id list.
 */
#ifndef MSA_TEST_SESSION_UTIL_H
#define MSA_TEST_SESSION_UTIL_H

#include <stdio.h>

#include "engine/msa.h"

static char model_path[4096], store_dir[4096];

static const char *prompt =
    "Once upon a time, there was a little girl named Lily. She loved to play "
    "outside in the park with her friends. One day, she saw a big red ball.";

/* An engine on model_path/store_dir with the given MSA shape, prefill chunk
 * and host cache (0: the default), on the CPU or CUDA; NULL (with the reason
 * printed) on failure. */
static msa_engine *open_engine_on(int cuda, int block_size, int top_k, int chunk,
                                  size_t cache) {
    msa_engine_params p = msa_engine_default_params();
    p.model_path = model_path;
    p.store_dir = store_dir;
    p.block_size = block_size;
    p.top_k = top_k;
    p.prefill_chunk = chunk;
    p.host_cache_bytes = cache;
    p.durable = 0;
    p.device = cuda ? MSA_DEVICE_CUDA : MSA_DEVICE_CPU;
    msa_engine *e = NULL;
    int rc = msa_engine_open(&p, &e);
    if (rc) fprintf(stderr, "engine (%s): %s: %s\n", cuda ? "cuda" : "cpu", msa_strerror(rc),
                    msa_last_error());
    return e;
}

typedef struct collect {
    int32_t ids[1024];
    int n;
} collect;

static int on_token(void *user, int32_t tok, const char *text, size_t len) {
    (void)text;
    (void)len;
    collect *c = user;
    if (tok >= 0 && c->n < 1024) c->ids[c->n++] = tok;
    return 0;
}

/* Greedy generation of n tokens (EOS does not stop it) into c. */
static int generate(msa_session *s, int n, collect *c) {
    msa_generate_params g = msa_generate_default_params();
    g.max_tokens = n;
    g.stop_at_eos = 0;
    int rc = msa_session_generate(s, &g, on_token, c, NULL);
    if (rc) fprintf(stderr, "generate: %s: %s\n", msa_strerror(rc), msa_last_error());
    return rc;
}

#endif /* MSA_TEST_SESSION_UTIL_H */
