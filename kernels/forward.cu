/*
 * forward.cu: the row-wise kernels of the GPU forward pass (embedding,
 * rmsnorm, qkv post-processing with RoPE, the trained index's norm and RoPE,
 * SwiGLU, bias, argmax), the generic attention of models whose head dims the
 * MSA kernels do not take, and the fills the benchmarks use, each behind a C
 * launcher of kernels/forward_ops.h; forward_ref.c holds their references.
 *
 * They moved here from engine/forward/forward_cuda.cu unchanged: same
 * arithmetic, same launch shapes, and like forward_cuda.cu this file is
 * built without --use_fast_math (kernels/CMakeLists.txt), so cosf, sinf,
 * expf and the divisions are the precise ones the CPU comparison expects.
 *
 * The generic attention is deliberately plain: one thread per (row, query
 * head) runs an online softmax over the listed blocks. It exists so that
 * every model runs on the GPU (stories260K has d = 8), and as a second
 * opinion on the fast path.
 */
#include <math.h>
#include <stdint.h>

#include "kernels/cuda_common.cuh"
#include "kernels/forward_rows.cuh"

typedef msa_fwd_bf16 bf16;

static int grid_for(size_t n, int threads) {
    size_t g = (n + threads - 1) / threads;
    return (int)(g > 65535 ? 65535 : (g ? g : 1));
}

/* ---- fills ------------------------------------------------------------------ */

__device__ __forceinline__ uint64_t fwd_mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* p[i] = uniform in [-scale, scale), from (seed, i). */
__global__ void fill_uniform_kernel(bf16 *p, size_t n, uint64_t seed, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint64_t r = fwd_mix64(seed * 0x2545F4914F6CDD1DULL + i);
        float u = (float)(r >> 40) * (1.0f / 16777216.0f); /* [0, 1) */
        p[i] = __float2bfloat16((2.0f * u - 1.0f) * scale);
    }
}

__global__ void fill_f32_kernel(float *p, size_t n, float v) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = v;
}

extern "C" int msa_fwd_fill_uniform_bf16(uint16_t *p, size_t n, uint64_t seed, float scale,
                                         cudaStream_t st) {
    if (!n) return MSA_OK;
    if (!p) return msa_error(MSA_EINVAL, "msa_fwd_fill_uniform_bf16: NULL array");
    fill_uniform_kernel<<<grid_for(n, 256) < 4096 ? grid_for(n, 256) : 4096, 256, 0, st>>>(
        (bf16 *)p, n, seed, scale);
    return MSA_CUDA_LAUNCHED("random fill");
}

extern "C" int msa_fwd_fill_f32(float *p, size_t n, float v, cudaStream_t st) {
    if (!n) return MSA_OK;
    if (!p) return msa_error(MSA_EINVAL, "msa_fwd_fill_f32: NULL array");
    fill_f32_kernel<<<grid_for(n, 256), 256, 0, st>>>(p, n, v);
    return MSA_CUDA_LAUNCHED("fill");
}

/* Holds the stream for `ns` nanoseconds. */
__global__ void spin_kernel(long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while ((long long)(t - t0) < ns);
}

extern "C" int msa_fwd_spin(long long ns, cudaStream_t st) {
    spin_kernel<<<1, 1, 0, st>>>(ns);
    return MSA_CUDA_LAUNCHED("spin");
}

/* ---- embedding, rmsnorm ------------------------------------------------------ */

/* x (n, D) fp32 = tok_embd[tokens[i]] */
__global__ void embed_kernel(const bf16 *__restrict__ emb, const int32_t *__restrict__ tokens,
                             float *__restrict__ x, int D) {
    const int i = blockIdx.x;
    const bf16 *e = emb + (size_t)tokens[i] * D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) x[(size_t)i * D + j] = __bfloat162float(e[j]);
}

extern "C" int msa_fwd_embed(const uint16_t *emb, const int32_t *tokens, float *x, int n, int D,
                             cudaStream_t st) {
    if (n <= 0) return MSA_OK;
    if (!emb || !tokens || !x || D <= 0) return msa_error(MSA_EINVAL, "msa_fwd_embed: bad argument");
    embed_kernel<<<n, 256, 0, st>>>((const bf16 *)emb, tokens, x, D);
    return MSA_CUDA_LAUNCHED("embedding");
}

/* out (rows, D) bf16 = x / rms(x) * w, row r reading x + r*D (llama2.c's rmsnorm). */
__global__ void rmsnorm_kernel(const float *__restrict__ x, const float *__restrict__ w,
                               bf16 *__restrict__ out, int D, float eps) {
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.x * D;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < D; j += blockDim.x) ss += xr[j] * xr[j];
    ss = msa_fwd_block_sum(ss, red);
    const float r = 1.0f / sqrtf(ss / D + eps);
    for (int j = threadIdx.x; j < D; j += blockDim.x)
        out[(size_t)blockIdx.x * D + j] = __float2bfloat16(w[j] * (r * xr[j]));
}

extern "C" int msa_fwd_rmsnorm(const float *x, const float *w, uint16_t *out, int rows, int D,
                               float eps, cudaStream_t st) {
    if (rows <= 0) return MSA_OK;
    if (!x || !w || !out || D <= 0) return msa_error(MSA_EINVAL, "msa_fwd_rmsnorm: bad argument");
    rmsnorm_kernel<<<rows, 256, 0, st>>>(x, w, (bf16 *)out, D, eps);
    return MSA_CUDA_LAUNCHED("rmsnorm");
}

/* ---- qkv post-processing, trained index -------------------------------------- */

__global__ void qkv_kernel(msa_fwd_qkv a) { msa_fwd_qkv_row(a, blockIdx.x); }

extern "C" int msa_fwd_qkv_post(const msa_fwd_qkv *a, int n, cudaStream_t st) {
    if (n <= 0) return MSA_OK;
    if (!a || !a->y || !a->pos || !a->inv_freq || !a->q || !a->kc || !a->vc || a->d <= 0 ||
        a->d % 2 || a->Hkv <= 0 || a->G <= 0 || a->Hq != a->G * a->Hkv || a->Bk <= 0 ||
        (a->qi && !a->kidx))
        return msa_error(MSA_EINVAL, "msa_fwd_qkv_post: bad argument");
    qkv_kernel<<<n, 128, 0, st>>>(*a);
    return MSA_CUDA_LAUNCHED("qkv / RoPE");
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
    ss = msa_fwd_block_sum(ss, red);
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

extern "C" int msa_fwd_index_rope(const msa_fwd_index *a, int n, cudaStream_t st) {
    if (n <= 0) return MSA_OK;
    if (!a || !a->y || !a->pos || !a->inv_freq || !a->qn || !a->kn || !a->qi || !a->kidx ||
        a->di <= 0 || a->di % 2 || a->Hkv <= 0 || a->Hkv + 1 > 65535 || a->Bk <= 0)
        return msa_error(MSA_EINVAL, "msa_fwd_index_rope: bad argument");
    idx_kernel<<<dim3(n, a->Hkv + 1), 128, a->di * 4, st>>>(
        a->y, a->pos, a->inv_freq, a->qn, a->kn, (bf16 *)a->qi, (bf16 *)a->kidx, a->Nqkv, a->off0,
        a->Hkv, a->di, a->Bk, a->eps, a->neox, a->rows);
    return MSA_CUDA_LAUNCHED("index RoPE");
}

/* ---- SwiGLU, bias, argmax ------------------------------------------------------- */

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

extern "C" int msa_fwd_swiglu(const float *y, uint16_t *h, int n, int F, cudaStream_t st) {
    if (n <= 0) return MSA_OK;
    if (!y || !h || F <= 0) return msa_error(MSA_EINVAL, "msa_fwd_swiglu: bad argument");
    swiglu_kernel<<<grid_for((size_t)n * F, 256), 256, 0, st>>>(y, (bf16 *)h, n, F);
    return MSA_CUDA_LAUNCHED("swiglu");
}

/* x (n, D) += b (D) */
__global__ void add_bias_kernel(float *x, const float *b, int n, int D) {
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < (size_t)n * D;
         t += (size_t)gridDim.x * blockDim.x)
        x[t] += b[t % D];
}

extern "C" int msa_fwd_add_bias(float *x, const float *b, int n, int D, cudaStream_t st) {
    if (n <= 0) return MSA_OK;
    if (!x || !b || D <= 0) return msa_error(MSA_EINVAL, "msa_fwd_add_bias: bad argument");
    add_bias_kernel<<<grid_for((size_t)n * D, 256), 256, 0, st>>>(x, b, n, D);
    return MSA_CUDA_LAUNCHED("bias");
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

extern "C" int msa_fwd_argmax(const float *logits, int rows, int V, int32_t *out, cudaStream_t st) {
    if (rows <= 0) return MSA_OK;
    if (!logits || !out || V <= 0) return msa_error(MSA_EINVAL, "msa_fwd_argmax: bad argument");
    argmax_kernel<<<rows, 1024, 0, st>>>(logits, V, out);
    return MSA_CUDA_LAUNCHED("argmax");
}

/* ---- generic attention (any head dim up to MSA_FWD_GENERIC_MAX_D) ----------------- */

#define GEN_MAX_D MSA_FWD_GENERIC_MAX_D

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

extern "C" int msa_fwd_generic_attention(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                                         const int32_t *pos, const int32_t *sel, uint16_t *out,
                                         int n, int Hq, int Hkv, int d, int Bk, int top_k,
                                         float scale, const int32_t *table, cudaStream_t st) {
    if (n <= 0) return MSA_OK;
    if (!q || !k || !v || !pos || !out || Hkv <= 0 || Hq <= 0 || Hq % Hkv || d <= 0 || Bk <= 0 ||
        (sel && top_k <= 0))
        return msa_error(MSA_EINVAL, "msa_fwd_generic_attention: bad argument");
    if (d > GEN_MAX_D)
        return msa_error(MSA_EUNSUPPORTED, "msa_fwd_generic_attention: head dim %d (at most %d)", d,
                         GEN_MAX_D);
    generic_attn_kernel<<<(n * Hq + 63) / 64, 64, 0, st>>>(
        (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, pos, sel, (bf16 *)out, n, Hq, Hkv, d, Bk,
        top_k, scale, table);
    return MSA_CUDA_LAUNCHED("generic attention");
}
