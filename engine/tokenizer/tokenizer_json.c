/*
 * tokenizer_json.c: a tokenizer from Hugging Face's tokenizer.json (read
 * with jansson), for byte-level BPE models (Llama-3, Qwen2, GPT-2 style).
 *
 * What is read:
 *   model.type "BPE", model.vocab {piece: id}, model.merges as "left right"
 *   strings or [left, right] pairs (rank = position; lines that start with
 *   '#' are real merges, never comments), model.ignore_merges;
 *   added_tokens [{id, content, special}]: special ones are control tokens
 *   (matched in text only with MSA_TOK_PARSE_SPECIAL), others user-defined;
 *   pre_tokenizer: its Split (Regex), Digits and ByteLevel (use_regex: GPT-2's
 *   regex) steps become the pre-tokenizer's stages, in order; any other step
 *   is refused rather than guessed.
 *   tokenizer_config.json beside the file, when present: bos_token,
 *   eos_token (strings or {content}), add_bos_token, add_eos_token.
 * Without add_bos_token, BOS is added when the post_processor's template
 * starts with it, or (no template) when BOS and EOS are distinct tokens:
 * Llama-3 yes, GPT-2 (whose BOS and EOS are both <|endoftext|>) no.
 *
 * Not supported (MSA_EUNSUPPORTED): tokenizer.json files that are not
 * byte-level (SentencePiece conversions with a Metaspace pre-tokenizer or
 * normalizer, WordPiece, Unigram). Normalizers are not applied.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer/tokenizer.h"
#include "base/base.h"

static int type_is(json_t *o, const char *type) {
    const char *s = json_string_value(json_object_get(o, "type"));
    return s && !strcmp(s, type);
}

/* The pre-tokenizer's stages, in order, and its ByteLevel step: a Split's
 * Regex is a stage as written, Digits is \p{N} (one by one) or \p{N}+, and a
 * ByteLevel with use_regex adds GPT-2's regex as a stage. Up to
 * MSA_TOK_MAX_STAGES; *unknown counts the steps that are none of these. */
typedef struct pre_scan {
    const char *stage[MSA_TOK_MAX_STAGES + 1];
    int n, unknown, byte_level, prefix_space;
} pre_scan;

static void add_stage(pre_scan *p, const char *re) {
    if (p->n <= MSA_TOK_MAX_STAGES) p->stage[p->n++] = re;
}

static void scan_pre(json_t *pre, pre_scan *p) {
    if (!json_is_object(pre)) return;
    if (type_is(pre, "Sequence")) {
        json_t *a = json_object_get(pre, "pretokenizers");
        size_t i;
        json_t *v;
        json_array_foreach(a, i, v) scan_pre(v, p);
    } else if (type_is(pre, "Split")) {
        /* only the kind every byte-level model uses: a Regex, matches and
         * the text between them both kept ("Isolated"), not inverted */
        const char *re = json_string_value(json_object_get(json_object_get(pre, "pattern"), "Regex"));
        const char *beh = json_string_value(json_object_get(pre, "behavior"));
        if (re && (!beh || !strcmp(beh, "Isolated")) && !json_is_true(json_object_get(pre, "invert")))
            add_stage(p, re);
        else
            p->unknown++;
    } else if (type_is(pre, "Digits")) {
        add_stage(p, json_is_true(json_object_get(pre, "individual_digits")) ? "\\p{N}" : "\\p{N}+");
    } else if (type_is(pre, "ByteLevel")) {
        p->byte_level = 1;
        json_t *u = json_object_get(pre, "use_regex");
        if (!u || json_is_true(u)) add_stage(p, msa_tok_pre_stages("gpt-2", NULL)[0]);
        p->prefix_space = json_is_true(json_object_get(pre, "add_prefix_space"));
    } else {
        p->unknown++;
    }
}

/* A token given as a string or as {"content": string}. */
static const char *token_text(json_t *v) {
    if (json_is_string(v)) return json_string_value(v);
    return json_string_value(json_object_get(v, "content"));
}

static json_t *load_config(const char *path) {
    const char *slash = strrchr(path, '/');
    size_t dir = slash ? (size_t)(slash - path + 1) : 0;
    char *p = malloc(dir + 32);
    if (!p) return NULL;
    memcpy(p, path, dir);
    strcpy(p + dir, "tokenizer_config.json");
    FILE *f;
    json_t *c = NULL;
    if (msa_file_fopen_read(p, &f) == MSA_OK) { /* absent, or a FIFO: no config */
        c = json_loadf(f, JSON_DECODE_INT_AS_REAL, NULL); /* model_max_length overflows int64 */
        fclose(f);
    }
    msa_error_clear();
    free(p);
    return c;
}

static int template_starts_with(json_t *post, const char *bos) {
    if (!bos || !json_is_object(post)) return -1;
    if (type_is(post, "Sequence")) {
        json_t *a = json_object_get(post, "processors");
        size_t i;
        json_t *v;
        json_array_foreach(a, i, v) {
            int r = template_starts_with(v, bos);
            if (r >= 0) return r;
        }
        return -1;
    }
    if (!type_is(post, "TemplateProcessing")) return -1;
    json_t *first = json_array_get(json_object_get(post, "single"), 0);
    json_t *sp = json_object_get(first, "SpecialToken");
    const char *id = json_string_value(json_object_get(sp, "id"));
    return id && !strcmp(id, bos);
}

static int build(json_t *root, json_t *cfg, msa_tokenizer **out) {
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model))
        return msa_error(MSA_EFORMAT, "no \"model\" object");
    json_t *mt = json_object_get(model, "type");
    if (mt && !type_is(model, "BPE"))
        return msa_error(MSA_EUNSUPPORTED, "model type '%s' is not supported (BPE is)",
                         json_string_value(mt) ? json_string_value(mt) : "?");
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(root, "added_tokens");
    if (!json_is_object(vocab)) return msa_error(MSA_EFORMAT, "model.vocab is not an object");

    pre_scan ps = {{0}, 0, 0, 0, 0};
    scan_pre(json_object_get(root, "pre_tokenizer"), &ps);
    int byte_level = ps.byte_level;
    if (!byte_level && type_is(json_object_get(root, "decoder"), "ByteLevel")) byte_level = 1;
    if (ps.n > MSA_TOK_MAX_STAGES)
        return msa_error(MSA_EUNSUPPORTED, "pre-tokenizer of more than %d splitting steps",
                         MSA_TOK_MAX_STAGES);
    if (ps.unknown)
        return msa_error(MSA_EUNSUPPORTED, "pre-tokenizer has %d step(s) that are not an "
                         "isolating regex Split, Digits or ByteLevel", ps.unknown);
    if (!byte_level)
        return msa_error(MSA_EUNSUPPORTED, "only byte-level BPE tokenizer.json files are "
                         "supported (no ByteLevel pre-tokenizer or decoder found)");

    int64_t max_id = -1;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return msa_error(MSA_EFORMAT, "vocab entry '%s' has no valid id", key);
        if (json_integer_value(v) > max_id) max_id = json_integer_value(v);
    }
    size_t i;
    json_array_foreach(added, i, v) {
        json_t *id = json_object_get(v, "id");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || !token_text(v))
            return msa_error(MSA_EFORMAT, "added_tokens[%zu] has no id or content", i);
        if (json_integer_value(id) > max_id) max_id = json_integer_value(id);
    }
    if (max_id < 0 || max_id >= INT32_MAX) return msa_error(MSA_EFORMAT, "empty vocabulary");
    /* Ids are (nearly) dense: the vocabulary is sized by the largest id, so
     * one huge id must not size it (fuzz-tokenizer-json: an id of 1.1e9 in
     * a 5-entry vocabulary asked for 40 GB). Holes are allowed, up to as
     * many ids again as there are entries, plus 1024. */
    size_t n_entries = json_object_size(vocab) + json_array_size(added);
    if ((uint64_t)max_id >= 2 * (uint64_t)n_entries + 1024)
        return msa_error(MSA_EFORMAT, "token id %lld in a vocabulary of %zu entries",
                         (long long)max_id, n_entries);

    msa_tokenizer *t;
    int rc = msa_tok_new(MSA_TOK_BPE, (int32_t)(max_id + 1), &t);
    if (rc) return rc;
    json_object_foreach(vocab, key, v) {
        rc = msa_tok_set_token(t, (int32_t)json_integer_value(v), key,
                               strlen(key), 0.0f,
                               MSA_TT_NORMAL);
        if (rc) goto fail;
    }
    json_array_foreach(added, i, v) {
        const char *s = token_text(v);
        int special = json_is_true(json_object_get(v, "special"));
        rc = msa_tok_set_token(t, (int32_t)json_integer_value(json_object_get(v, "id")), s,
                               strlen(s), 0.0f, special ? MSA_TT_CONTROL : MSA_TT_USER);
        if (rc) goto fail;
    }
    if ((rc = msa_tok_index(t))) goto fail;

    json_array_foreach(merges, i, v) {
        const char *l = NULL, *r = NULL;
        size_t ll = 0, rl = 0;
        if (json_is_string(v)) {
            const char *s = json_string_value(v);
            size_t n = json_string_length(v);
            const char *sp = n > 1 ? memchr(s + 1, ' ', n - 1) : NULL;
            if (!sp) continue;
            l = s;
            ll = (size_t)(sp - s);
            r = sp + 1;
            rl = n - ll - 1;
        } else if (json_is_array(v) && json_array_size(v) == 2) {
            json_t *a = json_array_get(v, 0), *b = json_array_get(v, 1);
            if (!json_is_string(a) || !json_is_string(b)) continue;
            l = json_string_value(a);
            ll = json_string_length(a);
            r = json_string_value(b);
            rl = json_string_length(b);
        } else {
            continue;
        }
        if ((rc = msa_tok_add_merge(t, l, ll, r, rl, (int32_t)i))) goto fail;
    }
    t->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    t->add_prefix_space = ps.prefix_space;
    if (ps.n) {
        snprintf(t->pre, sizeof t->pre, "json");
        for (int s = 0; s < ps.n && !rc; s++) rc = msa_tok_add_stage(t, ps.stage[s]);
        if (rc) goto fail;
    } else {
        snprintf(t->pre, sizeof t->pre, "gpt-2");
    }

    /* BOS / EOS */
    const char *bos = cfg ? token_text(json_object_get(cfg, "bos_token")) : NULL;
    const char *eos = cfg ? token_text(json_object_get(cfg, "eos_token")) : NULL;
    /* A BOS or EOS named but missing from the vocabulary is an error, not a
     * silent "no BOS" (generation would never stop at an EOS of -1). */
    if (bos && (t->bos = msa_token_lookup(t, bos, strlen(bos))) < 0) {
        rc = msa_error(MSA_EFORMAT, "tokenizer_config.json: bos_token '%.64s' is not in the "
                       "vocabulary", bos);
        goto fail;
    }
    if (eos && (t->eos = msa_token_lookup(t, eos, strlen(eos))) < 0) {
        rc = msa_error(MSA_EFORMAT, "tokenizer_config.json: eos_token '%.64s' is not in the "
                       "vocabulary", eos);
        goto fail;
    }
    json_t *ab = cfg ? json_object_get(cfg, "add_bos_token") : NULL;
    json_t *ae = cfg ? json_object_get(cfg, "add_eos_token") : NULL;
    if (json_is_boolean(ab)) {
        t->add_bos = json_is_true(ab);
    } else {
        int r = template_starts_with(json_object_get(root, "post_processor"), bos);
        t->add_bos = r >= 0 ? r : (t->bos >= 0 && t->bos != t->eos);
    }
    t->add_eos = json_is_true(ae);
    if ((rc = msa_tok_finish(t))) goto fail;
    *out = t;
    return MSA_OK;
fail:
    msa_tokenizer_free(t);
    return rc;
}

int msa_tokenizer_from_json(const char *path, msa_tokenizer **out) {
    *out = NULL;
    json_error_t err;
    FILE *f;
    int rc = msa_file_fopen_read(path, &f);
    if (rc) return msa_error_context(rc, "tokenizer");
    json_t *root = json_loadf(f, 0, &err);
    fclose(f);
    if (!root) return msa_error(MSA_EFORMAT, "tokenizer: %s:%d: %s", path, err.line, err.text);
    json_t *cfg = load_config(path);
    rc = build(root, cfg, out);
    json_decref(cfg);
    json_decref(root);
    if (rc) return msa_error_context(rc, "tokenizer %s", path);
    return MSA_OK;
}
