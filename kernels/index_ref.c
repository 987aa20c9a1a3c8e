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
 * This scan grows with the memory: a decode step streams every index key,
 * and a prefill chunk of R rows does R times that arithmetic. It is
 * organised as a blocked matrix product, max-pooled on the fly:
 *   - work items are (row tile, block chunk): up to `tile` rows of one
 *     sequence (their index queries fill about TILE_QBYTES, 4 to TILE_MAX
 *     rows) against CHUNK_TOKENS tokens of index keys. Each block of keys is
 *     read once per tile and scored against the Hkv index queries of every
 *     row in the tile while it sits in L1/L2, so a decode step streams the
 *     index keys once, not once per group, and a prefill chunk once per
 *     tile. Splitting along the blocks keeps all cores busy on a single
 *     decode row.
 *   - per block, a kernel computes the (query vectors) x (Bk keys) dots and
 *     keeps only their max per query vector: token scores are never stored.
 *     On x86 with AVX2 (checked at run time; MSA_INDEX_PORTABLE=1 forces the
 *     fallback) it is register-blocked, 4 query vectors x 2 keys in eight
 *     8-lane accumulators; elsewhere, or when d_idx % 8 != 0, a portable
 *     loop of msa_ref_dot. Both sum every dot in msa_ref_dot's order (8
 *     partial sums, multiply then add, one fixed combine), so scores and
 *     selection are the same whichever kernel runs and however rows are
 *     tiled: a prefill chunk selects exactly what row-by-row decode would.
 *   - only the full blocks before a row's local block are scored: the local
 *     block is always taken, so its score (and its causal mask) is never
 *     needed.
 *   - block scores go to a scratch S of [rows][Hkv][local] floats, Bk times
 *     smaller than token scores. Rows are processed in chunks so that S
 *     stays under SCRATCH_BYTES however many rows and blocks the batch has.
 *   - a second pass picks the Top-k of each (row, group) from S.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "base/base.h"
#include "kernels/ref.h"

enum {
    TILE_MIN = 4,          /* rows of one sequence scored together: at least */
    TILE_MAX = 64,         /* ... and at most */
    TILE_QBYTES = 32 << 10, /* bytes of index queries per tile (L1-sized) */
    CHUNK_TOKENS = 4096,   /* tokens of index keys per work item */
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

/* m[i] = max over the Bk keys [Bk][di] of msa_ref_dot(q[i], key, di), for
 * i < nq. Every dot is summed in msa_ref_dot's order, so the scores (and
 * the selection) do not depend on which kernel runs or how rows are tiled;
 * a NaN score is skipped, as by `s > m ? s : m`. */
typedef void (*maxdot_fn)(const float *const *q, int nq, const float *keys, int Bk,
                          int di, float *m);

/* Portable kernel: keys outer, so each key is read once from L1 for all the
 * query vectors; inlined with a constant di for the common sizes. */
static inline __attribute__((always_inline)) void maxdot_portable_n(
    const float *const *q, int nq, const float *keys, int Bk, int di, float *m) {
    for (int i = 0; i < nq; i++) m[i] = -INFINITY;
    for (int t = 0; t < Bk; t++) {
        const float *key = keys + (size_t)t * di;
        for (int i = 0; i < nq; i++) {
            float s = msa_ref_dot(q[i], key, di);
            m[i] = s > m[i] ? s : m[i];
        }
    }
}

static void maxdot_portable(const float *const *q, int nq, const float *keys, int Bk,
                            int di, float *m) {
    switch (di) {
    case 8: maxdot_portable_n(q, nq, keys, Bk, 8, m); break;
    case 16: maxdot_portable_n(q, nq, keys, Bk, 16, m); break;
    case 32: maxdot_portable_n(q, nq, keys, Bk, 32, m); break;
    case 64: maxdot_portable_n(q, nq, keys, Bk, 64, m); break;
    case 128: maxdot_portable_n(q, nq, keys, Bk, 128, m); break;
    default: maxdot_portable_n(q, nq, keys, Bk, di, m); break;
    }
}

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX2_KERNEL 1
#define AVX2 __attribute__((target("avx2")))

/* The eight dots whose 8 partial sums are a[0..7] (lane l of a[j] holds
 * msa_ref_dot's acc[l] of dot j), combined in msa_ref_dot's order
 * ((acc0 + acc4) + (acc1 + acc5)) + ((acc2 + acc6) + (acc3 + acc7)).
 * Lanes of the result: dots 0, 2, 4, 6 | 1, 3, 5, 7. */
static inline AVX2 __attribute__((always_inline)) __m256 hsum8x8(const __m256 *a) {
    __m256 b[4];
    for (int j = 0; j < 4; j++) /* [acc_l + acc_l+4 of dot 2j | of dot 2j+1] */
        b[j] = _mm256_add_ps(_mm256_permute2f128_ps(a[2 * j], a[2 * j + 1], 0x20),
                             _mm256_permute2f128_ps(a[2 * j], a[2 * j + 1], 0x31));
    return _mm256_hadd_ps(_mm256_hadd_ps(b[0], b[1]), _mm256_hadd_ps(b[2], b[3]));
}

/* Register-blocked kernel for di % 8 == 0: 4 query vectors x 2 keys (eight
 * 8-lane accumulators, one per dot, lane l = msa_ref_dot's acc[l]), multiply
 * then add as msa_ref_dot does (never fused), then the combine above and the
 * running max. Leftover query vectors take 1 x 8 keys. A missing key at the
 * end of the block repeats the last one, which leaves the max unchanged. */
static inline AVX2 __attribute__((always_inline)) void maxdot_avx2_n(
    const float *const *q, int nq, const float *keys, int Bk, int di, float *m) {
    int i = 0;
    for (; i + 4 <= nq; i += 4) {
        const float *q0 = q[i], *q1 = q[i + 1], *q2 = q[i + 2], *q3 = q[i + 3];
        __m128 mx = _mm_set1_ps(-INFINITY);
        for (int t = 0; t < Bk; t += 2) {
            const float *k0 = keys + (size_t)t * di, *k1 = t + 1 < Bk ? k0 + di : k0;
            __m256 a[8];
            for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
            for (int x = 0; x < di; x += 8) {
                __m256 K0 = _mm256_loadu_ps(k0 + x), K1 = _mm256_loadu_ps(k1 + x);
                __m256 Q = _mm256_loadu_ps(q0 + x);
                a[0] = _mm256_add_ps(a[0], _mm256_mul_ps(Q, K0));
                a[1] = _mm256_add_ps(a[1], _mm256_mul_ps(Q, K1));
                Q = _mm256_loadu_ps(q1 + x);
                a[2] = _mm256_add_ps(a[2], _mm256_mul_ps(Q, K0));
                a[3] = _mm256_add_ps(a[3], _mm256_mul_ps(Q, K1));
                Q = _mm256_loadu_ps(q2 + x);
                a[4] = _mm256_add_ps(a[4], _mm256_mul_ps(Q, K0));
                a[5] = _mm256_add_ps(a[5], _mm256_mul_ps(Q, K1));
                Q = _mm256_loadu_ps(q3 + x);
                a[6] = _mm256_add_ps(a[6], _mm256_mul_ps(Q, K0));
                a[7] = _mm256_add_ps(a[7], _mm256_mul_ps(Q, K1));
            }
            __m256 f = hsum8x8(a); /* q0..q3 with k0 | q0..q3 with k1 */
            mx = _mm_max_ps(_mm256_castps256_ps128(f), mx); /* NaN: keeps mx */
            mx = _mm_max_ps(_mm256_extractf128_ps(f, 1), mx);
        }
        _mm_storeu_ps(m + i, mx);
    }
    for (; i < nq; i++) {
        const float *q0 = q[i];
        __m256 mx = _mm256_set1_ps(-INFINITY);
        for (int t = 0; t < Bk; t += 8) {
            const float *k[8];
            for (int j = 0; j < 8; j++)
                k[j] = keys + (size_t)(t + j < Bk ? t + j : Bk - 1) * di;
            __m256 a[8];
            for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
            for (int x = 0; x < di; x += 8) {
                __m256 Q = _mm256_loadu_ps(q0 + x);
                for (int j = 0; j < 8; j++)
                    a[j] = _mm256_add_ps(a[j], _mm256_mul_ps(Q, _mm256_loadu_ps(k[j] + x)));
            }
            mx = _mm256_max_ps(hsum8x8(a), mx);
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
        m[i] = _mm_cvtss_f32(h);
    }
}

static AVX2 void maxdot_avx2(const float *const *q, int nq, const float *keys, int Bk,
                             int di, float *m) {
    switch (di) {
    case 8: maxdot_avx2_n(q, nq, keys, Bk, 8, m); break;
    case 16: maxdot_avx2_n(q, nq, keys, Bk, 16, m); break;
    case 32: maxdot_avx2_n(q, nq, keys, Bk, 32, m); break;
    case 64: maxdot_avx2_n(q, nq, keys, Bk, 64, m); break;
    case 128: maxdot_avx2_n(q, nq, keys, Bk, 128, m); break;
    default: maxdot_avx2_n(q, nq, keys, Bk, di, m); break;
    }
}
#endif

/* The kernel for this CPU and d_idx; MSA_INDEX_PORTABLE=1 forces the
 * portable one (tests of the fallback). */
static maxdot_fn pick_kernel(int di) {
#ifdef HAVE_AVX2_KERNEL
    const char *env = getenv("MSA_INDEX_PORTABLE");
    if (di % 8 == 0 && !(env && atoi(env) > 0) && __builtin_cpu_supports("avx2"))
        return maxdot_avx2;
#endif
    return maxdot_portable;
}

enum { QLIST = TILE_MAX * 8 }; /* query vectors handed to a kernel at once */

static void score_item(void *vc, int64_t idx) {
    const ctx *c = vc;
    const msa_ref_problem *p = c->p;
    const item *it = &c->items[idx];
    const int Bk = p->Bk, di = p->di, Hkv = p->Hkv, KH = p->KH;
    const int32_t *tab = p->idx_table + p->idx_indptr[it->seq];
    const maxdot_fn kernel = pick_kernel(di);
    /* The query vectors scored against a block: every (row, group) of the
     * tile whose row ranks the block (a full block before its local one:
     * the local block is always taken, so its score and causal mask are
     * never needed), with where each block score goes. As b grows, rows
     * only drop out, so the list is rebuilt only when one does. */
    const float *ql[QLIST];
    float *dst[QLIST]; /* block b's score goes to dst[i][b] */
    float m[QLIST];
    /* groups g0 .. g0 + gs - 1 at a time (all of them unless Hkv > QLIST;
     * the tile then has one row) */
    const int gs = Hkv < QLIST ? Hkv : QLIST;

    for (int g0 = 0; g0 < Hkv; g0 += gs) {
        const int ng = Hkv - g0 < gs ? Hkv - g0 : gs;
        int nq = 0, next = -1; /* the list is valid for blocks < next */
        for (int b = it->b0; b < it->b1; b++) {
            if (b >= next) {
                nq = 0;
                next = INT32_MAX;
                for (int r = 0; r < it->n_rows; r++) {
                    int row = it->row0 + r, nbr = p->q_pos[row] / Bk;
                    if (b >= nbr) continue;
                    if (nbr < next) next = nbr;
                    float *Sr = c->S + c->soff[row - c->r0];
                    const float *qr = p->q_idx + (size_t)row * Hkv * di; /* [Hkv][di] */
                    for (int g = g0; g < g0 + ng; g++, nq++) {
                        ql[nq] = qr + (size_t)g * di;
                        dst[nq] = Sr + (size_t)g * nbr;
                    }
                }
            }
            if (nq == 0) continue;
            const float *kb = p->kidx + (size_t)tab[b] * KH * Bk * di; /* [KH][Bk][di] */
            if (KH == 1) {
                /* one shared key head: the block ([Bk][di]) stays in L1/L2
                 * while every row and group of the tile is scored against it */
                kernel(ql, nq, kb, Bk, di, m);
                for (int i = 0; i < nq; i++) dst[i][b] = m[i];
            } else {
                /* one key head per group: the rows of group g against head g */
                int nr = nq / ng;
                for (int gi = 0; gi < ng; gi++) {
                    const float *qg[TILE_MAX];
                    for (int r = 0; r < nr; r++) qg[r] = ql[r * ng + gi];
                    kernel(qg, nr, kb + (size_t)(g0 + gi) * Bk * di, Bk, di, m);
                    for (int r = 0; r < nr; r++) dst[r * ng + gi][b] = m[r];
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
    /* rows per tile: their index queries fill about TILE_QBYTES, and every
     * (row, group) of a tile fits one kernel call */
    const int gs = Hkv < QLIST ? Hkv : QLIST;
    int tile = TILE_QBYTES / ((int)sizeof(float) * Hkv * p->di + 1);
    if (tile < TILE_MIN) tile = TILE_MIN;
    if (tile > TILE_MAX) tile = TILE_MAX;
    if (tile > QLIST / gs) tile = QLIST / gs;
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
                int end = row + tile;
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
