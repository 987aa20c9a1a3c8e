/*
 * test-model-cuda.c: the forward pass on the GPU (engine/forward/forward_cuda.cu)
 * against the CPU forward pass (engine/forward/forward.c), logits position by
 * position.
 *
 *   1. stories260K (the real model, converted to a temporary GGUF; head dim
 *      8, so the generic CUDA attention runs): one prefill chunk and then
 *      token-by-token decode (CUDA graphs) along the reference greedy path,
 *      at Bk 128 / k 16 (every block fits: MSA is dense here) and at
 *      Bk 16 / k 4 (selection active).
 *   2. Random models of head dim 64 built in memory (weights rounded to
 *      bf16 so that both sides use the same numbers), training-free and
 *      trained index, through the fast CUDA attention core: dense and MSA,
 *      and the fast path against the generic kernels.
 *
 * The GPU keeps weights and activations in bf16, so the checks are cosine
 * similarity per position and argmax agreement, not bitwise. Where selection
 * is active a near tie between two blocks can be broken differently by the
 * two sides, so those checks are looser and print what they saw.
 * Exits 77 without a CUDA build or a GPU.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/model.h"
#include "base/base.h"
#include "tests/testutil.h"
#ifdef MSA_HAVE_CUDA
#include "engine/forward/model_cuda.h"
#endif

#ifndef MSA_HAVE_CUDA
int main(void) { T_SKIP("built without CUDA"); }
#else

typedef struct stats {
    double min_cos, mean_cos;
    int n, argmax_same, cos_ok; /* positions, equal argmax, cosine > 0.999 */
} stats;

static int argmax_of(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static stats compare(const float *a, const float *b, int T, int V) {
    stats s = {2.0, 0.0, T, 0, 0};
    for (int t = 0; t < T; t++) {
        const float *x = a + (size_t)t * V, *y = b + (size_t)t * V;
        double xy = 0, xx = 0, yy = 0;
        int bad = 0;
        for (int j = 0; j < V; j++) {
            if (!isfinite(y[j])) bad = 1;
            xy += (double)x[j] * y[j];
            xx += (double)x[j] * x[j];
            yy += (double)y[j] * y[j];
        }
        double c = bad ? -1.0 : xy / (sqrt(xx * yy) + 1e-30);
        if (c < s.min_cos) s.min_cos = c;
        s.mean_cos += c / T;
        s.cos_ok += c > 0.999;
        s.argmax_same += argmax_of(x, V) == argmax_of(y, V);
    }
    return s;
}

static void print_stats(const char *what, stats s) {
    printf("  %-44s cos min %.6f mean %.6f, cos>0.999 %d/%d, argmax same %d/%d\n", what,
           s.min_cos, s.mean_cos, s.cos_ok, s.n, s.argmax_same, s.n);
}

/* CPU logits for every position of tokens[0..T). */
static int cpu_logits(msa_model *m, const int32_t *tok, int T, int Bk, int k, int dense,
                      float *out) {
    msa_kvcache_params p = msa_kvcache_params_for(m, Bk);
    msa_kvmem *mem;
    int rc = msa_kvcache_init(&p, &mem);
    if (rc) return rc;
    msa_forward_opts o = msa_forward_default_opts();
    o.block_size = Bk;
    o.top_k = k;
    o.dense = dense;
    o.all_logits = 1;
    rc = msa_model_forward(m, mem, tok, T, 0, &o, out);
    msa_kvcache_free(mem);
    return rc;
}

/* GPU logits: a prefill chunk of P tokens, then one token at a time. */
static int gpu_logits(msa_cuda_model *cm, const int32_t *tok, int T, int P, int Bk, int k,
                      int dense, float *out, int *argmax_mismatch) {
    const int V = msa_cuda_model_info(cm)->vocab_size;
    msa_cuda_kv *kv;
    int rc = msa_cuda_kv_init(cm, Bk, T, &kv);
    if (rc) return rc;
    msa_forward_opts o = msa_forward_default_opts();
    o.block_size = Bk;
    o.top_k = k;
    o.dense = dense;
    o.all_logits = 1;
    int32_t *am = malloc((size_t)T * sizeof *am);
    if (!am) rc = MSA_ENOMEM;
    if (!rc) rc = msa_cuda_model_forward(cm, kv, tok, P, 0, &o, out, am);
    o.all_logits = 0;
    for (int t = P; t < T && !rc; t++)
        rc = msa_cuda_model_forward(cm, kv, tok + t, 1, t, &o, out + (size_t)t * V, am + t);
    if (!rc) {
        *argmax_mismatch = 0;
        for (int t = 0; t < T; t++)
            *argmax_mismatch += am[t] != argmax_of(out + (size_t)t * V, V);
    }
    free(am);
    msa_cuda_kv_free(kv);
    return rc;
}

/* ---- 1. stories260K --------------------------------------------------------------- */

static int read_ids(const char *assets, int32_t *ids, int cap) {
    char path[512];
    snprintf(path, sizeof path, "%s/stories260K/expected.greedy256.ids.txt", assets);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    static char line[16384];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "input_ids:", 10) == 0) {
            char *p = line + 10, *e;
            for (long v; n < cap && (v = strtol(p, &e, 10), e != p); p = e) ids[n++] = (int32_t)v;
        }
    fclose(f);
    return n;
}

static void test_stories(const char *assets) {
    char bin[512], tok[512], gguf[256];
    snprintf(bin, sizeof bin, "%s/stories260K/stories260K.bin", assets);
    snprintf(tok, sizeof tok, "%s/stories260K/tok512.bin", assets);
    if (access(bin, R_OK) || access(tok, R_OK)) {
        printf("stories260K: assets absent, skipped\n");
        return;
    }
    snprintf(gguf, sizeof gguf, "/tmp/msa-test-model-cuda-%d.gguf", (int)getpid());
    CHECK_OK(msa_convert_llama2c(bin, tok, gguf));
    msa_model_params mp = msa_model_default_params();
    mp.no_fingerprint_cache = 1;
    msa_model *m = NULL;
    CHECK_OK(msa_model_open(gguf, &mp, &m));
    remove(gguf);
    if (!m) return;
    int32_t ids[512];
    const int T = read_ids(assets, ids, 512);
    CHECK(T >= 200);
    const int V = m->info.vocab_size;
    msa_cuda_model *cm = NULL;
    CHECK_OK(msa_cuda_model_upload(m, 0, &cm));
    float *lc = malloc((size_t)T * V * 4), *lg = malloc((size_t)T * V * 4);
    CHECK(lc && lg);
    printf("stories260K (d %d, %d tokens: prefill 100, then decode):\n", m->info.head_dim, T);
    const struct { int Bk, k, dense; const char *name; } cfgs[] = {
        {128, 16, 0, "Bk 128 k 16 (MSA = dense here)"},
        {128, 16, 1, "Bk 128 dense"},
        {16, 4, 0, "Bk 16 k 4 (selection active)"},
    };
    for (int c = 0; cm && lc && lg && T >= 200 && c < 3; c++) {
        int mism = -1;
        CHECK_OK(cpu_logits(m, ids, T, cfgs[c].Bk, cfgs[c].k, cfgs[c].dense, lc));
        CHECK_OK(gpu_logits(cm, ids, T, 100, cfgs[c].Bk, cfgs[c].k, cfgs[c].dense, lg, &mism));
        stats s = compare(lc, lg, T, V);
        print_stats(cfgs[c].name, s);
        CHECKF(mism == 0, "%d device argmax values differ from the logits' argmax", mism);
        if (c < 2) {
            CHECKF(s.cos_ok == T, "%d of %d positions with cosine <= 0.999", T - s.cos_ok, T);
            CHECKF(s.argmax_same >= T * 90 / 100, "argmax agrees at %d of %d", s.argmax_same, T);
        } else {
            /* a near tie between blocks may be broken differently */
            CHECKF(s.cos_ok >= T * 75 / 100 && s.mean_cos > 0.99, "cosine: %d of %d, mean %f",
                   s.cos_ok, T, s.mean_cos);
            CHECKF(s.argmax_same >= T * 80 / 100, "argmax agrees at %d of %d", s.argmax_same, T);
        }
    }
    free(lc);
    free(lg);
    msa_cuda_model_free(cm);
    msa_model_free(m);
}

/* ---- 2. random models of head dim 64 ----------------------------------------------- */

static float bf16_round(float x) { return msa_bf16_to_f32(msa_f32_to_bf16(x)); }

static int rand_tensor(msa_model *m, size_t n, float scale, float offset, const float **out) {
    float *p;
    int rc = msa_model_alloc(m, n, &p);
    if (rc) return rc;
    for (size_t i = 0; i < n; i++) p[i] = bf16_round(offset + scale * t_randn());
    *out = p;
    return MSA_OK;
}

static msa_model *random_model(int trained) {
    msa_model *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    msa_model_info *I = &m->info;
    snprintf(I->arch, sizeof I->arch, "llama");
    I->n_layers = 2;
    I->dim = 256;
    I->n_heads = 8;
    I->n_kv_heads = 2;
    I->head_dim = 64;
    I->ff_dim = 512;
    I->vocab_size = 300;
    I->context_length = 4096;
    I->rope_theta = 10000.0f;
    I->idx_dim = trained ? 64 : 0;
    m->rms_eps = 1e-5f;
    const size_t D = I->dim, qd = 512, kvd = 128, F = I->ff_dim, V = I->vocab_size, di = 64;
    m->layers = calloc((size_t)I->n_layers, sizeof *m->layers);
    int rc = m->layers ? MSA_OK : MSA_ENOMEM;
    const float sD = 1.0f / sqrtf((float)D);
    if (!rc) rc = rand_tensor(m, V * D, 1.0f, 0.0f, &m->tok_embd);
    if (!rc) rc = rand_tensor(m, D, 0.1f, 1.0f, &m->output_norm);
    if (!rc) rc = rand_tensor(m, V * D, sD, 0.0f, &m->output);
    for (int l = 0; l < I->n_layers && !rc; l++) {
        msa_model_layer *L = &m->layers[l];
        if (!rc) rc = rand_tensor(m, D, 0.1f, 1.0f, &L->attn_norm);
        if (!rc) rc = rand_tensor(m, qd * D, sD * 2, 0.0f, &L->wq);
        if (!rc) rc = rand_tensor(m, kvd * D, sD * 2, 0.0f, &L->wk);
        if (!rc) rc = rand_tensor(m, kvd * D, sD, 0.0f, &L->wv);
        if (!rc) rc = rand_tensor(m, D * qd, 1.0f / sqrtf((float)qd), 0.0f, &L->wo);
        if (!rc) rc = rand_tensor(m, D, 0.1f, 1.0f, &L->ffn_norm);
        if (!rc) rc = rand_tensor(m, F * D, sD, 0.0f, &L->w1);
        if (!rc) rc = rand_tensor(m, D * F, 1.0f / sqrtf((float)F), 0.0f, &L->w2);
        if (!rc) rc = rand_tensor(m, F * D, sD, 0.0f, &L->w3);
        if (trained) {
            if (!rc) rc = rand_tensor(m, 2 * di * D, sD * 2, 0.0f, &L->idx_q);
            if (!rc) rc = rand_tensor(m, di * D, sD * 2, 0.0f, &L->idx_k);
            if (!rc) rc = rand_tensor(m, di, 0.1f, 0.0f, &L->idx_q_norm);
            if (!rc) rc = rand_tensor(m, di, 0.1f, 0.0f, &L->idx_k_norm);
        }
    }
    if (!rc) rc = msa_model_validate(m);
    if (rc) {
        fprintf(stderr, "random model: %s\n", msa_last_error());
        msa_model_free(m);
        return NULL;
    }
    return m;
}

static void test_random(int trained) {
    msa_model *m = random_model(trained);
    CHECK(m != NULL);
    if (!m) return;
    CHECK(m->info.has_trained_index == trained);
    const int T = 320, V = m->info.vocab_size, Bk = 16, k = 4;
    int32_t tok[320];
    for (int i = 0; i < T; i++) tok[i] = t_randint(V);
    msa_cuda_model *cm = NULL;
    CHECK_OK(msa_cuda_model_upload(m, 0, &cm));
    float *lc = malloc((size_t)T * V * 4), *lg = malloc((size_t)T * V * 4),
          *lgen = malloc((size_t)T * V * 4);
    if (!cm || !lc || !lg || !lgen) goto out;
    printf("random model, d 64, %s index, %d tokens, Bk %d k %d:\n",
           trained ? "trained" : "training-free", T, Bk, k);
    int mism;
    /* dense: no selection, so the two sides must agree closely */
    CHECK_OK(cpu_logits(m, tok, T, Bk, k, 1, lc));
    CHECK_OK(gpu_logits(cm, tok, T, 200, Bk, k, 1, lg, &mism));
    stats s = compare(lc, lg, T, V);
    print_stats("dense, fast kernels vs CPU", s);
    CHECKF(s.cos_ok == T, "%d positions with cosine <= 0.999 (min %f)", T - s.cos_ok, s.min_cos);
    CHECKF(s.argmax_same >= T * 90 / 100, "argmax agrees at %d of %d", s.argmax_same, T);
    CHECK(mism == 0);
    /* MSA */
    CHECK_OK(cpu_logits(m, tok, T, Bk, k, 0, lc));
    CHECK_OK(gpu_logits(cm, tok, T, 200, Bk, k, 0, lg, &mism));
    s = compare(lc, lg, T, V);
    print_stats("MSA, fast kernels vs CPU", s);
    /* Random data max-pooled over a block gives block scores that sit close
     * together, and the bf16 rounding of an earlier layer moves them enough
     * to swap a few selections in later layers: a sanity check only. The
     * strict checks are dense (above), eager vs graph and GEMV vs cuBLAS
     * (below), and stories260K with selection active. */
    CHECKF(s.cos_ok >= T * 60 / 100 && s.mean_cos > 0.98, "cosine: %d of %d, mean %f",
           s.cos_ok, T, s.mean_cos);
    CHECKF(s.argmax_same >= T * 80 / 100, "argmax agrees at %d of %d", s.argmax_same, T);
    CHECK(mism == 0);
    /* the generic kernels against the fast ones (both bf16) */
    msa_cuda_model_set_options(cm, 1, 1);
    CHECK_OK(gpu_logits(cm, tok, T, 200, Bk, k, 0, lgen, &mism));
    msa_cuda_model_set_options(cm, 1, 0);
    s = compare(lg, lgen, T, V);
    print_stats("MSA, generic vs fast kernels", s);
    /* the fast kernel rounds probabilities to bf16 before P.V, the generic
     * one does not: layer-1 selections can swap as above */
    CHECKF(s.cos_ok >= T * 80 / 100 && s.mean_cos > 0.99, "cosine > 0.999 at %d of %d, mean %f",
           s.cos_ok, T, s.mean_cos);
    CHECKF(s.argmax_same >= T * 90 / 100, "argmax agrees at %d of %d", s.argmax_same, T);
    /* graphs off gives the same as graphs on (same kernels, same order) */
    msa_cuda_model_set_options(cm, 0, 0);
    CHECK_OK(gpu_logits(cm, tok, T, 200, Bk, k, 0, lgen, &mism));
    msa_cuda_model_set_options(cm, 1, 0);
    s = compare(lg, lgen, T, V);
    print_stats("MSA, eager vs graph", s);
    CHECKF(s.min_cos > 0.99999, "eager and graph differ: min cosine %f", s.min_cos);
    /* single-token steps through the fused GEMV instead of rmsnorm + cuBLAS */
    msa_cuda_model_set_options(cm, 3, 0);
    CHECK_OK(gpu_logits(cm, tok, T, 200, Bk, k, 0, lgen, &mism));
    msa_cuda_model_set_options(cm, 1, 0);
    s = compare(lg, lgen, T, V);
    print_stats("MSA, fused GEMV vs cuBLAS decode", s);
    CHECKF(s.cos_ok >= T * 95 / 100, "cosine > 0.999 at %d of %d", s.cos_ok, T);
    /* errors */
    msa_cuda_kv *kv = NULL;
    CHECK_OK(msa_cuda_kv_init(cm, Bk, 64, &kv));
    if (kv) {
        msa_forward_opts o = msa_forward_default_opts();
        o.block_size = Bk;
        int bad = V;
        CHECK(msa_cuda_model_forward(cm, kv, &bad, 1, 0, &o, NULL, NULL) == MSA_EINVAL);
        CHECK(msa_cuda_model_forward(cm, kv, tok, 1, 5, &o, NULL, NULL) == MSA_EINVAL);
        CHECK(msa_cuda_model_forward(cm, kv, tok, 65, 0, &o, NULL, NULL) == MSA_ERANGE);
        o.block_size = 32;
        CHECK(msa_cuda_model_forward(cm, kv, tok, 1, 0, &o, NULL, NULL) == MSA_EINVAL);
        CHECK(msa_cuda_kv_length(kv) == 0);
        msa_cuda_kv_free(kv);
    }
out:
    free(lc);
    free(lg);
    free(lgen);
    msa_cuda_model_free(cm);
    msa_model_free(m);
}

int main(void) {
    if (!msa_cuda_available()) T_SKIP("no CUDA device");
    t_seed();
    const char *assets = t_assets();
    if (assets) test_stories(assets);
    else printf("no assets folder: stories260K part skipped\n");
    test_random(0);
    test_random(1);
    return t_done("test-model-cuda");
}
#endif
