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

/* Digits one by one, as a first stage: Hugging Face's Digits pre-tokenizer
 * with individual_digits (StarCoder's and SmolLM's vocabularies). */
static const char RE_DIGIT[] = "\\p{N}";

static const char *const ST_GPT2[] = {RE_GPT2};
static const char *const ST_LLAMA3[] = {RE_LLAMA3};
static const char *const ST_QWEN2[] = {RE_QWEN2};
static const char *const ST_DIGITS_GPT2[] = {RE_DIGIT, RE_GPT2};

/* Names as llama.cpp writes them in tokenizer.ggml.pre. */
static const struct {
    const char *name;
    const char *const *stages;
    int n;
} pre_table[] = {
    {"gpt-2", ST_GPT2, 1},          {"default", ST_GPT2, 1},       {"gpt2", ST_GPT2, 1},
    {"llama-bpe", ST_LLAMA3, 1},    {"llama3", ST_LLAMA3, 1},      {"llama-v3", ST_LLAMA3, 1},
    {"dbrx", ST_LLAMA3, 1},         {"smaug-bpe", ST_LLAMA3, 1},   {"qwen2", ST_QWEN2, 1},
    {"smollm", ST_DIGITS_GPT2, 2},  {"starcoder", ST_DIGITS_GPT2, 2},
    {"refact", ST_DIGITS_GPT2, 2},  {"command-r", ST_DIGITS_GPT2, 2},
    {"codeshell", ST_DIGITS_GPT2, 2},
};

const char *const *msa_tok_pre_stages(const char *name, int *n) {
    for (size_t i = 0; i < sizeof pre_table / sizeof pre_table[0]; i++)
        if (!strcmp(name, pre_table[i].name)) {
            if (n) *n = pre_table[i].n;
            return pre_table[i].stages;
        }
    return NULL;
}

static const char KNOWN_PRE[] = "gpt-2, llama-bpe, qwen2, smollm, starcoder, refact, "
                                "command-r, codeshell";

int msa_tok_add_stage(msa_tokenizer *t, const char *pattern) {
    if (t->n_stages >= MSA_TOK_MAX_STAGES)
        return msa_error(MSA_EINVAL, "tokenizer: more than %d pre-tokenizer stages",
                         MSA_TOK_MAX_STAGES);
    if (!(t->regex[t->n_stages] = strdup(pattern)))
        return msa_error(MSA_ENOMEM, "tokenizer: out of memory");
    t->n_stages++;
    return MSA_OK;
}

static int compile_stage(const char *pattern, void **out) {
    int err;
    PCRE2_SIZE at;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err,
                                   &at, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(err, msg, sizeof msg);
        return msa_error(MSA_EFORMAT, "tokenizer: pre-tokenizer regex rejected at %zu: %s",
                         (size_t)at, (const char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional: the interpreter is the fallback */
    *out = re;
    return MSA_OK;
}

int msa_tok_bpe_compile(msa_tokenizer *t) {
    int rc;
    if (!t->n_stages) {
        int n;
        const char *const *st = msa_tok_pre_stages(t->pre, &n);
        if (!st)
            return msa_error(MSA_EUNSUPPORTED, "tokenizer: unknown pre-tokenizer '%s' (known: %s)",
                             t->pre, KNOWN_PRE);
        for (int i = 0; i < n; i++)
            if ((rc = msa_tok_add_stage(t, st[i]))) return rc;
    }
    for (int i = 0; i < t->n_stages; i++)
        if ((rc = compile_stage(t->regex[i], &t->re[i]))) return rc;
    return MSA_OK;
}

void msa_tok_bpe_release(msa_tokenizer *t) {
    for (int i = 0; i < MSA_TOK_MAX_STAGES; i++) {
        if (t->re[i]) pcre2_code_free((pcre2_code *)t->re[i]);
        t->re[i] = NULL;
        free(t->regex[i]);
        t->regex[i] = NULL;
    }
    t->n_stages = 0;
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

/* Splits text[0..len) with stage `st` of `re` (n stages) into matches and
 * the text between them, handing every piece to the next stage, and the
 * pieces of the last stage to word(). Each stage sees one piece of the
 * previous as its whole subject, so look-arounds stop at piece ends, as in
 * Hugging Face's sequence of pre-tokenizers. */
typedef int (*piece_fn)(void *ctx, const char *base, size_t start, size_t n);

static int split_stage(void *const *re, int st, int n, pcre2_match_data *md, const char *base,
                       size_t off, size_t len, piece_fn word, void *ctx) {
    if (st == n) return word(ctx, base, off, len);
    const char *text = base + off;
    size_t done = 0, at = 0; /* bytes already handed on; where to search next */
    int rc = MSA_OK;
    while (at < len && !rc) {
        int m = pcre2_match((const pcre2_code *)re[st], (PCRE2_SPTR)text, len, at, 0, md, NULL);
        if (m == PCRE2_ERROR_NOMATCH) break;
        if (m < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(m, msg, sizeof msg);
            return msa_error(MSA_EINVAL, "tokenizer: pre-tokenizer failed at byte %zu: %s",
                             off + at, (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t b = ov[0], e = ov[1];
        if (e == b) { /* an empty match: step over one character */
            if (b >= len) break; /* at the end (e.g. "$"): text[len] is not ours
                                    (fuzz-tokenizer-json: a heap overflow by 1) */
            at = b + (size_t)msa_utf8_len((uint8_t)text[b]);
            if (at > len) at = len;
            continue;
        }
        if (b > done) rc = split_stage(re, st + 1, n, md, base, off + done, b - done, word, ctx);
        if (!rc) rc = split_stage(re, st + 1, n, md, base, off + b, e - b, word, ctx);
        done = at = e;
    }
    if (!rc && done < len) rc = split_stage(re, st + 1, n, md, base, off + done, len - done, word, ctx);
    return rc;
}

typedef struct encode_ctx {
    const msa_tokenizer *t;
    msa_tok_work w;
    msa_tok_sink *sink;
} encode_ctx;

static int encode_piece(void *vp, const char *base, size_t start, size_t n) {
    encode_ctx *c = vp;
    return encode_word(c->t, &c->w, base + start, n, c->sink);
}

int msa_tok_encode_bpe(const msa_tokenizer *t, const char *text, size_t len,
                       msa_tok_sink *sink) {
    if (!len) return MSA_OK;
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) return msa_error(MSA_ENOMEM, "tokenizer: out of memory");
    encode_ctx c = {t, {0}, sink};
    int rc = split_stage(t->re, 0, t->n_stages, md, text, 0, len, encode_piece, &c);
    msa_tok_work_free(&c.w);
    pcre2_match_data_free(md);
    return rc;
}

typedef struct report_ctx {
    void (*piece)(void *ctx, size_t start, size_t n);
    void *ctx;
} report_ctx;

static int report_piece(void *vp, const char *base, size_t start, size_t n) {
    report_ctx *r = vp;
    r->piece(r->ctx, start, n);
    return MSA_OK;
}

int msa_tok_pre_split(const char *pre, const char *text, size_t len,
                      void (*piece)(void *ctx, size_t start, size_t n), void *ctx) {
    int n;
    const char *const *st = msa_tok_pre_stages(pre, &n);
    if (!st)
        return msa_error(MSA_EUNSUPPORTED, "tokenizer: unknown pre-tokenizer '%s' (known: %s)",
                         pre, KNOWN_PRE);
    void *re[MSA_TOK_MAX_STAGES] = {0};
    int rc = MSA_OK;
    for (int i = 0; i < n && !rc; i++) rc = compile_stage(st[i], &re[i]);
    pcre2_match_data *md = rc ? NULL : pcre2_match_data_create(1, NULL);
    if (!rc && !md) rc = msa_error(MSA_ENOMEM, "tokenizer: out of memory");
    report_ctx r = {piece, ctx};
    if (!rc && len) rc = split_stage(re, 0, n, md, text, 0, len, report_piece, &r);
    pcre2_match_data_free(md);
    for (int i = 0; i < n; i++)
        if (re[i]) pcre2_code_free((pcre2_code *)re[i]);
    return rc;
}
