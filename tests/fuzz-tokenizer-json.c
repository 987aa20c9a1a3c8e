/*
 * fuzz-tokenizer-json.c: libFuzzer target for Hugging Face tokenizer.json
 * (engine/tokenizer/tokenizer_json.c, through msa_tokenizer_from_json()).
 * Whatever it accepts must tokenize and detokenize a fixed text, plus the
 * input's own tail as text, without touching memory it does not own.
 * Built by tests/fuzz.cmake against the instrumented library.
 */
#include "engine/msa.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[32];
    fuzz_path(0, data, size, path);
    msa_tokenizer *t = NULL;
    if (msa_tokenizer_from_json(path, &t) != MSA_OK) return 0;
    static const char text[] = "Hello world, 123 \xe2\x96\x81 <s>\n\tcaf\xc3\xa9 \xff";
    int32_t ids[256];
    size_t n = 0;
    if (msa_tokenize(t, text, sizeof text - 1, MSA_TOK_ADD_BOS, ids, 256, &n) == MSA_OK) {
        char out[4096];
        size_t m = 0;
        msa_detokenize(t, ids, n, 0, out, sizeof out, &m);
    }
    size_t tail = size < 64 ? size : 64;
    msa_tokenize(t, (const char *)data + size - tail, tail, 0, ids, 256, &n);
    int32_t nv = msa_tokenizer_n_vocab(t);
    for (int32_t id = 0; id < nv && id < 64; id++) {
        const char *p;
        size_t pl;
        msa_token_piece(t, id, &p, &pl);
        msa_token_is_eog(t, id);
    }
    msa_tokenizer_free(t);
    return 0;
}
