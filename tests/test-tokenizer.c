/*
 * test-tokenizer.c: the tokenizers against test vectors made by others.
 *
 *   - llama.cpp's 46 tokenizer test strings with the ids its reference
 *     tokenizers give, for Llama-2 SentencePiece and GPT-2 (vocab-only GGUF
 *     files) and Llama-3 (tokenizer.json, ids from llama.cpp's Llama-3 vocab);
 *     every string must also decode back to itself.
 *   - the same strings through stories260K's 512-token vocabulary, with the
 *     ids of llama2.c's own encoder (tok512.bin, loaded directly).
 *   - streaming decode of text whose characters are split across tokens:
 *     every chunk is whole UTF-8 and the chunks add up to the text.
 *   - flags (BOS, special-token parsing), MSA_ERANGE, bad ids.
 * The assets come from ../shared/assets (or $MSA_ASSETS); without them the
 * program skips. It ends by timing Llama-3 encoding on a few MB of text.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/msa.h"
#include "base/base.h"
#include "tests/testutil.h"

#define SEP "\n__ggml_vocab_test__\n"

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *d = malloc((size_t)n + 1);
    if (d && fread(d, 1, (size_t)n, f) != (size_t)n) { free(d); d = NULL; }
    fclose(f);
    if (d) d[n] = 0;
    if (len) *len = (size_t)n;
    return d;
}

/* Whether s[0..n) is well-formed UTF-8 (RFC 3629). */
static int utf8_valid(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t l = c < 0x80 ? 1 : (c >= 0xc2 && c <= 0xdf) ? 2 : (c >= 0xe0 && c <= 0xef) ? 3
                 : (c >= 0xf0 && c <= 0xf4) ? 4 : 0;
        if (!l || i + l > n) return 0;
        for (size_t j = 1; j < l; j++)
            if ((s[i + j] & 0xc0) != 0x80) return 0;
        if (l >= 3) {
            unsigned d = s[i + 1];
            if ((c == 0xe0 && d < 0xa0) || (c == 0xed && d > 0x9f) || (c == 0xf0 && d < 0x90) ||
                (c == 0xf4 && d > 0x8f))
                return 0;
        }
        i += l;
    }
    return 1;
}

/* Runs the 46 vectors of `inp` / `out` through `tok`; returns passes. */
static int run_vectors(const char *name, msa_tokenizer *tok, const char *inp_path,
                       const char *out_path, int check_decode) {
    size_t ni, no;
    char *inp = slurp(inp_path, &ni), *out = slurp(out_path, &no);
    CHECKF(inp && out, "%s: cannot read %s / %s", name, inp_path, out_path);
    if (!inp || !out) { free(inp); free(out); return 0; }
    int n_tests = 0, pass = 0, dec_pass = 0;
    char *p = inp, *line = out;
    int32_t ids[4096], want[4096];
    static char buf[65536];
    while (*p || line < out + no) {
        char *sep = strstr(p, SEP);
        if (!sep) break;
        size_t len = (size_t)(sep - p);
        char *eol = strchr(line, '\n');
        if (!eol) eol = out + no;
        int nw = 0;
        for (char *q = line; q < eol;) {
            char *e;
            long v = strtol(q, &e, 10);
            if (e == q) break;
            want[nw++] = (int32_t)v;
            q = e;
        }
        size_t n = 0;
        int rc = msa_tokenize(tok, p, len, 0, ids, 4096, &n);
        int ok = rc == MSA_OK && n == (size_t)nw && !memcmp(ids, want, n * sizeof *ids);
        if (!ok) {
            fprintf(stderr, "%s: test %d \"%.*s\": got", name, n_tests, (int)len, p);
            for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
            fprintf(stderr, "\n%s:   want", name);
            for (int i = 0; i < nw && i < 40; i++) fprintf(stderr, " %d", want[i]);
            fprintf(stderr, "\n");
        }
        CHECK(ok);
        pass += ok;
        if (check_decode) {
            size_t dl = 0;
            rc = msa_detokenize(tok, want, (size_t)nw, 0, buf, sizeof buf, &dl);
            int dok = rc == MSA_OK && dl == len && !memcmp(buf, p, len);
            if (!dok)
                fprintf(stderr, "%s: test %d decodes to \"%.*s\", want \"%.*s\"\n", name,
                        n_tests, (int)dl, buf, (int)len, p);
            CHECK(dok);
            dec_pass += dok;
        }
        n_tests++;
        p = sep + strlen(SEP);
        line = eol + 1;
    }
    CHECKF(n_tests == 46, "%s: %d test strings, expected 46", name, n_tests);
    printf("%-28s encode %d/%d", name, pass, n_tests);
    if (check_decode) printf(", decode %d/%d", dec_pass, n_tests);
    printf("\n");
    free(inp);
    free(out);
    return pass;
}

/* Streams `text` through encode + streaming decode; every chunk must be
 * valid UTF-8 and the concatenation must be the text. */
static void check_stream(const char *name, msa_tokenizer *tok, const char *text) {
    int32_t ids[512];
    size_t n = 0, len = strlen(text);
    CHECK_OK(msa_tokenize(tok, text, len, 0, ids, 512, &n));
    msa_detok_stream st;
    msa_detok_stream_init(&st, tok, 0);
    char all[4096], chunk[MSA_DETOK_STREAM_MAX];
    size_t total = 0, cl;
    int split = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK_OK(msa_detok_stream_push(&st, ids[i], chunk, sizeof chunk, &cl));
        CHECKF(utf8_valid((unsigned char *)chunk, cl), "%s: chunk %zu is broken UTF-8", name, i);
        /* a token that ends inside a character must make the stream hold */
        size_t raw = 0;
        char rb[64];
        msa_detokenize(tok, &ids[i], 1, MSA_DETOK_KEEP_SPACE, rb, sizeof rb, &raw);
        if (!utf8_valid((unsigned char *)rb, raw)) split++;
        memcpy(all + total, chunk, cl);
        total += cl;
    }
    CHECK_OK(msa_detok_stream_flush(&st, chunk, sizeof chunk, &cl));
    CHECK(cl == 0);
    CHECKF(total == len && !memcmp(all, text, len), "%s: stream gave \"%.*s\"", name,
           (int)total, all);
    CHECKF(split > 0, "%s: no token split a character; the test proves nothing", name);
    printf("%-28s stream of %zu tokens, %d split characters: ok\n", name, n, split);
}

/* Random strings (broken UTF-8 included) must decode back to themselves,
 * and a count-only call (cap 0) must agree with the real one. */
static void check_random(const char *name, msa_tokenizer *tok) {
    static const char *alpha[] = {"a", "b", "Z", " ", "  ", "\n", "\t", "\xc3\xa9", "\xe2\x80",
                                  "\x99", "\xf0\x9f\xa6\x99", "1", "234", "'s", "'LL", "<s>",
                                  "\xff", ".", "!?", "\r\n", "\xe4\xbd\xa0"};
    int n_alpha = (int)(sizeof alpha / sizeof alpha[0]), ok = 0, runs = 300;
    char text[512], out[2048];
    int32_t ids[1024];
    for (int r = 0; r < runs; r++) {
        size_t len = 0;
        int parts = t_randint(40);
        for (int i = 0; i < parts; i++) {
            const char *a = alpha[t_randint(n_alpha)];
            memcpy(text + len, a, strlen(a));
            len += strlen(a);
        }
        size_t n = 0, n0 = 0, dl = 0;
        int rc = msa_tokenize(tok, text, len, 0, ids, 1024, &n);
        int rc0 = msa_tokenize(tok, text, len, 0, NULL, 0, &n0);
        int rc2 = msa_detokenize(tok, ids, n, 0, out, sizeof out, &dl);
        int good = rc == MSA_OK && n0 == n && (n ? rc0 == MSA_ERANGE : rc0 == MSA_OK) &&
                   rc2 == MSA_OK && dl == len && !memcmp(out, text, len);
        if (!good && ok == r)
            fprintf(stderr, "%s: random string %d \"%.*s\" fails to round-trip: "
                    "rc %d %d %d, n %zu %zu, \"%.*s\"\n", name, r, (int)len, text, rc, rc0,
                    rc2, n, n0, (int)dl, out);
        CHECK(good);
        ok += good;
    }
    printf("%-28s random round trips %d/%d\n", name, ok, runs);
}

static void check_llama3(msa_tokenizer *tok) {
    int32_t ids[64];
    size_t n;
    const char *s = "<|begin_of_text|>Hello";
    CHECK_OK(msa_tokenize(tok, s, strlen(s), MSA_TOK_PARSE_SPECIAL, ids, 64, &n));
    CHECK(n == 2 && ids[0] == 128000 && ids[1] == 9906); /* "Hello" */
    CHECK_OK(msa_tokenize(tok, s, strlen(s), 0, ids, 64, &n));
    CHECK(n > 2 && ids[0] != 128000);
    CHECK(msa_tokenizer_bos(tok) == 128000 && msa_tokenizer_eos(tok) == 128001);
    CHECK(msa_tokenizer_add_bos(tok) == 1);
    CHECK_OK(msa_tokenize(tok, "Hello", 5, MSA_TOK_ADD_BOS | MSA_TOK_ADD_EOS, ids, 64, &n));
    CHECK(n == 3 && ids[0] == 128000 && ids[1] == 9906 && ids[2] == 128001);
    /* too small: MSA_ERANGE with the count needed, prefix written */
    ids[1] = -7;
    CHECK(msa_tokenize(tok, "Hello world", 11, MSA_TOK_ADD_BOS, ids, 1, &n) == MSA_ERANGE);
    CHECK(n == 3 && ids[0] == 128000 && ids[1] == -7);
    char buf[64];
    size_t bl;
    int32_t bad = 1 << 30;
    CHECK(msa_detokenize(tok, &bad, 1, 0, buf, sizeof buf, &bl) == MSA_EINVAL);
    int32_t two[2] = {128000, 9906};
    CHECK_OK(msa_detokenize(tok, two, 2, 0, buf, sizeof buf, &bl));
    CHECK(bl == 5 && !memcmp(buf, "Hello", 5));
    CHECK_OK(msa_detokenize(tok, two, 2, MSA_DETOK_SPECIAL, buf, sizeof buf, &bl));
    CHECK(bl == 22 && !memcmp(buf, "<|begin_of_text|>Hello", 22));
    CHECK(msa_detokenize(tok, two, 2, MSA_DETOK_SPECIAL, buf, 4, &bl) == MSA_ERANGE && bl == 22);
    int32_t eot = msa_token_lookup(tok, "<|eot_id|>", 10);
    CHECK(eot == 128009 && msa_token_is_eog(tok, eot) && msa_token_is_eog(tok, 128001));
    CHECK(!msa_token_is_eog(tok, 9906));
    const char *pc;
    size_t pl;
    CHECK_OK(msa_token_piece(tok, 1917, &pc, &pl)); /* " world" */
    CHECK(pl == 7 && !memcmp(pc, "\xc4\xa0world", 7));
    /* invalid UTF-8 survives the round trip */
    const char bin[] = "a\xff\xfe b\xc3";
    CHECK_OK(msa_tokenize(tok, bin, 6, 0, ids, 64, &n));
    CHECK_OK(msa_detokenize(tok, ids, n, 0, buf, sizeof buf, &bl));
    CHECK(bl == 6 && !memcmp(buf, bin, 6));
}

static void check_spm(msa_tokenizer *tok) {
    int32_t ids[64];
    size_t n;
    CHECK(msa_tokenizer_bos(tok) == 1 && msa_tokenizer_eos(tok) == 2);
    CHECK(msa_tokenizer_add_bos(tok) == 1);
    CHECK_OK(msa_tokenize(tok, "Hello", 5, MSA_TOK_ADD_BOS, ids, 64, &n));
    CHECK(n == 2 && ids[0] == 1 && ids[1] == 15043); /* "\u2581Hello" */
    char buf[64];
    size_t bl;
    CHECK_OK(msa_detokenize(tok, ids, n, 0, buf, sizeof buf, &bl));
    CHECK(bl == 5 && !memcmp(buf, "Hello", 5));
    CHECK_OK(msa_detokenize(tok, ids, n, MSA_DETOK_KEEP_SPACE, buf, sizeof buf, &bl));
    CHECK(bl == 6 && !memcmp(buf, " Hello", 6));
    /* "<s>" is plain text unless special tokens are parsed */
    CHECK_OK(msa_tokenize(tok, "<s>", 3, MSA_TOK_PARSE_SPECIAL, ids, 64, &n));
    CHECK(n == 1 && ids[0] == 1);
    CHECK_OK(msa_tokenize(tok, "<s>", 3, 0, ids, 64, &n));
    CHECK(n > 1);
    /* a lone lead byte and a bad continuation come out as U+FFFD */
    int32_t b0 = msa_token_lookup(tok, "<0xF0>", 6), b1 = msa_token_lookup(tok, "<0x9F>", 6);
    int32_t a = msa_token_lookup(tok, "a", 1);
    CHECK(b0 >= 0 && b1 >= 0 && a >= 0);
    msa_detok_stream st;
    msa_detok_stream_init(&st, tok, MSA_DETOK_KEEP_SPACE);
    char out[64];
    size_t k = 0, cl;
    CHECK_OK(msa_detok_stream_push(&st, b0, out + k, sizeof out - k, &cl));
    CHECK(cl == 0);
    k += cl;
    CHECK_OK(msa_detok_stream_push(&st, b1, out + k, sizeof out - k, &cl));
    CHECK(cl == 0);
    k += cl;
    CHECK(msa_detok_stream_push(&st, a, out + k, 2, &cl) == MSA_ERANGE && cl == 4);
    CHECK_OK(msa_detok_stream_push(&st, a, out + k, sizeof out - k, &cl));
    k += cl;
    CHECK_OK(msa_detok_stream_push(&st, b0, out + k, sizeof out - k, &cl));
    k += cl;
    CHECK_OK(msa_detok_stream_flush(&st, out + k, sizeof out - k, &cl));
    k += cl;
    CHECK(k == 7 && !memcmp(out, "\xef\xbf\xbd" "a" "\xef\xbf\xbd", 7));
}

static void bench(msa_tokenizer *tok, const char *assets) {
    /* a few MB of prose and code: the repository's own text files */
    const char *src[] = {"../shared/DESIGN.md", "../shared/STYLE.md", "engine/tokenizer/tokenizer.c",
                         "engine/msa.h", "vocab/ggml-vocab-llama-bpe.gguf.inp",
                         "README.md"};
    char path[1024];
    size_t cap = 1 << 22, len = 0;
    char *text = malloc(cap);
    const char *root = getenv("MSA_SOURCE_DIR");
    for (int rep = 0; text && len < cap / 2 && rep < 1000; rep++) {
        size_t before = len;
        for (size_t i = 0; i < sizeof src / sizeof src[0]; i++) {
            if (i == 4 || i == 5) snprintf(path, sizeof path, "%s/%s", assets, src[i]);
            else snprintf(path, sizeof path, "%s/%s", root ? root : ".", src[i]);
            size_t n;
            char *d = slurp(path, &n);
            if (d && len + n < cap) { memcpy(text + len, d, n); len += n; }
            free(d);
        }
        if (len == before) break;
    }
    if (!text || len < 1000) { free(text); printf("bench: no text found, skipped\n"); return; }
    size_t idcap = len + 16, n = 0;
    int32_t *ids = malloc(idcap * sizeof *ids);
    double t0 = msa_now();
    CHECK_OK(msa_tokenize(tok, text, len, 0, ids, idcap, &n));
    double dt = msa_now() - t0;
    printf("llama3 encode: %.2f MB in %.3f s = %.1f MB/s, %zu tokens (%.2f bytes/token)\n",
           len / 1e6, dt, len / 1e6 / dt, n, (double)len / (double)n);
    free(ids);
    free(text);
}

int main(void) {
    const char *assets = t_assets();
    t_seed();
    if (!assets) T_SKIP("../shared/assets not found (set MSA_ASSETS)");
    char a[512], b[1024], c[1024];
    msa_tokenizer *tok;

    /* Llama-2 SentencePiece, from GGUF */
    snprintf(a, sizeof a, "%s/vocab/ggml-vocab-llama-spm.gguf", assets);
    int rc = msa_tokenizer_open(a, &tok);
    CHECK_OK(rc);
    if (!rc) {
        CHECK(!strcmp(msa_tokenizer_kind(tok), "spm") && msa_tokenizer_n_vocab(tok) == 32000);
        snprintf(b, sizeof b, "%s.inp", a);
        snprintf(c, sizeof c, "%s.out", a);
        run_vectors("llama-spm (gguf)", tok, b, c, 1);
        check_random("llama-spm (gguf)", tok);
        check_spm(tok);
        check_stream("llama-spm (gguf)", tok,
                     "Llamas \xf0\x9f\xa6\x99 and \xe1\x80\xa1\xe1\x80\x9b "
                     "\xe7\x8c\xab\xf0\x9f\x98\x81 caf\xc3\xa9");
        msa_tokenizer_free(tok);
    }

    /* GPT-2, from GGUF */
    snprintf(a, sizeof a, "%s/vocab/ggml-vocab-gpt-2.gguf", assets);
    rc = msa_tokenizer_open(a, &tok);
    CHECK_OK(rc);
    if (!rc) {
        CHECK(!strcmp(msa_tokenizer_kind(tok), "bpe:gpt-2") && msa_tokenizer_n_vocab(tok) == 50257);
        snprintf(b, sizeof b, "%s.inp", a);
        snprintf(c, sizeof c, "%s.out", a);
        run_vectors("gpt-2 (gguf)", tok, b, c, 1);
        check_random("gpt-2 (gguf)", tok);
        check_stream("gpt-2 (gguf)", tok, "\xf0\x9f\x9a\x80 rocket \xe7\x81\xab\xe7\xae\xad "
                     "\xce\xb1\xce\xb2\xce\xb3");
        msa_tokenizer_free(tok);
    }

    /* Llama-3, from tokenizer.json (by directory) */
    snprintf(a, sizeof a, "%s/vocab/llama3", assets);
    double t0 = msa_now();
    rc = msa_tokenizer_open(a, &tok);
    CHECK_OK(rc);
    if (!rc) {
        printf("llama3 tokenizer.json loaded in %.2f s\n", msa_now() - t0);
        CHECK(msa_tokenizer_n_vocab(tok) == 128256);
        snprintf(b, sizeof b, "%s/vocab/ggml-vocab-llama-bpe.gguf.inp", assets);
        snprintf(c, sizeof c, "%s/vocab/ggml-vocab-llama-bpe.gguf.out", assets);
        run_vectors("llama-3 (tokenizer.json)", tok, b, c, 1);
        check_random("llama-3 (tokenizer.json)", tok);
        check_llama3(tok);
        check_stream("llama-3 (tokenizer.json)", tok,
                     "\xf0\x9f\xa6\x99\xf0\x9f\xa6\x99 \xe1\x80\xa1\xe1\x80\x9b\xe1\x80\x9b "
                     "\xe2\x80\x8a\xf0\x9f\x98\x81 \xe0\xb8\x81\xe0\xb8\xb2\xe0\xb8\xa3");
        bench(tok, assets);
        msa_tokenizer_free(tok);
    }

    /* stories260K: llama2.c's tokenizer .bin and its own encoder's ids */
    snprintf(a, sizeof a, "%s/stories260K/tok512.bin", assets);
    rc = msa_tokenizer_open(a, &tok);
    CHECK_OK(rc);
    if (!rc) {
        CHECK(msa_tokenizer_n_vocab(tok) == 512 && msa_tokenizer_bos(tok) == 1);
        snprintf(b, sizeof b, "%s/stories260K/tok512.tests.inp", assets);
        snprintf(c, sizeof c, "%s/stories260K/tok512.tests.runc.out", assets);
        run_vectors("stories260K (tok512.bin)", tok, b, c, 1);
        check_random("stories260K (tok512.bin)", tok);
        msa_tokenizer_free(tok);
    }

    /* stories260K again, through the GGUF that msa_convert_llama2c() writes
     * (pieces with U+2581 there, plain spaces in the .bin) */
    char dir[] = "/tmp/msa-test-tok-XXXXXX";
    if (mkdtemp(dir)) {
        char model[512], gguf[600];
        snprintf(model, sizeof model, "%s/stories260K/stories260K.bin", assets);
        snprintf(gguf, sizeof gguf, "%s/stories260K.gguf", dir);
        snprintf(a, sizeof a, "%s/stories260K/tok512.bin", assets);
        CHECK_OK(rc = msa_convert_llama2c(model, a, gguf));
        if (!rc && !(rc = msa_tokenizer_open(gguf, &tok))) {
            CHECK(msa_tokenizer_n_vocab(tok) == 512 && !strcmp(msa_tokenizer_kind(tok), "spm"));
            snprintf(b, sizeof b, "%s/stories260K/tok512.tests.inp", assets);
            snprintf(c, sizeof c, "%s/stories260K/tok512.tests.runc.out", assets);
            run_vectors("stories260K (gguf)", tok, b, c, 1);
            check_stream("stories260K (gguf)", tok, "Lily saw a \xf0\x9f\x90\xb6 dog.");
            msa_tokenizer_free(tok);
        }
        CHECK_OK(rc);
        unlink(gguf);
        rmdir(dir);
    }

    /* errors */
    CHECK(msa_tokenizer_open("/nonexistent/tokenizer.json", &tok) == MSA_ENOTFOUND && !tok);
    snprintf(a, sizeof a, "%s/vocab", assets);
    CHECK(msa_tokenizer_open(a, &tok) == MSA_ENOTFOUND && !tok);
    return t_done("test-tokenizer");
}
