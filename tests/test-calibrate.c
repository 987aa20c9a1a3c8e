/*
 * test-calibrate.c: the index calibration (engine/calibrate/calibrate.c).
 *
 *   (a) the hand-written gradient of the KL alignment loss (through softmax,
 *       dot products, RoPE, RMSNorm with scale 1+w, and the linear maps)
 *       agrees with central finite differences on a tiny random layer, for
 *       both RoPE layouts (relative error < 1e-3);
 *   (b) on stories260K (converted from the assets), calibrating on the
 *       assets' texts plus stories the model samples itself lowers the loss
 *       of every layer substantially;
 *   (c) the written GGUF loads with a trained index (idx_key_heads 1,
 *       idx_dim as asked) and still reproduces the reference greedy ids with
 *       Bk 128 (every row sees <= 2 < k blocks: MSA is dense);
 *   (d) with small blocks (Bk 16, k 4) on held-out sampled stories, the
 *       share of dense attention mass inside the selected blocks, trained
 *       index vs training-free, and the index key bytes per token; the
 *       numbers quoted in docs/index.md.
 *
 * Two ctest entries run this program. `test-calibrate` (unit, seconds): (a)
 * and a short calibration of stories260K (few steps on the assets' texts:
 * every layer's loss falls, the GGUF written loads with a trained index of
 * the dimension asked, wrong uses are refused). `test-calibrate-stories`
 * (slow, minutes: `test-calibrate --stories`): (b)-(d) in full. Both skip
 * the stories260K parts when ../shared/assets is absent. Sampling and the
 * calibration's weight initialisation take their seeds from t_seed().
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/calibrate/calibrate.h"
#include "engine/model/model.h"
#include "base/base.h"
#include "tests/testutil.h"

/* ---- (a) gradient check ---------------------------------------------------------- */

static void test_gradient(int neox) {
    const int D = 6, Hkv = 2, di = 4, n_seq = 2, T = 5;
    const int N = n_seq * T, tri = T * (T + 1) / 2;
    float x[2 * 5 * 6], teacher[2 * 2 * 15];
    for (int i = 0; i < N * D; i++) x[i] = t_randn();
    for (int s = 0; s < n_seq * Hkv; s++)
        for (int i = 0; i < T; i++) {
            float *r = teacher + s * tri + i * (i + 1) / 2, z = 0;
            for (int j = 0; j <= i; j++) z += (r[j] = expf(2.0f * t_randn()));
            for (int j = 0; j <= i; j++) r[j] /= z;
        }
    enum { NP = 2 * 4 * 6 + 4 * 6 + 4 + 4 };
    float P[NP], G[NP];
    for (int k = 0; k < NP; k++) P[k] = (k < 2 * 4 * 6 + 4 * 6 ? 0.6f : 0.3f) * t_randn();
    float *wq = P, *wk = P + 48, *qn = P + 72, *kn = P + 76;
    msa_calib_layer L = {D, Hkv, di, n_seq, T, 1e-5f, 100.0f, neox, NULL, x, teacher, 0, 0};
    double loss = msa_calib_layer_loss(&L, wq, wk, qn, kn, G, G + 48, G + 72, G + 76, 2);
    CHECK(loss > 0);
    double num2 = 0, diff2 = 0, an2 = 0;
    const float h = 2e-3f;
    for (int k = 0; k < NP; k++) {
        float keep = P[k];
        P[k] = keep + h;
        double lp = msa_calib_layer_loss(&L, wq, wk, qn, kn, NULL, NULL, NULL, NULL, 1);
        P[k] = keep - h;
        double lm = msa_calib_layer_loss(&L, wq, wk, qn, kn, NULL, NULL, NULL, NULL, 1);
        P[k] = keep;
        double num = (lp - lm) / (2.0 * ((double)(keep + h) - (double)(keep - h)) / 2.0);
        num2 += num * num;
        an2 += (double)G[k] * G[k];
        diff2 += (num - G[k]) * (num - G[k]);
    }
    double rel = sqrt(diff2) / sqrt(an2);
    printf("gradient check (%s RoPE, %d parameters): loss %.4f, |grad| %.4f, relative error "
           "%.2e\n", neox ? "rotate-half" : "interleaved", NP, loss, sqrt(an2), rel);
    CHECKF(rel < 1e-3, "analytic vs numerical gradient: relative error %g", rel);
    (void)num2;
}

/* ---- helpers ---------------------------------------------------------------------- */

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    fclose(f);
    if (s) s[n] = 0;
    *len = (size_t)n;
    return s;
}

/* Appends the ids of a text file (no BOS) to ids[*n..]. */
static void add_text(msa_tokenizer *tok, const char *path, int32_t *ids, size_t cap, size_t *n) {
    size_t len;
    char *s = read_file(path, &len);
    CHECK(s != NULL);
    if (!s) return;
    size_t got = 0;
    CHECK_OK(msa_tokenize(tok, s, len, 0, ids + *n, cap - *n, &got));
    *n += got;
    free(s);
}

/* Uniform in [0, 1) with 53 bits, from the seeded test generator. */
static double urand(void) { return (t_rand_u64() >> 11) * (1.0 / 9007199254740992.0); }

/* Appends n_stories stories of 255 tokens sampled at temperature 1 from
 * BOS (the BOS itself not included). */
static void sample_stories(msa_model *m, int n_stories, int32_t *ids, size_t cap, size_t *n) {
    const int V = m->info.vocab_size;
    float *lg = malloc((size_t)V * sizeof *lg);
    for (int s = 0; s < n_stories && lg && *n + 255 <= cap; s++) {
        msa_kvcache_params kp = msa_kvcache_params_for(m, 128);
        msa_kvmem *mem = NULL;
        CHECK_OK(msa_kvcache_init(&kp, &mem));
        if (!mem) break;
        msa_forward_opts o = msa_forward_default_opts();
        o.dense = 1;
        int32_t cur = 1;
        for (int i = 0; i < 255; i++) {
            CHECK_OK(msa_model_forward(m, mem, &cur, 1, i, &o, lg));
            float mx = lg[0];
            for (int v = 1; v < V; v++) mx = lg[v] > mx ? lg[v] : mx;
            double z = 0;
            for (int v = 0; v < V; v++) z += exp(lg[v] - mx);
            double u = urand() * z, acc = 0;
            int pick = V - 1;
            for (int v = 0; v < V; v++) {
                acc += exp(lg[v] - mx);
                if (acc >= u) {
                    pick = v;
                    break;
                }
            }
            ids[(*n)++] = cur = pick;
        }
        msa_kvcache_free(mem);
    }
    free(lg);
}

static void log_step(void *user, int layer, int step, double loss) {
    (void)user;
    if (step == 0 || step % 100 == 0) printf("  layer %d step %4d loss %.4f\n", layer, step, loss);
}

/* Converts stories260K into tmpdir/stories260K.gguf and opens it with its
 * tokenizer; 0 when any step failed (the checks say which). */
static int open_stories(const char *assets, const char *tmpdir, char *gguf, size_t cap,
                        msa_model **m, msa_tokenizer **tok) {
    char bin[512], tk[512];
    snprintf(bin, sizeof bin, "%s/stories260K/stories260K.bin", assets);
    snprintf(tk, sizeof tk, "%s/stories260K/tok512.bin", assets);
    snprintf(gguf, cap, "%s/stories260K.gguf", tmpdir);
    *m = NULL;
    *tok = NULL;
    CHECK_OK(msa_convert_llama2c(bin, tk, gguf));
    msa_model_params mp = msa_model_default_params();
    mp.n_threads = 2;
    CHECK_OK(msa_model_open(gguf, &mp, m));
    CHECK_OK(msa_tokenizer_open(gguf, tok));
    if (*m && *tok) return 1;
    msa_model_free(*m);
    msa_tokenizer_free(*tok);
    *m = NULL;
    *tok = NULL;
    return 0;
}

/* ---- the short calibration (unit) ------------------------------------------------------ */

/* 40 Adam steps per layer on the assets' two texts in sequences of 64: a
 * few seconds on 2 cores. Every layer's loss must fall to half or less
 * (as in the full run; measured: to a sixth or less), and the result must
 * load as a model with a trained index of the asked dimension. */
static void test_short(const char *assets, const char *tmpdir) {
    char gguf[600], out[600], path[600];
    msa_model *m = NULL;
    msa_tokenizer *tok = NULL;
    if (!open_stories(assets, tmpdir, gguf, sizeof gguf, &m, &tok)) return;
    snprintf(out, sizeof out, "%s/stories260K-short-idx.gguf", tmpdir);
    const size_t cap = 4096;
    int32_t *cal = malloc(cap * sizeof *cal);
    size_t n_cal = 0;
    CHECK(cal != NULL);
    if (cal) {
        snprintf(path, sizeof path, "%s/stories260K/expected.greedy256.txt", assets);
        add_text(tok, path, cal, cap, &n_cal);
        snprintf(path, sizeof path, "%s/stories260K/tok512.tests.inp", assets);
        add_text(tok, path, cal, cap, &n_cal);
    }
    CHECK(n_cal > 256);
    msa_calib_params cp = msa_calib_default_params();
    cp.idx_dim = 16;
    cp.steps = 40;
    cp.seq_len = 64;
    cp.bos = 1;
    cp.n_threads = 2;
    cp.seed = t_rand_u64() | 1;
    msa_calib_result res;
    memset(&res, 0, sizeof res);
    double t0 = msa_now();
    if (cal && n_cal > 256) CHECK_OK(msa_calibrate(m, cal, n_cal, &cp, out, &res));
    printf("short calibration: %d sequences of %d, %d steps, %.2f s\n", res.n_seq, res.seq_len,
           cp.steps, msa_now() - t0);
    CHECK(res.n_layers == m->info.n_layers);
    for (int l = 0; l < res.n_layers; l++) {
        printf("layer %d: KL per (row, group) %.4f -> %.4f\n", l, res.loss_first[l],
               res.loss_last[l]);
        CHECKF(res.loss_last[l] < 0.5 * res.loss_first[l], "layer %d: loss %g -> %g", l,
               res.loss_first[l], res.loss_last[l]);
    }
    msa_calib_params bad = cp;
    bad.idx_dim = 7;
    if (cal) CHECK(msa_calibrate(m, cal, n_cal, &bad, out, NULL) == MSA_EINVAL);
    if (cal) CHECK(msa_calibrate(m, cal, 1, &cp, out, NULL) == MSA_EINVAL);
    msa_model_params mp = msa_model_default_params();
    mp.n_threads = 2;
    msa_model *mt = NULL;
    CHECK_OK(msa_model_open(out, &mp, &mt));
    if (mt) {
        msa_model_info info;
        CHECK_OK(msa_model_get_info(mt, &info));
        CHECK(info.has_trained_index == 1 && info.idx_key_heads == 1 && info.idx_dim == 16);
        if (cal) CHECK(msa_calibrate(mt, cal, n_cal, &cp, out, NULL) == MSA_EUNSUPPORTED);
    }
    msa_model_free(mt);
    free(cal);
    msa_tokenizer_free(tok);
    msa_model_free(m);
}

/* ---- (b)-(d) on stories260K (slow) ------------------------------------------------------ */

static void test_stories(const char *assets, const char *tmpdir) {
    char gguf[600], out[600], path[600];
    msa_model *m = NULL;
    msa_tokenizer *tok = NULL;
    if (!open_stories(assets, tmpdir, gguf, sizeof gguf, &m, &tok)) return;
    snprintf(out, sizeof out, "%s/stories260K-idx.gguf", tmpdir);
    msa_model_params mp = msa_model_default_params();
    mp.n_threads = 2;
    /* Calibration text: the assets' texts and 8 sampled stories; held out:
     * 4 more sampled stories. */
    const size_t cap = 8192;
    int32_t *cal = malloc(cap * sizeof *cal), *held = malloc(cap * sizeof *held);
    size_t n_cal = 0, n_held = 0;
    snprintf(path, sizeof path, "%s/stories260K/expected.greedy256.txt", assets);
    add_text(tok, path, cal, cap, &n_cal);
    snprintf(path, sizeof path, "%s/stories260K/tok512.tests.inp", assets);
    add_text(tok, path, cal, cap, &n_cal);
    sample_stories(m, 8, cal, cap, &n_cal);
    sample_stories(m, 4, held, cap, &n_held);
    printf("calibration tokens %zu, held-out tokens %zu\n", n_cal, n_held);

    msa_calib_params cp = msa_calib_default_params();
    cp.idx_dim = 32;
    cp.bos = 1;
    cp.n_threads = 2;
    cp.seed = t_rand_u64() | 1;
    cp.on_step = log_step;
    cp.log_every = 100;
    msa_calib_result res;
    memset(&res, 0, sizeof res);
    double t0 = msa_now();
    CHECK_OK(msa_calibrate(m, cal, n_cal, &cp, out, &res));
    double t1 = msa_now();
    printf("calibrate: %d sequences of %d, %d steps, inputs %.2f s, training %.2f s, total "
           "%.2f s (2 threads)\n", res.n_seq, res.seq_len, cp.steps, res.seconds_inputs,
           res.seconds_train, t1 - t0);
    for (int l = 0; l < res.n_layers; l++) {
        printf("layer %d: KL per (row, group) %.4f -> %.4f\n", l, res.loss_first[l],
               res.loss_last[l]);
        CHECKF(res.loss_last[l] < 0.5 * res.loss_first[l], "layer %d: loss %g -> %g", l,
               res.loss_first[l], res.loss_last[l]);
    }
    /* Wrong uses. */
    msa_calib_params bad = cp;
    bad.idx_dim = 7;
    CHECK(msa_calibrate(m, cal, n_cal, &bad, out, NULL) == MSA_EINVAL);

    msa_model *mt = NULL;
    CHECK_OK(msa_model_open(out, &mp, &mt));
    if (mt) {
        msa_model_info info;
        CHECK_OK(msa_model_get_info(mt, &info));
        CHECK(info.has_trained_index == 1 && info.idx_key_heads == 1 && info.idx_dim == 32);
        CHECK(msa_calibrate(mt, cal, n_cal, &cp, out, NULL) == MSA_EUNSUPPORTED);
        /* The tokenizer metadata came along. */
        msa_tokenizer *t2 = NULL;
        CHECK_OK(msa_tokenizer_open(out, &t2));
        if (t2) CHECK(msa_tokenizer_n_vocab(t2) == 512 && msa_tokenizer_bos(t2) == 1);
        msa_tokenizer_free(t2);

        /* (c) greedy ids with Bk 128. */
        snprintf(path, sizeof path, "%s/stories260K/expected.greedy256.ids.txt", assets);
        size_t len;
        char *s = read_file(path, &len);
        int32_t in_ids[256], am_ids[256];
        int n_in = 0, n_am = 0;
        if (s) {
            char *p = strstr(s, "input_ids:"), *q = strstr(s, "argmax_ids:"), *e;
            for (p = p ? p + 10 : NULL; p && n_in < 256; p = e) {
                long v = strtol(p, &e, 10);
                if (e == p) break;
                in_ids[n_in++] = (int32_t)v;
            }
            for (q = q ? q + 11 : NULL; q && n_am < 256; q = e) {
                long v = strtol(q, &e, 10);
                if (e == q) break;
                am_ids[n_am++] = (int32_t)v;
            }
            free(s);
        }
        CHECK(n_in == 256 && n_am == 256);
        float *lg = malloc((size_t)256 * 512 * sizeof *lg);
        msa_kvcache_params kp = msa_kvcache_params_for(mt, 128);
        msa_kvmem *mem = NULL;
        CHECK_OK(msa_kvcache_init(&kp, &mem));
        if (lg && mem && n_in == 256 && n_am == 256) {
            msa_forward_opts o = msa_forward_default_opts();
            o.all_logits = 1;
            CHECK_OK(msa_model_forward(mt, mem, in_ids, 256, 0, &o, lg));
            int agree = 0;
            for (int i = 0; i < 256; i++) {
                int b = 0;
                for (int v = 1; v < 512; v++)
                    if (lg[(size_t)i * 512 + v] > lg[(size_t)i * 512 + b]) b = v;
                agree += b == am_ids[i];
            }
            printf("trained index, Bk 128: greedy argmax agrees %d/256\n", agree);
            CHECK(agree == 256);
        }
        msa_kvcache_free(mem);
        free(lg);

        /* (d) selected mass with small blocks, held out. */
        double tr_mean = 0, tr_min = 0, fr_mean = 0, fr_min = 0;
        CHECK_OK(msa_calib_selected_mass(mt, held, n_held, 256, 1, 16, 4, &tr_mean, &tr_min));
        CHECK_OK(msa_calib_selected_mass(m, held, n_held, 256, 1, 16, 4, &fr_mean, &fr_min));
        double trc = 0, frc = 0;
        CHECK_OK(msa_calib_selected_mass(mt, cal, n_cal, 256, 1, 16, 4, &trc, NULL));
        CHECK_OK(msa_calib_selected_mass(m, cal, n_cal, 256, 1, 16, 4, &frc, NULL));
        printf("Bk 16 k 4, held-out (%zu tokens): dense mass in selected blocks, trained "
               "%.4f (min %.4f) vs training-free %.4f (min %.4f); on the calibration text "
               "%.4f vs %.4f\n", n_held, tr_mean, tr_min, fr_mean, fr_min, trc, frc);
        printf("index key bytes per token and layer: trained %d (fp32) / %d (16-bit), one "
               "shared head; training-free %d (fp32) / %d (16-bit), %d heads x %d\n",
               info.idx_dim * 4, info.idx_dim * 2, m->info.n_kv_heads * m->info.head_dim * 4,
               m->info.n_kv_heads * m->info.head_dim * 2, m->info.n_kv_heads,
               m->info.head_dim);
        CHECKF(tr_mean > fr_mean - 0.03, "trained %g vs training-free %g", tr_mean, fr_mean);
    }
    msa_model_free(mt);
    free(cal);
    free(held);
    msa_tokenizer_free(tok);
    msa_model_free(m);
}

int main(int argc, char **argv) {
    int stories = argc == 2 && !strcmp(argv[1], "--stories");
    if (argc > 2 || (argc == 2 && !stories)) {
        fprintf(stderr, "usage: test-calibrate [--stories]\n"
                        "  (none)     gradient check and a short calibration (unit)\n"
                        "  --stories  the full stories260K calibration (slow)\n");
        return 2;
    }
    t_seed();
    if (!stories) {
        test_gradient(0);
        test_gradient(1);
    }
    const char *assets = t_assets();
    char probe[512];
    if (assets) snprintf(probe, sizeof probe, "%s/stories260K/stories260K.bin", assets);
    if (!assets || access(probe, R_OK) != 0) {
        if (stories) T_SKIP("no stories260K in the assets (set MSA_ASSETS)");
        printf("assets absent: stories260K part skipped\n");
        return t_done("test-calibrate");
    }
    char tmpdir[64];
    snprintf(tmpdir, sizeof tmpdir, "/tmp/msa-test-calibrate-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    if (stories)
        test_stories(assets, tmpdir);
    else
        test_short(assets, tmpdir);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return t_done("test-calibrate");
}
