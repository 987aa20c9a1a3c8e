/*
 * fuzz-gguf.c: libFuzzer target for the GGUF reader. Every input is opened
 * from memory; when it opens, every key, array item and tensor byte is read,
 * so that AddressSanitizer catches any access the open-time validation let
 * through. What opens is then read as a tokenizer (msa_tokenizer_from_gguf,
 * engine/tokenizer/tokenizer_gguf.c) and, through a memory file, as a model
 * (msa_model_open: the hyperparameter and shape checks of model.c). Built
 * by tests/fuzz.cmake against the instrumented library.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/gguf.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    msa_gguf *g = NULL;
    if (msa_gguf_open_memory(data, size, &g) != MSA_OK) return 0;
    volatile unsigned acc = 0;
    for (int64_t i = 0; i < msa_gguf_n_kv(g); i++) {
        msa_gguf_type t, et;
        const char *key = msa_gguf_kv_key(g, i, &t);
        const char *s;
        size_t n;
        int64_t v;
        double f;
        uint64_t cnt;
        const void *arr;
        if (msa_gguf_get_str(g, key, &s, &n) == MSA_OK && n) acc += (uint8_t)s[n - 1];
        if (msa_gguf_get_int(g, key, &v) == MSA_OK) acc += (unsigned)v;
        if (msa_gguf_get_float(g, key, &f) == MSA_OK) acc += f > 0;
        if (msa_gguf_get_array(g, key, &et, &cnt, &arr) == MSA_OK) {
            if (et == MSA_GGUF_STRING) {
                for (uint64_t j = 0; j < cnt; j++)
                    if (msa_gguf_get_str_item(g, key, j, &s, &n) == MSA_OK && n)
                        acc += (uint8_t)s[n - 1];
            } else if (arr && cnt) {
                acc += ((const uint8_t *)arr)[0];
            }
        }
    }
    for (int64_t i = 0; i < msa_gguf_n_tensors(g); i++) {
        const msa_gguf_tensor *t = msa_gguf_tensor_at(g, i);
        const msa_gguf_tensor *t2;
        msa_gguf_find_tensor(g, t->name, &t2);
        const uint8_t *b = t->data;
        for (size_t j = 0; b && j < t->size; j++) acc += b[j];
        /* dequantize what was accepted (bounded), so that every block format
         * reads hostile bytes under the sanitizers */
        int64_t ne = 1;
        for (int d = 0; d < t->n_dims && ne > 0 && ne <= (1 << 20); d++)
            ne = t->ne[d] >= 0 && t->ne[d] <= (1 << 20) ? ne * t->ne[d] : -1;
        if (b && ne > 0 && ne <= (1 << 20)) {
            float *f = malloc((size_t)ne * sizeof *f);
            if (f) {
                msa_ggml_to_f32(t->type, b, f, ne);
                acc += f[ne - 1] > 0;
                free(f);
            }
        }
    }
    msa_tokenizer *tok = NULL;
    if (msa_tokenizer_from_gguf(g, &tok) == MSA_OK) {
        static const char text[] = "Hello world, 123 \xe2\x96\x81 <s>\n caf\xc3\xa9 \xff";
        int32_t ids[256];
        size_t k = 0;
        if (msa_tokenize(tok, text, sizeof text - 1, MSA_TOK_ADD_BOS, ids, 256, &k) == MSA_OK) {
            char buf[4096];
            size_t m;
            msa_detokenize(tok, ids, k, 0, buf, sizeof buf, &m);
        }
        msa_tokenizer_free(tok);
    }
    const char *arch;
    size_t al;
    if (msa_gguf_get_str(g, "general.architecture", &arch, &al) == MSA_OK) {
        char path[32];
        fuzz_path(0, data, size, path);
        msa_model_params p = msa_model_default_params();
        p.no_fingerprint_cache = 1;
        msa_model *m = NULL;
        if (msa_model_open(path, &p, &m) == MSA_OK) msa_model_free(m);
    }
    msa_gguf_close(g);
    (void)acc;
    return 0;
}
