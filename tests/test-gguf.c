/*
 * test-gguf.c: the GGUF reader and writer.
 *
 *   - round trip: a file written with every scalar type, numeric and string
 *     arrays and F32/F16/BF16/Q8_0 tensors (random data) reads back equal;
 *     absent keys give MSA_ENOTFOUND without a message, wrong types
 *     MSA_EFORMAT; unsupported tensor types open but are refused by name;
 *   - hand-made malformed headers (bad magic, versions 1 and 4, big-endian,
 *     absurd counts, duplicate keys, misaligned or out-of-file tensors, 5
 *     dimensions, bad alignment) give the expected status;
 *   - corpus replay: the small valid file truncated at every length, and
 *     thousands of random byte flips, must give clean errors or a file
 *     whose every getter stays inside the buffer (ASan checks that when the
 *     build has MSA_SANITIZE; the fuzz target tests/fuzz-gguf.c goes further).
 *   - the real llama.cpp-written GGUFs in ../shared/assets open (when present).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/model/gguf.h"
#include "base/base.h"
#include "tests/testutil.h"

/* Reads a whole file into memory. */
static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(sz > 0 ? (size_t)sz : 1);
    if (p && fread(p, 1, (size_t)sz, f) != (size_t)sz) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *n = (size_t)sz;
    return p;
}

/* Touches everything a reader exposes, so that ASan sees any stray read. */
static unsigned exercise(const msa_gguf *g) {
    unsigned acc = 0;
    for (int64_t i = 0; i < msa_gguf_n_kv(g); i++) {
        msa_gguf_type t;
        const char *key = msa_gguf_kv_key(g, i, &t);
        const char *s;
        size_t n;
        int64_t v;
        double f;
        msa_gguf_type et;
        uint64_t cnt;
        const void *data;
        if (msa_gguf_get_str(g, key, &s, &n) == MSA_OK)
            for (size_t j = 0; j < n; j++) acc += (uint8_t)s[j];
        if (msa_gguf_get_int(g, key, &v) == MSA_OK) acc += (unsigned)v;
        if (msa_gguf_get_float(g, key, &f) == MSA_OK) acc += (unsigned)(f == f);
        if (msa_gguf_get_array(g, key, &et, &cnt, &data) == MSA_OK) {
            if (et == MSA_GGUF_STRING) {
                for (uint64_t j = 0; j < cnt; j++)
                    if (msa_gguf_get_str_item(g, key, j, &s, &n) == MSA_OK && n)
                        acc += (uint8_t)s[0] + (uint8_t)s[n - 1];
            } else if (data && cnt) {
                const uint8_t *b = data;
                acc += b[0];
            }
        }
    }
    for (int64_t i = 0; i < msa_gguf_n_tensors(g); i++) {
        const msa_gguf_tensor *t = msa_gguf_tensor_at(g, i);
        const msa_gguf_tensor *t2;
        msa_gguf_find_tensor(g, t->name, &t2);
        const uint8_t *b = t->data;
        for (size_t j = 0; b && j < t->size; j++) acc += b[j];
    }
    return acc;
}

/* The small valid file used by the round trip and the corpus replay. */
static float t_f32[4 * 3];
static uint16_t t_f16[32 * 2], t_bf16[8];
static uint8_t t_q8[34 * 2];
static int32_t arr_i32[7];

static int write_sample(const char *path) {
    msa_gguf_writer *w = NULL;
    int rc = msa_gguf_writer_init(&w);
    if (rc) return rc;
    for (int i = 0; i < 12; i++) t_f32[i] = t_randn();
    for (int i = 0; i < 64; i++) t_f16[i] = msa_f32_to_f16(t_randn());
    for (int i = 0; i < 8; i++) t_bf16[i] = msa_f32_to_bf16(t_randn());
    for (int b = 0; b < 2; b++) {
        uint16_t d = msa_f32_to_f16(t_randf(0.01f, 0.1f));
        memcpy(t_q8 + 34 * b, &d, 2);
        for (int j = 0; j < 32; j++) t_q8[34 * b + 2 + j] = (uint8_t)(t_randint(256));
    }
    for (int i = 0; i < 7; i++) arr_i32[i] = (int32_t)t_rand_u64();
    const char *strs[3] = {"alpha", "", "\xe2\x96\x81gamma"};
    int64_t ne1[2] = {4, 3}, ne2[2] = {32, 2}, ne3[1] = {8}, ne4[2] = {64, 1};
    if ((rc = msa_gguf_writer_set_str(w, "general.architecture", "test")) ||
        (rc = msa_gguf_writer_set_u32(w, "test.u32", 4000000000u)) ||
        (rc = msa_gguf_writer_set_i32(w, "test.i32", -7)) ||
        (rc = msa_gguf_writer_set_f32(w, "test.f32", 1.5f)) ||
        (rc = msa_gguf_writer_set_bool(w, "test.bool", 1)) ||
        (rc = msa_gguf_writer_set_i32(w, "test.replaced", 1)) ||
        (rc = msa_gguf_writer_set_i32(w, "test.replaced", 2)) ||
        (rc = msa_gguf_writer_set_array(w, "test.arr", MSA_GGUF_INT32, 7, arr_i32)) ||
        (rc = msa_gguf_writer_set_str_array(w, "test.strs", strs, NULL, 3)) ||
        (rc = msa_gguf_writer_add_tensor(w, "a.f32", MSA_GGML_F32, 2, ne1, t_f32)) ||
        (rc = msa_gguf_writer_add_tensor(w, "b.f16", MSA_GGML_F16, 2, ne2, t_f16)) ||
        (rc = msa_gguf_writer_add_tensor(w, "c.bf16", MSA_GGML_BF16, 1, ne3, t_bf16)) ||
        (rc = msa_gguf_writer_add_tensor(w, "d.q8", MSA_GGML_Q8_0, 2, ne4, t_q8)))
        goto out;
    /* Misuse. */
    CHECK(msa_gguf_writer_add_tensor(w, "a.f32", MSA_GGML_F32, 2, ne1, t_f32) == MSA_EEXIST);
    int64_t bad[1] = {33};
    CHECK(msa_gguf_writer_add_tensor(w, "e", MSA_GGML_Q8_0, 1, bad, t_q8) == MSA_EINVAL);
    rc = msa_gguf_writer_write(w, path);
out:
    msa_gguf_writer_free(w);
    return rc;
}

static void test_round_trip(const char *path) {
    msa_gguf *g = NULL;
    CHECK_OK(msa_gguf_open(path, &g));
    if (!g) return;
    CHECK(msa_gguf_version(g) == 3);
    int64_t v;
    double f;
    const char *s;
    size_t n;
    CHECK_OK(msa_gguf_get_int(g, "test.u32", &v));
    CHECK(v == 4000000000LL);
    CHECK_OK(msa_gguf_get_int(g, "test.i32", &v));
    CHECK(v == -7);
    CHECK_OK(msa_gguf_get_int(g, "test.bool", &v));
    CHECK(v == 1);
    CHECK_OK(msa_gguf_get_int(g, "test.replaced", &v));
    CHECK(v == 2);
    CHECK_OK(msa_gguf_get_float(g, "test.f32", &f));
    CHECK(f == 1.5);
    CHECK_OK(msa_gguf_get_str(g, "general.architecture", &s, &n));
    CHECK(n == 4 && memcmp(s, "test", 4) == 0);
    /* Absent: MSA_ENOTFOUND and no message. Wrong type: MSA_EFORMAT. */
    msa_error_clear();
    CHECK(msa_gguf_get_int(g, "no.such.key", &v) == MSA_ENOTFOUND);
    CHECK(msa_last_error()[0] == 0);
    CHECK(msa_gguf_get_float(g, "test.i32", &f) == MSA_EFORMAT);
    CHECK(msa_gguf_get_str(g, "test.u32", &s, &n) == MSA_EFORMAT);
    CHECK(msa_gguf_get_str_item(g, "test.arr", 0, &s, &n) == MSA_EFORMAT);
    msa_gguf_type et;
    uint64_t cnt;
    const void *data;
    CHECK_OK(msa_gguf_get_array(g, "test.arr", &et, &cnt, &data));
    CHECK(et == MSA_GGUF_INT32 && cnt == 7 && data && memcmp(data, arr_i32, sizeof arr_i32) == 0);
    CHECK_OK(msa_gguf_get_array(g, "test.strs", &et, &cnt, &data));
    CHECK(et == MSA_GGUF_STRING && cnt == 3 && data == NULL);
    CHECK_OK(msa_gguf_get_str_item(g, "test.strs", 2, &s, &n));
    CHECK(n == 8 && memcmp(s, "\xe2\x96\x81gamma", 8) == 0);
    CHECK_OK(msa_gguf_get_str_item(g, "test.strs", 1, &s, &n));
    CHECK(n == 0);
    CHECK(msa_gguf_get_str_item(g, "test.strs", 3, &s, &n) == MSA_ERANGE);

    CHECK(msa_gguf_n_tensors(g) == 4);
    const msa_gguf_tensor *t;
    CHECK_OK(msa_gguf_find_tensor(g, "a.f32", &t));
    CHECK(t->n_dims == 2 && t->ne[0] == 4 && t->ne[1] == 3 && t->size == 48 &&
          memcmp(t->data, t_f32, 48) == 0 && (uintptr_t)t->data % 32 == 0);
    CHECK_OK(msa_gguf_find_tensor(g, "b.f16", &t));
    float buf[64];
    msa_ggml_to_f32(t->type, t->data, buf, 64);
    int ok = 1;
    for (int i = 0; i < 64; i++) ok &= buf[i] == msa_f16_to_f32(t_f16[i]);
    CHECK(ok);
    CHECK_OK(msa_gguf_find_tensor(g, "c.bf16", &t));
    CHECK(t->n_dims == 1 && t->size == 16 && memcmp(t->data, t_bf16, 16) == 0);
    CHECK_OK(msa_gguf_find_tensor(g, "d.q8", &t));
    CHECK(t->size == 68 && t->type == MSA_GGML_Q8_0);
    msa_ggml_to_f32(t->type, t->data, buf, 64);
    uint16_t d16;
    memcpy(&d16, t_q8 + 34, 2);
    CHECK(buf[40] == msa_f16_to_f32(d16) * (float)(int8_t)t_q8[34 + 2 + 8]);
    CHECK(msa_gguf_find_tensor(g, "nope", &t) == MSA_ENOTFOUND);
    CHECK(msa_gguf_tensor_at(g, 4) == NULL && msa_gguf_tensor_at(g, -1) == NULL);
    msa_gguf_close(g);
}

/* Builds a minimal GGUF by hand: header + one kv + tensors. */
typedef struct hb {
    uint8_t p[512];
    size_t n;
} hb;
static void h32(hb *b, uint32_t v) { memcpy(b->p + b->n, &v, 4); b->n += 4; }
static void h64(hb *b, uint64_t v) { memcpy(b->p + b->n, &v, 8); b->n += 8; }
static void hstr(hb *b, const char *s) {
    h64(b, strlen(s));
    memcpy(b->p + b->n, s, strlen(s));
    b->n += strlen(s);
}

static int open_hb(hb *b) {
    msa_gguf *g = NULL;
    int rc = msa_gguf_open_memory(b->p, b->n, &g);
    if (!rc) exercise(g);
    msa_gguf_close(g);
    return rc;
}

/* One F32 tensor "t" of `ne0` floats at `off`, with `n_dims`, `type`. */
static void tensor_file(hb *b, uint32_t version, uint32_t n_dims, uint32_t type, uint64_t off,
                        uint64_t ne0, int dup_key) {
    memset(b, 0, sizeof *b);
    h32(b, 0x46554747u);
    h32(b, version);
    h64(b, 1);
    h64(b, dup_key ? 2 : 1);
    for (int i = 0; i < (dup_key ? 2 : 1); i++) {
        hstr(b, "k");
        h32(b, MSA_GGUF_UINT32);
        h32(b, 5);
    }
    hstr(b, "t");
    h32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) h64(b, d == 0 ? ne0 : 1);
    h32(b, type);
    h64(b, off);
    while (b->n % 32) b->p[b->n++] = 0;
    b->n += 64; /* data: 64 zero bytes */
}

static void test_malformed(void) {
    hb b;
    tensor_file(&b, 3, 1, MSA_GGML_F32, 0, 16, 0);
    CHECK_OK(open_hb(&b));
    tensor_file(&b, 2, 1, MSA_GGML_F32, 32, 8, 0);
    CHECK_OK(open_hb(&b));
    tensor_file(&b, 3, 1, MSA_GGML_F32, 0, 17, 0); /* 68 bytes > 64 */
    CHECK(open_hb(&b) == MSA_EFORMAT);
    tensor_file(&b, 3, 1, MSA_GGML_F32, 16, 4, 0); /* misaligned */
    CHECK(open_hb(&b) == MSA_EFORMAT);
    tensor_file(&b, 3, 1, MSA_GGML_F32, UINT64_MAX - 31, 4, 0);
    CHECK(open_hb(&b) == MSA_EFORMAT);
    tensor_file(&b, 3, 1, MSA_GGML_F32, 0, UINT64_MAX, 0);
    CHECK(open_hb(&b) == MSA_EFORMAT);
    tensor_file(&b, 3, 5, MSA_GGML_F32, 0, 4, 0);
    CHECK(open_hb(&b) == MSA_EFORMAT);
    tensor_file(&b, 3, 1, MSA_GGML_F32, 0, 4, 1); /* duplicate key */
    CHECK(open_hb(&b) == MSA_EFORMAT);
    tensor_file(&b, 1, 1, MSA_GGML_F32, 0, 4, 0);
    CHECK(open_hb(&b) == MSA_EVERSION);
    tensor_file(&b, 4, 1, MSA_GGML_F32, 0, 4, 0);
    CHECK(open_hb(&b) == MSA_EVERSION);
    tensor_file(&b, 0x03000000u, 1, MSA_GGML_F32, 0, 4, 0);
    CHECK(open_hb(&b) == MSA_EVERSION);
    tensor_file(&b, 3, 1, MSA_GGML_F32, 0, 4, 0);
    b.p[0] = 'X';
    CHECK(open_hb(&b) == MSA_EFORMAT);
    /* IQ2_XXS (16), a type not read: opens, but the tensor is refused by name. */
    tensor_file(&b, 3, 1, 16, 0, 256, 0);
    msa_gguf *g = NULL;
    CHECK_OK(msa_gguf_open_memory(b.p, b.n, &g));
    const msa_gguf_tensor *t = NULL;
    if (g) {
        CHECK(msa_gguf_find_tensor(g, "t", &t) == MSA_EUNSUPPORTED);
        CHECK(t && t->data == NULL && strstr(msa_last_error(), "IQ2_XXS"));
    }
    msa_gguf_close(g);
    /* Q4_K (12) is read: 256 elements need one 144-byte block, more than the file holds. */
    tensor_file(&b, 3, 1, MSA_GGML_Q4_K, 0, 256, 0);
    CHECK(open_hb(&b) == MSA_EFORMAT && strstr(msa_last_error(), "runs past the end"));
    /* ... and a row of 100 elements is not a whole number of its 256-element blocks. */
    tensor_file(&b, 3, 1, MSA_GGML_Q4_K, 0, 100, 0);
    CHECK(open_hb(&b) == MSA_EFORMAT && strstr(msa_last_error(), "blocks of 256"));
    /* Absurd counts. */
    memset(&b, 0, sizeof b);
    h32(&b, 0x46554747u);
    h32(&b, 3);
    h64(&b, UINT64_MAX);
    h64(&b, 0);
    CHECK(open_hb(&b) == MSA_EFORMAT);
    memset(&b, 0, sizeof b);
    h32(&b, 0x46554747u);
    h32(&b, 3);
    h64(&b, 0);
    h64(&b, 1);
    hstr(&b, "a");
    h32(&b, MSA_GGUF_ARRAY);
    h32(&b, MSA_GGUF_STRING);
    h64(&b, 1ull << 60);
    CHECK(open_hb(&b) == MSA_EFORMAT);
    /* Alignment not a power of two. */
    memset(&b, 0, sizeof b);
    h32(&b, 0x46554747u);
    h32(&b, 3);
    h64(&b, 0);
    h64(&b, 1);
    hstr(&b, "general.alignment");
    h32(&b, MSA_GGUF_UINT32);
    h32(&b, 24);
    CHECK(open_hb(&b) == MSA_EFORMAT);
    CHECK(msa_gguf_open("/nonexistent/x.gguf", &g) == MSA_ENOTFOUND && g == NULL);
}

static void test_corpus(const char *path) {
    size_t n;
    uint8_t *orig = slurp(path, &n);
    CHECK(orig != NULL);
    if (!orig) return;
    uint8_t *buf = malloc(n);
    int clean = 1, opened_short = 0;
    /* Every truncation must fail cleanly, except those that only cut the
     * padding after the last tensor (there is none: the writer ends there). */
    for (size_t len = 0; len < n; len++) {
        memcpy(buf, orig, len);
        msa_gguf *g = NULL;
        int rc = msa_gguf_open_memory(buf, len, &g);
        if (rc == MSA_OK) {
            opened_short++;
            exercise(g);
        } else if (rc != MSA_EFORMAT && rc != MSA_EVERSION) {
            clean = 0;
        }
        msa_gguf_close(g);
    }
    CHECKF(clean, "a truncation gave a status other than EFORMAT/EVERSION");
    CHECKF(opened_short == 0, "%d truncated files opened", opened_short);
    /* Random flips: 1-4 bytes per trial, sometimes set to extreme values. */
    int trials = 20000, opened = 0;
    for (int it = 0; it < trials; it++) {
        memcpy(buf, orig, n);
        int flips = 1 + t_randint(4);
        for (int f = 0; f < flips; f++) {
            size_t at = (size_t)t_randint((int)n);
            int kind = t_randint(4);
            buf[at] = kind == 0 ? 0xff : kind == 1 ? 0 : (uint8_t)t_rand_u64();
        }
        msa_gguf *g = NULL;
        int rc = msa_gguf_open_memory(buf, n, &g);
        if (rc == MSA_OK) {
            opened++;
            exercise(g);
        } else {
            CHECK(g == NULL && rc < 0);
        }
        msa_gguf_close(g);
    }
    printf("corpus: %zu truncations rejected; %d of %d mutants opened (and were read "
           "in full)\n", n, opened, trials);
    free(buf);
    free(orig);
}

static void test_assets(void) {
    const char *assets = t_assets();
    if (!assets) {
        printf("assets absent: real GGUF files not checked\n");
        return;
    }
    const char *files[] = {"gguf/llama-2-tiny-random.gguf", "vocab/ggml-vocab-llama-spm.gguf",
                           "vocab/ggml-vocab-gpt-2.gguf"};
    for (int i = 0; i < 3; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", assets, files[i]);
        if (access(path, R_OK) != 0) continue;
        msa_gguf *g = NULL;
        CHECK_OK(msa_gguf_open(path, &g));
        if (!g) continue;
        msa_gguf_type et;
        uint64_t cnt;
        CHECK_OK(msa_gguf_get_array(g, "tokenizer.ggml.tokens", &et, &cnt, NULL));
        CHECK(et == MSA_GGUF_STRING && cnt >= 32000);
        const char *s;
        size_t n;
        CHECK_OK(msa_gguf_get_str_item(g, "tokenizer.ggml.tokens", cnt - 1, &s, &n));
        exercise(g);
        msa_gguf_close(g);
    }
}

int main(void) {
    t_seed();
    char dir[] = "/tmp/msa-test-gguf-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char path[256];
    snprintf(path, sizeof path, "%s/sample.gguf", dir);
    CHECK_OK(write_sample(path));
    test_round_trip(path);
    test_malformed();
    test_corpus(path);
    test_assets();
    unlink(path);
    rmdir(dir);
    return t_done("test-gguf");
}
