/*
 * model_hf.c: Hugging Face model directories (config.json + safetensors)
 * for the Llama and Qwen2 architectures.
 *
 * config.json is read with jansson and resolved the way Hugging Face's
 * LlamaConfig / Qwen2Config resolve it: num_key_value_heads defaults to
 * num_attention_heads, head_dim to hidden_size / num_attention_heads,
 * tie_word_embeddings to false for Llama, rope_theta to 10000. Qwen2 always
 * has q/k/v biases; Llama has them (and an o bias) when attention_bias is
 * true. rope_scaling of type "llama3" or "linear" is applied through the
 * inverse frequencies (msa_hf_rope_inv_freq); other types are refused rather
 * than silently run with the wrong positions.
 *
 * RoPE layout. Hugging Face's Llama code rotates pairs (i, i + d/2) of each
 * head ("rotate half"); llama2.c and GGUF rotate pairs (2i, 2i + 1). The two
 * differ only by a fixed permutation of each head's q and k rows, which is
 * what HF's conversion script applies to Meta's weights. This loader undoes
 * it: q_proj/k_proj rows (and their biases) are permuted back on load, so
 * the engine runs one RoPE convention (interleaved) for every format. Since
 * attention only ever sees q.k dot products, the permutation is exact for
 * natively trained rotate-half models too (Qwen2).
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/model/model.h"
#include "engine/model/safetensors.h"
#include "engine/pull/sha256.h"
#include "base/base.h"

/* ---- config.json ------------------------------------------------------------ */

/* An integer field; `def` when absent (def < 0: required). Returns 0 or a
 * status. JSON reals with an integral value are accepted (some exporters
 * write 1e-05-style numbers everywhere). */
static int cfg_int(json_t *root, const char *key, int def, int *out) {
    json_t *j = json_object_get(root, key);
    if (!j || json_is_null(j)) {
        if (def < 0)
            return msa_error(MSA_EFORMAT, "config.json: '%s' is missing", key);
        *out = def;
        return MSA_OK;
    }
    double v;
    if (json_is_integer(j)) v = (double)json_integer_value(j);
    else if (json_is_real(j)) v = json_real_value(j);
    else return msa_error(MSA_EFORMAT, "config.json: '%s' is not a number", key);
    if (v != floor(v) || v < 0 || v > 1e9)
        return msa_error(MSA_EFORMAT, "config.json: '%s' = %g is not a "
                         "non-negative integer", key, v);
    *out = (int)v;
    return MSA_OK;
}

static int cfg_float(json_t *root, const char *key, double def, float *out) {
    json_t *j = json_object_get(root, key);
    if (!j || json_is_null(j)) {
        *out = (float)def;
        return MSA_OK;
    }
    if (!json_is_number(j))
        return msa_error(MSA_EFORMAT, "config.json: '%s' is not a number", key);
    double v = json_number_value(j);
    if (!isfinite(v))
        return msa_error(MSA_EFORMAT, "config.json: '%s' is not finite", key);
    *out = (float)v;
    return MSA_OK;
}

static int cfg_bool(json_t *root, const char *key, int def, int *out) {
    json_t *j = json_object_get(root, key);
    if (!j || json_is_null(j)) *out = def;
    else if (json_is_boolean(j)) *out = json_is_true(j);
    else return msa_error(MSA_EFORMAT, "config.json: '%s' is not a boolean", key);
    return MSA_OK;
}

/* RoPE: transformers 5 writes "rope_parameters": {rope_type, rope_theta,
 * factor, ...}; earlier versions "rope_theta" and an optional
 * "rope_scaling": {rope_type (or type), factor, ...}. Both are read. */
static int cfg_rope(json_t *root, msa_hf_config *cfg) {
    cfg->rope_type = MSA_HF_ROPE_DEFAULT;
    cfg->rope_factor = 1.0f;
    cfg->rope_low_freq_factor = 1.0f;
    cfg->rope_high_freq_factor = 4.0f;
    cfg->rope_original_max_pos = 8192;
    json_t *rs = json_object_get(root, "rope_parameters");
    int rc;
    if (rs && !json_is_null(rs)) {
        if (!json_is_object(rs))
            return msa_error(MSA_EFORMAT, "config.json: rope_parameters is not "
                             "an object");
        if ((rc = cfg_float(rs, "rope_theta", cfg->rope_theta, &cfg->rope_theta)))
            return rc;
    } else {
        rs = json_object_get(root, "rope_scaling");
    }
    if (!rs || json_is_null(rs)) return MSA_OK;
    if (!json_is_object(rs))
        return msa_error(MSA_EFORMAT, "config.json: rope_scaling is not an object");
    json_t *jt = json_object_get(rs, "rope_type");
    if (!jt) jt = json_object_get(rs, "type"); /* older configs */
    const char *type = json_is_string(jt) ? json_string_value(jt) : "default";
    rc = cfg_float(rs, "factor", 1.0, &cfg->rope_factor);
    if (rc) return rc;
    if (strcmp(type, "default") == 0) return MSA_OK;
    if (!(cfg->rope_factor > 0))
        return msa_error(MSA_EFORMAT, "config.json: rope_scaling.factor %g",
                         cfg->rope_factor);
    if (strcmp(type, "linear") == 0) {
        cfg->rope_type = MSA_HF_ROPE_LINEAR;
        return MSA_OK;
    }
    if (strcmp(type, "llama3") == 0) {
        cfg->rope_type = MSA_HF_ROPE_LLAMA3;
        if ((rc = cfg_float(rs, "low_freq_factor", 1.0, &cfg->rope_low_freq_factor)) ||
            (rc = cfg_float(rs, "high_freq_factor", 4.0, &cfg->rope_high_freq_factor)) ||
            (rc = cfg_int(rs, "original_max_position_embeddings", 8192,
                          &cfg->rope_original_max_pos)))
            return rc;
        if (!(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor) ||
            cfg->rope_original_max_pos <= 0)
            return msa_error(MSA_EFORMAT, "config.json: llama3 rope_scaling "
                             "needs high_freq_factor > low_freq_factor and a "
                             "positive original_max_position_embeddings");
        return MSA_OK;
    }
    return msa_error(MSA_EUNSUPPORTED, "config.json: rope_scaling type '%s' is "
                     "not supported (default, linear and llama3 are)", type);
}

int msa_hf_config_parse(const char *text, size_t size, msa_hf_config *cfg) {
    if (!text || !cfg) return msa_error(MSA_EINVAL, "config.json: NULL argument");
    memset(cfg, 0, sizeof *cfg);
    json_error_t jerr;
    json_t *root = json_loadb(text, size, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return msa_error(MSA_EFORMAT, "config.json: line %d column %d: %s",
                         jerr.line, jerr.column, jerr.text);
    int rc = MSA_OK;
    if (!json_is_object(root)) {
        rc = msa_error(MSA_EFORMAT, "config.json: not a JSON object");
        goto out;
    }
    /* Architecture: architectures[0], else model_type. */
    json_t *ja = json_object_get(root, "architectures");
    const char *arch = NULL;
    if (json_is_array(ja) && json_array_size(ja) > 0 &&
        json_is_string(json_array_get(ja, 0)))
        arch = json_string_value(json_array_get(ja, 0));
    json_t *jm = json_object_get(root, "model_type");
    const char *mtype = json_is_string(jm) ? json_string_value(jm) : "";
    if (arch ? (!strcmp(arch, "LlamaForCausalLM") ||
                !strcmp(arch, "MistralForCausalLM"))
             : (!strcmp(mtype, "llama") || !strcmp(mtype, "mistral"))) {
        cfg->arch = MSA_HF_ARCH_LLAMA;
    } else if (arch ? !strcmp(arch, "Qwen2ForCausalLM") : !strcmp(mtype, "qwen2")) {
        cfg->arch = MSA_HF_ARCH_QWEN2;
    } else {
        rc = msa_error(MSA_EUNSUPPORTED, "config.json: architecture '%s' is not "
                       "supported (LlamaForCausalLM, Qwen2ForCausalLM are)",
                       arch ? arch : mtype);
        goto out;
    }
    snprintf(cfg->arch_name, sizeof cfg->arch_name, "%s", arch ? arch : mtype);
    int is_qwen = cfg->arch == MSA_HF_ARCH_QWEN2;
    if ((rc = cfg_int(root, "hidden_size", -1, &cfg->hidden_size)) ||
        (rc = cfg_int(root, "intermediate_size", -1, &cfg->intermediate_size)) ||
        (rc = cfg_int(root, "num_hidden_layers", -1, &cfg->num_hidden_layers)) ||
        (rc = cfg_int(root, "num_attention_heads", -1, &cfg->num_attention_heads)) ||
        (rc = cfg_int(root, "vocab_size", -1, &cfg->vocab_size)))
        goto out;
    if (cfg->num_attention_heads <= 0 || cfg->hidden_size <= 0) {
        rc = msa_error(MSA_EFORMAT, "config.json: hidden_size and "
                       "num_attention_heads must be positive");
        goto out;
    }
    if ((rc = cfg_int(root, "num_key_value_heads", cfg->num_attention_heads,
                      &cfg->num_key_value_heads)) ||
        (rc = cfg_int(root, "head_dim",
                      cfg->hidden_size / cfg->num_attention_heads,
                      &cfg->head_dim)) ||
        (rc = cfg_int(root, "max_position_embeddings", 2048,
                      &cfg->max_position_embeddings)) ||
        (rc = cfg_bool(root, "tie_word_embeddings", 0,
                       &cfg->tie_word_embeddings)) ||
        (rc = cfg_bool(root, "attention_bias", is_qwen, &cfg->attention_bias)) ||
        (rc = cfg_float(root, "rms_norm_eps", 1e-6, &cfg->rms_norm_eps)) ||
        (rc = cfg_float(root, "rope_theta", 10000.0, &cfg->rope_theta)) ||
        (rc = cfg_rope(root, cfg)))
        goto out;
    if (is_qwen) cfg->attention_bias = 1; /* Qwen2 always has q/k/v biases */
    json_t *jd = json_object_get(root, "torch_dtype");
    if (!jd) jd = json_object_get(root, "dtype");
    if (json_is_string(jd))
        snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s",
                 json_string_value(jd));
    /* Consistency. */
    if (cfg->intermediate_size <= 0 || cfg->num_hidden_layers <= 0 ||
        cfg->vocab_size <= 0 || cfg->num_key_value_heads <= 0 ||
        cfg->head_dim <= 0 || cfg->head_dim % 2 != 0 ||
        cfg->num_attention_heads % cfg->num_key_value_heads != 0 ||
        cfg->max_position_embeddings <= 0) {
        rc = msa_error(MSA_EFORMAT, "config.json: inconsistent sizes (layers "
                       "%d, heads %d, kv heads %d, head_dim %d, ffn %d, vocab "
                       "%d): all positive, head_dim even, kv heads dividing "
                       "heads", cfg->num_hidden_layers,
                       cfg->num_attention_heads, cfg->num_key_value_heads,
                       cfg->head_dim, cfg->intermediate_size, cfg->vocab_size);
        goto out;
    }
    if ((int64_t)cfg->num_attention_heads * cfg->head_dim > (1 << 20)) {
        rc = msa_error(MSA_EFORMAT, "config.json: heads x head_dim too large");
        goto out;
    }
    if (!(cfg->rms_norm_eps > 0) || !(cfg->rope_theta > 0)) {
        rc = msa_error(MSA_EFORMAT, "config.json: rms_norm_eps and rope_theta "
                       "must be positive");
        goto out;
    }
out:
    json_decref(root);
    return rc;
}

int msa_hf_config_read(const char *dir, msa_hf_config *cfg) {
    if (!dir || !cfg) return msa_error(MSA_EINVAL, "config.json: NULL argument");
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return msa_error(MSA_EINVAL, "%s: path too long", dir);
    FILE *f;
    int orc = msa_file_fopen_read(path, &f); /* a FIFO is refused, never waited on */
    if (orc) return orc;
    char *buf = malloc(1 << 20);
    if (!buf) {
        fclose(f);
        return msa_error(MSA_ENOMEM, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, 1 << 20, f);
    int err = ferror(f), more = !err && fgetc(f) != EOF;
    fclose(f);
    int rc;
    if (err) rc = msa_error(MSA_EIO, "%s: read error", path);
    else if (more) rc = msa_error(MSA_EFORMAT, "%s: larger than 1 MiB", path);
    else rc = msa_error_context(msa_hf_config_parse(buf, n, cfg), "%s: ", dir);
    free(buf);
    return rc;
}

void msa_hf_rope_inv_freq(const msa_hf_config *cfg, float *inv_freq) {
    int half = cfg->head_dim / 2;
    const double pi = 3.14159265358979323846;
    for (int i = 0; i < half; i++) {
        double f = pow((double)cfg->rope_theta, -2.0 * i / cfg->head_dim);
        if (cfg->rope_type == MSA_HF_ROPE_LINEAR) {
            f /= cfg->rope_factor;
        } else if (cfg->rope_type == MSA_HF_ROPE_LLAMA3) {
            /* Wavelengths longer than original/low_freq_factor are slowed by
             * `factor`; shorter than original/high_freq_factor are kept; in
             * between, a linear blend in 1/wavelength. */
            double wavelen = 2 * pi / f;
            double low_wl = cfg->rope_original_max_pos / cfg->rope_low_freq_factor;
            double high_wl = cfg->rope_original_max_pos / cfg->rope_high_freq_factor;
            if (wavelen > low_wl) {
                f /= cfg->rope_factor;
            } else if (wavelen >= high_wl) {
                double smooth = (cfg->rope_original_max_pos / wavelen -
                                 cfg->rope_low_freq_factor) /
                                (cfg->rope_high_freq_factor -
                                 cfg->rope_low_freq_factor);
                f = (1 - smooth) * f / cfg->rope_factor + smooth * f;
            }
        }
        inv_freq[i] = (float)f;
    }
}

int msa_hf_is_model_dir(const char *path) {
    if (!path) return 0;
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)) return 0;
    char p[4096];
    if (snprintf(p, sizeof p, "%s/config.json", path) >= (int)sizeof p) return 0;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* ---- weights ------------------------------------------------------------------ */

typedef struct hf_loader {
    msa_model *m;
    msa_safetensors *st;
    const msa_hf_config *cfg;
} hf_loader;

/* Loads tensor `name` as fp32 into a buffer the model owns. Expected shape:
 * (rows, cols), or (rows) when cols == 0. heads > 0: the rows are `heads`
 * heads of head_dim rows in rotate-half order, permuted here to interleaved
 * order (row h*d + 2i + j takes HF row h*d + j*d/2 + i). *dst is NULL and
 * MSA_OK returned when the tensor is absent and !required. */
static int hf_load(hf_loader *L, const char *name, int required, int64_t rows,
                   int64_t cols, int heads, const float **dst) {
    *dst = NULL;
    msa_st_tensor t;
    int rc = msa_safetensors_find(L->st, name, &t);
    if (rc == MSA_ENOTFOUND && !required) {
        msa_error_clear();
        return MSA_OK;
    }
    if (rc == MSA_ENOTFOUND)
        return msa_error(MSA_EFORMAT, "tensor '%s' is missing", name);
    if (rc) return rc;
    int dims = cols ? 2 : 1;
    if (t.n_dims != dims || t.shape[0] != rows || (cols && t.shape[1] != cols))
        return msa_error(MSA_EFORMAT, "tensor '%s': shape [%lld%s%lld], expected "
                         "[%lld%s%lld]", name, (long long)t.shape[0],
                         t.n_dims > 1 ? ", " : "",
                         t.n_dims > 1 ? (long long)t.shape[1] : 0LL,
                         (long long)rows, cols ? ", " : "",
                         cols ? (long long)cols : 0LL);
    if (!t.supported)
        return msa_error(MSA_EUNSUPPORTED, "tensor '%s': dtype %s (F32, F16 "
                         "and BF16 are supported)", name,
                         msa_st_dtype_name(t.st_dtype));
    float *buf;
    if ((rc = msa_model_alloc(L->m, (size_t)t.n_elements, &buf))) return rc;
    if (!heads) {
        rc = msa_st_tensor_read_f32(&t, 0, t.n_elements, buf);
        *dst = buf;
        return rc;
    }
    int64_t d = L->cfg->head_dim, w = cols ? cols : 1;
    if (rows != heads * d)
        return msa_error(MSA_EFORMAT, "tensor '%s': %lld rows for %d heads",
                         name, (long long)rows, heads);
    for (int64_t h = 0; h < heads; h++)
        for (int64_t k = 0; k < d; k++) {
            int64_t hf_row = h * d + (k % 2) * (d / 2) + k / 2;
            rc = msa_st_tensor_read_f32(&t, hf_row * w, w, buf + (h * d + k) * w);
            if (rc) return rc;
        }
    *dst = buf;
    return MSA_OK;
}

/* SHA-256 over, per tensor in name order, its name, dtype, shape and bytes:
 * the identity a session is bound to. Format-specific by design (the same
 * weights as GGUF fingerprint differently). */
static void hf_fingerprint(hf_loader *L) {
    msa_sha256_ctx s;
    msa_sha256_init(&s);
    msa_sha256_update(&s, "msa-hf 1", 8);
    for (int i = 0; i < msa_safetensors_count(L->st); i++) {
        msa_st_tensor t;
        if (msa_safetensors_get(L->st, i, &t)) continue;
        msa_sha256_update(&s, t.name, strlen(t.name) + 1);
        const char *dn = msa_st_dtype_name(t.st_dtype);
        msa_sha256_update(&s, dn, strlen(dn) + 1);
        msa_sha256_update(&s, t.shape, sizeof(int64_t) * (size_t)t.n_dims);
        msa_sha256_update(&s, t.data, (size_t)t.size);
    }
    uint8_t dig[MSA_SHA256_DIGEST_SIZE];
    char hex[MSA_SHA256_HEX_SIZE];
    msa_sha256_final(&s, dig);
    msa_sha256_hex(dig, hex);
    snprintf(L->m->info.fingerprint, sizeof L->m->info.fingerprint, "%s", hex);
}

static int hf_load_weights(hf_loader *L) {
    const msa_hf_config *c = L->cfg;
    msa_model *m = L->m;
    const int64_t D = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    const int Hq = c->num_attention_heads, Hkv = c->num_key_value_heads;
    const int64_t qd = (int64_t)Hq * c->head_dim, kvd = (int64_t)Hkv * c->head_dim;
    int is_qwen = c->arch == MSA_HF_ARCH_QWEN2;
    int rc;
    if ((rc = hf_load(L, "model.embed_tokens.weight", 1, V, D, 0, &m->tok_embd)) ||
        (rc = hf_load(L, "model.norm.weight", 1, D, 0, 0, &m->output_norm)))
        return rc;
    if (c->tie_word_embeddings) {
        m->output = m->tok_embd;
    } else if ((rc = hf_load(L, "lm_head.weight", 1, V, D, 0, &m->output))) {
        return msa_error_context(rc, "tie_word_embeddings is false: ");
    }
    /* at least 9 tensors a layer: a layer count the files cannot hold is
     * refused before it sizes anything (as for GGUF's block_count) */
    if ((int64_t)c->num_hidden_layers > msa_safetensors_count(L->st) / 9)
        return msa_error(MSA_EFORMAT, "config.json: num_hidden_layers %d, but the weights hold "
                         "%d tensors", c->num_hidden_layers, msa_safetensors_count(L->st));
    m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers);
    if (!m->layers) return msa_error(MSA_ENOMEM, "model: %d layers", c->num_hidden_layers);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        msa_model_layer *y = &m->layers[l];
        char n[160];
#define HF(field, suffix, req, rows, cols, heads)                                   \
    do {                                                                        \
        snprintf(n, sizeof n, "model.layers.%d.%s", l, suffix);                 \
        if ((rc = hf_load(L, n, req, rows, cols, heads, &y->field))) return rc; \
    } while (0)
        HF(attn_norm, "input_layernorm.weight", 1, D, 0, 0);
        HF(wq, "self_attn.q_proj.weight", 1, qd, D, Hq);
        HF(wk, "self_attn.k_proj.weight", 1, kvd, D, Hkv);
        HF(wv, "self_attn.v_proj.weight", 1, kvd, D, 0);
        HF(wo, "self_attn.o_proj.weight", 1, D, qd, 0);
        if (c->attention_bias) {
            /* Qwen2: q/k/v biases; Llama with attention_bias: o too. */
            HF(bq, "self_attn.q_proj.bias", 1, qd, 0, Hq);
            HF(bk, "self_attn.k_proj.bias", 1, kvd, 0, Hkv);
            HF(bv, "self_attn.v_proj.bias", 1, kvd, 0, 0);
            if (!is_qwen) HF(bo, "self_attn.o_proj.bias", 1, D, 0, 0);
        }
        HF(ffn_norm, "post_attention_layernorm.weight", 1, D, 0, 0);
        HF(w1, "mlp.gate_proj.weight", 1, F, D, 0);
        HF(w2, "mlp.down_proj.weight", 1, D, F, 0);
        HF(w3, "mlp.up_proj.weight", 1, F, D, 0);
#undef HF
    }
    return MSA_OK;
}

int msa_model_load_hf(const char *dir, const msa_model_params *p, msa_model *m) {
    (void)p;
    msa_hf_config cfg;
    int rc = msa_hf_config_read(dir, &cfg);
    if (rc) return rc;
    msa_model_info *I = &m->info;
    snprintf(I->arch, sizeof I->arch, "%s",
             cfg.arch == MSA_HF_ARCH_QWEN2 ? "qwen2" : "llama");
    I->n_layers = cfg.num_hidden_layers;
    I->dim = cfg.hidden_size;
    I->n_heads = cfg.num_attention_heads;
    I->n_kv_heads = cfg.num_key_value_heads;
    I->head_dim = cfg.head_dim;
    I->ff_dim = cfg.intermediate_size;
    I->vocab_size = cfg.vocab_size;
    I->context_length = cfg.max_position_embeddings;
    I->rope_theta = cfg.rope_theta;
    m->rms_eps = cfg.rms_norm_eps;
    m->rope_neox = 0; /* q/k rows are permuted to interleaved pairs below */
    if (cfg.rope_type != MSA_HF_ROPE_DEFAULT) {
        float *f;
        if ((rc = msa_model_alloc(m, (size_t)cfg.head_dim / 2, &f))) return rc;
        msa_hf_rope_inv_freq(&cfg, f);
        m->rope_inv_freq = f;
    }
    hf_loader L = {m, NULL, &cfg};
    if ((rc = msa_safetensors_open(dir, &L.st))) return rc;
    rc = hf_load_weights(&L);
    if (!rc) hf_fingerprint(&L);
    msa_safetensors_close(L.st);
    if (rc) return rc;
    return msa_model_validate(m);
}
