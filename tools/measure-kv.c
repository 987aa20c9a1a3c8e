/*
 * measure-kv.c: how well the store compresses real KV. Fills a session of
 * the stories260K model (converted from the assets) with the assets' text
 * files, reports the stored against the raw bytes of its fp32 K/V and index
 * keys (as CPU sessions keep them), then copies every block into a bf16
 * session through the same codec and reports that ratio too.
 *
 *   tools/measure-kv ASSETS_DIR WORK_DIR      (docs/store.md quotes it)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/msa.h"
#include "base/base.h"

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len + 1);
    *n = buf ? fread(buf, 1, (size_t)len, f) : 0;
    fclose(f);
    return buf;
}

static int fail(const char *what) {
    fprintf(stderr, "measure-kv: %s: %s\n", what, msa_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: measure-kv ASSETS_DIR WORK_DIR\n");
        return 2;
    }
    char bin[4096], tok[4096], gguf[4096], store[4096];
    snprintf(bin, sizeof bin, "%s/stories260K/stories260K.bin", argv[1]);
    snprintf(tok, sizeof tok, "%s/stories260K/tok512.bin", argv[1]);
    snprintf(gguf, sizeof gguf, "%s/stories260K.gguf", argv[2]);
    snprintf(store, sizeof store, "%s/store", argv[2]);
    if (msa_convert_llama2c(bin, tok, gguf)) return fail("convert");

    msa_engine_params ep = msa_engine_default_params();
    ep.model_path = gguf;
    ep.store_dir = store;
    ep.durable = 0;
    msa_engine *e;
    msa_session *s;
    if (msa_engine_open(&ep, &e)) return fail("engine");
    if (msa_session_open(e, "real", MSA_SESSION_CREATE | MSA_SESSION_EXCLUSIVE, &s))
        return fail("session (use an empty WORK_DIR)");
    const char *files[] = {"expected.greedy200.txt", "expected.prompts64.txt",
                           "expected.greedy256.txt", "tok512.tests.inp"};
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < 4; i++) {
            char path[4200];
            size_t n;
            snprintf(path, sizeof path, "%s/stories260K/%s", argv[1], files[i]);
            char *text = slurp(path, &n);
            if (!text) continue;
            int rc = msa_session_append_text(s, text, n, files[i], NULL, NULL);
            free(text);
            if (rc) return fail("append");
        }
    msa_session_info si;
    if (msa_session_get_info(s, &si)) return fail("info");
    msa_session_close(s);
    printf("fp32 (as CPU sessions store it): %lld tokens, %d layers, raw %llu B, stored %llu B, "
           "ratio %.3fx\n", (long long)si.n_tokens, si.n_layers,
           (unsigned long long)si.bytes_raw, (unsigned long long)si.bytes_on_disk,
           (double)si.bytes_raw / (double)si.bytes_on_disk);

    /* the same blocks in bf16 */
    msa_store *st = msa_engine_store(e);
    msa_store_session *src, *dst;
    msa_store_session_info in;
    if (msa_store_session_open(st, "real", NULL, &src) || msa_store_session_stat(src, &in))
        return fail("store session");
    msa_store_shape sh = in.shape, sb = in.shape;
    sb.kv_dtype = sb.idx_dtype = MSA_DTYPE_BF16;
    if (msa_store_session_create(st, "real-bf16", msa_engine_fingerprint(e), &sb) ||
        msa_store_session_open(st, "real-bf16", NULL, &dst))
        return fail("bf16 session");
    size_t ke = (size_t)sh.n_kv_heads * sh.block_size * sh.head_dim;
    size_t ie = (size_t)sh.idx_key_heads * sh.block_size * sh.idx_dim;
    float *k = malloc(ke * 4), *v = malloc(ke * 4), *ix = malloc(ie * 4);
    uint16_t *k2 = malloc(ke * 2), *v2 = malloc(ke * 2), *i2 = malloc(ie * 2);
    int32_t *toks = malloc(in.n_tokens * sizeof *toks);
    msa_store_txn *t;
    if (!k || !v || !ix || !k2 || !v2 || !i2 || !toks) return fail("memory");
    if (msa_store_read_tokens(src, 0, in.n_tokens, toks) || msa_store_txn_begin(dst, &t) ||
        msa_store_txn_put_tokens(t, toks, in.n_tokens))
        return fail("tokens");
    for (int l = 0; l < sh.n_layers; l++)
        for (uint64_t b = 0; b < in.n_blocks; b++) {
            msa_store_block_info bi;
            if (msa_store_read_block(src, l, b, k, v, ix, &bi)) return fail("read block");
            for (size_t i = 0; i < ke; i++) {
                k2[i] = msa_f32_to_bf16(k[i]);
                v2[i] = msa_f32_to_bf16(v[i]);
            }
            for (size_t i = 0; i < ie; i++) i2[i] = msa_f32_to_bf16(ix[i]);
            if (msa_store_txn_put_block(t, l, b, bi.n_tokens, k2, v2, i2, bi.tag))
                return fail("put block");
        }
    if (msa_store_txn_commit(t)) return fail("commit");
    msa_store_session_info out;
    if (msa_store_session_stat(dst, &out)) return fail("stat");
    printf("bf16 (the same K/V and index keys): raw %llu B, stored %llu B, ratio %.3fx\n",
           (unsigned long long)out.raw_bytes, (unsigned long long)out.stored_bytes, out.ratio);
    msa_store_session_close(src);
    msa_store_session_close(dst);
    msa_engine_free(e);
    return 0;
}
