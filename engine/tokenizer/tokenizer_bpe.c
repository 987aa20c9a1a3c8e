/*
 * tokenizer_bpe.c: byte-level BPE (GPT-2, Llama-3, Qwen2 and their kin).
 *
 * A text is first cut into words by the vocabulary's pre-tokenizer regex,
 * run by PCRE2 in UTF mode with Unicode properties (\p{L}, \p{N}, and \s as
 * Unicode white space), compiled once per tokenizer and JIT-compiled where
 * PCRE2 supports it. Text between matches, if any, is a word too (the
 * "Isolated" split of Hugging Face). Each byte of a word becomes one
 * character of GPT-2's printable alphabet (bytes that are printable Latin-1
 * stand for themselves, the others are moved to U+0100 and up, in byte
 * order), so a word always starts as one symbol per byte. Adjacent symbols
 * are then merged by rank, lowest first (leftmost on ties), through a heap
 * and a pair -> (rank, result) hash map. Vocabularies with ignore_merges
 * (Llama-3) take a word that is itself a token as that token directly.
 *
 * Invalid UTF-8 is allowed: PCRE2_MATCH_INVALID_UTF never matches it, so
 * such bytes become words of their own and are still encoded byte by byte.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer/tokenizer.h"
#include "base/base.h"

int msa_tok_pair_rank(const msa_tokenizer *t, int32_t a, int32_t b, int32_t *rank,
                      int32_t *result);

/* ---- GPT-2's byte alphabet -------------------------------------------------------- */

static int16_t byte_cp[256];   /* byte -> code point */
static int16_t cp_byte[512];   /* code point -> byte, -1 */
static pthread_once_t byte_map_once = PTHREAD_ONCE_INIT;

static void byte_map_init(void) {
    int next = 256;
    for (int i = 0; i < 512; i++) cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        byte_cp[b] = (int16_t)(printable ? b : next++);
        cp_byte[byte_cp[b]] = (int16_t)b;
    }
}

int msa_bpe_byte_utf8(uint8_t b, char out[2]) {
    pthread_once(&byte_map_once, byte_map_init);
    int cp = byte_cp[b];
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xc0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
}

int msa_bpe_cp_byte(uint32_t cp) {
    pthread_once(&byte_map_once, byte_map_init);
    return cp < 512 ? cp_byte[cp] : -1;
}

/* ---- pre-tokenizers ---------------------------------------------------------------- */

static const char RE_GPT2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char RE_LLAMA3[] =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_QWEN2[] =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
    "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static const struct {
    const char *name, *re;
} pre_table[] = {
    {"gpt-2", RE_GPT2},     {"default", RE_GPT2},    {"gpt2", RE_GPT2},
    {"llama-bpe", RE_LLAMA3}, {"llama3", RE_LLAMA3}, {"llama-v3", RE_LLAMA3},
    {"dbrx", RE_LLAMA3},    {"smaug-bpe", RE_LLAMA3}, {"qwen2", RE_QWEN2},
};

const char *msa_tok_pre_regex(const char *name) {
    for (size_t i = 0; i < sizeof pre_table / sizeof pre_table[0]; i++)
        if (!strcmp(name, pre_table[i].name)) return pre_table[i].re;
    return NULL;
}

int msa_tok_bpe_compile(msa_tokenizer *t) {
    if (!t->regex) {
        const char *re = msa_tok_pre_regex(t->pre);
        if (!re)
            return msa_error(MSA_EUNSUPPORTED, "tokenizer: unknown pre-tokenizer '%s' "
                             "(known: gpt-2, llama-bpe, qwen2)", t->pre);
        t->regex = strdup(re);
        if (!t->regex) return msa_error(MSA_ENOMEM, "tokenizer: out of memory");
    }
    int err;
    PCRE2_SIZE at;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)t->regex, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err,
                                   &at, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(err, msg, sizeof msg);
        return msa_error(MSA_EFORMAT, "tokenizer: pre-tokenizer regex rejected at %zu: %s",
                         (size_t)at, (const char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional: the interpreter is the fallback */
    t->re = re;
    return MSA_OK;
}

void msa_tok_bpe_release(msa_tokenizer *t) {
    if (t->re) pcre2_code_free((pcre2_code *)t->re);
    t->re = NULL;
}

/* ---- encoding ---------------------------------------------------------------------- */

static int bpe_pair(const msa_tokenizer *t, const char *buf, const msa_tok_sym *l,
                    const msa_tok_sym *r, double *prio, int32_t *id) {
    int32_t rank;
    if (l->id < 0 || r->id < 0 || !msa_tok_pair_rank(t, l->id, r->id, &rank, id)) return 0;
    *prio = -(double)rank;
    return 1;
}

static int encode_word(const msa_tokenizer *t, msa_tok_work *w, const char *word, size_t len,
                       msa_tok_sink *sink) {
    int rc = msa_tok_work_reserve(w, len, 2 * len);
    if (rc) return rc;
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        msa_tok_sym *s = &w->sym[i];
        uint8_t b = (uint8_t)word[i];
        s->start = (int32_t)k;
        s->len = msa_bpe_byte_utf8(b, w->buf + k);
        s->id = t->byte_char_tok[b];
        s->prev = (int32_t)i - 1;
        s->next = i + 1 < len ? (int32_t)i + 1 : -1;
        k += (size_t)s->len;
    }
    if (t->ignore_merges && len > 1) {
        int32_t id = msa_token_lookup(t, w->buf, k);
        if (id >= 0) {
            msa_tok_emit(sink, id);
            return MSA_OK;
        }
    }
    if ((rc = msa_tok_merge(t, w, w->buf, (int)len, bpe_pair))) return rc;
    for (int32_t i = 0; i >= 0; i = w->sym[i].next) {
        int32_t id = w->sym[i].id;
        if (id >= 0) msa_tok_emit(sink, id);
        else if (t->unk >= 0) msa_tok_emit(sink, t->unk);
    }
    return MSA_OK;
}

int msa_tok_encode_bpe(const msa_tokenizer *t, const char *text, size_t len,
                       msa_tok_sink *sink) {
    if (!len) return MSA_OK;
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) return msa_error(MSA_ENOMEM, "tokenizer: out of memory");
    msa_tok_work w = {0};
    int rc = MSA_OK;
    size_t done = 0, at = 0; /* bytes already encoded; where to search next */
    while (at < len && !rc) {
        int m = pcre2_match((const pcre2_code *)t->re, (PCRE2_SPTR)text, len, at, 0, md, NULL);
        if (m == PCRE2_ERROR_NOMATCH) break;
        if (m < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(m, msg, sizeof msg);
            rc = msa_error(MSA_EINVAL, "tokenizer: pre-tokenizer failed at byte %zu: %s", at,
                           (const char *)msg);
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t b = ov[0], e = ov[1];
        if (e == b) { /* an empty match: step over one character */
            at = b + (size_t)msa_utf8_len((uint8_t)text[b]);
            continue;
        }
        if (b > done) rc = encode_word(t, &w, text + done, b - done, sink);
        if (!rc) rc = encode_word(t, &w, text + b, e - b, sink);
        done = at = e;
    }
    if (!rc && done < len) rc = encode_word(t, &w, text + done, len - done, sink);
    msa_tok_work_free(&w);
    pcre2_match_data_free(md);
    return rc;
}
