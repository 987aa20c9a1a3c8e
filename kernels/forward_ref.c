/*
 * forward_ref.c: plain C references of the GPU forward pass's own kernels
 * (kernels/forward_ops.h lists them; forward.cu and gemv.cu are the
 * kernels). Each loops over its output in the obvious order, sums in double
 * and rounds to bf16 once where the kernel does, so that it can be read
 * against the formula rather than against the kernel. The CPU forward pass
 * (engine/forward/forward.c) keeps its own fp32 code: it never rounds to
 * bf16, and its sums run in a different order, so sharing these would
 * change its results.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "base/base.h"
#include "kernels/forward_ops.h"

static uint16_t bf(double x) { return msa_f32_to_bf16((float)x); }
static double fb(uint16_t h) { return (double)msa_bf16_to_f32(h); }

void msa_fwd_embed_ref(const uint16_t *emb, const int32_t *tokens, float *x, int n, int D) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < D; j++) x[(size_t)i * D + j] = msa_bf16_to_f32(emb[(size_t)tokens[i] * D + j]);
}

void msa_fwd_rmsnorm_ref(const float *x, const float *w, uint16_t *out, int rows, int D, float eps) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * D;
        double ss = 0.0;
        for (int j = 0; j < D; j++) ss += (double)xr[j] * xr[j];
        const double s = 1.0 / sqrt(ss / D + eps);
        for (int j = 0; j < D; j++) out[(size_t)r * D + j] = bf(w[j] * (s * xr[j]));
    }
}

/* The two elements of RoPE pair p of a head of dim d: (2p, 2p+1), or
 * (p, p + d/2) in the rotate-half (neox) layout. */
static void rope_pair(int neox, int d, int p, int *ia, int *ib) {
    *ia = neox ? p : 2 * p;
    *ib = neox ? p + d / 2 : 2 * p + 1;
}

void msa_fwd_qkv_post_ref(const msa_fwd_qkv *a, int n) {
    const int d = a->d, qd = a->Hq * d, kvd = a->Hkv * d;
    for (int i = 0; i < n; i++) {
        const int pos = a->pos[i];
        const float *yr = a->y + (size_t)i * a->Nqkv;
        /* where row i's k, v (and k_idx) go: its position in the layer
         * memory, or row i of the staging arrays */
        const size_t base_row = a->rows ? (size_t)i * a->Hkv
                                        : ((size_t)(pos / a->Bk) * a->Hkv) * a->Bk;
        for (int g = 0; g < a->Hkv; g++) {
            const size_t at = a->rows ? (base_row + g) * d
                                      : (base_row + (size_t)g * a->Bk + pos % a->Bk) * d;
            for (int p = 0; p < d / 2; p++) {
                int ia, ib;
                rope_pair(a->neox, d, p, &ia, &ib);
                const double ang = (double)pos * a->inv_freq[p];
                const double c = cos(ang), s = sin(ang);
                double ma = 0.0, mb = 0.0; /* the group's post-RoPE query mean */
                for (int hh = 0; hh < a->G; hh++) {
                    const int o = (g * a->G + hh) * d;
                    double v0 = yr[o + ia], v1 = yr[o + ib];
                    if (a->bias) v0 += a->bias[o + ia], v1 += a->bias[o + ib];
                    const double r0 = v0 * c - v1 * s, r1 = v0 * s + v1 * c;
                    a->q[(size_t)i * qd + o + ia] = bf(r0);
                    a->q[(size_t)i * qd + o + ib] = bf(r1);
                    ma += r0;
                    mb += r1;
                }
                const int ok = qd + g * d;
                double k0 = yr[ok + ia], k1 = yr[ok + ib];
                if (a->bias) k0 += a->bias[ok + ia], k1 += a->bias[ok + ib];
                const double r0 = k0 * c - k1 * s, r1 = k0 * s + k1 * c;
                a->kc[at + ia] = bf(r0);
                a->kc[at + ib] = bf(r1);
                if (a->qi) {
                    a->qi[((size_t)i * a->Hkv + g) * d + ia] = bf(ma / a->G);
                    a->qi[((size_t)i * a->Hkv + g) * d + ib] = bf(mb / a->G);
                    a->kidx[at + ia] = bf(r0);
                    a->kidx[at + ib] = bf(r1);
                }
            }
            for (int j = 0; j < d; j++) {
                const int o = qd + kvd + g * d + j;
                double v = yr[o];
                if (a->bias) v += a->bias[o];
                a->vc[at + j] = bf(v);
            }
        }
    }
}

void msa_fwd_index_rope_ref(const msa_fwd_index *a, int n) {
    const int di = a->di;
    double r[MSA_FWD_REF_MAX_DI];
    for (int i = 0; i < n; i++) {
        const int pos = a->pos[i];
        for (int u = 0; u <= a->Hkv; u++) { /* u < Hkv: query head u; u == Hkv: the key */
            const float *src = a->y + (size_t)i * a->Nqkv + a->off0 + (size_t)u * di;
            const float *w = u < a->Hkv ? a->qn : a->kn;
            double ss = 0.0;
            for (int j = 0; j < di; j++) ss += (double)src[j] * src[j];
            const double sc = 1.0 / sqrt(ss / di + a->eps);
            for (int j = 0; j < di; j++) r[j] = (1.0 + w[j]) * (sc * src[j]);
            uint16_t *dst = u < a->Hkv
                                ? a->qi + ((size_t)i * a->Hkv + u) * di
                                : a->kidx + (a->rows ? (size_t)i
                                                     : (size_t)(pos / a->Bk) * a->Bk + pos % a->Bk) * di;
            for (int p = 0; p < di / 2; p++) {
                int ia, ib;
                rope_pair(a->neox, di, p, &ia, &ib);
                const double ang = (double)pos * a->inv_freq[p];
                const double c = cos(ang), s = sin(ang);
                dst[ia] = bf(r[ia] * c - r[ib] * s);
                dst[ib] = bf(r[ia] * s + r[ib] * c);
            }
        }
    }
}

void msa_fwd_swiglu_ref(const float *y, uint16_t *h, int n, int F) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < F; j++) {
            const double g = y[(size_t)i * 2 * F + j], u = y[(size_t)i * 2 * F + F + j];
            h[(size_t)i * F + j] = bf(g / (1.0 + exp(-g)) * u);
        }
}

void msa_fwd_add_bias_ref(float *x, const float *b, int n, int D) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < D; j++) x[(size_t)i * D + j] += b[j];
}

void msa_fwd_argmax_ref(const float *logits, int rows, int V, int32_t *out) {
    for (int r = 0; r < rows; r++) {
        const float *row = logits + (size_t)r * V;
        float best = -INFINITY;
        int idx = 0;
        for (int j = 0; j < V; j++)
            if (row[j] > best) best = row[j], idx = j; /* strict: the lowest index wins ties */
        out[r] = idx;
    }
}

void msa_fwd_gemv_ref(const msa_fwd_gemv_args *g) {
    const int in = g->in;
    /* the GEMV's input row, rounded to bf16 as the kernel stages it */
    double u[MSA_FWD_GEMV_REF_MAX_IN];
    if (g->mode == MSA_FWD_GEMV_NORM) {
        double ss = 0.0;
        for (int j = 0; j < in; j++) ss += (double)g->xf[j] * g->xf[j];
        const double s = 1.0 / sqrt(ss / in + g->eps);
        for (int j = 0; j < in; j++) u[j] = fb(bf(g->nw[j] * (s * g->xf[j])));
    } else {
        for (int j = 0; j < in; j++) u[j] = fb(g->xb[j]);
    }
    for (int r = 0; r < g->outd; r++) {
        double acc = 0.0, acc_up = 0.0;
        for (int j = 0; j < in; j++) acc += fb(g->W[(size_t)r * in + j]) * u[j];
        if (g->h) {
            for (int j = 0; j < in; j++) acc_up += fb(g->W[(size_t)(g->outd + r) * in + j]) * u[j];
            g->h[r] = bf(acc / (1.0 + exp(-acc)) * acc_up);
        } else {
            g->y[r] = (float)(g->accumulate ? g->y[r] + acc : acc);
        }
    }
    if (g->epi == MSA_FWD_EPI_QKV && !g->v3) msa_fwd_qkv_post_ref(g->qkv, 1);
    if (g->epi == MSA_FWD_EPI_ARGMAX && !g->v3) msa_fwd_argmax_ref(g->y, 1, g->outd, g->amax);
}

void msa_fwd_generic_attention_ref(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                                   const int32_t *pos, const int32_t *sel, uint16_t *out, int n,
                                   int Hq, int Hkv, int d, int Bk, int top_k, float scale,
                                   const int32_t *table) {
    const int G = Hq / Hkv;
    for (int i = 0; i < n; i++) {
        const int local = pos[i] / Bk;
        for (int h = 0; h < Hq; h++) {
            const int g = h / G;
            const uint16_t *qr = q + ((size_t)i * Hq + h) * d;
            double acc[MSA_FWD_REF_MAX_D] = {0};
            double m = -INFINITY, l = 0.0;
            /* two passes: the maximum score, then the weights */
            for (int pass = 0; pass < 2; pass++) {
                const int nl = sel ? top_k : local + 1;
                for (int t = 0; t < nl; t++) {
                    const int b = sel ? sel[((size_t)i * Hkv + g) * top_k + t] : t;
                    if (b < 0 || b > local) continue;
                    const int slot = table ? table[b] : b;
                    if (slot < 0) continue;
                    for (int j = b * Bk; j < (b + 1) * Bk && j <= pos[i]; j++) {
                        const size_t at = (((size_t)slot * Hkv + g) * Bk + j % Bk) * d;
                        double s = 0.0;
                        for (int e = 0; e < d; e++) s += fb(qr[e]) * fb(k[at + e]);
                        s *= scale;
                        if (pass == 0) {
                            if (s > m) m = s;
                        } else {
                            const double p = exp(s - m);
                            l += p;
                            for (int e = 0; e < d; e++) acc[e] += p * fb(v[at + e]);
                        }
                    }
                }
            }
            for (int e = 0; e < d; e++) out[((size_t)i * Hq + h) * d + e] = bf(l > 0.0 ? acc[e] / l : 0.0);
        }
    }
}

/* The hash the GPU fill uses (splitmix64's finaliser). */
static uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void msa_fwd_fill_uniform_bf16_ref(uint16_t *p, size_t n, uint64_t seed, float scale) {
    for (size_t i = 0; i < n; i++) {
        const uint64_t r = mix64(seed * 0x2545F4914F6CDD1DULL + i);
        const float u = (float)(r >> 40) * (1.0f / 16777216.0f); /* [0, 1) */
        p[i] = msa_f32_to_bf16((2.0f * u - 1.0f) * scale);
    }
}
