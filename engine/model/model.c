/*
 * model.c: opening a model. GGUF files of architecture "llama" or "qwen2"
 * are read here; Hugging Face directories are handed to the loader in
 * engine/model/model_hf.c (msa_model_load_hf, linked weakly so that this file
 * builds on its own).
 *
 * Tensor names are llama.cpp's (token_embd, blk.N.attn_q, ..., output); the
 * shapes are checked against the hyperparameters before any is used. F32
 * tensors are used in place from the mapping (the GGUF data section is
 * 32-byte aligned and the mapping page aligned); F16, BF16 and the quantized
 * types (Q4_0 .. Q8_0, Q2_K .. Q6_K, engine/model/ggml_quant.c) are
 * converted to fp32 buffers the model owns, which costs 4 bytes per
 * parameter (a 7B F16 model: 28 GB; a 0.5B Q4_K_M file of 0.49 GB becomes
 * 2 GB). On the CPU, weight matrices whose type has a quantized kernel
 * (kernels/qgemm.h) are not converted: get_weight() keeps them in the
 * mapping (msa_qmat, model.h), unless MSA_CPU_WEIGHTS=f32 is set.
 *
 * The fingerprint is SHA-256 over, per tensor in file order, its name, type,
 * dims and bytes. Hashing a large model takes seconds, so it is cached;
 * the rule is below ("fingerprint cache"), and in docs/models.md.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/model/model.h"
#include "engine/pull/sha256.h"
#include "base/base.h"
#include "kernels/qgemm.h"

/* The Hugging Face loader (engine/model/model_hf.c): fills `m` from a directory.
 * Weak, so that a build without it still links; then directories are
 * refused with MSA_EUNSUPPORTED. */
int msa_model_load_hf(const char *dir, const msa_model_params *p, msa_model *m)
    __attribute__((weak));
int msa_hf_is_model_dir(const char *path) __attribute__((weak));

msa_model_params msa_model_default_params(void) {
    msa_model_params p;
    memset(&p, 0, sizeof p);
    p.device = MSA_DEVICE_CPU;
    return p;
}

int msa_model_alloc(msa_model *m, size_t n, float **out) {
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? 2 * m->cap_owned : 64;
        void **o = realloc(m->owned, (size_t)cap * sizeof *o);
        if (!o) return msa_error(MSA_ENOMEM, "model: buffer list");
        m->owned = o;
        m->cap_owned = cap;
    }
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) return msa_error(MSA_ENOMEM, "model: %zu floats", n);
    m->owned[m->n_owned++] = p;
    *out = p;
    return MSA_OK;
}

const msa_gguf *msa_model_gguf(const msa_model *m) { return m ? m->gguf : NULL; }

void msa_model_free(msa_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    free(m->scratch);
    msa_gguf_close(m->gguf);
    free(m);
}

int msa_model_get_info(const msa_model *m, msa_model_info *info) {
    if (!m || !info) return msa_error(MSA_EINVAL, "msa_model_get_info: NULL argument");
    *info = m->info;
    return MSA_OK;
}

int msa_model_validate(msa_model *m) {
    msa_model_info *I = &m->info;
    if (I->n_layers <= 0 || I->dim <= 0 || I->n_heads <= 0 || I->n_kv_heads <= 0 ||
        I->ff_dim <= 0 || I->vocab_size <= 0)
        return msa_error(MSA_EFORMAT, "model: non-positive size (layers %d, dim %d, heads %d, "
                         "kv heads %d, ff %d, vocab %d)", I->n_layers, I->dim, I->n_heads,
                         I->n_kv_heads, I->ff_dim, I->vocab_size);
    if (I->n_heads % I->n_kv_heads)
        return msa_error(MSA_EFORMAT, "model: %d heads not divisible by %d KV heads",
                         I->n_heads, I->n_kv_heads);
    if (!I->head_dim) {
        if (I->dim % I->n_heads)
            return msa_error(MSA_EFORMAT, "model: dim %d not divisible by %d heads", I->dim,
                             I->n_heads);
        I->head_dim = I->dim / I->n_heads;
    }
    if (I->head_dim % 2) return msa_error(MSA_EFORMAT, "model: odd head dim %d", I->head_dim);
    /* Stated values that make no model: refused, never replaced by a
     * default (a file that says 0 is broken, not silent on the point). */
    if (I->context_length <= 0)
        return msa_error(MSA_EFORMAT, "model: context length %d (must be positive)",
                         I->context_length);
    if (!(I->rope_theta > 0) || !isfinite(I->rope_theta))
        return msa_error(MSA_EFORMAT, "model: RoPE theta %g (must be positive and finite)",
                         (double)I->rope_theta);
    if (!(m->rms_eps > 0) || !isfinite(m->rms_eps))
        return msa_error(MSA_EFORMAT, "model: RMSNorm epsilon %g (must be positive and finite)",
                         (double)m->rms_eps);
    if ((!m->tok_embd && !m->qtok_embd.data) || !m->output_norm ||
        (!m->output && !m->qoutput.data) || !m->layers)
        return msa_error(MSA_EFORMAT, "model: embedding, final norm or classifier missing");
    int trained = 0;
    for (int l = 0; l < I->n_layers; l++) {
        const msa_model_layer *L = &m->layers[l];
#define HAS(w) (L->w || L->q##w.data)
        if (!L->attn_norm || !HAS(wq) || !HAS(wk) || !HAS(wv) || !HAS(wo) || !L->ffn_norm ||
            !HAS(w1) || !HAS(w2) || !HAS(w3))
#undef HAS
            return msa_error(MSA_EFORMAT, "model: layer %d lacks a weight", l);
        int has = L->idx_q && L->idx_k && L->idx_q_norm && L->idx_k_norm;
        if (l == 0) trained = has;
        else if (has != trained)
            return msa_error(MSA_EFORMAT, "model: MSA index weights in some layers only");
    }
    I->has_trained_index = trained;
    if (trained) {
        if (I->idx_dim <= 0) return msa_error(MSA_EFORMAT, "model: trained index dim unset");
        I->idx_key_heads = 1;
    } else {
        I->idx_dim = I->head_dim;
        I->idx_key_heads = I->n_kv_heads;
    }
    return MSA_OK;
}

/* ---- GGUF ------------------------------------------------------------------ */

typedef struct loader {
    msa_model *m;
    const msa_gguf *g;
    const char *arch;
    int f32;              /* 1: every weight to fp32 (MSA_CPU_WEIGHTS=f32) */
} loader;

static int meta_int(loader *L, const char *suffix, int required, int def, int *out) {
    char key[128];
    int64_t v;
    snprintf(key, sizeof key, "%s.%s", L->arch, suffix);
    int rc = msa_gguf_get_int(L->g, key, &v);
    if (rc == MSA_ENOTFOUND) {
        if (required) return msa_error(MSA_EFORMAT, "GGUF key '%s' is missing", key);
        *out = def;
        return MSA_OK;
    }
    if (rc) return rc;
    if (v < 0 || v > (1 << 30)) return msa_error(MSA_EFORMAT, "GGUF key '%s' = %lld", key,
                                                 (long long)v);
    *out = (int)v;
    return MSA_OK;
}

static int meta_float(loader *L, const char *suffix, double def, float *out) {
    char key[128];
    double v;
    snprintf(key, sizeof key, "%s.%s", L->arch, suffix);
    int rc = msa_gguf_get_float(L->g, key, &v);
    if (rc == MSA_ENOTFOUND) v = def;
    else if (rc) return rc;
    if (!isfinite(v)) return msa_error(MSA_EFORMAT, "GGUF key '%s' is not finite", key);
    *out = (float)v;
    return MSA_OK;
}

/* Finds tensor `name` of shape ne0 x ne1 (ne1 = 0: a vector) and returns fp32
 * data: mapped for F32, converted otherwise. Optional tensors give *out NULL
 * when absent. */
static int get_tensor(loader *L, const char *name, int64_t ne0, int64_t ne1, int optional,
                      const float **out) {
    const msa_gguf_tensor *t;
    *out = NULL;
    int rc = msa_gguf_find_tensor(L->g, name, &t);
    if (rc == MSA_ENOTFOUND) {
        if (optional) return MSA_OK;
        return msa_error(MSA_EFORMAT, "tensor '%s' is missing", name);
    }
    if (rc) return rc;
    int64_t want1 = ne1 ? ne1 : 1;
    if (t->ne[0] != ne0 || t->ne[1] != want1 || t->ne[2] != 1 || t->ne[3] != 1)
        return msa_error(MSA_EFORMAT,
                         "tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]",
                         name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                         (long long)t->ne[3], (long long)ne0, (long long)want1);
    size_t n = (size_t)ne0 * (size_t)want1;
    if (t->type == MSA_GGML_F32 && ((uintptr_t)t->data % 4) == 0) {
        *out = t->data;
        return MSA_OK;
    }
    float *buf;
    if ((rc = msa_model_alloc(L->m, n, &buf))) return rc;
    size_t row = msa_ggml_row_bytes(t->type, ne0);
    for (int64_t r = 0; r < want1; r++)
        msa_ggml_to_f32(t->type, (const uint8_t *)t->data + (size_t)r * row, buf + r * ne0, ne0);
    *out = buf;
    return MSA_OK;
}

/* A weight matrix (ne0 = its columns): kept in the file's bytes (*q) when
 * its type has a quantized kernel for ne0 columns and the model is not
 * opened for fp32 weights (*out NULL then); else exactly get_tensor(),
 * which also reports a missing tensor or a wrong shape. */
static int get_weight(loader *L, const char *name, int64_t ne0, int64_t ne1, int optional,
                      const float **out, msa_qmat *q) {
    const msa_gguf_tensor *t;
    memset(q, 0, sizeof *q);
    if (!L->f32 && msa_gguf_find_tensor(L->g, name, &t) == MSA_OK && t->ne[0] == ne0 &&
        t->ne[1] == ne1 && t->ne[2] == 1 && t->ne[3] == 1 && ne0 <= INT32_MAX &&
        ne1 <= INT32_MAX && msa_qgemm_supported(t->type, (int)ne0) &&
        t->size >= msa_ggml_row_bytes(t->type, ne0) * (size_t)ne1) {
        *out = NULL;
        q->data = t->data;
        q->type = t->type;
        q->rows = (int)ne1;
        q->cols = (int)ne0;
        q->row_bytes = msa_ggml_row_bytes(t->type, ne0);
        return MSA_OK;
    }
    return get_tensor(L, name, ne0, ne1, optional, out);
}

static int expand_one(msa_model *m, const float **f, const msa_qmat *q) {
    if (*f || !q->data) return MSA_OK;
    float *buf;
    int rc = msa_model_alloc(m, (size_t)q->rows * q->cols, &buf);
    if (rc) return rc;
    for (int r = 0; r < q->rows; r++)
        msa_ggml_to_f32(q->type, (const uint8_t *)q->data + (size_t)r * q->row_bytes,
                        buf + (size_t)r * q->cols, q->cols);
    *f = buf;
    return MSA_OK;
}

int msa_model_expand_f32(msa_model *m) {
    if (!m) return msa_error(MSA_EINVAL, "msa_model_expand_f32: NULL model");
    const int tied = m->qoutput.data && m->qoutput.data == m->qtok_embd.data;
    int rc = expand_one(m, &m->tok_embd, &m->qtok_embd);
    if (!rc && tied && !m->output) m->output = m->tok_embd;
    if (!rc) rc = expand_one(m, &m->output, &m->qoutput);
    for (int l = 0; !rc && m->layers && l < m->info.n_layers; l++) {
        msa_model_layer *Y = &m->layers[l];
        if ((rc = expand_one(m, &Y->wq, &Y->qwq)) || (rc = expand_one(m, &Y->wk, &Y->qwk)) ||
            (rc = expand_one(m, &Y->wv, &Y->qwv)) || (rc = expand_one(m, &Y->wo, &Y->qwo)) ||
            (rc = expand_one(m, &Y->w1, &Y->qw1)) || (rc = expand_one(m, &Y->w2, &Y->qw2)) ||
            (rc = expand_one(m, &Y->w3, &Y->qw3)))
            break;
    }
    return rc ? msa_error_context(rc, "model: converting quantized weights to fp32") : MSA_OK;
}

static void count_w(const float *f, const msa_qmat *q, size_t n, size_t *fb, size_t *qb) {
    if (f) *fb += n * sizeof(float);
    else if (q && q->data) *qb += q->row_bytes * (size_t)q->rows;
}

void msa_model_weight_bytes(const msa_model *m, size_t *f32_bytes, size_t *quant_bytes) {
    size_t fb = 0, qb = 0;
    const msa_model_info *I = &m->info;
    const size_t D = I->dim, qd = (size_t)I->n_heads * I->head_dim,
                 kvd = (size_t)I->n_kv_heads * I->head_dim, F = I->ff_dim, V = I->vocab_size;
    count_w(m->tok_embd, &m->qtok_embd, V * D, &fb, &qb);
    if (m->output != m->tok_embd || (!m->output && m->qoutput.data != m->qtok_embd.data))
        count_w(m->output, &m->qoutput, V * D, &fb, &qb);
    for (int l = 0; m->layers && l < I->n_layers; l++) {
        const msa_model_layer *Y = &m->layers[l];
        count_w(Y->wq, &Y->qwq, qd * D, &fb, &qb);
        count_w(Y->wk, &Y->qwk, kvd * D, &fb, &qb);
        count_w(Y->wv, &Y->qwv, kvd * D, &fb, &qb);
        count_w(Y->wo, &Y->qwo, D * qd, &fb, &qb);
        count_w(Y->w1, &Y->qw1, F * D, &fb, &qb);
        count_w(Y->w2, &Y->qw2, D * F, &fb, &qb);
        count_w(Y->w3, &Y->qw3, F * D, &fb, &qb);
    }
    if (f32_bytes) *f32_bytes = fb;
    if (quant_bytes) *quant_bytes = qb;
}

static int load_gguf(msa_model *m, const char *path) {
    int rc = msa_gguf_open(path, &m->gguf);
    if (rc) return rc;
    const char *wenv = getenv("MSA_CPU_WEIGHTS");
    loader L = {m, m->gguf, NULL, wenv && strcmp(wenv, "f32") == 0};
    const char *s;
    size_t n;
    if ((rc = msa_gguf_get_str(L.g, "general.architecture", &s, &n)))
        return rc == MSA_ENOTFOUND
                   ? msa_error(MSA_EFORMAT, "%s: no general.architecture (a vocab-only GGUF?)",
                               path)
                   : rc;
    if (n >= sizeof m->info.arch) n = sizeof m->info.arch - 1;
    memcpy(m->info.arch, s, n);
    m->info.arch[n] = 0;
    L.arch = m->info.arch;
    int qwen2 = strcmp(L.arch, "qwen2") == 0;
    if (strcmp(L.arch, "llama") != 0 && !qwen2)
        return msa_error(MSA_EUNSUPPORTED, "%s: architecture '%s' (llama and qwen2 are read)",
                         path, L.arch);
    m->rope_neox = qwen2; /* llama.cpp runs qwen2 in NEOX (rotate-half) mode */

    msa_model_info *I = &m->info;
    int rope_dims = 0;
    if ((rc = meta_int(&L, "block_count", 1, 0, &I->n_layers)) ||
        (rc = meta_int(&L, "embedding_length", 1, 0, &I->dim)) ||
        (rc = meta_int(&L, "feed_forward_length", 1, 0, &I->ff_dim)) ||
        (rc = meta_int(&L, "attention.head_count", 1, 0, &I->n_heads)) ||
        (rc = meta_int(&L, "attention.head_count_kv", 0, 0, &I->n_kv_heads)) ||
        (rc = meta_int(&L, "context_length", 0, 2048, &I->context_length)) ||
        (rc = meta_int(&L, "attention.key_length", 0, 0, &I->head_dim)) ||
        (rc = meta_int(&L, "rope.dimension_count", 0, 0, &rope_dims)) ||
        (rc = meta_int(&L, "msa.index_dim", 0, 0, &I->idx_dim)) ||
        (rc = meta_float(&L, "rope.freq_base", 10000.0, &I->rope_theta)) ||
        (rc = meta_float(&L, "attention.layer_norm_rms_epsilon", 1e-5, &m->rms_eps)))
        return rc;
    if (!I->n_kv_heads) I->n_kv_heads = I->n_heads;
    if (I->n_heads <= 0 || I->n_layers <= 0 || I->dim <= 0)
        return msa_error(MSA_EFORMAT, "%s: non-positive layer count, dim or heads", path);
    if (!I->head_dim) I->head_dim = I->dim / I->n_heads;
    if (rope_dims && rope_dims != I->head_dim)
        return msa_error(MSA_EUNSUPPORTED, "%s: partial RoPE (%d of %d dims)", path, rope_dims,
                         I->head_dim);

    /* Vocabulary size: the embedding's rows. */
    const msa_gguf_tensor *te;
    if ((rc = msa_gguf_find_tensor(L.g, "token_embd.weight", &te)))
        return rc == MSA_ENOTFOUND ? msa_error(MSA_EFORMAT, "tensor 'token_embd.weight' is missing")
                                   : rc;
    if (te->ne[1] <= 0 || te->ne[1] > (1 << 30))
        return msa_error(MSA_EFORMAT, "token_embd.weight has %lld rows", (long long)te->ne[1]);
    I->vocab_size = (int)te->ne[1];
    if (I->n_heads % (I->n_kv_heads ? I->n_kv_heads : 1) || I->ff_dim <= 0)
        return msa_error(MSA_EFORMAT, "%s: inconsistent heads or feed-forward size", path);

    const int64_t D = I->dim, Hq = I->n_heads, Hkv = I->n_kv_heads, d = I->head_dim,
                  F = I->ff_dim, V = I->vocab_size;
    if ((rc = get_weight(&L, "token_embd.weight", D, V, 0, &m->tok_embd, &m->qtok_embd)) ||
        (rc = get_tensor(&L, "output_norm.weight", D, 0, 0, &m->output_norm)) ||
        (rc = get_weight(&L, "output.weight", D, V, 1, &m->output, &m->qoutput)))
        return rc;
    if (!m->output && !m->qoutput.data) { /* tied classifier */
        m->output = m->tok_embd;
        m->qoutput = m->qtok_embd;
    }

    /* Each layer has at least 9 tensors: a block_count the tensor table
     * cannot hold is refused before anything is sized by it (fuzz-gguf: a
     * block_count of 2^29 made this a 16 GB calloc). */
    if ((int64_t)I->n_layers > msa_gguf_n_tensors(L.g) / 9)
        return msa_error(MSA_EFORMAT, "%s: block_count %d, but the file holds %lld tensors",
                         path, I->n_layers, (long long)msa_gguf_n_tensors(L.g));
    m->layers = calloc((size_t)I->n_layers, sizeof *m->layers);
    if (!m->layers) return msa_error(MSA_ENOMEM, "model: layers");
    int di = I->idx_dim;
    for (int l = 0; l < I->n_layers; l++) {
        msa_model_layer *Y = &m->layers[l];
        char nm[96];
#define T(field, suffix, a, b, opt)                                          \
    do {                                                                     \
        snprintf(nm, sizeof nm, "blk.%d.%s", l, suffix);                     \
        if ((rc = get_tensor(&L, nm, a, b, opt, &Y->field))) return rc;      \
    } while (0)
#define W(field, suffix, a, b)                                                    \
    do {                                                                          \
        snprintf(nm, sizeof nm, "blk.%d.%s", l, suffix);                          \
        if ((rc = get_weight(&L, nm, a, b, 0, &Y->field, &Y->q##field))) return rc; \
    } while (0)
        T(attn_norm, "attn_norm.weight", D, 0, 0);
        W(wq, "attn_q.weight", D, Hq * d);
        W(wk, "attn_k.weight", D, Hkv * d);
        W(wv, "attn_v.weight", D, Hkv * d);
        W(wo, "attn_output.weight", Hq * d, D);
        T(bq, "attn_q.bias", Hq * d, 0, !qwen2);
        T(bk, "attn_k.bias", Hkv * d, 0, !qwen2);
        T(bv, "attn_v.bias", Hkv * d, 0, !qwen2);
        T(bo, "attn_output.bias", D, 0, 1);
        T(ffn_norm, "ffn_norm.weight", D, 0, 0);
        W(w1, "ffn_gate.weight", D, F);
        W(w2, "ffn_down.weight", F, D);
        W(w3, "ffn_up.weight", D, F);
        /* Trained MSA index: its dim comes from msa_idx_k's rows when the
         * metadata does not state it. */
        if (!di) {
            const msa_gguf_tensor *ik;
            snprintf(nm, sizeof nm, "blk.%d.msa_idx_k.weight", l);
            if (msa_gguf_find_tensor(L.g, nm, &ik) == MSA_OK && ik->ne[1] > 0 &&
                ik->ne[1] <= 4096)
                di = (int)ik->ne[1];
        }
        if (di) {
            T(idx_q, "msa_idx_q.weight", D, Hkv * di, 1);
            T(idx_k, "msa_idx_k.weight", D, di, 1);
            T(idx_q_norm, "msa_idx_q_norm.weight", di, 0, 1);
            T(idx_k_norm, "msa_idx_k_norm.weight", di, 0, 1);
        }
#undef T
#undef W
    }
    I->idx_dim = di;
    return msa_model_validate(m);
}

/* ---- fingerprint ------------------------------------------------------------- */

static void fingerprint_compute(const msa_gguf *g, char hex[MSA_SHA256_HEX_SIZE]) {
    msa_sha256_ctx s;
    msa_sha256_init(&s);
    for (int64_t i = 0; i < msa_gguf_n_tensors(g); i++) {
        const msa_gguf_tensor *t = msa_gguf_tensor_at(g, i);
        int32_t hdr[2] = {t->type, t->n_dims};
        msa_sha256_update(&s, t->name, strlen(t->name) + 1);
        msa_sha256_update(&s, hdr, sizeof hdr);
        msa_sha256_update(&s, t->ne, sizeof t->ne);
        if (t->data) msa_sha256_update(&s, t->data, t->size);
    }
    uint8_t dig[MSA_SHA256_DIGEST_SIZE];
    msa_sha256_final(&s, dig);
    msa_sha256_hex(dig, hex);
}

/* ---- fingerprint cache --------------------------------------------------------
 *
 * Where. $XDG_CACHE_HOME/msa-mem/fingerprints (else ~/.cache/msa-mem/
 * fingerprints), one small file per model, named by the SHA-256 of the
 * model's canonical path. Nothing is ever written beside the user's models
 * (older builds wrote PATH.msa-fp there; those files are ignored).
 *
 * When an entry is trusted. Only when all of these equal the model file's,
 * as fstat and a read give them now:
 *   device, inode        replacing the file (mv, cp over, a new download
 *                        renamed in place) gives another inode
 *   size
 *   mtime (ns)           every write moves it ...
 *   ctime (ns)           ... and a user can set mtime back (touch -d,
 *                        utimensat), but not ctime: the kernel sets ctime to
 *                        "now" on every write, truncate, chmod and
 *                        utimensat, and no call sets it to a chosen value
 *   a sample hash        SHA-256 of 16 pieces of 4 KiB spread over the file
 *                        (first and last included): 64 KiB read per open
 * So a model whose weights changed is always hashed again, unless someone
 * both changed it and put its ctime back, which takes root and resetting
 * the system clock (or editing the file system offline); the sample hash
 * then still catches a change that touches any sampled piece. Where even
 * that is not enough, msa_model_params.no_fingerprint_cache skips the cache.
 * A cache that cannot be written (read-only home, no HOME) only costs a
 * recomputation. Each entry also records the model's path; whenever an entry
 * is written, entries whose model no longer exists are removed (a miss
 * costs a whole hash anyway), so temporary models (tests, conversions) do not pile up. */

enum { FP_SAMPLES = 16, FP_SAMPLE_BYTES = 4096 };

typedef struct fp_key {
    long long dev, ino, size, mtime_s, mtime_ns, ctime_s, ctime_ns;
    char sample[MSA_SHA256_HEX_SIZE];
} fp_key;

/* The key of the open file fd (st its fstat). 0 on success. */
static int fp_key_of(int fd, const struct stat *st, fp_key *k) {
    k->dev = (long long)st->st_dev;
    k->ino = (long long)st->st_ino;
    k->size = (long long)st->st_size;
    k->mtime_s = (long long)st->st_mtim.tv_sec;
    k->mtime_ns = (long long)st->st_mtim.tv_nsec;
    k->ctime_s = (long long)st->st_ctim.tv_sec;
    k->ctime_ns = (long long)st->st_ctim.tv_nsec;
    msa_sha256_ctx s;
    msa_sha256_init(&s);
    uint8_t buf[FP_SAMPLE_BYTES];
    for (int i = 0; i < FP_SAMPLES; i++) {
        long long span = k->size > FP_SAMPLE_BYTES ? k->size - FP_SAMPLE_BYTES : 0;
        off_t off = (off_t)(span / (FP_SAMPLES - 1) * i);
        if (i == FP_SAMPLES - 1) off = (off_t)span;
        ssize_t got = pread(fd, buf, sizeof buf, off);
        if (got < 0) return -1;
        msa_sha256_update(&s, buf, (size_t)got);
    }
    uint8_t dig[MSA_SHA256_DIGEST_SIZE];
    msa_sha256_final(&s, dig);
    msa_sha256_hex(dig, k->sample);
    return 0;
}

/* The cache file for `path` into out (>= 4096 bytes), creating the folders
 * when `create`. 0 on success. */
static int fp_cache_path(const char *path, int create, char *out, size_t n) {
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char base[3072];
    if (xdg && xdg[0] == '/') snprintf(base, sizeof base, "%s/msa-mem", xdg);
    else if (home && *home) snprintf(base, sizeof base, "%s/.cache/msa-mem", home);
    else return -1;
    char real[PATH_MAX];
    if (!realpath(path, real)) return -1;
    uint8_t dig[MSA_SHA256_DIGEST_SIZE];
    char hex[MSA_SHA256_HEX_SIZE];
    msa_sha256(real, strlen(real), dig);
    msa_sha256_hex(dig, hex);
    if (create) {
        /* XDG_CACHE_HOME itself may be missing: make each level */
        char dir[3200];
        snprintf(dir, sizeof dir, "%s/fingerprints", base);
        for (char *q = dir + 1; *q; q++)
            if (*q == '/') {
                *q = 0;
                mkdir(dir, 0755);
                *q = '/';
            }
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) return -1;
    }
    if ((size_t)snprintf(out, n, "%s/fingerprints/%s", base, hex) >= n) return -1;
    return 0;
}

/* Removes the entries of `dir` whose model file is gone. */
static void fp_cache_prune(const char *cpath) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", cpath);
    char *slash = strrchr(dir, '/');
    if (!slash) return;
    *slash = 0;
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)) && n++ < 4096) {
        if (strlen(e->d_name) != 64) continue; /* entries only, not .tmp files */
        char p[4200], line[4200], model[4200];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        FILE *f = fopen(p, "r");
        if (!f) continue;
        int ok = fgets(line, sizeof line, f) && fgets(line, sizeof line, f) &&
                 sscanf(line, "path %4095[^\n]", model) == 1;
        fclose(f);
        struct stat st;
        if (ok && stat(model, &st) != 0 && errno == ENOENT) unlink(p);
    }
    closedir(d);
}

static void fingerprint(msa_model *m, const char *path, int use_cache) {
    char hex[MSA_SHA256_HEX_SIZE], cpath[4096];
    fp_key k;
    int have_key = 0, fd = -1;
    struct stat st;
    uint64_t dev, ino;
    /* the key of the file that is mapped: another file under the name now
     * (replaced since the open) gets no cache entry */
    if (use_cache && msa_gguf_file_id(m->gguf, &dev, &ino) &&
        msa_file_open_read(path, &fd, &st) == MSA_OK) {
        if ((uint64_t)st.st_dev == dev && (uint64_t)st.st_ino == ino && fp_key_of(fd, &st, &k) == 0)
            have_key = 1;
        close(fd);
    }
    msa_error_clear();
    if (have_key && fp_cache_path(path, 0, cpath, sizeof cpath) == 0) {
        FILE *f = fopen(cpath, "r");
        if (f) {
            fp_key c;
            char got[MSA_SHA256_HEX_SIZE + 1];
            int ok = fscanf(f, "msa-fp 2 %lld %lld %lld %lld %lld %lld %lld %64s %64s", &c.dev,
                            &c.ino, &c.size, &c.mtime_s, &c.mtime_ns, &c.ctime_s, &c.ctime_ns,
                            c.sample, got) == 9;
            fclose(f);
            uint8_t dig[MSA_SHA256_DIGEST_SIZE];
            if (ok && c.dev == k.dev && c.ino == k.ino && c.size == k.size &&
                c.mtime_s == k.mtime_s && c.mtime_ns == k.mtime_ns && c.ctime_s == k.ctime_s &&
                c.ctime_ns == k.ctime_ns && !strcmp(c.sample, k.sample) && strlen(got) == 64 &&
                msa_sha256_parse_hex(got, dig) == MSA_OK) {
                memcpy(m->info.fingerprint, got, 65);
                return;
            }
        }
    }
    fingerprint_compute(m->gguf, hex);
    memcpy(m->info.fingerprint, hex, sizeof hex);
    if (!have_key || fp_cache_path(path, 1, cpath, sizeof cpath) != 0) return;
    /* Best effort, written whole under a temporary name and renamed. */
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", cpath, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    char real[PATH_MAX];
    int ok = fprintf(f, "msa-fp 2 %lld %lld %lld %lld %lld %lld %lld %s %s\npath %s\n", k.dev,
                     k.ino, k.size, k.mtime_s, k.mtime_ns, k.ctime_s, k.ctime_ns, k.sample, hex,
                     realpath(path, real) ? real : "") > 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, cpath) != 0) unlink(tmp);
    else fp_cache_prune(cpath);
}

int msa_model_open(const char *path, const msa_model_params *params, msa_model **out) {
    if (!out || !path) return msa_error(MSA_EINVAL, "msa_model_open: NULL argument");
    *out = NULL;
    msa_model_params p = params ? *params : msa_model_default_params();
    if (p.n_threads < 0) return msa_error(MSA_EINVAL, "msa_model_open: n_threads %d", p.n_threads);
    msa_model *m = calloc(1, sizeof *m);
    if (!m) return msa_error(MSA_ENOMEM, "model");
    m->n_threads = p.n_threads;
    int rc;
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (!msa_model_load_hf || !msa_hf_is_model_dir || !msa_hf_is_model_dir(path))
            rc = msa_error(MSA_EUNSUPPORTED, "%s: a directory, and no Hugging Face loader "
                           "(config.json + safetensors) is available for it", path);
        else
            rc = msa_model_load_hf(path, &p, m);
    } else {
        rc = load_gguf(m, path);
        if (!rc) fingerprint(m, path, !p.no_fingerprint_cache);
    }
    if (rc) {
        msa_model_free(m);
        return msa_error_context(rc, "model %s", path);
    }
    *out = m;
    return MSA_OK;
}

msa_kvcache_params msa_kvcache_params_for(const msa_model *m, int block_size) {
    msa_kvcache_params p;
    memset(&p, 0, sizeof p);
    p.n_layers = m->info.n_layers;
    p.n_kv_heads = m->info.n_kv_heads;
    p.head_dim = m->info.head_dim;
    p.idx_key_heads = m->info.idx_key_heads;
    p.idx_dim = m->info.idx_dim;
    p.block_size = block_size;
    return p;
}
