/*
 * ggml_quant.c: the ggml tensor formats this engine reads, and their
 * conversion to fp32: the float types (F32, F16, BF16), the block formats of
 * 32 elements (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the k-quants, super-blocks
 * of 256 elements with 6- or 8-bit sub-block scales (Q2_K, Q3_K, Q4_K, Q5_K,
 * Q6_K). These are what the GGUF files people download are made of: a
 * "Q4_K_M" file mixes Q4_K, Q5_0/Q6_K and F32.
 *
 * Every format stores a block as a few fp16 scales plus packed integers, and
 * an element is scale * q (- min). The byte layout of each block is given
 * beside its function. The results equal gguf-py's dequantization
 * (gguf.quants.dequantize, llama.cpp's Python reference) bit for bit: the
 * same products in the same order, in fp32, with no fused multiply-add
 * (this file is compiled with -ffp-contract=off, see engine/CMakeLists.txt).
 * tests/test_gguf_quant.py checks that for every type on random blocks, and
 * on real model files where they are present.
 */
#include <string.h>

#include "base/base.h"
#include "engine/model/gguf.h"

enum { QK = 32, QK_K = 256 };

static float half_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return msa_f16_to_f32(h);
}

/* Q4_0 (18 bytes): d (f16), qs[16]. Element j < 16 is the low nibble of
 * qs[j], element 16 + j its high nibble; value d * (q - 8). */
static void dq_q4_0(const uint8_t *b, float *y) {
    float d = half_at(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < QK / 2; j++) {
        y[j] = d * (float)((qs[j] & 0x0F) - 8);
        y[j + QK / 2] = d * (float)((qs[j] >> 4) - 8);
    }
}

/* Q4_1 (20 bytes): d, m (f16), qs[16] as Q4_0; value d * q + m. */
static void dq_q4_1(const uint8_t *b, float *y) {
    float d = half_at(b), m = half_at(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < QK / 2; j++) {
        y[j] = d * (float)(qs[j] & 0x0F) + m;
        y[j + QK / 2] = d * (float)(qs[j] >> 4) + m;
    }
}

/* Q5_0 (22 bytes): d (f16), qh (32 bits, little-endian: bit i is the fifth
 * bit of element i), qs[16] as Q4_0; value d * (q - 16). */
static void dq_q5_0(const uint8_t *b, float *y) {
    float d = half_at(b);
    uint32_t qh = (uint32_t)b[2] | (uint32_t)b[3] << 8 | (uint32_t)b[4] << 16 | (uint32_t)b[5] << 24;
    const uint8_t *qs = b + 6;
    for (int j = 0; j < QK / 2; j++) {
        int lo = (qs[j] & 0x0F) | (int)((qh >> j) & 1) << 4;
        int hi = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
        y[j] = d * (float)(lo - 16);
        y[j + QK / 2] = d * (float)(hi - 16);
    }
}

/* Q5_1 (24 bytes): d, m (f16), qh, qs[16] as Q5_0; value d * q + m. */
static void dq_q5_1(const uint8_t *b, float *y) {
    float d = half_at(b), m = half_at(b + 2);
    uint32_t qh = (uint32_t)b[4] | (uint32_t)b[5] << 8 | (uint32_t)b[6] << 16 | (uint32_t)b[7] << 24;
    const uint8_t *qs = b + 8;
    for (int j = 0; j < QK / 2; j++) {
        int lo = (qs[j] & 0x0F) | (int)((qh >> j) & 1) << 4;
        int hi = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
        y[j] = d * (float)lo + m;
        y[j + QK / 2] = d * (float)hi + m;
    }
}

/* Q8_0 (34 bytes): d (f16), qs[32] (int8); value q * d. */
static void dq_q8_0(const uint8_t *b, float *y) {
    float d = half_at(b);
    for (int j = 0; j < QK; j++) y[j] = (float)(int8_t)b[2 + j] * d;
}

/* Q2_K (84 bytes): scales[16] (low nibble: scale, high nibble: min of each
 * 16 elements), qs[64], d, dmin (f16). Element i = 128 c + 32 s + l
 * (c < 2, s < 4, l < 32) is bits 2s..2s+1 of qs[32 c + l]; value
 * (d * scale) * q - dmin * min for its group of 16. */
static void dq_q2_k(const uint8_t *b, float *y) {
    const uint8_t *sc = b, *qs = b + 16;
    float d = half_at(b + 80), dmin = half_at(b + 82);
    float dl[16], ml[16];
    for (int g = 0; g < 16; g++) {
        dl[g] = d * (float)(sc[g] & 0x0F);
        ml[g] = dmin * (float)(sc[g] >> 4);
    }
    for (int i = 0; i < QK_K; i++) {
        int c = i / 128, s = (i / 32) % 4, l = i % 32;
        y[i] = dl[i / 16] * (float)((qs[32 * c + l] >> (2 * s)) & 3) - ml[i / 16];
    }
}

/* Q3_K (110 bytes): hmask[32], qs[64], scales[12], d (f16). Element
 * i = 128 c + 32 s + l has its two low bits as in Q2_K and a high bit
 * (hmask[i % 32] >> (i / 32)) & 1; q = low - 4 when that bit is clear, else
 * low. The 16 group scales are 6 bits, minus 32: the low four bits of
 * group g in scales[g % 8] (nibble g / 8), the top two in scales[8 + g % 4]
 * (bits 2 (g / 4)). Value (d * scale) * q. */
static void dq_q3_k(const uint8_t *b, float *y) {
    const uint8_t *hm = b, *qs = b + 32, *sc = b + 96;
    float d = half_at(b + 108);
    float dl[16];
    for (int g = 0; g < 16; g++) {
        int lo = (sc[g % 8] >> (4 * (g / 8))) & 0x0F, hi = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
        dl[g] = d * (float)((lo | hi << 4) - 32);
    }
    for (int i = 0; i < QK_K; i++) {
        int c = i / 128, s = (i / 32) % 4, l = i % 32;
        int q = (qs[32 * c + l] >> (2 * s)) & 3;
        if (!((hm[l] >> (i / 32)) & 1)) q -= 4;
        y[i] = dl[i / 16] * (float)q;
    }
}

/* The 6-bit scale and min of sub-block j (of 8) in Q4_K and Q5_K: bytes
 * 0-3 hold scales 0-3 (low 6 bits), 4-7 mins 0-3, 8-11 the low four bits of
 * scale and min 4-7; the top two bits of those come from bytes 0-3 (scale)
 * and 4-7 (min). */
static void scale_min_k4(const uint8_t *s, int j, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 0x3F;
        *mn = s[j + 4] & 0x3F;
    } else {
        *sc = (s[j + 4] & 0x0F) | (s[j - 4] >> 6) << 4;
        *mn = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    }
}

/* Q4_K (144 bytes): d, dmin (f16), scales[12], qs[128]. Element
 * i = 64 c + 32 h + l (c < 4, h < 2, l < 32) is nibble h of qs[32 c + l],
 * in sub-block 2 c + h; value (d * scale) * q - dmin * min. */
static void dq_q4_k(const uint8_t *b, float *y) {
    float d = half_at(b), dmin = half_at(b + 2);
    const uint8_t *sc = b + 4, *qs = b + 16;
    for (int sb = 0; sb < 8; sb++) {
        int s, m;
        scale_min_k4(sc, sb, &s, &m);
        float ds = d * (float)s, dm = dmin * (float)m;
        int c = sb / 2, h = sb % 2;
        for (int l = 0; l < 32; l++)
            y[32 * sb + l] = ds * (float)((qs[32 * c + l] >> (4 * h)) & 0x0F) - dm;
    }
}

/* Q5_K (176 bytes): d, dmin (f16), scales[12], qh[32], qs[128]. As Q4_K,
 * with a fifth bit for element i in (qh[i % 32] >> (i / 32)) & 1. */
static void dq_q5_k(const uint8_t *b, float *y) {
    float d = half_at(b), dmin = half_at(b + 2);
    const uint8_t *sc = b + 4, *qh = b + 16, *qs = b + 48;
    for (int sb = 0; sb < 8; sb++) {
        int s, m;
        scale_min_k4(sc, sb, &s, &m);
        float ds = d * (float)s, dm = dmin * (float)m;
        int c = sb / 2, h = sb % 2;
        for (int l = 0; l < 32; l++) {
            int q = ((qs[32 * c + l] >> (4 * h)) & 0x0F) | ((qh[l] >> sb) & 1) << 4;
            y[32 * sb + l] = ds * (float)q - dm;
        }
    }
}

/* Q6_K (210 bytes): ql[128], qh[64], scales[16] (int8), d (f16). Element
 * i = 128 c + r (c < 2, r < 128): low four bits from nibble r / 64 of
 * ql[64 c + r % 64], top two from bits 2 (r / 32) of qh[32 c + r % 32];
 * value (d * scale) * (q - 32), one scale per 16 elements. */
static void dq_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = half_at(b + 208);
    float ds[16];
    for (int g = 0; g < 16; g++) ds[g] = d * (float)sc[g];
    for (int i = 0; i < QK_K; i++) {
        int c = i / 128, r = i % 128;
        int lo = (ql[64 * c + r % 64] >> (4 * (r / 64))) & 0x0F;
        int hi = (qh[32 * c + r % 32] >> (2 * (r / 32))) & 3;
        y[i] = ds[i / 16] * (float)((lo | hi << 4) - 32);
    }
}

typedef struct quant_format {
    int type;
    int block;      /* elements per block */
    int bytes;      /* bytes per block */
    void (*to_f32)(const uint8_t *block, float *out);
} quant_format;

static const quant_format formats[] = {
    {MSA_GGML_Q4_0, QK, 18, dq_q4_0},    {MSA_GGML_Q4_1, QK, 20, dq_q4_1},
    {MSA_GGML_Q5_0, QK, 22, dq_q5_0},    {MSA_GGML_Q5_1, QK, 24, dq_q5_1},
    {MSA_GGML_Q8_0, QK, 34, dq_q8_0},    {MSA_GGML_Q2_K, QK_K, 84, dq_q2_k},
    {MSA_GGML_Q3_K, QK_K, 110, dq_q3_k}, {MSA_GGML_Q4_K, QK_K, 144, dq_q4_k},
    {MSA_GGML_Q5_K, QK_K, 176, dq_q5_k}, {MSA_GGML_Q6_K, QK_K, 210, dq_q6_k},
};

static const quant_format *format_of(int type) {
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++)
        if (formats[i].type == type) return &formats[i];
    return NULL;
}

int msa_ggml_type_read(int type) {
    return type == MSA_GGML_F32 || type == MSA_GGML_F16 || type == MSA_GGML_BF16 || format_of(type);
}

int msa_ggml_block_size(int type) {
    const quant_format *f = format_of(type);
    return f ? f->block : msa_ggml_type_read(type) ? 1 : 0;
}

size_t msa_ggml_row_bytes(int type, int64_t ne0) {
    if (ne0 < 0) return 0;
    switch (type) {
    case MSA_GGML_F32: return (size_t)ne0 * 4;
    case MSA_GGML_F16: case MSA_GGML_BF16: return (size_t)ne0 * 2;
    default: break;
    }
    const quant_format *f = format_of(type);
    if (!f || ne0 % f->block) return 0;
    return (size_t)(ne0 / f->block) * (size_t)f->bytes;
}

void msa_ggml_to_f32(int type, const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    uint16_t h;
    switch (type) {
    case MSA_GGML_F32: memcpy(dst, src, (size_t)n * 4); return;
    case MSA_GGML_F16:
        for (int64_t i = 0; i < n; i++) {
            memcpy(&h, s + 2 * i, 2);
            dst[i] = msa_f16_to_f32(h);
        }
        return;
    case MSA_GGML_BF16:
        for (int64_t i = 0; i < n; i++) {
            memcpy(&h, s + 2 * i, 2);
            dst[i] = msa_bf16_to_f32(h);
        }
        return;
    default: break;
    }
    const quant_format *f = format_of(type);
    if (!f) return;
    for (int64_t b = 0; b < n / f->block; b++) f->to_f32(s + b * f->bytes, dst + b * f->block);
}
