/*
 * forward_rows.cuh: the device helpers that forward.cu, gemv.cu and
 * qgemv.cu share: programmatic dependent launch, a CTA-wide sum and the qkv
 * post-processing of one row (run by msa_fwd_qkv_post's kernel, one CTA per
 * row, and by the decode GEMV's last CTA as its qkv epilogue). Internal to kernels/; see forward_ops.h for what
 * the row computes.
 */
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "kernels/forward_ops.h"

typedef __nv_bfloat16 msa_fwd_bf16;

/* Programmatic dependent launch (sm_90): let the next kernel in the stream
 * start launching, and wait until the previous kernel's outputs are
 * visible. No-ops on older architectures. */
static __device__ __forceinline__ void msa_fwd_pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
static __device__ __forceinline__ void msa_fwd_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* Sum of v over the CTA (warp shuffles, then the warps' sums in order);
 * every thread gets the total. `red` holds 32 floats. */
static __device__ __forceinline__ float msa_fwd_block_sum(float v, float *red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[w] = v;
    __syncthreads();
    float s = 0.0f;
    for (int i = 0; i < nw; i++) s += red[i];
    return s;
}

/* Row i of the qkv post-processing, by the calling CTA's threads. Thread t
 * handles pair p of group g for every query head of the group (so that
 * q_idx is their mean, summed in head order as forward.c does) and for the
 * group's key; then the values. y is read through L2 (__ldcg) because in
 * the GEMV epilogue other CTAs wrote it. */
static __device__ void msa_fwd_qkv_row(const msa_fwd_qkv &a, int i) {
    /* the bf16 views of the output arrays (uint16_t in the C struct) */
#define MSA_FWD_BF(p) ((msa_fwd_bf16 *)(p))
    const int half = a.d / 2;
    const int pos = a.pos[i], blk = pos / a.Bk, off = pos % a.Bk;
    const float *yr = a.y + (size_t)i * a.Nqkv;
    const int qd = a.Hq * a.d, kvd = a.Hkv * a.d;
    for (int t = threadIdx.x; t < a.Hkv * half; t += blockDim.x) {
        const int g = t / half, p = t % half;
        const int ia = a.neox ? p : 2 * p, ib = a.neox ? p + half : 2 * p + 1;
        const float val = pos * a.inv_freq[p];
        const float c = cosf(val), s = sinf(val);
        float sa = 0.0f, sb = 0.0f;
        for (int hh = 0; hh < a.G; hh++) {
            const int o = (g * a.G + hh) * a.d;
            float v0 = __ldcg(yr + o + ia), v1 = __ldcg(yr + o + ib);
            if (a.bias) v0 += a.bias[o + ia], v1 += a.bias[o + ib];
            const float r0 = v0 * c - v1 * s, r1 = v0 * s + v1 * c;
            MSA_FWD_BF(a.q)[(size_t)i * qd + o + ia] = __float2bfloat16(r0);
            MSA_FWD_BF(a.q)[(size_t)i * qd + o + ib] = __float2bfloat16(r1);
            sa += r0;
            sb += r1;
        }
        const int ok = qd + g * a.d;
        float k0 = __ldcg(yr + ok + ia), k1 = __ldcg(yr + ok + ib);
        if (a.bias) k0 += a.bias[ok + ia], k1 += a.bias[ok + ib];
        const float r0 = k0 * c - k1 * s, r1 = k0 * s + k1 * c;
        const size_t at = a.rows ? ((size_t)i * a.Hkv + g) * a.d
                                 : (((size_t)blk * a.Hkv + g) * a.Bk + off) * a.d;
        MSA_FWD_BF(a.kc)[at + ia] = __float2bfloat16(r0);
        MSA_FWD_BF(a.kc)[at + ib] = __float2bfloat16(r1);
        if (a.qi) {
            MSA_FWD_BF(a.qi)[((size_t)i * a.Hkv + g) * a.d + ia] = __float2bfloat16(sa / (float)a.G);
            MSA_FWD_BF(a.qi)[((size_t)i * a.Hkv + g) * a.d + ib] = __float2bfloat16(sb / (float)a.G);
            MSA_FWD_BF(a.kidx)[at + ia] = __float2bfloat16(r0);
            MSA_FWD_BF(a.kidx)[at + ib] = __float2bfloat16(r1);
        }
    }
    for (int t = threadIdx.x; t < kvd; t += blockDim.x) {
        const int g = t / a.d, j = t % a.d, o = qd + kvd + t;
        float v = __ldcg(yr + o);
        if (a.bias) v += a.bias[o];
        const size_t at = a.rows ? ((size_t)i * a.Hkv + g) * a.d
                                 : (((size_t)blk * a.Hkv + g) * a.Bk + off) * a.d;
        MSA_FWD_BF(a.vc)[at + j] = __float2bfloat16(v);
    }
}
#undef MSA_FWD_BF
