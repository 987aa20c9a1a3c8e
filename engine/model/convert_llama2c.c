/*
 * convert_llama2c.c: llama2.c checkpoint + tokenizer -> GGUF (arch "llama").
 *
 * Input checkpoint (llama2.c's legacy export): 7 int32 (dim, hidden_dim,
 * n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size
 * means an unshared classifier), then fp32 tok_emb (V, D), rms_att (L, D),
 * wq (L, Hq*d, D), wk (L, Hkv*d, D), wv (L, Hkv*d, D), wo (L, D, Hq*d),
 * rms_ffn (L, D), w1 (L, F, D), w2 (L, D, F), w3 (L, F, D), rms_final (D),
 * two legacy RoPE tables (seq_len * d/2 floats each, skipped), and
 * wcls (V, D) when unshared. Tokenizer: int32 max_token_length, then per
 * token f32 score, int32 len, len bytes.
 *
 * Every matrix is row-major (out, in), which is exactly a GGUF tensor with
 * ne = {in, out}: the bytes are written as they are (F32), mapped from the
 * input, not copied.
 *
 * RoPE convention. llama2.c rotates the interleaved pairs (0,1), (2,3), ...
 * of each head by pos * 10000^(-2i/d); llama.cpp's "normal" rope mode, which
 * GGUF "llama" files use, rotates the same pairs with the same frequencies.
 * (Hugging Face checkpoints rotate halves, which is why llama.cpp's HF
 * converter permutes q/k rows; llama2.c's exporter already wrote Meta's
 * interleaved layout.) So q and k are written without any permutation, and
 * llama.rope.freq_base is 10000.
 *
 * Tokenizer. llama2.c pieces carry plain spaces where SentencePiece has
 * U+2581; the GGUF "llama" vocabulary uses U+2581, so spaces are mapped
 * back. Token types follow llama.cpp: id 0 "<unk>" UNKNOWN (2), ids 1 "<s>"
 * and 2 "</s>" CONTROL (3) (the .bin spells them "\n<s>\n", "\n</s>\n"),
 * "<0xNN>" pieces BYTE (6), everything else NORMAL (1).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/model/gguf.h"
#include "base/base.h"

typedef struct mapped {
    const uint8_t *p;
    size_t size;
} mapped;

static int map_file(const char *path, mapped *m) {
    m->p = NULL;
    m->size = 0;
    int fd;
    struct stat st;
    int rc = msa_file_open_read(path, &fd, &st); /* a FIFO is refused, never waited on */
    if (rc) return rc;
    if (st.st_size == 0) {
        close(fd);
        return msa_error(MSA_EFORMAT, "%s: an empty file", path);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) return msa_error_errno(e, "%s: mmap", path);
    m->p = p;
    m->size = (size_t)st.st_size;
    return MSA_OK;
}

/* MSA_EEXIST when out_path is the same file as `in` (by device and inode:
 * another name, a hard link or a symbolic link to it count). */
static int not_an_input(const char *out_path, const char *in) {
    struct stat so, si;
    if (stat(out_path, &so) != 0 || stat(in, &si) != 0) return MSA_OK;
    if (so.st_dev == si.st_dev && so.st_ino == si.st_ino)
        return msa_error(MSA_EEXIST, "%s is the input %s: refusing to overwrite it (write to "
                         "another file)", out_path, in);
    return MSA_OK;
}

static void unmap_file(mapped *m) {
    if (m->p) munmap((void *)m->p, m->size);
}

/* The tokenizer's pieces, converted, with their scores and types. */
typedef struct vocab {
    char **pieces;
    size_t *lens;
    float *scores;
    int32_t *types;
    int n;
} vocab;

static void vocab_free(vocab *v) {
    if (v->pieces)
        for (int i = 0; i < v->n; i++) free(v->pieces[i]);
    free(v->pieces);
    free(v->lens);
    free(v->scores);
    free(v->types);
}

static int is_byte_piece(const uint8_t *s, size_t n) {
    static const char hex[] = "0123456789ABCDEFabcdef";
    return n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && s[3] && s[4] &&
           strchr(hex, s[3]) && strchr(hex, s[4]);
}

static int read_vocab(const char *path, int n_vocab, vocab *v) {
    mapped f;
    int rc = map_file(path, &f);
    if (rc) return rc;
    memset(v, 0, sizeof *v);
    v->pieces = calloc((size_t)n_vocab, sizeof *v->pieces);
    v->lens = calloc((size_t)n_vocab, sizeof *v->lens);
    v->scores = calloc((size_t)n_vocab, sizeof *v->scores);
    v->types = calloc((size_t)n_vocab, sizeof *v->types);
    if (!v->pieces || !v->lens || !v->scores || !v->types) {
        rc = msa_error(MSA_ENOMEM, "tokenizer of %d tokens", n_vocab);
        goto done;
    }
    v->n = n_vocab;
    size_t off = 4; /* max_token_length, unused */
    if (f.size < off) {
        rc = msa_error(MSA_EFORMAT, "%s: truncated header", path);
        goto done;
    }
    for (int i = 0; i < n_vocab; i++) {
        int32_t len;
        if (f.size - off < 8) {
            rc = msa_error(MSA_EFORMAT, "%s: truncated at token %d of %d", path, i, n_vocab);
            goto done;
        }
        memcpy(&v->scores[i], f.p + off, 4);
        memcpy(&len, f.p + off + 4, 4);
        off += 8;
        if (len < 0 || (size_t)len > f.size - off) {
            rc = msa_error(MSA_EFORMAT, "%s: token %d has length %d with %zu bytes left", path,
                           i, len, f.size - off);
            goto done;
        }
        const uint8_t *s = f.p + off;
        off += (size_t)len;
        /* Control tokens by id, byte tokens by spelling, spaces -> U+2581. */
        const char *fixed = i == 0 ? "<unk>" : i == 1 ? "<s>" : i == 2 ? "</s>" : NULL;
        size_t cap = fixed ? strlen(fixed) + 1 : (size_t)len * 3 + 1;
        char *out = malloc(cap);
        if (!out) {
            rc = msa_error(MSA_ENOMEM, "tokenizer");
            goto done;
        }
        size_t n = 0;
        if (fixed) {
            n = strlen(fixed);
            memcpy(out, fixed, n);
            v->types[i] = i == 0 ? 2 : 3;
        } else if (is_byte_piece(s, (size_t)len)) {
            memcpy(out, s, (size_t)len);
            n = (size_t)len;
            v->types[i] = 6;
        } else {
            for (int32_t j = 0; j < len; j++) {
                if (s[j] == ' ') {
                    memcpy(out + n, "\xe2\x96\x81", 3);
                    n += 3;
                } else {
                    out[n++] = (char)s[j];
                }
            }
            v->types[i] = 1;
        }
        out[n] = 0;
        v->pieces[i] = out;
        v->lens[i] = n;
    }
    if (off != f.size)
        rc = msa_error(MSA_EFORMAT, "%s: %zu bytes after the %d tokens (wrong vocabulary size?)",
                       path, f.size - off, n_vocab);
done:
    unmap_file(&f);
    return rc;
}

int msa_convert_llama2c(const char *model_bin, const char *tokenizer_bin, const char *out_path) {
    if (!model_bin || !tokenizer_bin || !out_path)
        return msa_error(MSA_EINVAL, "msa_convert_llama2c: NULL argument");
    mapped f;
    vocab voc;
    memset(&voc, 0, sizeof voc);
    msa_gguf_writer *w = NULL;
    int rc;
    if ((rc = not_an_input(out_path, model_bin)) || (rc = not_an_input(out_path, tokenizer_bin)))
        return rc;
    if ((rc = map_file(model_bin, &f))) return rc;

    int32_t h[7];
    if (f.size < sizeof h) {
        rc = msa_error(MSA_EFORMAT, "%s: %zu bytes, too short for a llama2.c header", model_bin,
                       f.size);
        goto done;
    }
    memcpy(h, f.p, sizeof h);
    const int shared = h[5] > 0;
    const int64_t D = h[0], F = h[1], L = h[2], Hq = h[3], Hkv = h[4],
                  V = h[5] > 0 ? h[5] : -(int64_t)h[5], S = h[6];
    if (D <= 0 || F <= 0 || L <= 0 || Hq <= 0 || Hkv <= 0 || V <= 0 || S <= 0 || D % Hq ||
        Hq % Hkv || (D / Hq) % 2 || D > (1 << 16) || F > (1 << 20) || L > 4096 ||
        V > (1 << 24) || S > (1 << 24)) {
        rc = msa_error(MSA_EFORMAT, "%s: implausible llama2.c header (dim %d, hidden %d, layers "
                       "%d, heads %d, kv heads %d, vocab %d, seq_len %d)", model_bin, h[0], h[1],
                       h[2], h[3], h[4], h[5], h[6]);
        goto done;
    }
    const int64_t d = D / Hq, kvd = Hkv * d;
    /* Offsets in floats after the header. */
    int64_t o = 0;
    const int64_t o_emb = o;    o += V * D;
    const int64_t o_rms = o;    o += L * D;
    const int64_t o_wq = o;     o += L * D * D;
    const int64_t o_wk = o;     o += L * kvd * D;
    const int64_t o_wv = o;     o += L * kvd * D;
    const int64_t o_wo = o;     o += L * D * D;
    const int64_t o_rmsf = o;   o += L * D;
    const int64_t o_w1 = o;     o += L * F * D;
    const int64_t o_w2 = o;     o += L * D * F;
    const int64_t o_w3 = o;     o += L * F * D;
    const int64_t o_final = o;  o += D;
    o += S * d;                 /* two legacy RoPE tables, S * d/2 floats each */
    const int64_t o_cls = o;    o += shared ? 0 : V * D;
    if ((uint64_t)o > (f.size - sizeof h) / 4) {
        rc = msa_error(MSA_EFORMAT, "%s: %zu bytes, the header's shapes need %lld", model_bin,
                       f.size, (long long)(o * 4 + (int64_t)sizeof h));
        goto done;
    }
    const float *W = (const float *)(f.p + sizeof h); /* 28-byte offset: 4-aligned */

    if ((rc = read_vocab(tokenizer_bin, (int)V, &voc))) goto done;
    if ((rc = msa_gguf_writer_init(&w)) || (rc = msa_gguf_writer_protect_path(w, model_bin)) ||
        (rc = msa_gguf_writer_protect_path(w, tokenizer_bin)))
        goto done;
    if ((rc = msa_gguf_writer_set_str(w, "general.architecture", "llama")) ||
        (rc = msa_gguf_writer_set_str(w, "general.name", "llama2.c")) ||
        (rc = msa_gguf_writer_set_u32(w, "general.alignment", 32)) ||
        (rc = msa_gguf_writer_set_u32(w, "general.file_type", 0)) ||
        (rc = msa_gguf_writer_set_u32(w, "llama.context_length", (uint32_t)S)) ||
        (rc = msa_gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)D)) ||
        (rc = msa_gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)F)) ||
        (rc = msa_gguf_writer_set_u32(w, "llama.block_count", (uint32_t)L)) ||
        (rc = msa_gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)Hq)) ||
        (rc = msa_gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)Hkv)) ||
        (rc = msa_gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)d)) ||
        (rc = msa_gguf_writer_set_f32(w, "llama.rope.freq_base", 10000.0f)) ||
        (rc = msa_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f)) ||
        (rc = msa_gguf_writer_set_u32(w, "llama.vocab_size", (uint32_t)V)) ||
        (rc = msa_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama")) ||
        (rc = msa_gguf_writer_set_str_array(w, "tokenizer.ggml.tokens",
                                            (const char *const *)voc.pieces, voc.lens,
                                            (uint64_t)V)) ||
        (rc = msa_gguf_writer_set_array(w, "tokenizer.ggml.scores", MSA_GGUF_FLOAT32,
                                        (uint64_t)V, voc.scores)) ||
        (rc = msa_gguf_writer_set_array(w, "tokenizer.ggml.token_type", MSA_GGUF_INT32,
                                        (uint64_t)V, voc.types)) ||
        (rc = msa_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0)) ||
        (rc = msa_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1)) ||
        (rc = msa_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2)) ||
        (rc = msa_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", 1)) ||
        (rc = msa_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", 0)) ||
        (rc = msa_gguf_writer_set_bool(w, "tokenizer.ggml.add_space_prefix", 1)))
        goto done;

    int64_t ne[2];
#define ADD(name, off, a, b)                                                          \
    do {                                                                              \
        ne[0] = (a);                                                                  \
        ne[1] = (b);                                                                  \
        if ((rc = msa_gguf_writer_add_tensor(w, name, MSA_GGML_F32, (b) ? 2 : 1, ne,   \
                                             W + (off))))                             \
            goto done;                                                                \
    } while (0)
    ADD("token_embd.weight", o_emb, D, V);
    for (int64_t l = 0; l < L; l++) {
        char nm[64];
#define ADDL(suffix, off, a, b)                                 \
    do {                                                        \
        snprintf(nm, sizeof nm, "blk.%lld.%s", (long long)l, suffix); \
        ADD(nm, off, a, b);                                     \
    } while (0)
        ADDL("attn_norm.weight", o_rms + l * D, D, 0);
        ADDL("attn_q.weight", o_wq + l * D * D, D, D);
        ADDL("attn_k.weight", o_wk + l * kvd * D, D, kvd);
        ADDL("attn_v.weight", o_wv + l * kvd * D, D, kvd);
        ADDL("attn_output.weight", o_wo + l * D * D, D, D);
        ADDL("ffn_norm.weight", o_rmsf + l * D, D, 0);
        ADDL("ffn_gate.weight", o_w1 + l * F * D, D, F);
        ADDL("ffn_down.weight", o_w2 + l * D * F, F, D);
        ADDL("ffn_up.weight", o_w3 + l * F * D, D, F);
#undef ADDL
    }
    ADD("output_norm.weight", o_final, D, 0);
    if (!shared) ADD("output.weight", o_cls, D, V);
#undef ADD
    rc = msa_gguf_writer_write(w, out_path);
done:
    msa_gguf_writer_free(w);
    vocab_free(&voc);
    unmap_file(&f);
    return rc;
}
