/*
 * qgemm_avx2.c: the AVX2 path of the quantized products (kernels/qgemm.h),
 * for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K (Q2_K and Q3_K run
 * the portable path). Built with -mavx2 -mfma -mf16c (kernels/CMakeLists.txt);
 * msa_qgemm() calls it only when the CPU reports all three.
 *
 * The unit of work is one weight row against NC (1..4) activation rows: each
 * 32-element group of the row is unpacked once into 32 bytes, then for each
 * activation row the 32 products are summed in integers (maddubs: unsigned
 * bytes times signed bytes into int16 pairs; madd: pairs into int32) and
 * the eight int32 lanes are scaled into an fp32 accumulator by one FMA. A
 * signed weight (Q8_0, and Q4_0 / Q5_0 / Q6_K after their offset is taken
 * off) goes through maddubs as |w| times sign(w) * x, as ggml does; the
 * activations are in [-127, 127], so neither the sign flip nor the int16
 * pair sums can overflow (at most 2 * 128 * 127). Minimum terms (Q4_1,
 * Q5_1, Q4_K, Q5_K) use the activation row's ds = dx * sum qx.
 *
 * Rows are walked in tiles (16 weight rows x 64 activation rows, then 4
 * activation rows at a time), so that a tile of weights is read from memory
 * once per 64 activation rows and stays in L1 while it is reused.
 */
#include <stdint.h>
#include <string.h>

#include "kernels/qgemm.h"

int msa_qgemm_cpu_has_avx2(void);

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#define INLINE static inline __attribute__((always_inline))

static int cpu_ok = -1; /* -1: not asked yet (a benign race: every thread gets the same answer) */

typedef struct q8v {
    const int8_t *qs;
    const float *d, *ds;
} q8v;

INLINE float h16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 32 nibbles of 16 bytes: low nibbles in bytes 0-15, high in 16-31. */
INLINE __m256i nibbles16(const uint8_t *p) {
    const __m128i t = _mm_loadu_si128((const __m128i *)p);
    const __m256i b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}

/* Byte i is 0xFF where bit i of the 32 bits at p is set (ggml's bytes_from_bits_32). */
INLINE __m256i bits32(const uint8_t *p) {
    uint32_t x;
    memcpy(&x, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                           0x0101010101010101, 0x0000000000000000);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1));
}

/* int32 lanes of sum of u * x over pairs, u unsigned bytes, x signed. */
INLINE __m256i udot(__m256i u, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1));
}

#define LOADX(c, blk) _mm256_loadu_si256((const __m256i *)(a[c].qs + 32 * (blk)))

/* Signed weights: |w| once per row, sign(x, w) per activation row. */
INLINE void sdot_acc(__m256i w, __m256i aw, const q8v *a, int NC, int blk, float dw, __m256 *acc) {
    for (int c = 0; c < NC; c++) {
        const __m256i p = udot(aw, _mm256_sign_epi8(LOADX(c, blk), w));
        acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a[c].d[blk]), _mm256_cvtepi32_ps(p), acc[c]);
    }
}

/* Unsigned weights. */
INLINE void udot_acc(__m256i u, const q8v *a, int NC, int blk, float dw, __m256 *acc) {
    for (int c = 0; c < NC; c++) {
        const __m256i p = udot(u, LOADX(c, blk));
        acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a[c].d[blk]), _mm256_cvtepi32_ps(p), acc[c]);
    }
}

/* ---- the 32-element block types: tiles of NR weight rows x NC activation rows */

/* Unpacks one block: 32 weight bytes (signed for S types: q - offset),
 * the scale, and the minimum (types with one). */
INLINE void unpack_q8_0(const uint8_t *B, __m256i *q, float *d, float *m) {
    *q = _mm256_loadu_si256((const __m256i *)(B + 2));
    *d = h16(B);
    *m = 0.0f;
}
INLINE void unpack_q4_0(const uint8_t *B, __m256i *q, float *d, float *m) {
    *q = _mm256_sub_epi8(nibbles16(B + 2), _mm256_set1_epi8(8));
    *d = h16(B);
    *m = 0.0f;
}
INLINE void unpack_q5_0(const uint8_t *B, __m256i *q, float *d, float *m) {
    /* q - 16: a clear fifth bit makes the nibble negative (| 0xF0) */
    const __m256i hi = _mm256_andnot_si256(bits32(B + 2), _mm256_set1_epi8((char)0xF0));
    *q = _mm256_or_si256(nibbles16(B + 6), hi);
    *d = h16(B);
    *m = 0.0f;
}
INLINE void unpack_q4_1(const uint8_t *B, __m256i *q, float *d, float *m) {
    *q = nibbles16(B + 4);
    *d = h16(B);
    *m = h16(B + 2);
}
INLINE void unpack_q5_1(const uint8_t *B, __m256i *q, float *d, float *m) {
    const __m256i hi = _mm256_and_si256(bits32(B + 4), _mm256_set1_epi8(0x10));
    *q = _mm256_or_si256(nibbles16(B + 8), hi);
    *d = h16(B);
    *m = h16(B + 2);
}

/* out[r * 4 + c] = row r of w against activation row c. SIGNED: weights
 * through |w| and sign(x, w); MIN: add m * ds per block. */
#define TILE32(T, BYTES, SIGNED, MIN)                                                       \
    INLINE void tile_##T(const uint8_t *const *w, int NR, const q8v *a, int NC, int nb,     \
                         float *out) {                                                      \
        __m256 acc[4][4];                                                                   \
        float mins[4][4];                                                                   \
        for (int r = 0; r < NR; r++)                                                        \
            for (int c = 0; c < NC; c++) acc[r][c] = _mm256_setzero_ps(), mins[r][c] = 0.0f; \
        for (int b = 0; b < nb; b++) {                                                      \
            __m256i q[4], aq[4];                                                            \
            __m256 dwv[4];                                                                  \
            float dw[4], mw[4];                                                             \
            for (int r = 0; r < NR; r++) {                                                  \
                unpack_##T(w[r] + (size_t)b * BYTES, &q[r], &dw[r], &mw[r]);                \
                aq[r] = SIGNED ? _mm256_sign_epi8(q[r], q[r]) : q[r];                       \
                dwv[r] = _mm256_set1_ps(dw[r]);                                             \
            }                                                                               \
            for (int c = 0; c < NC; c++) {                                                  \
                const __m256i x = LOADX(c, b);                                              \
                const __m256 dxv = _mm256_broadcast_ss(a[c].d + b);                         \
                for (int r = 0; r < NR; r++) {                                              \
                    const __m256i p = udot(aq[r], SIGNED ? _mm256_sign_epi8(x, q[r]) : x);  \
                    acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(dwv[r], dxv),                 \
                                                _mm256_cvtepi32_ps(p), acc[r][c]);          \
                    if (MIN) mins[r][c] += mw[r] * a[c].ds[b];                              \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        for (int r = 0; r < NR; r++)                                                        \
            for (int c = 0; c < NC; c++) out[r * 4 + c] = hsum(acc[r][c]) + mins[r][c];     \
    }
TILE32(q8_0, 34, 1, 0)
TILE32(q4_0, 18, 1, 0)
TILE32(q5_0, 22, 1, 0)
TILE32(q4_1, 20, 0, 1)
TILE32(q5_1, 24, 0, 1)

/* The eight 6-bit scales and mins of a Q4_K / Q5_K super-block. */
INLINE void k4_scales(const uint8_t *s, float d, float dmin, float *sc, __m256 *mins) {
    float mn[8];
    for (int j = 0; j < 4; j++) {
        sc[j] = d * (float)(s[j] & 0x3F);
        mn[j] = dmin * (float)(s[j + 4] & 0x3F);
        sc[j + 4] = d * (float)((s[j + 8] & 0x0F) | (s[j] >> 6) << 4);
        mn[j + 4] = dmin * (float)((s[j + 8] >> 4) | (s[j + 4] >> 6) << 4);
    }
    *mins = _mm256_loadu_ps(mn);
}

INLINE void row_q4_k(const uint8_t *w, const q8v *a, int NC, int nsb, float *out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int s = 0; s < nsb; s++, w += 144) {
        float sc[8];
        __m256 mins;
        k4_scales(w + 4, h16(w), h16(w + 2), sc, &mins);
        /* the minimum terms of the eight sub-blocks, one vector per row */
        for (int c = 0; c < NC; c++)
            acc[c] = _mm256_fnmadd_ps(mins, _mm256_loadu_ps(a[c].ds + 8 * s), acc[c]);
        for (int k = 0; k < 4; k++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(w + 16 + 32 * k));
            udot_acc(_mm256_and_si256(v, m4), a, NC, 8 * s + 2 * k, sc[2 * k], acc);
            udot_acc(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), a, NC, 8 * s + 2 * k + 1,
                     sc[2 * k + 1], acc);
        }
    }
    for (int c = 0; c < NC; c++) out[c] = hsum(acc[c]);
}

INLINE void row_q5_k(const uint8_t *w, const q8v *a, int NC, int nsb, float *out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    for (int s = 0; s < nsb; s++, w += 176) {
        float sc[8];
        __m256 mins;
        k4_scales(w + 4, h16(w), h16(w + 2), sc, &mins);
        for (int c = 0; c < NC; c++)
            acc[c] = _mm256_fnmadd_ps(mins, _mm256_loadu_ps(a[c].ds + 8 * s), acc[c]);
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(w + 16));
        for (int k = 0; k < 4; k++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(w + 48 + 32 * k));
            const int j0 = 2 * k, j1 = 2 * k + 1;
            const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, j0), one), 4);
            const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, j1), one), 4);
            udot_acc(_mm256_or_si256(_mm256_and_si256(v, m4), h0), a, NC, 8 * s + j0, sc[j0], acc);
            udot_acc(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), h1), a, NC,
                     8 * s + j1, sc[j1], acc);
        }
    }
    for (int c = 0; c < NC; c++) out[c] = hsum(acc[c]);
}

INLINE void row_q6_k(const uint8_t *w, const q8v *a, int NC, int nsb, float *out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3), o32 = _mm256_set1_epi8(32);
    for (int s = 0; s < nsb; s++, w += 210) {
        const int8_t *sc = (const int8_t *)(w + 192);
        const float d = h16(w + 208);
        for (int c2 = 0; c2 < 2; c2++) {
            const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(w + 64 * c2));
            const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(w + 64 * c2 + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(w + 128 + 32 * c2));
            for (int t = 0; t < 4; t++) {
                const int j = 4 * c2 + t, blk = 8 * s + j;
                const __m256i ql = t % 2 ? ql1 : ql0;
                const __m256i lo = _mm256_and_si256(t / 2 ? _mm256_srli_epi16(ql, 4) : ql, m4);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * t), m2);
                const __m256i q = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), o32);
                const __m256i aq = _mm256_sign_epi8(q, q);
                /* the two 16-element groups' scales, as int16 for madd */
                const __m256i scv = _mm256_set_m128i(_mm_set1_epi16(sc[2 * j + 1]), _mm_set1_epi16(sc[2 * j]));
                for (int c = 0; c < NC; c++) {
                    const __m256i p16 = _mm256_maddubs_epi16(aq, _mm256_sign_epi8(LOADX(c, blk), q));
                    const __m256i p = _mm256_madd_epi16(p16, scv);
                    acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * a[c].d[blk]), _mm256_cvtepi32_ps(p), acc[c]);
                }
            }
        }
    }
    for (int c = 0; c < NC; c++) out[c] = hsum(acc[c]);
}

/* ---- activation quantization (the same values as qgemm.c's, bit for bit:
 * the same max, division and reciprocal, and round-to-nearest-even) ----------- */

int msa_q8_quantize_row_avx2(const float *x, int K, void *dst) {
    if (cpu_ok < 0) cpu_ok = msa_qgemm_cpu_has_avx2();
    if (!cpu_ok) return 0;
    int8_t *qs = dst;
    float *d = (float *)(qs + K), *ds = d + K / 32;
    int16_t *s16 = (int16_t *)(ds + K / 32);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int b = 0; b < K / 32; b++) {
        __m256 v[4];
        __m256 mx = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + 32 * b + 8 * k);
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[k]));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        const float db = amax / 127.0f, id = db > 0.0f ? 1.0f / db : 0.0f;
        const __m256 idv = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; k++) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], idv));
        /* |x * id| <= 127 (plus rounding): no clamp needed past the packs' saturation */
        const __m256i s01 = _mm256_add_epi32(q[0], q[1]), s23 = _mm256_add_epi32(q[2], q[3]);
        __m128i h0 = _mm_add_epi32(_mm256_castsi256_si128(s01), _mm256_extracti128_si256(s01, 1));
        __m128i h1 = _mm_add_epi32(_mm256_castsi256_si128(s23), _mm256_extracti128_si256(s23, 1));
        h0 = _mm_hadd_epi32(h0, h1);
        h0 = _mm_hadd_epi32(h0, h0); /* lanes: sum 0-15, sum 16-31 */
        const int sa = _mm_cvtsi128_si32(h0), sb = _mm_extract_epi32(h0, 1);
        __m256i p16a = _mm256_packs_epi32(q[0], q[1]), p16b = _mm256_packs_epi32(q[2], q[3]);
        __m256i p8 = _mm256_packs_epi16(p16a, p16b);
        p8 = _mm256_permutevar8x32_epi32(p8, perm);
        p8 = _mm256_max_epi8(p8, _mm256_set1_epi8(-127));
        _mm256_storeu_si256((__m256i *)(qs + 32 * b), p8);
        d[b] = db;
        ds[b] = db * (float)(sa + sb);
        s16[2 * b] = (int16_t)sa;
        s16[2 * b + 1] = (int16_t)sb;
    }
    return 1;
}

/* ---- driver ---------------------------------------------------------------------- */

/* A tile function: NR (1, 2 or 4) rows at w[0..NR-1] against NC (1..4)
 * activation rows; out[r * 4 + c]. */
typedef void (*tile_fn)(const uint8_t *const *w, const q8v *a, int nb, float *out);

/* The k-quant rows have no multi-row form: NR is 1. */
#define KROW(T, NC)                                                                      \
    static void T##_1x##NC(const uint8_t *const *w, const q8v *a, int nb, float *o) {    \
        row_##T(w[0], a, NC, nb, o);                                                     \
    }
#define KROWS(T) KROW(T, 1) KROW(T, 2) KROW(T, 3) KROW(T, 4)
KROWS(q4_k)
KROWS(q5_k)
KROWS(q6_k)

#define TROW(T, NR, NC)                                                                  \
    static void T##_##NR##x##NC(const uint8_t *const *w, const q8v *a, int nb, float *o) { \
        tile_##T(w, NR, a, NC, nb, o);                                                   \
    }
#define TROWS(T) TROW(T, 4, 1) TROW(T, 1, 1) TROW(T, 2, 1) TROW(T, 2, 2) TROW(T, 2, 3) TROW(T, 2, 4)
TROWS(q8_0)
TROWS(q4_0)
TROWS(q5_0)
TROWS(q4_1)
TROWS(q5_1)

typedef struct kernel {
    int per_block, nr;   /* elements per block; weight rows per tile (n > 1) */
    tile_fn dec4;        /* 4 rows x 1 (decode), or NULL */
    tile_fn one[4];      /* 1 row x NC */
    tile_fn multi[4];    /* nr rows x NC */
} kernel;

#define T32(T) {32, 2, T##_4x1, {T##_1x1, NULL, NULL, NULL}, {T##_2x1, T##_2x2, T##_2x3, T##_2x4}}
#define TK(T) {256, 1, NULL, {T##_1x1, T##_1x2, T##_1x3, T##_1x4}, {T##_1x1, T##_1x2, T##_1x3, T##_1x4}}

static const kernel *kernel_of(int type) {
    static const kernel k_q8_0 = T32(q8_0), k_q4_0 = T32(q4_0), k_q5_0 = T32(q5_0),
                        k_q4_1 = T32(q4_1), k_q5_1 = T32(q5_1), k_q4_k = TK(q4_k),
                        k_q5_k = TK(q5_k), k_q6_k = TK(q6_k);
    switch (type) {
    case MSA_QT_Q8_0: return &k_q8_0;
    case MSA_QT_Q4_0: return &k_q4_0;
    case MSA_QT_Q5_0: return &k_q5_0;
    case MSA_QT_Q4_1: return &k_q4_1;
    case MSA_QT_Q5_1: return &k_q5_1;
    case MSA_QT_Q4_K: return &k_q4_k;
    case MSA_QT_Q5_K: return &k_q5_k;
    case MSA_QT_Q6_K: return &k_q6_k;
    default: return NULL;
    }
}

static void store(const msa_qgemm_args *g, int r, int nr, int i, int nc, const float *o) {
    for (int k = 0; k < nr; k++) {
        const float b = g->bias ? g->bias[r + k] : 0.0f;
        for (int c = 0; c < nc; c++) g->y[(size_t)(i + c) * g->ldy + r + k] = o[k * 4 + c] + b;
    }
}

int msa_qgemm_avx2(const msa_qgemm_args *g) {
    if (cpu_ok < 0) cpu_ok = msa_qgemm_cpu_has_avx2();
    const kernel *kn = cpu_ok ? kernel_of(g->type) : NULL;
    if (!kn) return 0;
    const int K = g->K, nb = K / kn->per_block;
    const size_t ab = msa_q8_row_bytes(K);
    const uint8_t *W = g->W;
    enum { RT = 16, CT = 64 };
    for (int i0 = 0; i0 < g->n; i0 += CT) {
        const int i1 = i0 + CT < g->n ? i0 + CT : g->n;
        for (int rt = g->r0; rt < g->r1; rt += RT) {
            const int rt1 = rt + RT < g->r1 ? rt + RT : g->r1;
            for (int i = i0; i < i1; i += 4) {
                const int nc = i1 - i < 4 ? i1 - i : 4;
                q8v a[4];
                for (int c = 0; c < nc; c++) {
                    const uint8_t *p = (const uint8_t *)g->a + (size_t)(i + c) * ab;
                    a[c].qs = (const int8_t *)p;
                    a[c].d = (const float *)(p + K);
                    a[c].ds = a[c].d + K / 32;
                }
                int r = rt;
                float o[16];
                const uint8_t *w[4];
                /* one activation row: four weight rows at a time (four
                 * independent sums in flight) */
                if (nc == 1 && kn->dec4)
                    for (; r + 4 <= rt1; r += 4) {
                        for (int k = 0; k < 4; k++) w[k] = W + (size_t)(r + k) * g->w_row_bytes;
                        kn->dec4(w, a, nb, o);
                        store(g, r, 4, i, 1, o);
                    }
                for (; r + kn->nr <= rt1; r += kn->nr) {
                    for (int k = 0; k < kn->nr; k++) w[k] = W + (size_t)(r + k) * g->w_row_bytes;
                    kn->multi[nc - 1](w, a, nb, o);
                    store(g, r, kn->nr, i, nc, o);
                }
                for (; r < rt1; r++) { /* the rows left over: one at a time, one column each */
                    w[0] = W + (size_t)r * g->w_row_bytes;
                    for (int c = 0; c < nc; c++) {
                        kn->one[0](w, a + c, nb, o);
                        store(g, r, 1, i + c, 1, o);
                    }
                }
            }
        }
    }
    return 1;
}

#else /* no AVX2 in this build */

int msa_qgemm_avx2(const msa_qgemm_args *g) {
    (void)g;
    return 0;
}

int msa_q8_quantize_row_avx2(const float *x, int K, void *dst) {
    (void)x, (void)K, (void)dst;
    return 0;
}

#endif
