/*
 * test-kernels-cuda.c: the CUDA backend of the MSA attention core against a
 * plain host reference, over a grid of shapes.
 *
 * For every case it draws fresh random inputs (bf16 or fp16 storage; the
 * reference reads the same rounded values and accumulates in double) and
 * scatters the blocks of each sequence over random pool slots. Then:
 *
 *   selection  msa_cuda_index_select vs the reference selection: same local
 *              block first, same sets; any other mismatch must be a near-tie
 *              (the two blocks' reference scores within 1e-3 relative), and
 *              the order after the local block must be by descending score;
 *   sparse     msa_cuda_attention (whole step) and msa_cuda_sparse_attention
 *              vs the reference attention over the GPU's selection: cosine
 *              > 0.9999 per (row, head), lse within 1e-3;
 *   dense      msa_cuda_dense_attention vs the reference over every visible
 *              token, same tolerances; and MSA == dense when top_k covers
 *              every visible block;
 *   guards     every output buffer has 256 guard bytes on each side filled
 *              with a pattern that must survive, and the interior is
 *              poisoned (NaN, 0x7f7f7f7f ids) so that unwritten elements show;
 *   bad input  a row whose q_pos is past its sequence gives selected = -1,
 *              out = 0, lse = -inf and reads nothing out of bounds.
 *
 * The same checks also run through the public API (msa_attention() etc.
 * with exec.device = CUDA), and on the prefill cases through the kernel
 * lab's launchers for each older attention and index version.
 *
 * Label gpu: exits 77 (skipped) when the build has no CUDA or no GPU is
 * visible. MSA_TEST_SEED replays a run.
 */
#include "engine/msa.h"
#include "base/base.h"
#include "tests/testutil.h"

#ifndef MSA_HAVE_CUDA
int main(void) { T_SKIP("built without CUDA"); }
#else

#include <cuda_runtime_api.h>

#include "kernels/cuda.h"
#include "kernels/lab/lab.h"
#include "kernels/ref.h"

/* Kernel versions are chosen per call with a msa_cuda_tuning (kernels/cuda.h):
 * the top-k versions through msa_cuda_topk_scores, the older attention and
 * index versions through the kernel lab's launchers (kernels/lab/lab.h). */

#define GUARD 256
#define GUARD_BYTE 0xA5

typedef struct {
    const char *name;
    int Hq, Hkv, d, d_idx, idx_heads, Bk, top_k;
    msa_dtype dtype;
    int n_seqs;
    int seq_len[8];
    int rows[8];      /* rows per sequence (decode: 1) */
    int row_pos_mode; /* 0: last positions of the sequence; 1: random positions */
    int separate_idx_table;
    int bad_row;      /* make row 0's q_pos past its sequence */
    int ties;         /* 1: integer index keys/queries (many exact ties);
                         2: one constant index key (every block ties) */
} tcase;

/* ---- host helpers ---------------------------------------------------------- */

static float h2f(msa_dtype dt, uint16_t h) {
    return dt == MSA_DTYPE_BF16 ? msa_bf16_to_f32(h) : msa_f16_to_f32(h);
}
static uint16_t f2h(msa_dtype dt, float f) {
    return dt == MSA_DTYPE_BF16 ? msa_f32_to_bf16(f) : msa_f32_to_f16(f);
}

static void fill_rand(msa_dtype dt, uint16_t *x, size_t n, float sd) {
    for (size_t i = 0; i < n; i++) x[i] = f2h(dt, sd * t_randn());
}

#define CU(expr)                                                                         \
    do {                                                                                 \
        cudaError_t e_ = (expr);                                                         \
        if (e_ != cudaSuccess) {                                                         \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr,                \
                    cudaGetErrorString(e_));                                             \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

static void *dev_copy(const void *h, size_t bytes) {
    void *d = NULL;
    CU(cudaMalloc(&d, bytes ? bytes : 16));
    if (bytes) CU(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}

/* An output buffer with guard bytes on each side; `poison` fills the inside. */
typedef struct {
    unsigned char *base; /* device */
    size_t bytes;
} guarded;

static guarded guarded_alloc(size_t bytes) {
    guarded g = {NULL, bytes};
    CU(cudaMalloc((void **)&g.base, bytes + 2 * GUARD));
    return g;
}
static void *guarded_ptr(guarded g) { return g.base + GUARD; }
static void guarded_reset(guarded g, int poison) {
    CU(cudaMemset(g.base, GUARD_BYTE, g.bytes + 2 * GUARD));
    CU(cudaMemset(g.base + GUARD, poison, g.bytes));
}
/* Copies the inside to host and checks both guards. */
static int guarded_fetch(guarded g, void *host) {
    unsigned char *tmp = malloc(g.bytes + 2 * GUARD);
    CU(cudaMemcpy(tmp, g.base, g.bytes + 2 * GUARD, cudaMemcpyDeviceToHost));
    int ok = 1;
    for (int i = 0; i < GUARD; i++)
        if (tmp[i] != GUARD_BYTE || tmp[GUARD + g.bytes + i] != GUARD_BYTE) ok = 0;
    memcpy(host, tmp + GUARD, g.bytes);
    free(tmp);
    return ok;
}

/* ---- the reference --------------------------------------------------------- */

typedef struct {
    const tcase *c;
    int n_q, max_blocks;
    int *q_indptr, *q_pos, *row_seq;
    int *kv_indptr, *kv_table, *idx_indptr, *idx_table;
    uint16_t *k, *v, *kidx, *q, *q_idx;
} hostdata;

static float hval(const hostdata *h, const uint16_t *x, size_t i) { return h2f(h->c->dtype, x[i]); }

/* Block score of (row, group, block), -inf when nothing visible. */
static double ref_block_score(const hostdata *h, int row, int grp, int b) {
    const tcase *c = h->c;
    int s = h->row_seq[row], lim = h->q_pos[row];
    int slot = h->idx_table[h->idx_indptr[s] + b];
    int kh = c->idx_heads == 1 ? 0 : grp;
    double best = -INFINITY;
    for (int t = 0; t < c->Bk; t++) {
        int p = b * c->Bk + t;
        if (p > lim || p >= c->seq_len[s]) break;
        double dot = 0;
        for (int e = 0; e < c->d_idx; e++)
            dot += (double)hval(h, h->q_idx, ((size_t)row * c->Hkv + grp) * c->d_idx + e) *
                   hval(h, h->kidx, (((size_t)slot * c->idx_heads + kh) * c->Bk + t) * c->d_idx + e);
        dot /= sqrt((double)c->d_idx);
        if (dot > best) best = dot;
    }
    return best;
}

/* Reference selection into sel[top_k]; returns the number chosen. */
static int ref_select(const hostdata *h, int row, int grp, int *sel, double *scores) {
    const tcase *c = h->c;
    int local = h->q_pos[row] / c->Bk, k = c->top_k;
    for (int i = 0; i < k; i++) sel[i] = -1;
    sel[0] = local;
    for (int b = 0; b < local; b++) scores[b] = ref_block_score(h, row, grp, b);
    int n = 1;
    char *used = calloc(local + 1, 1);
    while (n < k && n <= local) {
        int bi = -1;
        for (int b = 0; b < local; b++)
            if (!used[b] && (bi < 0 || scores[b] > scores[bi])) bi = b;
        used[bi] = 1;
        sel[n++] = bi;
    }
    free(used);
    return n;
}

/* Attention of (row, head) over the blocks in `blocks` (n of them, or every
 * visible block when blocks == NULL): out[d] and the natural-log lse. */
static void ref_attend(const hostdata *h, int row, int head, const int *blocks, int n,
                       double *out, double *lse) {
    const tcase *c = h->c;
    int s = h->row_seq[row], lim = h->q_pos[row], r = head / (c->Hq / c->Hkv);
    double scale = 1.0 / sqrt((double)c->d);
    int nb_vis = lim / c->Bk + 1;
    int cnt = blocks ? n : nb_vis;
    double m = -INFINITY, l = 0;
    double *acc = calloc(c->d, sizeof(double));
    double *qv = malloc(c->d * sizeof(double));
    for (int e = 0; e < c->d; e++) qv[e] = hval(h, h->q, ((size_t)row * c->Hq + head) * c->d + e);
    for (int i = 0; i < cnt; i++) {
        int b = blocks ? blocks[i] : i;
        if (b < 0) continue;
        int slot = h->kv_table[h->kv_indptr[s] + b];
        for (int t = 0; t < c->Bk; t++) {
            int p = b * c->Bk + t;
            if (p > lim) break;
            size_t base = (((size_t)slot * c->Hkv + r) * c->Bk + t) * c->d;
            double dot = 0;
            for (int e = 0; e < c->d; e++) dot += qv[e] * hval(h, h->k, base + e);
            dot *= scale;
            double mn = dot > m ? dot : m;
            double a = exp(m - mn), p1 = exp(dot - mn);
            for (int e = 0; e < c->d; e++) acc[e] = acc[e] * a + p1 * hval(h, h->v, base + e);
            l = l * a + p1;
            m = mn;
        }
    }
    for (int e = 0; e < c->d; e++) out[e] = l > 0 ? acc[e] / l : 0;
    *lse = l > 0 ? m + log(l) : -INFINITY;
    free(acc);
    free(qv);
}

/* Checks out/lse of every (row, head) against the reference; `sel` (the
 * GPU's selection, [n_q][Hkv][k]) or NULL for dense. */
static void check_attention(const hostdata *h, const char *what, const uint16_t *out,
                            const float *lse, const int *sel) {
    const tcase *c = h->c;
    int G = c->Hq / c->Hkv, bad = 0;
    double worst_cos = 1, worst_lse = 0;
    double *ref = malloc(c->d * sizeof(double));
    for (int i = 0; i < h->n_q; i++) {
        if (c->bad_row && i == 0) continue;
        for (int hd = 0; hd < c->Hq; hd++) {
            double rl;
            const int *bl = sel ? sel + ((size_t)i * c->Hkv + hd / G) * c->top_k : NULL;
            ref_attend(h, i, hd, bl, c->top_k, ref, &rl);
            double dot = 0, n1 = 0, n2 = 0;
            for (int e = 0; e < c->d; e++) {
                double g = h2f(c->dtype, out[((size_t)i * c->Hq + hd) * c->d + e]);
                dot += g * ref[e]; n1 += g * g; n2 += ref[e] * ref[e];
            }
            double cs = (n1 > 0 && n2 > 0) ? dot / sqrt(n1 * n2) : (n1 == n2 ? 1 : 0);
            if (!(cs > 0.9999)) bad++;
            if (!(cs >= worst_cos)) worst_cos = cs;
            double le = fabs((double)lse[(size_t)i * c->Hq + hd] - rl);
            if (!(le <= 1e-3)) bad++;
            if (!(le <= worst_lse)) worst_lse = le;
        }
    }
    CHECKF(bad == 0, "%s %s: %d (row, head) outside tolerance; worst cosine %.7f, worst |dlse| %.2e",
           c->name, what, bad, worst_cos, worst_lse);
    printf("  %-28s %-8s worst cosine %.7f  worst |dlse| %.2e\n", c->name, what, worst_cos, worst_lse);
    free(ref);
}

/* Selection check: local first, same set unless near-ties, descending order. */
static void check_selection(const hostdata *h, const int *sel) {
    const tcase *c = h->c;
    int k = c->top_k, bad = 0, ties = 0;
    int *rs = malloc(k * sizeof(int));
    double *scores = malloc((h->max_blocks + 1) * sizeof(double));
    for (int i = 0; i < h->n_q; i++) {
        for (int g = 0; g < c->Hkv; g++) {
            const int *gs = sel + ((size_t)i * c->Hkv + g) * k;
            if (c->bad_row && i == 0) {
                for (int j = 0; j < k; j++) bad += gs[j] != -1;
                continue;
            }
            int n = ref_select(h, i, g, rs, scores);
            if (gs[0] != rs[0]) { bad++; continue; }
            if (c->ties) { /* exact scores: the tie-break must match exactly */
                for (int j = 0; j < k; j++) bad += gs[j] != rs[j];
                continue;
            }
            for (int j = n; j < k; j++) bad += gs[j] != -1;
            /* the k-th best reference score: GPU picks must reach it (near-tie) */
            double kth = n > 1 ? scores[rs[n - 1]] : INFINITY;
            for (int j = 1; j < n; j++) {
                int b = gs[j];
                if (b < 0 || b >= rs[0]) { bad++; continue; }
                int found = 0;
                for (int q = 1; q < n; q++) found |= rs[q] == b;
                if (!found) {
                    double tol = 1e-3 * fabs(kth) + 1e-5;
                    if (scores[b] >= kth - tol) ties++;
                    else bad++;
                }
                if (j > 1 && gs[j - 1] >= 0 && gs[j - 1] < rs[0] && scores[gs[j - 1]] < scores[b] - 1e-3 * fabs(scores[b]) - 1e-5) bad++;
            }
        }
    }
    CHECKF(bad == 0, "%s selection: %d mismatches (%d near-ties accepted)", c->name, bad, ties);
    printf("  %-28s select   %d near-ties, %d mismatches\n", c->name, ties, bad);
    free(rs);
    free(scores);
}

/* The public API on the CPU (fp32, kernels/attention.c) on the same rounded
 * inputs: its selection must equal the GPU's (or differ by near-ties, which
 * check_selection already vetted), and where the two selections agree the
 * outputs must agree (cosine > 0.9999, lse within 1e-3). `dense` compares
 * msa_dense_attention instead. */
static void check_against_cpu(const hostdata *h, const msa_attn_config *cfg, int dense,
                              const uint16_t *gout, const float *glse, const int *gsel) {
    const tcase *c = h->c;
    int total_blocks = h->kv_indptr[c->n_seqs];
    int n_slots = total_blocks + 3;
    size_t kv_n = (size_t)n_slots * c->Hkv * c->Bk * c->d;
    size_t ki_n = (size_t)n_slots * c->idx_heads * c->Bk * c->d_idx;
    size_t q_n = (size_t)h->n_q * c->Hq * c->d, qi_n = (size_t)h->n_q * c->Hkv * c->d_idx;
    float *k = malloc(kv_n * 4), *v = malloc(kv_n * 4), *ki = malloc(ki_n * 4);
    float *q = malloc(q_n * 4), *qi = malloc(qi_n * 4), *out = malloc(q_n * 4);
    float *lse = malloc((size_t)h->n_q * c->Hq * 4);
    int *sel = malloc((size_t)h->n_q * c->Hkv * c->top_k * 4);
    int *seq_len = malloc(c->n_seqs * sizeof(int));
    for (size_t i = 0; i < kv_n; i++) { k[i] = hval(h, h->k, i); v[i] = hval(h, h->v, i); }
    for (size_t i = 0; i < ki_n; i++) ki[i] = hval(h, h->kidx, i);
    for (size_t i = 0; i < q_n; i++) q[i] = hval(h, h->q, i);
    for (size_t i = 0; i < qi_n; i++) qi[i] = hval(h, h->q_idx, i);
    for (int s = 0; s < c->n_seqs; s++) seq_len[s] = c->seq_len[s];
    msa_paged_kv kv = {0};
    kv.dtype = MSA_DTYPE_F32; kv.k = k; kv.v = v; kv.kidx = ki;
    kv.kv_indptr = h->kv_indptr; kv.kv_table = h->kv_table;
    kv.idx_indptr = h->idx_indptr; kv.idx_table = h->idx_table;
    kv.seq_len = seq_len; kv.n_seqs = c->n_seqs; kv.max_blocks = h->max_blocks;
    msa_attn_batch bt = {0};
    bt.n_q = h->n_q; bt.q_indptr = h->q_indptr; bt.q_pos = h->q_pos; bt.q = q; bt.q_idx = qi;
    bt.out = out; bt.lse = lse; bt.selected = dense ? NULL : sel;
    msa_exec ex = msa_exec_default();
    int rc = dense ? msa_dense_attention(cfg, &kv, &bt, &ex) : msa_attention(cfg, &kv, &bt, &ex);
    CHECKF(rc == MSA_OK, "%s: CPU reference failed: %s", c->name, msa_last_error());
    if (rc == MSA_OK) {
        int G = c->Hq / c->Hkv, bad = 0, differ = 0;
        double worst = 1, worst_lse = 0;
        for (int i = 0; i < h->n_q; i++)
            for (int g = 0; g < c->Hkv; g++) {
                if (!dense) {
                    const int *a = sel + ((size_t)i * c->Hkv + g) * c->top_k;
                    const int *b = gsel + ((size_t)i * c->Hkv + g) * c->top_k;
                    if (memcmp(a, b, c->top_k * sizeof(int)) != 0) { differ++; continue; }
                }
                for (int hh = g * G; hh < (g + 1) * G; hh++) {
                    double dot = 0, n1 = 0, n2 = 0;
                    for (int e = 0; e < c->d; e++) {
                        double x = h2f(c->dtype, gout[((size_t)i * c->Hq + hh) * c->d + e]);
                        double y = out[((size_t)i * c->Hq + hh) * c->d + e];
                        dot += x * y; n1 += x * x; n2 += y * y;
                    }
                    double cs = (n1 > 0 && n2 > 0) ? dot / sqrt(n1 * n2) : (n1 == n2 ? 1 : 0);
                    double le = fabs((double)glse[(size_t)i * c->Hq + hh] - lse[(size_t)i * c->Hq + hh]);
                    if (!(cs > 0.9999) || !(le <= 1e-3)) bad++;
                    if (!(cs >= worst)) worst = cs;
                    if (!(le <= worst_lse)) worst_lse = le;
                }
            }
        CHECKF(bad == 0, "%s: GPU vs CPU public API (%s): %d heads outside tolerance", c->name,
               dense ? "dense" : "msa", bad);
        printf("  %-28s vs-cpu %-5s worst cosine %.7f  worst |dlse| %.2e  (%d row-groups with other near-tie picks)\n",
               c->name, dense ? "dense" : "msa", worst, worst_lse, differ);
    }
    free(k); free(v); free(ki); free(q); free(qi); free(out); free(lse); free(sel); free(seq_len);
}

/* ---- one case -------------------------------------------------------------- */

static void run_case(const tcase *c, int use_public, const msa_cuda_tuning *tune) {
    hostdata h = {0};
    h.c = c;
    const int G = c->Hq / c->Hkv;
    (void)G;
    /* rows */
    int n_q = 0;
    for (int s = 0; s < c->n_seqs; s++) n_q += c->rows[s];
    h.n_q = n_q;
    h.q_indptr = calloc(c->n_seqs + 1, sizeof(int));
    h.q_pos = calloc(n_q, sizeof(int));
    h.row_seq = calloc(n_q, sizeof(int));
    for (int s = 0, i = 0; s < c->n_seqs; s++) {
        h.q_indptr[s + 1] = h.q_indptr[s] + c->rows[s];
        for (int j = 0; j < c->rows[s]; j++, i++) {
            h.row_seq[i] = s;
            h.q_pos[i] = c->row_pos_mode ? t_randint(c->seq_len[s]) : c->seq_len[s] - c->rows[s] + j;
        }
    }
    /* block tables over scattered slots */
    int total_blocks = 0, max_blocks = 0;
    h.kv_indptr = calloc(c->n_seqs + 1, sizeof(int));
    for (int s = 0; s < c->n_seqs; s++) {
        int nb = (c->seq_len[s] + c->Bk - 1) / c->Bk;
        h.kv_indptr[s + 1] = h.kv_indptr[s] + nb;
        total_blocks += nb;
        if (nb > max_blocks) max_blocks = nb;
    }
    h.max_blocks = max_blocks;
    const int n_slots = total_blocks + 3; /* a few unused slots */
    h.kv_table = malloc(total_blocks * sizeof(int));
    h.idx_table = malloc(total_blocks * sizeof(int));
    int *perm = malloc(n_slots * sizeof(int));
    for (int i = 0; i < n_slots; i++) perm[i] = i;
    for (int i = n_slots - 1; i > 0; i--) { int j = t_randint(i + 1), t = perm[i]; perm[i] = perm[j]; perm[j] = t; }
    for (int i = 0; i < total_blocks; i++) h.kv_table[i] = perm[i];
    for (int i = n_slots - 1; i > 0; i--) { int j = t_randint(i + 1), t = perm[i]; perm[i] = perm[j]; perm[j] = t; }
    for (int i = 0; i < total_blocks; i++) h.idx_table[i] = c->separate_idx_table ? perm[i] : h.kv_table[i];
    h.idx_indptr = h.kv_indptr;
    /* data */
    size_t kv_n = (size_t)n_slots * c->Hkv * c->Bk * c->d;
    size_t ki_n = (size_t)n_slots * c->idx_heads * c->Bk * c->d_idx;
    size_t q_n = (size_t)n_q * c->Hq * c->d, qi_n = (size_t)n_q * c->Hkv * c->d_idx;
    h.k = malloc(kv_n * 2); h.v = malloc(kv_n * 2); h.kidx = malloc(ki_n * 2);
    h.q = malloc(q_n * 2); h.q_idx = malloc(qi_n * 2);
    fill_rand(c->dtype, h.k, kv_n, 1.0f);
    fill_rand(c->dtype, h.v, kv_n, 1.0f);
    fill_rand(c->dtype, h.kidx, ki_n, 1.0f);
    fill_rand(c->dtype, h.q, q_n, 1.5f);
    fill_rand(c->dtype, h.q_idx, qi_n, 1.0f);
    if (c->ties) { /* small integers: dot products are exact in fp32 */
        for (size_t i = 0; i < ki_n; i++) h.kidx[i] = f2h(c->dtype, c->ties == 2 ? 1.0f : (float)(t_randint(3) - 1));
        for (size_t i = 0; i < qi_n; i++) h.q_idx[i] = f2h(c->dtype, (float)(t_randint(3) - 1));
    }
    if (c->bad_row) h.q_pos[0] = c->seq_len[h.row_seq[0]] + 5;

    /* device copies */
    int *seq_len_h = malloc(c->n_seqs * sizeof(int));
    for (int s = 0; s < c->n_seqs; s++) seq_len_h[s] = c->seq_len[s];
    msa_paged_kv kv = {0};
    kv.dtype = c->dtype;
    kv.k = dev_copy(h.k, kv_n * 2);
    kv.v = dev_copy(h.v, kv_n * 2);
    kv.kidx = dev_copy(h.kidx, ki_n * 2);
    kv.kv_indptr = dev_copy(h.kv_indptr, (c->n_seqs + 1) * sizeof(int));
    kv.kv_table = dev_copy(h.kv_table, total_blocks * sizeof(int));
    kv.idx_table = c->separate_idx_table ? dev_copy(h.idx_table, total_blocks * sizeof(int)) : NULL;
    kv.idx_indptr = NULL;
    kv.seq_len = dev_copy(seq_len_h, c->n_seqs * sizeof(int));
    kv.n_seqs = c->n_seqs;
    kv.max_blocks = max_blocks;

    msa_attn_config cfg = {0};
    cfg.n_q_heads = c->Hq; cfg.n_kv_heads = c->Hkv; cfg.head_dim = c->d; cfg.idx_dim = c->d_idx;
    cfg.idx_key_heads = c->idx_heads; cfg.block_size = c->Bk; cfg.top_k = c->top_k;

    guarded g_out = guarded_alloc(q_n * 2), g_lse = guarded_alloc((size_t)n_q * c->Hq * 4),
            g_sel = guarded_alloc((size_t)n_q * c->Hkv * c->top_k * 4);
    msa_attn_batch bt = {0};
    bt.n_q = n_q;
    bt.q_indptr = dev_copy(h.q_indptr, (c->n_seqs + 1) * sizeof(int));
    bt.q_pos = dev_copy(h.q_pos, n_q * sizeof(int));
    bt.q = dev_copy(h.q, q_n * 2);
    bt.q_idx = dev_copy(h.q_idx, qi_n * 2);
    bt.out = guarded_ptr(g_out);
    bt.lse = guarded_ptr(g_lse);
    bt.selected = guarded_ptr(g_sel);

    msa_exec ex = {0};
    ex.device = MSA_DEVICE_CUDA;
    ex.workspace_size = use_public ? msa_attention_workspace_size(&cfg, n_q, max_blocks)
                                   : msa_cuda_workspace_size(&cfg, n_q, max_blocks);
    CU(cudaMalloc(&ex.workspace, ex.workspace_size));

    uint16_t *out = malloc(q_n * 2);
    float *lse = malloc((size_t)n_q * c->Hq * 4);
    int *sel = malloc((size_t)n_q * c->Hkv * c->top_k * 4);
    int *sel2 = malloc((size_t)n_q * c->Hkv * c->top_k * 4);
    char tag[64];
    if (use_public) snprintf(tag, sizeof tag, "public");
    else if (tune) snprintf(tag, sizeof tag, "lab: attention v%d, index v%d", tune->attn_version,
                            tune->index_version);
    else snprintf(tag, sizeof tag, "launcher");
    printf(" case %s (%s)\n", c->name, tag);

    /* public API, the library's launcher (automatic), or the lab's with `tune` */
#define RUN(op)                                                                           \
    (use_public ? msa_##op(&cfg, &kv, &bt, &ex)                                           \
     : tune     ? msa_cuda_lab_##op(&cfg, &kv, &bt, &ex, tune)                            \
                : msa_cuda_##op(&cfg, &kv, &bt, &ex, NULL))

    /* 1. selection */
    guarded_reset(g_sel, 0x7f);
    CHECK_OK(RUN(index_select));
    CU(cudaDeviceSynchronize());
    CHECKF(guarded_fetch(g_sel, sel), "%s: selected guard bytes overwritten", c->name);
    check_selection(&h, sel);

    /* 2. the whole step (writes its own selection) */
    guarded_reset(g_out, 0xff); guarded_reset(g_lse, 0xff); guarded_reset(g_sel, 0x7f);
    CHECK_OK(RUN(attention));
    CU(cudaDeviceSynchronize());
    CHECKF(guarded_fetch(g_out, out), "%s: out guard bytes overwritten", c->name);
    CHECKF(guarded_fetch(g_lse, lse), "%s: lse guard bytes overwritten", c->name);
    CHECKF(guarded_fetch(g_sel, sel2), "%s: selected guard bytes overwritten", c->name);
    CHECKF(memcmp(sel, sel2, (size_t)n_q * c->Hkv * c->top_k * 4) == 0,
           "%s: msa_attention selected differs from msa_index_select", c->name);
    check_attention(&h, "msa", out, lse, sel2);
    if (use_public && !c->bad_row) check_against_cpu(&h, &cfg, 0, out, lse, sel2);
    if (c->bad_row) {
        int ok = 1;
        for (int e = 0; e < c->Hq * c->d; e++) ok &= h2f(c->dtype, out[e]) == 0.0f;
        for (int e = 0; e < c->Hq; e++) ok &= isinf(lse[e]) && lse[e] < 0;
        CHECKF(ok, "%s: the row past its sequence is not empty", c->name);
    }

    /* 3. sparse attention alone over the same selection */
    guarded_reset(g_out, 0xff); guarded_reset(g_lse, 0xff);
    CHECK_OK(RUN(sparse_attention));
    CU(cudaDeviceSynchronize());
    CHECKF(guarded_fetch(g_out, out), "%s: out guard bytes overwritten", c->name);
    CHECKF(guarded_fetch(g_lse, lse), "%s: lse guard bytes overwritten", c->name);
    check_attention(&h, "sparse", out, lse, sel2);

    /* 4. dense baseline */
    guarded_reset(g_out, 0xff); guarded_reset(g_lse, 0xff);
    CHECK_OK(RUN(dense_attention));
    CU(cudaDeviceSynchronize());
    CHECKF(guarded_fetch(g_out, out), "%s: out guard bytes overwritten", c->name);
    CHECKF(guarded_fetch(g_lse, lse), "%s: lse guard bytes overwritten", c->name);
    check_attention(&h, "dense", out, lse, NULL);
    if (use_public && !c->bad_row) check_against_cpu(&h, &cfg, 1, out, lse, NULL);

    CU(cudaFree(ex.workspace));
    CU(cudaFree((void *)kv.k)); CU(cudaFree((void *)kv.v)); CU(cudaFree((void *)kv.kidx));
    CU(cudaFree((void *)kv.kv_indptr)); CU(cudaFree((void *)kv.kv_table));
    if (kv.idx_table) CU(cudaFree((void *)kv.idx_table));
    CU(cudaFree((void *)kv.seq_len));
    CU(cudaFree((void *)bt.q_indptr)); CU(cudaFree((void *)bt.q_pos));
    CU(cudaFree((void *)bt.q)); CU(cudaFree((void *)bt.q_idx));
    CU(cudaFree(g_out.base)); CU(cudaFree(g_lse.base)); CU(cudaFree(g_sel.base));
    free(out); free(lse); free(sel); free(sel2); free(seq_len_h); free(perm);
    free(h.q_indptr); free(h.q_pos); free(h.row_seq); free(h.kv_indptr); free(h.kv_table);
    free(h.idx_table); free(h.k); free(h.v); free(h.kidx); free(h.q); free(h.q_idx);
}

/* Unsupported input is reported, not run. */
static void check_unsupported(void) {
    msa_attn_config cfg = {0};
    cfg.block_size = 128; cfg.top_k = 16; cfg.idx_key_heads = 1;
    cfg.n_q_heads = 8; cfg.n_kv_heads = 2; cfg.head_dim = 96; cfg.idx_dim = 128;
    msa_paged_kv kv = {0};
    kv.dtype = MSA_DTYPE_BF16; kv.n_seqs = 1; kv.max_blocks = 4;
    msa_attn_batch bt = {0};
    bt.n_q = 1;
    msa_exec ex = {0};
    ex.device = MSA_DEVICE_CUDA;
    size_t ws = msa_cuda_workspace_size(&cfg, 1, 4);
    CU(cudaMalloc(&ex.workspace, ws));
    ex.workspace_size = ws;
    /* a valid but tiny batch so that the launch path is reached */
    int32_t zero2[2] = {0, 1}, pos = 0, len = 1, slot = 0;
    kv.kv_indptr = dev_copy(zero2, 8); kv.kv_table = dev_copy(&slot, 4); kv.seq_len = dev_copy(&len, 4);
    bt.q_indptr = dev_copy(zero2, 8); bt.q_pos = dev_copy(&pos, 4);
    CHECK(msa_cuda_dense_attention(&cfg, &kv, &bt, &ex, NULL) == MSA_EUNSUPPORTED);
    kv.dtype = MSA_DTYPE_F32;
    cfg.head_dim = 128;
    CHECK(msa_cuda_attention(&cfg, &kv, &bt, &ex, NULL) == MSA_EUNSUPPORTED);
    CU(cudaFree(ex.workspace));
    CU(cudaFree((void *)kv.kv_indptr)); CU(cudaFree((void *)kv.kv_table)); CU(cudaFree((void *)kv.seq_len));
    CU(cudaFree((void *)bt.q_indptr)); CU(cudaFree((void *)bt.q_pos));
}

/* ---- top-k alone on given scores ------------------------------------------ */


/* The library's launchers refuse the lab's versions and unknown ones with
 * MSA_EUNSUPPORTED, and the lab refuses unknown ones too, while zero (and
 * the lab's own versions in the lab) run. The arguments are otherwise
 * valid, so any other status is a bug. */
static void check_tuning_refused(void) {
    msa_attn_config cfg = msa_attn_default_config();
    cfg.n_q_heads = 8; cfg.n_kv_heads = 2; cfg.head_dim = 128; cfg.idx_dim = 128;
    cfg.idx_key_heads = 1; cfg.block_size = 64; cfg.top_k = 4;
    const int n_q = 40, nb = 8;
    int32_t q_indptr[2] = {0, n_q}, q_pos[40], seq_len[1] = {nb * 64}, indptr[2] = {0, nb}, table[8];
    for (int i = 0; i < n_q; i++) q_pos[i] = nb * 64 - n_q + i;
    for (int b = 0; b < nb; b++) table[b] = b;
    uint16_t *kvh = malloc((size_t)nb * 2 * 64 * 128 * 2), *qh = malloc((size_t)n_q * 8 * 128 * 2);
    fill_rand(MSA_DTYPE_BF16, kvh, (size_t)nb * 2 * 64 * 128, 1.0f);
    fill_rand(MSA_DTYPE_BF16, qh, (size_t)n_q * 8 * 128, 1.0f);
    msa_paged_kv kv;
    memset(&kv, 0, sizeof kv);
    kv.dtype = MSA_DTYPE_BF16;
    kv.k = dev_copy(kvh, (size_t)nb * 2 * 64 * 128 * 2);
    kv.v = dev_copy(kvh, (size_t)nb * 2 * 64 * 128 * 2);
    kv.kidx = dev_copy(kvh, (size_t)nb * 64 * 128 * 2);
    kv.kv_indptr = dev_copy(indptr, sizeof indptr);
    kv.kv_table = dev_copy(table, sizeof table);
    kv.seq_len = dev_copy(seq_len, sizeof seq_len);
    kv.n_seqs = 1; kv.max_blocks = nb;
    msa_attn_batch bt;
    memset(&bt, 0, sizeof bt);
    bt.n_q = n_q;
    bt.q_indptr = dev_copy(q_indptr, sizeof q_indptr);
    bt.q_pos = dev_copy(q_pos, sizeof q_pos);
    bt.q = dev_copy(qh, (size_t)n_q * 8 * 128 * 2);
    bt.q_idx = dev_copy(qh, (size_t)n_q * 2 * 128 * 2);
    CU(cudaMalloc(&bt.out, (size_t)n_q * 8 * 128 * 2));
    CU(cudaMalloc((void **)&bt.selected, (size_t)n_q * 2 * 4 * 4));
    msa_exec ex;
    memset(&ex, 0, sizeof ex);
    ex.device = MSA_DEVICE_CUDA;
    ex.workspace_size = msa_cuda_workspace_size(&cfg, n_q, nb);
    CU(cudaMalloc(&ex.workspace, ex.workspace_size));
    msa_cuda_tuning t = {0};
    CHECK_OK(msa_cuda_attention(&cfg, &kv, &bt, &ex, &t)); /* zero: automatic */
    CHECK_OK(msa_cuda_lab_attention(&cfg, &kv, &bt, &ex, &t));
    t.attn_version = 5;
    CHECK(msa_cuda_sparse_attention(&cfg, &kv, &bt, &ex, &t) == MSA_EUNSUPPORTED);
    CHECK(msa_cuda_attention(&cfg, &kv, &bt, &ex, &t) == MSA_EUNSUPPORTED);
    CHECK_OK(msa_cuda_lab_attention(&cfg, &kv, &bt, &ex, &t));
    t.attn_version = 3;
    CHECK(msa_cuda_lab_sparse_attention(&cfg, &kv, &bt, &ex, &t) == MSA_EUNSUPPORTED);
    t.attn_version = 0;
    t.index_version = 4;
    CHECK(msa_cuda_index_select(&cfg, &kv, &bt, &ex, &t) == MSA_EUNSUPPORTED);
    CHECK_OK(msa_cuda_lab_index_select(&cfg, &kv, &bt, &ex, &t));
    t.index_version = 0;
    t.topk_version = 9;
    CHECK(msa_cuda_index_select(&cfg, &kv, &bt, &ex, &t) == MSA_EUNSUPPORTED);
    CU(cudaDeviceSynchronize());
    CU(cudaFree(ex.workspace)); CU(cudaFree(bt.out)); CU(cudaFree(bt.selected));
    CU(cudaFree((void *)kv.k)); CU(cudaFree((void *)kv.v)); CU(cudaFree((void *)kv.kidx));
    CU(cudaFree((void *)kv.kv_indptr)); CU(cudaFree((void *)kv.kv_table));
    CU(cudaFree((void *)kv.seq_len)); CU(cudaFree((void *)bt.q_indptr));
    CU(cudaFree((void *)bt.q_pos)); CU(cudaFree((void *)bt.q)); CU(cudaFree((void *)bt.q_idx));
    free(kvh); free(qh);
    printf("tuning: lab versions refused by the library, run by the lab\n");
}

/* The top-k kernels on fresh random block scores against msa_ref_topk, exact
 * (same ids in the same order): every row is its own sequence (Bk 1), so
 * local = q_pos; the blocks after local get large scores that must never be
 * chosen. Score kinds: 0 normal; 1 integers 0..7 (heavy ties); 2 maxima of
 * 64 normals (crowded, like block max-pooled scores); 3 constant; each with
 * some -inf and some -0.0/+0.0. Every kernel version (v6 at each width), top_k 1..33, up to 5K
 * blocks, edge locals (0, 1, k-1, k, k+1, max-1). */
static void test_topk_direct(void) {
    const int mbs[] = {40, 256, 300, 1024, 1025, 2048, 4096, 5000};
    const int ks[] = {1, 2, 5, 16, 32, 33};
    /* v4, v5, v6 with 4 / 8 / 16 warps and its automatic width, automatic */
    const int versions[] = {4, 5, 6, 6, 6, 6, 0};
    const int warps[] = {0, 0, 4, 8, 16, 0, 0};
    const int n_ver = (int)(sizeof versions / sizeof versions[0]);
    const int Hkv = 3, n_q = 23, n_rg = n_q * Hkv;
    int bad_total = 0, runs = 0;
    for (int mi = 0; mi < (int)(sizeof mbs / sizeof mbs[0]); mi++) {
        const int mb = mbs[mi];
        for (int ki = 0; ki < (int)(sizeof ks / sizeof ks[0]); ki++) {
            const int k = ks[ki];
            for (int kind = 0; kind < 4; kind++) {
                int q_indptr[n_q + 1], q_pos[n_q], seq_len[n_q], indptr[n_q + 1];
                const int edge[] = {0, 1, k - 1, k, k + 1, mb - 1};
                indptr[0] = 0;
                for (int r = 0; r < n_q; r++) {
                    int loc = r < 6 ? edge[r] : t_randint(mb);
                    if (loc < 0) loc = 0;
                    if (loc > mb - 1) loc = mb - 1;
                    q_indptr[r] = r;
                    q_pos[r] = loc;
                    seq_len[r] = loc + 1 + t_randint(mb - loc); /* <= mb */
                    indptr[r + 1] = indptr[r] + seq_len[r];
                }
                q_indptr[n_q] = n_q;
                float *sc = malloc((size_t)n_rg * mb * sizeof(float));
                for (int rg = 0; rg < n_rg; rg++) {
                    const int loc = q_pos[rg / Hkv];
                    for (int b = 0; b < mb; b++) {
                        float x;
                        if (kind == 0) x = t_randn();
                        else if (kind == 1) x = (float)t_randint(8);
                        else if (kind == 2) {
                            x = -1e30f;
                            for (int j = 0; j < 64; j++) x = fmaxf(x, t_randn());
                        } else x = 1.5f;
                        const int u = t_randint(100);
                        if (u < 4) x = -INFINITY;
                        else if (u < 6) x = (u == 4) ? -0.0f : 0.0f;
                        if (b >= loc) x = 1e30f; /* invisible or local: never a candidate */
                        sc[(size_t)rg * mb + b] = x;
                    }
                }
                int32_t *want = malloc((size_t)n_rg * k * 4), *got = malloc((size_t)n_rg * k * 4);
                for (int rg = 0; rg < n_rg; rg++)
                    msa_ref_topk(sc + (size_t)rg * mb, q_pos[rg / Hkv], k, want + (size_t)rg * k);
                float *d_sc = dev_copy(sc, (size_t)n_rg * mb * sizeof(float));
                msa_paged_kv kv;
                memset(&kv, 0, sizeof kv);
                kv.n_seqs = n_q; kv.max_blocks = mb;
                kv.seq_len = dev_copy(seq_len, sizeof seq_len);
                kv.kv_indptr = dev_copy(indptr, sizeof indptr);
                msa_attn_batch bt;
                memset(&bt, 0, sizeof bt);
                bt.n_q = n_q;
                bt.q_indptr = dev_copy(q_indptr, sizeof q_indptr);
                bt.q_pos = dev_copy(q_pos, sizeof q_pos);
                guarded g = guarded_alloc((size_t)n_rg * k * 4);
                for (int vi = 0; vi < n_ver; vi++) {
                    msa_cuda_tuning tune = {0};
                    tune.topk_version = versions[vi];
                    tune.topk_warps = warps[vi];
                    guarded_reset(g, 0x7f);
                    int rc = msa_cuda_topk_scores(&kv, &bt, Hkv, 1, k, d_sc, guarded_ptr(g), NULL, &tune);
                    CU(cudaDeviceSynchronize());
                    int ok = rc == MSA_OK && guarded_fetch(g, got);
                    int bad = 0, first = -1;
                    for (int rg = 0; ok && rg < n_rg; rg++)
                        if (memcmp(want + (size_t)rg * k, got + (size_t)rg * k, (size_t)k * 4)) {
                            if (first < 0) first = rg;
                            bad++;
                        }
                    if (!ok || bad) {
                        bad_total++;
                        CHECKF(0, "top-k v%d (warps %d) max_blocks %d k %d kind %d: rc %d, %d of %d row-groups differ (first %d, local %d)",
                               versions[vi], warps[vi], mb, k, kind, rc, bad, n_rg, first, first >= 0 ? q_pos[first / Hkv] : -1);
                    }
                    runs++;
                }
                CU(cudaFree(g.base)); CU(cudaFree(d_sc));
                CU(cudaFree((void *)kv.seq_len)); CU(cudaFree((void *)kv.kv_indptr));
                CU(cudaFree((void *)bt.q_indptr)); CU(cudaFree((void *)bt.q_pos));
                free(sc); free(want); free(got);
            }
        }
    }
    CHECKF(bad_total == 0, "top-k direct: %d of %d runs differ from msa_ref_topk", bad_total, runs);
    printf("top-k direct: %d runs (v4, v5, v6 at 4/8/16/auto warps, automatic), %d differ\n", runs, bad_total);
}

int main(void) {
    if (msa_cuda_device_count() <= 0) T_SKIP("no CUDA device");
    t_seed();
    test_topk_direct();
    const msa_dtype BF = MSA_DTYPE_BF16, F16 = MSA_DTYPE_F16;
    /* name, Hq, Hkv, d, d_idx, idx_heads, Bk, k, dtype, n_seqs, seq_len, rows, pos mode, sep idx, bad */
    const tcase cases[] = {
        {"gqa1 d64 small", 4, 4, 64, 64, 1, 64, 4, BF, 4, {1, 200, 256, 1000}, {1, 1, 1, 1}, 0, 0, 0, 0},
        {"gqa2 d128 N<k*Bk", 8, 4, 128, 128, 1, 128, 16, BF, 3, {1500, 2048, 2049}, {1, 1, 1}, 0, 1, 0, 0},
        {"gqa4 d128 32/8", 32, 8, 128, 128, 1, 128, 16, BF, 2, {5000, 3333}, {1, 1}, 0, 0, 0, 0},
        {"gqa8 d64 per-group idx", 16, 2, 64, 128, 2, 64, 8, BF, 3, {3000, 777, 4100}, {1, 1, 1}, 1, 1, 0, 0},
        {"gqa16 d128 64/4", 64, 4, 128, 128, 1, 128, 16, BF, 2, {4500, 6000}, {1, 1}, 0, 0, 0, 0},
        {"gqa4 fp16 Bk32 k5", 8, 2, 128, 64, 1, 32, 5, F16, 3, {900, 97, 1000}, {1, 1, 1}, 1, 0, 0, 0},
        {"gqa2 d64 Bk48", 4, 2, 64, 64, 2, 48, 6, BF, 2, {1000, 500}, {1, 1}, 0, 1, 0, 0},
        {"prefill rows in one block", 8, 2, 128, 128, 1, 128, 4, BF, 1, {1000}, {20}, 0, 0, 0, 0},
        {"prefill 150 rows gqa4", 8, 2, 128, 128, 1, 64, 8, BF, 2, {2000, 1500}, {150, 40}, 0, 1, 0, 0},
        {"prefill gqa1 fp16 per-group", 4, 4, 64, 64, 4, 64, 6, F16, 1, {1200}, {90}, 0, 0, 0, 0},
        {"bad row past its sequence", 8, 2, 128, 128, 1, 128, 4, BF, 2, {900, 1300}, {1, 1}, 0, 0, 1, 0},
        {"many blocks Bk16 random", 8, 2, 64, 64, 1, 16, 16, BF, 2, {20000, 9000}, {1, 1}, 0, 0, 0, 0},
        {"prefill sparse chunk 2K blocks", 8, 2, 64, 64, 1, 16, 8, BF, 1, {33000}, {64}, 0, 1, 0, 0},
        {"prefill gqa16 fp16 Bk48 2 seqs", 32, 2, 128, 64, 1, 48, 6, F16, 2, {3000, 800}, {70, 33}, 0, 0, 0, 0},
        {"prefill gqa4 d128 Bk128 300 rows", 16, 4, 128, 128, 1, 128, 8, BF, 1, {9000}, {300}, 0, 0, 0, 0},
        {"ties: integer index", 8, 2, 64, 64, 1, 16, 16, BF, 2, {6000, 3000}, {1, 3}, 1, 0, 0, 1},
        {"ties: constant index 1K blocks", 4, 2, 64, 64, 1, 16, 16, BF, 1, {17000}, {1}, 0, 0, 0, 2},
    };
    const int n_cases = (int)(sizeof cases / sizeof cases[0]);
    for (int i = 0; i < n_cases; i++) run_case(&cases[i], 0, NULL);
    /* The previous kernels, in the kernel lab, on the prefill cases:
     * attention v6 with 32-token stages (7), v5 (5), v4 (4); index v4. */
    {
        const int av[] = {7, 5, 4};
        for (int vi = 0; vi < 3; vi++) {
            msa_cuda_tuning tune = {0};
            tune.attn_version = av[vi];
            tune.index_version = vi == 0 ? 4 : 0;
            for (int i = 0; i < n_cases; i++)
                if (cases[i].rows[0] > 1) run_case(&cases[i], 0, &tune);
        }
    }
    check_unsupported();
    check_tuning_refused();
    /* The public API's CUDA path (kernels/attention.c). */
    {
        for (int i = 0; i < n_cases; i++)
            if (!cases[i].bad_row) run_case(&cases[i], 1, NULL);
    }
    return t_done("test-kernels-cuda");
}
#endif
