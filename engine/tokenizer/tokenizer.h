/*
 * tokenizer.h: the tokenizer's insides, shared by engine/tokenizer*.c and
 * the model loader (which builds a tokenizer from an open GGUF).
 *
 * A tokenizer is a vocabulary (token strings, scores, types, one hash map
 * from string to id) plus what its family needs: for SentencePiece-style
 * vocabs the space marker and the <0xNN> byte tokens; for byte-level BPE the
 * merge ranks (a hash map from an id pair to rank and result) and the
 * pre-tokenizer regex compiled once with PCRE2. Loaders (GGUF,
 * tokenizer.json, llama2.c .bin) fill it through msa_tok_new(),
 * msa_tok_set_token(), msa_tok_add_merge() and end with msa_tok_finish(),
 * which builds the lookup tables. Once finished it is never written again,
 * so encoding and decoding are safe from many threads.
 */
#ifndef MSA_TOKENIZER_H
#define MSA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "engine/msa.h"

/* Token types, numbered as GGUF's tokenizer.ggml.token_type. */
enum {
    MSA_TT_UNDEFINED = 0,
    MSA_TT_NORMAL = 1,
    MSA_TT_UNKNOWN = 2,
    MSA_TT_CONTROL = 3,
    MSA_TT_USER = 4,   /* added tokens that are not special: always matched */
    MSA_TT_UNUSED = 5,
    MSA_TT_BYTE = 6
};

typedef enum msa_tok_family {
    MSA_TOK_SPM = 1,
    MSA_TOK_BPE = 2
} msa_tok_family;

typedef struct msa_bpe_pair {  /* one slot of the merge map */
    uint64_t key;              /* (left id << 32 | right id) + 1; 0 = empty */
    int32_t rank, result;
} msa_bpe_pair;

enum { MSA_TOK_MAX_STAGES = 4 }; /* pre-tokenizer stages at most */

struct msa_tokenizer {
    msa_tok_family family;
    char kind[48];             /* "spm", "bpe:gpt-2", ... */
    int32_t n_vocab;
    uint32_t *off, *len;       /* [n_vocab] piece = arena + off, len bytes */
    float *score;              /* [n_vocab] SPM merge scores */
    uint8_t *type;             /* [n_vocab] MSA_TT_* */
    char *arena;
    size_t arena_len, arena_cap;
    int32_t *slots;            /* string -> id map, open addressing, -1 empty */
    uint32_t slot_mask;

    int32_t bos, eos, unk, pad, eot;
    int add_bos, add_eos, add_space_prefix;

    /* SPM */
    char space[4];             /* "\xe2\x96\x81", or " " (llama2.c vocabs) */
    int space_len;
    int32_t byte_tok[256];     /* <0xNN> ids, -1 when absent */

    /* BPE */
    msa_bpe_pair *pairs;
    uint32_t pair_mask, n_pairs;
    int ignore_merges;         /* a word found whole in the vocab is one token */
    int add_prefix_space;      /* ByteLevel add_prefix_space */
    char pre[32];              /* pre-tokenizer variant */
    /* its stages, applied in order: stage s splits every piece of stage
     * s - 1 into matches and the text between them (Hugging Face's
     * "Isolated" split; llama.cpp's regex list) */
    int n_stages;
    char *regex[MSA_TOK_MAX_STAGES]; /* patterns (owned) */
    void *re[MSA_TOK_MAX_STAGES];    /* pcre2_code_8 */
    int32_t byte_char_tok[256];/* id of each byte's mapped character */

    /* tokens matched in text before the model's own splitting */
    int32_t *special;          /* sorted longest first */
    int n_special;
};

/* Allocates an empty tokenizer of `family` for n_vocab tokens (all pieces
 * empty, type UNDEFINED). Returns MSA_ENOMEM; *out NULL on failure. */
int msa_tok_new(msa_tok_family family, int32_t n_vocab, msa_tokenizer **out);

/* Sets token `id` (copied). Returns MSA_EINVAL for an id out of range,
 * MSA_ENOMEM. */
int msa_tok_set_token(msa_tokenizer *t, int32_t id, const char *s, size_t len,
                      float score, int type);

/* Adds merge `rank` of (left, right); both must be tokens already set, and
 * so must their concatenation. Merges naming unknown tokens are ignored
 * (returns MSA_OK) as llama.cpp does; a repeated pair keeps its first rank.
 * Must come after all msa_tok_set_token() calls. MSA_ENOMEM. */
int msa_tok_add_merge(msa_tokenizer *t, const char *l, size_t ll,
                      const char *r, size_t rl, int32_t rank);

/* Builds the string map (call before msa_tok_add_merge), idempotent. */
int msa_tok_index(msa_tokenizer *t);

/* Finishes loading: byte tables, special-token list and, for BPE, compiles
 * the pre-tokenizer for t->pre (or t->regex[] when already set). Returns
 * MSA_EUNSUPPORTED for an unknown pre-tokenizer name, MSA_EFORMAT for a
 * regex PCRE2 rejects, MSA_ENOMEM. */
int msa_tok_finish(msa_tokenizer *t);

/* The stages of a named pre-tokenizer variant ("gpt-2", "llama-bpe",
 * "qwen2", "smollm", ...): *n patterns, or NULL when the name is unknown.
 * Variants that share stages return the same pointer. */
const char *const *msa_tok_pre_stages(const char *name, int *n);

/* Adds a stage with `pattern` (copied) to a tokenizer being loaded.
 * MSA_EINVAL past MSA_TOK_MAX_STAGES, MSA_ENOMEM. */
int msa_tok_add_stage(msa_tokenizer *t, const char *pattern);

/* The pre-tokenizer alone: splits text[0..len) with the stages of variant
 * `pre` and calls piece(ctx, start, length) for every piece in order (for
 * tests against other implementations). MSA_EUNSUPPORTED for an unknown
 * variant, MSA_ENOMEM. */
int msa_tok_pre_split(const char *pre, const char *text, size_t len,
                      void (*piece)(void *ctx, size_t start, size_t n), void *ctx);

/* Loaders. Each returns the statuses of msa_tokenizer_open(). */
typedef struct msa_gguf msa_gguf;
/* Builds a tokenizer from an open GGUF's tokenizer.ggml.* metadata (the
 * model loader calls this; g stays the caller's and may be closed after). */
int msa_tokenizer_from_gguf(const msa_gguf *g, msa_tokenizer **out);
int msa_tokenizer_from_gguf_file(const char *path, msa_tokenizer **out);
int msa_tokenizer_from_json(const char *path, msa_tokenizer **out);
int msa_tokenizer_from_llama2c(const char *path, msa_tokenizer **out);

/* Encoders of one plain-text fragment (no special tokens inside), appending
 * to an id sink; `first` says the fragment starts the text or follows a
 * special token (SentencePiece adds its dummy space there). */
typedef struct msa_tok_sink {
    int32_t *ids;
    size_t cap, n;
} msa_tok_sink;

static inline void msa_tok_emit(msa_tok_sink *s, int32_t id) {
    if (s->n < s->cap) s->ids[s->n] = id;
    s->n++;
}

int msa_tok_encode_spm(const msa_tokenizer *t, const char *text, size_t len,
                       int first, msa_tok_sink *sink);
int msa_tok_encode_bpe(const msa_tokenizer *t, const char *text, size_t len,
                       msa_tok_sink *sink);

/* The shared merge engine: symbols are adjacent spans of one buffer; the
 * best pair (highest priority, then leftmost) is merged until none is left.
 * `pair` says whether two neighbours merge, with what priority and id. */
typedef struct msa_tok_sym {
    int32_t start, len, id, prev, next;
} msa_tok_sym;

typedef int (*msa_tok_pair_fn)(const msa_tokenizer *t, const char *buf,
                               const msa_tok_sym *l, const msa_tok_sym *r,
                               double *prio, int32_t *id);

typedef struct msa_tok_work {  /* per-call scratch, grown on demand */
    msa_tok_sym *sym;
    size_t sym_cap;
    void *heap;
    size_t heap_cap;
    char *buf;
    size_t buf_cap;
} msa_tok_work;

int msa_tok_merge(const msa_tokenizer *t, msa_tok_work *w, const char *buf,
                  int n_sym, msa_tok_pair_fn pair);
int msa_tok_work_reserve(msa_tok_work *w, size_t n_sym, size_t n_buf);
void msa_tok_work_free(msa_tok_work *w);

/* Byte-level BPE's byte <-> character map (GPT-2's printable alphabet):
 * byte b is the UTF-8 string msa_bpe_byte_utf8(b) of 1 or 2 bytes;
 * msa_bpe_cp_byte() maps a code point back, -1 when it is not in the map. */
int msa_bpe_byte_utf8(uint8_t b, char out[2]);
int msa_bpe_cp_byte(uint32_t cp);

/* Length of the UTF-8 sequence starting with byte c (1 for invalid). */
static inline int msa_utf8_len(uint8_t c) {
    if (c < 0x80) return 1;
    if ((c & 0xe0) == 0xc0) return 2;
    if ((c & 0xf0) == 0xe0) return 3;
    if ((c & 0xf8) == 0xf0) return 4;
    return 1;
}

#endif /* MSA_TOKENIZER_H */
