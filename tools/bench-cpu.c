/*
 * bench-cpu.c: times one decode step (rows = 1) or one prefill chunk (the
 * last `rows` positions of the sequence) of the CPU MSA path against dense
 * attention, for 1 thread and for all cores.
 *
 *   bench-cpu [N tokens = 131072] [Hq = 32] [Hkv = 8] [d = 128] [d_idx = 128]
 *             [Bk = 128] [k = 16] [reps = 5] [rows = 1]
 *
 * One sequence of N tokens in a pool with a shuffled block table, a shared
 * index key head, query rows at positions N - rows .. N - 1. Before timing
 * it checks that msa_attention equals msa_index_select +
 * msa_sparse_attention and that, with top_k covering every block, MSA
 * equals dense attention (for the last row). It then prints the median of
 * `reps` runs per call (dense attention: decode only) with the bytes each
 * must read once (index keys for the scan; K and V of
 * the selected blocks of every row, or of all blocks), the achieved GB/s,
 * which is what bounds a decode step, and the GFLOP/s of the arithmetic
 * (index dots of the scored blocks; QK and PV of the attended tokens), which
 * is what bounds a prefill chunk.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/msa.h"
#include "base/base.h"

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static float frand(void) {
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (float)((rng * 0x2545F4914F6CDD1DULL) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

typedef int (*call_fn)(const msa_attn_config *, const msa_paged_kv *,
                       const msa_attn_batch *, const msa_exec *);

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median_ms(call_fn fn, const msa_attn_config *cfg, const msa_paged_kv *kv,
                        const msa_attn_batch *bt, int threads, int reps) {
    msa_exec ex = msa_exec_default();
    ex.n_threads = threads;
    double ts[64];
    if (reps > 64) reps = 64;
    if (reps < 1) reps = 1;
    for (int r = 0; r < reps; r++) {
        double t0 = msa_now();
        int rc = fn(cfg, kv, bt, &ex);
        double t = (msa_now() - t0) * 1e3;
        if (rc) {
            fprintf(stderr, "bench-cpu: %s\n", msa_last_error());
            exit(1);
        }
        ts[r] = t;
    }
    qsort(ts, reps, sizeof(double), cmp_double);
    return reps % 2 ? ts[reps / 2] : 0.5 * (ts[reps / 2 - 1] + ts[reps / 2]);
}

int main(int argc, char **argv) {
    int N = argc > 1 ? atoi(argv[1]) : 131072;
    int Hq = argc > 2 ? atoi(argv[2]) : 32, Hkv = argc > 3 ? atoi(argv[3]) : 8;
    int d = argc > 4 ? atoi(argv[4]) : 128, di = argc > 5 ? atoi(argv[5]) : 128;
    int Bk = argc > 6 ? atoi(argv[6]) : 128, k = argc > 7 ? atoi(argv[7]) : 16;
    int reps = argc > 8 ? atoi(argv[8]) : 5;
    int R = argc > 9 ? atoi(argv[9]) : 1;
    int nb = (N + Bk - 1) / Bk;
    if (R < 1 || R > N) {
        fprintf(stderr, "bench-cpu: rows must be in 1..N\n");
        return 1;
    }

    msa_attn_config cfg = msa_attn_default_config();
    cfg.n_q_heads = Hq;
    cfg.n_kv_heads = Hkv;
    cfg.head_dim = d;
    cfg.idx_dim = di;
    cfg.block_size = Bk;
    cfg.top_k = k;

    size_t kv_floats = (size_t)nb * Hkv * Bk * d, idx_floats = (size_t)nb * Bk * di;
    float *K = malloc(kv_floats * 4), *V = malloc(kv_floats * 4), *KI = malloc(idx_floats * 4);
    size_t qn = (size_t)R * Hq * d;
    float *q = malloc(qn * 4), *qi = malloc((size_t)R * Hkv * di * 4);
    float *out = malloc(qn * 4), *out2 = malloc(qn * 4);
    int32_t *table = malloc(sizeof(int32_t) * nb), *sel = malloc(sizeof(int32_t) * R * Hkv * nb);
    int32_t *q_pos = malloc(sizeof(int32_t) * R);
    if (!K || !V || !KI || !q || !qi || !out || !out2 || !table || !sel || !q_pos) {
        fprintf(stderr, "bench-cpu: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < kv_floats; i++) K[i] = frand(), V[i] = frand();
    for (size_t i = 0; i < idx_floats; i++) KI[i] = frand();
    for (size_t i = 0; i < qn; i++) q[i] = frand();
    for (size_t i = 0; i < (size_t)R * Hkv * di; i++) qi[i] = frand();
    for (int r = 0; r < R; r++) q_pos[r] = N - R + r;
    for (int b = 0; b < nb; b++) table[b] = b;
    for (int b = nb - 1; b > 0; b--) {
        int j = (int)((rng = rng * 6364136223846793005ULL + 1) >> 33) % (b + 1);
        int32_t t = table[b];
        table[b] = table[j];
        table[j] = t;
    }
    int32_t indptr[2] = {0, nb}, seq_len[1] = {N}, q_indptr[2] = {0, R};
    msa_paged_kv kv = {MSA_DTYPE_F32, K, V, indptr, table, KI, NULL, NULL, seq_len, 1, nb};
    msa_attn_batch bt = {R, q_indptr, q_pos, q, qi, out, NULL, sel};

    /* validate */
    msa_exec ex = msa_exec_default();
    if (msa_attention(&cfg, &kv, &bt, &ex) || msa_index_select(&cfg, &kv, &bt, &ex)) {
        fprintf(stderr, "bench-cpu: %s\n", msa_last_error());
        return 1;
    }
    bt.out = out2;
    msa_sparse_attention(&cfg, &kv, &bt, &ex);
    int same = !memcmp(out, out2, qn * 4);
    /* dense work grows as rows x N: a prefill chunk checks its last row only */
    msa_attn_config all = cfg;
    all.top_k = nb;
    size_t last = (size_t)(R - 1) * Hq * d;
    msa_attn_batch one = {1, (int32_t[]){0, 1}, q_pos + R - 1, q + last,
                          qi + (size_t)(R - 1) * Hkv * di, out, NULL, sel};
    msa_attention(&all, &kv, &one, &ex);
    one.out = out2;
    one.selected = NULL;
    msa_dense_attention(&cfg, &kv, &one, &ex);
    double err = 0;
    for (int i = 0; i < Hq * d; i++) err = fmax(err, fabs(out[i] - out2[i]));
    printf("N %d rows %d Hq/Hkv/d %d/%d/%d d_idx %d Bk %d k %d: msa == select+sparse %s; "
           "msa(k = all) vs dense max err %.2e\n", N, R, Hq, Hkv, d, di, Bk, k,
           same ? "yes" : "NO", err);
    if (!same || !(err < 1e-4)) return 1;

    /* bytes read once per call; flops of the work done (a multiply-add is 2) */
    double idx_bytes = (double)N * di * 4;
    double sel_bytes = 0, idx_flops = 0, sel_flops = 0, dense_flops = 0;
    for (int r = 0; r < R; r++) {
        int local = q_pos[r] / Bk;
        int nsel = local + 1 < k ? local + 1 : k; /* blocks attended, the local one partly */
        double att = (double)(nsel - 1) * Bk + (q_pos[r] - local * Bk + 1);
        idx_flops += 2.0 * local * Bk * Hkv * di; /* full blocks before the local one */
        sel_flops += 4.0 * att * Hq * d;
        dense_flops += 4.0 * (q_pos[r] + 1) * Hq * d;
    }
    sel_bytes = (double)(k < nb ? k : nb) * Bk * Hkv * d * 4 * 2; /* one row's blocks */
    double dense_bytes = (double)N * Hkv * d * 4 * 2;
    bt.out = out;
    printf("%-22s %8s %12s %10s %10s %10s\n", "call", "threads", "MB read", "ms (med)",
           "GB/s", "GFLOP/s");
    int tl[2] = {1, msa_cpu_count()};
    for (int ti = 0; ti < 2; ti++) {
        if (ti == 1 && tl[1] == 1) break;
        int t = tl[ti];
        struct { const char *name; call_fn fn; double bytes, flops; } c[] = {
            {"msa_index_select", msa_index_select, idx_bytes, idx_flops},
            {"msa_sparse_attention", msa_sparse_attention, sel_bytes, sel_flops},
            {"msa_attention", msa_attention, idx_bytes + sel_bytes, idx_flops + sel_flops},
            {"msa_dense_attention", msa_dense_attention, dense_bytes, dense_flops},
        };
        for (int i = 0; i < (R > 1 ? 3 : 4); i++) { /* dense: decode only */
            double ms = median_ms(c[i].fn, &cfg, &kv, &bt, t, reps);
            printf("%-22s %8d %12.1f %10.3f %10.2f %10.2f\n", c[i].name, t, c[i].bytes / 1e6,
                   ms, c[i].bytes / ms / 1e6, c[i].flops / ms / 1e6);
        }
    }
    free(K); free(V); free(KI); free(q); free(qi); free(out); free(out2); free(table); free(sel);
    free(q_pos);
    return 0;
}
