/*
 * gemv.cu: the decode GEMV of the GPU forward pass (single-token steps),
 * behind msa_fwd_gemv() of kernels/forward_ops.h; msa_fwd_gemv_ref() in
 * forward_ref.c is its reference. Moved here from
 * engine/forward/forward_cuda.cu unchanged (same kernels, same launch
 * shapes; built without --use_fast_math like forward.cu). The history below
 * is the kernel's own; "use_graph bit 2 / bit 8" are the bits of
 * msa_cuda_model_set_options() that select cuBLAS or GEMV v3 (the v3 field of
 * msa_fwd_gemv_args).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cuda_common.cuh"
#include "kernels/forward_rows.cuh"

typedef msa_fwd_bf16 bf16;

#define GEMV_MAX_CTAS 4096 /* per-CTA argmax partials the workspace holds */

/* y (outd) = W (outd, in) . u for a single input row u, W bf16 row-major,
 * fp32 accumulation; the default for single-token steps (use_graph bit 2
 * switches back to rmsnorm + cuBLAS). u is staged once per CTA in shared
 * memory as bf16, rounded exactly as the unfused path rounds its GEMM input:
 *   GEMV_PLAIN  u = xb (bf16, the attention output or the SwiGLU product)
 *   GEMV_NORM   u = bf16(rmsnorm(xf) * nw), with the sum of squares taken in
 *               rmsnorm_kernel's order (256 threads, block_sum): the same u
 * Outputs: y[r] = acc, or y[r] += acc (accumulate: the residual adds), or,
 * with h set, the gate/up pair fused with SwiGLU: W holds 2*outd rows (gate
 * then up) and h[r] = bf16(silu(W_r . u) * W_{outd+r} . u), so the (1, 2F)
 * fp32 intermediate and the swiglu launch disappear.
 *
 * Work: warp w of the grid owns `rpw` consecutive rows, read as chunks of
 * 32 lanes x GEMV_CH 16-byte loads (1024 bf16) that bypass L1, two chunks
 * in flight per warp (double buffer). rpw is chosen so that about 4 CTAs of
 * 256 threads sit on each SM. Launched with programmatic dependent launch:
 * a CTA issues its first two weight chunks, lets the next kernel launch,
 * and only then waits for the previous kernel's outputs (griddepcontrol),
 * so the weight stream of one GEMV starts while the previous one drains.
 * Needs in % 8 == 0 and in <= GEMV_MAX_IN.
 *
 * History. v1 (8 warps x 4 rows per CTA, rmsnorm / swiglu recomputed per
 * CTA, no prefetch): 2.79 ms per 4K step against cuBLAS's 1.86; qkv, wo and
 * w2 had 64 to 96 CTAs for 132 SMs and the stage was fully exposed. v2 (one
 * row per warp, 8 loads prefetched before the stage): 2.15 ms; each of up
 * to 2048 CTAs did its own rmsnorm (w13) or swiglu over 8192 inputs (w2)
 * for 32 KB of weights, and every warp had a single 4 KB round trip with
 * nothing behind it. v3 (this): rows grouped per warp with two chunks in
 * flight, ~4 CTAs per SM so the stage is amortised, SwiGLU moved into the
 * gate/up epilogue (w2 stages plain bf16), PDL between consecutive GEMVs:
 * 1.703 ms per 4K step, 1.290 without attention. v4 (this; use_graph bit 8
 * selects v3 for comparisons), from bench-model --profile's per-kernel
 * timing of v3 (eager, events around each launch): the qkv GEMV took 14.6 us
 * for 12.6 MB and its separate post-processing launch 8.1 us more, the
 * one-CTA argmax 32 us, gate/up 34 us for 67 MB (2.0 TB/s), while the
 * classifier streamed at 2.75 TB/s. So: (1) the qkv post-processing (bias,
 * RoPE, q_idx mean, K/V/k_idx append) is the qkv GEMV's epilogue, run by
 * its last CTA to arrive (threadfence + arrival counter, reset by that
 * CTA); (2) the argmax is the classifier's epilogue: per-warp and per-CTA
 * best (value, row), the last CTA reduces the per-CTA partials with the
 * same tie rule (lowest row; NaN never wins), so the 513 KB one-CTA pass
 * and its launch are gone (the logits are still written); (3) the rmsnorm
 * stage reads x and the norm weights in one round trip into shared memory
 * (v3: x twice and the weights after the block sum, three dependent
 * round trips queued behind the weight stream; same arithmetic, same u);
 * (4) row-poor PLAIN GEMVs (down: 2048 rows of 16 KB, o) give each row to 2
 * warps of a CTA whose parts are summed in order through shared memory, so
 * every warp slot streams (measured: no change for down, 19.5 us either
 * way). The epilogue and split variants are template instances so that
 * none spills at 64 registers. H100: 1.501 ms per 4K step (v3 1.710 in the
 * same run), 1.090 without attention (v3 1.280); docs/bench-model.md. */
#define GEMV_PLAIN 0
#define GEMV_NORM 1
#define EPI_NONE 0
#define EPI_QKV 1    /* last CTA: msa_fwd_qkv_row(qa, 0) */
#define EPI_ARGMAX 2 /* per-CTA argmax partials, last CTA: amax[0] */
#define GEMV_THREADS 256
#define GEMV_CH 4
#define GEMV_CHUNK (32 * GEMV_CH) /* 16-byte words per chunk */
#define GEMV_MAX_IN MSA_FWD_GEMV_MAX_IN
#define GEMV_NORM_SMEM_IN 4096 /* v4 norm stage in shared memory up to this input */

struct gemv_args {
    const bf16 *W;
    const bf16 *xb;   /* GEMV_PLAIN input */
    const float *xf;  /* GEMV_NORM input */
    const float *nw;  /* GEMV_NORM weights */
    float *y;         /* output (or NULL with h) */
    bf16 *h;          /* SwiGLU output, or NULL */
    float eps;
    int mode, in, outd, rpw, accumulate;
    int v3;           /* GEMV v3's input stage (comparisons) */
    int split;        /* warps per row (rpw 1): warp s of a row reads chunks s, s+split, .. */
    int epi;          /* EPI_* */
    int *count;       /* arrival counter of the last-CTA epilogue (0 on entry and exit) */
    float *pval;      /* EPI_ARGMAX: per-CTA best value and row */
    int *pidx;
    int32_t *amax;    /* EPI_ARGMAX: the argmax (lowest row on ties, 0 if none) */
    msa_fwd_qkv qa;   /* EPI_QKV */
};

__device__ __forceinline__ float dot8(uint4 w, uint4 x) {
    const __nv_bfloat162 *wp = (const __nv_bfloat162 *)&w, *xp = (const __nv_bfloat162 *)&x;
    float acc = 0.0f;
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const float2 a = __bfloat1622float2(wp[e]), b = __bfloat1622float2(xp[e]);
        acc += a.x * b.x + a.y * b.y;
    }
    return acc;
}

/* a weight word read once: not kept in L1 */
__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}


/* chunk k of a warp's work: logical row row0 + k / cpl, part (gate/up) and
 * chunk within the row from k % cpl */
template <int SPLIT>
__device__ __forceinline__ void gemv_load(const gemv_args &a, int row0, int k, int cps, int sub,
                                          int cpr, int nc, int lane, uint4 (&buf)[GEMV_CH]) {
    const int row = row0 + k / cps, c = sub + (k % cps) * SPLIT, part = c / cpr, cc = c % cpr;
    const uint4 *w4 = (const uint4 *)(a.W + (size_t)(row + part * a.outd) * a.in) + cc * GEMV_CHUNK;
#pragma unroll
    for (int t = 0; t < GEMV_CH; t++) {
        const int idx = cc * GEMV_CHUNK + lane + 32 * t;
        buf[t] = idx < nc ? ld_stream(w4 + lane + 32 * t) : make_uint4(0, 0, 0, 0);
    }
}

template <int EPI, int SPLIT>
__global__ void __launch_bounds__(GEMV_THREADS, 4) gemv_kernel(gemv_args a) {
    extern __shared__ __align__(16) bf16 u[]; /* (in) */
    __shared__ float red[32];
    const int lane = threadIdx.x & 31;
    const int gw = blockIdx.x * (GEMV_THREADS / 32) + (threadIdx.x >> 5);
    const int nc = a.in / 8, cpr = (nc + GEMV_CHUNK - 1) / GEMV_CHUNK;
    const int cpl = a.h ? 2 * cpr : cpr;
    const int cps = cpl / SPLIT, sub = gw % SPLIT; /* chunks per row of this warp */
    const int row0 = gw / SPLIT * a.rpw;
    int nrows = a.outd - row0;
    nrows = nrows < 0 ? 0 : (nrows > a.rpw ? a.rpw : nrows);
    const int nk = nrows * cps;
    uint4 cur[GEMV_CH], nxt[GEMV_CH];
    if (nk > 0) gemv_load<SPLIT>(a, row0, 0, cps, sub, cpr, nc, lane, cur);
    if (nk > 1) gemv_load<SPLIT>(a, row0, 1, cps, sub, cpr, nc, lane, nxt);
    msa_fwd_pdl_launch_dependents();
    msa_fwd_pdl_wait(); /* the previous kernel's outputs (x, att, h) are visible from here */
    if (a.mode == GEMV_NORM && a.in <= GEMV_NORM_SMEM_IN && !a.v3) {
        /* v4: x and the norm weights read in one round trip and kept in
         * shared memory for the second pass (v3 read x twice and the
         * weights after the sum: three dependent global round trips behind
         * the weight stream); the same arithmetic, so the same u */
        float *xs = (float *)(u + a.in), *ws = xs + a.in;
        float ss = 0.0f;
#pragma unroll 4
        for (int j = threadIdx.x; j < a.in; j += GEMV_THREADS) {
            const float xv = a.xf[j], wv = a.nw[j];
            xs[j] = xv;
            ws[j] = wv;
            ss += xv * xv;
        }
        ss = msa_fwd_block_sum(ss, red);
        const float r = 1.0f / sqrtf(ss / a.in + a.eps);
        for (int j = threadIdx.x; j < a.in; j += GEMV_THREADS)
            u[j] = __float2bfloat16(ws[j] * (r * xs[j]));
    } else if (a.mode == GEMV_NORM) {
        float ss = 0.0f;
        for (int j = threadIdx.x; j < a.in; j += blockDim.x) ss += a.xf[j] * a.xf[j];
        ss = msa_fwd_block_sum(ss, red);
        const float r = 1.0f / sqrtf(ss / a.in + a.eps);
        for (int j = threadIdx.x; j < a.in; j += blockDim.x)
            u[j] = __float2bfloat16(a.nw[j] * (r * a.xf[j]));
    } else {
        const uint4 *x4 = (const uint4 *)a.xb;
        uint4 *u4w = (uint4 *)u;
        for (int j = threadIdx.x; j < nc; j += blockDim.x) u4w[j] = x4[j];
    }
    __syncthreads();
    const uint4 *u4 = (const uint4 *)u;
    float acc0 = 0.0f, acc1 = 0.0f;
    float bestv = -INFINITY; /* EPI_ARGMAX: this warp's best row so far */
    int besti = a.outd;
    for (int k = 0; k < nk; k++) {
        const int c = sub + (k % cps) * SPLIT, cc = c % cpr;
        float s = 0.0f;
#pragma unroll
        for (int t = 0; t < GEMV_CH; t++) {
            const int idx = cc * GEMV_CHUNK + lane + 32 * t;
            if (idx < nc) s += dot8(cur[t], u4[idx]);
        }
        if (c >= cpr) acc1 += s;
        else acc0 += s;
#pragma unroll
        for (int t = 0; t < GEMV_CH; t++) cur[t] = nxt[t];
        if (k + 2 < nk) gemv_load<SPLIT>(a, row0, k + 2, cps, sub, cpr, nc, lane, nxt);
        if (k % cps == cps - 1) {
            for (int o = 16; o > 0; o >>= 1) {
                acc0 += __shfl_xor_sync(0xffffffffu, acc0, o);
                acc1 += __shfl_xor_sync(0xffffffffu, acc1, o);
            }
            const int row = row0 + k / cps;
            if (lane == 0) {
                if (a.h) {
                    const float g = acc0 * (1.0f / (1.0f + expf(-acc0)));
                    a.h[row] = __float2bfloat16(g * acc1);
                } else if (SPLIT == 1) {
                    a.y[row] = a.accumulate ? a.y[row] + acc0 : acc0;
                    if (EPI == EPI_ARGMAX && acc0 > bestv) bestv = acc0, besti = row; /* rows ascend */
                }
            }
            if (SPLIT == 1) acc0 = acc1 = 0.0f;
        }
    }
    __shared__ float bv[GEMV_THREADS];
    __shared__ int bi[GEMV_THREADS];
    __shared__ int last;
    const int w = threadIdx.x >> 5;
    if (SPLIT > 1) { /* one row per group of SPLIT warps: sum their parts in order */
        if (lane == 0) bv[w] = acc0;
        __syncthreads();
        if (lane == 0 && sub == 0 && nrows > 0) {
            float t = 0.0f;
            for (int j = 0; j < SPLIT; j++) t += bv[w + j];
            a.y[row0] = a.accumulate ? a.y[row0] + t : t;
        }
    }
    if (EPI == EPI_NONE) return;
    if (EPI == EPI_ARGMAX) {
        if (lane == 0) bv[w] = bestv, bi[w] = besti;
        __syncthreads();
        if (threadIdx.x == 0) {
            float v = bv[0];
            int ix = bi[0];
            for (int j = 1; j < GEMV_THREADS / 32; j++)
                if (bv[j] > v || (bv[j] == v && bi[j] < ix)) v = bv[j], ix = bi[j];
            a.pval[blockIdx.x] = v;
            a.pidx[blockIdx.x] = ix;
        }
    }
    /* last CTA to arrive runs the epilogue (threadfence reduction) */
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(a.count, 1) == (int)gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (EPI == EPI_QKV) {
        msa_fwd_qkv_row(a.qa, 0);
    } else {
        float v = -INFINITY;
        int ix = a.outd;
        for (int j = threadIdx.x; j < (int)gridDim.x; j += blockDim.x) {
            const float ov = __ldcg(a.pval + j);
            const int oi = __ldcg(a.pidx + j);
            if (ov > v || (ov == v && oi < ix)) v = ov, ix = oi;
        }
        bv[threadIdx.x] = v;
        bi[threadIdx.x] = ix;
        __syncthreads();
        for (int st = blockDim.x / 2; st > 0; st >>= 1) {
            if (threadIdx.x < st) {
                const float ov = bv[threadIdx.x + st];
                const int oi = bi[threadIdx.x + st];
                if (ov > bv[threadIdx.x] || (ov == bv[threadIdx.x] && oi < bi[threadIdx.x]))
                    bv[threadIdx.x] = ov, bi[threadIdx.x] = oi;
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) a.amax[0] = bi[0] < a.outd ? bi[0] : 0;
    }
    if (threadIdx.x == 0) *a.count = 0;
}

extern "C" int msa_fwd_gemv_fits(int in) { return in % 8 == 0 && in > 0 && in <= GEMV_MAX_IN; }

/* [0, 16): the arrival counters of the two epilogues (qkv, argmax); then
 * the per-CTA argmax values and rows */
extern "C" size_t msa_fwd_gemv_workspace_size(void) { return 16 + (size_t)GEMV_MAX_CTAS * 8; }

/* outd logical rows (with h: outd gate/up pairs), about 4 CTAs per SM. */
extern "C" int msa_fwd_gemv(const msa_fwd_gemv_args *g, cudaStream_t st) {
    if (!g || !g->W || !g->workspace || g->outd <= 0 || (!g->y && !g->h) ||
        (g->mode == GEMV_PLAIN ? !g->xb : (!g->xf || !g->nw)) ||
        (g->epi == EPI_QKV && !g->qkv) || (g->epi == EPI_ARGMAX && (!g->amax || !g->y)))
        return msa_error(MSA_EINVAL, "msa_fwd_gemv: bad argument");
    if (!msa_fwd_gemv_fits(g->in))
        return msa_error(MSA_EUNSUPPORTED, "msa_fwd_gemv: input of %d (a multiple of 8, at most %d)",
                         g->in, GEMV_MAX_IN);
    int sms = g->sms;
    if (sms <= 0) {
        int dev = 0;
        int rc = msa_cuda_check(cudaGetDevice(&dev), "gemv: device");
        if (!rc) rc = msa_cuda_check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev),
                                     "gemv: multiprocessor count");
        if (rc) return rc;
    }
    const int in = g->in, outd = g->outd, mode = g->mode, epi = g->epi;
    gemv_args a;
    memset(&a, 0, sizeof a);
    a.W = (const bf16 *)g->W; a.xb = (const bf16 *)g->xb; a.xf = g->xf; a.nw = g->nw;
    a.y = g->y; a.h = (bf16 *)g->h; a.eps = g->eps;
    a.mode = mode; a.in = in; a.outd = outd; a.accumulate = g->accumulate;
    a.epi = g->v3 ? EPI_NONE : epi;
    if (g->qkv) a.qa = *g->qkv;
    a.count = (int *)g->workspace + (epi == EPI_ARGMAX);
    a.pval = (float *)((char *)g->workspace + 16);
    a.pidx = (int *)(a.pval + GEMV_MAX_CTAS);
    a.amax = g->amax;
    const int warps_per_cta = GEMV_THREADS / 32, slots = 4 * sms * warps_per_cta;
    const int cpr = (in / 8 + GEMV_CHUNK - 1) / GEMV_CHUNK;
    /* v4: rows too few to give every warp slot one (down: 2048 rows of 8
     * chunks; o) are split over 2 warps of a CTA */
    a.split = 1;
    if (!g->v3 && !g->h && a.epi == EPI_NONE)
        if (2 * outd <= slots && cpr % 2 == 0) a.split = 2;
    a.rpw = a.split > 1 ? 1 : (outd + slots - 1) / slots;
    const int warps = (outd + a.rpw - 1) / a.rpw * a.split;
    if (a.epi != EPI_NONE && (warps + warps_per_cta - 1) / warps_per_cta > GEMV_MAX_CTAS)
        return msa_error(MSA_EINVAL, "forward (CUDA): gemv epilogue over %d CTAs", warps / 8);
    cudaLaunchConfig_t c;
    memset(&c, 0, sizeof c);
    c.gridDim = dim3((warps + warps_per_cta - 1) / warps_per_cta);
    c.blockDim = dim3(GEMV_THREADS);
    a.v3 = g->v3;
    c.dynamicSmemBytes = (size_t)in * sizeof(bf16) +
                         (mode == GEMV_NORM && in <= GEMV_NORM_SMEM_IN && !a.v3 ? (size_t)in * 8 : 0);
    c.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    c.attrs = at;
    c.numAttrs = 1;
    return msa_cuda_check(cudaLaunchKernelEx(&c, a.epi == EPI_QKV      ? gemv_kernel<EPI_QKV, 1>
                                                 : a.epi == EPI_ARGMAX ? gemv_kernel<EPI_ARGMAX, 1>
                                                 : a.split == 2        ? gemv_kernel<EPI_NONE, 2>
                                                                       : gemv_kernel<EPI_NONE, 1>,
                                             a),
                          "gemv");
}
