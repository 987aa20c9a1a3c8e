/*
 * forward_cuda.cu: the transformer forward pass on a CUDA GPU, the twin of
 * engine/forward/forward.c (engine/forward/model_cuda.h describes the objects).
 *
 * Per layer, for a chunk of n tokens (the order of forward.c):
 *
 * (one-token steps: the rmsnorms, the GEMMs and SwiGLU are gemv_kernel
 * launches instead, with qkv_kernel's work and the argmax as epilogues of
 * the qkv and classifier GEMVs, see "decode GEMV" below)
 *
 *   xb  = rmsnorm(x) * attn_norm                        rmsnorm_kernel, bf16 out
 *   y   = xb [Wq; Wk; Wv; (Wqi; Wki)]^T  (+ biases)       one cuBLAS GEMM, fp32 out
 *   q, k, v, q_idx, k_idx  with RoPE                     qkv_kernel (+ idx_kernel when
 *       k, v, k_idx written straight into the layer        the index is trained)
 *       memory at their positions (bf16)
 *   MSA: msa_index_select -> msa_sparse_attention        kernels/ CUDA backend (d, d_idx
 *        (dense: msa_dense_attention)                      in {64, 128}), else the generic
 *                                                          kernels below
 *   x  += att Wo^T                                        GEMM with beta = 1 (fp32 x)
 *   xb  = rmsnorm(x) * ffn_norm
 *   y   = xb [W1; W3]^T                                   one GEMM, (n, 2F) fp32
 *   h   = silu(y[:, :F]) * y[:, F:]                       swiglu_kernel, bf16 out
 *   x  += h W2^T                                          GEMM with beta = 1
 *
 * then logits = (rmsnorm(x) * output_norm) Wout^T for the last row (or all)
 * and, on request, the argmax of each row.
 *
 * Precision: weights and GEMM inputs are bf16, every GEMM accumulates in fp32
 * (CUBLAS_COMPUTE_32F), the residual stream x and the GEMM outputs are fp32,
 * the attention operands (q, K, V, index keys) are bf16 as the CUDA MSA
 * kernels take them. The training-free index is built as on the CPU: k_idx is
 * the group's post-RoPE key, q_idx the fp32 mean of the group's post-RoPE
 * query heads, rounded once to bf16.
 *
 * Decode (one token) replays a CUDA graph of the whole step when
 * use_graph is on: the step is 9 to 12 launches per layer, and at batch 1
 * the host cannot issue them as fast as the GPU runs them (docs/bench-model.md
 * has the numbers). The graph is captured on the second call with the same
 * shapes (the first runs eagerly, so that every launcher's one-time setup
 * happens outside capture); what changes from step to step (token, position,
 * length) lives in a small device buffer written before each replay.
 *
 * The generic attention (any head dim up to 256, e.g. stories260K's d = 8) is
 * deliberately plain: kernels/index_paged.cu's plain scan and selection
 * (msa_cuda_index_scores_generic, msa_cuda_topk_generic: one thread per (row,
 * group) scores every visible block and picks the Top-k as DESIGN.md section
 * 1 says), then one thread per (row, query head) runs an online softmax over
 * the listed blocks. It exists so that
 * every model runs on the GPU, and as a second opinion on the fast path.
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/forward/model_cuda.h"
#include "base/base.h"
#include "kernels/cuda.h"
#include "memory/pager.h"

typedef __nv_bfloat16 bf16;

/* ---- errors ------------------------------------------------------------------ */

static int ck(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return MSA_OK;
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        return msa_error(MSA_ENOMEM, "forward (CUDA): %s: %s", what, cudaGetErrorString(e));
    }
    return msa_error(MSA_ECUDA, "forward (CUDA): %s: %s", what, cudaGetErrorString(e));
}
#define LAUNCHED(what) ck(cudaGetLastError(), what)

static int ckb(cublasStatus_t s, const char *what) {
    if (s == CUBLAS_STATUS_SUCCESS) return MSA_OK;
    return msa_error(MSA_ECUDA, "forward (CUDA): cuBLAS %s: %s", what, cublasGetStatusString(s));
}

/* ---- objects ----------------------------------------------------------------- */

/* One layer on the device. Nqkv = Hq*d + 2*Hkv*d (+ Hkv*di + di trained). */
typedef struct cuda_layer {
    bf16 *wqkv;        /* (Nqkv, D) rows: wq, wk, wv, [idx_q, idx_k] */
    float *bqkv;       /* (Nqkv) or NULL */
    bf16 *wo;          /* (D, Hq*d) */
    float *bo;         /* (D) or NULL */
    bf16 *w13;         /* (2F, D) rows: w1 (gate), w3 (up) */
    bf16 *w2;          /* (D, F) */
    float *attn_norm;  /* (D) */
    float *ffn_norm;   /* (D) */
    float *idx_q_norm; /* (di) or NULL */
    float *idx_k_norm; /* (di) or NULL */
} cuda_layer;

/* What a captured step depends on: every device pointer and launch shape
 * baked into the graph. */
typedef struct graph_key {
    const void *kv, *k, *v, *kidx;
    int cap_blocks, view_blocks, dense, top_k, generic, gen, gemv, skip_attn, gemv_v3;
} graph_key;

#define PROF_MAX 1024
#define GEMV_MAX_CTAS 4096

struct msa_cuda_model {
    msa_model_info info;
    float rms_eps;
    int rope_neox;
    int device;
    int Nqkv;
    cudaStream_t st;
    cublasHandle_t blas;
    bf16 *tok_embd;      /* (V, D) */
    bf16 *output;        /* (V, D); == tok_embd when tied */
    float *output_norm;  /* (D) */
    float *inv_freq;     /* (d/2) RoPE frequencies of the main heads */
    float *inv_freq_idx; /* (di/2) of the trained index heads, or NULL */
    cuda_layer *L;       /* [n_layers] */
    size_t weight_bytes;
    void **allocs;       /* device allocations freed with the model */
    int n_allocs, cap_allocs;
    int use_graph, generic, use_gemv, skip_attn, gemv_v3;
    int sms;             /* the GPU's multiprocessors (GEMV grid sizing) */

    /* scratch, grown on demand (gen counts reallocations: graphs hold pointers) */
    int cap_rows, cap_topk, cap_logit_rows;
    size_t cap_ws;
    int gen;
    float *x;          /* (rows, D) residual stream */
    bf16 *xb;          /* (rows, D) normed GEMM input */
    float *y;          /* (rows, max(Nqkv, 2F)) GEMM output */
    bf16 *q;           /* (rows, Hq, d) */
    bf16 *qi;          /* (rows, Hkv, di) */
    bf16 *att;         /* (rows, Hq, d) */
    bf16 *h;           /* (rows, F) */
    int32_t *sel;      /* (rows, Hkv, top_k) */
    float *logits;     /* (logit rows, V) */
    int32_t *amax;     /* (logit rows) */
    void *ws;          /* attention workspace / generic block scores */
    int32_t *meta;     /* device: [0..1] q_indptr, [2] seq_len, [4..] tokens, positions */
    int32_t *meta_h;   /* pinned host twin */
    void *blas_ws;     /* cuBLAS workspace (graph capture must not allocate) */

    /* the paged path (msa_cuda_model_forward_mem): the chunk's k, v, k_idx rows
     * staged on the GPU, their host copies, the selection brought back */
    int cap_stage;
    bf16 *stage;       /* device (rows, 2 Hkv d + KH di) */
    uint16_t *stage_h; /* pinned host twin */
    float *stage_f;    /* (rows, 2 Hkv d + KH di) fp32 for the memory's append */
    int32_t *sel_h;    /* pinned (rows, Hkv, top_k) */
    int32_t *all_h;    /* host 0, 1, 2, ... (dense: every block) */
    int cap_all;
    double append_s;   /* seconds spent moving rows to the memory */

    /* decode GEMV v4's last-CTA epilogues: arrival counters (zero between
     * launches: the last CTA resets its own), per-CTA argmax partials */
    int *gemv_count;   /* [2]: qkv, classifier */
    float *amax_val;   /* (GEMV_MAX_CTAS) */
    int *amax_idx;     /* (GEMV_MAX_CTAS) */

    /* per-kernel timing (msa_cuda_model_profile) */
    int prof_on, prof_active, prof_open, prof_n;
    cudaEvent_t *prof_ev;   /* [2 * PROF_MAX] begin, end of each bracket */
    cudaEvent_t prof_step[2];
    int prof_kind[PROF_MAX];
    double prof_bytes[PROF_MAX];
    msa_cuda_prof prof;

    /* the decode graph */
    cudaGraphExec_t gexec;
    graph_key gkey, warm_key;
    int have_warm;
};

struct msa_cuda_kv {
    msa_cuda_model *cm;
    int Bk, cap_blocks, KH, di;
    int64_t cap, len;
    bf16 *k, *v;       /* (n_layers, cap_blocks, Hkv, Bk, d) */
    bf16 *kidx;        /* (n_layers, cap_blocks, KH, Bk, di) */
    int32_t *indptr;   /* {0, cap_blocks} */
    int32_t *table;    /* identity (cap_blocks) */
};

#define BLAS_WS_BYTES (32u << 20)

static int dalloc(msa_cuda_model *cm, size_t bytes, void **out) {
    *out = NULL;
    if (cm->n_allocs == cm->cap_allocs) {
        int cap = cm->cap_allocs ? 2 * cm->cap_allocs : 64;
        void **a = (void **)realloc(cm->allocs, (size_t)cap * sizeof *a);
        if (!a) return msa_error(MSA_ENOMEM, "forward (CUDA): allocation list");
        cm->allocs = a;
        cm->cap_allocs = cap;
    }
    int rc = ck(cudaMalloc(out, bytes ? bytes : 1), "cudaMalloc (weights)");
    if (rc) return msa_error_context(rc, "%zu bytes", bytes);
    cm->allocs[cm->n_allocs++] = *out;
    return MSA_OK;
}

/* ---- kernels ----------------------------------------------------------------- */

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* p[i] = uniform in [-scale, scale), from (seed, i). */
__global__ void fill_uniform_kernel(bf16 *p, size_t n, uint64_t seed, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint64_t r = mix64(seed * 0x2545F4914F6CDD1DULL + i);
        float u = (float)(r >> 40) * (1.0f / 16777216.0f); /* [0, 1) */
        p[i] = __float2bfloat16((2.0f * u - 1.0f) * scale);
    }
}

__global__ void fill_f32_kernel(float *p, size_t n, float v) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = v;
}

/* x (n, D) fp32 = tok_embd[tokens[i]] */
__global__ void embed_kernel(const bf16 *__restrict__ emb, const int32_t *__restrict__ tokens,
                             float *__restrict__ x, int D) {
    const int i = blockIdx.x;
    const bf16 *e = emb + (size_t)tokens[i] * D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) x[(size_t)i * D + j] = __bfloat162float(e[j]);
}

__device__ float block_sum(float v, float *red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[w] = v;
    __syncthreads();
    float s = 0.0f;
    for (int i = 0; i < nw; i++) s += red[i];
    return s;
}

/* out (rows, D) bf16 = x / rms(x) * w, row r reading x + r*D (llama2.c's rmsnorm). */
__global__ void rmsnorm_kernel(const float *__restrict__ x, const float *__restrict__ w,
                               bf16 *__restrict__ out, int D, float eps) {
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.x * D;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < D; j += blockDim.x) ss += xr[j] * xr[j];
    ss = block_sum(ss, red);
    const float r = 1.0f / sqrtf(ss / D + eps);
    for (int j = threadIdx.x; j < D; j += blockDim.x)
        out[(size_t)blockIdx.x * D + j] = __float2bfloat16(w[j] * (r * xr[j]));
}

struct qkv_args {
    const float *y;         /* (n, Nqkv) */
    const float *bias;      /* (Nqkv) or NULL */
    const int32_t *pos;     /* (n) */
    const float *inv_freq;  /* (d/2) */
    bf16 *q;                /* (n, Hq, d) */
    bf16 *qi;               /* (n, Hkv, d) training-free q_idx, or NULL (trained) */
    bf16 *kc, *vc;          /* layer memory (cap_blocks, Hkv, Bk, d) */
    bf16 *kidx;             /* (cap_blocks, Hkv, Bk, d) training-free, or NULL */
    int Nqkv, Hq, Hkv, d, G, Bk, neox;
    int rows;               /* 1: kc, vc, kidx are row-major staging (n, Hkv, d),
                               row i at i (the paged path) */
};

/* One CTA per row: bias, RoPE on q and k, the training-free index, and the
 * row's k, v (and k_idx) stored at its position. Thread t handles the pair p
 * of group g for every query head of the group (so that q_idx is their mean,
 * summed in head order as forward.c does) and for the group's key. */
/* Row i of the qkv post-processing, by the calling CTA's threads: the body of
 * qkv_kernel, and decode GEMV v4's qkv epilogue (run by the GEMV's last CTA,
 * which is why y is read through L2: other CTAs wrote it). */
__device__ void qkv_row(const qkv_args &a, int i) {
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
            a.q[(size_t)i * qd + o + ia] = __float2bfloat16(r0);
            a.q[(size_t)i * qd + o + ib] = __float2bfloat16(r1);
            sa += r0;
            sb += r1;
        }
        const int ok = qd + g * a.d;
        float k0 = __ldcg(yr + ok + ia), k1 = __ldcg(yr + ok + ib);
        if (a.bias) k0 += a.bias[ok + ia], k1 += a.bias[ok + ib];
        const float r0 = k0 * c - k1 * s, r1 = k0 * s + k1 * c;
        const size_t at = a.rows ? ((size_t)i * a.Hkv + g) * a.d
                                 : (((size_t)blk * a.Hkv + g) * a.Bk + off) * a.d;
        a.kc[at + ia] = __float2bfloat16(r0);
        a.kc[at + ib] = __float2bfloat16(r1);
        if (a.qi) {
            a.qi[((size_t)i * a.Hkv + g) * a.d + ia] = __float2bfloat16(sa / (float)a.G);
            a.qi[((size_t)i * a.Hkv + g) * a.d + ib] = __float2bfloat16(sb / (float)a.G);
            a.kidx[at + ia] = __float2bfloat16(r0);
            a.kidx[at + ib] = __float2bfloat16(r1);
        }
    }
    for (int t = threadIdx.x; t < kvd; t += blockDim.x) {
        const int g = t / a.d, j = t % a.d, o = qd + kvd + t;
        float v = __ldcg(yr + o);
        if (a.bias) v += a.bias[o];
        const size_t at = a.rows ? ((size_t)i * a.Hkv + g) * a.d
                                 : (((size_t)blk * a.Hkv + g) * a.Bk + off) * a.d;
        a.vc[at + j] = __float2bfloat16(v);
    }
}

__global__ void qkv_kernel(qkv_args a) { qkv_row(a, blockIdx.x); }

/* Holds the stream for `ns` nanoseconds (per-kernel timing: the host queues
 * the whole step behind it, so the events time the GPU, not the host). */
__global__ void spin_kernel(long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while ((long long)(t - t0) < ns);
}

/* Trained index, grid (n, Hkv + 1): head u < Hkv is q_idx head u, head Hkv the
 * shared key. rmsnorm with scale (1 + w), then RoPE over di, as forward.c. */
__global__ void idx_kernel(const float *__restrict__ y, const int32_t *__restrict__ posv,
                           const float *__restrict__ inv_freq, const float *__restrict__ qn,
                           const float *__restrict__ kn, bf16 *__restrict__ qi,
                           bf16 *__restrict__ kidx, int Nqkv, int off0, int Hkv, int di, int Bk,
                           float eps, int neox, int rows) {
    extern __shared__ float r[]; /* (di) */
    __shared__ float red[32];
    const int i = blockIdx.x, u = blockIdx.y, pos = posv[i];
    const float *src = y + (size_t)i * Nqkv + off0 + (size_t)u * di;
    const float *w = u < Hkv ? qn : kn;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < di; j += blockDim.x) ss += src[j] * src[j];
    ss = block_sum(ss, red);
    const float sc = 1.0f / sqrtf(ss / di + eps);
    for (int j = threadIdx.x; j < di; j += blockDim.x) r[j] = (1.0f + w[j]) * (sc * src[j]);
    __syncthreads();
    bf16 *dst = u < Hkv ? qi + ((size_t)i * Hkv + u) * di
                        : kidx + (rows ? (size_t)i : (size_t)(pos / Bk) * Bk + pos % Bk) * di;
    const int half = di / 2;
    for (int p = threadIdx.x; p < half; p += blockDim.x) {
        const int ia = neox ? p : 2 * p, ib = neox ? p + half : 2 * p + 1;
        const float val = pos * inv_freq[p];
        const float c = cosf(val), s = sinf(val);
        const float v0 = r[ia], v1 = r[ib];
        dst[ia] = __float2bfloat16(v0 * c - v1 * s);
        dst[ib] = __float2bfloat16(v0 * s + v1 * c);
    }
}

/* h (n, F) bf16 = silu(y[:, :F]) * y[:, F:] */
__global__ void swiglu_kernel(const float *__restrict__ y, bf16 *__restrict__ h, int n, int F) {
    const size_t total = (size_t)n * F;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        const size_t i = t / F, j = t % F;
        float g = y[i * 2 * F + j];
        g *= 1.0f / (1.0f + expf(-g));
        h[t] = __float2bfloat16(g * y[i * 2 * F + F + j]);
    }
}

/* x (n, D) += b (D) */
__global__ void add_bias_kernel(float *x, const float *b, int n, int D) {
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < (size_t)n * D;
         t += (size_t)gridDim.x * blockDim.x)
        x[t] += b[t % D];
}

/* out[r] = argmax of logits row r (lowest index on ties; NaN never wins). */
__global__ void argmax_kernel(const float *__restrict__ logits, int V, int32_t *__restrict__ out) {
    __shared__ float bv[1024];
    __shared__ int bi[1024];
    const float *row = logits + (size_t)blockIdx.x * V;
    float best = -INFINITY;
    int idx = V;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        if (row[j] > best) best = row[j], idx = j;
    bv[threadIdx.x] = best;
    bi[threadIdx.x] = idx;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float ov = bv[threadIdx.x + s];
            int oi = bi[threadIdx.x + s];
            if (ov > bv[threadIdx.x] || (ov == bv[threadIdx.x] && oi < bi[threadIdx.x]))
                bv[threadIdx.x] = ov, bi[threadIdx.x] = oi;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = bi[0] < V ? bi[0] : 0;
}

/* ---- decode GEMV (one row) ---------------------------------------------------------- */

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
#define EPI_QKV 1    /* last CTA: qkv_row(qa, 0) */
#define EPI_ARGMAX 2 /* per-CTA argmax partials, last CTA: amax[0] */
#define GEMV_THREADS 256
#define GEMV_CH 4
#define GEMV_CHUNK (32 * GEMV_CH) /* 16-byte words per chunk */
#define GEMV_MAX_IN 16384
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
    qkv_args qa;      /* EPI_QKV */
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

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
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
    pdl_launch_dependents();
    pdl_wait(); /* the previous kernel's outputs (x, att, h) are visible from here */
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
        ss = block_sum(ss, red);
        const float r = 1.0f / sqrtf(ss / a.in + a.eps);
        for (int j = threadIdx.x; j < a.in; j += GEMV_THREADS)
            u[j] = __float2bfloat16(ws[j] * (r * xs[j]));
    } else if (a.mode == GEMV_NORM) {
        float ss = 0.0f;
        for (int j = threadIdx.x; j < a.in; j += blockDim.x) ss += a.xf[j] * a.xf[j];
        ss = block_sum(ss, red);
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
        qkv_row(a.qa, 0);
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

static bool gemv_ok(int in) { return in % 8 == 0 && in <= GEMV_MAX_IN; }

/* Queues one GEMV on `st` (programmatic dependent launch): outd logical rows
 * (with h: outd gate/up pairs), about 4 CTAs per SM. */
static int gemv(msa_cuda_model *cm, const bf16 *W, const bf16 *xb, const float *xf,
                const float *nw, float eps, int mode, float *y, bf16 *h, int in, int outd,
                int accumulate, int epi = EPI_NONE, const qkv_args *qa = NULL) {
    cudaStream_t st = cm->st;
    gemv_args a;
    memset(&a, 0, sizeof a);
    a.W = W; a.xb = xb; a.xf = xf; a.nw = nw; a.y = y; a.h = h; a.eps = eps;
    a.mode = mode; a.in = in; a.outd = outd; a.accumulate = accumulate;
    a.epi = cm->gemv_v3 ? EPI_NONE : epi;
    if (qa) a.qa = *qa;
    a.count = cm->gemv_count + (epi == EPI_ARGMAX);
    a.pval = cm->amax_val;
    a.pidx = cm->amax_idx;
    a.amax = cm->amax;
    const int warps_per_cta = GEMV_THREADS / 32, slots = 4 * cm->sms * warps_per_cta;
    const int cpr = (in / 8 + GEMV_CHUNK - 1) / GEMV_CHUNK;
    /* v4: rows too few to give every warp slot one (down: 2048 rows of 8
     * chunks; o) are split over 2 warps of a CTA */
    a.split = 1;
    if (!cm->gemv_v3 && !h && a.epi == EPI_NONE)
        if (2 * outd <= slots && cpr % 2 == 0) a.split = 2;
    a.rpw = a.split > 1 ? 1 : (outd + slots - 1) / slots;
    const int warps = (outd + a.rpw - 1) / a.rpw * a.split;
    if (a.epi != EPI_NONE && (warps + warps_per_cta - 1) / warps_per_cta > GEMV_MAX_CTAS)
        return msa_error(MSA_EINVAL, "forward (CUDA): gemv epilogue over %d CTAs", warps / 8);
    cudaLaunchConfig_t c;
    memset(&c, 0, sizeof c);
    c.gridDim = dim3((warps + warps_per_cta - 1) / warps_per_cta);
    c.blockDim = dim3(GEMV_THREADS);
    a.v3 = cm->gemv_v3;
    c.dynamicSmemBytes = (size_t)in * sizeof(bf16) +
                         (mode == GEMV_NORM && in <= GEMV_NORM_SMEM_IN && !a.v3 ? (size_t)in * 8 : 0);
    c.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    c.attrs = at;
    c.numAttrs = 1;
    return ck(cudaLaunchKernelEx(&c, a.epi == EPI_QKV      ? gemv_kernel<EPI_QKV, 1>
                                     : a.epi == EPI_ARGMAX ? gemv_kernel<EPI_ARGMAX, 1>
                                     : a.split == 2        ? gemv_kernel<EPI_NONE, 2>
                                                           : gemv_kernel<EPI_NONE, 1>,
                                 a),
              "gemv");
}

/* ---- generic attention (any head dim up to GEN_MAX_D) --------------------------- */

#define GEN_MAX_D 256

/* One thread per (row, query head): online softmax over the visible tokens
 * of the listed blocks (sel, or every block 0..local when sel is NULL). */
__global__ void generic_attn_kernel(const bf16 *__restrict__ q, const bf16 *__restrict__ kc,
                                    const bf16 *__restrict__ vc, const int32_t *__restrict__ posv,
                                    const int32_t *__restrict__ sel, bf16 *__restrict__ out, int n,
                                    int Hq, int Hkv, int d, int Bk, int top_k, float scale,
                                    const int32_t *__restrict__ table) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n * Hq) return;
    const int i = t / Hq, h = t % Hq, G = Hq / Hkv, g = h / G, pos = posv[i], local = pos / Bk;
    const bf16 *qr = q + (size_t)t * d;
    float acc[GEN_MAX_D];
    for (int e = 0; e < d; e++) acc[e] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    const int nl = sel ? top_k : local + 1;
    for (int u = 0; u < nl; u++) {
        const int b = sel ? sel[((size_t)i * Hkv + g) * top_k + u] : u;
        if (b < 0 || b > local) continue;
        const int slot = table ? table[b] : b; /* table: the pager's block -> slot */
        if (slot < 0) continue;
        for (int j = b * Bk; j < b * Bk + Bk && j <= pos; j++) {
            const size_t at = (((size_t)slot * Hkv + g) * Bk + (j % Bk)) * d;
            float s = 0.0f;
            for (int e = 0; e < d; e++) s += __bfloat162float(qr[e]) * __bfloat162float(kc[at + e]);
            s *= scale;
            if (s > m) {
                const float corr = expf(m - s);
                l *= corr;
                for (int e = 0; e < d; e++) acc[e] *= corr;
                m = s;
            }
            const float p = expf(s - m);
            l += p;
            for (int e = 0; e < d; e++) acc[e] += p * __bfloat162float(vc[at + e]);
        }
    }
    for (int e = 0; e < d; e++) out[(size_t)t * d + e] = __float2bfloat16(l > 0.0f ? acc[e] / l : 0.0f);
}

/* ---- model ----------------------------------------------------------------------- */

static int grid_for(size_t n, int threads) {
    size_t g = (n + threads - 1) / threads;
    return (int)(g > 65535 ? 65535 : (g ? g : 1));
}

static int model_new(const msa_model_info *info, float eps, int neox, int cuda_device,
                     msa_cuda_model **out) {
    *out = NULL;
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev <= 0) {
        cudaGetLastError();
        return msa_error(MSA_ENODEV, "forward (CUDA): no GPU visible");
    }
    if (cuda_device < 0 || cuda_device >= ndev)
        return msa_error(MSA_ENODEV, "forward (CUDA): GPU %d of %d", cuda_device, ndev);
    msa_cuda_model *cm = (msa_cuda_model *)calloc(1, sizeof *cm);
    if (!cm) return msa_error(MSA_ENOMEM, "forward (CUDA): model");
    cm->info = *info;
    cm->rms_eps = eps;
    cm->rope_neox = neox;
    cm->device = cuda_device;
    cm->use_graph = 1;
    cm->use_gemv = 1;
    const msa_model_info *I = info;
    cm->Nqkv = (I->n_heads + 2 * I->n_kv_heads) * I->head_dim +
               (I->has_trained_index ? (I->n_kv_heads + 1) * I->idx_dim : 0);
    int rc = ck(cudaSetDevice(cuda_device), "cudaSetDevice");
    if (!rc) rc = ck(cudaDeviceGetAttribute(&cm->sms, cudaDevAttrMultiProcessorCount, cuda_device),
                     "multiprocessor count");
    if (!rc) rc = ck(cudaStreamCreateWithFlags(&cm->st, cudaStreamNonBlocking), "stream");
    if (!rc) rc = ckb(cublasCreate(&cm->blas), "create");
    if (!rc) rc = ckb(cublasSetStream(cm->blas, cm->st), "set stream");
    if (!rc) rc = dalloc(cm, BLAS_WS_BYTES, &cm->blas_ws);
    /* after cublasSetStream, which resets the workspace */
    if (!rc) rc = ckb(cublasSetWorkspace(cm->blas, cm->blas_ws, BLAS_WS_BYTES), "set workspace");
    void *ep = NULL;
    if (!rc) rc = dalloc(cm, 16 + (size_t)GEMV_MAX_CTAS * 8, &ep);
    if (!rc) rc = ck(cudaMemset(ep, 0, 16 + (size_t)GEMV_MAX_CTAS * 8), "memset");
    if (!rc) {
        cm->gemv_count = (int *)ep;
        cm->amax_val = (float *)((char *)ep + 16);
        cm->amax_idx = (int *)(cm->amax_val + GEMV_MAX_CTAS);
    }
    if (!rc) {
        cm->L = (cuda_layer *)calloc((size_t)I->n_layers, sizeof *cm->L);
        if (!cm->L) rc = msa_error(MSA_ENOMEM, "forward (CUDA): layers");
    }
    if (rc) {
        msa_cuda_model_free(cm);
        return rc;
    }
    *out = cm;
    return MSA_OK;
}

/* RoPE frequencies as forward.c's rope() computes them for a head of dim n. */
static int upload_freqs(msa_cuda_model *cm, const float *table, int n, float **out) {
    float *f = (float *)malloc((size_t)(n / 2) * sizeof *f);
    if (!f) return msa_error(MSA_ENOMEM, "forward (CUDA): RoPE table");
    for (int p = 0; p < n / 2; p++)
        f[p] = table ? table[p] : 1.0f / powf(cm->info.rope_theta, (float)(2 * p) / (float)n);
    int rc = dalloc(cm, (size_t)(n / 2) * sizeof *f, (void **)out);
    if (!rc) rc = ck(cudaMemcpy(*out, f, (size_t)(n / 2) * sizeof *f, cudaMemcpyHostToDevice), "RoPE table");
    free(f);
    return rc;
}

/* Appends fp32 rows (rows, cols) as bf16 at dst. */
static int put_bf16(bf16 *dst, const float *src, size_t n, uint16_t *tmp) {
    for (size_t i = 0; i < n; i++) tmp[i] = msa_f32_to_bf16(src[i]);
    return ck(cudaMemcpy(dst, tmp, n * 2, cudaMemcpyHostToDevice), "upload weights");
}

static int put_f32(msa_cuda_model *cm, const float *src, size_t n, float **out) {
    *out = NULL;
    if (!src) return MSA_OK;
    int rc = dalloc(cm, n * 4, (void **)out);
    if (!rc) rc = ck(cudaMemcpy(*out, src, n * 4, cudaMemcpyHostToDevice), "upload norms");
    return rc;
}

extern "C" int msa_cuda_model_upload(const msa_model *m, int cuda_device, msa_cuda_model **out) {
    if (!m || !out) return msa_error(MSA_EINVAL, "msa_cuda_model_upload: NULL argument");
    msa_cuda_model *cm;
    int rc = model_new(&m->info, m->rms_eps, m->rope_neox, cuda_device, &cm);
    if (rc) return rc;
    const msa_model_info *I = &m->info;
    const size_t D = I->dim, qd = (size_t)I->n_heads * I->head_dim,
                 kvd = (size_t)I->n_kv_heads * I->head_dim, F = I->ff_dim, V = I->vocab_size,
                 di = I->idx_dim, Nq = cm->Nqkv;
    size_t big = V * D;
    if (Nq * D > big) big = Nq * D;
    if (2 * F * D > big) big = 2 * F * D;
    uint16_t *tmp = (uint16_t *)malloc(big * 2);
    float *bias = (float *)calloc(Nq, sizeof(float));
    if (!tmp || !bias) rc = msa_error(MSA_ENOMEM, "forward (CUDA): upload staging");
    size_t wb = 0;
    if (!rc) rc = dalloc(cm, V * D * 2, (void **)&cm->tok_embd);
    if (!rc) rc = put_bf16(cm->tok_embd, m->tok_embd, V * D, tmp);
    if (!rc) {
        if (m->output == m->tok_embd) cm->output = cm->tok_embd;
        else if (!(rc = dalloc(cm, V * D * 2, (void **)&cm->output)))
            rc = put_bf16(cm->output, m->output, V * D, tmp);
        wb += V * D * 2;
    }
    if (!rc) rc = put_f32(cm, m->output_norm, D, &cm->output_norm);
    if (!rc) rc = upload_freqs(cm, m->rope_inv_freq, I->head_dim, &cm->inv_freq);
    if (!rc && I->has_trained_index)
        rc = upload_freqs(cm, (int)di <= I->head_dim ? m->rope_inv_freq : NULL, (int)di,
                          &cm->inv_freq_idx);
    for (int l = 0; l < I->n_layers && !rc; l++) {
        const msa_model_layer *S = &m->layers[l];
        cuda_layer *Y = &cm->L[l];
        if ((rc = dalloc(cm, Nq * D * 2, (void **)&Y->wqkv))) break;
        size_t r = 0;
        rc = put_bf16(Y->wqkv, S->wq, qd * D, tmp);
        r += qd;
        if (!rc) rc = put_bf16(Y->wqkv + r * D, S->wk, kvd * D, tmp);
        r += kvd;
        if (!rc) rc = put_bf16(Y->wqkv + r * D, S->wv, kvd * D, tmp);
        r += kvd;
        if (!rc && I->has_trained_index) {
            rc = put_bf16(Y->wqkv + r * D, S->idx_q, I->n_kv_heads * di * D, tmp);
            r += I->n_kv_heads * di;
            if (!rc) rc = put_bf16(Y->wqkv + r * D, S->idx_k, di * D, tmp);
        }
        if (!rc && (S->bq || S->bk || S->bv)) {
            memset(bias, 0, Nq * sizeof *bias);
            if (S->bq) memcpy(bias, S->bq, qd * 4);
            if (S->bk) memcpy(bias + qd, S->bk, kvd * 4);
            if (S->bv) memcpy(bias + qd + kvd, S->bv, kvd * 4);
            rc = put_f32(cm, bias, Nq, &Y->bqkv);
        }
        if (!rc) rc = dalloc(cm, D * qd * 2, (void **)&Y->wo);
        if (!rc) rc = put_bf16(Y->wo, S->wo, D * qd, tmp);
        if (!rc) rc = put_f32(cm, S->bo, D, &Y->bo);
        if (!rc) rc = dalloc(cm, 2 * F * D * 2, (void **)&Y->w13);
        if (!rc) rc = put_bf16(Y->w13, S->w1, F * D, tmp);
        if (!rc) rc = put_bf16(Y->w13 + F * D, S->w3, F * D, tmp);
        if (!rc) rc = dalloc(cm, D * F * 2, (void **)&Y->w2);
        if (!rc) rc = put_bf16(Y->w2, S->w2, D * F, tmp);
        if (!rc) rc = put_f32(cm, S->attn_norm, D, &Y->attn_norm);
        if (!rc) rc = put_f32(cm, S->ffn_norm, D, &Y->ffn_norm);
        if (!rc) rc = put_f32(cm, S->idx_q_norm, di, &Y->idx_q_norm);
        if (!rc) rc = put_f32(cm, S->idx_k_norm, di, &Y->idx_k_norm);
        wb += (Nq * D + D * qd + 3 * F * D) * 2 + 2 * D * 4;
    }
    free(tmp);
    free(bias);
    if (rc) {
        msa_cuda_model_free(cm);
        return msa_error_context(rc, "msa_cuda_model_upload");
    }
    cm->weight_bytes = wb + D * 4;
    *out = cm;
    return MSA_OK;
}

static int fill_bf16(cudaStream_t st, bf16 *p, size_t n, uint64_t seed, float scale) {
    fill_uniform_kernel<<<grid_for(n, 256) < 4096 ? grid_for(n, 256) : 4096, 256, 0, st>>>(p, n, seed, scale);
    return LAUNCHED("random fill");
}

static int ones_f32(msa_cuda_model *cm, size_t n, float **out) {
    int rc = dalloc(cm, n * 4, (void **)out);
    if (rc) return rc;
    fill_f32_kernel<<<grid_for(n, 256), 256, 0, cm->st>>>(*out, n, 1.0f);
    return LAUNCHED("fill norms");
}

extern "C" int msa_cuda_model_random(const msa_model_info *info, uint64_t seed, int cuda_device,
                                     msa_cuda_model **out) {
    if (!info || !out) return msa_error(MSA_EINVAL, "msa_cuda_model_random: NULL argument");
    msa_model_info I = *info;
    if (I.n_layers <= 0 || I.dim <= 0 || I.n_heads <= 0 || I.n_kv_heads <= 0 ||
        I.n_heads % I.n_kv_heads || I.head_dim <= 0 || I.head_dim % 2 || I.ff_dim <= 0 ||
        I.vocab_size <= 0 || (I.has_trained_index && (I.idx_dim <= 0 || I.idx_dim % 2)))
        return msa_error(MSA_EINVAL, "msa_cuda_model_random: bad shapes");
    if (I.rope_theta <= 0) I.rope_theta = 10000.0f;
    if (!I.has_trained_index) {
        I.idx_dim = I.head_dim;
        I.idx_key_heads = I.n_kv_heads;
    } else {
        I.idx_key_heads = 1;
    }
    msa_cuda_model *cm;
    int rc = model_new(&I, 1e-5f, 0, cuda_device, &cm);
    if (rc) return rc;
    const size_t D = I.dim, qd = (size_t)I.n_heads * I.head_dim, F = I.ff_dim, V = I.vocab_size,
                 di = I.idx_dim, Nq = cm->Nqkv;
    const float s3 = sqrtf(3.0f);
    uint64_t sd = seed * 1000003u;
    size_t wb = 0;
    rc = dalloc(cm, V * D * 2, (void **)&cm->tok_embd);
    if (!rc) rc = fill_bf16(cm->st, cm->tok_embd, V * D, sd++, s3);
    cm->output = cm->tok_embd; /* tied, as Llama 3.2 1B */
    wb += V * D * 2;
    if (!rc) rc = ones_f32(cm, D, &cm->output_norm);
    if (!rc) rc = upload_freqs(cm, NULL, I.head_dim, &cm->inv_freq);
    if (!rc && I.has_trained_index) rc = upload_freqs(cm, NULL, (int)di, &cm->inv_freq_idx);
    for (int l = 0; l < I.n_layers && !rc; l++) {
        cuda_layer *Y = &cm->L[l];
        const float sD = s3 / sqrtf((float)D), sQ = s3 / sqrtf((float)qd), sF = s3 / sqrtf((float)F);
        if (!rc) rc = dalloc(cm, Nq * D * 2, (void **)&Y->wqkv);
        if (!rc) rc = fill_bf16(cm->st, Y->wqkv, Nq * D, sd++, sD);
        if (!rc) rc = dalloc(cm, D * qd * 2, (void **)&Y->wo);
        if (!rc) rc = fill_bf16(cm->st, Y->wo, D * qd, sd++, sQ);
        if (!rc) rc = dalloc(cm, 2 * F * D * 2, (void **)&Y->w13);
        if (!rc) rc = fill_bf16(cm->st, Y->w13, 2 * F * D, sd++, sD);
        if (!rc) rc = dalloc(cm, D * F * 2, (void **)&Y->w2);
        if (!rc) rc = fill_bf16(cm->st, Y->w2, D * F, sd++, sF);
        if (!rc) rc = ones_f32(cm, D, &Y->attn_norm);
        if (!rc) rc = ones_f32(cm, D, &Y->ffn_norm);
        if (!rc && I.has_trained_index) {
            rc = dalloc(cm, di * 4, (void **)&Y->idx_q_norm);
            if (!rc) rc = dalloc(cm, di * 4, (void **)&Y->idx_k_norm);
            if (!rc) rc = ck(cudaMemsetAsync(Y->idx_q_norm, 0, di * 4, cm->st), "memset");
            if (!rc) rc = ck(cudaMemsetAsync(Y->idx_k_norm, 0, di * 4, cm->st), "memset");
        }
        wb += (Nq * D + D * qd + 3 * F * D) * 2 + 2 * D * 4;
    }
    if (!rc) rc = ck(cudaStreamSynchronize(cm->st), "random weights");
    if (rc) {
        msa_cuda_model_free(cm);
        return msa_error_context(rc, "msa_cuda_model_random");
    }
    cm->weight_bytes = wb + D * 4;
    *out = cm;
    return MSA_OK;
}

extern "C" void msa_cuda_model_free(msa_cuda_model *cm) {
    if (!cm) return;
    cudaSetDevice(cm->device);
    if (cm->st) cudaStreamSynchronize(cm->st);
    if (cm->gexec) cudaGraphExecDestroy(cm->gexec);
    if (cm->prof_ev) {
        for (int i = 0; i < 2 * PROF_MAX; i++) cudaEventDestroy(cm->prof_ev[i]);
        cudaEventDestroy(cm->prof_step[0]);
        cudaEventDestroy(cm->prof_step[1]);
        free(cm->prof_ev);
    }
    void *scratch[] = {cm->x, cm->xb, cm->y, cm->q, cm->qi, cm->att, cm->h,
                       cm->sel, cm->logits, cm->amax, cm->ws, cm->meta, cm->stage};
    for (size_t i = 0; i < sizeof scratch / sizeof *scratch; i++) cudaFree(scratch[i]);
    cudaFreeHost(cm->meta_h);
    cudaFreeHost(cm->stage_h);
    cudaFreeHost(cm->sel_h);
    free(cm->stage_f);
    free(cm->all_h);
    for (int i = 0; i < cm->n_allocs; i++) cudaFree(cm->allocs[i]);
    free(cm->allocs);
    free(cm->L);
    if (cm->blas) cublasDestroy(cm->blas);
    if (cm->st) cudaStreamDestroy(cm->st);
    cudaGetLastError();
    free(cm);
}

extern "C" const msa_model_info *msa_cuda_model_info(const msa_cuda_model *cm) {
    return cm ? &cm->info : NULL;
}
extern "C" size_t msa_cuda_model_weight_bytes(const msa_cuda_model *cm) {
    return cm ? cm->weight_bytes : 0;
}
extern "C" void *msa_cuda_model_stream(const msa_cuda_model *cm) { return cm ? cm->st : NULL; }
extern "C" void msa_cuda_model_set_options(msa_cuda_model *cm, int use_graph, int generic) {
    if (!cm) return;
    cm->use_graph = use_graph & 1;
    cm->generic = generic;
    cm->use_gemv = (use_graph & 2) == 0;
    cm->skip_attn = (use_graph & 4) != 0;
    cm->gemv_v3 = (use_graph & 8) != 0;
}

/* ---- per-kernel timing ---------------------------------------------------------------- */

static const char *const prof_names[MSA_CUDA_PROF_KINDS] = {
    "embedding", "gemv qkv", "qkv post (bias, RoPE, idx q)", "attn: index + top-k",
    "attn: sparse + combine", "gemv o", "gemv gate/up + SwiGLU", "gemv down",
    "gemv classifier", "argmax", "token up / argmax down", "step (first to last launch)"};

extern "C" const char *msa_cuda_prof_name(int kind) {
    return kind >= 0 && kind < MSA_CUDA_PROF_KINDS ? prof_names[kind] : "?";
}

extern "C" void msa_cuda_model_profile(msa_cuda_model *cm, int on) {
    if (!cm) return;
    cudaSetDevice(cm->device);
    if (on && !cm->prof_ev) {
        cm->prof_ev = (cudaEvent_t *)calloc(2 * PROF_MAX, sizeof *cm->prof_ev);
        if (!cm->prof_ev) return;
        for (int i = 0; i < 2 * PROF_MAX; i++) cudaEventCreate(&cm->prof_ev[i]);
        cudaEventCreate(&cm->prof_step[0]);
        cudaEventCreate(&cm->prof_step[1]);
    }
    cm->prof_on = on && cm->prof_ev;
    memset(&cm->prof, 0, sizeof cm->prof);
    cm->prof_n = cm->prof_open = 0;
}

extern "C" int msa_cuda_model_profile_read(const msa_cuda_model *cm, msa_cuda_prof *out) {
    if (!cm || !out) return MSA_EINVAL;
    *out = cm->prof;
    return MSA_OK;
}

/* Brackets of one step: prof_b before a launch (or a group), prof_e after. */
static void prof_b(msa_cuda_model *cm, int kind, double bytes) {
    if (!cm->prof_active || cm->prof_n >= PROF_MAX) return;
    cudaEventRecord(cm->prof_ev[2 * cm->prof_n], cm->st);
    cm->prof_kind[cm->prof_n] = kind;
    cm->prof_bytes[cm->prof_n] = bytes;
    cm->prof_open = 1;
}
static void prof_e(msa_cuda_model *cm) {
    if (!cm->prof_open) return;
    cudaEventRecord(cm->prof_ev[2 * cm->prof_n + 1], cm->st);
    cm->prof_n++;
    cm->prof_open = 0;
}
/* After the step's stream synchronisation: the brackets into the sums. */
static void prof_collect(msa_cuda_model *cm) {
    for (int i = 0; i < cm->prof_n; i++) {
        float ms = 0.0f;
        cudaEventElapsedTime(&ms, cm->prof_ev[2 * i], cm->prof_ev[2 * i + 1]);
        cm->prof.ms[cm->prof_kind[i]] += ms;
        cm->prof.bytes[cm->prof_kind[i]] += cm->prof_bytes[i];
        cm->prof.launches[cm->prof_kind[i]]++;
    }
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, cm->prof_step[0], cm->prof_step[1]);
    cm->prof.ms[MSA_CUDA_PROF_STEP] += ms;
    cm->prof.launches[MSA_CUDA_PROF_STEP]++;
    cm->prof.steps++;
    cm->prof_n = cm->prof_open = 0;
    cudaGetLastError();
}

/* ---- layer memory ------------------------------------------------------------------ */

extern "C" int msa_cuda_kv_init(msa_cuda_model *cm, int block_size, int64_t capacity,
                                msa_cuda_kv **out) {
    if (!cm || !out || block_size <= 0 || capacity <= 0 || capacity > INT32_MAX)
        return msa_error(MSA_EINVAL, "msa_cuda_kv_init: bad argument");
    *out = NULL;
    msa_cuda_kv *kv = (msa_cuda_kv *)calloc(1, sizeof *kv);
    if (!kv) return msa_error(MSA_ENOMEM, "msa_cuda_kv_init");
    const msa_model_info *I = &cm->info;
    kv->cm = cm;
    kv->Bk = block_size;
    kv->cap_blocks = (int)((capacity + block_size - 1) / block_size);
    kv->cap = (int64_t)kv->cap_blocks * block_size;
    kv->KH = I->idx_key_heads;
    kv->di = I->idx_dim;
    const size_t per = (size_t)kv->cap_blocks * block_size;
    const size_t kvn = (size_t)I->n_layers * per * I->n_kv_heads * I->head_dim;
    const size_t kin = (size_t)I->n_layers * per * kv->KH * kv->di;
    int rc = ck(cudaSetDevice(cm->device), "cudaSetDevice");
    if (!rc) rc = ck(cudaMalloc((void **)&kv->k, kvn * 2), "cudaMalloc (K memory)");
    if (!rc) rc = ck(cudaMalloc((void **)&kv->v, kvn * 2), "cudaMalloc (V memory)");
    if (!rc) rc = ck(cudaMalloc((void **)&kv->kidx, kin * 2), "cudaMalloc (index keys)");
    if (!rc) rc = ck(cudaMalloc((void **)&kv->indptr, 2 * 4), "cudaMalloc");
    if (!rc) rc = ck(cudaMalloc((void **)&kv->table, (size_t)kv->cap_blocks * 4), "cudaMalloc");
    int32_t *h = rc ? NULL : (int32_t *)malloc((size_t)kv->cap_blocks * 4);
    if (!rc && !h) rc = msa_error(MSA_ENOMEM, "msa_cuda_kv_init: table");
    if (!rc) {
        for (int b = 0; b < kv->cap_blocks; b++) h[b] = b;
        int32_t ip[2] = {0, kv->cap_blocks};
        rc = ck(cudaMemcpy(kv->table, h, (size_t)kv->cap_blocks * 4, cudaMemcpyHostToDevice), "table");
        if (!rc) rc = ck(cudaMemcpy(kv->indptr, ip, 8, cudaMemcpyHostToDevice), "indptr");
    }
    free(h);
    if (rc) {
        msa_cuda_kv_free(kv);
        return msa_error_context(rc, "msa_cuda_kv_init: %lld tokens", (long long)capacity);
    }
    *out = kv;
    return MSA_OK;
}

extern "C" void msa_cuda_kv_free(msa_cuda_kv *kv) {
    if (!kv) return;
    msa_cuda_model *cm = kv->cm;
    if (cm) { /* a graph of this memory must not outlive it */
        cudaStreamSynchronize(cm->st);
        if (cm->gexec && cm->gkey.kv == kv) {
            cudaGraphExecDestroy(cm->gexec);
            cm->gexec = NULL;
        }
        if (cm->warm_key.kv == kv) cm->have_warm = 0;
    }
    cudaFree(kv->k);
    cudaFree(kv->v);
    cudaFree(kv->kidx);
    cudaFree(kv->indptr);
    cudaFree(kv->table);
    cudaGetLastError();
    free(kv);
}

extern "C" int64_t msa_cuda_kv_length(const msa_cuda_kv *kv) { return kv ? kv->len : 0; }

extern "C" int msa_cuda_kv_truncate(msa_cuda_kv *kv, int64_t len) {
    if (!kv || len < 0 || len > kv->len)
        return msa_error(MSA_EINVAL, "msa_cuda_kv_truncate: length %lld", (long long)len);
    kv->len = len;
    return MSA_OK;
}

extern "C" int msa_cuda_kv_fill_random(msa_cuda_kv *kv, int64_t len, uint64_t seed) {
    if (!kv || len < 0) return msa_error(MSA_EINVAL, "msa_cuda_kv_fill_random: bad argument");
    if (len > kv->cap)
        return msa_error(MSA_ERANGE, "msa_cuda_kv_fill_random: %lld tokens, capacity %lld",
                         (long long)len, (long long)kv->cap);
    const msa_model_info *I = &kv->cm->info;
    const size_t nb = (size_t)((len + kv->Bk - 1) / kv->Bk);
    const size_t kvb = (size_t)I->n_kv_heads * kv->Bk * I->head_dim, kib = (size_t)kv->KH * kv->Bk * kv->di;
    cudaStream_t st = kv->cm->st;
    int rc = MSA_OK;
    for (int l = 0; l < I->n_layers && !rc; l++) {
        rc = fill_bf16(st, kv->k + l * kv->cap_blocks * kvb, nb * kvb, seed * 7 + 3 * l, 1.0f);
        if (!rc) rc = fill_bf16(st, kv->v + l * kv->cap_blocks * kvb, nb * kvb, seed * 7 + 3 * l + 1, 1.0f);
        if (!rc) rc = fill_bf16(st, kv->kidx + l * kv->cap_blocks * kib, nb * kib, seed * 7 + 3 * l + 2, 1.0f);
    }
    if (!rc) rc = ck(cudaStreamSynchronize(st), "random memory");
    if (!rc) kv->len = len;
    return rc;
}

/* ---- forward ------------------------------------------------------------------------- */

/* y (n, out) = x (n, in) W^T, W (out, in) row-major bf16; y fp32 or bf16;
 * beta 1 accumulates into y (the residual adds). */
static int gemm(msa_cuda_model *cm, const bf16 *W, const bf16 *x, void *y, cudaDataType yt,
                int n, int in, int outd, float beta, const char *what) {
    const float alpha = 1.0f;
    return ckb(cublasGemmEx(cm->blas, CUBLAS_OP_T, CUBLAS_OP_N, outd, n, in, &alpha, W,
                            CUDA_R_16BF, in, x, CUDA_R_16BF, in, &beta, y, yt, outd,
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               what);
}

static int grow(void **p, size_t bytes) {
    cudaFree(*p);
    *p = NULL;
    return ck(cudaMalloc(p, bytes ? bytes : 1), "cudaMalloc (forward scratch)");
}

static int ensure_scratch(msa_cuda_model *cm, int n, int logit_rows, int top_k, size_t ws) {
    const msa_model_info *I = &cm->info;
    int rc = MSA_OK;
    if (n > cm->cap_rows || top_k > cm->cap_topk) {
        const int rows = n > cm->cap_rows ? n : cm->cap_rows;
        const int tk = top_k > cm->cap_topk ? top_k : cm->cap_topk;
        const size_t D = I->dim, qd = (size_t)I->n_heads * I->head_dim, F = I->ff_dim;
        size_t ny = (size_t)cm->Nqkv > 2 * F ? (size_t)cm->Nqkv : 2 * F;
        if (!rc) rc = grow((void **)&cm->x, rows * D * 4);
        if (!rc) rc = grow((void **)&cm->xb, rows * D * 2);
        if (!rc) rc = grow((void **)&cm->y, rows * ny * 4);
        if (!rc) rc = grow((void **)&cm->q, rows * qd * 2);
        if (!rc) rc = grow((void **)&cm->qi, (size_t)rows * I->n_kv_heads * I->idx_dim * 2);
        if (!rc) rc = grow((void **)&cm->att, rows * qd * 2);
        if (!rc) rc = grow((void **)&cm->h, rows * F * 2);
        if (!rc) rc = grow((void **)&cm->sel, (size_t)rows * I->n_kv_heads * tk * 4);
        if (!rc) rc = grow((void **)&cm->meta, (4 + 2 * (size_t)rows) * 4);
        if (!rc) {
            const size_t per = 2 * (size_t)I->n_kv_heads * I->head_dim +
                               (size_t)I->idx_key_heads * I->idx_dim;
            rc = grow((void **)&cm->stage, rows * per * 2);
            cudaFreeHost(cm->stage_h);
            cudaFreeHost(cm->sel_h);
            cm->stage_h = NULL;
            cm->sel_h = NULL;
            free(cm->stage_f);
            cm->stage_f = (float *)malloc(rows * per * 4);
            if (!rc && !cm->stage_f) rc = msa_error(MSA_ENOMEM, "forward (CUDA): staging rows");
            if (!rc) rc = ck(cudaHostAlloc((void **)&cm->stage_h, rows * per * 2,
                                           cudaHostAllocDefault), "cudaHostAlloc");
            if (!rc) rc = ck(cudaHostAlloc((void **)&cm->sel_h,
                                           (size_t)rows * I->n_kv_heads * tk * 4,
                                           cudaHostAllocDefault), "cudaHostAlloc");
        }
        if (!rc) {
            cudaFreeHost(cm->meta_h);
            cm->meta_h = NULL;
            rc = ck(cudaHostAlloc((void **)&cm->meta_h, (4 + 2 * (size_t)rows) * 4,
                                  cudaHostAllocDefault), "cudaHostAlloc");
        }
        if (rc) {
            cm->cap_rows = cm->cap_topk = 0;
            return rc;
        }
        cm->cap_rows = rows;
        cm->cap_topk = tk;
        cm->gen++;
    }
    if (logit_rows > cm->cap_logit_rows) {
        rc = grow((void **)&cm->logits, (size_t)logit_rows * I->vocab_size * 4);
        if (!rc) rc = grow((void **)&cm->amax, (size_t)logit_rows * 4);
        cm->cap_logit_rows = rc ? 0 : logit_rows;
        cm->gen++;
        if (rc) return rc;
    }
    if (ws > cm->cap_ws) {
        rc = grow(&cm->ws, ws);
        cm->cap_ws = rc ? 0 : ws;
        cm->gen++;
    }
    return rc;
}

static int paged_attention(msa_cuda_model *cm, msa_kvmem *mem, int l, int n, int pos0,
                           int view_blocks, const msa_forward_opts *o, bool fast,
                           const msa_attn_config *cfg, const msa_exec *ex);

/* Queues one forward step (everything between the metadata upload and the
 * output download) on cm->st. With `mem` (the paged path, kv NULL) the
 * chunk's rows go to staging and paged_attention() runs each layer's
 * attention over the memory (it waits for the stream twice per layer). */
static int enqueue(msa_cuda_model *cm, msa_cuda_kv *kv, int n, int logit_rows, int view_blocks,
                   const msa_forward_opts *o, bool fast, msa_kvmem *mem = NULL, int pos0 = 0) {
    const msa_model_info *I = &cm->info;
    const int D = I->dim, Hq = I->n_heads, Hkv = I->n_kv_heads, d = I->head_dim, F = I->ff_dim,
              V = I->vocab_size, di = I->idx_dim, KH = I->idx_key_heads, qd = Hq * d,
              Bk = kv ? kv->Bk : o->block_size, G = Hq / Hkv;
    cudaStream_t st = cm->st;
    const int32_t *m_indptr = cm->meta, *m_len = cm->meta + 2, *m_tok = cm->meta + 4,
                  *m_pos = cm->meta + 4 + n;
    int rc;
    /* one row: the GEMV kernel (rmsnorm staged in it, SwiGLU in the gate/up
     * epilogue) instead of rmsnorm + cuBLAS + swiglu, unless switched off;
     * docs/bench-model.md compares the two */
    const bool one = n == 1 && cm->use_gemv && gemv_ok(D) && gemv_ok(qd) && gemv_ok(F);
    const bool v4 = one && !cm->gemv_v3;
    const double kvd = (double)Hkv * d;

    prof_b(cm, MSA_CUDA_PROF_EMBED, (double)n * D * 6);
    embed_kernel<<<n, 256, 0, st>>>(cm->tok_embd, m_tok, cm->x, D);
    prof_e(cm);
    if ((rc = LAUNCHED("embedding"))) return rc;

    msa_attn_config cfg = msa_attn_default_config();
    cfg.n_q_heads = Hq;
    cfg.n_kv_heads = Hkv;
    cfg.head_dim = d;
    cfg.idx_dim = di;
    cfg.idx_key_heads = KH;
    cfg.block_size = Bk;
    cfg.top_k = o->top_k;
    msa_exec ex;
    memset(&ex, 0, sizeof ex);
    ex.device = MSA_DEVICE_CUDA;
    ex.stream = st;
    ex.workspace = cm->ws;
    ex.workspace_size = cm->cap_ws;

    const size_t kvl = kv ? (size_t)kv->cap_blocks * Hkv * Bk * d : 0,
                 kil = kv ? (size_t)kv->cap_blocks * KH * Bk * di : 0;
    for (int l = 0; l < I->n_layers; l++) {
        const cuda_layer *Y = &cm->L[l];
        bf16 *kc, *vc, *ki;
        if (kv) {
            kc = kv->k + l * kvl, vc = kv->v + l * kvl, ki = kv->kidx + l * kil;
        } else { /* staging rows (n, Hkv, d) k, then v, then (n, KH, di) k_idx */
            kc = cm->stage;
            vc = kc + (size_t)n * Hkv * d;
            ki = vc + (size_t)n * Hkv * d;
        }
        qkv_args a;
        a.y = cm->y; a.bias = Y->bqkv; a.pos = m_pos; a.inv_freq = cm->inv_freq;
        a.q = cm->q; a.qi = I->has_trained_index ? NULL : cm->qi;
        a.kc = kc; a.vc = vc; a.kidx = I->has_trained_index ? NULL : ki;
        a.Nqkv = cm->Nqkv; a.Hq = Hq; a.Hkv = Hkv; a.d = d; a.G = G; a.Bk = Bk;
        a.neox = cm->rope_neox;
        a.rows = kv == NULL;
        /* bytes the post-processing reads (y) and writes (q, k, v, q_idx, k_idx) */
        const double post = (double)n * (cm->Nqkv * 4 + (qd + 2 * kvd) * 2 +
                                         (I->has_trained_index ? 0 : 2 * kvd * 2));
        prof_b(cm, MSA_CUDA_PROF_QKV, (double)cm->Nqkv * D * 2 + (double)n * cm->Nqkv * 4 +
                                          (v4 ? post : 0));
        if (one) {
            /* v4: the post-processing is the GEMV's last-CTA epilogue */
            rc = gemv(cm, Y->wqkv, NULL, cm->x, Y->attn_norm, cm->rms_eps, GEMV_NORM, cm->y,
                      NULL, D, cm->Nqkv, 0, EPI_QKV, &a);
        } else {
            rmsnorm_kernel<<<n, 256, 0, st>>>(cm->x, Y->attn_norm, cm->xb, D, cm->rms_eps);
            if (!(rc = LAUNCHED("rmsnorm")))
                rc = gemm(cm, Y->wqkv, cm->xb, cm->y, CUDA_R_32F, n, D, cm->Nqkv, 0.0f, "qkv");
        }
        prof_e(cm);
        if (rc) return rc;
        if (!v4) {
            prof_b(cm, MSA_CUDA_PROF_QKV_POST, post);
            qkv_kernel<<<n, 128, 0, st>>>(a);
            prof_e(cm);
            if ((rc = LAUNCHED("qkv / RoPE"))) return rc;
        }
        if (I->has_trained_index) {
            idx_kernel<<<dim3(n, Hkv + 1), 128, di * 4, st>>>(
                cm->y, m_pos, cm->inv_freq_idx, Y->idx_q_norm, Y->idx_k_norm, cm->qi, ki,
                cm->Nqkv, qd + 2 * Hkv * d, Hkv, di, Bk, cm->rms_eps, cm->rope_neox, kv == NULL);
            if ((rc = LAUNCHED("index RoPE"))) return rc;
        }

        if (mem) {
            rc = paged_attention(cm, mem, l, n, pos0, view_blocks, o, fast, &cfg, &ex);
            if (rc) return msa_error_context(rc, "forward (CUDA): layer %d: attention", l);
        } else if (cm->skip_attn) {
            /* diagnostic (benchmark breakdown): no attention, att keeps
             * whatever it held */
        } else if (fast) {
            msa_paged_kv pk;
            memset(&pk, 0, sizeof pk);
            pk.dtype = MSA_DTYPE_BF16;
            pk.k = kc; pk.v = vc; pk.kidx = ki;
            pk.kv_indptr = kv->indptr; pk.kv_table = kv->table;
            pk.seq_len = m_len; pk.n_seqs = 1; pk.max_blocks = view_blocks;
            msa_attn_batch b;
            memset(&b, 0, sizeof b);
            b.n_q = n; b.q_indptr = m_indptr; b.q_pos = m_pos;
            b.q = cm->q; b.q_idx = cm->qi; b.out = cm->att;
            /* bytes: index keys of the visible blocks; the selected (or all) K/V */
            const double vis = (double)view_blocks * Bk;
            const double sel_tok = (double)o->top_k * Bk < vis ? (double)o->top_k * Bk : vis;
            if (o->dense) {
                prof_b(cm, MSA_CUDA_PROF_ATT_SPARSE, vis * kvd * 4);
                rc = msa_dense_attention(&cfg, &pk, &b, &ex);
                prof_e(cm);
            } else {
                b.selected = cm->sel;
                prof_b(cm, MSA_CUDA_PROF_ATT_SELECT, vis * KH * di * 2);
                rc = msa_index_select(&cfg, &pk, &b, &ex);
                prof_e(cm);
                prof_b(cm, MSA_CUDA_PROF_ATT_SPARSE, n * sel_tok * kvd * 4);
                if (!rc) rc = msa_sparse_attention(&cfg, &pk, &b, &ex);
                prof_e(cm);
            }
            if (rc) return msa_error_context(rc, "forward (CUDA): layer %d: attention", l);
        } else {
            if (!o->dense) { /* kernels/index_paged.cu's plain scan and selection */
                msa_paged_kv pk;
                memset(&pk, 0, sizeof pk);
                pk.dtype = MSA_DTYPE_BF16;
                pk.kidx = ki;
                pk.kv_indptr = kv->indptr; pk.kv_table = kv->table;
                pk.seq_len = m_len; pk.n_seqs = 1; pk.max_blocks = view_blocks;
                msa_attn_batch b;
                memset(&b, 0, sizeof b);
                b.n_q = n; b.q_indptr = m_indptr; b.q_pos = m_pos; b.q_idx = cm->qi;
                float *scores = (float *)cm->ws;
                rc = msa_cuda_index_scores_generic(&cfg, &pk, &b, 0, view_blocks, scores, st);
                if (!rc) rc = msa_cuda_topk_generic(&cfg, &b, view_blocks, scores, cm->sel, st);
                if (rc) return msa_error_context(rc, "forward (CUDA): layer %d: selection", l);
            }
            generic_attn_kernel<<<(n * Hq + 63) / 64, 64, 0, st>>>(
                cm->q, kc, vc, m_pos, o->dense ? NULL : cm->sel, cm->att, n, Hq, Hkv, d, Bk,
                o->top_k, 1.0f / sqrtf((float)d), NULL);
            if ((rc = LAUNCHED("generic attention"))) return rc;
        }

        prof_b(cm, MSA_CUDA_PROF_O, (double)D * qd * 2 + (double)n * D * 8);
        rc = one ? gemv(cm, Y->wo, cm->att, NULL, NULL, 0.0f, GEMV_PLAIN, cm->x, NULL, qd, D, 1)
                 : gemm(cm, Y->wo, cm->att, cm->x, CUDA_R_32F, n, qd, D, 1.0f, "wo");
        prof_e(cm);
        if (rc) return rc;
        if (Y->bo) {
            add_bias_kernel<<<grid_for((size_t)n * D, 256), 256, 0, st>>>(cm->x, Y->bo, n, D);
            if ((rc = LAUNCHED("bias"))) return rc;
        }
        if (one) {
            prof_b(cm, MSA_CUDA_PROF_GATE_UP, 2.0 * F * D * 2 + (double)F * 2);
            rc = gemv(cm, Y->w13, NULL, cm->x, Y->ffn_norm, cm->rms_eps, GEMV_NORM, NULL,
                      cm->h, D, F, 0);
            prof_e(cm);
            prof_b(cm, MSA_CUDA_PROF_DOWN, (double)F * D * 2 + (double)D * 8);
            if (!rc)
                rc = gemv(cm, Y->w2, cm->h, NULL, NULL, 0.0f, GEMV_PLAIN, cm->x, NULL, F, D, 1);
            prof_e(cm);
            if (rc) return rc;
            continue;
        }
        rmsnorm_kernel<<<n, 256, 0, st>>>(cm->x, Y->ffn_norm, cm->xb, D, cm->rms_eps);
        if ((rc = LAUNCHED("rmsnorm"))) return rc;
        if ((rc = gemm(cm, Y->w13, cm->xb, cm->y, CUDA_R_32F, n, D, 2 * F, 0.0f, "w1/w3")))
            return rc;
        swiglu_kernel<<<grid_for((size_t)n * F, 256), 256, 0, st>>>(cm->y, cm->h, n, F);
        if ((rc = LAUNCHED("swiglu"))) return rc;
        if ((rc = gemm(cm, Y->w2, cm->h, cm->x, CUDA_R_32F, n, F, D, 1.0f, "w2"))) return rc;
    }
    const int r0 = n - logit_rows;
    if (one) {
        /* v4: the argmax is the classifier GEMV's epilogue (per-CTA partials,
         * the last CTA reduces them) */
        prof_b(cm, MSA_CUDA_PROF_CLASSIFIER, (double)V * D * 2 + (double)V * 4);
        rc = gemv(cm, cm->output, NULL, cm->x, cm->output_norm, cm->rms_eps, GEMV_NORM,
                  cm->logits, NULL, D, V, 0, EPI_ARGMAX);
        prof_e(cm);
        if (rc || v4) return rc;
        prof_b(cm, MSA_CUDA_PROF_ARGMAX, (double)V * 4);
        argmax_kernel<<<1, 1024, 0, st>>>(cm->logits, V, cm->amax);
        prof_e(cm);
        return LAUNCHED("argmax");
    }
    rmsnorm_kernel<<<logit_rows, 256, 0, st>>>(cm->x + (size_t)r0 * D, cm->output_norm, cm->xb, D,
                                               cm->rms_eps);
    if ((rc = LAUNCHED("final rmsnorm"))) return rc;
    if ((rc = gemm(cm, cm->output, cm->xb, cm->logits, CUDA_R_32F, logit_rows, D, V, 0.0f,
                   "classifier")))
        return rc;
    argmax_kernel<<<logit_rows, 1024, 0, st>>>(cm->logits, V, cm->amax);
    return LAUNCHED("argmax");
}

/* The attention config of model I with blocks of Bk and top_k. */
static msa_attn_config attn_config(const msa_model_info *I, int Bk, int top_k) {
    msa_attn_config cfg = msa_attn_default_config();
    cfg.n_q_heads = I->n_heads;
    cfg.n_kv_heads = I->n_kv_heads;
    cfg.head_dim = I->head_dim;
    cfg.idx_dim = I->idx_dim;
    cfg.idx_key_heads = I->idx_key_heads;
    cfg.block_size = Bk;
    cfg.top_k = top_k;
    return cfg;
}

/* Whether the public CUDA attention kernels take these shapes (else the
 * generic kernels run). */
static bool fast_path_fits(const msa_model_info *I, int Bk, int top_k) {
    return (I->head_dim == 64 || I->head_dim == 128) && (I->idx_dim == 64 || I->idx_dim == 128) &&
           Bk % 16 == 0 && Bk <= 128 && top_k <= 64;
}

extern "C" int msa_cuda_model_forward(msa_cuda_model *cm, msa_cuda_kv *kv, const int32_t *tokens,
                                      int n, int pos0, const msa_forward_opts *opts,
                                      float *logits, int32_t *argmax) {
    if (!cm || !kv || !tokens || n <= 0 || pos0 < 0 || kv->cm != cm)
        return msa_error(MSA_EINVAL, "msa_cuda_model_forward: bad argument");
    msa_forward_opts o = opts ? *opts : msa_forward_default_opts();
    if (o.on_layer)
        return msa_error(MSA_EUNSUPPORTED, "msa_cuda_model_forward: on_layer traces (CPU only)");
    if (o.block_size != kv->Bk || o.top_k <= 0)
        return msa_error(MSA_EINVAL, "msa_cuda_model_forward: block size %d (memory: %d), "
                         "top_k %d", o.block_size, kv->Bk, o.top_k);
    if (pos0 != kv->len)
        return msa_error(MSA_EINVAL, "msa_cuda_model_forward: memory holds %lld tokens, pos0 "
                         "is %d", (long long)kv->len, pos0);
    if ((int64_t)pos0 + n > kv->cap)
        return msa_error(MSA_ERANGE, "msa_cuda_model_forward: %lld tokens, memory capacity %lld",
                         (long long)pos0 + n, (long long)kv->cap);
    const msa_model_info *I = &cm->info;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= I->vocab_size)
            return msa_error(MSA_EINVAL, "msa_cuda_model_forward: token %d at row %d (vocab %d)",
                             tokens[i], i, I->vocab_size);
    if (I->head_dim > GEN_MAX_D || I->idx_dim > GEN_MAX_D)
        return msa_error(MSA_EUNSUPPORTED, "msa_cuda_model_forward: head dim %d", I->head_dim);
    int rc = ck(cudaSetDevice(cm->device), "cudaSetDevice");
    if (rc) return rc;

    const int Bk = kv->Bk;
    const bool fast = !cm->generic && fast_path_fits(I, Bk, o.top_k);
    /* Blocks the call can see, rounded up so that consecutive decode steps
     * share one graph. */
    int need = (pos0 + n + Bk - 1) / Bk;
    int view = (need + 31) / 32 * 32;
    if (view > kv->cap_blocks) view = kv->cap_blocks;
    const int logit_rows = o.all_logits ? n : 1;
    const msa_attn_config cfg = attn_config(I, Bk, o.top_k);
    size_t ws = fast ? msa_attention_workspace_size(&cfg, n, view) : 0;
    const size_t gws = (size_t)n * I->n_kv_heads * view * 4;
    if (gws > ws) ws = gws;
    if ((rc = ensure_scratch(cm, n, logit_rows, o.top_k, ws))) return rc;

    /* per-kernel timing: single-token steps of this path only, eager */
    cm->prof_active = cm->prof_on && n == 1;
    if (cm->prof_active) {
        spin_kernel<<<1, 1, 0, cm->st>>>(4000000); /* 4 ms: the host queues the step */
        if ((rc = LAUNCHED("spin"))) return rc;
    }
    int32_t *mh = cm->meta_h;
    mh[0] = 0;
    mh[1] = n;
    mh[2] = pos0 + n;
    mh[3] = 0;
    memcpy(mh + 4, tokens, (size_t)n * 4);
    for (int i = 0; i < n; i++) mh[4 + n + i] = pos0 + i;
    prof_b(cm, MSA_CUDA_PROF_COPY, (4 + 2.0 * n) * 4);
    rc = ck(cudaMemcpyAsync(cm->meta, mh, (4 + 2 * (size_t)n) * 4, cudaMemcpyHostToDevice, cm->st),
            "upload tokens");
    prof_e(cm);
    if (rc) {
        cm->prof_active = 0;
        return rc;
    }

    graph_key key;
    memset(&key, 0, sizeof key);
    key.kv = kv;
    key.k = kv->k;
    key.v = kv->v;
    key.kidx = kv->kidx;
    key.cap_blocks = kv->cap_blocks;
    key.view_blocks = view;
    key.dense = o.dense;
    key.top_k = o.top_k;
    key.generic = !fast;
    key.gen = cm->gen;
    key.gemv = cm->use_gemv;
    key.skip_attn = cm->skip_attn;
    key.gemv_v3 = cm->gemv_v3;
    const bool graphable = cm->use_graph && n == 1 && !cm->prof_active;
    if (graphable && cm->gexec && !memcmp(&key, &cm->gkey, sizeof key)) {
        rc = ck(cudaGraphLaunch(cm->gexec, cm->st), "graph launch");
    } else if (graphable && cm->have_warm && !memcmp(&key, &cm->warm_key, sizeof key)) {
        if (cm->gexec) cudaGraphExecDestroy(cm->gexec);
        cm->gexec = NULL;
        cudaGraph_t g = NULL;
        rc = ck(cudaStreamBeginCapture(cm->st, cudaStreamCaptureModeThreadLocal), "begin capture");
        if (!rc) {
            int rc2 = enqueue(cm, kv, n, logit_rows, view, &o, fast);
            cudaError_t e = cudaStreamEndCapture(cm->st, &g);
            rc = rc2 ? rc2 : ck(e, "end capture");
        }
        if (!rc) rc = ck(cudaGraphInstantiate(&cm->gexec, g, 0), "graph instantiate");
        if (g) cudaGraphDestroy(g);
        if (!rc) {
            cm->gkey = key;
            rc = ck(cudaGraphLaunch(cm->gexec, cm->st), "graph launch");
        } else {
            /* capture failed: run this step eagerly and stop trying */
            cudaGetLastError();
            cm->gexec = NULL;
            cm->use_graph = 0;
            rc = enqueue(cm, kv, n, logit_rows, view, &o, fast);
        }
    } else {
        if (cm->prof_active) cudaEventRecord(cm->prof_step[0], cm->st);
        rc = enqueue(cm, kv, n, logit_rows, view, &o, fast);
        if (cm->prof_active) cudaEventRecord(cm->prof_step[1], cm->st);
        if (graphable && !rc) {
            cm->warm_key = key;
            cm->have_warm = 1;
        }
    }
    prof_b(cm, MSA_CUDA_PROF_COPY, (logits ? (double)logit_rows * I->vocab_size * 4 : 0) +
                                       (argmax ? logit_rows * 4 : 0));
    if (!rc && logits)
        rc = ck(cudaMemcpyAsync(logits, cm->logits, (size_t)logit_rows * I->vocab_size * 4,
                                cudaMemcpyDeviceToHost, cm->st), "download logits");
    if (!rc && argmax)
        rc = ck(cudaMemcpyAsync(argmax, cm->amax, (size_t)logit_rows * 4, cudaMemcpyDeviceToHost,
                                cm->st), "download argmax");
    prof_e(cm);
    int rs = ck(cudaStreamSynchronize(cm->st), "forward");
    if (!rc) rc = rs;
    if (cm->prof_active) {
        if (!rc) prof_collect(cm);
        cm->prof_n = cm->prof_open = 0;
        cm->prof_active = 0;
    }
    if (rc) return msa_error_context(rc, "msa_cuda_model_forward (pos0 %d, n %d)", pos0, n);
    kv->len = pos0 + n;
    return MSA_OK;
}

/* ---- the paged path: attention over an msa_kvmem (the session's pager) ---------------- */

static inline float bf16_bits_to_f32(uint16_t b) {
    const uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Where the paged path's index scan writes: block scores [n][Hkv][nb] at
 * the start of cm->ws, the scan's scratch after them. */
static size_t scan_scratch_offset(int n, int Hkv, int nb) {
    return ((size_t)n * Hkv * nb * 4 + 255) & ~(size_t)255;
}

typedef struct scan_ctx {
    const msa_attn_config *cfg;
    const msa_attn_batch *b;
    float *scores;
    int stride;
    void *scratch;
    cudaStream_t st;
    bool fast;
} scan_ctx;

/* One chunk of a layer's index keys (or all of them) scored into its columns
 * of the score buffer (msa_kvmem_paged_index_scan's callback). */
static int score_chunk(void *user, const msa_paged_kv *chunk, int64_t block0, int nblk) {
    const scan_ctx *c = (const scan_ctx *)user;
    msa_paged_kv kv = *chunk;
    kv.max_blocks = nblk;
    return c->fast ? msa_cuda_index_scores(c->cfg, &kv, c->b, (int)block0, c->stride, c->scores,
                                           c->scratch, c->st)
                   : msa_cuda_index_scores_generic(c->cfg, &kv, c->b, (int)block0, c->stride,
                                                   c->scores, c->st);
}

/* Layer l of a paged step: the staged rows go to the memory (downloaded and
 * widened to fp32, which is exact, for kvmem's append), then index_view,
 * the selection on the GPU, the selection brought back to the host for
 * kv_view, and the attention over the slots kv_view made resident.
 *
 * The selection: with index keys resident on the GPU the fast path runs
 * msa_index_select; a layer whose index keys the pager streams (beyond
 * gpu_index_bytes) is scored chunk by chunk as the pager pages the keys in
 * (msa_kvmem_paged_index_scan -> msa_cuda_index_scores, bit-identical
 * scores), then one top-k runs over all of them. The generic path always
 * scores through the same kernel (msa_cuda_index_scores_generic: once over
 * the resident keys, or per chunk) and selects with msa_cuda_topk_generic. */
static int paged_attention(msa_cuda_model *cm, msa_kvmem *mem, int l, int n, int pos0,
                           int view_blocks, const msa_forward_opts *o, bool fast,
                           const msa_attn_config *cfg, const msa_exec *ex) {
    const msa_model_info *I = &cm->info;
    const int Hq = I->n_heads, Hkv = I->n_kv_heads, d = I->head_dim, di = I->idx_dim,
              KH = I->idx_key_heads, Bk = o->block_size, top_k = o->top_k;
    cudaStream_t st = cm->st;
    const int32_t *m_pos = cm->meta + 4 + n;
    const size_t kvr = (size_t)n * Hkv * d, kir = (size_t)n * KH * di, tot = 2 * kvr + kir;
    const double t0 = msa_now();
    int rc = ck(cudaMemcpyAsync(cm->stage_h, cm->stage, tot * 2, cudaMemcpyDeviceToHost, st),
                "download rows");
    if (!rc) rc = ck(cudaStreamSynchronize(st), "download rows");
    if (rc) return rc;
    for (size_t i = 0; i < tot; i++) cm->stage_f[i] = bf16_bits_to_f32(cm->stage_h[i]);
    rc = mem->ops->append(mem, l, n, cm->stage_f, cm->stage_f + kvr, cm->stage_f + 2 * kvr);
    cm->append_s += msa_now() - t0;
    if (rc) return rc;

    msa_paged_kv pk;
    memset(&pk, 0, sizeof pk);
    if ((rc = mem->ops->index_view(mem, l, &pk))) return rc;
    msa_attn_batch b;
    memset(&b, 0, sizeof b);
    b.n_q = n;
    b.q_indptr = cm->meta;
    b.q_pos = m_pos;
    b.q = cm->q;
    b.q_idx = cm->qi;
    b.out = cm->att;
    const int nb = (pos0 + n + Bk - 1) / Bk;
    int n_sel;
    const int32_t *sel_h;
    if (!o->dense) {
        const bool streamed = msa_kvmem_paged_index_streamed(mem, l) != 0;
        b.selected = cm->sel;
        if (fast && !streamed) {
            rc = msa_index_select(cfg, &pk, &b, ex);
        } else {
            scan_ctx c;
            c.cfg = cfg;
            c.b = &b;
            c.scores = (float *)cm->ws;
            c.stride = pk.max_blocks;
            c.scratch = (char *)cm->ws + scan_scratch_offset(n, Hkv, pk.max_blocks);
            c.st = st;
            c.fast = fast;
            rc = streamed ? msa_kvmem_paged_index_scan(mem, l, score_chunk, &c)
                          : score_chunk(&c, &pk, 0, pk.max_blocks);
            if (!rc)
                rc = fast ? msa_cuda_topk_scores(&pk, &b, Hkv, Bk, top_k, c.scores, cm->sel, st)
                          : msa_cuda_topk_generic(cfg, &b, c.stride, c.scores, cm->sel, st);
        }
        n_sel = n * Hkv * top_k;
        if (!rc) rc = ck(cudaMemcpyAsync(cm->sel_h, cm->sel, (size_t)n_sel * 4,
                                         cudaMemcpyDeviceToHost, st), "download selection");
        if (!rc) rc = ck(cudaStreamSynchronize(st), "download selection");
        sel_h = cm->sel_h;
    } else {
        if (nb > cm->cap_all) {
            int32_t *a = (int32_t *)realloc(cm->all_h, (size_t)nb * 4);
            if (!a) return msa_error(MSA_ENOMEM, "forward (CUDA): block list");
            cm->all_h = a;
            for (int i = cm->cap_all; i < nb; i++) a[i] = i;
            cm->cap_all = nb;
        }
        n_sel = nb;
        sel_h = cm->all_h;
    }
    if (rc) return rc;
    if (o->on_layer) { /* the paged path traces the selection only */
        msa_forward_trace t;
        memset(&t, 0, sizeof t);
        t.layer = l;
        t.n = n;
        t.pos0 = pos0;
        t.n_kv_heads = Hkv;
        t.top_k = top_k;
        t.selected = o->dense ? NULL : sel_h;
        o->on_layer(o->user, &t);
    }
    if ((rc = mem->ops->kv_view(mem, l, sel_h, n_sel, &pk))) return rc;
    if (fast)
        return o->dense ? msa_dense_attention(cfg, &pk, &b, ex)
                        : msa_sparse_attention(cfg, &pk, &b, ex);
    generic_attn_kernel<<<(n * Hq + 63) / 64, 64, 0, st>>>(
        cm->q, (const bf16 *)pk.k, (const bf16 *)pk.v, m_pos, o->dense ? NULL : cm->sel, cm->att,
        n, Hq, Hkv, d, Bk, top_k, 1.0f / sqrtf((float)d), pk.kv_table);
    return LAUNCHED("generic attention (paged)");
}

extern "C" int msa_cuda_model_forward_mem(msa_cuda_model *cm, msa_kvmem *mem,
                                          const int32_t *tokens, int n, int pos0,
                                          const msa_forward_opts *opts, float *logits,
                                          int32_t *argmax) {
    if (!cm || !mem || !tokens || n <= 0 || pos0 < 0)
        return msa_error(MSA_EINVAL, "msa_cuda_model_forward_mem: bad argument");
    msa_forward_opts o = opts ? *opts : msa_forward_default_opts();
    const int Bk = o.block_size;
    if (Bk <= 0 || o.top_k <= 0)
        return msa_error(MSA_EINVAL, "msa_cuda_model_forward_mem: block size %d, top_k %d", Bk,
                         o.top_k);
    const int64_t have = mem->ops->length(mem, 0);
    if (have != pos0)
        return msa_error(MSA_EINVAL, "msa_cuda_model_forward_mem: memory holds %lld tokens, "
                         "pos0 is %d", (long long)have, pos0);
    const msa_model_info *I = &cm->info;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= I->vocab_size)
            return msa_error(MSA_EINVAL, "msa_cuda_model_forward_mem: token %d at row %d "
                             "(vocab %d)", tokens[i], i, I->vocab_size);
    if (I->head_dim > GEN_MAX_D || I->idx_dim > GEN_MAX_D)
        return msa_error(MSA_EUNSUPPORTED, "msa_cuda_model_forward_mem: head dim %d",
                         I->head_dim);
    int rc = ck(cudaSetDevice(cm->device), "cudaSetDevice");
    if (rc) return rc;
    const bool fast = !cm->generic && fast_path_fits(I, Bk, o.top_k);
    const int view = (pos0 + n + Bk - 1) / Bk;
    const int logit_rows = o.all_logits ? n : 1;
    const msa_attn_config cfg = attn_config(I, Bk, o.top_k);
    size_t ws = fast ? msa_attention_workspace_size(&cfg, n, view) : 0;
    /* block scores and the index scan's scratch (paged_attention) */
    const size_t gws = scan_scratch_offset(n, I->n_kv_heads, view) +
                       msa_cuda_index_scratch_size(n, 1);
    if (gws > ws) ws = gws;
    if ((rc = ensure_scratch(cm, n, logit_rows, o.top_k, ws))) return rc;
    int32_t *mh = cm->meta_h;
    mh[0] = 0;
    mh[1] = n;
    mh[2] = pos0 + n;
    mh[3] = 0;
    memcpy(mh + 4, tokens, (size_t)n * 4);
    for (int i = 0; i < n; i++) mh[4 + n + i] = pos0 + i;
    rc = ck(cudaMemcpyAsync(cm->meta, mh, (4 + 2 * (size_t)n) * 4, cudaMemcpyHostToDevice,
                            cm->st), "upload tokens");
    if (!rc) rc = enqueue(cm, NULL, n, logit_rows, view, &o, fast, mem, pos0);
    if (!rc && logits)
        rc = ck(cudaMemcpyAsync(logits, cm->logits, (size_t)logit_rows * I->vocab_size * 4,
                                cudaMemcpyDeviceToHost, cm->st), "download logits");
    if (!rc && argmax)
        rc = ck(cudaMemcpyAsync(argmax, cm->amax, (size_t)logit_rows * 4, cudaMemcpyDeviceToHost,
                                cm->st), "download argmax");
    int rs = ck(cudaStreamSynchronize(cm->st), "forward");
    if (!rc) rc = rs;
    if (rc) return msa_error_context(rc, "msa_cuda_model_forward_mem (pos0 %d, n %d)", pos0, n);
    return MSA_OK;
}

extern "C" double msa_cuda_model_append_seconds(const msa_cuda_model *cm) {
    return cm ? cm->append_s : 0.0;
}
