/*
 * sparse_attn_ref.c: exact attention over selected KV blocks on the CPU
 * (the main branch of MSA), and the online-softmax core that the dense
 * reference shares.
 *
 * One task per (row, group): the G query heads of a group read the same K/V
 * blocks, so a block is loaded once (64 KiB each for K and V at Bk = 128,
 * d = 128) and reused by every head from L2. Per head the softmax is online
 * (one pass, running max m and sum l): scores of up to TILE_T tokens go to a
 * stack buffer, the accumulator is rescaled by exp(m_old - m_new) when the
 * max grows, then p * v is added. The accumulator is the output row itself,
 * divided by l at the end. Only the local block is partly visible: tokens
 * past the row's position are simply not visited. On x86 Linux with GCC
 * the function also has an AVX2 clone, chosen at load time, that computes
 * the same lanes 8 at a time (bit-identical results).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "kernels/ref.h"

enum { TILE_T = 64 }; /* tokens scored per online-softmax step */

int msa_ref_row_seq(const msa_ref_problem *p, int row) {
    int lo = 0, hi = p->n_seqs - 1; /* the s with q_indptr[s] <= row < q_indptr[s+1] */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (p->q_indptr[mid] <= row) lo = mid;
        else hi = mid - 1;
    }
    return lo; /* the largest such s: empty sequences before it are skipped */
}

/* acc[0..n) += a * x[0..n) */
static inline void axpy(float *restrict acc, float a, const float *restrict x, int n) {
    for (int i = 0; i < n; i++) acc[i] += a * x[i];
}

/* On x86 with GCC, an AVX2 clone is picked at load time (8-wide vectors
 * instead of SSE2's 4). Each lane computes exactly what the portable code
 * computes (the dot's 8 partial sums, the per-element axpy; AVX2 alone has
 * no fused multiply-add to contract into), so results are bit-identical. */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__clang__) && \
    defined(__linux__) && !defined(__AVX2__)
__attribute__((target_clones("avx2", "default")))
#endif
void msa_ref_attend_group(const msa_ref_problem *p, int row, int g,
                          const int32_t *blocks, int n_blocks, float *m,
                          float *l) {
    const int d = p->d, Bk = p->Bk, G = p->G, Hkv = p->Hkv;
    const int seq = msa_ref_row_seq(p, row);
    const int32_t *tab = p->kv_table + p->kv_indptr[seq];
    const int64_t pos = p->q_pos[row];
    const float scale = p->scale;

    for (int h = 0; h < G; h++) {
        m[h] = -INFINITY;
        l[h] = 0.0f;
        memset(p->out + ((size_t)row * p->Hq + (size_t)g * G + h) * d, 0, (size_t)d * sizeof(float));
    }
    for (int bi = 0; bi < n_blocks; bi++) {
        int b = blocks ? blocks[bi] : bi;
        if (b < 0) continue;
        int64_t nv64 = pos - (int64_t)b * Bk + 1;
        if (nv64 <= 0) continue;
        int nv = nv64 >= Bk ? Bk : (int)nv64;
        size_t off = ((size_t)tab[b] * Hkv + g) * Bk * d;
        const float *kb = p->k + off; /* [Bk][d] */
        const float *vb = p->v + off; /* [Bk][d] */
        for (int h = 0; h < G; h++) {
            size_t qo = ((size_t)row * p->Hq + (size_t)g * G + h) * d;
            const float *qh = p->q + qo; /* [d] */
            float *acc = p->out + qo;    /* [d] */
            for (int t0 = 0; t0 < nv; t0 += TILE_T) {
                int nt = nv - t0 < TILE_T ? nv - t0 : TILE_T;
                float s[TILE_T];
                float mt = -INFINITY;
                for (int t = 0; t < nt; t++) {
                    s[t] = msa_ref_dot(qh, kb + (size_t)(t0 + t) * d, d) * scale;
                    if (s[t] > mt) mt = s[t];
                }
                if (mt == -INFINITY) continue;
                if (mt > m[h]) {
                    float corr = expf(m[h] - mt); /* 0 on the first tile */
                    l[h] *= corr;
                    for (int x = 0; x < d; x++) acc[x] *= corr;
                    m[h] = mt;
                }
                float mh = m[h], lh = 0.0f;
                for (int t = 0; t < nt; t++) {
                    float w = expf(s[t] - mh);
                    lh += w;
                    axpy(acc, w, vb + (size_t)(t0 + t) * d, d);
                }
                l[h] += lh;
            }
        }
    }
    for (int h = 0; h < G; h++) {
        int hq = g * G + h;
        float *acc = p->out + ((size_t)row * p->Hq + hq) * d;
        if (l[h] > 0.0f) {
            float inv = 1.0f / l[h];
            for (int x = 0; x < d; x++) acc[x] *= inv;
        }
        if (p->lse) p->lse[(size_t)row * p->Hq + hq] = l[h] > 0.0f ? m[h] + logf(l[h]) : -INFINITY;
    }
}

typedef struct sparse_ctx {
    const msa_ref_problem *p;
    const int32_t *selected; /* [n_q][Hkv][top_k] */
    float *ml;               /* [n_q][Hkv][2][G] running max and sum */
} sparse_ctx;

static void sparse_task(void *vc, int64_t i) {
    const sparse_ctx *c = vc;
    const msa_ref_problem *p = c->p;
    int row = (int)(i / p->Hkv), g = (int)(i % p->Hkv);
    float *m = c->ml + (size_t)i * 2 * p->G;
    msa_ref_attend_group(p, row, g, c->selected + (size_t)i * p->top_k, p->top_k, m, m + p->G);
}

int msa_ref_sparse_attention(const msa_ref_problem *p, const int32_t *selected) {
    if (p->n_q <= 0) return MSA_OK;
    size_t n = (size_t)p->n_q * p->Hq * 2;
    float *ml = malloc(n * sizeof(float));
    if (!ml)
        return msa_error(MSA_ENOMEM, "msa_sparse_attention: cannot allocate %zu bytes "
                         "of softmax state", n * sizeof(float));
    sparse_ctx c = {p, selected, ml};
    msa_parallel_for((int64_t)p->n_q * p->Hkv, p->n_threads, sparse_task, &c);
    free(ml);
    return MSA_OK;
}
