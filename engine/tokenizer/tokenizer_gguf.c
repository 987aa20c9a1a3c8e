/*
 * tokenizer_gguf.c: a tokenizer from the tokenizer.ggml.* metadata of a
 * GGUF file, as llama.cpp writes it (vocab-only files and full models).
 *
 *   tokenizer.ggml.model        "llama" (SentencePiece-style) or "gpt2"
 *                               (byte-level BPE)
 *   tokenizer.ggml.tokens       string array: the vocabulary
 *   tokenizer.ggml.scores       f32 array (llama): merge scores
 *   tokenizer.ggml.token_type   i32 array: 1 normal, 2 unknown, 3 control,
 *                               4 user-defined, 5 unused, 6 byte
 *   tokenizer.ggml.merges       string array (gpt2): "left right", by rank
 *   tokenizer.ggml.pre          the pre-tokenizer variant (gpt2; default
 *                               "gpt-2"); "llama-bpe" also means a word that
 *                               is a token is taken whole (ignore_merges)
 *   tokenizer.ggml.{bos,eos,unknown,padding,eot}_token_id
 *   tokenizer.ggml.add_bos_token, add_eos_token, add_space_prefix (bools)
 *
 * Defaults where a key is absent follow llama.cpp: for "llama" BOS 1, EOS 2,
 * <unk> 0, add BOS and add the dummy space; for "gpt2" no BOS is added
 * except for the Llama-3 pre-tokenizer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/gguf.h"
#include "engine/tokenizer/tokenizer.h"
#include "base/base.h"

static int get_bool(const msa_gguf *g, const char *key, int dflt) {
    int64_t v;
    return msa_gguf_get_int(g, key, &v) == MSA_OK ? v != 0 : dflt;
}

/* A special token id: the file's value, else dflt (-1 when the vocabulary
 * is too small for it). A stated id outside [0, n_vocab) is an error for
 * BOS and EOS (`strict`), which generation uses as they are; the other
 * special ids (unknown, padding, end of turn) become -1, as llama.cpp
 * falls back for them. */
static int get_id(const msa_gguf *g, const char *key, int32_t dflt, int32_t n_vocab, int strict,
                  int32_t *out) {
    int64_t v;
    if (msa_gguf_get_int(g, key, &v) != MSA_OK) {
        *out = dflt < n_vocab ? dflt : -1;
        return MSA_OK;
    }
    if (v >= 0 && v < n_vocab) {
        *out = (int32_t)v;
        return MSA_OK;
    }
    *out = -1;
    if (!strict) return MSA_OK;
    return msa_error(MSA_EFORMAT, "%s = %lld is outside the vocabulary of %d tokens", key,
                     (long long)v, n_vocab);
}

/* Reads element i of a numeric array of type `elem` as a double. */
static double array_num(msa_gguf_type elem, const void *data, uint64_t i) {
    const unsigned char *p = data;
    switch (elem) {
    case MSA_GGUF_FLOAT32: { float f; memcpy(&f, p + 4 * i, 4); return f; }
    case MSA_GGUF_FLOAT64: { double d; memcpy(&d, p + 8 * i, 8); return d; }
    case MSA_GGUF_INT32: { int32_t v; memcpy(&v, p + 4 * i, 4); return v; }
    case MSA_GGUF_UINT32: { uint32_t v; memcpy(&v, p + 4 * i, 4); return v; }
    case MSA_GGUF_INT8: return (int8_t)p[i];
    case MSA_GGUF_UINT8: case MSA_GGUF_BOOL: return p[i];
    case MSA_GGUF_INT16: { int16_t v; memcpy(&v, p + 2 * i, 2); return v; }
    case MSA_GGUF_UINT16: { uint16_t v; memcpy(&v, p + 2 * i, 2); return v; }
    case MSA_GGUF_INT64: { int64_t v; memcpy(&v, p + 8 * i, 8); return (double)v; }
    case MSA_GGUF_UINT64: { uint64_t v; memcpy(&v, p + 8 * i, 8); return (double)v; }
    default: return 0;
    }
}

int msa_tokenizer_from_gguf(const msa_gguf *g, msa_tokenizer **out) {
    if (!out) return msa_error(MSA_EINVAL, "msa_tokenizer_from_gguf: out is NULL");
    *out = NULL;
    if (!g) return msa_error(MSA_EINVAL, "msa_tokenizer_from_gguf: g is NULL");
    const char *model;
    size_t model_len;
    int rc = msa_gguf_get_str(g, "tokenizer.ggml.model", &model, &model_len);
    if (rc == MSA_ENOTFOUND)
        return msa_error(MSA_ENOTFOUND, "GGUF has no tokenizer (tokenizer.ggml.model)");
    if (rc) return rc;
    msa_tok_family fam;
    if (model_len == 5 && !memcmp(model, "llama", 5)) fam = MSA_TOK_SPM;
    else if (model_len == 4 && !memcmp(model, "gpt2", 4)) fam = MSA_TOK_BPE;
    else
        return msa_error(MSA_EUNSUPPORTED, "tokenizer model '%.*s' is not supported "
                         "(llama and gpt2 are)", (int)model_len, model);

    msa_gguf_type et;
    uint64_t n;
    if ((rc = msa_gguf_get_array(g, "tokenizer.ggml.tokens", &et, &n, NULL)))
        return rc == MSA_ENOTFOUND
                   ? msa_error(MSA_EFORMAT, "GGUF has no tokenizer.ggml.tokens")
                   : rc;
    if (et != MSA_GGUF_STRING || n == 0 || n > INT32_MAX)
        return msa_error(MSA_EFORMAT, "tokenizer.ggml.tokens: not a string array");

    msa_gguf_type st = 0, tt = 0;
    uint64_t ns = 0, nt = 0;
    const void *scores = NULL, *types = NULL;
    if (msa_gguf_get_array(g, "tokenizer.ggml.scores", &st, &ns, &scores) != MSA_OK ||
        ns != n || !scores)
        scores = NULL;
    if (msa_gguf_get_array(g, "tokenizer.ggml.token_type", &tt, &nt, &types) != MSA_OK ||
        nt != n || !types)
        types = NULL;

    msa_tokenizer *t;
    if ((rc = msa_tok_new(fam, (int32_t)n, &t))) return rc;
    for (uint64_t i = 0; i < n && !rc; i++) {
        const char *s;
        size_t l;
        rc = msa_gguf_get_str_item(g, "tokenizer.ggml.tokens", i, &s, &l);
        if (rc) break;
        float score = scores ? (float)array_num(st, scores, i) : 0.0f;
        /* range-checked as a double: casting -9.2e18 to int is undefined
         * (fuzz-gguf, an INT64 token_type array) */
        double tv = types ? array_num(tt, types, i) : MSA_TT_NORMAL;
        int type = tv >= 0 && tv <= MSA_TT_BYTE ? (int)tv : MSA_TT_NORMAL;
        rc = msa_tok_set_token(t, (int32_t)i, s, l, score, type);
    }
    if (!rc) rc = msa_tok_index(t);

    int32_t nv = (int32_t)n;
    int spm = fam == MSA_TOK_SPM;
    if (!rc) rc = get_id(g, "tokenizer.ggml.bos_token_id", spm ? 1 : -1, nv, 1, &t->bos);
    if (!rc) rc = get_id(g, "tokenizer.ggml.eos_token_id", spm ? 2 : -1, nv, 1, &t->eos);
    get_id(g, "tokenizer.ggml.unknown_token_id", spm ? 0 : -1, nv, 0, &t->unk);
    get_id(g, "tokenizer.ggml.padding_token_id", -1, nv, 0, &t->pad);
    get_id(g, "tokenizer.ggml.eot_token_id", -1, nv, 0, &t->eot);
    t->add_eos = get_bool(g, "tokenizer.ggml.add_eos_token", 0);
    if (spm) {
        t->add_bos = get_bool(g, "tokenizer.ggml.add_bos_token", 1);
        t->add_space_prefix = get_bool(g, "tokenizer.ggml.add_space_prefix", 1);
        /* Vocabularies converted from llama2.c keep real spaces in pieces. */
        if (msa_token_lookup(t, "\xe2\x96\x81", 3) < 0 && msa_token_lookup(t, " ", 1) >= 0) {
            t->space[0] = ' ';
            t->space_len = 1;
        }
    } else if (!rc) {
        const char *pre = "gpt-2";
        size_t pre_len = 5;
        if (msa_gguf_get_str(g, "tokenizer.ggml.pre", &pre, &pre_len) != MSA_OK) {
            pre = "gpt-2";
            pre_len = 5;
        }
        snprintf(t->pre, sizeof t->pre, "%.*s", (int)pre_len, pre);
        int llama3 = msa_tok_pre_stages(t->pre, NULL) == msa_tok_pre_stages("llama-bpe", NULL);
        t->ignore_merges = llama3;
        t->add_bos = get_bool(g, "tokenizer.ggml.add_bos_token", llama3);
        uint64_t nm = 0;
        if (msa_gguf_get_array(g, "tokenizer.ggml.merges", &et, &nm, NULL) == MSA_OK &&
            et == MSA_GGUF_STRING) {
            for (uint64_t i = 0; i < nm && !rc; i++) {
                const char *s;
                size_t l;
                rc = msa_gguf_get_str_item(g, "tokenizer.ggml.merges", i, &s, &l);
                if (rc) break;
                /* split at the first space after the first byte */
                const char *sp = l > 1 ? memchr(s + 1, ' ', l - 1) : NULL;
                if (!sp) continue;
                size_t ll = (size_t)(sp - s);
                rc = msa_tok_add_merge(t, s, ll, sp + 1, l - ll - 1, (int32_t)i);
            }
        }
    }
    if (!rc) rc = msa_tok_finish(t);
    if (rc) {
        msa_tokenizer_free(t);
        return msa_error_context(rc, "GGUF tokenizer");
    }
    *out = t;
    return MSA_OK;
}

int msa_tokenizer_from_gguf_file(const char *path, msa_tokenizer **out) {
    *out = NULL;
    msa_gguf *g;
    int rc = msa_gguf_open(path, &g);
    if (rc) return rc;
    rc = msa_tokenizer_from_gguf(g, out);
    msa_gguf_close(g);
    if (rc) return msa_error_context(rc, "%s", path);
    return MSA_OK;
}
