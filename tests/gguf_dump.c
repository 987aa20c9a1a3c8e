/*
 * gguf_dump.c: prints one tensor of a GGUF file as raw little-endian fp32
 * on stdout, dequantized by the library (msa_ggml_to_f32). The Python test
 * test_gguf_quant.py compares it with gguf-py's own dequantization.
 *
 *   gguf-dump FILE TENSOR > out.f32
 */
#include <stdio.h>
#include <stdlib.h>

#include "engine/model/gguf.h"
#include "base/base.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: gguf-dump FILE TENSOR\n");
        return 2;
    }
    msa_gguf *g;
    const msa_gguf_tensor *t;
    if (msa_gguf_open(argv[1], &g) || msa_gguf_find_tensor(g, argv[2], &t)) {
        fprintf(stderr, "gguf-dump: %s\n", msa_last_error());
        return 1;
    }
    int64_t n = 1;
    for (int i = 0; i < t->n_dims; i++) n *= t->ne[i];
    float *out = malloc((size_t)n * sizeof *out);
    if (!out) return 1;
    msa_ggml_to_f32(t->type, t->data, out, n);
    fwrite(out, sizeof *out, (size_t)n, stdout);
    free(out);
    msa_gguf_close(g);
    return 0;
}
