/*
 * ref.h: the CPU references of the MSA attention core, which are also the
 * CPU backend (kernels/index_ref.c, topk_ref.c, sparse_attn_ref.c,
 * dense_attn_ref.c). Folder-local: only kernels/attention.c calls them.
 *
 * kernels/attention.c validates every argument first and then hands the
 * references one resolved, fp32 description of the call (msa_ref_problem).
 * The references trust it: slots, positions and block ids are in range, and
 * every block they read has a slot. They fail only with MSA_ENOMEM.
 *
 * Work is split over msa_parallel_for; every (row, group) result is computed
 * by one task in a fixed order, so results do not depend on the thread count.
 */
#ifndef MSA_KERNELS_REF_H
#define MSA_KERNELS_REF_H

#include <math.h>
#include <stdint.h>

#include "engine/msa.h"

typedef struct msa_ref_problem {
    /* shapes (msa_attn_config, resolved) */
    int Hq, Hkv, G;        /* query heads, KV heads, G = Hq / Hkv */
    int d, di;             /* head dim, index dim */
    int KH;                /* index key heads: 1 or Hkv */
    int Bk, top_k;
    float scale;           /* softmax scale, resolved (never 0) */
    /* paged memory, fp32 */
    const float *k, *v;    /* [n_slots][Hkv][Bk][d] */
    const float *kidx;     /* [n_idx_slots][KH][Bk][di] */
    const int32_t *kv_indptr, *kv_table;   /* CSR, logical block -> slot */
    const int32_t *idx_indptr, *idx_table; /* resolved: never NULL when used */
    const int32_t *seq_len;                /* [n_seqs] */
    int n_seqs;
    /* batch */
    int n_q;
    const int32_t *q_indptr; /* [n_seqs + 1] */
    const int32_t *q_pos;    /* [n_q] */
    const float *q;          /* [n_q][Hq][d] */
    const float *q_idx;      /* [n_q][Hkv][di] */
    float *out;              /* [n_q][Hq][d] */
    float *lse;              /* [n_q][Hq] or NULL */
    int n_threads;           /* for msa_parallel_for (0: one per core) */
} msa_ref_problem;

/* The sequence that row `row` belongs to (binary search over q_indptr). */
int msa_ref_row_seq(const msa_ref_problem *p, int row);

/* Index scores, block max-pool and Top-k per (row, group): writes
 * selected [n_q][Hkv][top_k] (local block first, then by descending score,
 * ties by lower block id, -1 padded). Reads kidx, q_idx and the index table
 * only. Returns MSA_OK or MSA_ENOMEM (selected then unspecified). */
int msa_ref_index_select(const msa_ref_problem *p, int32_t *selected);

/* Top-k of one (row, group): score[0..local-1] are the block scores of the
 * visible non-local blocks. Writes out[0..top_k-1]: `local` first, then the
 * best top_k - 1 candidates (higher score first, then lower id), -1 padded.
 * Partial selection with a heap of top_k - 1 ids kept in out itself. */
void msa_ref_topk(const float *score, int local, int top_k, int32_t *out);

/* Exact attention of every query head over the blocks of its group in
 * selected [n_q][Hkv][top_k] (-1 entries skipped). Writes out and lse.
 * Returns MSA_OK or MSA_ENOMEM. */
int msa_ref_sparse_attention(const msa_ref_problem *p, const int32_t *selected);

/* Exact causal attention over every visible token. Writes out and lse.
 * Returns MSA_OK or MSA_ENOMEM. */
int msa_ref_dense_attention(const msa_ref_problem *p);

/* Online-softmax attention of the G heads of group g of `row` over the
 * logical blocks blocks[0..n_blocks-1] (blocks == NULL: 0..n_blocks-1;
 * -1 entries skipped). m, l: [G] running max and sum scratch. Shared by the
 * sparse and dense references. */
void msa_ref_attend_group(const msa_ref_problem *p, int row, int g,
                          const int32_t *blocks, int n_blocks, float *m,
                          float *l);

/* Dot product written so that -O2/-O3 vectorise it without -ffast-math:
 * eight independent partial sums, then a fixed-order combine. */
static inline float msa_ref_dot(const float *a, const float *b, int n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[i + l] * b[i + l];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) +
              ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

#endif /* MSA_KERNELS_REF_H */
