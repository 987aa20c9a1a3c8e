/*
 * test-kernels.c: the CPU MSA attention core (engine/msa.h section 2)
 * against an independent reference written here.
 *
 * The reference works on logical, unpaged sequences in double precision:
 * block scores recomputed token by token, selection by a full sort of the
 * candidates, and attention as plain masked softmax over an explicit mask
 * (all tokens j <= q_pos for dense; those of the selected blocks for MSA).
 * The library gets the same data scattered into a pool through shuffled
 * block tables, with NaN in unused slots and tail tokens so that a wrong
 * read shows.
 *
 * Index queries and keys are mostly small integers: their dot products are
 * exact in float and double, so the selection must match exactly, and ties
 * between blocks are frequent (which exercises "lower block id wins"). One
 * case uses Gaussian index data and accepts a different choice only between
 * blocks whose scores agree to within rounding.
 *
 * Each case checks: msa_index_select against the naive selection; the whole
 * msa_attention (out, lse, selected) against masked attention over the
 * naive selection; msa_dense_attention against dense attention; MSA equals
 * dense when every row sees top_k blocks or fewer; msa_sparse_attention over
 * a KV table whose non-selected blocks are -1; identical results with 1 and
 * 2 threads; guard bytes after every output untouched. Then argument
 * validation, one broken field at a time.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/msa.h"
#include "base/base.h" /* msa_error_clear */
#include "tests/testutil.h"

enum { GUARD = 16 };
#define MAXS 6

typedef struct tcase {
    const char *name;
    int n_seqs;
    int len[MAXS];
    int Hq, Hkv, d, di, KH, Bk, k;
    float scale;
    int mode;       /* rows per sequence: 0 decode (last position), 1 prefill
                       chunk (last `rows` positions), 2 `rows` random positions */
    int rows;
    int idx_range;  /* >0: index data are integers in [-range, range]; 0: Gaussian */
    int sep_idx;    /* index keys through their own table */
    int hot_future; /* keys of the last two blocks score highest (for rows that
                       do not see them) */
    int all_equal;  /* every index key equal: all visible blocks tie */
} tcase;

/* ---- the problem, logical and paged ----------------------------------------- */

typedef struct prob {
    tcase c;
    int n_q, nb_total, n_slots;
    int32_t seq_len[MAXS], q_indptr[MAXS + 1], kv_indptr[MAXS + 1];
    int32_t *q_pos;     /* [n_q] */
    int *row_seq;       /* [n_q] */
    float *K[MAXS], *V[MAXS], *KI[MAXS]; /* [len][Hkv][d], [len][Hkv][d], [len][KH][di] */
    float *q, *qi;      /* [n_q][Hq][d], [n_q][Hkv][di] */
    float *kpool, *vpool, *ipool;        /* paged copies */
    int32_t *kv_table, *idx_table;       /* [nb_total] */
} prob;

static float rnd_index(int range) {
    return range > 0 ? (float)(t_randint(2 * range + 1) - range) : t_randn();
}

static void shuffle(int32_t *a, int n) {
    for (int i = n - 1; i > 0; i--) {
        int j = t_randint(i + 1);
        int32_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

static void prob_init(prob *P, const tcase *c) {
    memset(P, 0, sizeof *P);
    P->c = *c;
    int Hkv = c->Hkv, d = c->d, di = c->di, KH = c->KH, Bk = c->Bk;
    /* rows */
    int cap = 0;
    for (int s = 0; s < c->n_seqs; s++) cap += c->rows > 0 ? c->rows : 1;
    P->q_pos = malloc(sizeof(int32_t) * (cap + 1));
    P->row_seq = malloc(sizeof(int) * (cap + 1));
    P->q_indptr[0] = 0;
    P->kv_indptr[0] = 0;
    for (int s = 0; s < c->n_seqs; s++) {
        int L = c->len[s];
        P->seq_len[s] = L;
        int n = L == 0 ? 0 : c->mode == 0 ? 1 : (c->rows < L ? c->rows : L);
        for (int r = 0; r < n; r++) {
            int pos = c->mode == 0 ? L - 1 : c->mode == 1 ? L - n + r : t_randint(L);
            P->q_pos[P->n_q] = pos;
            P->row_seq[P->n_q++] = s;
        }
        P->q_indptr[s + 1] = P->n_q;
        P->kv_indptr[s + 1] = P->kv_indptr[s] + (L + Bk - 1) / Bk;
    }
    P->nb_total = P->kv_indptr[c->n_seqs];
    P->n_slots = P->nb_total + 2; /* two slots nobody uses */
    /* logical data */
    for (int s = 0; s < c->n_seqs; s++) {
        int L = c->len[s];
        P->K[s] = malloc(sizeof(float) * ((size_t)L * Hkv * d + 1));
        P->V[s] = malloc(sizeof(float) * ((size_t)L * Hkv * d + 1));
        P->KI[s] = malloc(sizeof(float) * ((size_t)L * KH * di + 1));
        for (size_t i = 0; i < (size_t)L * Hkv * d; i++) {
            P->K[s][i] = t_randn();
            P->V[s][i] = t_randn();
        }
        for (int j = 0; j < L; j++)
            for (int x = 0; x < KH * di; x++) {
                float v = rnd_index(c->idx_range);
                if (c->all_equal) v = 1.0f;
                if (c->hot_future && j >= L - 2 * Bk) v = (float)(c->idx_range + 3);
                P->KI[s][(size_t)j * KH * di + x] = v;
            }
    }
    P->q = malloc(sizeof(float) * ((size_t)P->n_q * c->Hq * d + 1));
    P->qi = malloc(sizeof(float) * ((size_t)P->n_q * Hkv * di + 1));
    for (size_t i = 0; i < (size_t)P->n_q * c->Hq * d; i++) P->q[i] = t_randn();
    for (size_t i = 0; i < (size_t)P->n_q * Hkv * di; i++) {
        float v = rnd_index(c->idx_range);
        if (c->all_equal) v = 1.0f;
        if (c->hot_future) v = fabsf(v) + 1.0f; /* positive: hot keys win if seen */
        P->qi[i] = v;
    }
    /* pools: NaN everywhere (unused slots, tokens past seq_len), then scatter
     * through shuffled tables */
    size_t kvslot = (size_t)Hkv * Bk * d, islot = (size_t)KH * Bk * di;
    P->kpool = malloc(sizeof(float) * kvslot * P->n_slots);
    P->vpool = malloc(sizeof(float) * kvslot * P->n_slots);
    P->ipool = malloc(sizeof(float) * islot * P->n_slots);
    for (size_t i = 0; i < kvslot * P->n_slots; i++) P->kpool[i] = P->vpool[i] = NAN;
    for (size_t i = 0; i < islot * P->n_slots; i++) P->ipool[i] = NAN;
    int32_t *perm = malloc(sizeof(int32_t) * (P->n_slots + 1));
    P->kv_table = malloc(sizeof(int32_t) * (P->nb_total + 1));
    P->idx_table = malloc(sizeof(int32_t) * (P->nb_total + 1));
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < P->n_slots; i++) perm[i] = i;
        shuffle(perm, P->n_slots);
        int32_t *tab = pass == 0 ? P->kv_table : P->idx_table;
        for (int i = 0; i < P->nb_total; i++) tab[i] = perm[i];
        if (pass == 1 && !c->sep_idx) memcpy(P->idx_table, P->kv_table, sizeof(int32_t) * P->nb_total);
    }
    for (int s = 0; s < c->n_seqs; s++)
        for (int j = 0; j < c->len[s]; j++) {
            int b = j / Bk, t = j % Bk;
            int kslot = P->kv_table[P->kv_indptr[s] + b], islt = P->idx_table[P->kv_indptr[s] + b];
            for (int g = 0; g < Hkv; g++)
                for (int x = 0; x < d; x++) {
                    size_t dst = (((size_t)kslot * Hkv + g) * Bk + t) * d + x;
                    P->kpool[dst] = P->K[s][((size_t)j * Hkv + g) * d + x];
                    P->vpool[dst] = P->V[s][((size_t)j * Hkv + g) * d + x];
                }
            for (int h = 0; h < KH; h++)
                for (int x = 0; x < di; x++)
                    P->ipool[(((size_t)islt * KH + h) * Bk + t) * di + x] =
                        P->KI[s][((size_t)j * KH + h) * di + x];
        }
    free(perm);
}

static void prob_free(prob *P) {
    for (int s = 0; s < P->c.n_seqs; s++) {
        free(P->K[s]);
        free(P->V[s]);
        free(P->KI[s]);
    }
    free(P->q_pos); free(P->row_seq); free(P->q); free(P->qi);
    free(P->kpool); free(P->vpool); free(P->ipool);
    free(P->kv_table); free(P->idx_table);
}

static msa_attn_config prob_cfg(const prob *P) {
    msa_attn_config cfg = msa_attn_default_config();
    cfg.n_q_heads = P->c.Hq;
    cfg.n_kv_heads = P->c.Hkv;
    cfg.head_dim = P->c.d;
    cfg.idx_dim = P->c.di;
    cfg.idx_key_heads = P->c.KH;
    cfg.block_size = P->c.Bk;
    cfg.top_k = P->c.k;
    cfg.scale = P->c.scale;
    return cfg;
}

static msa_paged_kv prob_kv(const prob *P) {
    msa_paged_kv kv;
    memset(&kv, 0, sizeof kv);
    kv.dtype = MSA_DTYPE_F32;
    kv.k = P->kpool;
    kv.v = P->vpool;
    kv.kv_indptr = P->kv_indptr;
    kv.kv_table = P->kv_table;
    kv.kidx = P->ipool;
    kv.idx_indptr = P->c.sep_idx ? P->kv_indptr : NULL;
    kv.idx_table = P->c.sep_idx ? P->idx_table : NULL;
    kv.seq_len = P->seq_len;
    kv.n_seqs = P->c.n_seqs;
    return kv;
}

/* ---- the naive reference ------------------------------------------------------- */

static double ddot(const float *a, const float *b, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* block scores of (row, g): S[0..local] */
static void ref_block_scores(const prob *P, int row, int g, double *S) {
    const tcase *c = &P->c;
    int s = P->row_seq[row], p = P->q_pos[row], kh = c->KH == 1 ? 0 : g;
    const float *qv = P->qi + ((size_t)row * c->Hkv + g) * c->di;
    for (int b = 0; b <= p / c->Bk; b++) {
        S[b] = -INFINITY;
        for (int j = b * c->Bk; j < (b + 1) * c->Bk && j <= p; j++) {
            double v = ddot(qv, P->KI[s] + ((size_t)j * c->KH + kh) * c->di, c->di) / sqrt(c->di);
            if (v > S[b]) S[b] = v;
        }
    }
}

static const double *g_sort_scores;
static int cmp_block(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    double sx = g_sort_scores[x], sy = g_sort_scores[y];
    if (sx != sy) return sx > sy ? -1 : 1;
    return x - y;
}

/* naive selection by full sort: out[k] */
static void ref_select(const prob *P, int row, int g, double *S, int32_t *out) {
    int local = P->q_pos[row] / P->c.Bk, k = P->c.k;
    ref_block_scores(P, row, g, S);
    int *ids = malloc(sizeof(int) * (local + 1));
    for (int b = 0; b < local; b++) ids[b] = b;
    g_sort_scores = S;
    qsort(ids, local, sizeof(int), cmp_block);
    out[0] = local;
    for (int j = 1; j < k; j++) out[j] = j - 1 < local ? ids[j - 1] : -1;
    free(ids);
}

/* Masked softmax attention of row, heads of group g: mask[j] for j <= q_pos. */
static void ref_attend(const prob *P, int row, int g, const unsigned char *mask, double *out,
                       double *lse) {
    const tcase *c = &P->c;
    int s = P->row_seq[row], p = P->q_pos[row], G = c->Hq / c->Hkv, d = c->d;
    double scale = c->scale > 0 ? c->scale : 1.0 / sqrt(d);
    double *w = malloc(sizeof(double) * (p + 1));
    for (int h = 0; h < G; h++) {
        int hq = g * G + h;
        const float *qv = P->q + ((size_t)row * c->Hq + hq) * d;
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j <= p; j++) {
            w[j] = mask[j] ? ddot(qv, P->K[s] + ((size_t)j * c->Hkv + g) * d, d) * scale : -INFINITY;
            if (w[j] > mx) mx = w[j];
        }
        double *o = out + (size_t)hq * d;
        for (int x = 0; x < d; x++) o[x] = 0;
        for (int j = 0; j <= p; j++) {
            if (!mask[j]) continue;
            double e = exp(w[j] - mx);
            sum += e;
            for (int x = 0; x < d; x++) o[x] += e * P->V[s][((size_t)j * c->Hkv + g) * d + x];
        }
        for (int x = 0; x < d; x++) o[x] = sum > 0 ? o[x] / sum : 0;
        lse[hq] = sum > 0 ? mx + log(sum) : -INFINITY;
    }
    free(w);
}

/* Whether the library's choice `got` is as good as the naive one up to
 * rounding: same local block, distinct candidates, ordered by score, and no
 * unselected block better than the worst selected by more than tol. */
static int selection_equivalent(const prob *P, int row, const double *S, const int32_t *got,
                                double tol) {
    int local = P->q_pos[row] / P->c.Bk, k = P->c.k;
    int want = local < k - 1 ? local : k - 1;
    if (got[0] != local) return 0;
    unsigned char *in = calloc(local + 1, 1);
    double worst = INFINITY;
    int ok = 1;
    for (int j = 1; j < k; j++) {
        int b = got[j];
        if (j - 1 >= want) { ok &= b == -1; continue; }
        if (b < 0 || b >= local || in[b]) { ok = 0; break; }
        in[b] = 1;
        if (j > 1 && S[b] > S[got[j - 1]] + tol) ok = 0;
        if (S[b] < worst) worst = S[b];
    }
    for (int b = 0; ok && b < local; b++)
        if (!in[b] && S[b] > worst + tol) ok = 0;
    free(in);
    return ok;
}

/* ---- guarded buffers ------------------------------------------------------------ */

static void *galloc(size_t bytes) {
    unsigned char *p = malloc(bytes + GUARD);
    memset(p, 0x5a, bytes);
    memset(p + bytes, 0xab, GUARD);
    return p;
}

static int guard_ok(const void *p, size_t bytes) {
    const unsigned char *b = p;
    for (int i = 0; i < GUARD; i++)
        if (b[bytes + i] != 0xab) return 0;
    return 1;
}

/* ---- one case ---------------------------------------------------------------------- */

static void run_case(const tcase *c) {
    prob P;
    prob_init(&P, c);
    const int n_q = P.n_q, Hq = c->Hq, Hkv = c->Hkv, d = c->d, k = c->k, Bk = c->Bk;
    msa_attn_config cfg = prob_cfg(&P);
    msa_paged_kv kv = prob_kv(&P);
    msa_exec ex = msa_exec_default();
    ex.n_threads = 2;

    size_t n_out = (size_t)n_q * Hq * d, n_lse = (size_t)n_q * Hq, n_sel = (size_t)n_q * Hkv * k;
    float *out = galloc(n_out * 4), *lse = galloc(n_lse * 4);
    float *out1 = galloc(n_out * 4), *dout = galloc(n_out * 4), *dlse = galloc(n_lse * 4);
    int32_t *sel = galloc(n_sel * 4), *sel2 = galloc(n_sel * 4);
    msa_attn_batch bt = {n_q, P.q_indptr, P.q_pos, P.q, P.qi, out, lse, sel};

    /* 1. selection alone, without K/V */
    msa_paged_kv kvi = kv;
    kvi.k = kvi.v = NULL;
    if (c->sep_idx) kvi.kv_indptr = kvi.kv_table = NULL;
    CHECK_OK(msa_index_select(&cfg, &kvi, &bt, &ex));
    CHECKF(guard_ok(sel, n_sel * 4), "%s: selected guard", c->name);

    /* naive selection and references */
    int max_local = 0;
    for (int i = 0; i < n_q; i++)
        if (P.q_pos[i] / Bk > max_local) max_local = P.q_pos[i] / Bk;
    double *S = malloc(sizeof(double) * (max_local + 2));
    int32_t *rsel = malloc(sizeof(int32_t) * (n_sel + 1));
    int sel_exact = 0, sel_near = 0, sel_bad = 0, all_dense = 1;
    double *rout = malloc(sizeof(double) * (n_out + 1)), *rlse = malloc(sizeof(double) * (n_lse + 1));
    double *rdout = malloc(sizeof(double) * (n_out + 1)), *rdlse = malloc(sizeof(double) * (n_lse + 1));
    for (int i = 0; i < n_q; i++) {
        int p = P.q_pos[i], local = p / Bk;
        if (local + 1 > k) all_dense = 0;
        unsigned char *mask = malloc(p + 1);
        for (int g = 0; g < Hkv; g++) {
            int32_t *r = rsel + ((size_t)i * Hkv + g) * k, *got = sel + ((size_t)i * Hkv + g) * k;
            ref_select(&P, i, g, S, r);
            if (!memcmp(r, got, sizeof(int32_t) * k)) {
                sel_exact++;
            } else if (c->idx_range == 0 && selection_equivalent(&P, i, S, got, 1e-4)) {
                sel_near++;
                memcpy(r, got, sizeof(int32_t) * k); /* attend where the library chose */
            } else {
                sel_bad++;
                if (sel_bad <= 3) {
                    fprintf(stderr, "%s: row %d (q_pos %d) group %d: selected", c->name, i, p, g);
                    for (int j = 0; j < k; j++) fprintf(stderr, " %d", got[j]);
                    fprintf(stderr, ", expected");
                    for (int j = 0; j < k; j++) fprintf(stderr, " %d", r[j]);
                    fprintf(stderr, "\n");
                }
            }
            if (c->all_equal) /* every block ties: local, then 0, 1, 2, ... */
                for (int j = 1; j < k; j++)
                    CHECK(got[j] == (j - 1 < local ? j - 1 : -1));
            for (int j = 0; j < k; j++) CHECK(got[j] == -1 || got[j] <= local); /* never unseen blocks */
            /* masks built from the reference selection */
            memset(mask, 0, p + 1);
            for (int j = 0; j < k; j++)
                if (r[j] >= 0)
                    for (int t = r[j] * Bk; t < (r[j] + 1) * Bk && t <= p; t++) mask[t] = 1;
            ref_attend(&P, i, g, mask, rout + (size_t)i * Hq * d, rlse + (size_t)i * Hq);
            memset(mask, 1, p + 1);
            ref_attend(&P, i, g, mask, rdout + (size_t)i * Hq * d, rdlse + (size_t)i * Hq);
        }
        free(mask);
    }
    CHECKF(sel_bad == 0, "%s: %d (row, group) selections differ from the naive sort", c->name, sel_bad);

    /* 2. the whole MSA step */
    memset(sel2, 0x5a, n_sel * 4);
    bt.selected = sel2;
    CHECK_OK(msa_attention(&cfg, &kv, &bt, &ex));
    CHECKF(!memcmp(sel, sel2, n_sel * 4), "%s: msa_attention selected != msa_index_select", c->name);
    CHECKF(guard_ok(out, n_out * 4) && guard_ok(lse, n_lse * 4) && guard_ok(sel2, n_sel * 4),
           "%s: output guard bytes overwritten", c->name);
    double e_out = 0, e_lse = 0;
    for (size_t i = 0; i < n_out; i++) e_out = fmax(e_out, fabs(out[i] - rout[i]));
    for (size_t i = 0; i < n_lse; i++) e_lse = fmax(e_lse, fabs(lse[i] - rlse[i]));
    if (isnan(e_out) || isnan(e_lse)) e_out = e_lse = INFINITY;
    for (size_t i = 0; i < n_out; i++) if (isnan(out[i])) e_out = INFINITY;
    CHECKF(e_out < 2e-5 && e_lse < 2e-5, "%s: msa out err %g lse err %g", c->name, e_out, e_lse);

    /* 3. dense */
    bt.out = dout;
    bt.lse = dlse;
    CHECK_OK(msa_dense_attention(&cfg, &kv, &bt, &ex));
    CHECKF(guard_ok(dout, n_out * 4) && guard_ok(dlse, n_lse * 4), "%s: dense guard", c->name);
    double e_dout = 0, e_dlse = 0, e_md = 0;
    for (size_t i = 0; i < n_out; i++) {
        double e = fabs(dout[i] - rdout[i]);
        e_dout = isnan(e) ? INFINITY : fmax(e_dout, e);
    }
    for (size_t i = 0; i < n_lse; i++) e_dlse = fmax(e_dlse, fabs(dlse[i] - rdlse[i]));
    CHECKF(e_dout < 2e-5 && e_dlse < 2e-5, "%s: dense out err %g lse err %g", c->name, e_dout, e_dlse);

    /* 4. MSA == dense when every row sees top_k blocks or fewer */
    if (all_dense) {
        for (size_t i = 0; i < n_out; i++) e_md = fmax(e_md, fabs(out[i] - dout[i]));
        CHECKF(e_md < 1e-5, "%s: MSA != dense with <= k visible blocks (%g)", c->name, e_md);
    }

    /* 5. paged: only the selected blocks have KV slots */
    int32_t *tab2 = malloc(sizeof(int32_t) * (P.nb_total + 1));
    for (int b = 0; b < P.nb_total; b++) tab2[b] = -1;
    for (int i = 0; i < n_q; i++) {
        int s = P.row_seq[i];
        for (size_t j = 0; j < (size_t)Hkv * k; j++) {
            int b = sel[(size_t)i * Hkv * k + j];
            if (b >= 0) tab2[P.kv_indptr[s] + b] = P.kv_table[P.kv_indptr[s] + b];
        }
    }
    msa_paged_kv kv2 = kv;
    kv2.kv_table = tab2;
    kv2.kidx = NULL; /* not read */
    kv2.idx_indptr = kv2.idx_table = NULL;
    msa_attn_batch bs = {n_q, P.q_indptr, P.q_pos, P.q, NULL, out1, NULL, sel};
    CHECK_OK(msa_sparse_attention(&cfg, &kv2, &bs, &ex));
    CHECKF(guard_ok(out1, n_out * 4), "%s: sparse guard", c->name);
    double e_paged = 0;
    for (size_t i = 0; i < n_out; i++) {
        double e = fabs(out1[i] - rout[i]);
        e_paged = isnan(e) ? INFINITY : fmax(e_paged, e);
    }
    CHECKF(e_paged < 2e-5, "%s: paged sparse err %g", c->name, e_paged);
    /* a selected block without a slot is refused */
    int has_nonlocal = 0;
    for (int i = 0; i < n_q && !has_nonlocal; i++)
        if (sel[(size_t)i * Hkv * k + 1] >= 0) {
            int s = P.row_seq[i], b = sel[(size_t)i * Hkv * k + 1];
            int32_t keep = tab2[P.kv_indptr[s] + b];
            tab2[P.kv_indptr[s] + b] = -1;
            CHECK(msa_sparse_attention(&cfg, &kv2, &bs, &ex) == MSA_EINVAL);
            CHECK(strstr(msa_last_error(), "kv_table") != NULL);
            tab2[P.kv_indptr[s] + b] = keep;
            has_nonlocal = 1;
        }
    free(tab2);

    /* 6. one thread gives the same bits as two */
    ex.n_threads = 1;
    bt.out = out1;
    bt.lse = NULL;
    bt.selected = NULL;
    CHECK_OK(msa_attention(&cfg, &kv, &bt, &ex));
    CHECKF(!memcmp(out, out1, n_out * 4), "%s: 1 and 2 threads differ", c->name);

    printf("%-28s n_q %4d Hq/Hkv %2d/%d d %3d Bk %3d k %2d  sel %d exact %d near  "
           "err: msa %.2e lse %.2e dense %.2e lse %.2e paged %.2e%s\n",
           c->name, n_q, Hq, Hkv, d, Bk, k, sel_exact, sel_near, e_out, e_lse, e_dout, e_dlse,
           e_paged, all_dense ? "  (msa==dense)" : "");
    if (all_dense) printf("%-28s msa vs dense %.2e\n", "", e_md);
    free(S); free(rsel); free(rout); free(rlse); free(rdout); free(rdlse);
    free(out); free(lse); free(out1); free(dout); free(dlse); free(sel); free(sel2);
    prob_free(&P);
}

/* ---- validation ----------------------------------------------------------------- */

#define EXPECT_ERR(code, call, field)                                               \
    do {                                                                           \
        msa_error_clear(); /* a stale message must not pass for this call's */     \
        int rc_ = (call);                                                          \
        CHECKF(rc_ == (code), "%s returned %d (%s), want %d; message: %s", #call,  \
               rc_, msa_strerror(rc_), (code), msa_last_error());                  \
        CHECKF(strstr(msa_last_error(), field) != NULL,                           \
               "message of %s does not name '%s': %s", #call, field, msa_last_error()); \
    } while (0)

/* The rows are the last three positions of each sequence (mode 1), never random
 * ones: each broken case below must break something that a row reads, for every
 * seed. Sequence 0 (40 tokens, blocks 0-2) has rows 37-39, which see blocks 0, 1
 * and their local block 2; sequence 1 (70 tokens) has rows 67-69, which see its
 * 5 blocks. Random positions once left block 1 unseen by every row (1 seed in
 * 16), and a -1 table entry that nobody reads is rightly accepted. */
static void test_validation(void) {
    tcase c = {"validation", 2, {40, 70}, 8, 4, 8, 8, 1, 16, 3, 0, 1, 3, 2, 0, 0, 0};
    prob P;
    prob_init(&P, &c);
    CHECK(P.n_q == 6 && P.q_pos[0] == 37 && P.q_pos[P.n_q - 1] == 69);
    msa_attn_config cfg = prob_cfg(&P), bad;
    msa_paged_kv kv = prob_kv(&P), kb;
    msa_exec ex = msa_exec_default();
    size_t n_out = (size_t)P.n_q * c.Hq * c.d;
    float *out = malloc(n_out * 4 + 4);
    int32_t *sel = malloc(sizeof(int32_t) * P.n_q * c.Hkv * c.k + 4);
    msa_attn_batch bt = {P.n_q, P.q_indptr, P.q_pos, P.q, P.qi, out, NULL, sel}, bb;
    CHECK_OK(msa_attention(&cfg, &kv, &bt, &ex));
    CHECK_OK(msa_attention(&cfg, &kv, &bt, NULL)); /* NULL exec: the CPU default */

    bad = cfg; bad.n_kv_heads = 3;
    EXPECT_ERR(MSA_EINVAL, msa_attention(&bad, &kv, &bt, &ex), "n_kv_heads = 3");
    bad = cfg; bad.head_dim = 0;
    EXPECT_ERR(MSA_EINVAL, msa_dense_attention(&bad, &kv, &bt, &ex), "head_dim");
    bad = cfg; bad.idx_key_heads = 2;
    EXPECT_ERR(MSA_EINVAL, msa_index_select(&bad, &kv, &bt, &ex), "idx_key_heads = 2");
    bad = cfg; bad.block_size = 0;
    EXPECT_ERR(MSA_EINVAL, msa_attention(&bad, &kv, &bt, &ex), "block_size");
    bad = cfg; bad.top_k = 0;
    EXPECT_ERR(MSA_EINVAL, msa_index_select(&bad, &kv, &bt, &ex), "top_k");
    bad = cfg; bad.idx_dim = -1;
    EXPECT_ERR(MSA_EINVAL, msa_attention(&bad, &kv, &bt, &ex), "idx_dim");
    bad = cfg; bad.scale = -1.0f;
    EXPECT_ERR(MSA_EINVAL, msa_attention(&bad, &kv, &bt, &ex), "scale");
    bad = cfg; bad.n_q_heads = 0;
    EXPECT_ERR(MSA_EINVAL, msa_attention(&bad, &kv, &bt, &ex), "n_q_heads");

    kb = kv; kb.dtype = MSA_DTYPE_F16;
    EXPECT_ERR(MSA_EUNSUPPORTED, msa_attention(&cfg, &kb, &bt, &ex), "F32");
    kb = kv; kb.dtype = MSA_DTYPE_BF16;
    EXPECT_ERR(MSA_EUNSUPPORTED, msa_dense_attention(&cfg, &kb, &bt, &ex), "dtype");
    kb = kv; kb.dtype = (msa_dtype)7;
    EXPECT_ERR(MSA_EINVAL, msa_attention(&cfg, &kb, &bt, &ex), "dtype = 7");
    kb = kv; kb.n_seqs = 0;
    EXPECT_ERR(MSA_EINVAL, msa_attention(&cfg, &kb, &bt, &ex), "n_seqs");
    kb = kv; kb.max_blocks = 2; /* sequence 1 needs 5 blocks of 16 */
    EXPECT_ERR(MSA_EINVAL, msa_attention(&cfg, &kb, &bt, &ex), "max_blocks = 2");
    kb = kv; kb.k = NULL;
    EXPECT_ERR(MSA_EINVAL, msa_attention(&cfg, &kb, &bt, &ex), "kv->k");
    kb = kv; kb.kidx = NULL;
    EXPECT_ERR(MSA_EINVAL, msa_index_select(&cfg, &kb, &bt, &ex), "kv->kidx");

    int32_t ind[3] = {0, 3, 4}; /* sequence 0 (40 tokens) needs 3 blocks, 1 needs 5 */
    kb = kv; kb.kv_indptr = ind;
    EXPECT_ERR(MSA_EINVAL, msa_dense_attention(&cfg, &kb, &bt, &ex), "kv->kv_indptr gives sequence 1 1 table entries");

    int32_t *tab = malloc(sizeof(int32_t) * P.nb_total);
    memcpy(tab, P.kv_table, sizeof(int32_t) * P.nb_total);
    tab[1] = -1; /* sequence 0, block 1: seen by its rows */
    kb = kv; kb.kv_table = tab;
    EXPECT_ERR(MSA_EINVAL, msa_dense_attention(&cfg, &kb, &bt, &ex), "kv_table[1] = -1");
    EXPECT_ERR(MSA_EINVAL, msa_index_select(&cfg, &kb, &bt, &ex), "as idx_table");
    kb = kv; kb.idx_indptr = P.kv_indptr; kb.idx_table = tab;
    EXPECT_ERR(MSA_EINVAL, msa_attention(&cfg, &kb, &bt, &ex), "kv->idx_table[1] = -1");
    /* msa_attention: the local block of row 0 (always selected) has no KV slot */
    memcpy(tab, P.kv_table, sizeof(int32_t) * P.nb_total);
    tab[P.q_pos[0] / c.Bk] = -1;
    kb = kv; kb.kv_table = tab; kb.idx_indptr = P.kv_indptr; kb.idx_table = P.kv_table;
    EXPECT_ERR(MSA_EINVAL, msa_attention(&cfg, &kb, &bt, &ex), "has no KV slot");
    free(tab);

    int32_t pos[16];
    memcpy(pos, P.q_pos, sizeof(int32_t) * P.n_q);
    pos[0] = 40; /* sequence 0 has 40 tokens */
    bb = bt; bb.q_pos = pos;
    EXPECT_ERR(MSA_EINVAL, msa_attention(&cfg, &kv, &bb, &ex), "q_pos[0] = 40");
    pos[0] = -1;
    EXPECT_ERR(MSA_EINVAL, msa_dense_attention(&cfg, &kv, &bb, &ex), "q_pos[0] = -1");
    int32_t qind[3] = {0, 3, 5}; /* n_q is 6 */
    bb = bt; bb.q_indptr = qind;
    EXPECT_ERR(MSA_EINVAL, msa_attention(&cfg, &kv, &bb, &ex), "q_indptr");
    int32_t qind2[3] = {0, 4, 3};
    bb = bt; bb.q_indptr = qind2; bb.n_q = 3;
    EXPECT_ERR(MSA_EINVAL, msa_attention(&cfg, &kv, &bb, &ex), "decreases");
    bb = bt; bb.q = NULL;
    EXPECT_ERR(MSA_EINVAL, msa_attention(&cfg, &kv, &bb, &ex), "batch->q");
    bb = bt; bb.selected = NULL;
    EXPECT_ERR(MSA_EINVAL, msa_index_select(&cfg, &kv, &bb, &ex), "batch->selected");
    bb = bt; bb.n_q = -1;
    EXPECT_ERR(MSA_EINVAL, msa_attention(&cfg, &kv, &bb, &ex), "n_q");

    /* sparse: a bad selection */
    CHECK_OK(msa_index_select(&cfg, &kv, &bt, &ex));
    CHECK_OK(msa_sparse_attention(&cfg, &kv, &bt, &ex));
    int32_t keep = sel[0];
    sel[0] = P.q_pos[0] / c.Bk + 1; /* a block the row does not see */
    EXPECT_ERR(MSA_EINVAL, msa_sparse_attention(&cfg, &kv, &bt, &ex), "visible block");
    sel[0] = -2;
    EXPECT_ERR(MSA_EINVAL, msa_sparse_attention(&cfg, &kv, &bt, &ex), "selected[0] = -2");
    sel[0] = keep;
    int r = P.n_q - 1; /* the last row sees 5 blocks, k = 3: no -1 */
    int32_t keep1 = sel[(size_t)r * c.Hkv * c.k + 1];
    sel[(size_t)r * c.Hkv * c.k + 1] = sel[(size_t)r * c.Hkv * c.k];
    EXPECT_ERR(MSA_EINVAL, msa_sparse_attention(&cfg, &kv, &bt, &ex), "twice");
    sel[(size_t)r * c.Hkv * c.k + 1] = keep1;
    CHECK_OK(msa_sparse_attention(&cfg, &kv, &bt, &ex));

    /* devices and threads */
    msa_exec eb = ex;
    eb.n_threads = -1;
    EXPECT_ERR(MSA_EINVAL, msa_attention(&cfg, &kv, &bt, &eb), "n_threads");
    eb = ex;
    eb.device = (msa_device_kind)5;
    EXPECT_ERR(MSA_EINVAL, msa_attention(&cfg, &kv, &bt, &eb), "device");
    if (!msa_cuda_available()) {
        eb = ex;
        eb.device = MSA_DEVICE_CUDA;
        kb = kv; kb.dtype = MSA_DTYPE_BF16; kb.max_blocks = 8;
        cfg.head_dim = 128;
        int rc = msa_attention(&cfg, &kb, &bt, &eb);
        CHECKF(rc == MSA_ENODEV, "CUDA without a GPU: %d (%s)", rc, msa_last_error());
        cfg.head_dim = c.d;
    }
    EXPECT_ERR(MSA_EINVAL, msa_attention(NULL, &kv, &bt, &ex), "cfg");
    /* n_q = 0 is a valid empty call */
    int32_t zind[3] = {0, 0, 0};
    bb = bt; bb.n_q = 0; bb.q_indptr = zind;
    CHECK_OK(msa_attention(&cfg, &kv, &bb, &ex));
    printf("validation: %d checks so far\n", t_checks);
    free(out);
    free(sel);
    prob_free(&P);
}

int main(void) {
    t_seed();
    const tcase cases[] = {
        /* name, n_seqs, len, Hq, Hkv, d, di, KH, Bk, k, scale, mode, rows, range, sep, hot, eq */
        {"short: N <= k*Bk", 2, {50, 64}, 8, 4, 8, 8, 1, 16, 4, 0, 0, 1, 2, 0, 0, 0},
        {"short prefill, per-group idx", 1, {60}, 8, 2, 16, 8, 2, 16, 4, 0, 1, 60, 2, 1, 0, 0},
        {"first block", 2, {5, 16}, 4, 2, 8, 4, 1, 16, 3, 0, 2, 4, 2, 0, 0, 0},
        {"exactly k and k+1 blocks", 3, {32, 33, 31}, 4, 1, 8, 8, 1, 8, 4, 0, 0, 1, 2, 0, 0, 0},
        {"top_k = 1", 2, {200, 77}, 4, 2, 8, 8, 1, 16, 1, 0, 2, 5, 2, 0, 0, 0},
        {"GQA 1 shared", 2, {300, 411}, 2, 2, 8, 8, 1, 16, 4, 0, 2, 6, 2, 0, 0, 0},
        {"GQA 2 per-group", 2, {300, 411}, 4, 2, 8, 8, 2, 16, 4, 0, 2, 6, 2, 1, 0, 0},
        {"GQA 4 shared", 2, {521, 97}, 8, 2, 16, 8, 1, 16, 5, 0, 2, 6, 2, 1, 0, 0},
        {"GQA 8 per-group", 2, {521, 97}, 16, 2, 8, 16, 2, 16, 5, 0, 2, 6, 2, 0, 0, 0},
        {"GQA 16 shared", 1, {700}, 32, 2, 8, 8, 1, 32, 4, 0, 2, 6, 2, 0, 0, 0},
        {"prefill chunk", 1, {500}, 8, 2, 8, 8, 1, 16, 5, 0, 1, 40, 2, 1, 0, 0},
        {"ties (values -1..1, di 2)", 2, {480, 333}, 4, 2, 8, 2, 2, 8, 6, 0, 2, 8, 1, 0, 0, 0},
        {"all blocks tie", 1, {400}, 4, 2, 8, 4, 1, 16, 6, 0, 2, 8, 1, 0, 0, 1},
        {"future blocks never chosen", 1, {640}, 4, 2, 8, 8, 1, 32, 4, 0, 2, 10, 2, 1, 1, 0},
        {"odd sizes (Bk 7, d 13)", 3, {100, 7, 58}, 6, 3, 13, 5, 3, 7, 4, 0.3f, 2, 5, 3, 1, 0, 0},
        {"Bk 100 > tile, d 128", 1, {1234}, 8, 2, 128, 32, 1, 100, 4, 0, 2, 3, 2, 0, 0, 0},
        {"gaussian index data", 2, {2000, 1500}, 8, 4, 64, 32, 1, 32, 8, 0, 2, 10, 0, 1, 0, 0},
        {"empty sequence, batch", 4, {90, 0, 130, 17}, 4, 2, 8, 8, 1, 16, 3, 0, 2, 3, 2, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);
    /* the block-score scratch cut into many row chunks (one or a few rows each) */
    setenv("MSA_INDEX_SCRATCH_KB", "1", 1);
    const tcase chunked = {"scratch in row chunks", 2, {3000, 1100}, 4, 2, 8, 8, 1, 16, 5, 0, 2, 12, 2, 1, 0, 0};
    run_case(&chunked);
    unsetenv("MSA_INDEX_SCRATCH_KB");
    test_validation();
    return t_done("test-kernels");
}
