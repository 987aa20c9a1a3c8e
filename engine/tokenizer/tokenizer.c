/*
 * tokenizer.c: the tokenizer object and what both families share: the
 * vocabulary and its hash map, opening by path (GGUF, tokenizer.json, a
 * directory, llama2.c .bin), splitting text around special tokens, the pair
 * merge engine (a binary heap of candidate pairs over a linked list of
 * symbols, as llama.cpp's SPM and BPE tokenizers do), decoding, and the
 * streaming decoder that only ever emits whole UTF-8 characters.
 *
 * The family encoders live in tokenizer_spm.c and tokenizer_bpe.c, the
 * loaders in tokenizer_json.c, tokenizer_gguf.c and tokenizer_spm.c.
 */
#include "engine/tokenizer/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"

/* ---- building --------------------------------------------------------------- */

int msa_tok_new(msa_tok_family family, int32_t n_vocab, msa_tokenizer **out) {
    *out = NULL;
    if (n_vocab <= 0) return msa_error(MSA_EFORMAT, "tokenizer: empty vocabulary");
    msa_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return msa_error(MSA_ENOMEM, "tokenizer: out of memory");
    t->family = family;
    t->n_vocab = n_vocab;
    t->off = calloc((size_t)n_vocab, sizeof *t->off);
    t->len = calloc((size_t)n_vocab, sizeof *t->len);
    t->score = calloc((size_t)n_vocab, sizeof *t->score);
    t->type = calloc((size_t)n_vocab, 1);
    t->bos = t->eos = t->unk = t->pad = t->eot = -1;
    memcpy(t->space, "\xe2\x96\x81", 3);
    t->space_len = 3;
    snprintf(t->pre, sizeof t->pre, "gpt-2");
    if (!t->off || !t->len || !t->score || !t->type) {
        msa_tokenizer_free(t);
        return msa_error(MSA_ENOMEM, "tokenizer: out of memory");
    }
    *out = t;
    return MSA_OK;
}

int msa_tok_set_token(msa_tokenizer *t, int32_t id, const char *s, size_t len,
                      float score, int type) {
    if (id < 0 || id >= t->n_vocab)
        return msa_error(MSA_EINVAL, "tokenizer: token id %d outside vocab of %d",
                         (int)id, (int)t->n_vocab);
    if (t->arena_len + len + 1 > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap * 2 : 1 << 16;
        while (cap < t->arena_len + len + 1) cap *= 2;
        char *a = realloc(t->arena, cap);
        if (!a) return msa_error(MSA_ENOMEM, "tokenizer: out of memory");
        t->arena = a;
        t->arena_cap = cap;
    }
    memcpy(t->arena + t->arena_len, s, len);
    t->arena[t->arena_len + len] = 0;
    t->off[id] = (uint32_t)t->arena_len;
    t->len[id] = (uint32_t)len;
    t->arena_len += len + 1;
    t->score[id] = score;
    t->type[id] = (uint8_t)type;
    return MSA_OK;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static inline const char *piece(const msa_tokenizer *t, int32_t id) {
    return t->arena + t->off[id];
}

int msa_tok_index(msa_tokenizer *t) {
    if (t->slots) return MSA_OK;
    uint32_t cap = 1;
    while (cap < (uint32_t)t->n_vocab * 2u) cap <<= 1;
    t->slots = malloc((size_t)cap * sizeof *t->slots);
    if (!t->slots) return msa_error(MSA_ENOMEM, "tokenizer: out of memory");
    memset(t->slots, 0xff, (size_t)cap * sizeof *t->slots);
    t->slot_mask = cap - 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (t->type[id] == MSA_TT_UNDEFINED && t->len[id] == 0) continue;
        uint32_t h = (uint32_t)hash_bytes(piece(t, id), t->len[id]) & t->slot_mask;
        for (;; h = (h + 1) & t->slot_mask) {
            int32_t o = t->slots[h];
            if (o < 0) { t->slots[h] = id; break; }
            if (t->len[o] == t->len[id] && !memcmp(piece(t, o), piece(t, id), t->len[id])) {
                t->slots[h] = id; /* a repeated string: the last id wins */
                break;
            }
        }
    }
    return MSA_OK;
}

int32_t msa_token_lookup(const msa_tokenizer *t, const char *s, size_t len) {
    if (!t || !t->slots || (!s && len)) return -1;
    uint32_t h = (uint32_t)hash_bytes(s, len) & t->slot_mask;
    for (;; h = (h + 1) & t->slot_mask) {
        int32_t o = t->slots[h];
        if (o < 0) return -1;
        if (t->len[o] == len && !memcmp(piece(t, o), s, len)) return o;
    }
}

static inline uint32_t pair_hash(uint64_t key) {
    return (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32);
}

static int pairs_grow(msa_tokenizer *t) {
    uint32_t cap = t->pairs ? (t->pair_mask + 1) * 2 : 1 << 12;
    msa_bpe_pair *p = calloc(cap, sizeof *p);
    if (!p) return msa_error(MSA_ENOMEM, "tokenizer: out of memory");
    for (uint32_t i = 0; t->pairs && i <= t->pair_mask; i++) {
        if (!t->pairs[i].key) continue;
        uint32_t h = pair_hash(t->pairs[i].key) & (cap - 1);
        while (p[h].key) h = (h + 1) & (cap - 1);
        p[h] = t->pairs[i];
    }
    free(t->pairs);
    t->pairs = p;
    t->pair_mask = cap - 1;
    return MSA_OK;
}

int msa_tok_add_merge(msa_tokenizer *t, const char *l, size_t ll, const char *r,
                      size_t rl, int32_t rank) {
    int rc = msa_tok_index(t);
    if (rc) return rc;
    int32_t a = msa_token_lookup(t, l, ll), b = msa_token_lookup(t, r, rl);
    if (a < 0 || b < 0) return MSA_OK;
    char stack[256], *cat = ll + rl <= sizeof stack ? stack : malloc(ll + rl);
    if (!cat) return msa_error(MSA_ENOMEM, "tokenizer: out of memory");
    memcpy(cat, l, ll);
    memcpy(cat + ll, r, rl);
    int32_t res = msa_token_lookup(t, cat, ll + rl);
    if (cat != stack) free(cat);
    if (res < 0) return MSA_OK;
    if (!t->pairs || (t->n_pairs + 1) * 2 > t->pair_mask + 1) {
        rc = pairs_grow(t);
        if (rc) return rc;
    }
    uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
    uint32_t h = pair_hash(key) & t->pair_mask;
    for (;; h = (h + 1) & t->pair_mask) {
        if (t->pairs[h].key == key) return MSA_OK; /* first rank wins */
        if (!t->pairs[h].key) break;
    }
    t->pairs[h].key = key;
    t->pairs[h].rank = rank;
    t->pairs[h].result = res;
    t->n_pairs++;
    return MSA_OK;
}

/* Rank and result of merging ids (a, b); 0 when they do not merge. */
int msa_tok_pair_rank(const msa_tokenizer *t, int32_t a, int32_t b, int32_t *rank,
                      int32_t *result);
int msa_tok_pair_rank(const msa_tokenizer *t, int32_t a, int32_t b, int32_t *rank,
                      int32_t *result) {
    if (!t->pairs) return 0;
    uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
    uint32_t h = pair_hash(key) & t->pair_mask;
    for (;; h = (h + 1) & t->pair_mask) {
        if (!t->pairs[h].key) return 0;
        if (t->pairs[h].key == key) {
            *rank = t->pairs[h].rank;
            *result = t->pairs[h].result;
            return 1;
        }
    }
}

int msa_tok_bpe_compile(msa_tokenizer *t); /* tokenizer_bpe.c */

static int cmp_special(const void *pa, const void *pb, void *ctx) {
    const msa_tokenizer *t = ctx;
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    if (t->len[a] != t->len[b]) return t->len[a] > t->len[b] ? -1 : 1;
    return a < b ? -1 : a > b;
}

static int is_byte_piece(const char *s, size_t n, int *val) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return 0;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
              : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return 0;
        v = v * 16 + d;
    }
    *val = v;
    return 1;
}

int msa_tok_finish(msa_tokenizer *t) {
    int rc = msa_tok_index(t);
    if (rc) return rc;
    for (int i = 0; i < 256; i++) t->byte_tok[i] = t->byte_char_tok[i] = -1;
    int n_special = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        int v;
        if (t->type[id] == MSA_TT_UNDEFINED) t->type[id] = t->len[id] ? MSA_TT_NORMAL : MSA_TT_UNUSED;
        if (t->family == MSA_TOK_SPM && is_byte_piece(piece(t, id), t->len[id], &v)) {
            t->type[id] = MSA_TT_BYTE;
            t->byte_tok[v] = id;
        }
        if ((t->type[id] == MSA_TT_CONTROL || t->type[id] == MSA_TT_USER) && t->len[id])
            n_special++;
    }
    free(t->special);
    t->special = n_special ? malloc((size_t)n_special * sizeof *t->special) : NULL;
    if (n_special && !t->special) return msa_error(MSA_ENOMEM, "tokenizer: out of memory");
    t->n_special = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if ((t->type[id] == MSA_TT_CONTROL || t->type[id] == MSA_TT_USER) && t->len[id])
            t->special[t->n_special++] = id;
    if (t->n_special > 1) /* qsort_r(NULL, 0, ...) is undefined (found by fuzz-gguf) */
    qsort_r(t->special, (size_t)t->n_special, sizeof *t->special, cmp_special, t);

    /* End-of-turn: a control token with one of the usual names. */
    static const char *eot_names[] = {"<|eot_id|>", "<|im_end|>", "<|end|>",
                                      "<end_of_turn>", "<|endoftext|>", NULL};
    for (int i = 0; eot_names[i] && t->eot < 0; i++) {
        int32_t id = msa_token_lookup(t, eot_names[i], strlen(eot_names[i]));
        if (id >= 0 && id != t->eos && t->type[id] == MSA_TT_CONTROL) t->eot = id;
    }

    if (t->family == MSA_TOK_SPM) {
        snprintf(t->kind, sizeof t->kind, "spm");
        return MSA_OK;
    }
    for (int b = 0; b < 256; b++) {
        char u[2];
        int n = msa_bpe_byte_utf8((uint8_t)b, u);
        t->byte_char_tok[b] = msa_token_lookup(t, u, (size_t)n);
    }
    snprintf(t->kind, sizeof t->kind, "bpe:%s", t->pre);
    return msa_tok_bpe_compile(t);
}

void msa_tok_bpe_release(msa_tokenizer *t); /* tokenizer_bpe.c */

void msa_tokenizer_free(msa_tokenizer *t) {
    if (!t) return;
    msa_tok_bpe_release(t);
    free(t->off);
    free(t->len);
    free(t->score);
    free(t->type);
    free(t->arena);
    free(t->slots);
    free(t->pairs);
    free(t->special);
    free(t);
}

/* ---- opening ------------------------------------------------------------------ */

int msa_tokenizer_open(const char *path, msa_tokenizer **out) {
    if (!out) return msa_error(MSA_EINVAL, "msa_tokenizer_open: out is NULL");
    *out = NULL;
    if (!path) return msa_error(MSA_EINVAL, "msa_tokenizer_open: path is NULL");
    struct stat st;
    if (stat(path, &st) != 0) return msa_error_context(msa_error_errno(errno, "%s", path), "tokenizer");
    if (S_ISDIR(st.st_mode)) {
        size_t n = strlen(path) + 32;
        char *p = malloc(n);
        if (!p) return msa_error(MSA_ENOMEM, "tokenizer: out of memory");
        snprintf(p, n, "%s/tokenizer.json", path);
        int rc = access(p, R_OK) == 0
                     ? msa_tokenizer_from_json(p, out)
                     : msa_error(MSA_ENOTFOUND, "tokenizer: %s has no tokenizer.json", path);
        free(p);
        return rc;
    }
    FILE *f;
    int orc = msa_file_fopen_read(path, &f); /* refuses a FIFO instead of waiting on it */
    if (orc) return msa_error_context(orc, "tokenizer");
    unsigned char head[16] = {0};
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    if (got >= 4 && !memcmp(head, "GGUF", 4)) return msa_tokenizer_from_gguf_file(path, out);
    size_t i = 0;
    if (got >= 3 && !memcmp(head, "\xef\xbb\xbf", 3)) i = 3;
    while (i < got && (head[i] == ' ' || head[i] == '\n' || head[i] == '\r' || head[i] == '\t'))
        i++;
    if (i < got && head[i] == '{') return msa_tokenizer_from_json(path, out);
    if (got >= 4) {
        int32_t max_len;
        memcpy(&max_len, head, 4);
        if (max_len > 0 && max_len < 4096) return msa_tokenizer_from_llama2c(path, out);
    }
    return msa_error(MSA_EFORMAT, "tokenizer: %s is neither GGUF, tokenizer.json nor a "
                     "llama2.c tokenizer", path);
}

/* ---- queries ----------------------------------------------------------------- */

int32_t msa_tokenizer_n_vocab(const msa_tokenizer *t) { return t ? t->n_vocab : 0; }
int32_t msa_tokenizer_bos(const msa_tokenizer *t) { return t ? t->bos : -1; }
int32_t msa_tokenizer_eos(const msa_tokenizer *t) { return t ? t->eos : -1; }
int msa_tokenizer_add_bos(const msa_tokenizer *t) { return t && t->add_bos && t->bos >= 0; }
const char *msa_tokenizer_kind(const msa_tokenizer *t) { return t ? t->kind : ""; }

int msa_token_is_eog(const msa_tokenizer *t, int32_t id) {
    return t && id >= 0 && (id == t->eos || id == t->eot);
}

int msa_token_piece(const msa_tokenizer *t, int32_t id, const char **s, size_t *len) {
    if (!t || !s || !len) return msa_error(MSA_EINVAL, "msa_token_piece: NULL argument");
    if (id < 0 || id >= t->n_vocab)
        return msa_error(MSA_EINVAL, "token id %d outside vocab of %d", (int)id,
                         (int)t->n_vocab);
    *s = piece(t, id);
    *len = t->len[id];
    return MSA_OK;
}

/* ---- the merge engine ------------------------------------------------------------- */

typedef struct cand {
    double prio;
    int32_t left, right, llen, rlen, id;
} cand;

int msa_tok_work_reserve(msa_tok_work *w, size_t n_sym, size_t n_buf) {
    if (n_sym > w->sym_cap) {
        size_t cap = n_sym < 64 ? 64 : n_sym * 2;
        void *p = realloc(w->sym, cap * sizeof *w->sym);
        void *q = realloc(w->heap, cap * 2 * sizeof(cand));
        if (p) w->sym = p;
        if (q) w->heap = q;
        if (!p || !q) return msa_error(MSA_ENOMEM, "tokenizer: out of memory");
        w->sym_cap = cap;
        w->heap_cap = cap * 2;
    }
    if (n_buf > w->buf_cap) {
        size_t cap = n_buf < 256 ? 256 : n_buf * 2;
        char *b = realloc(w->buf, cap);
        if (!b) return msa_error(MSA_ENOMEM, "tokenizer: out of memory");
        w->buf = b;
        w->buf_cap = cap;
    }
    return MSA_OK;
}

void msa_tok_work_free(msa_tok_work *w) {
    free(w->sym);
    free(w->heap);
    free(w->buf);
    memset(w, 0, sizeof *w);
}

/* a is better than b: higher priority, then further left. */
static inline int cand_better(const cand *a, const cand *b) {
    if (a->prio != b->prio) return a->prio > b->prio;
    return a->left < b->left;
}

static int heap_push(msa_tok_work *w, size_t *n, const cand *c) {
    if (*n >= w->heap_cap) {
        void *q = realloc(w->heap, w->heap_cap * 2 * sizeof(cand));
        if (!q) return msa_error(MSA_ENOMEM, "tokenizer: out of memory");
        w->heap = q;
        w->heap_cap *= 2;
    }
    cand *h = w->heap;
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_better(c, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = *c;
    return MSA_OK;
}

static cand heap_pop(msa_tok_work *w, size_t *n) {
    cand *h = w->heap, top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && cand_better(&h[c + 1], &h[c])) c++;
        if (!cand_better(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

static int try_pair(const msa_tokenizer *t, msa_tok_work *w, size_t *nh, const char *buf,
                    int32_t l, msa_tok_pair_fn pair) {
    msa_tok_sym *s = w->sym;
    if (l < 0 || s[l].next < 0) return MSA_OK;
    int32_t r = s[l].next;
    cand c = {0, l, r, s[l].len, s[r].len, -1};
    if (!pair(t, buf, &s[l], &s[r], &c.prio, &c.id)) return MSA_OK;
    return heap_push(w, nh, &c);
}

int msa_tok_merge(const msa_tokenizer *t, msa_tok_work *w, const char *buf, int n_sym,
                  msa_tok_pair_fn pair) {
    size_t nh = 0;
    int rc;
    for (int32_t i = 0; i + 1 < n_sym; i++)
        if ((rc = try_pair(t, w, &nh, buf, i, pair))) return rc;
    while (nh) {
        cand c = heap_pop(w, &nh);
        msa_tok_sym *s = w->sym, *l = &s[c.left], *r = &s[c.right];
        /* stale: one side was merged into something else since */
        if (l->len != c.llen || r->len != c.rlen || l->next != c.right || !l->len || !r->len)
            continue;
        l->len += r->len;
        l->id = c.id;
        l->next = r->next;
        if (r->next >= 0) s[r->next].prev = c.left;
        r->len = 0;
        if ((rc = try_pair(t, w, &nh, buf, l->prev, pair))) return rc;
        if ((rc = try_pair(t, w, &nh, buf, c.left, pair))) return rc;
    }
    return MSA_OK;
}

/* ---- encoding ------------------------------------------------------------------ */

typedef struct frag {
    size_t off, len;
    int32_t id; /* >= 0: a special token */
} frag;

int msa_tokenize(const msa_tokenizer *t, const char *text, size_t len, int flags,
                 int32_t *ids, size_t cap, size_t *n_out) {
    if (n_out) *n_out = 0;
    if (!t || !n_out || (!text && len) || (!ids && cap))
        return msa_error(MSA_EINVAL, "msa_tokenize: NULL argument");
    msa_tok_sink sink = {ids, cap, 0};
    if ((flags & MSA_TOK_ADD_BOS) && t->bos >= 0) msa_tok_emit(&sink, t->bos);

    /* Split the text around special tokens, longest first. Without
     * MSA_TOK_PARSE_SPECIAL only user-defined (non-special) added tokens are
     * matched, as llama.cpp and Hugging Face do. */
    size_t nf = len ? 1 : 0, capf = 16;
    frag *fr = malloc(capf * sizeof *fr);
    if (!fr) return msa_error(MSA_ENOMEM, "tokenizer: out of memory");
    fr[0] = (frag){0, len, -1};
    for (int k = 0; k < t->n_special && nf; k++) {
        int32_t sid = t->special[k];
        if (t->type[sid] == MSA_TT_CONTROL && !(flags & MSA_TOK_PARSE_SPECIAL)) continue;
        const char *sp = piece(t, sid);
        size_t sl = t->len[sid];
        for (size_t i = 0; i < nf; i++) {
            if (fr[i].id >= 0 || fr[i].len < sl) continue;
            const char *base = text + fr[i].off;
            const char *hit = memmem(base, fr[i].len, sp, sl);
            if (!hit) continue;
            if (nf + 2 > capf) {
                capf *= 2;
                frag *g = realloc(fr, capf * sizeof *fr);
                if (!g) { free(fr); return msa_error(MSA_ENOMEM, "tokenizer: out of memory"); }
                fr = g;
            }
            size_t pre = (size_t)(hit - base), post = fr[i].len - pre - sl;
            frag after = {fr[i].off + pre + sl, post, -1};
            int n_new = (pre ? 1 : 0) + 1 + (post ? 1 : 0);
            memmove(&fr[i + n_new], &fr[i + 1], (nf - i - 1) * sizeof *fr);
            size_t j = i;
            if (pre) fr[j++] = (frag){fr[i].off, pre, -1};
            fr[j++] = (frag){0, 0, sid};
            if (post) fr[j++] = after;
            nf += (size_t)n_new - 1;
            /* continue with the fragment after the match */
            i = j - (post ? 2 : 1);
        }
    }

    int rc = MSA_OK;
    int first = 1;
    for (size_t i = 0; i < nf && !rc; i++) {
        if (fr[i].id >= 0) {
            msa_tok_emit(&sink, fr[i].id);
            first = 1;
            continue;
        }
        if (t->family == MSA_TOK_SPM)
            rc = msa_tok_encode_spm(t, text + fr[i].off, fr[i].len, first, &sink);
        else
            rc = msa_tok_encode_bpe(t, text + fr[i].off, fr[i].len, &sink);
        first = 0;
    }
    free(fr);
    if (rc) return rc;
    if ((flags & MSA_TOK_ADD_EOS) && t->eos >= 0) msa_tok_emit(&sink, t->eos);
    *n_out = sink.n;
    if (sink.n > cap)
        return msa_error(MSA_ERANGE, "msa_tokenize: %zu ids do not fit in %zu", sink.n, cap);
    return MSA_OK;
}

/* ---- decoding ------------------------------------------------------------------ */

/* Appends the bytes of token `id` to out (at most cap; returns the full
 * count). `strip` drops one leading space (SentencePiece's dummy prefix). */
static size_t decode_token(const msa_tokenizer *t, int32_t id, int flags, int strip,
                           char *out, size_t cap) {
    const char *p = piece(t, id);
    size_t n = t->len[id], k = 0;
#define PUT(c) do { if (k < cap) out[k] = (char)(c); k++; } while (0)
    int ty = t->type[id];
    if (ty == MSA_TT_CONTROL || ty == MSA_TT_UNKNOWN || ty == MSA_TT_UNUSED) {
        if (!(flags & MSA_DETOK_SPECIAL)) return 0;
        for (size_t i = 0; i < n; i++) PUT(p[i]);
        return k;
    }
    if (ty == MSA_TT_USER) {
        for (size_t i = 0; i < n; i++) PUT(p[i]);
        return k;
    }
    if (t->family == MSA_TOK_SPM) {
        if (ty == MSA_TT_BYTE) {
            int b;
            if (is_byte_piece(p, n, &b)) PUT(b);
            return k;
        }
        size_t i = 0;
        int sl = t->space_len;
        if (strip) {
            if (n >= (size_t)sl && !memcmp(p, t->space, (size_t)sl)) i = (size_t)sl;
        }
        while (i < n) {
            if (i + (size_t)sl <= n && !memcmp(p + i, t->space, (size_t)sl)) {
                PUT(' ');
                i += (size_t)sl;
            } else {
                PUT(p[i]);
                i++;
            }
        }
        return k;
    }
    /* byte-level: map each character back to its byte */
    for (size_t i = 0; i < n;) {
        uint8_t c = (uint8_t)p[i];
        int l = msa_utf8_len(c);
        if (i + (size_t)l > n) l = 1;
        uint32_t cp = c;
        if (l == 2) cp = ((c & 0x1fu) << 6) | ((uint8_t)p[i + 1] & 0x3fu);
        int b = l <= 2 ? msa_bpe_cp_byte(cp) : -1;
        if (b >= 0) PUT(b);
        else for (int j = 0; j < l; j++) PUT(p[i + j]);
        i += (size_t)l;
    }
    return k;
#undef PUT
}

static int strip_here(const msa_tokenizer *t, int flags, int32_t prev) {
    return t->family == MSA_TOK_SPM && t->add_space_prefix &&
           !(flags & MSA_DETOK_KEEP_SPACE) && (prev < 0 || prev == t->bos);
}

int msa_detokenize(const msa_tokenizer *t, const int32_t *ids, size_t n, int flags,
                   char *buf, size_t cap, size_t *len_out) {
    if (len_out) *len_out = 0;
    if (!t || !len_out || (!ids && n) || (!buf && cap))
        return msa_error(MSA_EINVAL, "msa_detokenize: NULL argument");
    size_t k = 0;
    int32_t prev = -1;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab)
            return msa_error(MSA_EINVAL, "msa_detokenize: id %d outside vocab of %d",
                             (int)ids[i], (int)t->n_vocab);
        k += decode_token(t, ids[i], flags, strip_here(t, flags, prev), buf + (k < cap ? k : cap),
                          k < cap ? cap - k : 0);
        prev = ids[i];
    }
    *len_out = k;
    if (k > cap)
        return msa_error(MSA_ERANGE, "msa_detokenize: %zu bytes do not fit in %zu", k, cap);
    return MSA_OK;
}

/* ---- streaming ---------------------------------------------------------------- */

void msa_detok_stream_init(msa_detok_stream *s, const msa_tokenizer *t, int flags) {
    memset(s, 0, sizeof *s);
    s->tok = t;
    s->flags = flags;
    s->prev = -1;
}

/* Bytes allowed as the second byte after lead byte c (UTF-8, RFC 3629). */
static int second_ok(uint8_t lead, uint8_t c) {
    if ((c & 0xc0) != 0x80) return 0;
    if (lead == 0xe0) return c >= 0xa0;
    if (lead == 0xed) return c <= 0x9f;
    if (lead == 0xf0) return c >= 0x90;
    if (lead == 0xf4) return c <= 0x8f;
    return 1;
}

static int lead_len(uint8_t c) {
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) return 2;
    if (c >= 0xe0 && c <= 0xef) return 3;
    if (c >= 0xf0 && c <= 0xf4) return 4;
    return 0; /* never valid as a first byte */
}

/* Feeds bytes through the assembler in pend/n_pend, writing whole characters
 * (or U+FFFD for bad ones) to out; returns bytes written (out has room for
 * 3 * n + 3). */
static size_t utf8_feed(unsigned char *pend, int *n_pend, const unsigned char *in, size_t n,
                        char *out) {
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        uint8_t c = in[i];
        if (*n_pend == 0) {
            int need = lead_len(c);
            if (need == 1) { out[k++] = (char)c; i++; continue; }
            if (need == 0) { memcpy(out + k, "\xef\xbf\xbd", 3); k += 3; i++; continue; }
            pend[(*n_pend)++] = c;
            i++;
            continue;
        }
        int need = lead_len(pend[0]);
        int ok = *n_pend == 1 ? second_ok(pend[0], c) : (c & 0xc0) == 0x80;
        if (!ok) { /* the held bytes are a broken character; c starts afresh */
            memcpy(out + k, "\xef\xbf\xbd", 3);
            k += 3;
            *n_pend = 0;
            continue;
        }
        pend[(*n_pend)++] = c;
        i++;
        if (*n_pend == need) {
            memcpy(out + k, pend, (size_t)need);
            k += (size_t)need;
            *n_pend = 0;
        }
    }
    return k;
}

int msa_detok_stream_push(msa_detok_stream *s, int32_t id, char *buf, size_t cap,
                          size_t *len_out) {
    if (len_out) *len_out = 0;
    if (!s || !s->tok || !len_out || (!buf && cap))
        return msa_error(MSA_EINVAL, "msa_detok_stream_push: NULL argument");
    const msa_tokenizer *t = s->tok;
    if (id < 0 || id >= t->n_vocab)
        return msa_error(MSA_EINVAL, "msa_detok_stream_push: id %d outside vocab of %d",
                         (int)id, (int)t->n_vocab);
    int strip = strip_here(t, s->flags, s->prev);
    char raw_s[256], out_s[3 * 256 + 8];
    size_t n = decode_token(t, id, s->flags, strip, NULL, 0);
    char *raw = n <= sizeof raw_s ? raw_s : malloc(n);
    char *out = n <= sizeof raw_s ? out_s : malloc(3 * n + 8);
    if (!raw || !out) {
        if (raw != raw_s) free(raw);
        if (out != out_s) free(out);
        return msa_error(MSA_ENOMEM, "tokenizer: out of memory");
    }
    decode_token(t, id, s->flags, strip, raw, n);
    unsigned char pend[4];
    int n_pend = s->n_pend;
    memcpy(pend, s->pend, 4);
    size_t k = utf8_feed(pend, &n_pend, (const unsigned char *)raw, n, out);
    int rc = MSA_OK;
    if (k > cap) {
        rc = msa_error(MSA_ERANGE, "msa_detok_stream_push: %zu bytes do not fit in %zu", k, cap);
    } else {
        memcpy(buf, out, k);
        memcpy(s->pend, pend, 4);
        s->n_pend = n_pend;
        s->prev = id;
    }
    *len_out = k;
    if (raw != raw_s) free(raw);
    if (out != out_s) free(out);
    return rc;
}

int msa_detok_stream_flush(msa_detok_stream *s, char *buf, size_t cap, size_t *len_out) {
    if (len_out) *len_out = 0;
    if (!s || !len_out || (!buf && cap))
        return msa_error(MSA_EINVAL, "msa_detok_stream_flush: NULL argument");
    size_t k = s->n_pend ? 3 : 0;
    *len_out = k;
    if (k > cap)
        return msa_error(MSA_ERANGE, "msa_detok_stream_flush: 3 bytes do not fit in %zu", cap);
    if (k) memcpy(buf, "\xef\xbf\xbd", 3);
    msa_detok_stream_init(s, s->tok, s->flags);
    return MSA_OK;
}
