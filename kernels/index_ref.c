/*
 * index_ref.c: MSA index scoring and block max-pool on the CPU, followed by
 * the per-(row, group) Top-k of topk_ref.c.
 *
 * For row i (position p) and group r, token j <= p scores
 * q_idx[i, r] . k_idx[j, kh] with kh = 0 (shared index key) or kh = r (one
 * index key head per group); block b scores the max over its visible
 * tokens. The 1/sqrt(d_idx) scale is left out: it does not change the
 * ranking, and only block ids leave this file.
 *
 * This scan is the part of a decode step that grows with the memory, so it
 * is organised for bandwidth:
 *   - work items are (row tile, block chunk): up to TILE rows of one
 *     sequence against CHUNK_TOKENS tokens of index keys. Each index key is
 *     read once per tile and dotted with the Hkv index queries of every row
 *     in the tile while it sits in L1, so a decode step streams the index
 *     keys once, not once per group, and a prefill chunk once per TILE rows.
 *     Splitting along the blocks keeps all cores busy on a single decode row.
 *   - only the full blocks before a row's local block are scored: the local
 *     block is always taken, so its score (and its causal mask) is never
 *     needed.
 *   - block scores go to a scratch S of [rows][Hkv][local] floats, 128x
 *     smaller than token scores. Rows are processed in chunks so that S stays
 *     under SCRATCH_BYTES however many rows and blocks the batch has.
 *   - a second pass picks the Top-k of each (row, group) from S.
 */
#include <math.h>
#include <stdlib.h>

#include "kernels/base.h"
#include "kernels/ref.h"

enum {
    TILE = 4,              /* rows of one sequence scored together */
    CHUNK_TOKENS = 4096,   /* tokens of index keys per work item */
    MAX_GROUPS = 64,       /* running maxima kept on the stack at once */
};
#define SCRATCH_BYTES ((size_t)64 << 20) /* bound on the block-score buffer; the
                                            environment's MSA_INDEX_SCRATCH_KB
                                            overrides it (tests force chunking) */

typedef struct item {
    int row0, n_rows; /* the tile: rows row0 .. row0 + n_rows - 1 */
    int seq;
    int b0, b1;       /* logical blocks [b0, b1) */
} item;

typedef struct ctx {
    const msa_ref_problem *p;
    int r0;              /* first row of this chunk */
    const size_t *soff;  /* [rows in chunk] offset of each row's S */
    float *S;            /* per row [Hkv][local] block scores */
    const item *items;
    int32_t *selected;   /* [n_q][Hkv][top_k] */
} ctx;

/* Max over the Bk tokens of one block of q . key (keys [Bk][di]). Inlined
 * with a constant di for the common sizes, so the dot is fully unrolled and
 * the running max stays in a register. */
static inline __attribute__((always_inline)) float block_max_n(const float *q,
                                                               const float *keys,
                                                               int Bk, int di) {
    float m = -INFINITY;
    for (int t = 0; t < Bk; t++) {
        float s = msa_ref_dot(q, keys + (size_t)t * di, di);
        m = s > m ? s : m;
    }
    return m;
}

static float block_max(const float *q, const float *keys, int Bk, int di) {
    switch (di) {
    case 8: return block_max_n(q, keys, Bk, 8);
    case 16: return block_max_n(q, keys, Bk, 16);
    case 32: return block_max_n(q, keys, Bk, 32);
    case 64: return block_max_n(q, keys, Bk, 64);
    case 128: return block_max_n(q, keys, Bk, 128);
    default: return block_max_n(q, keys, Bk, di);
    }
}

static void score_item(void *vc, int64_t idx) {
    const ctx *c = vc;
    const msa_ref_problem *p = c->p;
    const item *it = &c->items[idx];
    const int Bk = p->Bk, di = p->di, Hkv = p->Hkv, KH = p->KH;
    const int32_t *tab = p->idx_table + p->idx_indptr[it->seq];

    for (int b = it->b0; b < it->b1; b++) {
        const float *kb = p->kidx + (size_t)tab[b] * KH * Bk * di; /* [KH][Bk][di] */
        /* Rows of the tile rank this block only when it is a full block
         * before their local one: the local block is always taken, so its
         * score (and its causal mask) is never needed. The block (KH * Bk *
         * di floats) stays in L1 while every row and group of the tile is
         * scored against it. */
        for (int r = 0; r < it->n_rows; r++) {
            int row = it->row0 + r, nbr = p->q_pos[row] / Bk;
            if (b >= nbr) continue;
            float *Sr = c->S + c->soff[row - c->r0];
            const float *qr = p->q_idx + (size_t)row * Hkv * di; /* [Hkv][di] */
            if (KH == 1) {
                /* one shared key head: read each key once for all groups */
                float m[MAX_GROUPS];
                for (int g0 = 0; g0 < Hkv; g0 += MAX_GROUPS) {
                    int ng = Hkv - g0 < MAX_GROUPS ? Hkv - g0 : MAX_GROUPS;
                    for (int g = 0; g < ng; g++) m[g] = -INFINITY;
                    for (int t = 0; t < Bk; t++) {
                        const float *key = kb + (size_t)t * di; /* [di] */
                        for (int g = 0; g < ng; g++) {
                            float sc = msa_ref_dot(qr + (size_t)(g0 + g) * di, key, di);
                            m[g] = sc > m[g] ? sc : m[g];
                        }
                    }
                    for (int g = 0; g < ng; g++) Sr[(size_t)(g0 + g) * nbr + b] = m[g];
                }
            } else {
                for (int g = 0; g < Hkv; g++) {
                    const float *keys = kb + (size_t)g * Bk * di; /* [Bk][di] */
                    Sr[(size_t)g * nbr + b] = block_max(qr + (size_t)g * di, keys, Bk, di);
                }
            }
        }
    }
}

static void select_task(void *vc, int64_t idx) {
    const ctx *c = vc;
    const msa_ref_problem *p = c->p;
    int row = c->r0 + (int)(idx / p->Hkv), g = (int)(idx % p->Hkv);
    int local = p->q_pos[row] / p->Bk;
    const float *Sr = c->S + c->soff[row - c->r0] + (size_t)g * local;
    msa_ref_topk(Sr, local, p->top_k, c->selected + ((size_t)row * p->Hkv + g) * p->top_k);
}

int msa_ref_index_select(const msa_ref_problem *p, int32_t *selected) {
    if (p->n_q <= 0) return MSA_OK;
    const int Hkv = p->Hkv, Bk = p->Bk;
    const int chunk_blocks = CHUNK_TOKENS / Bk > 0 ? CHUNK_TOKENS / Bk : 1;
    const char *env = getenv("MSA_INDEX_SCRATCH_KB");
    const size_t cap = (env && atol(env) > 0 ? (size_t)atol(env) << 10 : SCRATCH_BYTES) / sizeof(float);

    /* The scratch holds the largest row chunk: at most `cap` floats, or one
     * row when a single row needs more. */
    size_t s_need = 0, s_max = 0;
    for (int i = 0; i < p->n_q; i++) {
        size_t r = (size_t)Hkv * (p->q_pos[i] / Bk);
        if (r > s_max) s_max = r;
        s_need += r;
    }
    size_t s_size = s_need < cap ? s_need : (cap > s_max ? cap : s_max);
    float *S = malloc((s_size + 1) * sizeof(float)); /* s_size may be 0 */
    size_t *soff = malloc((size_t)p->n_q * sizeof(size_t));
    if (!S || !soff) {
        free(S);
        free(soff);
        return msa_error(MSA_ENOMEM, "msa_index_select: cannot allocate %zu bytes of "
                         "block-score scratch", s_size * sizeof(float));
    }

    int rc = MSA_OK;
    int seq = 0;
    for (int r0 = 0; r0 < p->n_q;) {
        /* rows r0 .. r1-1 fit the scratch */
        size_t used = 0;
        int r1 = r0;
        while (r1 < p->n_q) {
            size_t r = (size_t)Hkv * (p->q_pos[r1] / Bk);
            if (r1 > r0 && used + r > s_size) break;
            soff[r1 - r0] = used;
            used += r;
            r1++;
        }
        /* tiles of up to TILE rows of one sequence, cut into block chunks */
        int64_t n_items = 0;
        for (int pass = 0; pass < 2; pass++) {
            item *items = NULL;
            if (pass == 1) {
                items = malloc((size_t)n_items * sizeof(item));
                if (!items) {
                    rc = msa_error(MSA_ENOMEM, "msa_index_select: cannot allocate "
                                   "%lld work items", (long long)n_items);
                    break;
                }
            }
            int64_t n = 0;
            int s = seq;
            for (int row = r0; row < r1;) {
                while (p->q_indptr[s + 1] <= row) s++;
                int end = row + TILE;
                if (end > r1) end = r1;
                if (end > p->q_indptr[s + 1]) end = p->q_indptr[s + 1];
                int nb = 0;
                for (int i = row; i < end; i++) /* blocks before the local ones */
                    if (p->q_pos[i] / Bk > nb) nb = p->q_pos[i] / Bk;
                for (int b0 = 0; b0 < nb; b0 += chunk_blocks, n++) {
                    if (!items) continue;
                    items[n] = (item){row, end - row, s, b0,
                                      b0 + chunk_blocks < nb ? b0 + chunk_blocks : nb};
                }
                row = end;
            }
            n_items = n;
            if (pass == 1) {
                ctx c = {p, r0, soff, S, items, selected};
                msa_parallel_for(n_items, p->n_threads, score_item, &c);
                msa_parallel_for((int64_t)(r1 - r0) * Hkv, p->n_threads, select_task, &c);
                free(items);
            }
        }
        if (rc) break;
        while (p->q_indptr[seq + 1] <= r1 - 1) seq++;
        r0 = r1;
    }
    free(S);
    free(soff);
    return rc;
}
