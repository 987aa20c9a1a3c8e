/*
 * qgemm.h: matrix products over ggml-quantized weights with 8-bit
 * activations (the CPU forward pass's linear layers, engine/forward/forward.c).
 *
 * A weight matrix W (N rows of K) stays in the bytes of its GGUF file: row r
 * is K / 32 blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) or K / 256 super-blocks
 * (Q2_K .. Q6_K), laid out as engine/model/ggml_quant.c describes. The
 * activations x (n rows of K) are quantized first, per block of 32, to
 * int8 with one fp32 scale (msa_q8_quantize_row: d = max|x| / 127,
 * q = round-to-nearest-even(x / d), so q is in [-127, 127]), as ggml's
 * Q8_0 activations are; each 32-element block also keeps d * sum(q) (for
 * the types with a per-block minimum) and the sums of q over each 16 (for
 * the k-quants with 16-element groups). A product is then a sum over blocks
 * of (weight scale * activation scale) * (integer dot of the 32 pairs),
 * plus the minimum terms; the integer dots are exact (int32), only the
 * per-block combination is fp32.
 *
 * What is computed is exactly dot(dequantized W row, dequantized activation
 * row) up to fp32 rounding of the per-block terms: tests/test-qgemm.c
 * checks every path against that (dequantization by ggml_quant.c, sums in
 * double) and bounds the change that the activation quantization itself
 * makes against the unquantized x.
 *
 * Paths: a portable C path (qgemm.c, the reference for the others) and an
 * AVX2 path (qgemm_avx2.c, built with -mavx2 -mfma -mf16c on x86-64),
 * picked at run time by what the CPU reports; MSA_QGEMM=portable in the
 * environment forces the portable one. Types the AVX2 path lacks run the
 * portable code. Neither allocates, and every call is thread-safe (callers
 * split the output rows over threads).
 */
#ifndef MSA_KERNELS_QGEMM_H
#define MSA_KERNELS_QGEMM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Weight types, numbered as ggml numbers them (engine/model/gguf.h's
 * MSA_GGML_* are the same values). */
enum {
    MSA_QT_Q4_0 = 2,
    MSA_QT_Q4_1 = 3,
    MSA_QT_Q5_0 = 6,
    MSA_QT_Q5_1 = 7,
    MSA_QT_Q8_0 = 8,
    MSA_QT_Q2_K = 10,
    MSA_QT_Q3_K = 11,
    MSA_QT_Q4_K = 12,
    MSA_QT_Q5_K = 13,
    MSA_QT_Q6_K = 14
};

/* 1 when products over weights of ggml type `type` with K columns are
 * computed here (K a multiple of the type's block), else 0. */
int msa_qgemm_supported(int type, int K);

/* ---- activations ------------------------------------------------------------
 * One quantized row of K (a multiple of 32) values, in one buffer of
 * msa_q8_row_bytes(K) bytes:
 *   qs  int8  [K]        q, in [-127, 127]
 *   d   float [K / 32]   the block's scale
 *   ds  float [K / 32]   d * (sum of the block's 32 q)
 *   s16 int16 [K / 16]   sum of each 16 q
 * Rows of a batch lie msa_q8_row_bytes(K) apart. */
size_t msa_q8_row_bytes(int K);
void msa_q8_quantize_row(const float *x, int K, void *dst);
/* The portable and the AVX2 quantizer (equal bytes; the AVX2 one returns 0
 * and writes nothing where it is not built or the CPU lacks AVX2).
 * msa_q8_quantize_row() takes the AVX2 one where it can. */
void msa_q8_quantize_row_portable(const float *x, int K, void *dst);
int msa_q8_quantize_row_avx2(const float *x, int K, void *dst);
/* x = d * q, for tests and references. */
void msa_q8_dequantize_row(const void *src, int K, float *x);

/* ---- products -----------------------------------------------------------------
 * For rows r in [r0, r1) of W (row r at W + r * w_row_bytes) and the n
 * quantized activation rows at `a` (msa_q8_row_bytes(K) apart):
 *   y[i * ldy + r] = sum_j W[r][j] * xq[i][j]  (+ bias[r] when bias is set).
 * The type must be supported for K (msa_qgemm_supported); nothing is
 * checked here. msa_qgemm() takes the fastest path the CPU has. */
typedef struct msa_qgemm_args {
    int type;
    const void *W;
    size_t w_row_bytes;
    int K;
    int r0, r1;
    const void *a;
    int n;
    float *y;
    int ldy;
    const float *bias;
} msa_qgemm_args;

void msa_qgemm(const msa_qgemm_args *g);
/* The portable C path, whatever the CPU. */
void msa_qgemm_portable(const msa_qgemm_args *g);
/* The AVX2 path: 1 when it ran, 0 when this build or this CPU has no AVX2
 * path for the type (nothing written then). */
int msa_qgemm_avx2(const msa_qgemm_args *g);
/* "avx2" or "portable": what msa_qgemm() runs for types the AVX2 path has. */
const char *msa_qgemm_path(void);

#ifdef __cplusplus
}
#endif

#endif /* MSA_KERNELS_QGEMM_H */
