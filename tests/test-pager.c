/*
 * test-pager.c: the block pager (memory/) against memory that holds
 * everything.
 *
 *   slotmap    random steps over a CLOCK slot map: a block used by the
 *              current step is never evicted, the page table and the slots
 *              agree, a full pin set refuses a victim.
 *   equiv      decode steps through the pager with a host cache that holds
 *              one step's blocks and no more (evictions at every step):
 *              every selected block's rows equal the ground truth, and MSA
 *              (msa_index_select + msa_sparse_attention) gives the same
 *              selection and output as over an all-resident copy built here
 *              from the ground truth; then the session is reopened from the
 *              source and continues. Counters are checked for consistency.
 *   faults     a source that fails chosen blocks (MSA_ECORRUPT, MSA_EIO)
 *              after writing garbage: the error names the block and the
 *              block never enters the cache; a failing write is retried.
 *   range      a step that needs more blocks than the pool: MSA_ERANGE with
 *              the numbers, and the memory still works afterwards.
 *   --gpu      the equivalence on CUDA with bf16 blocks and a tiny GPU pool
 *              (exits 77 without a GPU); then again with a GPU index budget
 *              of five blocks, so that the index keys are streamed through
 *              the pager's ring (msa_kvmem_paged_index_scan, scored chunk by
 *              chunk with msa_cuda_index_scores, one msa_cuda_topk_scores):
 *              the selection must equal the resident msa_index_select's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/msa.h"
#include "base/base.h"
#include "memory/pager.h"
#include "memory/slotmap.h"
#include "tests/testutil.h"

#ifdef MSA_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "kernels/cuda.h"
#endif

/* ---- slot map ------------------------------------------------------------- */

static void test_slotmap(void) {
    int n = 2 + t_randint(14);
    int64_t n_keys = n * 4 + t_randint(40);
    msa_slotmap m;
    CHECK_OK(msa_slotmap_init(&m, n, n_keys));
    int bad = 0, evictions = 0;
    int32_t *used = malloc(sizeof(int32_t) * n);
    for (int64_t step = 1; step <= 2000; step++) {
        int k = 1 + t_randint(n);
        int nu = 0;
        for (int i = 0; i < k; i++) {
            int64_t key = t_randint((int)n_keys);
            int s = msa_slotmap_find(&m, key);
            if (s < 0) {
                int64_t old;
                s = msa_slotmap_victim(&m, step, &old);
                if (s < 0) {
                    bad++;
                    break;
                }
                if (old >= 0) evictions++;
                for (int j = 0; j < nu; j++)
                    if (used[j] == s) bad++; /* evicted a block of this step */
                msa_slotmap_insert(&m, s, key, step);
            } else {
                msa_slotmap_touch(&m, s, step);
            }
            int dup = 0;
            for (int j = 0; j < nu; j++) dup |= used[j] == s;
            if (!dup) used[nu++] = s;
        }
        /* every block used this step is still there */
        for (int j = 0; j < nu; j++) {
            int64_t key = m.key[used[j]];
            if (key < 0 || m.page[key] != used[j]) bad++;
        }
        if (step % 500 == 0) /* page table and slots agree */
            for (int64_t key = 0; key < n_keys; key++)
                if (m.page[key] >= 0 && m.key[m.page[key]] != key) bad++;
    }
    CHECKF(bad == 0, "%d violations", bad);
    CHECK(evictions > 0);
    /* all pinned: no victim */
    for (int s = 0; s < n; s++) msa_slotmap_touch(&m, s, 99999);
    int64_t old;
    CHECK(msa_slotmap_victim(&m, 99999, &old) == -1);
    CHECK(msa_slotmap_victim(&m, 100000, &old) >= 0);
    free(used);
    msa_slotmap_free(&m);
}

/* ---- ground truth and an all-resident reference ---------------------------- */

typedef struct truth {
    int L, Hkv, d, ikh, di, Bk;
    int64_t cap, *len;
    float **k, **v, **kidx; /* per layer [cap][H][dim], token-major */
} truth;

static void truth_init(truth *T, const msa_pager_params *p) {
    T->L = p->n_layers;
    T->Hkv = p->cfg.n_kv_heads;
    T->d = p->cfg.head_dim;
    T->ikh = p->cfg.idx_key_heads;
    T->di = p->cfg.idx_dim;
    T->Bk = p->cfg.block_size;
    T->cap = p->max_tokens;
    T->len = calloc(T->L, sizeof *T->len);
    T->k = calloc(T->L, sizeof(float *));
    T->v = calloc(T->L, sizeof(float *));
    T->kidx = calloc(T->L, sizeof(float *));
    for (int l = 0; l < T->L; l++) {
        T->k[l] = malloc(sizeof(float) * T->cap * T->Hkv * T->d);
        T->v[l] = malloc(sizeof(float) * T->cap * T->Hkv * T->d);
        T->kidx[l] = malloc(sizeof(float) * T->cap * T->ikh * T->di);
    }
}

static void truth_free(truth *T) {
    for (int l = 0; l < T->L; l++) {
        free(T->k[l]);
        free(T->v[l]);
        free(T->kidx[l]);
    }
    free(T->k);
    free(T->v);
    free(T->kidx);
    free(T->len);
}

static float round_to(msa_dtype dt, float x) {
    if (dt == MSA_DTYPE_BF16) return msa_bf16_to_f32(msa_f32_to_bf16(x));
    return x;
}

/* n new random rows for `layer` (rounded to the dtype), appended to the
 * truth and through the memory. */
static int append_rows(truth *T, msa_kvmem *m, int layer, int n, msa_dtype dt) {
    int64_t at = T->len[layer];
    float *k = T->k[layer] + at * T->Hkv * T->d, *v = T->v[layer] + at * T->Hkv * T->d;
    float *ki = T->kidx[layer] + at * T->ikh * T->di;
    for (int64_t i = 0; i < (int64_t)n * T->Hkv * T->d; i++) {
        k[i] = round_to(dt, t_randn());
        v[i] = round_to(dt, t_randn());
    }
    for (int64_t i = 0; i < (int64_t)n * T->ikh * T->di; i++) ki[i] = round_to(dt, t_randn());
    int rc = m->ops->append(m, layer, n, k, v, ki);
    if (rc == MSA_OK) T->len[layer] += n;
    return rc;
}

/* Pool-layout copies of the whole layer [nb][H][Bk][dim] with an identity
 * table, in fp32. */
typedef struct resident {
    float *k, *v, *kidx;
    int32_t *table, indptr[2], seq_len;
    int nb;
} resident;

static void to_blocks(const truth *T, const float *src, float *dst, int64_t len, int H, int dim) {
    int64_t nb = (len + T->Bk - 1) / T->Bk;
    memset(dst, 0, sizeof(float) * nb * H * T->Bk * dim);
    for (int64_t t = 0; t < len; t++)
        for (int h = 0; h < H; h++)
            memcpy(dst + (((t / T->Bk) * H + h) * T->Bk + t % T->Bk) * dim,
                   src + (t * H + h) * dim, sizeof(float) * dim);
}

static void resident_build(const truth *T, int layer, resident *R, msa_paged_kv *kv) {
    int64_t len = T->len[layer];
    R->nb = (int)((len + T->Bk - 1) / T->Bk);
    size_t kvn = (size_t)R->nb * T->Hkv * T->Bk * T->d, in = (size_t)R->nb * T->ikh * T->Bk * T->di;
    R->k = realloc(R->k, sizeof(float) * (kvn ? kvn : 1));
    R->v = realloc(R->v, sizeof(float) * (kvn ? kvn : 1));
    R->kidx = realloc(R->kidx, sizeof(float) * (in ? in : 1));
    R->table = realloc(R->table, sizeof(int32_t) * (R->nb ? R->nb : 1));
    to_blocks(T, T->k[layer], R->k, len, T->Hkv, T->d);
    to_blocks(T, T->v[layer], R->v, len, T->Hkv, T->d);
    to_blocks(T, T->kidx[layer], R->kidx, len, T->ikh, T->di);
    for (int b = 0; b < R->nb; b++) R->table[b] = b;
    R->indptr[0] = 0;
    R->indptr[1] = R->nb;
    R->seq_len = (int32_t)len;
    memset(kv, 0, sizeof *kv);
    kv->dtype = MSA_DTYPE_F32;
    kv->k = R->k;
    kv->v = R->v;
    kv->kidx = R->kidx;
    kv->kv_indptr = R->indptr;
    kv->kv_table = R->table;
    kv->seq_len = &R->seq_len;
    kv->n_seqs = 1;
    kv->max_blocks = R->nb;
}

static void resident_free(resident *R) {
    free(R->k);
    free(R->v);
    free(R->kidx);
    free(R->table);
}

/* Compares the rows of every selected block in a host view with the truth. */
static int view_matches(const truth *T, int layer, const msa_paged_kv *kv, const int32_t *sel,
                        int n_sel) {
    int bad = 0;
    const float *K = kv->k, *V = kv->v;
    for (int i = 0; i < n_sel; i++) {
        int b = sel[i];
        if (b < 0) continue;
        int slot = kv->kv_table[kv->kv_indptr[0] + b];
        if (slot < 0) {
            bad++;
            continue;
        }
        for (int r = 0; r < T->Bk && (int64_t)b * T->Bk + r < T->len[layer]; r++)
            for (int h = 0; h < T->Hkv; h++) {
                size_t o = (((size_t)slot * T->Hkv + h) * T->Bk + r) * T->d;
                size_t g = (((size_t)b * T->Bk + r) * T->Hkv + h) * T->d;
                bad += memcmp(K + o, T->k[layer] + g, sizeof(float) * T->d) != 0;
                bad += memcmp(V + o, T->v[layer] + g, sizeof(float) * T->d) != 0;
            }
    }
    return bad;
}

/* ---- a source that fails chosen blocks --------------------------------------- */

typedef struct faulty {
    msa_block_source inner;
    int bad_layer;
    int64_t bad_block;
    int read_status;  /* returned for the bad block, MSA_OK: no fault */
    int write_status; /* returned by every write, MSA_OK: no fault */
    size_t half;
    int reads;
} faulty;

static int f_read(void *ctx, int layer, int64_t block, void *k, void *v) {
    faulty *F = ctx;
    __atomic_add_fetch(&F->reads, 1, __ATOMIC_RELAXED);
    if (F->read_status != MSA_OK && layer == F->bad_layer && block == F->bad_block) {
        memset(k, 0x7f, F->half); /* garbage that must never be attended over */
        memset(v, 0x7f, F->half);
        return msa_error(F->read_status, "injected fault");
    }
    return F->inner.read_block(F->inner.ctx, layer, block, k, v);
}
static int f_index(void *ctx, int layer, int64_t block, void *kidx) {
    faulty *F = ctx;
    return F->inner.read_index(F->inner.ctx, layer, block, kidx);
}
static int64_t f_length(void *ctx, int layer) {
    faulty *F = ctx;
    return F->inner.length(F->inner.ctx, layer);
}
static int f_write(void *ctx, int layer, int64_t block, const void *k, const void *v,
                   const void *kidx) {
    faulty *F = ctx;
    if (F->write_status != MSA_OK) return msa_error(F->write_status, "injected write fault");
    return F->inner.write_block(F->inner.ctx, layer, block, k, v, kidx);
}

static msa_block_source faulty_source(faulty *F, msa_memsource *ms, size_t half) {
    memset(F, 0, sizeof *F);
    F->inner = msa_memsource_source(ms);
    F->bad_layer = -1;
    F->half = half;
    msa_block_source s = {F, f_read, f_index, f_length, f_write, 1};
    return s;
}

/* ---- the CPU equivalence ----------------------------------------------------- */

static msa_pager_params small_params(msa_dtype dt, msa_device_kind dev) {
    msa_pager_params p = msa_pager_default_params();
    p.cfg.n_kv_heads = 2;
    p.cfg.n_q_heads = 2 * (1 + t_randint(2));
    p.cfg.head_dim = dev == MSA_DEVICE_CUDA ? 64 : 16;
    p.cfg.idx_dim = dev == MSA_DEVICE_CUDA ? 64 : 8;
    p.cfg.idx_key_heads = t_randint(2) ? 1 : 2;
    p.cfg.block_size = dev == MSA_DEVICE_CUDA ? 16 : 8;
    p.cfg.top_k = 4;
    p.n_layers = 2;
    p.max_tokens = 600;
    p.dtype = dt;
    p.device = dev;
    return p;
}

/* One decode step of one layer through the memory and over the resident
 * copy; returns the number of mismatches. */
static int cpu_step(truth *T, msa_kvmem *m, int layer, const msa_attn_config *cfg,
                    resident *R) {
    int Hq = cfg->n_q_heads, Hkv = cfg->n_kv_heads, d = cfg->head_dim, kk = cfg->top_k;
    float *q = malloc(sizeof(float) * Hq * d), *qi = malloc(sizeof(float) * Hkv * cfg->idx_dim);
    float *o1 = malloc(sizeof(float) * Hq * d), *o2 = malloc(sizeof(float) * Hq * d);
    int32_t *s1 = malloc(sizeof(int32_t) * Hkv * kk), *s2 = malloc(sizeof(int32_t) * Hkv * kk);
    for (int i = 0; i < Hq * d; i++) q[i] = t_randn();
    for (int i = 0; i < Hkv * cfg->idx_dim; i++) qi[i] = t_randn();
    int32_t qptr[2] = {0, 1}, qpos = (int32_t)(T->len[layer] - 1);
    msa_attn_batch b1 = {1, qptr, &qpos, q, qi, o1, NULL, s1};
    msa_attn_batch b2 = {1, qptr, &qpos, q, qi, o2, NULL, s2};
    msa_exec ex = msa_exec_default();
    ex.n_threads = 2;
    int bad = 0, rc;
    msa_paged_kv kv;
    memset(&kv, 0, sizeof kv);
    if ((rc = m->ops->index_view(m, layer, &kv)) != MSA_OK ||
        (rc = msa_index_select(cfg, &kv, &b1, &ex)) != MSA_OK ||
        (rc = m->ops->kv_view(m, layer, s1, Hkv * kk, &kv)) != MSA_OK ||
        (rc = msa_sparse_attention(cfg, &kv, &b1, &ex)) != MSA_OK) {
        fprintf(stderr, "paged step: %s: %s\n", msa_strerror(rc), msa_last_error());
        bad++;
        goto out;
    }
    bad += view_matches(T, layer, &kv, s1, Hkv * kk);
    msa_paged_kv rk;
    resident_build(T, layer, R, &rk);
    if ((rc = msa_index_select(cfg, &rk, &b2, &ex)) != MSA_OK ||
        (rc = msa_sparse_attention(cfg, &rk, &b2, &ex)) != MSA_OK) {
        fprintf(stderr, "resident step: %s: %s\n", msa_strerror(rc), msa_last_error());
        bad++;
        goto out;
    }
    bad += memcmp(s1, s2, sizeof(int32_t) * Hkv * kk) != 0;
    for (int i = 0; i < Hq * d; i++) bad += fabsf(o1[i] - o2[i]) > 1e-6f * (1 + fabsf(o2[i]));
out:
    free(q), free(qi), free(o1), free(o2), free(s1), free(s2);
    return bad;
}

static void check_counters(const msa_pager_stats *s, int gpu) {
    CHECK(s->host_hits + s->host_misses == s->host_lookups);
    CHECK(s->bytes_store_to_host == s->host_misses * (uint64_t)s->block_bytes);
    CHECK(s->gpu_hits + s->gpu_misses == s->gpu_lookups);
    CHECK(s->bytes_host_to_gpu == s->gpu_misses * (uint64_t)s->block_bytes);
    if (gpu) {
        CHECK(s->host_lookups == s->gpu_misses);
        CHECK(s->gpu_evictions > 0);
    } else {
        CHECK(s->gpu_lookups == 0 && s->bytes_host_to_gpu == 0);
    }
    CHECK(s->host_evictions > 0);
    CHECK(s->host_hits > 0 && s->host_misses > 0);
}

static void test_equiv_cpu(void) {
    msa_pager_params p = small_params(MSA_DTYPE_F32, MSA_DEVICE_CPU);
    /* one step's worth: the other top_k - 1 blocks of each group, plus the
     * local block when it has just been completed */
    int per_step = p.cfg.n_kv_heads * (p.cfg.top_k - 1) + 1;
    p.host_cache_bytes = per_step * msa_pager_block_bytes(&p);
    msa_memsource *ms;
    CHECK_OK(msa_memsource_init(&ms, &p));
    msa_block_source src = msa_memsource_source(ms);
    msa_kvmem *m = NULL;
    CHECK_OK(msa_kvmem_paged_init(&m, &p, &src));
    if (!m) return;
    truth T;
    truth_init(&T, &p);
    resident R = {0};
    int bad = 0, steps = 0;
    for (int l = 0; l < p.n_layers; l++) /* prefill in uneven chunks */
        while (T.len[l] < 40 + 7 * l) CHECK_OK(append_rows(&T, m, l, 1 + t_randint(13), p.dtype));
    for (int it = 0; it < 120; it++)
        for (int l = 0; l < p.n_layers; l++) {
            CHECK_OK(append_rows(&T, m, l, 1, p.dtype));
            bad += cpu_step(&T, m, l, &p.cfg, &R);
            steps++;
        }
    CHECKF(bad == 0, "%d mismatches over %d steps", bad, steps);
    msa_pager_stats st;
    msa_kvmem_paged_stats(m, &st);
    check_counters(&st, 0);
    CHECK(st.steps == (uint64_t)steps);
    CHECK(st.blocks_written > 0);
    printf("cpu equiv: %d steps, host %llu lookups %llu hits %llu misses %llu evictions\n",
           steps, (unsigned long long)st.host_lookups, (unsigned long long)st.host_hits,
           (unsigned long long)st.host_misses, (unsigned long long)st.host_evictions);

    /* resume: the tail goes to the source, a new pager continues */
    for (int l = 0; l < p.n_layers; l++) {
        int64_t blk;
        int rows;
        const void *k, *v, *ki;
        CHECK_OK(msa_kvmem_paged_tail(m, l, &blk, &rows, &k, &v, &ki));
        CHECK(blk * p.cfg.block_size + rows == T.len[l]);
        if (rows > 0) CHECK_OK(msa_memsource_put(ms, l, blk, k, v, ki, T.len[l]));
    }
    msa_kvmem_paged_free(m);
    m = NULL;
    CHECK_OK(msa_kvmem_paged_init(&m, &p, &src));
    if (m) {
        bad = 0;
        for (int l = 0; l < p.n_layers; l++) CHECK(m->ops->length(m, l) == T.len[l]);
        for (int it = 0; it < 30; it++)
            for (int l = 0; l < p.n_layers; l++) {
                CHECK_OK(append_rows(&T, m, l, 1 + (it % 5 == 0) * t_randint(9), p.dtype));
                bad += cpu_step(&T, m, l, &p.cfg, &R);
            }
        CHECKF(bad == 0, "%d mismatches after reopening", bad);
    }
    msa_kvmem_paged_free(m);
    resident_free(&R);
    truth_free(&T);
    msa_memsource_free(ms);
}

/* ---- faults and limits ----------------------------------------------------------- */

static void test_faults(void) {
    msa_pager_params p = small_params(MSA_DTYPE_F32, MSA_DEVICE_CPU);
    p.host_cache_bytes = 8 * msa_pager_block_bytes(&p);
    msa_memsource *ms;
    CHECK_OK(msa_memsource_init(&ms, &p));
    faulty F;
    msa_block_source src = faulty_source(&F, ms, msa_pager_block_bytes(&p) / 2);
    msa_kvmem *m = NULL;
    CHECK_OK(msa_kvmem_paged_init(&m, &p, &src));
    if (!m) return;
    truth T;
    truth_init(&T, &p);
    int Bk = p.cfg.block_size;
    CHECK_OK(append_rows(&T, m, 0, 12 * Bk + 3, p.dtype));
    CHECK_OK(append_rows(&T, m, 1, 5 * Bk, p.dtype));

    /* a write that fails: the rows stay, the block is retried */
    F.write_status = MSA_EIO;
    int rc = append_rows(&T, m, 1, Bk, p.dtype); /* completes block 5 */
    CHECK(rc == MSA_EIO);
    CHECKF(strstr(msa_last_error(), "block 5") != NULL, "message: %s", msa_last_error());
    T.len[1] += Bk; /* the rows were kept */
    CHECK(m->ops->length(m, 1) == T.len[1]);
    F.write_status = MSA_OK;
    CHECK_OK(append_rows(&T, m, 1, 2, p.dtype)); /* writes block 5 first */
    msa_paged_kv kv;
    int32_t sel[4] = {5, 2, -1, 5};
    CHECK_OK(m->ops->kv_view(m, 1, sel, 4, &kv));
    CHECK(view_matches(&T, 1, &kv, sel, 4) == 0);

    /* reopen, so that the cache is empty (completed blocks were written
     * through into it) */
    for (int l = 0; l < 2; l++) {
        int64_t blk;
        int rows;
        const void *k, *v, *ki;
        CHECK_OK(msa_kvmem_paged_tail(m, l, &blk, &rows, &k, &v, &ki));
        if (rows > 0) CHECK_OK(msa_memsource_put(ms, l, blk, k, v, ki, T.len[l]));
    }
    msa_kvmem_paged_free(m);
    m = NULL;
    CHECK_OK(msa_kvmem_paged_init(&m, &p, &src));
    if (!m) return;
    int statuses[2] = {MSA_ECORRUPT, MSA_EIO};
    int64_t dropped = -1;
    for (int f = 0; f < 2; f++) {
        /* a block not read before: 0..5, then 7..11 */
        int64_t badb = f == 0 ? t_randint(6) : 7 + t_randint(5);
        F.bad_layer = 0;
        F.bad_block = badb;
        F.read_status = statuses[f];
        int32_t s2[3] = {(int32_t)((badb + 1) % 12), (int32_t)badb, 12};
        memset(&kv, 0, sizeof kv);
        rc = m->ops->kv_view(m, 0, s2, 3, &kv);
        if (statuses[f] == MSA_ECORRUPT) {
            /* a block that fails its checksum is left out, for good: its
             * selection entry becomes -1, the others are served */
            CHECK_OK(rc);
            CHECK(s2[1] == -1 && s2[0] == (int32_t)((badb + 1) % 12));
            CHECK(msa_kvmem_paged_damaged(m) == 1);
            CHECK(view_matches(&T, 0, &kv, s2, 3) == 0);
            F.read_status = MSA_OK;
            s2[1] = (int32_t)badb;
            CHECK_OK(m->ops->kv_view(m, 0, s2, 3, &kv));
            CHECK(s2[1] == -1);
            dropped = badb;
            continue;
        }
        CHECK(rc == statuses[f]);
        char want[64];
        snprintf(want, sizeof want, "layer 0, block %lld", (long long)badb);
        CHECKF(strstr(msa_last_error(), want) != NULL, "message: %s", msa_last_error());
        /* the fault persists: still an error, never a cached bad block */
        CHECK(m->ops->kv_view(m, 0, s2, 3, &kv) == statuses[f]);
        F.read_status = MSA_OK;
        msa_pager_stats before, after;
        msa_kvmem_paged_stats(m, &before);
        CHECK_OK(m->ops->kv_view(m, 0, s2, 3, &kv));
        msa_kvmem_paged_stats(m, &after);
        CHECK(after.host_misses >= before.host_misses + 1); /* read again */
        CHECK(view_matches(&T, 0, &kv, s2, 3) == 0);
    }

    /* a step larger than the cache: refused with the numbers, still usable */
    int32_t big[10];
    for (int i = 0, b = 0; i < 10; b++) /* without the damaged block */
        if (b != dropped) big[i++] = b;
    rc = m->ops->kv_view(m, 0, big, 10, &kv);
    CHECK(rc == MSA_ERANGE);
    CHECKF(strstr(msa_last_error(), "10 distinct") && strstr(msa_last_error(), "8 slots"),
           "message: %s", msa_last_error());
    CHECK_OK(m->ops->kv_view(m, 0, big, 8, &kv));
    CHECK(view_matches(&T, 0, &kv, big, 8) == 0);
    /* a block past the end */
    int32_t past[1] = {13};
    CHECK(m->ops->kv_view(m, 0, past, 1, &kv) == MSA_EINVAL);
    /* pool of no slot */
    msa_kvmem *m2 = NULL;
    p.host_cache_bytes = msa_pager_block_bytes(&p) - 1;
    CHECK(msa_kvmem_paged_init(&m2, &p, &src) == MSA_ERANGE && m2 == NULL);
    msa_pager_stats st;
    msa_kvmem_paged_stats(m, &st);
    CHECK(st.host_hits + st.host_misses == st.host_lookups);
    msa_kvmem_paged_free(m);
    truth_free(&T);
    msa_memsource_free(ms);
}

/* ---- CUDA ----------------------------------------------------------------------- */

#ifdef MSA_HAVE_CUDA
#define CU(x)                                                                     \
    do {                                                                          \
        cudaError_t e_ = (x);                                                     \
        if (e_ != cudaSuccess) {                                                  \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x,           \
                    cudaGetErrorString(e_));                                      \
            t_failures++;                                                         \
            return;                                                               \
        }                                                                         \
    } while (0)

static void to_bf16(const float *x, uint16_t *y, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = msa_f32_to_bf16(x[i]);
}

typedef struct scan_ctx {
    const msa_attn_config *cfg;
    const msa_attn_batch *b;
    float *scores;
    int stride;
    void *scratch;
    void *stream;
    int calls;
} scan_ctx;

static int score_chunk(void *user, const msa_paged_kv *chunk, int64_t block0, int n) {
    scan_ctx *c = user;
    c->calls++;
    if (chunk->max_blocks != n || !chunk->kidx) return msa_error(MSA_EINVAL, "bad chunk view");
    return msa_cuda_index_scores(c->cfg, chunk, c->b, (int)block0, c->stride, c->scores,
                                 c->scratch, c->stream);
}

static void test_equiv_gpu(int stream_index) {
    msa_pager_params p = small_params(MSA_DTYPE_BF16, MSA_DEVICE_CUDA);
    msa_attn_config *cfg = &p.cfg;
    int Hq = cfg->n_q_heads, Hkv = cfg->n_kv_heads, d = cfg->head_dim, di = cfg->idx_dim;
    int kk = cfg->top_k, Bk = cfg->block_size, ikh = cfg->idx_key_heads;
    int per_step = Hkv * (kk - 1) + 1;
    size_t bb = msa_pager_block_bytes(&p);
    p.gpu_pool_bytes = per_step * bb;          /* one step's worth: evicts every step */
    p.host_cache_bytes = (per_step + 3) * bb;
    p.gpu_index_bytes = 1 << 20;
    size_t ibb = (size_t)p.cfg.idx_key_heads * p.cfg.block_size * p.cfg.idx_dim * 2;
    if (stream_index) p.gpu_index_bytes = 5 * ibb;
    cudaStream_t stream;
    CU(cudaStreamCreate(&stream));
    p.stream = stream;
    msa_memsource *ms;
    CHECK_OK(msa_memsource_init(&ms, &p));
    msa_block_source src = msa_memsource_source(ms);
    msa_kvmem *m = NULL;
    CHECK_OK(msa_kvmem_paged_init(&m, &p, &src));
    if (!m) return;
    truth T;
    truth_init(&T, &p);
    int maxb = (int)(p.max_tokens / Bk);
    size_t kvn = (size_t)maxb * Hkv * Bk * d, in = (size_t)maxb * ikh * Bk * di;
    /* device buffers of the resident reference and the batch */
    uint16_t *dk, *dv, *dki, *dq, *dqi, *do1, *do2;
    int32_t *dtab, *dmeta, *ds1, *ds2;
    CU(cudaMalloc((void **)&dk, kvn * 2));
    CU(cudaMalloc((void **)&dv, kvn * 2));
    CU(cudaMalloc((void **)&dki, in * 2));
    CU(cudaMalloc((void **)&dq, (size_t)Hq * d * 2));
    CU(cudaMalloc((void **)&dqi, (size_t)Hkv * di * 2));
    CU(cudaMalloc((void **)&do1, (size_t)Hq * d * 2));
    CU(cudaMalloc((void **)&do2, (size_t)Hq * d * 2));
    CU(cudaMalloc((void **)&dtab, (size_t)maxb * 4));
    CU(cudaMalloc((void **)&dmeta, 16 + 8));
    CU(cudaMalloc((void **)&ds1, (size_t)Hkv * kk * 4));
    CU(cudaMalloc((void **)&ds2, (size_t)Hkv * kk * 4));
    int32_t *ident = malloc(sizeof(int32_t) * maxb);
    for (int b = 0; b < maxb; b++) ident[b] = b;
    CU(cudaMemcpy(dtab, ident, (size_t)maxb * 4, cudaMemcpyHostToDevice));
    msa_exec ex = {MSA_DEVICE_CUDA, 0, stream, NULL, 0};
    ex.workspace_size = msa_attention_workspace_size(cfg, 1, maxb);
    CU(cudaMalloc(&ex.workspace, ex.workspace_size ? ex.workspace_size : 1));
    float *dscores;
    void *dscratch;
    CU(cudaMalloc((void **)&dscores, (size_t)Hkv * maxb * 4));
    CU(cudaMalloc(&dscratch, msa_cuda_index_scratch_size(1, 1)));
    int scans = 0, chunk_calls = 0;
    float *fk = malloc(sizeof(float) * kvn), *fv = malloc(sizeof(float) * kvn),
          *fki = malloc(sizeof(float) * in);
    uint16_t *hk = malloc(kvn * 2), *hv = malloc(kvn * 2), *hki = malloc(in * 2);
    uint16_t *o1 = malloc((size_t)Hq * d * 2), *o2 = malloc((size_t)Hq * d * 2);
    uint16_t *slotbuf = malloc(bb / 2);
    int32_t s1[64], s2[64];
    float *q = malloc(sizeof(float) * Hq * d), *qi = malloc(sizeof(float) * Hkv * di);
    uint16_t *hq = malloc((size_t)Hq * d * 2), *hqi = malloc((size_t)Hkv * di * 2);
    int bad = 0, data_bad = 0, steps = 0;
    for (int l = 0; l < p.n_layers; l++)
        while (T.len[l] < 70 + 9 * l) CHECK_OK(append_rows(&T, m, l, 1 + t_randint(20), p.dtype));
    for (int it = 0; it < 100 && !bad; it++)
        for (int l = 0; l < p.n_layers; l++) {
            CHECK_OK(append_rows(&T, m, l, 1, p.dtype));
            for (int i = 0; i < Hq * d; i++) q[i] = t_randn();
            for (int i = 0; i < Hkv * di; i++) qi[i] = t_randn();
            to_bf16(q, hq, (size_t)Hq * d);
            to_bf16(qi, hqi, (size_t)Hkv * di);
            CU(cudaMemcpy(dq, hq, (size_t)Hq * d * 2, cudaMemcpyHostToDevice));
            CU(cudaMemcpy(dqi, hqi, (size_t)Hkv * di * 2, cudaMemcpyHostToDevice));
            int32_t qptr_h[2] = {0, 1}, qpos_h = (int32_t)(T.len[l] - 1);
            int32_t *dqptr = dmeta + 4, *dqpos = dmeta + 3; /* spare words of dmeta */
            int32_t meta_h[6];
            int64_t nb = (T.len[l] + Bk - 1) / Bk;
            meta_h[0] = 0, meta_h[1] = (int32_t)nb, meta_h[2] = (int32_t)T.len[l];
            meta_h[3] = qpos_h, meta_h[4] = qptr_h[0], meta_h[5] = qptr_h[1];
            CU(cudaMemcpy(dmeta, meta_h, sizeof meta_h, cudaMemcpyHostToDevice));
            msa_attn_batch b1 = {1, dqptr, dqpos, dq, dqi, do1, NULL, ds1};
            msa_attn_batch b2 = {1, dqptr, dqpos, dq, dqi, do2, NULL, ds2};
            msa_paged_kv kv;
            memset(&kv, 0, sizeof kv);
            int rc;
            if ((rc = m->ops->index_view(m, l, &kv)) == MSA_OK) {
                if (msa_kvmem_paged_index_streamed(m, l)) {
                    /* the index keys are paged: chunk by chunk, then one top-k */
                    scan_ctx c = {cfg, &b1, dscores, kv.max_blocks, dscratch, stream, 0};
                    if (kv.kidx != NULL) rc = MSA_EINVAL;
                    if (rc == MSA_OK) rc = msa_kvmem_paged_index_scan(m, l, score_chunk, &c);
                    if (rc == MSA_OK)
                        rc = msa_cuda_topk_scores(&kv, &b1, Hkv, Bk, kk, dscores, ds1, stream, NULL);
                    scans++;
                    chunk_calls += c.calls;
                } else {
                    rc = msa_index_select(cfg, &kv, &b1, &ex);
                }
            }
            if (rc != MSA_OK ||
                (rc = m->ops->kv_view(m, l, ds1, Hkv * kk, &kv)) != MSA_OK ||
                (rc = msa_sparse_attention(cfg, &kv, &b1, &ex)) != MSA_OK) {
                fprintf(stderr, "gpu paged step: %s: %s\n", msa_strerror(rc), msa_last_error());
                bad++;
                break;
            }
            /* the resident reference */
            to_blocks(&T, T.k[l], fk, T.len[l], Hkv, d);
            to_blocks(&T, T.v[l], fv, T.len[l], Hkv, d);
            to_blocks(&T, T.kidx[l], fki, T.len[l], ikh, di);
            size_t nk = (size_t)nb * Hkv * Bk * d, ni = (size_t)nb * ikh * Bk * di;
            to_bf16(fk, hk, nk);
            to_bf16(fv, hv, nk);
            to_bf16(fki, hki, ni);
            CU(cudaMemcpyAsync(dk, hk, nk * 2, cudaMemcpyHostToDevice, stream));
            CU(cudaMemcpyAsync(dv, hv, nk * 2, cudaMemcpyHostToDevice, stream));
            CU(cudaMemcpyAsync(dki, hki, ni * 2, cudaMemcpyHostToDevice, stream));
            msa_paged_kv rk = {MSA_DTYPE_BF16, dk, dv, dmeta, dtab, dki, NULL, NULL, dmeta + 2, 1,
                               (int)nb};
            if ((rc = msa_index_select(cfg, &rk, &b2, &ex)) != MSA_OK ||
                (rc = msa_sparse_attention(cfg, &rk, &b2, &ex)) != MSA_OK) {
                fprintf(stderr, "gpu resident step: %s: %s\n", msa_strerror(rc),
                        msa_last_error());
                bad++;
                break;
            }
            CU(cudaStreamSynchronize(stream));
            CU(cudaMemcpy(s1, ds1, (size_t)Hkv * kk * 4, cudaMemcpyDeviceToHost));
            CU(cudaMemcpy(s2, ds2, (size_t)Hkv * kk * 4, cudaMemcpyDeviceToHost));
            CU(cudaMemcpy(o1, do1, (size_t)Hq * d * 2, cudaMemcpyDeviceToHost));
            CU(cudaMemcpy(o2, do2, (size_t)Hq * d * 2, cudaMemcpyDeviceToHost));
            bad += memcmp(s1, s2, sizeof(int32_t) * Hkv * kk) != 0;
            for (int i = 0; i < Hq * d; i++)
                bad += fabsf(msa_bf16_to_f32(o1[i]) - msa_bf16_to_f32(o2[i])) >
                       1e-2f * (1 + fabsf(msa_bf16_to_f32(o2[i])));
            /* the pool's rows of every selected block, read back */
            int32_t table[64];
            CU(cudaMemcpy(table, kv.kv_table, (size_t)nb * 4, cudaMemcpyDeviceToHost));
            for (int i = 0; i < Hkv * kk; i++) {
                int b = s1[i];
                if (b < 0) continue;
                if (table[b] < 0) {
                    data_bad++;
                    continue;
                }
                size_t half = bb / 2;
                CU(cudaMemcpy(slotbuf, (const char *)kv.k + (size_t)table[b] * half, half,
                              cudaMemcpyDeviceToHost));
                size_t rows = T.len[l] - (int64_t)b * Bk < Bk ? T.len[l] - (int64_t)b * Bk : Bk;
                for (int h = 0; h < Hkv; h++)
                    data_bad += memcmp(slotbuf + (size_t)h * Bk * d,
                                       hk + (((size_t)b * Hkv + h) * Bk) * d, rows * d * 2) != 0;
            }
            steps++;
        }
    CHECKF(bad == 0, "%d mismatches (steps %d)", bad, steps);
    CHECKF(data_bad == 0, "%d blocks with wrong rows in the GPU pool", data_bad);
    msa_pager_stats st;
    msa_kvmem_paged_stats(m, &st);
    check_counters(&st, 1);
    int n_streamed = 0;
    int64_t chunk_blocks = 0;
    uint64_t chunks = 0;
    msa_kvmem_paged_index_info(m, &n_streamed, &chunk_blocks, &chunks);
    if (stream_index) {
        CHECKF(n_streamed == p.n_layers && scans > 0 && chunks == (uint64_t)chunk_calls &&
                   chunk_calls > 2 * scans && chunk_blocks == 2,
               "streamed layers %d, scans %d, chunks %llu (%d calls), %lld blocks per chunk",
               n_streamed, scans, (unsigned long long)chunks, chunk_calls,
               (long long)chunk_blocks);
        CHECK(st.bytes_index_to_gpu >= (uint64_t)chunk_calls * ibb);
        printf("gpu index keys streamed: budget %zu bytes (%zu per block), %d layers, %d scans "
               "in %d chunks of <= %lld blocks, %llu index bytes copied up\n",
               p.gpu_index_bytes, ibb, n_streamed, scans, chunk_calls, (long long)chunk_blocks,
               (unsigned long long)st.bytes_index_to_gpu);
    } else {
        CHECK(n_streamed == 0 && chunks == 0);
    }
    printf("gpu equiv: %d steps, gpu %llu lookups %llu hits %llu misses %llu evictions, "
           "host %llu hits %llu misses\n", steps, (unsigned long long)st.gpu_lookups,
           (unsigned long long)st.gpu_hits, (unsigned long long)st.gpu_misses,
           (unsigned long long)st.gpu_evictions, (unsigned long long)st.host_hits,
           (unsigned long long)st.host_misses);
    msa_kvmem_paged_free(m);
    truth_free(&T);
    msa_memsource_free(ms);
    cudaFree(dk), cudaFree(dv), cudaFree(dki), cudaFree(dq), cudaFree(dqi), cudaFree(do1);
    cudaFree(do2), cudaFree(dtab), cudaFree(dmeta), cudaFree(ds1), cudaFree(ds2);
    cudaFree(ex.workspace);
    cudaFree(dscores);
    cudaFree(dscratch);
    cudaStreamDestroy(stream);
    free(ident), free(fk), free(fv), free(fki), free(hk), free(hv), free(hki), free(o1);
    free(o2), free(slotbuf), free(q), free(qi), free(hq), free(hqi);
}
#endif

int main(int argc, char **argv) {
    t_seed();
    int gpu = argc > 1 && strcmp(argv[1], "--gpu") == 0;
    if (gpu) {
        if (!msa_cuda_available()) T_SKIP("no CUDA device (or a build without CUDA)");
#ifdef MSA_HAVE_CUDA
        test_equiv_gpu(0);
        test_equiv_gpu(1);
#endif
        return t_done("test-pager --gpu");
    }
    test_slotmap();
    test_equiv_cpu();
    test_faults();
    return t_done("test-pager");
}
