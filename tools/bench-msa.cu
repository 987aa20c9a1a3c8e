/*
 * bench-msa.cu: times the CUDA MSA attention core against the dense
 * baseline in the same run, over context lengths from 8K to 1M tokens.
 *
 * For each shape (Hq/Hkv/d = 32/8/128 and 64/4/128; d_idx 128, Bk 128,
 * top_k 16, bf16, one shared index key head) it runs
 *
 *   decode, batch 1 and 8, N in {8K, 32K, 128K, 512K, 1M} (every sequence
 *           of the batch holds N tokens of its own)
 *   prefill, one chunk of 2048 rows at the end of N = 128K
 *
 * and reports, per layer: index scoring + block max-pool, top-k, sparse
 * attention over the selection, the whole MSA step (msa_cuda_attention) and
 * dense causal attention over every visible token (msa_cuda_dense_attention).
 * The index scan is also given as GB/s against the HBM bandwidth measured in
 * the same run (a 2 GB device-to-device copy, bytes read + written).
 *
 * Method (see the device notes): validation first (the selection and the
 * outputs of one decode batch against a host reference, and the whole step
 * against index_select + sparse), then warm-up, then each call timed as GPU
 * time: a run of calls captured in a CUDA graph, CUDA events around graph
 * replays, the median replay divided by the calls in it; when the bytes one call touches fit in 4x the L2,
 * consecutive repeats rotate over block tables that point at disjoint pool
 * slots, so that the numbers are HBM numbers and not L2 numbers. Inputs are
 * random (a counter hash on the device), never zeros.
 *
 *   bench-msa [--json FILE] [--quick] [--reps N] [--topk-only]
 *
 * --topk-only times the top-k alone (on the block scores of the step): the
 * v4, v5 and v6 at 4, 8 and 16 warps forced, then the automatic choice
 * (msa_cuda_tuning's topk_version / topk_warps), and skips the rest. The
 * prefill rows also time the older sparse attention and index versions of
 * the kernel lab (kernels/lab/lab.h, linked from msa_kernels_lab).
 */
#include <algorithm>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <vector>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda.h"
#include "kernels/lab/lab.h"

#define CK(x)                                                                             \
    do {                                                                                  \
        cudaError_t e_ = (x);                                                             \
        if (e_ != cudaSuccess) {                                                          \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)
#define OK(x)                                                                             \
    do {                                                                                  \
        int r_ = (x);                                                                     \
        if (r_ != 0) {                                                                    \
            fprintf(stderr, "%s:%d: %s: %s: %s\n", __FILE__, __LINE__, #x, msa_strerror(r_), \
                    msa_last_error());                                                    \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

/* ---- random bf16 on the device ---------------------------------------------- */

__device__ __forceinline__ uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
/* approximately normal (sum of 4 uniforms, variance matched) times sd */
__global__ void fill_bf16(__nv_bfloat16 *x, size_t n, uint64_t seed, float sd) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint64_t h = mix64(seed ^ mix64(i));
        float s = 0;
        for (int j = 0; j < 4; j++) s += (float)((h >> (16 * j)) & 0xffff) * (1.0f / 65536.0f);
        x[i] = __float2bfloat16((s - 2.0f) * 1.7320508f * sd);
    }
}
static void fill(void *p, size_t n, uint64_t seed, float sd) {
    fill_bf16<<<2048, 256>>>((__nv_bfloat16 *)p, n, seed, sd);
    CK(cudaGetLastError());
}

static float bf2f(uint16_t h) { return msa_bf16_to_f32(h); }

/* ---- timing ------------------------------------------------------------------- */

template <typename F>
static double time_us(F fn, int reps, int warm = 3) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < warm; i++) fn(i);
    CK(cudaDeviceSynchronize());
    std::vector<float> t;
    for (int i = 0; i < reps; i++) {
        CK(cudaEventRecord(a));
        fn(warm + i);
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms);
    }
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    std::sort(t.begin(), t.end());
    return 1000.0 * t[t.size() / 2];
}

/* GPU time of one call: `per` calls (rotating inputs) are captured in a CUDA
 * graph, so that host launch overhead stays out; the median over `launches`
 * replays of the graph, divided by `per`. */
template <typename F>
static double time_graph_us(F fn, int per, int launches = 5) {
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    for (int i = 0; i < 3; i++) fn(i, st);
    CK(cudaStreamSynchronize(st));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < per; i++) fn(i, st);
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaGraphLaunch(ge, st));
    CK(cudaStreamSynchronize(st));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    std::vector<float> t;
    for (int r = 0; r < launches; r++) {
        CK(cudaEventRecord(a, st));
        CK(cudaGraphLaunch(ge, st));
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms / per);
    }
    std::sort(t.begin(), t.end());
    CK(cudaEventDestroy(a)); CK(cudaEventDestroy(b));
    CK(cudaGraphExecDestroy(ge)); CK(cudaGraphDestroy(g)); CK(cudaStreamDestroy(st));
    return 1000.0 * t[t.size() / 2];
}

static double hbm_gbs(void) {
    size_t bytes = (size_t)2 << 30;
    void *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    fill(a, bytes / 2, 1, 1.0f);
    double us = time_us([&](int) { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, 10);
    CK(cudaFree(a));
    CK(cudaFree(b));
    return 2.0 * bytes / (us * 1e-6) / 1e9;
}

/* ---- one problem ---------------------------------------------------------------- */

struct shape { int Hq, Hkv, d; };

struct pools {
    shape sh;
    int Bk, d_idx;
    long n_slots;
    void *k, *v, *kidx;
};

struct problem {
    int B, rows, N;       /* sequences, rows per sequence, tokens per sequence */
    int nb, nrot;
    int32_t *kv_indptr, *tables; /* tables: [nrot][B * nb] */
    int32_t *seq_len, *q_indptr, *q_pos, *selected;
    void *q, *q_idx, *out;
    float *lse;
    void *ws;
    size_t ws_bytes;
};

static msa_attn_config make_cfg(const pools &P) {
    msa_attn_config c;
    memset(&c, 0, sizeof c);
    c.n_q_heads = P.sh.Hq; c.n_kv_heads = P.sh.Hkv; c.head_dim = P.sh.d; c.idx_dim = P.d_idx;
    c.idx_key_heads = 1; c.block_size = P.Bk; c.top_k = 16; c.scale = 0;
    return c;
}

static problem make_problem(const pools &P, int B, int rows, int N, size_t l2_bytes, uint64_t seed) {
    problem p;
    memset(&p, 0, sizeof p);
    p.B = B; p.rows = rows; p.N = N;
    p.nb = (N + P.Bk - 1) / P.Bk;
    /* bytes one MSA step touches, roughly: the index keys */
    size_t step_bytes = (size_t)B * p.nb * P.Bk * P.d_idx * 2;
    p.nrot = 1;
    while (p.nrot < 8 && (size_t)p.nrot * step_bytes < 4 * l2_bytes &&
           (long)(p.nrot + 1) * B * p.nb <= P.n_slots)
        p.nrot++;
    /* tables: a random permutation of slots, each rotation disjoint */
    std::vector<int32_t> perm(P.n_slots);
    for (long i = 0; i < P.n_slots; i++) perm[i] = (int32_t)i;
    srand((unsigned)seed);
    for (long i = P.n_slots - 1; i > 0; i--) std::swap(perm[i], perm[rand() % (i + 1)]);
    std::vector<int32_t> tab((size_t)p.nrot * B * p.nb), indptr(B + 1), qind(B + 1), pos((size_t)B * rows), len(B);
    for (size_t i = 0; i < tab.size(); i++) tab[i] = perm[i];
    for (int s = 0; s <= B; s++) { indptr[s] = s * p.nb; qind[s] = s * rows; }
    for (int s = 0; s < B; s++) {
        len[s] = N;
        for (int j = 0; j < rows; j++) pos[(size_t)s * rows + j] = N - rows + j;
    }
    auto up = [](const std::vector<int32_t> &v) {
        int32_t *d;
        CK(cudaMalloc(&d, v.size() * 4));
        CK(cudaMemcpy(d, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
        return d;
    };
    p.tables = up(tab); p.kv_indptr = up(indptr); p.q_indptr = up(qind); p.q_pos = up(pos); p.seq_len = up(len);
    const int n_q = B * rows;
    CK(cudaMalloc(&p.q, (size_t)n_q * P.sh.Hq * P.sh.d * 2));
    CK(cudaMalloc(&p.q_idx, (size_t)n_q * P.sh.Hkv * P.d_idx * 2));
    CK(cudaMalloc(&p.out, (size_t)n_q * P.sh.Hq * P.sh.d * 2));
    CK(cudaMalloc(&p.lse, (size_t)n_q * P.sh.Hq * 4));
    CK(cudaMalloc(&p.selected, (size_t)n_q * P.sh.Hkv * 16 * 4));
    fill(p.q, (size_t)n_q * P.sh.Hq * P.sh.d, seed + 11, 1.0f);
    fill(p.q_idx, (size_t)n_q * P.sh.Hkv * P.d_idx, seed + 12, 1.0f);
    msa_attn_config cfg = make_cfg(P);
    p.ws_bytes = msa_cuda_workspace_size(&cfg, n_q, p.nb);
    CK(cudaMalloc(&p.ws, p.ws_bytes));
    return p;
}

static void free_problem(problem &p) {
    cudaFree(p.tables); cudaFree(p.kv_indptr); cudaFree(p.q_indptr); cudaFree(p.q_pos); cudaFree(p.seq_len);
    cudaFree(p.q); cudaFree(p.q_idx); cudaFree(p.out); cudaFree(p.lse); cudaFree(p.selected); cudaFree(p.ws);
}

static msa_paged_kv kv_of(const pools &P, const problem &p, int rot) {
    msa_paged_kv kv;
    memset(&kv, 0, sizeof kv);
    kv.dtype = MSA_DTYPE_BF16;
    kv.k = P.k; kv.v = P.v; kv.kidx = P.kidx;
    kv.kv_indptr = p.kv_indptr;
    kv.kv_table = p.tables + (size_t)(rot % p.nrot) * p.B * p.nb;
    kv.seq_len = p.seq_len;
    kv.n_seqs = p.B;
    kv.max_blocks = p.nb;
    return kv;
}
static msa_attn_batch batch_of(const problem &p) {
    msa_attn_batch b;
    memset(&b, 0, sizeof b);
    b.n_q = p.B * p.rows; b.q_indptr = p.q_indptr; b.q_pos = p.q_pos;
    b.q = p.q; b.q_idx = p.q_idx; b.out = p.out; b.lse = p.lse; b.selected = p.selected;
    return b;
}
static msa_exec exec_of(const problem &p) {
    msa_exec e;
    memset(&e, 0, sizeof e);
    e.device = MSA_DEVICE_CUDA; e.workspace = p.ws; e.workspace_size = p.ws_bytes;
    return e;
}

/* ---- validation ------------------------------------------------------------------ */

template <typename T> static std::vector<T> down(const void *d, size_t n) {
    std::vector<T> h(n);
    CK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

/* Host reference for sequence 0 of a decode problem: the selection of every
 * group (near-ties allowed) and the MSA and dense outputs of every head. */
static int validate(const pools &P, problem &p) {
    msa_attn_config cfg = make_cfg(P);
    msa_paged_kv kv = kv_of(P, p, 0);
    msa_attn_batch bt = batch_of(p);
    msa_exec ex = exec_of(p);
    const int Hq = P.sh.Hq, Hkv = P.sh.Hkv, d = P.sh.d, di = P.d_idx, Bk = P.Bk, nb = p.nb, K = 16;
    const int G = Hq / Hkv, n_q = p.B * p.rows;
    OK(msa_cuda_attention(&cfg, &kv, &bt, &ex, NULL));
    CK(cudaDeviceSynchronize());
    auto sel = down<int32_t>(p.selected, (size_t)n_q * Hkv * K);
    auto out = down<uint16_t>(p.out, (size_t)n_q * Hq * d);
    auto lse = down<float>(p.lse, (size_t)n_q * Hq);
    OK(msa_cuda_index_select(&cfg, &kv, &bt, &ex, NULL));
    OK(msa_cuda_sparse_attention(&cfg, &kv, &bt, &ex, NULL));
    CK(cudaDeviceSynchronize());
    auto sel2 = down<int32_t>(p.selected, (size_t)n_q * Hkv * K);
    auto out2 = down<uint16_t>(p.out, (size_t)n_q * Hq * d);
    int bad = 0;
    if (sel != sel2 || out != out2) { printf("  step != index_select + sparse\n"); bad++; }
    OK(msa_cuda_dense_attention(&cfg, &kv, &bt, &ex, NULL));
    CK(cudaDeviceSynchronize());
    auto dout = down<uint16_t>(p.out, (size_t)n_q * Hq * d);
    auto dlse = down<float>(p.lse, (size_t)n_q * Hq);

    /* sequence 0, row 0 (position N-1) */
    auto tab = down<int32_t>(p.tables, nb);
    auto qv = down<uint16_t>(p.q, (size_t)Hq * d);
    auto qi = down<uint16_t>(p.q_idx, (size_t)Hkv * di);
    const int pos = p.N - 1, local = pos / Bk;
    std::vector<uint16_t> kb((size_t)Bk * di), kvb((size_t)Hkv * Bk * d), vvb((size_t)Hkv * Bk * d);
    std::vector<double> score((size_t)Hkv * nb, -INFINITY);
    for (int b = 0; b < nb; b++) {
        CK(cudaMemcpy(kb.data(), (const uint16_t *)P.kidx + (size_t)tab[b] * Bk * di, kb.size() * 2, cudaMemcpyDeviceToHost));
        for (int g = 0; g < Hkv; g++)
            for (int t = 0; t < Bk && b * Bk + t <= pos; t++) {
                double dot = 0;
                for (int e = 0; e < di; e++) dot += (double)bf2f(qi[g * di + e]) * bf2f(kb[(size_t)t * di + e]);
                score[(size_t)g * nb + b] = std::max(score[(size_t)g * nb + b], dot / sqrt((double)di));
            }
    }
    int ties = 0;
    for (int g = 0; g < Hkv; g++) {
        const int32_t *gs = &sel[(size_t)g * K];
        std::vector<int> cand(local);
        for (int b = 0; b < local; b++) cand[b] = b;
        std::sort(cand.begin(), cand.end(), [&](int a, int b) {
            double sa = score[(size_t)g * nb + a], sb = score[(size_t)g * nb + b];
            return sa > sb || (sa == sb && a < b);
        });
        if (gs[0] != local) bad++;
        int kk = std::min(K - 1, local);
        double kth = kk ? score[(size_t)g * nb + cand[kk - 1]] : 0;
        for (int j = 1; j <= kk; j++) {
            int b = gs[j];
            if (b < 0 || b >= local) { bad++; continue; }
            if (std::find(cand.begin(), cand.begin() + kk, b) == cand.begin() + kk) {
                if (score[(size_t)g * nb + b] >= kth - 1e-3 * fabs(kth)) ties++;
                else bad++;
            }
        }
    }
    /* attention for every head of row 0: over the GPU selection, and dense */
    double worst = 1, worst_d = 1, worst_l = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int g = 0; g < Hkv; g++) {
            std::vector<int> blocks;
            if (pass == 0) { for (int j = 0; j < K; j++) if (sel[(size_t)g * K + j] >= 0) blocks.push_back(sel[(size_t)g * K + j]); }
            else for (int b = 0; b <= local; b++) blocks.push_back(b);
            std::vector<double> m(G, -INFINITY), l(G, 0), acc((size_t)G * d, 0);
            for (int b : blocks) {
                size_t off = ((size_t)tab[b] * Hkv + g) * Bk * d;
                CK(cudaMemcpy(kvb.data(), (const uint16_t *)P.k + off, (size_t)Bk * d * 2, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(vvb.data(), (const uint16_t *)P.v + off, (size_t)Bk * d * 2, cudaMemcpyDeviceToHost));
                for (int hh = 0; hh < G; hh++)
                    for (int t = 0; t < Bk && b * Bk + t <= pos; t++) {
                        double dot = 0;
                        for (int e = 0; e < d; e++) dot += (double)bf2f(qv[(size_t)(g * G + hh) * d + e]) * bf2f(kvb[(size_t)t * d + e]);
                        dot /= sqrt((double)d);
                        double mn = std::max(m[hh], dot), a = exp(m[hh] - mn), w = exp(dot - mn);
                        for (int e = 0; e < d; e++) acc[(size_t)hh * d + e] = acc[(size_t)hh * d + e] * a + w * bf2f(vvb[(size_t)t * d + e]);
                        l[hh] = l[hh] * a + w;
                        m[hh] = mn;
                    }
            }
            for (int hh = 0; hh < G; hh++) {
                const int head = g * G + hh;
                const std::vector<uint16_t> &o = pass == 0 ? out : dout;
                const std::vector<float> &ls = pass == 0 ? lse : dlse;
                double dot = 0, n1 = 0, n2 = 0;
                for (int e = 0; e < d; e++) {
                    double x = bf2f(o[(size_t)head * d + e]), y = acc[(size_t)hh * d + e] / l[hh];
                    dot += x * y; n1 += x * x; n2 += y * y;
                }
                double cs = dot / sqrt(n1 * n2), le = fabs(ls[head] - (m[hh] + log(l[hh])));
                if (!(cs > 0.9999) || !(le < 1e-3)) bad++;
                if (pass == 0) worst = std::min(worst, cs); else worst_d = std::min(worst_d, cs);
                worst_l = std::max(worst_l, le);
            }
        }
    }
    printf("  validation %d/%d/%d N=%d B=%d: %s (selection near-ties %d; cosine msa %.6f dense %.6f; |dlse| %.1e)\n",
           Hq, Hkv, d, p.N, p.B, bad ? "FAILED" : "ok", ties, worst, worst_d, worst_l);
    return bad;
}

/* ---- main ------------------------------------------------------------------------ */

struct result {
    shape sh;
    int B, rows, N;
    double t_index, t_topk, t_sparse, t_step, t_dense, idx_gbs, t_topk_v4;
    double t_topk_v5, t_topk_v6[3]; /* --topk-only: v5, v6 at 4 / 8 / 16 warps */
};

int main(int argc, char **argv) {
    const char *json = NULL;
    int quick = 0, reps = 20, topk_only = 0, prefill_only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--topk-only")) topk_only = 1;
        else if (!strcmp(argv[i], "--prefill")) prefill_only = 1; /* the prefill and the 128K decode rows */
        else { fprintf(stderr, "usage: bench-msa [--json FILE] [--quick] [--reps N] [--topk-only]\n"); return 2; }
    }
    if (msa_cuda_device_count() <= 0) { printf("bench-msa: no CUDA device\n"); return 77; }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    const double hbm = hbm_gbs();
    char date[64];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
    printf("bench-msa: %s, %d SMs, L2 %d MB, %.1f GB; measured HBM copy %.0f GB/s; %s\n", prop.name,
           prop.multiProcessorCount, prop.l2CacheSize >> 20, prop.totalGlobalMem / 1e9, hbm, date);

    const shape shapes[2] = {{32, 8, 128}, {64, 4, 128}};
    std::vector<int> Ns = {8192, 32768, 131072, 524288, 1048576};
    if (quick) Ns = {8192, 131072};
    if (prefill_only) Ns = {131072};
    const int maxB = 8, maxN = Ns.back();
    std::vector<result> res;
    int failures = 0;
    for (const shape &sh : shapes) {
        pools P;
        P.sh = sh; P.Bk = 128; P.d_idx = 128;
        P.n_slots = (long)maxB * (maxN / P.Bk);
        const size_t kv_elems = (size_t)P.n_slots * sh.Hkv * P.Bk * sh.d;
        CK(cudaMalloc(&P.k, kv_elems * 2));
        CK(cudaMalloc(&P.v, kv_elems * 2));
        CK(cudaMalloc(&P.kidx, (size_t)P.n_slots * P.Bk * P.d_idx * 2));
        fill(P.k, kv_elems, 101, 1.0f);
        fill(P.v, kv_elems, 102, 1.0f);
        fill(P.kidx, (size_t)P.n_slots * P.Bk * P.d_idx, 103, 1.0f);
        CK(cudaDeviceSynchronize());
        msa_attn_config cfg = make_cfg(P);

        struct run { int B, rows, N; };
        std::vector<run> runs;
        for (int B : {1, 8})
            for (int N : Ns) runs.push_back({B, 1, N});
        runs.push_back({1, 2048, 131072});
        bool validated = false;
        for (const run &r : runs) {
            problem p = make_problem(P, r.B, r.rows, r.N, prop.l2CacheSize, 7 + r.N + r.B);
            if (!validated && !topk_only) {
                failures += validate(P, p);
                validated = true;
            }
            msa_attn_batch bt = batch_of(p);
            msa_exec ex = exec_of(p);
            msa_cuda_shape cs;
            cs.Hq = sh.Hq; cs.Hkv = sh.Hkv; cs.G = sh.Hq / sh.Hkv; cs.d = sh.d; cs.d_idx = P.d_idx;
            cs.idx_heads = 1; cs.Bk = P.Bk; cs.top_k = 16; cs.scale = 1.0f / sqrtf((float)sh.d);
            float *scores = (float *)p.ws;
            msa_paged_kv kv0 = kv_of(P, p, 0);
            OK(msa_cuda_attention(&cfg, &kv0, &bt, &ex, NULL)); /* a selection for the sparse timing */
            result R;
            R.sh = sh; R.B = r.B; R.rows = r.rows; R.N = r.N;
            const int rp = r.rows > 1 ? 3 : reps;
            auto ex_on = [&](cudaStream_t st) { msa_exec e = ex; e.stream = st; return e; };
            R.t_index = R.t_sparse = R.t_step = R.t_dense = R.t_topk_v4 = R.t_topk_v5 = 0;
            R.t_topk_v6[0] = R.t_topk_v6[1] = R.t_topk_v6[2] = 0;
            if (topk_only) { /* top-k alone: automatic, then each version (topk.cu) */
                auto tk = [&](int ver, int warps) {
                    msa_cuda_tuning tune = {};
                    tune.topk_version = ver;
                    tune.topk_warps = warps;
                    return time_graph_us([&](int i, cudaStream_t st) { msa_paged_kv kv = kv_of(P, p, i); OK(msa_cuda_launch_topk(cs, &kv, &bt, scores, p.selected, st, &tune)); }, rp);
                };
                R.idx_gbs = 0;
                R.t_topk_v4 = tk(4, 0);
                R.t_topk_v5 = tk(5, 0);
                R.t_topk_v6[0] = tk(6, 4);
                R.t_topk_v6[1] = tk(6, 8);
                R.t_topk_v6[2] = tk(6, 16);
                R.t_topk = tk(0, 0); /* last: the first timing of a shape reads slow at prefill */
                res.push_back(R);
                printf("  %2d/%d/%d %-7s B=%d rows=%-4d N=%-7d topk %7.2f us  (v4 %7.2f  v5 %7.2f  v6 w4 %7.2f  w8 %7.2f  w16 %7.2f us)\n",
                       sh.Hq, sh.Hkv, sh.d, r.rows > 1 ? "prefill" : "decode", r.B, r.rows, r.N, R.t_topk, R.t_topk_v4,
                       R.t_topk_v5, R.t_topk_v6[0], R.t_topk_v6[1], R.t_topk_v6[2]);
                fflush(stdout);
                free_problem(p);
                continue;
            }
            R.t_index = time_graph_us([&](int i, cudaStream_t st) { msa_paged_kv kv = kv_of(P, p, i); OK(msa_cuda_launch_index_scores(cs, &kv, &bt, scores, st)); }, rp);
            R.t_topk = time_graph_us([&](int i, cudaStream_t st) { msa_paged_kv kv = kv_of(P, p, i); OK(msa_cuda_launch_topk(cs, &kv, &bt, scores, p.selected, st, NULL)); }, rp);
            /* the selection of rotation 0 is used by every rotation: the tables
             * all have the same shape, so the work is the same */
            R.t_sparse = time_graph_us([&](int i, cudaStream_t st) { msa_paged_kv kv = kv_of(P, p, i); msa_exec e = ex_on(st); OK(msa_cuda_sparse_attention(&cfg, &kv, &bt, &e, NULL)); }, rp);
            if (r.rows > 1) { /* the previous sparse prefill kernels (block_attn.cu) and index scan (index_score.cu) */
                auto tv = [&](int ver) {
                    msa_cuda_tuning tune = {};
                    tune.attn_version = ver;
                    return time_graph_us([&](int i, cudaStream_t st) { msa_paged_kv kv = kv_of(P, p, i); msa_exec e = ex_on(st); OK(msa_cuda_lab_sparse_attention(&cfg, &kv, &bt, &e, &tune)); }, rp);
                };
                const double t7 = tv(7), t5 = tv(5), t4 = tv(4);
                R.t_sparse = tv(0); /* last: the first timing of a shape reads slow at prefill */
                msa_cuda_tuning tune4 = {};
                tune4.index_version = 4;
                const double ti4 = time_graph_us([&](int i, cudaStream_t st) { msa_paged_kv kv = kv_of(P, p, i); OK(msa_cuda_lab_launch_index_scores(cs, &kv, &bt, scores, st, &tune4)); }, rp);
                R.t_index = time_graph_us([&](int i, cudaStream_t st) { msa_paged_kv kv = kv_of(P, p, i); OK(msa_cuda_launch_index_scores(cs, &kv, &bt, scores, st)); }, rp);
                printf("  sparse prefill: v6 %.1f us (v6 32-token stages %.1f, v5 gather %.1f, v4 union tiles %.1f us); index: v5 %.1f us (v4 %.1f us)\n",
                       R.t_sparse, t7, t5, t4, R.t_index, ti4);
            }
            R.t_step = time_graph_us([&](int i, cudaStream_t st) { msa_paged_kv kv = kv_of(P, p, i); msa_exec e = ex_on(st); OK(msa_cuda_attention(&cfg, &kv, &bt, &e, NULL)); }, rp);
            R.t_dense = prefill_only ? 0 : time_graph_us([&](int i, cudaStream_t st) { msa_paged_kv kv = kv_of(P, p, i); msa_exec e = ex_on(st); OK(msa_cuda_dense_attention(&cfg, &kv, &bt, &e, NULL)); },
                                      r.N >= 524288 || r.rows > 1 ? 2 : rp, 3);
            const double idx_bytes = (double)r.B * p.nb * P.Bk * P.d_idx * 2;
            R.idx_gbs = idx_bytes / (R.t_index * 1e-6) / 1e9;
            res.push_back(R);
            printf("  %2d/%d/%d %-7s B=%d rows=%-4d N=%-7d index %8.1f us (%6.0f GB/s, %3.0f%%)  topk %7.1f  sparse %7.1f  step %8.1f  dense %9.1f us  dense/step %6.1fx  [rot %d]\n",
                   sh.Hq, sh.Hkv, sh.d, r.rows > 1 ? "prefill" : "decode", r.B, r.rows, r.N, R.t_index, R.idx_gbs,
                   100 * R.idx_gbs / hbm, R.t_topk, R.t_sparse, R.t_step, R.t_dense, R.t_dense / R.t_step, p.nrot);
            fflush(stdout);
            free_problem(p);
        }
        CK(cudaFree(P.k)); CK(cudaFree(P.v)); CK(cudaFree(P.kidx));
    }

    /* the table, last, for the reply's tail */
    printf("\n| shape Hq/Hkv/d | mode | B x rows | N | index+pool us | GB/s (%% HBM) | top-k us | sparse us | MSA step us | dense us | dense/MSA |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (const result &R : res)
        printf("| %d/%d/%d | %s | %dx%d | %dK | %.1f | %.0f (%.0f%%) | %.1f | %.1f | %.1f | %.1f | %.1fx |\n", R.sh.Hq, R.sh.Hkv,
               R.sh.d, R.rows > 1 ? "prefill" : "decode", R.B, R.rows, R.N / 1024, R.t_index, R.idx_gbs, 100 * R.idx_gbs / hbm,
               R.t_topk, R.t_sparse, R.t_step, R.t_dense, R.t_dense / R.t_step);
    printf("device %s, HBM copy %.0f GB/s, %s; validation %s\n", prop.name, hbm, date, failures ? "FAILED" : "ok");
    if (json) {
        FILE *f = fopen(json, "w");
        if (f) {
            fprintf(f, "{\"device\": \"%s\", \"date\": \"%s\", \"hbm_gbs\": %.1f, \"validation_failures\": %d, \"results\": [\n",
                    prop.name, date, hbm, failures);
            for (size_t i = 0; i < res.size(); i++) {
                const result &R = res[i];
                fprintf(f, "  {\"Hq\": %d, \"Hkv\": %d, \"d\": %d, \"B\": %d, \"rows\": %d, \"N\": %d, \"d_idx\": 128, \"Bk\": 128, \"top_k\": 16, "
                           "\"index_us\": %.2f, \"index_gbs\": %.1f, \"topk_us\": %.2f, \"topk_v4_us\": %.2f, \"topk_v5_us\": %.2f, "
                           "\"topk_v6_w4_us\": %.2f, \"topk_v6_w8_us\": %.2f, \"topk_v6_w16_us\": %.2f, \"sparse_us\": %.2f, \"step_us\": %.2f, \"dense_us\": %.2f}%s\n",
                        R.sh.Hq, R.sh.Hkv, R.sh.d, R.B, R.rows, R.N, R.t_index, R.idx_gbs, R.t_topk, R.t_topk_v4, R.t_topk_v5,
                        R.t_topk_v6[0], R.t_topk_v6[1], R.t_topk_v6[2], R.t_sparse, R.t_step, R.t_dense,
                        i + 1 < res.size() ? "," : "");
            }
            fprintf(f, "]}\n");
            fclose(f);
        }
    }
    return failures ? 1 : 0;
}
