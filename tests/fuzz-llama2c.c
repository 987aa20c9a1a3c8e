/*
 * fuzz-llama2c.c: libFuzzer target for llama2.c files: the checkpoint and
 * tokenizer.bin read by msa_convert_llama2c() (engine/model/
 * convert_llama2c.c) and the tokenizer.bin loader msa_tokenizer_from_llama2c()
 * (engine/tokenizer/tokenizer_spm.c).
 *
 * Input: u32 n (little-endian), then the checkpoint (n mod what is left
 * bytes), then tokenizer.bin. A converted GGUF is opened again as a GGUF
 * and as a model, so that what the converter writes is checked by the
 * reader. Built by tests/fuzz.cmake against the instrumented library.
 */
#include <stdlib.h>

#include "engine/msa.h"
#include "engine/model/gguf.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/fuzz_util.h"

static char out_dir[64], out_path[96];

static void cleanup(void) { fuzz_rmtree(out_dir); }

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    snprintf(out_dir, sizeof out_dir, "/dev/shm/msa-fuzz-llama2c-XXXXXX");
    if (!mkdtemp(out_dir)) {
        snprintf(out_dir, sizeof out_dir, "/tmp/msa-fuzz-llama2c-XXXXXX");
        if (!mkdtemp(out_dir)) abort();
    }
    snprintf(out_path, sizeof out_path, "%s/out.gguf", out_dir);
    atexit(cleanup);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 4) return 0;
    size_t n = fuzz_le32(data) % (size - 4 + 1);
    const uint8_t *ck = data + 4, *tk = data + 4 + n;
    size_t tn = size - 4 - n;
    char cpath[32], tpath[32];
    fuzz_path(0, ck, n, cpath);
    fuzz_path(1, tk, tn, tpath);

    msa_tokenizer *t = NULL;
    if (msa_tokenizer_from_llama2c(tpath, &t) == MSA_OK) {
        static const char text[] = "Once upon a time, \xe2\x96\x81 there was\n\xff";
        int32_t ids[256];
        size_t k = 0;
        if (msa_tokenize(t, text, sizeof text - 1, MSA_TOK_ADD_BOS, ids, 256, &k) == MSA_OK) {
            char buf[2048];
            size_t m;
            msa_detokenize(t, ids, k, 0, buf, sizeof buf, &m);
        }
        msa_tokenizer_free(t);
    }
    if (msa_convert_llama2c(cpath, tpath, out_path) == MSA_OK) {
        msa_gguf *g = NULL;
        if (msa_gguf_open(out_path, &g) != MSA_OK) __builtin_trap(); /* we wrote it */
        msa_gguf_close(g);
        msa_model_params p = msa_model_default_params();
        p.no_fingerprint_cache = 1;
        msa_model *m = NULL;
        if (msa_model_open(out_path, &p, &m) == MSA_OK) msa_model_free(m);
        unlink(out_path);
    }
    return 0;
}
