/*
 * model_logits.c: the logits of a model at every position of a token
 * sequence, as raw little-endian fp32 (n x V) on stdout, computed by the
 * library's CPU forward pass with dense attention over a host-RAM memory.
 * tests/test_real_models.py compares them with a forward pass written in
 * numpy over gguf-py's dequantized weights.
 *
 *   model-logits MODEL ID [ID ...] > logits.f32
 */
#include <stdio.h>
#include <stdlib.h>

#include "base/base.h"
#include "engine/model/model.h"

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: model-logits MODEL ID [ID ...]\n");
        return 2;
    }
    msa_model *m;
    if (msa_model_open(argv[1], NULL, &m)) {
        fprintf(stderr, "model-logits: %s\n", msa_last_error());
        return 1;
    }
    int n = argc - 2, V = m->info.vocab_size;
    int32_t *ids = malloc(sizeof *ids * (size_t)n);
    float *logits = malloc(sizeof *logits * (size_t)n * (size_t)V);
    msa_kvcache_params kp = msa_kvcache_params_for(m, 128);
    msa_kvmem *mem = NULL;
    int rc = !ids || !logits ? MSA_ENOMEM : msa_kvcache_init(&kp, &mem);
    for (int i = 0; i < n && !rc; i++) ids[i] = atoi(argv[2 + i]);
    msa_forward_opts o = msa_forward_default_opts();
    o.dense = 1;
    o.all_logits = 1;
    if (!rc) rc = msa_model_forward(m, mem, ids, n, 0, &o, logits);
    if (rc) fprintf(stderr, "model-logits: %s\n", msa_last_error());
    else fwrite(logits, sizeof *logits, (size_t)n * (size_t)V, stdout);
    msa_kvcache_free(mem);
    free(logits);
    free(ids);
    msa_model_free(m);
    return rc ? 1 : 0;
}
