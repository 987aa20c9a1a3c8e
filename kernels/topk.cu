/*
 * topk.cu: MSA block selection on the GPU. For every (row, group) it turns
 * the block scores of index_score.cu into the row's selection:
 *
 *   selected[i][r][0]       = the local block q_pos / Bk (always taken)
 *   selected[i][r][1..kk]   = the kk = min(top_k - 1, local) best blocks among
 *                             0 .. local-1, by descending score, ties to the
 *                             lower block id
 *   selected[i][r][kk+1..]  = -1
 *
 * Blocks after the local one are invisible and never candidates, so the
 * candidates are exactly the blocks 0 .. local-1. Selection is exp-free:
 * raw scores are ranked (softmax is monotone).
 *
 * Design: one CTA (512 threads) per (row, group); the candidate scores are
 * mapped to order-preserving uint32 keys and kept in shared memory; an
 * MSB-first radix select (4 passes of 8 bits, shared-memory histogram, one
 * warp scans the 256 bins) finds the threshold key T, the kk-th largest.
 * Every key > T is taken (fewer than kk of them); the remaining places go to
 * the keys equal to T with the lowest block ids (a block-wide exclusive scan
 * over contiguous per-thread chunks keeps id order). The kk winners are
 * ranked by pairwise comparison (score desc, id asc) and written.
 *
 * Limits: the candidates of one row must fit in shared memory as uint32
 * (max_blocks <= 48K, i.e. 6M tokens at Bk = 128); top_k <= 512.
 *
 * Version history:
 *   v1: radix select over shared memory, 4 passes of 8 bits. At N = 128K
 *      (1K candidates) about 11 us per launch as first measured (event
 *      timing that included host launch overhead), 2.5x torch.topk.
 *   v2: one 11-bit histogram pass, then an exact rank of the keys in the
 *      boundary bin; v1's radix select stays as the fallback for heavy
 *      ties. Graph-timed at 128K: 12.8 us decode (torch.topk 16.6), but the
 *      prefill case (16K row-groups) went from 0.2 to 0.97 ms: one warp
 *      walked the 2048 bins serially, 128 dependent shared loads.
 *   v3: the 2048-bin scan is a block-wide scan (4 bins per thread)
 *      instead of one warp's serial walk: 128K decode 8.4-10.3 us
 *      (torch.topk 17-18), prefill 0.26 ms.
 *   v4: block scores are maxima of 128 token scores, so they
 *      crowd into few top-11-bit bins (hundreds of keys in the boundary bin
 *      at 1K blocks) and v3's exact rank was quadratic in them; a boundary
 *      bin of more than 64 keys is now refined by a second 11-bit histogram
 *      before the rank. torch.topk on the same
 *      [rows*groups][blocks] scores is the comparison in tools/bench_torch.py.
 *      128K decode 6.1-7.5 us (torch.topk 17-19): a floor of 5-6 us from
 *      one 512-thread CTA per row-group and about 10 barriers.
 *   v5 (topk_warp_kernel below, the default when top_k <= 32 and
 *      max_blocks <= 2048): one warp per (row, group), TOPK_WARPS of them per
 *      CTA, no block barrier. The row's keys live in registers (PER = 8..64
 *      per lane, block id = i*32 + lane). A lower bound L on the kk-th
 *      largest key comes from the lane maxima: the kk-th largest of the 32
 *      lane maxima (kk lanes hold a key >= L, so the kk-th largest key is
 *      >= L). The keys >= L (about 2% of them on random scores, typically
 *      20-40) are compacted by ballots into shared memory as one 64-bit
 *      word (key << 32 | ~id, so that a larger word is a better block) and
 *      ranked exactly against each other; ranks < kk are the winners. When
 *      more than TOPK_WARP_CAP keys pass L (heavy ties), an in-register
 *      bit-by-bit threshold search finds the kk-th largest key T and the
 *      keys == T are taken in id order. The v4 CTA kernel stays for
 *      top_k > 32 or more than 2048 blocks, and tuning topk_version = 4
 *      selects it everywhere (for comparison). Measured on H100 (graph
 *      timing, tools/gpu-run.sh topk): 8K-32K decode 3.0-3.7 us (v4
 *      5.5-7.1), 128K decode 4.9-5.6 us (v4 6.3-7.8; torch.topk 16.6-18.6,
 *      so 3.2-3.5x, short of 5x), prefill 2K rows at 128K 108 / 43 us (v4
 *      251 / 121). At 4K blocks (PER = 128) it took 11.8-12.8 us against
 *      v4's 8.0-9.9, hence the 2048 limit. The cost grows about 0.07 us per
 *      32 keys per lane: one warp's serial work, not memory (making every
 *      load unconditional, v5b, gained only 0.2 us at 1K blocks). Next:
 *      split a row-group over several warps of one CTA (per-warp L, the
 *      maximum of them is still a lower bound; one barrier), or select in
 *      the tail of the index-scoring kernel.
 *   v6 (topk_cta_kernel below): one CTA of NW = 4, 8 or 16 warps per
 *      (row, group); thread (w, lane) holds blocks (i*NW + w)*32 + lane
 *      (PER = 1..16 per thread). Thread maxima go to shared memory, one
 *      barrier, and every warp folds the NW maxima of its lane and takes the
 *      kk-th largest of the 32 as L (v5's bound over NW*PER keys per lane,
 *      computed redundantly by each warp instead of a second exchange). Keys
 *      >= L are compacted by ballots (one shared atomic per warp), a second
 *      barrier, and ranked exactly from shared memory, one thread per
 *      candidate. Over TOPK6_CAP candidates (heavy ties) a CTA-wide bit
 *      search finds the kk-th largest word key << 32 | ~id (words are
 *      distinct, so exactly kk are >= it). Automatic choice: v6 for at most
 *      TOPK6_MAX_RG row-groups (decode; 4 warps up to 512 blocks, else 8),
 *      v5 above (prefill: 4 row-groups per CTA win when the GPU is full).
 *      Measured on H100 (tools/gpu-run.sh topk, docs/bench-kernels.md run
 *      9): 128K decode 3.1-3.5 us (v5 5.0-5.5; torch.topk 16.6-18.1, so
 *      5.1-5.5x), 8K-32K decode 2.7-3.3 us (v5 3.0-3.6); prefill 2K rows at
 *      128K v6 60 / 32 us against v5's 48 / 26, hence v5 there. 16 warps was
 *      slowest everywhere (0.3-0.4 us over 8 at 1K blocks).
 */
#include <cub/block/block_scan.cuh>

#include "kernels/cuda_common.cuh"

#define TOPK_THREADS 512
#define TOPK_MAX_BLOCKS (46 * 1024)
#define TOPK_CAND_MAX 1024

__device__ __forceinline__ uint32_t order_key(float f) {
    uint32_t u = __float_as_uint(f);
    if (u == 0x80000000u) u = 0; /* -0.0 ties +0.0, as on the host */
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* grid (n_q * Hkv), block 512 threads, dynamic smem: max_blocks uint32. */
__global__ void __launch_bounds__(TOPK_THREADS)
topk_kernel(const float *__restrict__ scores, /* [n_q][Hkv][max_blocks] */
            const int32_t *__restrict__ q_indptr, const int32_t *__restrict__ q_pos,
            const int32_t *__restrict__ seq_len, const int32_t *__restrict__ idx_indptr,
            int32_t *__restrict__ selected,    /* [n_q][Hkv][top_k] */
            int n_seqs, int Hkv, int Bk, int top_k, int max_blocks) {
    extern __shared__ uint32_t keys[];
    __shared__ int hist[256];
    __shared__ uint32_t s_prefix;
    __shared__ int s_remaining, s_count;
    __shared__ int win_id[512];
    __shared__ uint32_t win_key[512];
    __shared__ int hist2k[2048];
    __shared__ int cand_id[TOPK_CAND_MAX];
    __shared__ uint32_t cand_key[TOPK_CAND_MAX];
    __shared__ int cand2[TOPK_CAND_MAX];
    __shared__ int s_digit, s_ncand, s_nc, s_nc2;
    typedef cub::BlockScan<int, TOPK_THREADS> Scan;
    __shared__ typename Scan::TempStorage scan_tmp;

    const int rg = blockIdx.x, row = rg / Hkv;
    const int tid = threadIdx.x;
    int32_t *out = selected + (size_t)rg * top_k;

    /* which blocks are candidates */
    int local = -1;
    const int s = msa_row_seq(q_indptr, n_seqs, row);
    if (s >= 0) {
        int lim = msa_row_limit(q_pos[row], seq_len[s]);
        int nb = msa_seq_blocks(idx_indptr, seq_len, s, Bk);
        if (lim >= 0 && lim / Bk < nb && lim / Bk < max_blocks) local = lim / Bk;
    }
    if (local < 0) { /* invalid row: nothing selected */
        for (int i = tid; i < top_k; i += blockDim.x) out[i] = -1;
        return;
    }
    const int n = local; /* candidates 0 .. local-1 */
    const int kk = min(top_k - 1, n);
    for (int i = tid; i < top_k; i += blockDim.x) out[i] = i == 0 ? local : -1;
    if (kk <= 0) return;

    const float *sc = scores + (size_t)rg * max_blocks;
    for (int i = tid; i < n; i += blockDim.x) keys[i] = order_key(sc[i]);
    if (tid == 0) { s_prefix = 0; s_remaining = kk; s_count = 0; s_nc = 0; s_nc2 = 0; }
    __syncthreads();

    /* v2 fast path: one histogram of the top 11 key bits finds the bin D
     * holding the kk-th largest key. Keys in higher bins are winners; the
     * (usually few dozen) keys in bin D are ranked exactly against each
     * other (score desc, id asc) for the remaining places. When bin D holds
     * more than TOPK_CAND_MAX keys (massive ties), the radix select below
     * runs instead. */
    bool fast = false;
    if (kk < n) {
        for (int i = tid; i < 2048; i += blockDim.x) hist2k[i] = 0;
        __syncthreads();
        for (int i = tid; i < n; i += blockDim.x) atomicAdd(&hist2k[keys[i] >> 21], 1);
        __syncthreads();
        { /* thread t owns bins 2047-4t .. 2044-4t; a block scan, top down */
            int h[4], tot = 0;
#pragma unroll
            for (int i = 0; i < 4; i++) { h[i] = hist2k[2047 - 4 * tid - i]; tot += h[i]; }
            int incl;
            Scan(scan_tmp).InclusiveSum(tot, incl);
            const int excl = incl - tot;
            if (excl < kk && kk <= incl) {
                int cum = excl;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    if (cum + h[i] >= kk) { s_digit = 2047 - 4 * tid - i; s_remaining = kk - cum; s_ncand = h[i]; break; }
                    cum += h[i];
                }
            }
        }
        __syncthreads();
        fast = s_ncand <= TOPK_CAND_MAX;
        if (fast) {
            const uint32_t D = (uint32_t)s_digit;
            const int rem = s_remaining;
            for (int i = tid; i < n; i += blockDim.x) {
                const uint32_t u = keys[i], dg = u >> 21;
                if (dg > D) {
                    int p = atomicAdd(&s_count, 1);
                    win_id[p] = i; win_key[p] = u;
                } else if (dg == D) {
                    int c = atomicAdd(&s_nc, 1);
                    cand_id[c] = i; cand_key[c] = u;
                }
            }
            __syncthreads();
            const int nc = s_nc;
            if (nc <= 64) { /* rank the boundary bin directly */
                const int n_gt = s_count;
                for (int c = tid; c < nc; c += blockDim.x) {
                    const uint32_t ku = cand_key[c];
                    const int ki = cand_id[c];
                    int rank = 0;
                    for (int j = 0; j < nc; j++) {
                        const uint32_t u = cand_key[j];
                        rank += (u > ku) || (u == ku && cand_id[j] < ki);
                    }
                    if (rank < rem) { win_id[n_gt + rank] = ki; win_key[n_gt + rank] = ku; }
                }
            } else { /* v4: refine the boundary bin by the next 11 bits */
                for (int i = tid; i < 2048; i += blockDim.x) hist2k[i] = 0;
                __syncthreads();
                for (int c = tid; c < nc; c += blockDim.x) atomicAdd(&hist2k[(cand_key[c] >> 10) & 2047], 1);
                __syncthreads();
                {
                    int h[4], tot = 0;
#pragma unroll
                    for (int i = 0; i < 4; i++) { h[i] = hist2k[2047 - 4 * tid - i]; tot += h[i]; }
                    int incl;
                    Scan(scan_tmp).InclusiveSum(tot, incl);
                    const int excl = incl - tot;
                    if (excl < rem && rem <= incl) {
                        int cum = excl;
#pragma unroll
                        for (int i = 0; i < 4; i++) {
                            if (cum + h[i] >= rem) { s_digit = 2047 - 4 * tid - i; s_remaining = rem - cum; break; }
                            cum += h[i];
                        }
                    }
                }
                __syncthreads();
                const uint32_t D2 = (uint32_t)s_digit;
                const int rem2 = s_remaining;
                for (int c = tid; c < nc; c += blockDim.x) {
                    const uint32_t sd = (cand_key[c] >> 10) & 2047;
                    if (sd > D2) {
                        int p = atomicAdd(&s_count, 1);
                        win_id[p] = cand_id[c]; win_key[p] = cand_key[c];
                    } else if (sd == D2) {
                        cand2[atomicAdd(&s_nc2, 1)] = c;
                    }
                }
                __syncthreads();
                const int n_gt = s_count, nc2 = s_nc2;
                for (int q = tid; q < nc2; q += blockDim.x) {
                    const uint32_t ku = cand_key[cand2[q]];
                    const int ki = cand_id[cand2[q]];
                    int rank = 0;
                    for (int j = 0; j < nc2; j++) {
                        const uint32_t u = cand_key[cand2[j]];
                        rank += (u > ku) || (u == ku && cand_id[cand2[j]] < ki);
                    }
                    if (rank < rem2) { win_id[n_gt + rank] = ki; win_key[n_gt + rank] = ku; }
                }
            }
            __syncthreads();
        } else {
            if (tid == 0) { s_prefix = 0; s_remaining = kk; }
            __syncthreads();
        }
    }

    /* Radix select: after the passes, T = s_prefix is the kk-th largest key
     * and s_remaining the number of keys equal to T to take. Skipped when
     * every candidate is taken. */
    uint32_t mask = 0;
    if (fast) {
        /* winners already in win_id / win_key */
    } else if (kk < n) {
        for (int shift = 24; shift >= 0; shift -= 8) {
            if (tid < 256) hist[tid] = 0;
            __syncthreads();
            const uint32_t prefix = s_prefix;
            for (int i = tid; i < n; i += blockDim.x) {
                uint32_t u = keys[i];
                if ((u & mask) == prefix) atomicAdd(&hist[(u >> shift) & 255], 1);
            }
            __syncthreads();
            if (tid < 32) { /* lane l scans bins 255-8l .. 248-8l, top down */
                int h[8], tot = 0;
#pragma unroll
                for (int i = 0; i < 8; i++) { h[i] = hist[255 - 8 * tid - i]; tot += h[i]; }
                int incl = tot;
                for (int o = 1; o < 32; o <<= 1) {
                    int y = __shfl_up_sync(0xffffffffu, incl, o);
                    if (tid >= o) incl += y;
                }
                int excl = incl - tot, rem = s_remaining;
                if (excl < rem && rem <= incl) { /* exactly one lane */
                    int cum = excl;
#pragma unroll
                    for (int i = 0; i < 8; i++) {
                        if (cum + h[i] >= rem) {
                            s_prefix = prefix | ((uint32_t)(255 - 8 * tid - i) << shift);
                            s_remaining = rem - cum;
                            break;
                        }
                        cum += h[i];
                    }
                }
            }
            mask |= 255u << shift;
            __syncthreads();
        }
    } else {
        if (tid == 0) { s_prefix = 0; s_remaining = 0x7fffffff; }
        __syncthreads();
    }
    const uint32_t T = s_prefix;
    const int take_eq = s_remaining;
    if (!fast) {

    /* Collect: keys > T anywhere; keys == T in id order (contiguous chunks +
     * exclusive scan), the first take_eq of them. */
    const int per = (n + TOPK_THREADS - 1) / TOPK_THREADS;
    const int lo = tid * per, hi = min(n, lo + per);
    int n_eq = 0;
    for (int i = lo; i < hi; i++) {
        uint32_t u = keys[i];
        if (u > T) {
            int p = atomicAdd(&s_count, 1);
            win_id[p] = i; win_key[p] = u;
        } else if (u == T) {
            n_eq++;
        }
    }
    int eq_off;
    Scan(scan_tmp).ExclusiveSum(n_eq, eq_off);
    __syncthreads();
    const int n_gt = s_count;
    for (int i = lo; i < hi && eq_off < take_eq; i++) {
        if (keys[i] == T) {
            win_id[n_gt + eq_off] = i; win_key[n_gt + eq_off] = T;
            eq_off++;
        }
    }
    __syncthreads();
    } /* !fast */

    /* Rank the kk winners: score desc, then id asc. */
    if (tid < kk) {
        uint32_t ku = win_key[tid];
        int ki = win_id[tid], rank = 0;
        for (int j = 0; j < kk; j++) {
            uint32_t u = win_key[j];
            int id = win_id[j];
            rank += (u > ku) || (u == ku && id < ki);
        }
        out[1 + rank] = ki;
    }
}

/* ---- v5: one warp per (row, group) ----------------------------------------- */

#define TOPK_WARPS 4       /* row-groups (warps) per CTA */
#define TOPK_WARP_CAP 256  /* keys >= L ranked directly; more: bit search */
#define TOPK_WARP_MAX_K 32 /* top_k limit of the warp kernel */
#define TOPK_WARP_MAX_BLOCKS 2048 /* more: v4 (measured faster from 4K blocks) */

template <int PER>
__global__ void __launch_bounds__(TOPK_WARPS * 32)
topk_warp_kernel(const float *__restrict__ scores, /* [n_rg][max_blocks] */
                 const int32_t *__restrict__ q_indptr, const int32_t *__restrict__ q_pos,
                 const int32_t *__restrict__ seq_len, const int32_t *__restrict__ idx_indptr,
                 int32_t *__restrict__ selected, /* [n_rg][top_k] */
                 int n_rg, int n_seqs, int Hkv, int Bk, int top_k, int max_blocks) {
    __shared__ unsigned long long s_cand[TOPK_WARPS][TOPK_WARP_CAP];
    __shared__ int s_out[TOPK_WARPS][32];
    const unsigned FULL = 0xffffffffu;
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int rg = blockIdx.x * TOPK_WARPS + w;
    if (rg >= n_rg) return; /* whole warps only; no CTA barrier below */
    const int row = rg / Hkv;
    int32_t *out = selected + (size_t)rg * top_k;

    int local = -1;
    const int s = msa_row_seq(q_indptr, n_seqs, row);
    if (s >= 0) {
        int lim = msa_row_limit(q_pos[row], seq_len[s]);
        int nb = msa_seq_blocks(idx_indptr, seq_len, s, Bk);
        if (lim >= 0 && lim / Bk < nb && lim / Bk < max_blocks) local = lim / Bk;
    }
    if (local < 0) {
        if (lane < top_k) out[lane] = -1;
        return;
    }
    const int n = local, kk = min(top_k - 1, n);
    if (kk <= 0) {
        if (lane < top_k) out[lane] = lane == 0 ? local : -1;
        return;
    }

    /* keys in registers: lane holds blocks lane, lane+32, ... (cnt of them) */
    const float *sc = scores + (size_t)rg * max_blocks;
    const int cnt = n > lane ? (n - lane + 31) >> 5 : 0;
    /* every load unconditional (clamped to the row), so that all PER are in
     * flight at once; a predicated load per block made each one wait for
     * the last (v5a: 5.4 us at 1K blocks, 15 us at 4K) */
    const int last = max_blocks - 1;
    uint32_t key[PER];
#pragma unroll
    for (int i = 0; i < PER; i++) key[i] = __float_as_uint(__ldg(sc + min(i * 32 + lane, last)));
#pragma unroll
    for (int i = 0; i < PER; i++) key[i] = i < cnt ? order_key(__uint_as_float(key[i])) : 0u;

    /* L: the kk-th largest lane maximum (ties by lane), a lower bound on the
     * kk-th largest key */
    uint32_t m = 0;
#pragma unroll
    for (int i = 0; i < PER; i++) m = max(m, key[i]);
    int mrank = 0;
#pragma unroll
    for (int j = 0; j < 32; j++) {
        const uint32_t v = __shfl_sync(FULL, m, j);
        mrank += (v > m) || (v == m && j < lane);
    }
    const uint32_t L = __shfl_sync(FULL, m, __ffs(__ballot_sync(FULL, mrank == kk - 1)) - 1);

    const unsigned lt = (1u << lane) - 1u;
    unsigned long long *cand = s_cand[w];
    int *so = s_out[w];
    int nc = 0;
#pragma unroll
    for (int i = 0; i < PER; i++) {
        const bool p = i < cnt && key[i] >= L;
        const unsigned b = __ballot_sync(FULL, p);
        const int pos = nc + __popc(b & lt);
        if (p && pos < TOPK_WARP_CAP)
            cand[pos] = ((unsigned long long)key[i] << 32) | (0xffffffffu - (uint32_t)(i * 32 + lane));
        nc += __popc(b);
    }

    if (nc > TOPK_WARP_CAP) {
        /* heavy ties: T = the largest value with at least kk keys >= T, found
         * bit by bit (T >= L); then every key > T (fewer than kk) and the
         * lowest-id keys == T */
        uint32_t T = 0;
        for (int bit = 31; bit >= 0; bit--) {
            const uint32_t c = T | (1u << bit);
            int k = 0;
#pragma unroll
            for (int i = 0; i < PER; i++) k += i < cnt && key[i] >= c;
            if (__reduce_add_sync(FULL, k) >= kk) T = c;
        }
        int g = 0;
#pragma unroll
        for (int i = 0; i < PER; i++) g += i < cnt && key[i] > T;
        const int n_gt = __reduce_add_sync(FULL, g), take_eq = kk - n_gt;
        __syncwarp();
        int ng = 0, ne = 0;
#pragma unroll
        for (int i = 0; i < PER; i++) {
            const bool pg = i < cnt && key[i] > T, pe = i < cnt && key[i] == T;
            const unsigned bg = __ballot_sync(FULL, pg), be = __ballot_sync(FULL, pe);
            const unsigned long long word =
                ((unsigned long long)key[i] << 32) | (0xffffffffu - (uint32_t)(i * 32 + lane));
            if (pg) cand[ng + __popc(bg & lt)] = word;
            const int r = ne + __popc(be & lt);
            if (pe && r < take_eq) cand[n_gt + r] = word;
            ng += __popc(bg);
            ne += __popc(be);
        }
        nc = kk;
    }
    so[lane] = -1;
    __syncwarp();
    /* exact rank among the nc candidates (which hold the kk best): up to 64
     * in registers by shuffles (an empty slot is 0, below every word) */
    if (nc <= 64) {
        const unsigned long long u0 = lane < nc ? cand[lane] : 0ull;
        const unsigned long long u1 = lane + 32 < nc ? cand[lane + 32] : 0ull;
        int r0 = 0, r1 = 0;
#pragma unroll
        for (int j = 0; j < 32; j++) {
            const unsigned long long v0 = __shfl_sync(FULL, u0, j), v1 = __shfl_sync(FULL, u1, j);
            r0 += (v0 > u0) + (v1 > u0);
            r1 += (v0 > u1) + (v1 > u1);
        }
        if (lane < nc && r0 < kk) so[1 + r0] = (int)(0xffffffffu - (uint32_t)u0);
        if (lane + 32 < nc && r1 < kk) so[1 + r1] = (int)(0xffffffffu - (uint32_t)u1);
        nc = 0; /* done */
    }
    for (int c = lane; c < nc; c += 32) {
        const unsigned long long u = cand[c];
        int r = 0;
        for (int j = 0; j < nc; j++) r += cand[j] > u;
        if (r < kk) so[1 + r] = (int)(0xffffffffu - (uint32_t)u);
    }
    __syncwarp();
    if (lane < top_k) out[lane] = lane == 0 ? local : so[lane];
}

template <int PER>
static void launch_warp(const msa_paged_kv *kv, const msa_attn_batch *b, int Hkv, int Bk, int top_k,
                        const float *scores, int32_t *selected, cudaStream_t st) {
    const int n_rg = b->n_q * Hkv;
    const int32_t *indptr = kv->idx_indptr ? kv->idx_indptr : kv->kv_indptr;
    topk_warp_kernel<PER><<<(unsigned)((n_rg + TOPK_WARPS - 1) / TOPK_WARPS), TOPK_WARPS * 32, 0, st>>>(
        scores, b->q_indptr, b->q_pos, kv->seq_len, indptr, selected, n_rg, kv->n_seqs, Hkv, Bk, top_k,
        kv->max_blocks);
}

/* ---- v6: one CTA of NW warps per (row, group) ------------------------------ */

#define TOPK6_CAP 512 /* candidates ranked from shared memory; more: word search */
#define TOPK6_MAX_RG 1024 /* automatic: v6 up to this many row-groups, v5 above */

template <int NW, int PER>
__global__ void __launch_bounds__(NW * 32)
topk_cta_kernel(const float *__restrict__ scores, /* [n_rg][max_blocks] */
                const int32_t *__restrict__ q_indptr, const int32_t *__restrict__ q_pos,
                const int32_t *__restrict__ seq_len, const int32_t *__restrict__ idx_indptr,
                int32_t *__restrict__ selected, /* [n_rg][top_k] */
                int n_seqs, int Hkv, int Bk, int top_k, int max_blocks) {
    __shared__ uint32_t s_max[NW][32];
    __shared__ unsigned long long s_cand[TOPK6_CAP];
    __shared__ int s_red[2][NW];
    __shared__ int s_n, s_n2;
    const unsigned FULL = 0xffffffffu;
    const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31;
    const int rg = blockIdx.x, row = rg / Hkv;
    int32_t *out = selected + (size_t)rg * top_k;

    int local = -1; /* uniform over the CTA: every return below is too */
    const int s = msa_row_seq(q_indptr, n_seqs, row);
    if (s >= 0) {
        int lim = msa_row_limit(q_pos[row], seq_len[s]);
        int nb = msa_seq_blocks(idx_indptr, seq_len, s, Bk);
        if (lim >= 0 && lim / Bk < nb && lim / Bk < max_blocks) local = lim / Bk;
    }
    if (local < 0) {
        if (tid < top_k) out[tid] = -1;
        return;
    }
    const int n = local, kk = min(top_k - 1, n);
    if (tid < top_k && (tid == 0 || tid > kk)) out[tid] = tid == 0 ? local : -1;
    if (kk <= 0) return;
    if (tid == 0) { s_n = 0; s_n2 = 0; }

    /* keys in registers: thread (w, lane) holds blocks (i*NW + w)*32 + lane */
    const float *sc = scores + (size_t)rg * max_blocks;
    const int last = max_blocks - 1;
    uint32_t key[PER];
#pragma unroll
    for (int i = 0; i < PER; i++) key[i] = __float_as_uint(__ldg(sc + min((i * NW + w) * 32 + lane, last)));
    uint32_t m = 0;
#pragma unroll
    for (int i = 0; i < PER; i++) {
        key[i] = (i * NW + w) * 32 + lane < n ? order_key(__uint_as_float(key[i])) : 0u;
        m = max(m, key[i]);
    }
    s_max[w][lane] = m;
    __syncthreads();

    /* L, as in v5 but over the CTA: "lane" l stands for every thread of lane
     * l (NW * PER keys); the kk-th largest of the 32 lane maxima is a lower
     * bound on the kk-th largest key. Every warp computes it (no barrier). */
    m = 0;
#pragma unroll
    for (int v = 0; v < NW; v++) m = max(m, s_max[v][lane]);
    int mrank = 0;
#pragma unroll
    for (int j = 0; j < 32; j++) {
        const uint32_t v = __shfl_sync(FULL, m, j);
        mrank += (v > m) || (v == m && j < lane);
    }
    const uint32_t L = __shfl_sync(FULL, m, __ffs(__ballot_sync(FULL, mrank == kk - 1)) - 1);

    /* compact the keys >= L (valid ones) as key << 32 | ~id: a larger word
     * is a better block */
    const unsigned lt = (1u << lane) - 1u;
    unsigned bal[PER];
    int cw = 0;
#pragma unroll
    for (int i = 0; i < PER; i++) {
        bal[i] = __ballot_sync(FULL, (i * NW + w) * 32 + lane < n && key[i] >= L);
        cw += __popc(bal[i]);
    }
    int base = 0;
    if (lane == 0 && cw) base = atomicAdd(&s_n, cw);
    base = __shfl_sync(FULL, base, 0);
#pragma unroll
    for (int i = 0; i < PER; i++) {
        const int pos = base + __popc(bal[i] & lt);
        if (((bal[i] >> lane) & 1u) && pos < TOPK6_CAP)
            s_cand[pos] = ((unsigned long long)key[i] << 32) | (0xffffffffu - (uint32_t)((i * NW + w) * 32 + lane));
        base += __popc(bal[i]);
    }
    __syncthreads();
    int nc = s_n;

    if (nc > TOPK6_CAP) {
        /* heavy ties: W = the kk-th largest word (words are distinct), bit by
         * bit over the CTA; bits 31..idb of ~id are 1 for every block. */
        const int idb = 32 - __clz(max(max_blocks - 1, 1));
        const unsigned long long ones = (unsigned long long)(0xffffffffu << idb) & 0xffffffffull;
        unsigned long long W = ones;
        int it = 0;
        for (int bit = 63; bit >= 0; bit--) {
            if (bit < 32 && bit >= idb) continue;
            const unsigned long long c = W | (1ull << bit);
            int k = 0;
#pragma unroll
            for (int i = 0; i < PER; i++) {
                const int id = (i * NW + w) * 32 + lane;
                const unsigned long long word = ((unsigned long long)key[i] << 32) | (0xffffffffu - (uint32_t)id);
                k += id < n && word >= c;
            }
            k = __reduce_add_sync(FULL, k);
            if (lane == 0) s_red[it & 1][w] = k;
            __syncthreads();
            int tot = 0;
#pragma unroll
            for (int v = 0; v < NW; v++) tot += s_red[it & 1][v];
            if (tot >= kk) W = c;
            it++;
        }
#pragma unroll
        for (int i = 0; i < PER; i++) {
            const int id = (i * NW + w) * 32 + lane;
            const unsigned long long word = ((unsigned long long)key[i] << 32) | (0xffffffffu - (uint32_t)id);
            if (id < n && word >= W) s_cand[atomicAdd(&s_n2, 1)] = word; /* exactly kk */
        }
        __syncthreads();
        nc = kk;
    }

    /* exact rank among the nc candidates (they hold the kk best) */
    for (int c = tid; c < nc; c += NW * 32) {
        const unsigned long long u = s_cand[c];
        int r = 0;
#pragma unroll 4
        for (int j = 0; j < nc; j++) r += s_cand[j] > u;
        if (r < kk) out[1 + r] = (int)(0xffffffffu - (uint32_t)u);
    }
}

template <int NW, int PER>
static void launch_cta(const msa_paged_kv *kv, const msa_attn_batch *b, int Hkv, int Bk, int top_k,
                       const float *scores, int32_t *selected, cudaStream_t st) {
    const int32_t *indptr = kv->idx_indptr ? kv->idx_indptr : kv->kv_indptr;
    topk_cta_kernel<NW, PER><<<(unsigned)(b->n_q * Hkv), NW * 32, 0, st>>>(
        scores, b->q_indptr, b->q_pos, kv->seq_len, indptr, selected, kv->n_seqs, Hkv, Bk, top_k,
        kv->max_blocks);
}

/* v6 for max_blocks <= 2048: NW warps, PER = the power of two that covers
 * max_blocks (at least 1) */
template <int NW>
static void launch_cta_nw(const msa_paged_kv *kv, const msa_attn_batch *b, int Hkv, int Bk, int top_k,
                          const float *scores, int32_t *selected, cudaStream_t st) {
    const int per = (kv->max_blocks + NW * 32 - 1) / (NW * 32);
    if (per <= 1) launch_cta<NW, 1>(kv, b, Hkv, Bk, top_k, scores, selected, st);
    else if (per <= 2) launch_cta<NW, 2>(kv, b, Hkv, Bk, top_k, scores, selected, st);
    else if (per <= 4) launch_cta<NW, 4>(kv, b, Hkv, Bk, top_k, scores, selected, st);
    else if (per <= 8) launch_cta<NW, 8>(kv, b, Hkv, Bk, top_k, scores, selected, st);
    else launch_cta<NW, 16>(kv, b, Hkv, Bk, top_k, scores, selected, st);
}

/* The version (tune->topk_version): 0 automatic (v6 up to TOPK6_MAX_RG
 * row-groups, v5 above, v4 past the warp kernels' limits); 4 the v4 CTA
 * kernel everywhere; 5 the warp kernel, 6 the multi-warp CTA kernel,
 * wherever they apply (top_k <= 32, at most 2048 blocks; v4 otherwise).
 * tune->topk_warps: 4, 8 or 16 warps per CTA wherever v6 runs, 0 automatic.
 * Every version is exact (the same selection); they differ in speed only. */
int msa_cuda_launch_topk(const msa_cuda_shape &sh, const msa_paged_kv *kv,
                         const msa_attn_batch *b, const float *scores, int32_t *selected,
                         cudaStream_t st, const msa_cuda_tuning *tune) {
    if (b->n_q <= 0) return MSA_OK;
    if (sh.top_k < 1 || sh.top_k > 512)
        return msa_error(MSA_EUNSUPPORTED, "CUDA top-k: top_k %d (1..512)", sh.top_k);
    if (kv->max_blocks > TOPK_MAX_BLOCKS)
        return msa_error(MSA_EUNSUPPORTED, "CUDA top-k: max_blocks %d (at most %d)",
                         kv->max_blocks, TOPK_MAX_BLOCKS);
    const int n_rg = b->n_q * sh.Hkv, mbk = kv->max_blocks;
    const bool small = sh.top_k <= TOPK_WARP_MAX_K && mbk <= TOPK_WARP_MAX_BLOCKS;
    int ver = tune ? tune->topk_version : 0;
    if (ver != 0 && ver != 4 && ver != 5 && ver != 6)
        return msa_error(MSA_EUNSUPPORTED, "CUDA top-k: version %d (0 automatic, 4, 5 or 6)", ver);
    if (ver == 0) ver = n_rg <= TOPK6_MAX_RG ? 6 : 5;
    if (ver == 6 && small) {
        int nw = tune ? tune->topk_warps : 0;
        if (nw != 4 && nw != 8 && nw != 16) nw = mbk <= 512 ? 4 : 8;
        if (nw == 4) launch_cta_nw<4>(kv, b, sh.Hkv, sh.Bk, sh.top_k, scores, selected, st);
        else if (nw == 8) launch_cta_nw<8>(kv, b, sh.Hkv, sh.Bk, sh.top_k, scores, selected, st);
        else launch_cta_nw<16>(kv, b, sh.Hkv, sh.Bk, sh.top_k, scores, selected, st);
        return MSA_CUDA_LAUNCHED("top-k CTA kernel");
    }
    if (ver != 4 && small) {
        const int mb = kv->max_blocks;
        if (mb <= 256) launch_warp<8>(kv, b, sh.Hkv, sh.Bk, sh.top_k, scores, selected, st);
        else if (mb <= 512) launch_warp<16>(kv, b, sh.Hkv, sh.Bk, sh.top_k, scores, selected, st);
        else if (mb <= 1024) launch_warp<32>(kv, b, sh.Hkv, sh.Bk, sh.top_k, scores, selected, st);
        else launch_warp<64>(kv, b, sh.Hkv, sh.Bk, sh.top_k, scores, selected, st);
        return MSA_CUDA_LAUNCHED("top-k warp kernel");
    }
    size_t smem = (size_t)kv->max_blocks * sizeof(uint32_t);
    static size_t optin[MSA_CUDA_MAX_DEVICES];
    int rc = msa_cuda_smem_optin((const void *)topk_kernel, TOPK_MAX_BLOCKS * 4, optin, "top-k: shared memory limit");
    if (rc) return rc;
    const int32_t *indptr = kv->idx_indptr ? kv->idx_indptr : kv->kv_indptr;
    topk_kernel<<<(unsigned)b->n_q * sh.Hkv, TOPK_THREADS, smem, st>>>(
        scores, b->q_indptr, b->q_pos, kv->seq_len, indptr, selected, kv->n_seqs, sh.Hkv, sh.Bk,
        sh.top_k, kv->max_blocks);
    return MSA_CUDA_LAUNCHED("top-k kernel");
}

/* The top-k launcher alone, from C (tests/test-kernels-cuda.c): scores
 * [n_q][Hkv][kv->max_blocks] on the device, selected [n_q][Hkv][top_k]. */
extern "C" int msa_cuda_topk_scores(const msa_paged_kv *kv, const msa_attn_batch *b, int Hkv, int Bk,
                                    int top_k, const float *scores, int32_t *selected, void *stream,
                                    const msa_cuda_tuning *tune) {
    msa_cuda_shape sh = {};
    sh.Hkv = Hkv; sh.Bk = Bk; sh.top_k = top_k;
    return msa_cuda_launch_topk(sh, kv, b, scores, selected, (cudaStream_t)stream, tune);
}
