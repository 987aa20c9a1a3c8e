/*
 * qgemv.h: GPU kernels over quantized weights as GGUF files store them
 * (ggml's block formats, byte for byte as in the file), so that a decode
 * step reads the file's tensor bytes and nothing more.
 *
 *   op                    reference                           launcher (qgemv.cu)
 *   quantized GEMV        dequantize (engine/model/            msa_fwd_qgemv
 *                         ggml_quant.c, equal to gguf-py) and
 *                         an exact dot (tests/test-qgemv-cuda.c)
 *   dequantize to bf16    bf16(msa_ggml_to_f32)                msa_fwd_dequant_bf16
 *
 * Formats (ggml type ids, as in a GGUF header): Q4_0 2, Q4_1 3, Q5_0 6,
 * Q5_1 7, Q8_0 8 (blocks of 32 elements) and Q2_K 10, Q3_K 11, Q4_K 12,
 * Q5_K 13, Q6_K 14 (super-blocks of 256). The layouts are described in
 * engine/model/ggml_quant.c.
 *
 * The GEMV quantizes its input row to 8 bits per group of 32 (one fp32
 * scale per group, amax / 127, round to nearest) and takes integer dot
 * products of the weights' small integers with it (dp4a: four products per
 * instruction), scaled per (sub-)block in fp32; llama.cpp's GPU decode does
 * the same. So y differs from the exact product by the input's rounding:
 * |y_r - exact_r| <= sum_j |W_rj| * amax(group of j) / 254, plus fp32
 * rounding; the test asserts that bound. The dequantize kernel is exact:
 * its fp32 values equal msa_ggml_to_f32's bit for bit (no fused
 * multiply-add), then rounded once to bf16.
 *
 * Launchers take device pointers, queue on `st` and do not synchronise;
 * MSA_EINVAL / MSA_EUNSUPPORTED for what they refuse (nothing queued),
 * MSA_ECUDA when a launch fails.
 */
#ifndef MSA_KERNELS_QGEMV_H
#define MSA_KERNELS_QGEMV_H

#include <stddef.h>
#include <stdint.h>

#ifdef MSA_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when the GEMV and the dequantize kernel take ggml `type`. */
int msa_fwd_qtype_supported(int type);

/* Bytes of one row of `in` elements of ggml `type` (0 when `in` is not a
 * multiple of the type's block or the type is not taken). */
size_t msa_fwd_qrow_bytes(int type, int in);

/* One weight matrix: `rows` rows of `in` elements, row-major, each row
 * msa_fwd_qrow_bytes(type, in) bytes (the tensor's bytes in the file). */
typedef struct msa_fwd_qmat {
    const void *w;
    int type;
    int rows;
} msa_fwd_qmat;

#define MSA_FWD_QGEMV_MAX_SEG 4
#define MSA_FWD_QGEMV_MAX_IN 16384

/* y = W u for one input row u, where W is the row-wise concatenation of
 * seg[0 .. nseg) (q, k and v of a layer may be stored in different types).
 * u: xb (bf16, mode MSA_FWD_GEMV_PLAIN of forward_ops.h) or
 * bf16(rmsnorm(xf) * nw) (MSA_FWD_GEMV_NORM). Output y[r] = acc or
 * y[r] += acc (accumulate), or with h set the gate/up pair fused with
 * SwiGLU: seg[0] the gate rows, seg[1] the up rows (equal counts, nseg 2),
 * h[r] = bf16(silu(gate_r . u) * up_r . u). `in` a multiple of the blocks
 * of every segment's type, at most MSA_FWD_QGEMV_MAX_IN. */
typedef struct msa_fwd_qgemv_args {
    msa_fwd_qmat seg[MSA_FWD_QGEMV_MAX_SEG];
    int nseg;
    const uint16_t *xb;
    const float *xf, *nw;
    float eps;
    int mode;
    int in;
    float *y;
    int accumulate;
    uint16_t *h;
    void *workspace; /* msa_fwd_qgemv_workspace_size(in) bytes of device memory */
    int sms;         /* the GPU's multiprocessors (0: asked of the device) */
    int variant;     /* 0: the default; 1, 2, 3: 1, 2 or 4 rows in flight per warp
                        (bench-qgemv compares them) */
} msa_fwd_qgemv_args;

/* Device bytes the GEMV needs for its quantized input row (0 past
 * MSA_FWD_QGEMV_MAX_IN). */
size_t msa_fwd_qgemv_workspace_size(int in);

#ifdef MSA_HAVE_CUDA
/* Two launches, both with programmatic dependent launch: the input row
 * quantized into the workspace, then the GEMV. */
int msa_fwd_qgemv(const msa_fwd_qgemv_args *g, cudaStream_t st);

/* out (n elements, bf16) = the dequantized tensor; n a multiple of the
 * type's block. */
int msa_fwd_dequant_bf16(const void *w, int type, int64_t n, uint16_t *out, cudaStream_t st);
#endif

#ifdef __cplusplus
}
#endif

#endif /* MSA_KERNELS_QGEMV_H */
