/*
 * qgemm.c: the portable path of the quantized products (kernels/qgemm.h),
 * the activation quantizer, and the run-time choice of path.
 *
 * Each dot below walks one weight row block by block in the element order
 * of engine/model/ggml_quant.c (the comment beside each dequantizer there
 * gives the byte layout), sums the integer products of each 32-element
 * block exactly in int32 and adds the block's term in fp32:
 *
 *   Q8_0, Q4_0, Q5_0   (dw * dx) * sum (qw - offset) qx
 *   Q4_1, Q5_1         (dw * dx) * sum qw qx + mw * ds
 *   Q4_K, Q5_K         (d sc_j * dx) * sum qw qx - dmin m_j * ds        (sub-block j of 32)
 *   Q6_K, Q3_K         (d * dx) * (sc_g0 sum_g0 qw qx + sc_g1 sum_g1 qw qx)   (two groups of 16)
 *   Q2_K               dx * (d * sum_g sc_g sum_g qw qx - dmin * sum_g m_g s16_g)
 *
 * where dx, ds = dx * sum qx and s16 come with the activation row. This is
 * the reference the AVX2 path (qgemm_avx2.c) is tested against; the test
 * (tests/test-qgemm.c) checks both against dequantize + dot in double.
 */
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "kernels/qgemm.h"

typedef struct q8v {
    const int8_t *qs;
    const float *d, *ds;
    const int16_t *s16;
} q8v;

static q8v q8_view(const void *p, int K) {
    q8v v;
    v.qs = p;
    v.d = (const float *)(v.qs + K);
    v.ds = v.d + K / 32;
    v.s16 = (const int16_t *)(v.ds + K / 32);
    return v;
}

size_t msa_q8_row_bytes(int K) {
    return (size_t)K + (size_t)(K / 32) * 8 + (size_t)(K / 16) * 2;
}

static int avx2_wanted(void);

void msa_q8_quantize_row(const float *x, int K, void *dst) {
    if (avx2_wanted() && msa_q8_quantize_row_avx2(x, K, dst)) return;
    msa_q8_quantize_row_portable(x, K, dst);
}

void msa_q8_quantize_row_portable(const float *x, int K, void *dst) {
    int8_t *qs = dst;
    float *d = (float *)(qs + K), *ds = d + K / 32;
    int16_t *s16 = (int16_t *)(ds + K / 32);
    for (int b = 0; b < K / 32; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            float a = fabsf(xb[j]);
            if (a > amax) amax = a;
        }
        const float db = amax / 127.0f, id = db > 0.0f ? 1.0f / db : 0.0f;
        int sum[2] = {0, 0};
        for (int j = 0; j < 32; j++) {
            long q = lrintf(xb[j] * id);
            if (q > 127) q = 127;
            if (q < -127) q = -127;
            qs[32 * b + j] = (int8_t)q;
            sum[j / 16] += (int)q;
        }
        d[b] = db;
        ds[b] = db * (float)(sum[0] + sum[1]);
        s16[2 * b] = (int16_t)sum[0];
        s16[2 * b + 1] = (int16_t)sum[1];
    }
}

void msa_q8_dequantize_row(const void *src, int K, float *x) {
    q8v a = q8_view(src, K);
    for (int j = 0; j < K; j++) x[j] = a.d[j / 32] * (float)a.qs[j];
}

int msa_qgemm_supported(int type, int K) {
    if (K <= 0) return 0;
    switch (type) {
    case MSA_QT_Q4_0: case MSA_QT_Q4_1: case MSA_QT_Q5_0: case MSA_QT_Q5_1: case MSA_QT_Q8_0:
        return K % 32 == 0;
    case MSA_QT_Q2_K: case MSA_QT_Q3_K: case MSA_QT_Q4_K: case MSA_QT_Q5_K: case MSA_QT_Q6_K:
        return K % 256 == 0;
    default: return 0;
    }
}

/* ---- portable dots: one weight row against one activation row ------------------- */

static float h16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return msa_f16_to_f32(h);
}

static uint32_t u32_at(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static float dot_q8_0(const uint8_t *w, q8v a, int K) {
    float acc = 0.0f;
    for (int b = 0; b < K / 32; b++, w += 34) {
        const int8_t *q = (const int8_t *)(w + 2), *x = a.qs + 32 * b;
        int s = 0;
        for (int j = 0; j < 32; j++) s += q[j] * x[j];
        acc += (h16(w) * a.d[b]) * (float)s;
    }
    return acc;
}

static float dot_q4_0(const uint8_t *w, q8v a, int K) {
    float acc = 0.0f;
    for (int b = 0; b < K / 32; b++, w += 18) {
        const uint8_t *qs = w + 2;
        const int8_t *x = a.qs + 32 * b;
        int s = 0;
        for (int j = 0; j < 16; j++)
            s += ((qs[j] & 0x0F) - 8) * x[j] + ((qs[j] >> 4) - 8) * x[j + 16];
        acc += (h16(w) * a.d[b]) * (float)s;
    }
    return acc;
}

static float dot_q4_1(const uint8_t *w, q8v a, int K) {
    float acc = 0.0f;
    for (int b = 0; b < K / 32; b++, w += 20) {
        const uint8_t *qs = w + 4;
        const int8_t *x = a.qs + 32 * b;
        int s = 0;
        for (int j = 0; j < 16; j++) s += (qs[j] & 0x0F) * x[j] + (qs[j] >> 4) * x[j + 16];
        acc += (h16(w) * a.d[b]) * (float)s + h16(w + 2) * a.ds[b];
    }
    return acc;
}

static float dot_q5_0(const uint8_t *w, q8v a, int K) {
    float acc = 0.0f;
    for (int b = 0; b < K / 32; b++, w += 22) {
        const uint32_t qh = u32_at(w + 2);
        const uint8_t *qs = w + 6;
        const int8_t *x = a.qs + 32 * b;
        int s = 0;
        for (int j = 0; j < 16; j++) {
            int lo = (qs[j] & 0x0F) | (int)((qh >> j) & 1) << 4;
            int hi = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            s += (lo - 16) * x[j] + (hi - 16) * x[j + 16];
        }
        acc += (h16(w) * a.d[b]) * (float)s;
    }
    return acc;
}

static float dot_q5_1(const uint8_t *w, q8v a, int K) {
    float acc = 0.0f;
    for (int b = 0; b < K / 32; b++, w += 24) {
        const uint32_t qh = u32_at(w + 4);
        const uint8_t *qs = w + 8;
        const int8_t *x = a.qs + 32 * b;
        int s = 0;
        for (int j = 0; j < 16; j++) {
            int lo = (qs[j] & 0x0F) | (int)((qh >> j) & 1) << 4;
            int hi = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            s += lo * x[j] + hi * x[j + 16];
        }
        acc += (h16(w) * a.d[b]) * (float)s + h16(w + 2) * a.ds[b];
    }
    return acc;
}

/* As ggml_quant.c's scale_min_k4. */
static void scale_min_k4(const uint8_t *s, int j, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 0x3F;
        *mn = s[j + 4] & 0x3F;
    } else {
        *sc = (s[j + 4] & 0x0F) | (s[j - 4] >> 6) << 4;
        *mn = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    }
}

static float dot_q4_k(const uint8_t *w, q8v a, int K) {
    float acc = 0.0f;
    for (int sbk = 0; sbk < K / 256; sbk++, w += 144) {
        const float d = h16(w), dmin = h16(w + 2);
        const uint8_t *sc = w + 4, *qs = w + 16;
        for (int j = 0; j < 8; j++) {
            int s, m;
            scale_min_k4(sc, j, &s, &m);
            const int c = j / 2, h = j % 2, blk = 8 * sbk + j;
            const int8_t *x = a.qs + 32 * blk;
            int isum = 0;
            for (int l = 0; l < 32; l++) isum += ((qs[32 * c + l] >> (4 * h)) & 0x0F) * x[l];
            acc += (d * (float)s * a.d[blk]) * (float)isum - dmin * (float)m * a.ds[blk];
        }
    }
    return acc;
}

static float dot_q5_k(const uint8_t *w, q8v a, int K) {
    float acc = 0.0f;
    for (int sbk = 0; sbk < K / 256; sbk++, w += 176) {
        const float d = h16(w), dmin = h16(w + 2);
        const uint8_t *sc = w + 4, *qh = w + 16, *qs = w + 48;
        for (int j = 0; j < 8; j++) {
            int s, m;
            scale_min_k4(sc, j, &s, &m);
            const int c = j / 2, h = j % 2, blk = 8 * sbk + j;
            const int8_t *x = a.qs + 32 * blk;
            int isum = 0;
            for (int l = 0; l < 32; l++) {
                int q = ((qs[32 * c + l] >> (4 * h)) & 0x0F) | ((qh[l] >> j) & 1) << 4;
                isum += q * x[l];
            }
            acc += (d * (float)s * a.d[blk]) * (float)isum - dmin * (float)m * a.ds[blk];
        }
    }
    return acc;
}

static float dot_q6_k(const uint8_t *w, q8v a, int K) {
    float acc = 0.0f;
    for (int sbk = 0; sbk < K / 256; sbk++, w += 210) {
        const uint8_t *ql = w, *qh = w + 128;
        const int8_t *sc = (const int8_t *)(w + 192);
        const float d = h16(w + 208);
        for (int j = 0; j < 8; j++) {
            const int c = j / 4, t = j % 4, blk = 8 * sbk + j;
            const int8_t *x = a.qs + 32 * blk;
            int g[2] = {0, 0};
            for (int l = 0; l < 32; l++) {
                int lo = (ql[64 * c + 32 * (t % 2) + l] >> (4 * (t / 2))) & 0x0F;
                int hi = (qh[32 * c + l] >> (2 * t)) & 3;
                g[l / 16] += ((lo | hi << 4) - 32) * x[l];
            }
            const int isum = sc[2 * j] * g[0] + sc[2 * j + 1] * g[1];
            acc += (d * a.d[blk]) * (float)isum;
        }
    }
    return acc;
}

/* The 16 signed 6-bit group scales of a Q3_K block (ggml_quant.c's dq_q3_k). */
static void q3_k_scales(const uint8_t *sc, int out[16]) {
    for (int g = 0; g < 16; g++) {
        int lo = (sc[g % 8] >> (4 * (g / 8))) & 0x0F, hi = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
        out[g] = (lo | hi << 4) - 32;
    }
}

static float dot_q3_k(const uint8_t *w, q8v a, int K) {
    float acc = 0.0f;
    for (int sbk = 0; sbk < K / 256; sbk++, w += 110) {
        const uint8_t *hm = w, *qs = w + 32;
        const float d = h16(w + 108);
        int scl[16];
        q3_k_scales(w + 96, scl);
        for (int j = 0; j < 8; j++) {
            const int c = j / 4, s = j % 4, blk = 8 * sbk + j;
            const int8_t *x = a.qs + 32 * blk;
            int g[2] = {0, 0};
            for (int l = 0; l < 32; l++) {
                int q = (qs[32 * c + l] >> (2 * s)) & 3;
                if (!((hm[l] >> j) & 1)) q -= 4;
                g[l / 16] += q * x[l];
            }
            const int isum = scl[2 * j] * g[0] + scl[2 * j + 1] * g[1];
            acc += (d * a.d[blk]) * (float)isum;
        }
    }
    return acc;
}

static float dot_q2_k(const uint8_t *w, q8v a, int K) {
    float acc = 0.0f;
    for (int sbk = 0; sbk < K / 256; sbk++, w += 84) {
        const uint8_t *sc = w, *qs = w + 16;
        const float d = h16(w + 80), dmin = h16(w + 82);
        for (int j = 0; j < 8; j++) {
            const int c = j / 4, s = j % 4, blk = 8 * sbk + j;
            const int8_t *x = a.qs + 32 * blk;
            int g[2] = {0, 0};
            for (int l = 0; l < 32; l++) g[l / 16] += ((qs[32 * c + l] >> (2 * s)) & 3) * x[l];
            const int isum = (sc[2 * j] & 0x0F) * g[0] + (sc[2 * j + 1] & 0x0F) * g[1];
            const int msum = (sc[2 * j] >> 4) * a.s16[2 * blk] + (sc[2 * j + 1] >> 4) * a.s16[2 * blk + 1];
            acc += a.d[blk] * (d * (float)isum - dmin * (float)msum);
        }
    }
    return acc;
}

typedef float (*dot_fn)(const uint8_t *w, q8v a, int K);

static dot_fn dot_of(int type) {
    switch (type) {
    case MSA_QT_Q4_0: return dot_q4_0;
    case MSA_QT_Q4_1: return dot_q4_1;
    case MSA_QT_Q5_0: return dot_q5_0;
    case MSA_QT_Q5_1: return dot_q5_1;
    case MSA_QT_Q8_0: return dot_q8_0;
    case MSA_QT_Q2_K: return dot_q2_k;
    case MSA_QT_Q3_K: return dot_q3_k;
    case MSA_QT_Q4_K: return dot_q4_k;
    case MSA_QT_Q5_K: return dot_q5_k;
    case MSA_QT_Q6_K: return dot_q6_k;
    default: return NULL;
    }
}

void msa_qgemm_portable(const msa_qgemm_args *g) {
    dot_fn f = dot_of(g->type);
    if (!f) return;
    const size_t ab = msa_q8_row_bytes(g->K);
    /* four activation rows at a time against each weight row */
    for (int i0 = 0; i0 < g->n; i0 += 4) {
        const int i1 = i0 + 4 < g->n ? i0 + 4 : g->n;
        for (int r = g->r0; r < g->r1; r++) {
            const uint8_t *w = (const uint8_t *)g->W + (size_t)r * g->w_row_bytes;
            const float b = g->bias ? g->bias[r] : 0.0f;
            for (int i = i0; i < i1; i++)
                g->y[(size_t)i * g->ldy + r] =
                    f(w, q8_view((const uint8_t *)g->a + (size_t)i * ab, g->K), g->K) + b;
        }
    }
}

/* ---- dispatch ------------------------------------------------------------------- */

static int use_avx2 = -1; /* -1: not decided yet (a benign race: every thread decides alike) */

/* AVX2, FMA and F16C, from the CPU. F16C is read from CPUID leaf 1 (ECX bit
 * 29) because clang's __builtin_cpu_supports does not know "f16c". */
static int cpu_avx2_fma_f16c(void) {
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    __builtin_cpu_init();
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 29))) return 0;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

static int avx2_wanted(void) {
    if (use_avx2 < 0) {
        const char *e = getenv("MSA_QGEMM");
        int want = !(e && strcmp(e, "portable") == 0);
        use_avx2 = want && cpu_avx2_fma_f16c();
    }
    return use_avx2;
}

void msa_qgemm(const msa_qgemm_args *g) {
    if (avx2_wanted() && msa_qgemm_avx2(g)) return;
    msa_qgemm_portable(g);
}

const char *msa_qgemm_path(void) { return avx2_wanted() ? "avx2" : "portable"; }

/* Used by qgemm_avx2.c (which cannot ask without AVX2 itself). */
int msa_qgemm_cpu_has_avx2(void);
int msa_qgemm_cpu_has_avx2(void) { return cpu_avx2_fma_f16c(); }
