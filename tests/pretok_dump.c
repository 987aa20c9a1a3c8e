/*
 * pretok_dump.c: the pre-tokenizer alone. Reads a text on stdin, splits it
 * with the stages of pre-tokenizer variant PRE (msa_tok_pre_split) and
 * prints one line "START LENGTH" (bytes) per piece. tests/test_pretokenizers.py
 * compares the pieces with Hugging Face's tokenizers.
 *
 *   pretok-dump PRE < text
 */
#include <stdio.h>
#include <stdlib.h>

#include "base/base.h"
#include "engine/tokenizer/tokenizer.h"

static void piece(void *ctx, size_t start, size_t n) {
    (void)ctx;
    printf("%zu %zu\n", start, n);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: pretok-dump PRE < text\n");
        return 2;
    }
    size_t cap = 1 << 16, len = 0, got;
    char *buf = malloc(cap);
    while (buf && (got = fread(buf + len, 1, cap - len, stdin)) > 0) {
        len += got;
        if (len == cap) buf = realloc(buf, cap *= 2);
    }
    if (!buf) return 1;
    int rc = msa_tok_pre_split(argv[1], buf, len, piece, NULL);
    if (rc) fprintf(stderr, "pretok-dump: %s\n", msa_last_error());
    free(buf);
    return rc ? 1 : 0;
}
