/*
 * index_score.cuh: MSA's index branch on the GPU, token scores fused with the
 * block max-pool: the kernels, shared by index_score.cu (the library's
 * launchers) and kernels/lab/index_score_lab.cu (v4's prefill scan, kept
 * for comparison). For every query row i, group r and logical block b:
 *
 *   S[i][r][b] = max over visible j in block b of (q_idx[i][r] . k_idx[j]) / sqrt(d_idx)
 *
 * with -inf where no token of the block is visible. Token scores never reach
 * device memory: the CTA that owns block b reduces them in shared memory and
 * writes one float per (row, group).
 *
 * This is the part of a decode step that grows with the context: every index
 * key is read once per step (at N = 1M, d_idx = 128, bf16: 256 MB per layer),
 * so the kernel is designed around that read:
 *
 *   - one CTA per (sequence, logical block, index key head); it streams the
 *     key block [Bk][d_idx] into shared memory with 16-byte cp.async (all of
 *     it in flight at once, 32 KB for Bk = d_idx = 128), so each key byte
 *     comes from HBM exactly once per step;
 *   - every index query that uses this key head is scored against the block
 *     from shared memory: with the shared key head (idx_key_heads = 1, MSA)
 *     that is all rows x all Hkv groups of the sequence, so one pass serves
 *     every group and every row of a prefill chunk; with per-group keys it is
 *     the rows of that one group;
 *   - the dot products run on the tensor cores (wmma 16x16x16, bf16/fp16 in,
 *     fp32 accumulate): M = 16 query vectors per warp, N = 16 tokens, K =
 *     d_idx. In decode M is mostly padding, which costs nothing because the
 *     kernel is bandwidth-bound; in prefill (2K rows x 8 groups per block)
 *     it is what keeps the scan off the FP32 pipes.
 *
 * Version history (measured on the device, see docs/bench-kernels.md):
 *   v1: cp.async key tile + wmma, each warp its own tiles of 16 query
 *      vectors over all Bk tokens (decode: one warp busy). 1M tokens, B=1:
 *      67% of the copy bandwidth (event-timed).
 *   v2: decode (< 4 tiles) splits the tokens over the warps, maxima merged
 *      with shared atomics: 77% at 1M B=1, 45% at 128K B=1, 71-86% with
 *      B=8 (graph-timed). Prefill (2K rows x 8 groups): 6.3 ms, about
 *      90 TFLOP/s; the key fragments were reloaded from shared memory for
 *      every 16 query vectors.
 *   v3 (this file): always split by tokens: each warp's key fragments live
 *      in registers for the whole CTA, query chunks of 32 vectors are
 *      shared by the warps; 48.5 KB of shared memory, so 4 CTAs per SM
 *      (v2: 57 KB, 3).
 *   v4 (this file): prefill query chunks of 64 vectors, double-buffered with
 *      cp.async (the next chunk loads while this one is scored), and tiles
 *      that see the whole block max-pool straight from the accumulator
 *      registers (no store to shared); decode keeps v3's chunk of 32 and
 *      one buffer. H100, 2048 rows at 128K: 32/8/128 4.73 -> 4.12 ms,
 *      64/4/128 2.34 -> 2.07 ms.
 *   v5 (this file, index_scores5_kernel, prefill only): mma.sync with two
 *      16-vector tiles per warp against its 32 register-resident key tokens,
 *      visibility by warp reductions, masking on the accumulators. H100,
 *      same shapes, same run: 4.03 -> 2.85 ms, 2.03 -> 1.52 ms.
 *      The kernel lab (msa_cuda_lab_*, tuning field index_version = 4)
 *      keeps v4 for prefill.
 */
#pragma once

#include <mma.h>

#include "kernels/cuda_common.cuh"

using namespace nvcuda;

#define IDX_WARPS 4
#define IDX_QV 64    /* most query vectors per shared-memory chunk */
#define IDX_SC_LD 20 /* fp32 scratch row stride (wmma needs a multiple of 4) */

template <int DI>
static size_t index_smem_bytes(int Bk, int qv, int nbuf) {
    return (size_t)Bk * (DI + 8) * 2              /* Ks [Bk][DI+8]             */
         + (size_t)nbuf * qv * (DI + 8) * 2       /* Qs [nbuf][qv][DI+8]       */
         + (size_t)IDX_WARPS * 16 * IDX_SC_LD * 4; /* Sc [warps][16][20] f32    */
}

template <int DI>
static size_t index5_smem_bytes(int Bk) { return (size_t)(Bk + 2 * IDX_QV) * (DI + 8) * 2; }

/* Query chunk and buffering for a launch, from the average vectors per
 * sequence and key head: decode (at most 32) chunks of 32, one buffer, as in
 * v3 (the shared memory of 4 CTAs per SM); prefill chunks of 64,
 * double-buffered. */
static void index_chunking(const msa_cuda_shape &sh, const msa_paged_kv *kv, const msa_attn_batch *bt,
                           int *qv, int *nbuf) {
    const long avg = ((long)bt->n_q + kv->n_seqs - 1) / kv->n_seqs * (sh.Hkv / sh.idx_heads);
    *qv = avg <= 32 ? 32 : IDX_QV;
    *nbuf = avg <= *qv ? 1 : 2;
}

/* Order-preserving float <-> uint32 (larger float, larger key; never 0 for a
 * finite value). */
__device__ __forceinline__ uint32_t idx_order_key(float f) {
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float idx_order_val(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

/* grid (max_blocks, n_seqs * idx_heads), block 128 threads.
 *
 * Warp w owns the 16-token column tiles j = w and w + 4 of the key block and
 * keeps their wmma fragments in registers for the whole CTA; the query
 * vectors stream through shared memory in chunks of IDX_QV, shared by all
 * warps; each warp max-pools its own columns and the four partial maxima of
 * a vector meet in shared memory (atomicMax on order-preserving keys). */
template <typename T, int DI>
__global__ void __launch_bounds__(IDX_WARPS * 32, 3) /* 3 CTAs per SM in prefill */
index_scores_kernel(const T *__restrict__ kidx,          /* [slots][idx_heads][Bk][DI] */
                    const int32_t *__restrict__ idx_indptr, const int32_t *__restrict__ idx_table,
                    const int32_t *__restrict__ seq_len, const int32_t *__restrict__ q_indptr,
                    const int32_t *__restrict__ q_pos,
                    const T *__restrict__ q_idx,         /* [n_q][Hkv][DI] */
                    float *__restrict__ scores,          /* [n_q][Hkv][max_blocks] */
                    int Hkv, int idx_heads, int Bk, int max_blocks, float scale, int qv, int nbuf) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int LD = DI + 8;
    T *Ks = (T *)smem;                                  /* [Bk][LD]          */
    T *Qs = Ks + (size_t)Bk * LD;                       /* [nbuf][qv][LD]    */
    __shared__ uint32_t red[2][IDX_QV];                 /* max keys, 0 = none */

    const int b = blockIdx.x;
    const int s = blockIdx.y / idx_heads, kh = blockIdx.y % idx_heads;
    const int gpk = Hkv / idx_heads; /* groups served by this key head */
    const int q0 = q_indptr[s], nrows = q_indptr[s + 1] - q0;
    const int nb = msa_seq_blocks(idx_indptr, seq_len, s, Bk);
    if (nrows <= 0 || b >= nb) return; /* top-k never reads past nb */
    const int nvec = nrows * gpk;
    const int slen = seq_len[s];
    const int slot = idx_table[idx_indptr[s] + b];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int nchunks = (nvec + qv - 1) / qv;
    float *Sc = (float *)(Qs + (size_t)nbuf * qv * LD); /* [warps][16][20] */

    if (slot < 0) { /* unmapped index block: no visible token */
        for (int v = tid; v < nvec; v += blockDim.x) {
            int row = q0 + v / gpk, grp = kh * gpk + v % gpk;
            scores[((size_t)row * Hkv + grp) * max_blocks + b] = -INFINITY;
        }
        return;
    }

    /* Key block -> shared, 16 bytes per copy, everything in flight. */
    const T *kb = kidx + ((size_t)slot * idx_heads + kh) * Bk * DI;
    const int CPR = DI / 8; /* 16-byte chunks per row */
    for (int i = tid; i < Bk * CPR; i += blockDim.x) {
        int r = i / CPR, c = i % CPR;
        msa_cp_async16(Ks + r * LD + c * 8, kb + (size_t)r * DI + c * 8);
    }
    msa_cp_async_commit();
    /* query chunk c -> buffer c & 1 (cp.async; zeros past nvec) */
    auto load_chunk = [&](int c) {
        T *Qb = Qs + (size_t)(c & (nbuf - 1)) * qv * LD;
        const int c0 = c * qv;
        for (int i = tid; i < qv * CPR; i += blockDim.x) {
            int rr = i / CPR, cc = i % CPR, v = c0 + rr;
            if (v < nvec) {
                int row = q0 + v / gpk, gg = kh * gpk + v % gpk;
                msa_cp_async16(Qb + rr * LD + cc * 8, q_idx + ((size_t)row * Hkv + gg) * DI + cc * 8);
            } else {
                *(uint4 *)(Qb + rr * LD + cc * 8) = make_uint4(0, 0, 0, 0);
            }
        }
        msa_cp_async_commit();
    };
    load_chunk(0);
    for (int i = tid; i < 2 * IDX_QV; i += blockDim.x) red[i / IDX_QV][i % IDX_QV] = 0;
    msa_cp_async_wait<0>();
    __syncthreads();

    /* this warp's key fragments: column tiles j = warp + 4 * jj */
    const int nj = Bk / 16;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kf[2][DI / 16];
#pragma unroll
    for (int jj = 0; jj < 2; jj++) {
        const int j = warp + IDX_WARPS * jj;
        if (j < nj) {
#pragma unroll
            for (int kk = 0; kk < DI / 16; kk++) wmma::load_matrix_sync(kf[jj][kk], Ks + j * 16 * LD + kk * 16, LD);
        }
    }

    float *Sw = Sc + warp * 16 * IDX_SC_LD;
    const int blk0 = b * Bk;
    const int r = lane & 15, h = lane >> 4;
    for (int ci = 0; ci < nchunks; ci++) {
        const int c0 = ci * qv;
        if (nbuf == 2 && ci + 1 < nchunks) load_chunk(ci + 1); /* in flight during this chunk */
        const T *Qb = Qs + (size_t)(ci & (nbuf - 1)) * qv * LD;
        uint32_t *rd = red[ci & 1];
        for (int t = 0; t < qv / 16 && c0 + t * 16 < nvec; t++) {
            const int v = c0 + t * 16 + r;
            const int lim = v < nvec ? msa_row_limit(q_pos[q0 + v / gpk], slen) : -1;
            int tile_lim = lim, tile_min = lim;
            for (int o = 16; o; o >>= 1) {
                tile_lim = max(tile_lim, __shfl_xor_sync(0xffffffffu, tile_lim, o));
                tile_min = min(tile_min, __shfl_xor_sync(0xffffffffu, tile_min, o));
            }
            if (tile_lim < blk0) continue; /* nobody in this tile sees the block */
            /* every token of the block visible to all 16 vectors: pool straight
             * from the accumulators (sm_80+ layout: x[2e + {0,1}] at row
             * lane/4 + 8 (e & 1), columns 2 (lane % 4) + 8 (e >> 1) + {0,1}) */
            const bool full = tile_min >= blk0 + Bk - 1;
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[DI / 16];
#pragma unroll
            for (int kk = 0; kk < DI / 16; kk++) wmma::load_matrix_sync(a[kk], Qb + t * 16 * LD + kk * 16, LD);
            float best = -INFINITY, best_hi = -INFINITY;
#pragma unroll
            for (int jj = 0; jj < 2; jj++) {
                const int j = warp + IDX_WARPS * jj;
                if (j >= nj) break;
                wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
                wmma::fill_fragment(acc, 0.0f);
#pragma unroll
                for (int kk = 0; kk < DI / 16; kk++) wmma::mma_sync(acc, a[kk], kf[jj][kk], acc);
                if (full) {
                    best = fmaxf(best, fmaxf(fmaxf(acc.x[0], acc.x[1]), fmaxf(acc.x[4], acc.x[5])));
                    best_hi = fmaxf(best_hi, fmaxf(fmaxf(acc.x[2], acc.x[3]), fmaxf(acc.x[6], acc.x[7])));
                    continue;
                }
                wmma::store_matrix_sync(Sw, acc, IDX_SC_LD, wmma::mem_row_major);
                __syncwarp();
                const int p0 = blk0 + j * 16 + h * 8;
#pragma unroll
                for (int c = 0; c < 8; c++)
                    if (p0 + c <= lim) best = fmaxf(best, Sw[r * IDX_SC_LD + h * 8 + c]);
                __syncwarp();
            }
            if (full) {
                for (int o = 1; o < 4; o <<= 1) {
                    best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, o));
                    best_hi = fmaxf(best_hi, __shfl_xor_sync(0xffffffffu, best_hi, o));
                }
                if ((lane & 3) == 0) {
                    atomicMax(&rd[t * 16 + (lane >> 2)], idx_order_key(best));
                    atomicMax(&rd[t * 16 + (lane >> 2) + 8], idx_order_key(best_hi));
                }
            } else {
                best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, 16));
                if (lane < 16 && best != -INFINITY) atomicMax(&rd[t * 16 + lane], idx_order_key(best));
            }
        }
        msa_cp_async_wait<0>();
        __syncthreads(); /* maxima of chunk ci complete; chunk ci + 1 landed */
        for (int i = tid; i < qv && c0 + i < nvec; i += blockDim.x) {
            const int v = c0 + i;
            const uint32_t u = rd[i];
            scores[((size_t)(q0 + v / gpk) * Hkv + kh * gpk + v % gpk) * max_blocks + b] =
                u ? idx_order_val(u) * scale : -INFINITY;
            rd[i] = 0;
        }
        if (nbuf == 1 && ci + 1 < nchunks) { /* one buffer: refill it now that chunk ci is done */
            load_chunk(ci + 1);
            msa_cp_async_wait<0>();
            __syncthreads();
        }
        /* rd is used again by chunk ci + 2, after the next barrier; buffer
         * ci & 1 is refilled by chunk ci + 2's load, issued after it too */
    }
}

/* ---- v5: prefill scan with mma.sync ----------------------------------------------
 * Same CTA (one key block, 4 warps, the warp's 32 tokens as B fragments in
 * registers, query chunks of 64 double-buffered), but each warp scores two
 * 16-vector tiles at once with mma.sync m16n8k16 (8 independent accumulator
 * chains instead of 4, each A fragment feeding 4 n-tiles), and the pooling
 * never leaves registers: a tile's visibility is two warp reductions
 * (__reduce_min/max_sync), a partly visible block is masked element by
 * element on the accumulators (no scratch in shared memory). */
__device__ __forceinline__ void idx_ldsm_x4(uint32_t (&r)[4], const void *p) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
template <typename T> __device__ __forceinline__ void idx_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void idx_mma<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void idx_mma<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* grid (max_blocks, n_seqs * idx_heads), block 128 threads; qv = IDX_QV, two buffers */
template <typename T, int DI>
__global__ void __launch_bounds__(IDX_WARPS * 32, 3)
index_scores5_kernel(const T *__restrict__ kidx, const int32_t *__restrict__ idx_indptr,
                     const int32_t *__restrict__ idx_table, const int32_t *__restrict__ seq_len,
                     const int32_t *__restrict__ q_indptr, const int32_t *__restrict__ q_pos,
                     const T *__restrict__ q_idx, float *__restrict__ scores,
                     int Hkv, int idx_heads, int Bk, int max_blocks, float scale) {
    extern __shared__ __align__(16) unsigned char smem[];
    constexpr int LD = DI + 8, qv = IDX_QV;
    T *Ks = (T *)smem;            /* [Bk][LD]     */
    T *Qs = Ks + (size_t)Bk * LD; /* [2][qv][LD]  */
    __shared__ uint32_t red[2][IDX_QV];

    const int b = blockIdx.x;
    const int s = blockIdx.y / idx_heads, kh = blockIdx.y % idx_heads;
    const int gpk = Hkv / idx_heads;
    const int q0 = q_indptr[s], nrows = q_indptr[s + 1] - q0;
    const int nb = msa_seq_blocks(idx_indptr, seq_len, s, Bk);
    if (nrows <= 0 || b >= nb) return;
    const int nvec = nrows * gpk;
    const int slen = seq_len[s];
    const int slot = idx_table[idx_indptr[s] + b];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, tq = lane & 3;
    const int nchunks = (nvec + qv - 1) / qv;
    if (slot < 0) {
        for (int v = tid; v < nvec; v += blockDim.x) {
            int row = q0 + v / gpk, grp = kh * gpk + v % gpk;
            scores[((size_t)row * Hkv + grp) * max_blocks + b] = -INFINITY;
        }
        return;
    }
    const T *kb = kidx + ((size_t)slot * idx_heads + kh) * Bk * DI;
    constexpr int CPR = DI / 8;
    for (int i = tid; i < Bk * CPR; i += blockDim.x) {
        int r = i / CPR, c = i % CPR;
        msa_cp_async16(Ks + r * LD + c * 8, kb + (size_t)r * DI + c * 8);
    }
    msa_cp_async_commit();
    auto load_chunk = [&](int c) {
        T *Qb = Qs + (size_t)(c & 1) * qv * LD;
        const int c0 = c * qv;
        for (int i = tid; i < qv * CPR; i += blockDim.x) {
            int rr = i / CPR, cc = i % CPR, v = c0 + rr;
            if (v < nvec) {
                int row = q0 + v / gpk, gg = kh * gpk + v % gpk;
                msa_cp_async16(Qb + rr * LD + cc * 8, q_idx + ((size_t)row * Hkv + gg) * DI + cc * 8);
            } else {
                *(uint4 *)(Qb + rr * LD + cc * 8) = make_uint4(0, 0, 0, 0);
            }
        }
        msa_cp_async_commit();
    };
    load_chunk(0);
    for (int i = tid; i < 2 * IDX_QV; i += blockDim.x) red[i / IDX_QV][i % IDX_QV] = 0;
    msa_cp_async_wait<0>();
    __syncthreads();

    /* key fragments of column tiles j = warp + 4 jj: [jj][kk] = {n-tile 0 b0 b1, n-tile 1 b0 b1} */
    const int nj = Bk / 16;
    uint32_t kf[2][DI / 16][4];
#pragma unroll
    for (int jj = 0; jj < 2; jj++) {
        const int j = warp + IDX_WARPS * jj;
#pragma unroll
        for (int kk = 0; kk < DI / 16; kk++) {
            if (j < nj) idx_ldsm_x4(kf[jj][kk], Ks + (j * 16 + (lane >> 4) * 8 + (lane & 7)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
            else kf[jj][kk][0] = kf[jj][kk][1] = kf[jj][kk][2] = kf[jj][kk][3] = 0;
        }
    }
    const int blk0 = b * Bk;
    for (int ci = 0; ci < nchunks; ci++) {
        const int c0 = ci * qv;
        if (ci + 1 < nchunks) load_chunk(ci + 1);
        const T *Qb = Qs + (size_t)(ci & 1) * qv * LD;
        uint32_t *rd = red[ci & 1];
        for (int t2 = 0; t2 < qv / 32 && c0 + t2 * 32 < nvec; t2++) {
            const int v = c0 + t2 * 32 + lane; /* lane's vector, for the limits */
            const int lim = v < nvec ? msa_row_limit(q_pos[q0 + v / gpk], slen) : -1;
            const int hi = __reduce_max_sync(0xffffffffu, lim);
            if (hi < blk0) continue; /* nobody in these 32 vectors sees the block */
            const bool full = __reduce_min_sync(0xffffffffu, lim) >= blk0 + Bk - 1;
            float acc[2][2][2][4]; /* [tile][jj][n-tile][4] */
#pragma unroll
            for (int t = 0; t < 2; t++)
#pragma unroll
                for (int jj = 0; jj < 2; jj++)
#pragma unroll
                    for (int h = 0; h < 2; h++) acc[t][jj][h][0] = acc[t][jj][h][1] = acc[t][jj][h][2] = acc[t][jj][h][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < DI / 16; kk++) {
                uint32_t af[2][4];
#pragma unroll
                for (int t = 0; t < 2; t++)
                    idx_ldsm_x4(af[t], Qb + (t2 * 32 + t * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
                for (int t = 0; t < 2; t++)
#pragma unroll
                    for (int jj = 0; jj < 2; jj++) {
                        idx_mma<T>(acc[t][jj][0], af[t], kf[jj][kk][0], kf[jj][kk][1]);
                        idx_mma<T>(acc[t][jj][1], af[t], kf[jj][kk][2], kf[jj][kk][3]);
                    }
            }
            /* pool: thread rows g, g + 8 of each tile; columns 2 tq + {0, 1} of each n-tile */
#pragma unroll
            for (int t = 0; t < 2; t++) {
                const int la = __shfl_sync(0xffffffffu, lim, t * 16 + g);
                const int lb = __shfl_sync(0xffffffffu, lim, t * 16 + g + 8);
                float ba = -INFINITY, bb = -INFINITY;
#pragma unroll
                for (int jj = 0; jj < 2; jj++) {
                    const int j = warp + IDX_WARPS * jj;
                    if (j >= nj) break;
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const int p = blk0 + j * 16 + h * 8 + 2 * tq;
                        if (full) {
                            ba = fmaxf(ba, fmaxf(acc[t][jj][h][0], acc[t][jj][h][1]));
                            bb = fmaxf(bb, fmaxf(acc[t][jj][h][2], acc[t][jj][h][3]));
                        } else {
                            if (p <= la) ba = fmaxf(ba, acc[t][jj][h][0]);
                            if (p + 1 <= la) ba = fmaxf(ba, acc[t][jj][h][1]);
                            if (p <= lb) bb = fmaxf(bb, acc[t][jj][h][2]);
                            if (p + 1 <= lb) bb = fmaxf(bb, acc[t][jj][h][3]);
                        }
                    }
                }
                ba = fmaxf(ba, __shfl_xor_sync(0xffffffffu, ba, 1));
                ba = fmaxf(ba, __shfl_xor_sync(0xffffffffu, ba, 2));
                bb = fmaxf(bb, __shfl_xor_sync(0xffffffffu, bb, 1));
                bb = fmaxf(bb, __shfl_xor_sync(0xffffffffu, bb, 2));
                if (tq == 0) {
                    if (ba != -INFINITY) atomicMax(&rd[t2 * 32 + t * 16 + g], idx_order_key(ba));
                    if (bb != -INFINITY) atomicMax(&rd[t2 * 32 + t * 16 + g + 8], idx_order_key(bb));
                }
            }
        }
        msa_cp_async_wait<0>();
        __syncthreads();
        for (int i = tid; i < qv && c0 + i < nvec; i += blockDim.x) {
            const int v = c0 + i;
            const uint32_t u = rd[i];
            scores[((size_t)(q0 + v / gpk) * Hkv + kh * gpk + v % gpk) * max_blocks + b] =
                u ? idx_order_val(u) * scale : -INFINITY;
            rd[i] = 0;
        }
    }
}
