/*
 * tokenizer_spm.c: the SentencePiece-style encoder (GGUF "llama" vocabs and
 * llama2.c's tokenizer.bin) and the loader of llama2.c's format.
 *
 * Encoding follows what llama.cpp's SPM tokenizer and llama2.c's encoder
 * both do: spaces become the space marker (U+2581, or a plain space in
 * llama2.c vocabs, which store pieces with real spaces), a dummy space is
 * prepended to the text, the text is cut into UTF-8 characters, and the
 * adjacent pair whose concatenation is the best-scoring vocabulary entry is
 * merged until no pair is in the vocabulary (ties: the leftmost pair).
 * Symbols left that are not tokens (characters outside the vocabulary) are
 * emitted as their <0xNN> byte tokens, or as <unk> when there are none.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer/tokenizer.h"
#include "base/base.h"

static int spm_pair(const msa_tokenizer *t, const char *buf, const msa_tok_sym *l,
                    const msa_tok_sym *r, double *prio, int32_t *id) {
    int32_t m = msa_token_lookup(t, buf + l->start, (size_t)(l->len + r->len));
    if (m < 0) return 0;
    *prio = t->score[m];
    *id = m;
    return 1;
}

int msa_tok_encode_spm(const msa_tokenizer *t, const char *text, size_t len, int first,
                       msa_tok_sink *sink) {
    if (!len) return MSA_OK;
    int prefix = first && t->add_space_prefix;
    size_t sl = (size_t)t->space_len;
    size_t n_buf = (len + (size_t)prefix) * sl;
    if (n_buf > INT32_MAX) return msa_error(MSA_ERANGE, "tokenizer: text over 2 GiB");
    msa_tok_work w = {0};
    int rc = msa_tok_work_reserve(&w, len + 1, n_buf);
    if (rc) return rc;

    /* the text with its dummy space, spaces as the marker */
    size_t k = 0;
    if (prefix) { memcpy(w.buf, t->space, sl); k += sl; }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') { memcpy(w.buf + k, t->space, sl); k += sl; }
        else w.buf[k++] = text[i];
    }

    /* one symbol per UTF-8 character */
    int n = 0;
    for (size_t i = 0; i < k;) {
        /* a broken sequence is one symbol per byte, so that it never
         * swallows the first byte of a following space marker */
        int cl = msa_utf8_len((uint8_t)w.buf[i]);
        if (i + (size_t)cl > k) cl = 1;
        for (int j = 1; j < cl; j++)
            if (((uint8_t)w.buf[i + (size_t)j] & 0xc0) != 0x80) cl = 1;
        msa_tok_sym *s = &w.sym[n];
        s->start = (int32_t)i;
        s->len = cl;
        s->id = msa_token_lookup(t, w.buf + i, (size_t)cl);
        s->prev = n - 1;
        s->next = i + (size_t)cl < k ? n + 1 : -1;
        n++;
        i += (size_t)cl;
    }
    rc = msa_tok_merge(t, &w, w.buf, n, spm_pair);
    for (int i = 0; !rc && i >= 0 && n; i = w.sym[i].next) {
        const msa_tok_sym *s = &w.sym[i];
        if (s->id >= 0) {
            msa_tok_emit(sink, s->id);
            continue;
        }
        for (int j = 0; j < s->len; j++) { /* byte fallback */
            int32_t b = t->byte_tok[(uint8_t)w.buf[s->start + j]];
            if (b >= 0) msa_tok_emit(sink, b);
            else if (t->unk >= 0) msa_tok_emit(sink, t->unk);
        }
    }
    msa_tok_work_free(&w);
    return rc;
}

/* llama2.c's tokenizer.bin: int32 max_token_length, then per token f32
 * score, int32 length, bytes. The vocab size is not stored: tokens run to
 * the end of the file. Ids 0, 1, 2 are <unk>, BOS and EOS. */
int msa_tokenizer_from_llama2c(const char *path, msa_tokenizer **out) {
    *out = NULL;
    FILE *f;
    int orc = msa_file_fopen_read(path, &f);
    if (orc) return msa_error_context(orc, "tokenizer");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *d = size > 0 ? malloc((size_t)size) : NULL;
    if (!d || fread(d, 1, (size_t)size, f) != (size_t)size) {
        free(d);
        fclose(f);
        return msa_error(size > 0 && !d ? MSA_ENOMEM : MSA_EIO, "tokenizer: cannot read %s",
                         path);
    }
    fclose(f);
    /* count the records first */
    size_t o = 4, n = 0;
    while (o + 8 <= (size_t)size) {
        int32_t l;
        memcpy(&l, d + o + 4, 4);
        if (l < 0 || o + 8 + (size_t)l > (size_t)size) break;
        o += 8 + (size_t)l;
        n++;
    }
    if (o != (size_t)size || n < 3) {
        free(d);
        return msa_error(MSA_EFORMAT, "tokenizer: %s: not a llama2.c tokenizer (record "
                         "%zu runs past the end)", path, n);
    }
    msa_tokenizer *t;
    int rc = msa_tok_new(MSA_TOK_SPM, (int32_t)n, &t);
    o = 4;
    for (size_t i = 0; !rc && i < n; i++) {
        float score;
        int32_t l;
        memcpy(&score, d + o, 4);
        memcpy(&l, d + o + 4, 4);
        int type = i == 0 ? MSA_TT_UNKNOWN : i <= 2 ? MSA_TT_CONTROL : MSA_TT_NORMAL;
        rc = msa_tok_set_token(t, (int32_t)i, (const char *)d + o + 8, (size_t)l, score, type);
        o += 8 + (size_t)l;
    }
    free(d);
    if (!rc) {
        t->unk = 0;
        t->bos = 1;
        t->eos = 2;
        t->add_bos = 1;
        t->add_space_prefix = 1;
        memcpy(t->space, " ", 1);
        t->space_len = 1;
        rc = msa_tok_finish(t);
    }
    if (rc) {
        msa_tokenizer_free(t);
        return msa_error_context(rc, "tokenizer %s", path);
    }
    *out = t;
    return MSA_OK;
}
