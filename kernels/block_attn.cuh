/*
 * block_attn.cuh: exact softmax attention over a list of KV blocks, on the
 * GPU: the kernels and their launch helpers, shared by block_attn.cu (the
 * versions the library runs) and kernels/lab/block_attn_lab.cu (the older
 * sparse prefill versions, kept for comparison). One kernel serves both halves of the comparison:
 *
 *   sparse (MSA): the list of a query tile is the union of its rows'
 *                 selections; a (vector, block) pair counts only when the
 *                 block is in that row's selection;
 *   dense:        the list is every block up to the tile's last local block
 *                 (the baseline MSA is timed against).
 *
 * In both, token j of a listed block is visible to row i when j <= q_pos[i]
 * (in the sparse case only the local block can be partly visible).
 *
 * Work decomposition. The G query heads of a group share K/V, so the M
 * dimension of the matrix products is "query vectors" = (row, head of the
 * group) pairs of one sequence and one group, in row-major order: a decode
 * row gives G vectors, a prefill chunk rows*G. A CTA takes a tile of
 * 16 * NW vectors (NW = 1 warp for decode, 4 for prefill, each warp owning
 * 16 vectors) and walks its block list:
 *
 *   K, V block [Bk][d] -> shared (cp.async, 16 B, K and V in separate groups
 *                          so that scores start while V is in flight)
 *   S = Q K^T            wmma 16x16x16, bf16/fp16 in, fp32 out -> shared
 *   online softmax       per vector, exp2 with the log2(e) folded into the
 *                          scale; P -> shared in the storage type
 *   O = O * alpha + P V  O kept in shared fp32 (wmma's accumulator layout is
 *                          opaque, so the per-row rescale is done in shared)
 *
 * Split-K: when there are too few tiles to fill the GPU (decode), the block
 * list of a tile is cut into n_split contiguous pieces, one CTA each, which
 * write (m, l, acc) partials; combine_kernel merges them into out and lse.
 *
 * Shapes: q [n_q][Hq][d], K/V pools [slots][Hkv][Bk][d], out [n_q][Hq][d],
 * lse [n_q][Hq] (natural log), selected [n_q][Hkv][top_k],
 * partials [n_q][Hq][n_split][d + 2] fp32 (m in log2 units, l, acc[d]).
 *
 * Version history (timings in docs/bench-kernels.md):
 *   v1: single-buffered K/V, wmma, O in shared memory, one warp per 16
 *      vectors. Dense decode at 1M (32/8/128, B=1): 5.66 ms, 0.76 TB/s.
 *   v2: decode splits each block's tokens over 2 warps (NWT) with a merge
 *      at the end of the tile: 3.93 ms (1.1 TB/s); SDPA flash: 1.41 ms.
 *   v3 (this file): per-warp participation mask: a warp skips S, softmax
 *      and PV for a block none of its vectors take part in, and the softmax
 *      skips single rows that do not (decode padding, sparse prefill rows
 *      outside their selection, causal future).
 *   v4 (this file): when the grid has no more CTAs than SMs (sparse decode
 *      of one or two rows), 4 warps split each block's tokens instead of 2.
 *   v5 (this file): sparse prefill as gather: tiles of 16 vectors (one row
 *      at G = 16, four rows at G = 4), so a tile's union is ~16 (G = 16) or
 *      ~64 (G = 4) blocks and the K/V bytes are those of the selection, not
 *      of a 64-vector tile's ~240-block union; 2 token warps; each KV block
 *      staged in halves (SUB = 2, ~65 KB of shared memory, 3 CTAs per SM).
 *      H100, 2048 rows at 128K: 32/8/128 23.1 -> 9.7 ms, 64/4/128 18.2 ->
 *      8.5 ms; decode unchanged.
 *   v6 (this file, block_attn6_kernel): sparse prefill with v5's tiles and
 *      lists but flash-attention-2 math: mma.sync m16n8k16, Q/S/P/O and the
 *      softmax state in registers, K/V in 64-token stages double-buffered
 *      with cp.async (one barrier per stage), 4 warps over a stage's column
 *      tiles, participation masks built once per tile. H100, 2048 rows at
 *      128K: 32/8/128 9.76 -> 3.27 ms, 64/4/128 8.40 -> 1.82 ms (same run);
 *      decode unchanged. The kernel lab (msa_cuda_lab_*, tuning field
 *      attn_version) keeps 7 = v6 with 32-token stages, 3 in flight, 2 warps
 *      (3.19 / 1.82 ms), 5 = v5 and 4 = v4.
 */
#pragma once

#include <cub/block/block_scan.cuh>
#include <string.h>
#include <mma.h>

#include "kernels/cuda_common.cuh"

using namespace nvcuda;

struct attn_smem_layout {
    size_t q, k, v, s, p, o, m, l, lim, sel, bits, list, total;
};

/* Byte offsets of the shared-memory carve-up of one CTA. */
static attn_smem_layout attn_layout(int D, int NW, int NWT, int Bk, int top_k, int max_blocks, bool sparse) {
    const int V = 16 * NW;
    attn_smem_layout L;
    size_t off = 0;
    auto take = [&](size_t bytes) { size_t o = off; off += (bytes + 15) & ~(size_t)15; return o; };
    L.q = take((size_t)V * (D + 8) * 2);
    L.k = take((size_t)Bk * (D + 8) * 2);
    L.v = take((size_t)Bk * (D + 8) * 2);
    L.s = take((size_t)V * (Bk + 4) * 4);
    L.p = take((size_t)V * (Bk + 8) * 2);
    L.o = take((size_t)NWT * V * (D + 4) * 4);
    L.m = take((size_t)NWT * V * 4);
    L.l = take((size_t)NWT * V * 4);
    L.lim = take((size_t)V * 4);
    size_t nsel = sparse ? (size_t)(V + 1) * top_k : 0;
    L.sel = take(nsel * 4);
    L.bits = take(sparse ? (size_t)((max_blocks + 31) / 32) * 4 : 0);
    size_t nl = sparse ? (nsel < (size_t)max_blocks ? nsel : (size_t)max_blocks) : 0;
    L.list = take(nl * 4);
    L.total = off;
    return L;
}

struct attn_args {
    const void *q, *k, *v;
    const int32_t *kv_indptr, *kv_table, *seq_len, *q_indptr, *q_pos, *selected;
    void *out;
    float *lse, *partials;
    int n_seqs, Hq, Hkv, G, Bk, top_k, max_blocks, n_split, tiles_x;
    float scale_log2; /* softmax scale * log2(e) */
    attn_smem_layout L;
};

/* grid (tiles_x * n_split, n_seqs * Hkv), block NW * NWT * 32 threads:
 * NW warps along the vectors (16 each) times NWT warps along the tokens of
 * a block (warp wt takes the 16-token column tiles j = wt, wt + NWT, ...),
 * each with its own running (m, l, O), merged at the end of the tile. */
template <typename T, int D, int NW, int NWT, bool SPARSE, int SUB>
__global__ void __launch_bounds__(NW * NWT * 32) block_attn_kernel(const attn_args a) {
    extern __shared__ __align__(16) unsigned char smem[];
    constexpr int V = 16 * NW, LD = D + 8, OLD = D + 4;
    /* Bk here is the unit the CTA stages in shared memory: the KV block, or
     * 1/SUB of it (SUB > 1: smaller footprint, more CTAs per SM) */
    const int Bk = a.Bk / SUB, SLD = Bk + 4, PLD = Bk + 8;
    T *Qs = (T *)(smem + a.L.q), *Ks = (T *)(smem + a.L.k), *Vs = (T *)(smem + a.L.v);
    float *Ss = (float *)(smem + a.L.s), *Os = (float *)(smem + a.L.o);
    T *Ps = (T *)(smem + a.L.p);
    float *m_s = (float *)(smem + a.L.m), *l_s = (float *)(smem + a.L.l);
    int *lim_s = (int *)(smem + a.L.lim), *sel_s = (int *)(smem + a.L.sel);
    uint32_t *bits = (uint32_t *)(smem + a.L.bits);
    int *list = (int *)(smem + a.L.list);
    typedef cub::BlockScan<int, NW * NWT * 32> Scan;
    __shared__ typename Scan::TempStorage scan_tmp;
    __shared__ int s_nlist;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int wv = warp / NWT, wt = warp % NWT; /* vector warp, token warp */
    const int s = blockIdx.y / a.Hkv, r = blockIdx.y % a.Hkv;
    const int sp = blockIdx.x % a.n_split;
    const int G = a.G, Bkk = a.Bk;
    const int q0 = a.q_indptr[s], nrows = a.q_indptr[s + 1] - q0;
    if (nrows <= 0) return;
    const int nvec = nrows * G, ntiles = (nvec + V - 1) / V;
    const int slen = a.seq_len[s];
    const int nb = msa_seq_blocks(a.kv_indptr, a.seq_len, s, Bkk);
    const int32_t *table = a.kv_table + a.kv_indptr[s];
    const T *kpool = (const T *)a.k, *vpool = (const T *)a.v;

    for (int t = blockIdx.x / a.n_split; t < ntiles; t += a.tiles_x) {
        const int v0 = t * V;
        const int row_lo = q0 + v0 / G;
        const int row_hi = q0 + min(nvec - 1, v0 + V - 1) / G;
        /* Q tile, per-vector limits, running stats, O = 0 */
        for (int i = tid; i < V * (D / 8); i += blockDim.x) {
            int vi = i / (D / 8), c = i % (D / 8), v = v0 + vi;
            uint4 val = make_uint4(0, 0, 0, 0);
            if (v < nvec) {
                int row = q0 + v / G, head = r * G + v % G;
                val = *(const uint4 *)((const T *)a.q + ((size_t)row * a.Hq + head) * D + c * 8);
            }
            *(uint4 *)(Qs + vi * LD + c * 8) = val;
        }
        for (int i = tid; i < NWT * V * OLD; i += blockDim.x) Os[i] = 0.0f;
        int tile_lim = -1;
        if (tid < V) {
            int v = v0 + tid, lim = -1;
            if (v < nvec) lim = msa_row_limit(a.q_pos[q0 + v / G], slen);
            if (lim >= nb * Bkk) lim = -1; /* table shorter than the sequence: treat as invalid */
            lim_s[tid] = lim;
        }
        for (int i = tid; i < NWT * V; i += blockDim.x) { m_s[i] = -INFINITY; l_s[i] = 0.0f; }
        /* The block list. */
        int nlist;
        if (SPARSE) {
            const int nrt = row_hi - row_lo + 1, k = a.top_k;
            const int nwords = (a.max_blocks + 31) / 32;
            for (int i = tid; i < nwords; i += blockDim.x) bits[i] = 0;
            __syncthreads();
            for (int i = tid; i < nrt * k; i += blockDim.x) {
                int bsel = a.selected[((size_t)(row_lo + i / k) * a.Hkv + r) * k + i % k];
                sel_s[i] = bsel;
                if (bsel >= 0 && bsel < nb && bsel < a.max_blocks) atomicOr(&bits[bsel >> 5], 1u << (bsel & 31));
            }
            __syncthreads();
            const int per = (nwords + blockDim.x - 1) / blockDim.x;
            const int w0 = tid * per, w1 = min(nwords, w0 + per);
            int cnt = 0;
            for (int w = w0; w < w1; w++) cnt += __popc(bits[w]);
            int off;
            Scan(scan_tmp).ExclusiveSum(cnt, off);
            for (int w = w0; w < w1; w++) {
                uint32_t x = bits[w];
                while (x) { int bb = __ffs(x) - 1; x &= x - 1; list[off++] = w * 32 + bb; }
            }
            if (tid == blockDim.x - 1) s_nlist = off;
            __syncthreads();
            nlist = s_nlist;
        } else {
            __syncthreads();
            for (int i = 0; i < V; i++) tile_lim = max(tile_lim, lim_s[i]);
            nlist = tile_lim < 0 ? 0 : tile_lim / Bkk + 1;
        }
        const int chunk = (nlist + a.n_split - 1) / a.n_split;
        const int li0 = sp * chunk, li1 = min(nlist, li0 + chunk);

        /* Q fragments stay in registers for the whole block walk. */
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qa[D / 16];
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) wmma::load_matrix_sync(qa[kk], Qs + wv * 16 * LD + kk * 16, LD);

        for (int lu = li0 * SUB; lu < li1 * SUB; lu++) {
            const int li = lu / SUB, hs = lu % SUB; /* block, its sub-block */
            const int b = SPARSE ? list[li] : li;
            const int slot = b < nb ? table[b] : -1;
            if (slot < 0) continue; /* unmapped block: nothing to attend */
            const size_t base = ((size_t)slot * a.Hkv + r) * Bkk * D + (size_t)hs * Bk * D;
            for (int i = tid; i < Bk * (D / 8); i += blockDim.x) {
                int rr = i / (D / 8), c = i % (D / 8);
                msa_cp_async16(Ks + rr * LD + c * 8, kpool + base + (size_t)rr * D + c * 8);
            }
            msa_cp_async_commit();
            for (int i = tid; i < Bk * (D / 8); i += blockDim.x) {
                int rr = i / (D / 8), c = i % (D / 8);
                msa_cp_async16(Vs + rr * LD + c * 8, vpool + base + (size_t)rr * D + c * 8);
            }
            msa_cp_async_commit();
            msa_cp_async_wait<1>();
            __syncthreads();

            /* Which of this warp's 16 vectors take part in block b: visible
             * (q_pos reaches the block) and, when sparse, in their row's
             * selection. A warp with none skips the block's math entirely
             * (padding vectors of decode, rows of a prefill tile that did not
             * select this block of the union, future blocks of a causal tile). */
            const int p0 = b * Bkk + hs * Bk;
            bool part = false;
            if (lane < 16) {
                const int vi = wv * 16 + lane;
                part = lim_s[vi] >= p0;
                if (SPARSE && part) {
                    const int *rs = sel_s + ((q0 + (v0 + vi) / G) - row_lo) * a.top_k;
                    bool hit = false;
                    for (int j = 0; j < a.top_k; j++) hit |= rs[j] == b;
                    part = hit;
                }
            }
            const unsigned pm = __ballot_sync(0xffffffffu, part);

            /* S = Q K^T for this warp's 16 vectors: [16][Bk] */
            float *Sw = Ss + wv * 16 * SLD;
            for (int j = wt; j < (pm ? Bk / 16 : 0); j += NWT) {
                wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
                wmma::fill_fragment(acc, 0.0f);
#pragma unroll
                for (int kk = 0; kk < D / 16; kk++) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kb;
                    wmma::load_matrix_sync(kb, Ks + j * 16 * LD + kk * 16, LD);
                    wmma::mma_sync(acc, qa[kk], kb, acc);
                }
                wmma::store_matrix_sync(Sw + j * 16, acc, SLD, wmma::mem_row_major);
            }
            __syncwarp();

            /* online softmax, one vector at a time, the whole warp per row */
            T *Pw = Ps + wv * 16 * PLD;
            float *Ow = Os + (wt * V + wv * 16) * OLD;
            const int ncols = (Bk / 16 - wt + NWT - 1) / NWT * 16; /* this warp's columns */
            for (int rr = 0; rr < (pm ? 16 : 0); rr++) {
                const int vi = wv * 16 + rr, v = v0 + vi, si = wt * V + vi;
                if (!((pm >> rr) & 1)) {
                    /* not in this block: P row = 0 (padding vectors' rows are
                     * never read back, so they are left alone) */
                    if (v < nvec)
                        for (int cc = lane; cc < ncols; cc += 32)
                            Pw[rr * PLD + (wt + NWT * (cc >> 4)) * 16 + (cc & 15)] = msa_from_f32<T>(0.0f);
                    continue;
                }
                const int lim = lim_s[vi];
                float mx = -INFINITY;
                for (int cc = lane; cc < ncols; cc += 32) {
                    const int c = (wt + NWT * (cc >> 4)) * 16 + (cc & 15);
                    if (p0 + c <= lim) mx = fmaxf(mx, Sw[rr * SLD + c] * a.scale_log2);
                }
                for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
                const float m_old = m_s[si];
                const float m_new = fmaxf(m_old, mx);
                const float m_use = m_new == -INFINITY ? 0.0f : m_new;
                float sum = 0.0f;
                for (int cc = lane; cc < ncols; cc += 32) {
                    const int c = (wt + NWT * (cc >> 4)) * 16 + (cc & 15);
                    float p = p0 + c <= lim ? exp2f(Sw[rr * SLD + c] * a.scale_log2 - m_use) : 0.0f;
                    sum += p;
                    Pw[rr * PLD + c] = msa_from_f32<T>(p);
                }
                for (int o = 16; o; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
                const float alpha = exp2f(m_old - m_use); /* 0 when m_old = -inf */
                if (alpha != 1.0f)
                    for (int c = lane; c < D; c += 32) Ow[rr * OLD + c] *= alpha;
                __syncwarp();
                if (lane == 0) { m_s[si] = m_new; l_s[si] = l_s[si] * alpha + sum; }
            }
            msa_cp_async_wait<0>();
            __syncthreads();

            /* O += P V: [16][Bk] x [Bk][D] */
#pragma unroll
            for (int jd = 0; jd < (pm ? D / 16 : 0); jd++) {
                wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
                wmma::load_matrix_sync(acc, Ow + jd * 16, OLD, wmma::mem_row_major);
                for (int kk = wt; kk < Bk / 16; kk += NWT) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pa;
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vb;
                    wmma::load_matrix_sync(pa, Pw + kk * 16, PLD);
                    wmma::load_matrix_sync(vb, Vs + kk * 16 * LD + jd * 16, LD);
                    wmma::mma_sync(acc, pa, vb, acc);
                }
                wmma::store_matrix_sync(Ow + jd * 16, acc, OLD, wmma::mem_row_major);
            }
            __syncthreads(); /* K/V/S/P are overwritten by the next block */
        }
        __syncthreads();
        if (NWT > 1) { /* merge the token warps' (m, l, O) into slot 0 */
            for (int i = tid; i < V * D; i += blockDim.x) {
                const int vi = i / D, c = i % D;
                float M = -INFINITY;
#pragma unroll
                for (int w = 0; w < NWT; w++) M = fmaxf(M, m_s[w * V + vi]);
                const float Mu = M == -INFINITY ? 0.0f : M;
                float o = 0.0f;
#pragma unroll
                for (int w = 0; w < NWT; w++) o += Os[(w * V + vi) * OLD + c] * exp2f(m_s[w * V + vi] - Mu);
                Os[vi * OLD + c] = o;
            }
            __syncthreads();
            if (tid < V) {
                float M = -INFINITY, L = 0.0f;
                for (int w = 0; w < NWT; w++) M = fmaxf(M, m_s[w * V + tid]);
                const float Mu = M == -INFINITY ? 0.0f : M;
                for (int w = 0; w < NWT; w++) L += l_s[w * V + tid] * exp2f(m_s[w * V + tid] - Mu);
                m_s[tid] = M;
                l_s[tid] = L;
            }
            __syncthreads();
        }

        /* write out (n_split == 1) or partials: one warp per vector */
        for (int vi = warp; vi < V; vi += NW * NWT) {
            const int v = v0 + vi;
            if (v >= nvec) break;
            const int row = q0 + v / G, head = r * G + v % G;
            const float m = m_s[vi], l = l_s[vi];
            if (a.n_split == 1) {
                const float inv = l > 0.0f ? 1.0f / l : 0.0f;
                T *o = (T *)a.out + ((size_t)row * a.Hq + head) * D;
                for (int c = lane; c < D; c += 32) o[c] = msa_from_f32<T>(Os[vi * OLD + c] * inv);
                if (a.lse && lane == 0)
                    a.lse[(size_t)row * a.Hq + head] = l > 0.0f ? (m + log2f(l)) * MSA_LN2 : -INFINITY;
            } else {
                float *pp = a.partials + (((size_t)row * a.Hq + head) * a.n_split + sp) * (D + 2);
                if (lane == 0) { pp[0] = m; pp[1] = l; }
                for (int c = lane; c < D; c += 32) pp[2 + c] = Os[vi * OLD + c];
            }
        }
        __syncthreads(); /* the next tile reuses shared memory */
    }
}

/* grid (n_q * Hq), block D threads: merges the n_split partials of a head. */
template <typename T, int D>
__global__ void combine_kernel(const float *__restrict__ partials, T *__restrict__ out,
                               float *__restrict__ lse, int n_split) {
    const size_t rh = blockIdx.x;
    const float *pp = partials + rh * n_split * (D + 2);
    float M = -INFINITY;
    for (int i = 0; i < n_split; i++) M = fmaxf(M, pp[i * (D + 2)]);
    const float Mu = M == -INFINITY ? 0.0f : M;
    float L = 0.0f, acc = 0.0f;
    for (int i = 0; i < n_split; i++) {
        const float *q = pp + i * (D + 2);
        const float w = exp2f(q[0] - Mu); /* 0 for an empty split */
        L += q[1] * w;
        acc += q[2 + threadIdx.x] * w;
    }
    out[rh * D + threadIdx.x] = msa_from_f32<T>(L > 0.0f ? acc / L : 0.0f);
    if (lse && threadIdx.x == 0) lse[rh] = L > 0.0f ? (M + log2f(L)) * MSA_LN2 : -INFINITY;
}

template <typename T, int D, int NW, int NWT, bool SPARSE, int SUB = 1>
static int launch_attn(attn_args &a, int n_q, cudaStream_t st) {
    a.L = attn_layout(D, NW, NWT, a.Bk / SUB, a.top_k, a.max_blocks, SPARSE);
    int dev = 0, optin = 0;
    int rc = msa_cuda_check(cudaGetDevice(&dev), "get device");
    if (!rc) rc = msa_cuda_check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "device attribute");
    if (rc) return rc;
    if (a.L.total + 1024 > (size_t)optin)
        return msa_error(MSA_EUNSUPPORTED, "CUDA attention: %zu bytes of shared memory needed (Bk %d, d %d, top_k %d, max_blocks %d), %d available",
                         a.L.total, a.Bk, D, a.top_k, a.max_blocks, optin);
    static size_t optin_cache[MSA_CUDA_MAX_DEVICES];
    rc = msa_cuda_smem_optin((const void *)block_attn_kernel<T, D, NW, NWT, SPARSE, SUB>, a.L.total, optin_cache,
                             "attention: shared memory limit");
    if (rc) return rc;
    dim3 grid((unsigned)(a.tiles_x * a.n_split), (unsigned)(a.n_seqs * a.Hkv));
    block_attn_kernel<T, D, NW, NWT, SPARSE, SUB><<<grid, NW * NWT * 32, a.L.total, st>>>(a);
    rc = MSA_CUDA_LAUNCHED("attention kernel");
    if (rc || a.n_split == 1) return rc;
    combine_kernel<T, D><<<(unsigned)n_q * a.Hq, D, 0, st>>>(a.partials, (T *)a.out, a.lse, a.n_split);
    return MSA_CUDA_LAUNCHED("attention combine kernel");
}

/* ---- v6: sparse prefill with register-resident O ----------------------------------
 * Same tiles and block list as v5 (16 vectors, the union of their rows'
 * selections), but the math is mma.sync m16n8k16 (fp32 accumulate) with
 * everything per vector in registers, as flash-attention 2 does it:
 *
 *   Q [16][D]    A fragments, loaded once per tile with ldmatrix
 *   S = Q K^T    per 16-token column tile, K as B fragments (ldmatrix)
 *   softmax      on the S accumulators; each thread owns rows lane/4 and
 *                lane/4 + 8, the row max meets across the 4 threads of a quad
 *   P            the S accumulators converted to A fragments in registers
 *   O += P V     V as B fragments (ldmatrix.trans), O [16][D] fp32 in
 *                registers (D/8 n-tiles x 4 floats per thread)
 *
 * K/V move in stages of STG tokens (a block is Bk/STG stages), NST stages
 * in flight with cp.async, one barrier per stage. The NWT warps split the
 * 16-token column tiles of a stage; each keeps its own (m, l, O), merged
 * through shared memory once per tile. The participation of a vector in a
 * listed block (its row selected it) is one 16-bit mask per list entry,
 * built once per tile. */
struct attn6_smem { size_t kv, lim, sel, bits, list, pm, total; };

static attn6_smem attn6_layout(int D, int NWT, int STG, int NST, int top_k, int max_blocks) {
    attn6_smem L;
    size_t off = 0;
    auto take = [&](size_t bytes) { size_t o = off; off += (bytes + 15) & ~(size_t)15; return o; };
    /* one area: the Q tile (until its fragments are in registers), then the
     * K/V stages, then the merge of the warps' (m, l, O) */
    size_t kv = (size_t)NST * 2 * STG * (D + 8) * 2;
    const size_t mrg = (size_t)NWT * 16 * (D + 4) * 4 + (size_t)NWT * 16 * 2 * 4;
    const size_t q = (size_t)16 * (D + 8) * 2;
    if (kv < mrg) kv = mrg;
    if (kv < q) kv = q;
    L.kv = take(kv);
    L.lim = take(16 * 4);
    const size_t nsel = (size_t)17 * top_k;
    L.sel = take(nsel * 4);
    L.bits = take((size_t)((max_blocks + 31) / 32) * 4);
    const size_t nl = nsel < (size_t)max_blocks ? nsel : (size_t)max_blocks;
    L.list = take(nl * 4);
    L.pm = take(nl * 4);
    L.total = off;
    return L;
}

struct attn6_args {
    const void *q, *k, *v;
    const int32_t *kv_indptr, *kv_table, *seq_len, *q_indptr, *q_pos, *selected;
    void *out;
    float *lse, *partials;
    int Hq, Hkv, G, Bk, top_k, max_blocks, n_split, tiles_x;
    float scale_log2;
    attn6_smem L;
};

__device__ __forceinline__ void attn_ldsm_x4(uint32_t (&r)[4], const void *p) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void attn_ldsm_x4_t(uint32_t (&r)[4], const void *p) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
/* d += a b, m16n8k16, fp32 accumulate */
template <typename T> __device__ __forceinline__ void attn_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void attn_mma<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void attn_mma<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <typename T> __device__ __forceinline__ uint32_t attn_pack(float lo, float hi);
template <> __device__ __forceinline__ uint32_t attn_pack<__nv_bfloat16>(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}
template <> __device__ __forceinline__ uint32_t attn_pack<__half>(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *(uint32_t *)&v;
}

/* grid (tiles_x * n_split, n_seqs * Hkv), block NWT * 32 threads */
template <typename T, int D, int NWT, int STG, int NST>
__global__ void __launch_bounds__(NWT * 32) block_attn6_kernel(const attn6_args a) {
    extern __shared__ __align__(16) unsigned char smem[];
    constexpr int LD = D + 8, OLD = D + 4, NJ = (STG / 16 + NWT - 1) / NWT, NT = 128;
    constexpr int NTHR = NWT * 32;
    T *KV = (T *)(smem + a.L.kv), *Qs = KV;
    int *lim_s = (int *)(smem + a.L.lim), *sel_s = (int *)(smem + a.L.sel);
    uint32_t *bits = (uint32_t *)(smem + a.L.bits), *pm_s = (uint32_t *)(smem + a.L.pm);
    int *list = (int *)(smem + a.L.list);
    typedef cub::BlockScan<int, NTHR> Scan;
    __shared__ typename Scan::TempStorage scan_tmp;
    __shared__ int s_nlist;
    (void)NT;

    const int tid = threadIdx.x, wt = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, tq = lane & 3; /* mma row group, thread in quad */
    const int s = blockIdx.y / a.Hkv, r = blockIdx.y % a.Hkv;
    const int sp = blockIdx.x % a.n_split;
    const int G = a.G, Bkk = a.Bk, k = a.top_k;
    const int q0 = a.q_indptr[s], nrows = a.q_indptr[s + 1] - q0;
    if (nrows <= 0) return;
    const int nvec = nrows * G, ntiles = (nvec + 15) / 16;
    const int slen = a.seq_len[s];
    const int nb = msa_seq_blocks(a.kv_indptr, a.seq_len, s, Bkk);
    const int32_t *table = a.kv_table + a.kv_indptr[s];
    const T *kpool = (const T *)a.k, *vpool = (const T *)a.v;
    const int nsub = (Bkk + STG - 1) / STG; /* stages per block */

    for (int t = blockIdx.x / a.n_split; t < ntiles; t += a.tiles_x) {
        const int v0 = t * 16;
        const int row_lo = q0 + v0 / G;
        const int row_hi = q0 + min(nvec - 1, v0 + 15) / G;
        const int nrt = row_hi - row_lo + 1;
        for (int i = tid; i < 16 * (D / 8); i += NTHR) {
            int vi = i / (D / 8), c = i % (D / 8), v = v0 + vi;
            uint4 val = make_uint4(0, 0, 0, 0);
            if (v < nvec) {
                int row = q0 + v / G, head = r * G + v % G;
                val = *(const uint4 *)((const T *)a.q + ((size_t)row * a.Hq + head) * D + c * 8);
            }
            *(uint4 *)(Qs + vi * LD + c * 8) = val;
        }
        if (tid < 16) {
            int v = v0 + tid, lim = -1;
            if (v < nvec) lim = msa_row_limit(a.q_pos[q0 + v / G], slen);
            if (lim >= nb * Bkk) lim = -1;
            lim_s[tid] = lim;
        }
        /* the block list: union of the rows' selections, ascending */
        const int nwords = (a.max_blocks + 31) / 32;
        for (int i = tid; i < nwords; i += NTHR) bits[i] = 0;
        __syncthreads();
        for (int i = tid; i < nrt * k; i += NTHR) {
            int bsel = a.selected[((size_t)(row_lo + i / k) * a.Hkv + r) * k + i % k];
            if (!(bsel >= 0 && bsel < nb && bsel < a.max_blocks)) bsel = -1;
            sel_s[i] = bsel;
            if (bsel >= 0) atomicOr(&bits[bsel >> 5], 1u << (bsel & 31));
        }
        __syncthreads();
        {
            const int per = (nwords + NTHR - 1) / NTHR;
            const int w0 = tid * per, w1 = min(nwords, w0 + per);
            int cnt = 0;
            for (int w = w0; w < w1; w++) cnt += __popc(bits[w]);
            int off;
            Scan(scan_tmp).ExclusiveSum(cnt, off);
            for (int w = w0; w < w1; w++) {
                uint32_t x = bits[w];
                while (x) { int bb = __ffs(x) - 1; x &= x - 1; pm_s[off] = 0; list[off++] = w * 32 + bb; }
            }
            if (tid == NTHR - 1) s_nlist = off;
        }
        __syncthreads();
        const int nlist = s_nlist;
        /* participation masks: bit vi of pm_s[li] = vector vi's row selected list[li] */
        for (int i = tid; i < nrt * k; i += NTHR) {
            const int bsel = sel_s[i];
            if (bsel < 0) continue;
            int lo = 0, hi = nlist - 1;
            while (lo < hi) { int mid = (lo + hi) >> 1; if (list[mid] < bsel) lo = mid + 1; else hi = mid; }
            const int row = row_lo + i / k;
            uint32_t m = 0;
            for (int vi = 0; vi < 16; vi++) {
                const int v = v0 + vi;
                if (v < nvec && q0 + v / G == row) m |= 1u << vi;
            }
            atomicOr(&pm_s[lo], m);
        }
        __syncthreads();
        const int chunk = (nlist + a.n_split - 1) / a.n_split;
        const int li0 = sp * chunk, li1 = min(nlist, li0 + chunk);
        const int u0 = li0 * nsub, u1 = li1 * nsub; /* stage units */

        /* Q fragments: ldmatrix rows lane % 16, columns kk*16 + (lane / 16)*8 */
        uint32_t qf[D / 16][4];
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) attn_ldsm_x4(qf[kk], Qs + (lane & 15) * LD + kk * 16 + (lane >> 4) * 8);
        const int lim_g = lim_s[g], lim_g8 = lim_s[g + 8];
        __syncthreads(); /* Q is in registers: its shared memory takes K/V */

        float o[D / 8][4];
#pragma unroll
        for (int n = 0; n < D / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
        float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

        auto load_unit = [&](int u) {
            if (u < u1) {
                const int li = u / nsub, hs = u % nsub;
                const int b = list[li];
                const int slot = b < nb ? table[b] : -1;
                const int tok0 = hs * STG, ntok = min(STG, Bkk - tok0);
                if (slot >= 0) {
                    T *Ks = KV + (size_t)((u - u0) % NST) * 2 * STG * LD, *Vs = Ks + STG * LD;
                    const size_t base = ((size_t)slot * a.Hkv + r) * Bkk * D + (size_t)tok0 * D;
                    for (int i = tid; i < ntok * (D / 8); i += NTHR) {
                        int rr = i / (D / 8), c = i % (D / 8);
                        msa_cp_async16(Ks + rr * LD + c * 8, kpool + base + (size_t)rr * D + c * 8);
                        msa_cp_async16(Vs + rr * LD + c * 8, vpool + base + (size_t)rr * D + c * 8);
                    }
                }
            }
            msa_cp_async_commit(); /* empty groups keep the count */
        };
#pragma unroll
        for (int i = 0; i < NST - 1; i++) load_unit(u0 + i);

        for (int u = u0; u < u1; u++) {
            msa_cp_async_wait<NST - 2>();
            __syncthreads(); /* unit u landed for everyone; unit u - 1's buffer is free */
            load_unit(u + NST - 1);
            const int li = u / nsub, hs = u % nsub;
            const int b = list[li];
            const int slot = b < nb ? table[b] : -1;
            const uint32_t pm = pm_s[li];
            if (slot < 0 || pm == 0) continue;
            const int tok0 = hs * STG, ntok = min(STG, Bkk - tok0), nj = ntok / 16;
            const T *Ks = KV + (size_t)((u - u0) % NST) * 2 * STG * LD, *Vs = Ks + STG * LD;
            const int p0 = b * Bkk + tok0;
            /* per-row visibility limits inside this stage (-1: not taking part) */
            const int e0 = ((pm >> g) & 1) ? lim_g - p0 : -1;
            const int e1 = ((pm >> (g + 8)) & 1) ? lim_g8 - p0 : -1;
            if (__all_sync(0xffffffffu, e0 < 0 && e1 < 0)) continue;

            float sc[NJ][2][4];
#pragma unroll
            for (int jj = 0; jj < NJ; jj++) {
                const int j = wt + NWT * jj;
#pragma unroll
                for (int h = 0; h < 2; h++) sc[jj][h][0] = sc[jj][h][1] = sc[jj][h][2] = sc[jj][h][3] = 0.0f;
                if (j < nj) {
#pragma unroll
                    for (int kk = 0; kk < D / 16; kk++) {
                        uint32_t kb[4]; /* tokens j*16 + (lane/16)*8 + lane%8, dims kk*16 + ((lane/8)&1)*8 */
                        attn_ldsm_x4(kb, Ks + (j * 16 + (lane >> 4) * 8 + (lane & 7)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
                        attn_mma<T>(sc[jj][0], qf[kk], kb[0], kb[1]);
                        attn_mma<T>(sc[jj][1], qf[kk], kb[2], kb[3]);
                    }
                }
            }
            /* scale, mask, row max */
            float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
            for (int jj = 0; jj < NJ; jj++) {
                const int j = wt + NWT * jj;
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int c = j * 16 + h * 8 + 2 * tq;
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const bool ok = j < nj;
                        float x0 = sc[jj][h][e] * a.scale_log2, x1 = sc[jj][h][2 + e] * a.scale_log2;
                        x0 = ok && c + e <= e0 ? x0 : -INFINITY;
                        x1 = ok && c + e <= e1 ? x1 : -INFINITY;
                        sc[jj][h][e] = x0; sc[jj][h][2 + e] = x1;
                        mx0 = fmaxf(mx0, x0); mx1 = fmaxf(mx1, x1);
                    }
                }
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
            const float mu0 = n0 == -INFINITY ? 0.0f : n0, mu1 = n1 == -INFINITY ? 0.0f : n1;
            const float al0 = exp2f(m0 - mu0), al1 = exp2f(m1 - mu1); /* 0 when m = -inf */
            m0 = n0; m1 = n1;
            float s0 = 0.0f, s1 = 0.0f;
            uint32_t pf[NJ][4];
#pragma unroll
            for (int jj = 0; jj < NJ; jj++) {
                float p[2][4];
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    p[h][0] = exp2f(sc[jj][h][0] - mu0); p[h][1] = exp2f(sc[jj][h][1] - mu0);
                    p[h][2] = exp2f(sc[jj][h][2] - mu1); p[h][3] = exp2f(sc[jj][h][3] - mu1);
                    s0 += p[h][0] + p[h][1];
                    s1 += p[h][2] + p[h][3];
                }
                pf[jj][0] = attn_pack<T>(p[0][0], p[0][1]);
                pf[jj][1] = attn_pack<T>(p[0][2], p[0][3]);
                pf[jj][2] = attn_pack<T>(p[1][0], p[1][1]);
                pf[jj][3] = attn_pack<T>(p[1][2], p[1][3]);
            }
            l0 = l0 * al0 + s0; /* thread-partial sums, reduced over the quad at the end */
            l1 = l1 * al1 + s1;
#pragma unroll
            for (int n = 0; n < D / 8; n++) { o[n][0] *= al0; o[n][1] *= al0; o[n][2] *= al1; o[n][3] *= al1; }
            /* O += P V */
#pragma unroll
            for (int jj = 0; jj < NJ; jj++) {
                const int j = wt + NWT * jj;
                if (j >= nj) break;
#pragma unroll
                for (int nd = 0; nd < D / 16; nd++) {
                    uint32_t vb[4]; /* tokens j*16 + ((lane/8)&1)*8 + lane%8, dims nd*16 + (lane/16)*8 */
                    attn_ldsm_x4_t(vb, Vs + (j * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + nd * 16 + (lane >> 4) * 8);
                    attn_mma<T>(o[2 * nd], pf[jj], vb[0], vb[1]);
                    attn_mma<T>(o[2 * nd + 1], pf[jj], vb[2], vb[3]);
                }
            }
        }
        msa_cp_async_wait<0>();
        __syncthreads(); /* the stage buffers become the merge area */

        l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
        l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
        float *Om = (float *)KV;                       /* [NWT][16][OLD] */
        float *ml = Om + (size_t)NWT * 16 * OLD;       /* [NWT][16][2] */
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            const int c = n * 8 + 2 * tq;
            *(float2 *)(Om + ((size_t)wt * 16 + g) * OLD + c) = make_float2(o[n][0], o[n][1]);
            *(float2 *)(Om + ((size_t)wt * 16 + g + 8) * OLD + c) = make_float2(o[n][2], o[n][3]);
        }
        if (tq == 0) {
            ml[(wt * 16 + g) * 2] = m0; ml[(wt * 16 + g) * 2 + 1] = l0;
            ml[(wt * 16 + g + 8) * 2] = m1; ml[(wt * 16 + g + 8) * 2 + 1] = l1;
        }
        __syncthreads();
        /* merge and write: warp per vector */
        for (int vi = wt; vi < 16; vi += NWT) {
            const int v = v0 + vi;
            if (v >= nvec) break;
            float M = -INFINITY;
#pragma unroll
            for (int w = 0; w < NWT; w++) M = fmaxf(M, ml[(w * 16 + vi) * 2]);
            const float Mu = M == -INFINITY ? 0.0f : M;
            float wgt[NWT], L = 0.0f;
#pragma unroll
            for (int w = 0; w < NWT; w++) {
                wgt[w] = exp2f(ml[(w * 16 + vi) * 2] - Mu);
                L += ml[(w * 16 + vi) * 2 + 1] * wgt[w];
            }
            const int row = q0 + v / G, head = r * G + v % G;
            if (a.n_split == 1) {
                const float inv = L > 0.0f ? 1.0f / L : 0.0f;
                T *op = (T *)a.out + ((size_t)row * a.Hq + head) * D;
                for (int c = lane; c < D; c += 32) {
                    float acc = 0.0f;
#pragma unroll
                    for (int w = 0; w < NWT; w++) acc += Om[((size_t)w * 16 + vi) * OLD + c] * wgt[w];
                    op[c] = msa_from_f32<T>(acc * inv);
                }
                if (a.lse && lane == 0)
                    a.lse[(size_t)row * a.Hq + head] = L > 0.0f ? (M + log2f(L)) * MSA_LN2 : -INFINITY;
            } else {
                float *pp = a.partials + (((size_t)row * a.Hq + head) * a.n_split + sp) * (D + 2);
                if (lane == 0) { pp[0] = M; pp[1] = L; }
                for (int c = lane; c < D; c += 32) {
                    float acc = 0.0f;
#pragma unroll
                    for (int w = 0; w < NWT; w++) acc += Om[((size_t)w * 16 + vi) * OLD + c] * wgt[w];
                    pp[2 + c] = acc;
                }
            }
        }
        __syncthreads(); /* the next tile reuses shared memory */
    }
}

template <typename T, int D, int NWT, int STG, int NST>
static int launch_attn6(const attn_args &a0, int n_q, cudaStream_t st) {
    attn6_args a;
    a.q = a0.q; a.k = a0.k; a.v = a0.v;
    a.kv_indptr = a0.kv_indptr; a.kv_table = a0.kv_table; a.seq_len = a0.seq_len;
    a.q_indptr = a0.q_indptr; a.q_pos = a0.q_pos; a.selected = a0.selected;
    a.out = a0.out; a.lse = a0.lse; a.partials = a0.partials;
    a.Hq = a0.Hq; a.Hkv = a0.Hkv; a.G = a0.G; a.Bk = a0.Bk; a.top_k = a0.top_k;
    a.max_blocks = a0.max_blocks; a.n_split = a0.n_split; a.tiles_x = a0.tiles_x;
    a.scale_log2 = a0.scale_log2;
    a.L = attn6_layout(D, NWT, STG, NST, a.top_k, a.max_blocks);
    int dev = 0, optin = 0;
    int rc = msa_cuda_check(cudaGetDevice(&dev), "get device");
    if (!rc) rc = msa_cuda_check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "device attribute");
    if (rc) return rc;
    if (a.L.total + 1024 > (size_t)optin)
        return msa_error(MSA_EUNSUPPORTED, "CUDA attention: %zu bytes of shared memory needed (Bk %d, d %d, top_k %d, max_blocks %d), %d available",
                         a.L.total, a.Bk, D, a.top_k, a.max_blocks, optin);
    static size_t optin_cache[MSA_CUDA_MAX_DEVICES];
    rc = msa_cuda_smem_optin((const void *)block_attn6_kernel<T, D, NWT, STG, NST>, a.L.total, optin_cache,
                             "attention v6: shared memory limit");
    if (rc) return rc;
    dim3 grid((unsigned)(a.tiles_x * a.n_split), (unsigned)(a0.n_seqs * a.Hkv));
    block_attn6_kernel<T, D, NWT, STG, NST><<<grid, NWT * 32, a.L.total, st>>>(a);
    rc = MSA_CUDA_LAUNCHED("attention kernel v6");
    if (rc || a.n_split == 1) return rc;
    combine_kernel<T, D><<<(unsigned)n_q * a.Hq, D, 0, st>>>(a.partials, (T *)a.out, a.lse, a.n_split);
    return MSA_CUDA_LAUNCHED("attention combine kernel");
}

/* The arguments of one attention launch: fills *a and says whether the call
 * is a prefill and whether the grid has no more CTAs than SMs. union_tiles:
 * sparse prefill in tiles of 64 vectors (v4) instead of 16 (v5 and later).
 * The caller has returned early for an empty batch. */
static inline int attn_prepare(const msa_cuda_shape &sh, const msa_paged_kv *kv, const msa_attn_batch *b,
                               const int32_t *selected, int n_split, float *partials, bool union_tiles,
                               attn_args *a, bool *prefill, bool *few) {
    if (sh.Bk % 16 || sh.Bk > 128)
        return msa_error(MSA_EUNSUPPORTED, "CUDA attention: block size %d (a multiple of 16, at most 128)", sh.Bk);
    if (selected && sh.top_k > 64)
        return msa_error(MSA_EUNSUPPORTED, "CUDA sparse attention: top_k %d (at most 64)", sh.top_k);
    memset(a, 0, sizeof *a);
    a->q = b->q; a->k = kv->k; a->v = kv->v;
    a->kv_indptr = kv->kv_indptr; a->kv_table = kv->kv_table; a->seq_len = kv->seq_len;
    a->q_indptr = b->q_indptr; a->q_pos = b->q_pos; a->selected = selected;
    a->out = b->out; a->lse = b->lse; a->partials = partials;
    a->n_seqs = kv->n_seqs; a->Hq = sh.Hq; a->Hkv = sh.Hkv; a->G = sh.G; a->Bk = sh.Bk;
    a->top_k = sh.top_k; a->max_blocks = kv->max_blocks; a->n_split = n_split < 1 ? 1 : n_split;
    a->scale_log2 = sh.scale * MSA_LOG2E;
    /* Average rows per sequence decides the tile width; tiles beyond the
     * grid are walked by a grid-stride loop, so uneven batches stay correct. */
    const int rows_avg = (b->n_q + kv->n_seqs - 1) / kv->n_seqs;
    *prefill = (long)rows_avg * sh.G > 16;
    const bool sparse = selected != NULL;
    const int V = *prefill && (!sparse || union_tiles) ? 64 : 16;
    a->tiles_x = (int)(((long)rows_avg * sh.G + V - 1) / V);
    if (a->tiles_x < 1) a->tiles_x = 1;
    if ((long)a->tiles_x * a->n_split > 0x7fffffffL || (long)kv->n_seqs * sh.Hkv > 65535)
        return msa_error(MSA_EUNSUPPORTED, "CUDA attention: grid too large (%d sequences)", kv->n_seqs);
    int dev = 0, n_sm = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
        return msa_cuda_check(cudaGetLastError(), "attention: device attributes");
    *few = (long)a->tiles_x * a->n_split * kv->n_seqs * sh.Hkv <= n_sm;
    return MSA_OK;
}
