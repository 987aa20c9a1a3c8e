/*
 * qgemv.cu: the decode GEMV over ggml-quantized weights and the dequantize
 * kernel behind kernels/qgemv.h. Built without --use_fast_math, like the
 * other forward kernels (the dequantize kernel must equal the C reference
 * bit for bit).
 *
 * GEMV. Each CTA (256 threads) first stages the input row in shared memory
 * as 8-bit integers: warp w takes groups of 32 elements, finds the group's
 * largest |u|, stores scale s = amax / 127, q_j = rint(u_j / s) and the sum
 * of q over each half group (the formats with a per-block offset, "min",
 * need sum_j u_j, and the k-quants keep one scale per 16 elements). Then a
 * warp owns consecutive rows; its lanes stride over a row's "pieces": a
 * block of 32 for the small formats, 64 elements (two sub-blocks sharing
 * one 32-byte run of nibbles) for Q4_K and Q5_K, 128 (half a super-block,
 * whose bytes no other piece reads) for Q6_K, Q3_K and Q2_K. A piece's
 * packed integers are widened to bytes with a few shifts and masks (four
 * at a time), multiplied with the input's bytes by dp4a, and scaled once
 * per (sub-)block in fp32:
 *
 *   sum_j (d sc q_j - dm mn) u_j  ~=  s (d sc sum_j q_j a_j - dm mn sum_j a_j)
 *
 * where u_j ~= s a_j. Weights are read through the read-only path; formats
 * whose blocks are not 4-byte aligned (Q4_0, Q5_0, Q8_0, Q6_K, Q3_K: 18, 22,
 * 34, 210 and 110 bytes) are read as 16-bit halves.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cuda_common.cuh"
#include "kernels/forward_rows.cuh"
#include "kernels/qgemv.h"

/* ggml type ids (the numbers in a GGUF file; tests assert they equal
 * engine/model/gguf.h's MSA_GGML_*) */
enum {
    T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8,
    T_Q2_K = 10, T_Q3_K = 11, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14
};

#define QG_THREADS 256
#define QG_WARPS (QG_THREADS / 32)

typedef struct qfmt {
    int type, block, bytes, piece; /* elements per block, bytes per block, elements per piece */
} qfmt;

static const qfmt FORMATS[] = {
    {T_Q4_0, 32, 18, 32},    {T_Q4_1, 32, 20, 32},    {T_Q5_0, 32, 22, 32},
    {T_Q5_1, 32, 24, 32},    {T_Q8_0, 32, 34, 32},    {T_Q2_K, 256, 84, 128},
    {T_Q3_K, 256, 110, 128}, {T_Q4_K, 256, 144, 64},  {T_Q5_K, 256, 176, 64},
    {T_Q6_K, 256, 210, 128},
};

static const qfmt *fmt_of(int type) {
    for (size_t i = 0; i < sizeof FORMATS / sizeof FORMATS[0]; i++)
        if (FORMATS[i].type == type) return &FORMATS[i];
    return NULL;
}

extern "C" int msa_fwd_qtype_supported(int type) { return fmt_of(type) != NULL; }

extern "C" size_t msa_fwd_qrow_bytes(int type, int in) {
    const qfmt *f = fmt_of(type);
    if (!f || in <= 0 || in % f->block) return 0;
    return (size_t)(in / f->block) * (size_t)f->bytes;
}

/* ---- loads ----------------------------------------------------------------- */

__device__ __forceinline__ uint32_t ld16(const uint8_t *p) { return __ldg((const unsigned short *)p); }
__device__ __forceinline__ uint32_t ld32(const uint8_t *p) { return __ldg((const unsigned int *)p); }
/* a 32-bit word at a 2-byte aligned address */
__device__ __forceinline__ uint32_t ld32h(const uint8_t *p) { return ld16(p) | ld16(p + 2) << 16; }
__device__ __forceinline__ float half_at(const uint8_t *p) {
    return __half2float(__ushort_as_half((unsigned short)ld16(p)));
}
__device__ __forceinline__ int dp4a(uint32_t a, int b) { return __dp4a((int)a, b, 0); }
/* bits 0..3 of x to bit 0 of bytes 0..3 (the shifts by 7k never collide) */
__device__ __forceinline__ uint32_t spread4(uint32_t x) { return (x * 0x00204081u) & 0x01010101u; }

/* the quantized input: A (in/4 words of four int8), its group scales and half-group sums */
struct qin {
    const int *A;
    const float *s;   /* (in/32) */
    const int *sum16; /* (in/16) */
};

__device__ __forceinline__ int sum32(const qin &x, int g) { return x.sum16[2 * g] + x.sum16[2 * g + 1]; }

/* the 8 words of input group g (two 16-byte loads) */
__device__ __forceinline__ void ld_act(const qin &x, int g, int (&a)[8]) {
    const int4 v0 = ((const int4 *)x.A)[2 * g], v1 = ((const int4 *)x.A)[2 * g + 1];
    a[0] = v0.x, a[1] = v0.y, a[2] = v0.z, a[3] = v0.w;
    a[4] = v1.x, a[5] = v1.y, a[6] = v1.z, a[7] = v1.w;
}

/* N words from a 2-byte aligned address: the aligned words around them,
 * funnel-shifted (one load per word, plus one when the address is not
 * 4-byte aligned) */
template <int N>
__device__ __forceinline__ void ldrun(const uint8_t *p, uint32_t (&w)[N]) {
    const uintptr_t a = (uintptr_t)p;
    const unsigned int *q = (const unsigned int *)(a & ~(uintptr_t)3);
    const int sh = (int)(a & 3) * 8;
    uint32_t prev = __ldg(q);
#pragma unroll
    for (int t = 0; t < N; t++) {
        const uint32_t nxt = (t + 1 < N || sh) ? __ldg(q + t + 1) : 0u;
        w[t] = __funnelshift_r(prev, nxt, sh);
        prev = nxt;
    }
}

/* ---- one piece of each format: its part of the row's dot product ------------ */

template <int T> __device__ float piece(const uint8_t *row, int p, const qin &x);

template <> __device__ float piece<T_Q8_0>(const uint8_t *row, int p, const qin &x) {
    const uint8_t *b = row + 34 * p;
    uint32_t w[8];
    int a[8];
    ldrun<8>(b + 2, w);
    ld_act(x, p, a);
    int si = 0;
#pragma unroll
    for (int t = 0; t < 8; t++) si += dp4a(w[t], a[t]);
    return half_at(b) * x.s[p] * (float)si;
}

/* the 4-bit formats of 32: nibbles of 16 bytes (words w), low ones
 * elements 0..15; with a fifth bit from qh */
template <int HI_BITS>
__device__ __forceinline__ int nib32(const uint32_t *w, uint32_t qh, int p, const qin &x) {
    int a[8];
    ld_act(x, p, a);
    int si = 0;
#pragma unroll
    for (int t = 0; t < 4; t++) {
        uint32_t lo = w[t] & 0x0F0F0F0Fu, hi = (w[t] >> 4) & 0x0F0F0F0Fu;
        if (HI_BITS) {
            lo |= spread4((qh >> (4 * t)) & 0xFu) << 4;
            hi |= spread4((qh >> (16 + 4 * t)) & 0xFu) << 4;
        }
        si += dp4a(lo, a[t]) + dp4a(hi, a[4 + t]);
    }
    return si;
}

template <> __device__ float piece<T_Q4_0>(const uint8_t *row, int p, const qin &x) {
    const uint8_t *b = row + 18 * p;
    uint32_t w[4];
    ldrun<4>(b + 2, w);
    const int si = nib32<0>(w, 0, p, x);
    return half_at(b) * x.s[p] * (float)(si - 8 * sum32(x, p));
}
template <> __device__ float piece<T_Q4_1>(const uint8_t *row, int p, const qin &x) {
    const uint8_t *b = row + 20 * p; /* 4-byte aligned */
    const uint32_t w[4] = {ld32(b + 4), ld32(b + 8), ld32(b + 12), ld32(b + 16)};
    const int si = nib32<0>(w, 0, p, x);
    return x.s[p] * (half_at(b) * (float)si + half_at(b + 2) * (float)sum32(x, p));
}
template <> __device__ float piece<T_Q5_0>(const uint8_t *row, int p, const qin &x) {
    const uint8_t *b = row + 22 * p;
    uint32_t w[5]; /* qh, then the 16 bytes of nibbles */
    ldrun<5>(b + 2, w);
    const int si = nib32<1>(w + 1, w[0], p, x);
    return half_at(b) * x.s[p] * (float)(si - 16 * sum32(x, p));
}
template <> __device__ float piece<T_Q5_1>(const uint8_t *row, int p, const qin &x) {
    const uint8_t *b = row + 24 * p; /* 4-byte aligned */
    const uint32_t w[4] = {ld32(b + 8), ld32(b + 12), ld32(b + 16), ld32(b + 20)};
    const int si = nib32<1>(w, ld32(b + 4), p, x);
    return x.s[p] * (half_at(b) * (float)si + half_at(b + 2) * (float)sum32(x, p));
}

/* Q4_K / Q5_K sub-block j's 6-bit scale and min from the 12 scale bytes s */
__device__ __forceinline__ void scale_min_k4(const uint8_t *s, int j, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 0x3F;
        *mn = s[j + 4] & 0x3F;
    } else {
        *sc = (s[j + 4] & 0x0F) | (s[j - 4] >> 6) << 4;
        *mn = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    }
}

/* Q4_K and Q5_K: piece c of super-block k = sub-blocks 2c (low nibbles)
 * and 2c + 1 (high nibbles) of the same 32 bytes (blocks of 144 and 176
 * bytes: 16-byte aligned) */
template <int FIVE>
__device__ __forceinline__ float piece_k45(const uint8_t *row, int p, const qin &x) {
    const int k = p >> 2, c = p & 3;
    const uint8_t *b = row + (FIVE ? 176 : 144) * k;
    const uint4 q0 = __ldg((const uint4 *)(b + (FIVE ? 48 : 16) + 32 * c));
    const uint4 q1 = __ldg((const uint4 *)(b + (FIVE ? 48 : 16) + 32 * c + 16));
    const uint32_t w[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
    const uint4 hd = __ldg((const uint4 *)b); /* d, dmin, scales */
    uint4 qh0 = make_uint4(0, 0, 0, 0), qh1 = qh0;
    if (FIVE) {
        qh0 = __ldg((const uint4 *)(b + 16));
        qh1 = __ldg((const uint4 *)(b + 32));
    }
    const uint32_t qh[8] = {qh0.x, qh0.y, qh0.z, qh0.w, qh1.x, qh1.y, qh1.z, qh1.w};
    const int g0 = 8 * k + 2 * c, g1 = g0 + 1;
    int a0[8], a1[8];
    ld_act(x, g0, a0);
    ld_act(x, g1, a1);
    int s0 = 0, s1 = 0;
#pragma unroll
    for (int t = 0; t < 8; t++) {
        uint32_t lo = w[t] & 0x0F0F0F0Fu, hi = (w[t] >> 4) & 0x0F0F0F0Fu;
        if (FIVE) {
            lo |= ((qh[t] >> (2 * c)) & 0x01010101u) << 4;
            hi |= ((qh[t] >> (2 * c + 1)) & 0x01010101u) << 4;
        }
        s0 += dp4a(lo, a0[t]);
        s1 += dp4a(hi, a1[t]);
    }
    const uint32_t sw[3] = {hd.y, hd.z, hd.w};
    int sc0, mn0, sc1, mn1;
    scale_min_k4((const uint8_t *)sw, 2 * c, &sc0, &mn0);
    scale_min_k4((const uint8_t *)sw, 2 * c + 1, &sc1, &mn1);
    const float d = __half2float(__ushort_as_half((unsigned short)(hd.x & 0xFFFF)));
    const float dmin = __half2float(__ushort_as_half((unsigned short)(hd.x >> 16)));
    return x.s[g0] * (d * (float)(sc0 * s0) - dmin * (float)(mn0 * sum32(x, g0))) +
           x.s[g1] * (d * (float)(sc1 * s1) - dmin * (float)(mn1 * sum32(x, g1)));
}
template <> __device__ float piece<T_Q4_K>(const uint8_t *row, int p, const qin &x) {
    return piece_k45<0>(row, p, x);
}
template <> __device__ float piece<T_Q5_K>(const uint8_t *row, int p, const qin &x) {
    return piece_k45<1>(row, p, x);
}

/* Q6_K: half c of super-block k, 128 elements in four groups s of 32:
 * element 32 s + l has its low four bits in nibble s / 2 of
 * ql[64 c + 32 (s % 2) + l], its top two in bits 2 s of qh[32 c + l]; one
 * signed scale per 16 */
template <> __device__ float piece<T_Q6_K>(const uint8_t *row, int p, const qin &x) {
    const int k = p >> 1, c = p & 1;
    const uint8_t *b = row + 210 * k;
    uint32_t wl[16], wh[8], scw[2];
    ldrun<16>(b + 64 * c, wl);
    ldrun<8>(b + 128 + 32 * c, wh);
    ldrun<2>(b + 192 + 8 * c, scw);
    const int8_t *sc = (const int8_t *)scw;
    float acc = 0.0f;
#pragma unroll
    for (int s = 0; s < 4; s++) {
        const int g = 8 * k + 4 * c + s;
        int a[8];
        ld_act(x, g, a);
        int lo = 0, hi = 0;
#pragma unroll
        for (int t = 0; t < 8; t++) {
            const uint32_t q = ((wl[8 * (s & 1) + t] >> (4 * (s >> 1))) & 0x0F0F0F0Fu) |
                               ((wh[t] >> (2 * s)) & 0x03030303u) << 4;
            if (t < 4) lo += dp4a(q, a[t]);
            else hi += dp4a(q, a[t]);
        }
        acc += x.s[g] * (float)(sc[2 * s] * (lo - 32 * x.sum16[2 * g]) +
                                sc[2 * s + 1] * (hi - 32 * x.sum16[2 * g + 1]));
    }
    return half_at(b + 208) * acc;
}

/* Q2_K: half c of super-block k: element 32 s + l is bits 2 s of
 * qs[32 c + l]; scales[8 c + 2 s (+1)] hold scale (low nibble) and min of
 * each 16 (blocks of 84 bytes: 4-byte aligned) */
template <> __device__ float piece<T_Q2_K>(const uint8_t *row, int p, const qin &x) {
    const int k = p >> 1, c = p & 1;
    const uint8_t *b = row + 84 * k;
    uint32_t w[8];
#pragma unroll
    for (int t = 0; t < 8; t++) w[t] = ld32(b + 16 + 32 * c + 4 * t);
    const uint32_t scw[2] = {ld32(b + 8 * c), ld32(b + 8 * c + 4)};
    const uint8_t *sc = (const uint8_t *)scw;
    const float d = half_at(b + 80), dmin = half_at(b + 82);
    float acc = 0.0f;
#pragma unroll
    for (int s = 0; s < 4; s++) {
        const int g = 8 * k + 4 * c + s;
        int a[8];
        ld_act(x, g, a);
        int lo = 0, hi = 0;
#pragma unroll
        for (int t = 0; t < 8; t++) {
            const uint32_t q = (w[t] >> (2 * s)) & 0x03030303u;
            if (t < 4) lo += dp4a(q, a[t]);
            else hi += dp4a(q, a[t]);
        }
        const int sa = sc[2 * s], sb = sc[2 * s + 1];
        acc += x.s[g] * (d * (float)((sa & 15) * lo + (sb & 15) * hi) -
                         dmin * (float)((sa >> 4) * x.sum16[2 * g] + (sb >> 4) * x.sum16[2 * g + 1]));
    }
    return acc;
}

/* Q3_K: half c of super-block k: element 32 s + l has low bits 2 s of
 * qs[32 c + l] and, when bit 4 c + s of hmask[l] is clear, minus 4; group
 * G of 16 has a 6-bit scale minus 32 (low four bits in scales[G % 8]
 * nibble G / 8, top two in scales[8 + G % 4] bits 2 (G / 4)) */
template <> __device__ float piece<T_Q3_K>(const uint8_t *row, int p, const qin &x) {
    const int k = p >> 1, c = p & 1;
    const uint8_t *b = row + 110 * k;
    uint32_t w[8], hm[8], scw[3];
    ldrun<8>(b, hm);
    ldrun<8>(b + 32 + 32 * c, w);
    ldrun<3>(b + 96, scw);
    const uint8_t *sc = (const uint8_t *)scw;
    float acc = 0.0f;
#pragma unroll
    for (int s = 0; s < 4; s++) {
        const int g = 8 * k + 4 * c + s;
        int a[8];
        ld_act(x, g, a);
        int lo = 0, hi = 0;
#pragma unroll
        for (int t = 0; t < 8; t++) {
            const uint32_t q = ((w[t] >> (2 * s)) & 0x03030303u) |
                               ((hm[t] >> (4 * c + s)) & 0x01010101u) << 2;
            if (t < 4) lo += dp4a(q, a[t]);
            else hi += dp4a(q, a[t]);
        }
        int scl[2];
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int G = 8 * c + 2 * s + e;
            scl[e] = (((sc[G % 8] >> (4 * (G / 8))) & 0x0F) | ((sc[8 + G % 4] >> (2 * (G / 4))) & 3) << 4) - 32;
        }
        acc += x.s[g] * (float)(scl[0] * (lo - 4 * x.sum16[2 * g]) + scl[1] * (hi - 4 * x.sum16[2 * g + 1]));
    }
    return half_at(b + 108) * acc;
}

/* ---- the GEMV ------------------------------------------------------------------ */

/* The input row, quantized once per GEMV by qin_kernel into the caller's
 * workspace: A (in bytes), S (in/32 floats), SUM16 (in/16 ints). */
static size_t qin_bytes(int in) { return (size_t)in + (size_t)(in / 32) * 4 + (size_t)(in / 16) * 4; }

extern "C" size_t msa_fwd_qgemv_workspace_size(int in) {
    return in > 0 && in <= MSA_FWD_QGEMV_MAX_IN ? qin_bytes(in) : 0;
}


struct qgemv_args {
    msa_fwd_qmat seg[MSA_FWD_QGEMV_MAX_SEG];
    size_t row_bytes[MSA_FWD_QGEMV_MAX_SEG];
    int nseg, outd; /* logical rows: sum of the segments' rows, or seg[0].rows with h */
    const __nv_bfloat16 *xb;
    const float *xf, *nw;
    float eps;
    int mode, in, rpw, accumulate;
    float *y;
    __nv_bfloat16 *h;
    int8_t *A;
    float *S;
    int *SUM16;
};


/* Quantizes the input row: warp w of CTA b takes group 8 b + w of 32
 * elements (every CTA first takes the rmsnorm sum itself under NORM). */
__global__ void __launch_bounds__(QG_THREADS) qin_kernel(qgemv_args a) {
    __shared__ float red[32];
    const int in = a.in, lane = threadIdx.x & 31, g = blockIdx.x * QG_WARPS + (threadIdx.x >> 5);
    msa_fwd_pdl_launch_dependents();
    msa_fwd_pdl_wait();
    float r = 1.0f;
    if (a.mode == MSA_FWD_GEMV_NORM) {
        float ss = 0.0f;
        for (int j = threadIdx.x; j < in; j += QG_THREADS) ss += a.xf[j] * a.xf[j];
        ss = msa_fwd_block_sum(ss, red);
        r = 1.0f / sqrtf(ss / in + a.eps);
    }
    if (g >= in / 32) return;
    const int j = 32 * g + lane;
    const float u = a.mode == MSA_FWD_GEMV_NORM ? __bfloat162float(__float2bfloat16(a.nw[j] * (r * a.xf[j])))
                                                : __bfloat162float(a.xb[j]);
    float amax = fabsf(u);
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float s = amax / 127.0f;
    const int q = s > 0.0f ? (int)rintf(u / s) : 0;
    a.A[j] = (int8_t)q;
    int hs = q;
    for (int o = 8; o > 0; o >>= 1) hs += __shfl_xor_sync(0xffffffffu, hs, o);
    if (lane == 0) a.S[g] = s, a.SUM16[2 * g] = hs;
    if (lane == 16) a.SUM16[2 * g + 1] = hs;
}

/* this lane's parts of nr (<= QG_ROWS) consecutive rows of one matrix */
template <int T, int QG_ROWS>
__device__ __forceinline__ void rows_dot_t(const uint8_t *row, size_t rb, int nr, int pieces, const qin &x,
                                           float (&acc)[QG_ROWS]) {
    for (int p = threadIdx.x & 31; p < pieces; p += 32) {
#pragma unroll
        for (int k = 0; k < QG_ROWS; k++)
            if (k < nr) acc[k] += piece<T>(row + k * rb, p, x);
    }
}

template <int QG_ROWS>
__device__ void rows_dot(const qgemv_args &a, int m, int r, int nr, const qin &x, float (&acc)[QG_ROWS]) {
    const size_t rb = a.row_bytes[m];
    const uint8_t *row = (const uint8_t *)a.seg[m].w + (size_t)r * rb;
    const int in = a.in;
    switch (a.seg[m].type) {
    case T_Q4_0: rows_dot_t<T_Q4_0, QG_ROWS>(row, rb, nr, in / 32, x, acc); break;
    case T_Q4_1: rows_dot_t<T_Q4_1, QG_ROWS>(row, rb, nr, in / 32, x, acc); break;
    case T_Q5_0: rows_dot_t<T_Q5_0, QG_ROWS>(row, rb, nr, in / 32, x, acc); break;
    case T_Q5_1: rows_dot_t<T_Q5_1, QG_ROWS>(row, rb, nr, in / 32, x, acc); break;
    case T_Q8_0: rows_dot_t<T_Q8_0, QG_ROWS>(row, rb, nr, in / 32, x, acc); break;
    case T_Q2_K: rows_dot_t<T_Q2_K, QG_ROWS>(row, rb, nr, in / 128, x, acc); break;
    case T_Q3_K: rows_dot_t<T_Q3_K, QG_ROWS>(row, rb, nr, in / 128, x, acc); break;
    case T_Q4_K: rows_dot_t<T_Q4_K, QG_ROWS>(row, rb, nr, in / 64, x, acc); break;
    case T_Q5_K: rows_dot_t<T_Q5_K, QG_ROWS>(row, rb, nr, in / 64, x, acc); break;
    case T_Q6_K: rows_dot_t<T_Q6_K, QG_ROWS>(row, rb, nr, in / 128, x, acc); break;
    default: break;
    }
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

#define QG_DEFAULT_VARIANT 1 /* see msa_fwd_qgemv */

/* Warp gw owns rows [gw rpw, gw rpw + rpw), read QG_ROWS at a time (fewer
 * where a group would cross into the next segment). */
template <int QG_ROWS, int MINB>
__global__ void __launch_bounds__(QG_THREADS, MINB) qgemv_kernel(qgemv_args a) {
    const int lane = threadIdx.x & 31;
    const int gw = blockIdx.x * QG_WARPS + (threadIdx.x >> 5), row0 = gw * a.rpw;
    int end = row0 + a.rpw;
    end = end < a.outd ? end : a.outd;
    msa_fwd_pdl_launch_dependents();
    msa_fwd_pdl_wait(); /* the quantized input (qin_kernel) is visible from here */
    const qin x = {(const int *)a.A, a.S, a.SUM16};
    for (int row = row0; row < end;) {
        float acc[QG_ROWS] = {};
        if (a.h) {
            const int nr = end - row < QG_ROWS ? end - row : QG_ROWS;
            float up[QG_ROWS] = {};
            rows_dot(a, 0, row, nr, x, acc);
            rows_dot(a, 1, row, nr, x, up);
#pragma unroll
            for (int k = 0; k < QG_ROWS; k++) {
                const float gt = warp_sum(acc[k]), u = warp_sum(up[k]);
                if (lane == 0 && k < nr) a.h[row + k] = __float2bfloat16(gt * (1.0f / (1.0f + expf(-gt))) * u);
            }
            row += nr;
            continue;
        }
        int m = 0, lr = row;
        while (m + 1 < a.nseg && lr >= a.seg[m].rows) lr -= a.seg[m++].rows;
        int nr = end - row < QG_ROWS ? end - row : QG_ROWS;
        if (nr > a.seg[m].rows - lr) nr = a.seg[m].rows - lr;
        rows_dot(a, m, lr, nr, x, acc);
#pragma unroll
        for (int k = 0; k < QG_ROWS; k++) {
            const float s = warp_sum(acc[k]);
            if (lane == 0 && k < nr) a.y[row + k] = a.accumulate ? a.y[row + k] + s : s;
        }
        row += nr;
    }
}

static int launch_pdl(const void *kernel, dim3 grid, qgemv_args *a, cudaStream_t st) {
    cudaLaunchConfig_t c;
    memset(&c, 0, sizeof c);
    c.gridDim = grid;
    c.blockDim = dim3(QG_THREADS);
    c.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    c.attrs = at;
    c.numAttrs = 1;
    void *params[] = {a};
    return msa_cuda_check(cudaLaunchKernelExC(&c, kernel, params), "qgemv");
}

extern "C" int msa_fwd_qgemv(const msa_fwd_qgemv_args *g, cudaStream_t st) {
    if (!g || g->nseg < 1 || g->nseg > MSA_FWD_QGEMV_MAX_SEG || (!g->y && !g->h) || !g->workspace ||
        (g->h && g->nseg != 2) ||
        (g->mode == MSA_FWD_GEMV_PLAIN ? !g->xb : (g->mode != MSA_FWD_GEMV_NORM || !g->xf || !g->nw)))
        return msa_error(MSA_EINVAL, "msa_fwd_qgemv: bad argument");
    if (g->in <= 0 || g->in % 32 || g->in > MSA_FWD_QGEMV_MAX_IN)
        return msa_error(MSA_EUNSUPPORTED, "msa_fwd_qgemv: input of %d (a multiple of 32, at most %d)",
                         g->in, MSA_FWD_QGEMV_MAX_IN);
    qgemv_args a;
    memset(&a, 0, sizeof a);
    a.nseg = g->nseg;
    long outd = 0;
    for (int m = 0; m < g->nseg; m++) {
        const msa_fwd_qmat *s = &g->seg[m];
        a.seg[m] = *s;
        a.row_bytes[m] = msa_fwd_qrow_bytes(s->type, g->in);
        if (!s->w || s->rows <= 0 || ((uintptr_t)s->w & 15))
            return msa_error(MSA_EINVAL, "msa_fwd_qgemv: segment %d: NULL, empty or not 16-byte aligned", m);
        if (!a.row_bytes[m])
            return msa_error(MSA_EUNSUPPORTED, "msa_fwd_qgemv: ggml type %d over rows of %d", s->type,
                             g->in);
        outd += s->rows;
    }
    if (g->h && g->seg[0].rows != g->seg[1].rows)
        return msa_error(MSA_EINVAL, "msa_fwd_qgemv: gate and up rows differ (%d, %d)", g->seg[0].rows,
                         g->seg[1].rows);
    a.outd = g->h ? g->seg[0].rows : (int)outd;
    a.xb = (const __nv_bfloat16 *)g->xb;
    a.xf = g->xf;
    a.nw = g->nw;
    a.eps = g->eps;
    a.mode = g->mode;
    a.in = g->in;
    a.accumulate = g->accumulate;
    a.y = g->y;
    a.h = (__nv_bfloat16 *)g->h;
    a.A = (int8_t *)g->workspace;
    a.S = (float *)(a.A + g->in);
    a.SUM16 = (int *)(a.S + g->in / 32);
    int sms = g->sms;
    if (sms <= 0) {
        int dev = 0;
        int rc = msa_cuda_check(cudaGetDevice(&dev), "qgemv: device");
        if (!rc) rc = msa_cuda_check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev),
                                     "qgemv: multiprocessor count");
        if (rc) return rc;
    }
    /* rows in flight per warp and CTAs per SM (what the registers allow) */
    static const struct { const void *kernel; int ctas; } V[] = {
        {(const void *)qgemv_kernel<1, 4>, 4},
        {(const void *)qgemv_kernel<2, 4>, 4},
        {(const void *)qgemv_kernel<4, 2>, 2},
    };
    const int v = g->variant > 0 && g->variant <= 3 ? g->variant - 1 : QG_DEFAULT_VARIANT;
    const int slots = V[v].ctas * sms * QG_WARPS;
    a.rpw = (a.outd + slots - 1) / slots;
    const int warps = (a.outd + a.rpw - 1) / a.rpw;
    int rc = launch_pdl((const void *)qin_kernel, dim3((g->in / 32 + QG_WARPS - 1) / QG_WARPS), &a, st);
    if (!rc) rc = launch_pdl(V[v].kernel, dim3((warps + QG_WARPS - 1) / QG_WARPS), &a, st);
    return rc;
}

/* ---- dequantize -------------------------------------------------------------------- */

/* Element i (< the block's size) of block b, in fp32, with the reference's
 * products in its order and no fused multiply-add (__fmul_rn etc.). */
__device__ float deq_elem(int type, const uint8_t *b, int i) {
    switch (type) {
    case T_Q4_0: {
        const int q = i < 16 ? b[2 + i] & 15 : b[2 + i - 16] >> 4;
        return __fmul_rn(half_at(b), (float)(q - 8));
    }
    case T_Q4_1: {
        const int q = i < 16 ? b[4 + i] & 15 : b[4 + i - 16] >> 4;
        return __fadd_rn(__fmul_rn(half_at(b), (float)q), half_at(b + 2));
    }
    case T_Q5_0: case T_Q5_1: {
        const int o = type == T_Q5_0 ? 2 : 4;
        const uint32_t qh = b[o] | b[o + 1] << 8 | b[o + 2] << 16 | (uint32_t)b[o + 3] << 24;
        const uint8_t *qs = b + o + 4;
        const int q = (i < 16 ? qs[i] & 15 : qs[i - 16] >> 4) | (int)((qh >> i) & 1) << 4;
        if (type == T_Q5_0) return __fmul_rn(half_at(b), (float)(q - 16));
        return __fadd_rn(__fmul_rn(half_at(b), (float)q), half_at(b + 2));
    }
    case T_Q8_0: return __fmul_rn((float)(int8_t)b[2 + i], half_at(b));
    case T_Q2_K: {
        const int g = i / 16, c = i / 128, s = (i / 32) % 4, l = i % 32;
        const float dl = __fmul_rn(half_at(b + 80), (float)(b[g] & 15));
        const float ml = __fmul_rn(half_at(b + 82), (float)(b[g] >> 4));
        return __fsub_rn(__fmul_rn(dl, (float)((b[16 + 32 * c + l] >> (2 * s)) & 3)), ml);
    }
    case T_Q3_K: {
        const uint8_t *hm = b, *qs = b + 32, *sc = b + 96;
        const int g = i / 16, c = i / 128, s = (i / 32) % 4, l = i % 32;
        const int lo = (sc[g % 8] >> (4 * (g / 8))) & 15, hi = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
        const float dl = __fmul_rn(half_at(b + 108), (float)((lo | hi << 4) - 32));
        int q = (qs[32 * c + l] >> (2 * s)) & 3;
        if (!((hm[l] >> (i / 32)) & 1)) q -= 4;
        return __fmul_rn(dl, (float)q);
    }
    case T_Q4_K: case T_Q5_K: {
        const int five = type == T_Q5_K, sb = i / 32, c = sb / 2, h = sb % 2, l = i % 32;
        const uint8_t *s = b + 4, *qs = b + (five ? 48 : 16);
        int sc, mn;
        if (sb < 4) {
            sc = s[sb] & 0x3F;
            mn = s[sb + 4] & 0x3F;
        } else {
            sc = (s[sb + 4] & 0x0F) | (s[sb - 4] >> 6) << 4;
            mn = (s[sb + 4] >> 4) | (s[sb] >> 6) << 4;
        }
        int q = (qs[32 * c + l] >> (4 * h)) & 15;
        if (five) q |= ((b[16 + l] >> sb) & 1) << 4;
        const float ds = __fmul_rn(half_at(b), (float)sc), dm = __fmul_rn(half_at(b + 2), (float)mn);
        return __fsub_rn(__fmul_rn(ds, (float)q), dm);
    }
    case T_Q6_K: {
        const uint8_t *ql = b, *qh = b + 128;
        const int c = i / 128, r = i % 128;
        const int lo = (ql[64 * c + r % 64] >> (4 * (r / 64))) & 15, hi = (qh[32 * c + r % 32] >> (2 * (r / 32))) & 3;
        const float ds = __fmul_rn(half_at(b + 208), (float)(int8_t)b[192 + i / 16]);
        return __fmul_rn(ds, (float)((lo | hi << 4) - 32));
    }
    default: return 0.0f;
    }
}

__global__ void dequant_kernel(const uint8_t *w, int type, int block, int bytes, int64_t n,
                               __nv_bfloat16 *out) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x)
        out[e] = __float2bfloat16(deq_elem(type, w + (e / block) * bytes, (int)(e % block)));
}

extern "C" int msa_fwd_dequant_bf16(const void *w, int type, int64_t n, uint16_t *out, cudaStream_t st) {
    const qfmt *f = fmt_of(type);
    if (!w || !out || n <= 0) return msa_error(MSA_EINVAL, "msa_fwd_dequant_bf16: bad argument");
    if (!f || n % f->block)
        return msa_error(MSA_EUNSUPPORTED, "msa_fwd_dequant_bf16: ggml type %d over %lld elements", type,
                         (long long)n);
    const int64_t want = (n + 255) / 256;
    const int blocks = (int)(want < 65536 ? want : 65536);
    dequant_kernel<<<blocks, 256, 0, st>>>((const uint8_t *)w, type, f->block, f->bytes, n,
                                            (__nv_bfloat16 *)out);
    return MSA_CUDA_LAUNCHED("dequantize");
}
