/*
 * forward_cuda.cu: the transformer forward pass on a CUDA GPU, the twin of
 * engine/forward/forward.c (engine/forward/model_cuda.h describes the objects).
 * This file holds the orchestration only: the weights and scratch, the order
 * of the launches, the decode graph and the per-kernel timing. The kernels
 * are in kernels/ (forward_ops.h: forward.cu, gemv.cu, each with its C
 * reference in forward_ref.c) and the attention is the MSA core's.
 *
 * Per layer, for a chunk of n tokens (the order of forward.c):
 *
 * (one-token steps: the rmsnorms, the GEMMs and SwiGLU are msa_fwd_gemv
 * launches instead, with the qkv post-processing and the argmax as
 * epilogues of the qkv and classifier GEMVs; kernels/gemv.cu)
 *
 *   xb  = rmsnorm(x) * attn_norm                        msa_fwd_rmsnorm, bf16 out
 *   y   = xb [Wq; Wk; Wv; (Wqi; Wki)]^T  (+ biases)       one cuBLAS GEMM, fp32 out
 *   q, k, v, q_idx, k_idx  with RoPE                     msa_fwd_qkv_post (+
 *       k, v, k_idx written straight into the layer        msa_fwd_index_rope when
 *       memory at their positions (bf16)                   the index is trained)
 *   MSA: msa_index_select -> msa_sparse_attention        kernels/ CUDA backend (d, d_idx
 *        (dense: msa_dense_attention)                      in {64, 128}), else the generic
 *                                                          path below
 *   x  += att Wo^T                                        GEMM with beta = 1 (fp32 x)
 *   xb  = rmsnorm(x) * ffn_norm
 *   y   = xb [W1; W3]^T                                   one GEMM, (n, 2F) fp32
 *   h   = silu(y[:, :F]) * y[:, F:]                       msa_fwd_swiglu, bf16 out
 *   x  += h W2^T                                          GEMM with beta = 1
 *
 * then logits = (rmsnorm(x) * output_norm) Wout^T for the last row (or all)
 * and, on request, the argmax of each row (msa_fwd_argmax).
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
 * 1 says), then msa_fwd_generic_attention (one thread per (row, query head),
 * an online softmax over the listed blocks). It exists so that every model
 * runs on the GPU, and as a second opinion on the fast path.
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/forward/model_cuda.h"
#include "base/base.h"
#include "kernels/cuda.h"
#include "engine/model/gguf.h" /* C linkage: included by model_cuda.h inside extern "C" */
#include "kernels/forward_ops.h"
#include "kernels/qgemv.h"
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

static int ckb(cublasStatus_t s, const char *what) {
    if (s == CUBLAS_STATUS_SUCCESS) return MSA_OK;
    return msa_error(MSA_ECUDA, "forward (CUDA): cuBLAS %s: %s", what, cublasGetStatusString(s));
}

/* ---- objects ----------------------------------------------------------------- */

/* A weight matrix kept as the GGUF file's quantized bytes (kernels/qgemv.h):
 * nseg segments stacked by rows (q, k, v; gate, up), read by the decode
 * GEMV as they are and dequantized to bf16 for prefill GEMMs. nseg 0: the
 * matrix is bf16 (the field beside it). */
typedef struct qweight {
    int nseg;
    msa_fwd_qmat seg[MSA_FWD_QGEMV_MAX_SEG];
    int in;       /* elements per row */
    size_t bytes; /* all segments */
} qweight;

/* One layer on the device. Nqkv = Hq*d + 2*Hkv*d (+ Hkv*di + di trained). */
typedef struct cuda_layer {
    qweight qqkv, qo, q13, q2; /* quantized forms of wqkv, wo, w13, w2 (those are NULL then) */
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

struct msa_cuda_model {
    msa_model_info info;
    float rms_eps;
    int rope_neox;
    int device;
    int Nqkv;
    cudaStream_t st;
    cublasHandle_t blas;
    bf16 *tok_embd;      /* (V, D) */
    bf16 *output;        /* (V, D); == tok_embd when tied; NULL when quantized and not tied */
    qweight qout;        /* the classifier's quantized form, or nseg 0 */
    bf16 *deq;           /* prefill: a quantized matrix dequantized (deq_elems bf16) */
    size_t deq_elems;
    void *qgemv_ws;      /* the quantized GEMV's input row */
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

    /* decode GEMV v4's last-CTA epilogues (msa_fwd_gemv's workspace):
     * arrival counters (zero between launches: the last CTA resets its
     * own), per-CTA argmax partials */
    void *gemv_ws;

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

/* ---- model ----------------------------------------------------------------------- */

/* Queues one decode GEMV (kernels/gemv.cu) on cm->st with the model's
 * epilogue workspace and v3 switch. */
static int gemv(msa_cuda_model *cm, const bf16 *W, const bf16 *xb, const float *xf,
                const float *nw, float eps, int mode, float *y, bf16 *h, int in, int outd,
                int accumulate, int epi = MSA_FWD_EPI_NONE, const msa_fwd_qkv *qa = NULL) {
    msa_fwd_gemv_args g;
    memset(&g, 0, sizeof g);
    g.W = (const uint16_t *)W;
    g.xb = (const uint16_t *)xb;
    g.xf = xf;
    g.nw = nw;
    g.eps = eps;
    g.mode = mode;
    g.in = in;
    g.outd = outd;
    g.y = y;
    g.accumulate = accumulate;
    g.h = (uint16_t *)h;
    g.epi = epi;
    g.qkv = qa;
    g.amax = cm->amax;
    g.workspace = cm->gemv_ws;
    g.v3 = cm->gemv_v3;
    g.sms = cm->sms;
    return msa_fwd_gemv(&g, cm->st);
}

/* Queues the decode GEMV over a quantized matrix (kernels/qgemv.cu); the
 * same inputs and outputs as gemv() without its epilogues. */
static int qgemv(msa_cuda_model *cm, const qweight *q, const bf16 *xb, const float *xf,
                 const float *nw, float eps, int mode, float *y, bf16 *h, int accumulate) {
    msa_fwd_qgemv_args g;
    memset(&g, 0, sizeof g);
    memcpy(g.seg, q->seg, sizeof g.seg);
    g.nseg = q->nseg;
    g.xb = (const uint16_t *)xb;
    g.xf = xf;
    g.nw = nw;
    g.eps = eps;
    g.mode = mode;
    g.in = q->in;
    g.y = y;
    g.accumulate = accumulate;
    g.h = (uint16_t *)h;
    g.workspace = cm->qgemv_ws;
    g.sms = cm->sms;
    return msa_fwd_qgemv(&g, cm->st);
}

/* The bf16 rows of a matrix for a prefill GEMM: W itself, or the quantized
 * form dequantized into cm->deq (segments one after another, as the bf16
 * matrix would hold them). */
static int bf16_rows(msa_cuda_model *cm, const qweight *q, const bf16 *W, const bf16 **out) {
    *out = W;
    if (!q->nseg) return MSA_OK;
    size_t off = 0;
    for (int m = 0; m < q->nseg; m++) {
        const int64_t n = (int64_t)q->seg[m].rows * q->in;
        int rc = msa_fwd_dequant_bf16(q->seg[m].w, q->seg[m].type, n, (uint16_t *)cm->deq + off, cm->st);
        if (rc) return rc;
        off += (size_t)n;
    }
    *out = cm->deq;
    return MSA_OK;
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
    if (!rc) rc = dalloc(cm, msa_fwd_gemv_workspace_size(), &cm->gemv_ws);
    if (!rc) rc = ck(cudaMemset(cm->gemv_ws, 0, msa_fwd_gemv_workspace_size()), "memset");
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

/* A weight as bf16 at dst: from its fp32 copy, or, for one the CPU keeps
 * quantized (src NULL), from its quantized rows, dequantized a slice at a
 * time (so the host never holds the fp32 matrix). */
static int put_w(bf16 *dst, const float *src, const msa_qmat *q, size_t n, uint16_t *tmp) {
    if (src) return put_bf16(dst, src, n, tmp);
    if (!q || !q->data || (size_t)q->rows * (size_t)q->cols != n)
        return msa_error(MSA_EINVAL, "forward (CUDA): upload: a weight has neither fp32 nor quantized data");
    const size_t slice_rows = (size_t)(1u << 22) / (size_t)q->cols + 1;
    float *f = (float *)malloc(slice_rows * (size_t)q->cols * sizeof *f);
    if (!f) return msa_error(MSA_ENOMEM, "forward (CUDA): upload staging");
    for (size_t r0 = 0; r0 < (size_t)q->rows; r0 += slice_rows) {
        const size_t nr = (size_t)q->rows - r0 < slice_rows ? (size_t)q->rows - r0 : slice_rows;
        msa_ggml_to_f32(q->type, (const uint8_t *)q->data + r0 * q->row_bytes, f, (int64_t)(nr * q->cols));
        for (size_t i = 0; i < nr * (size_t)q->cols; i++) tmp[r0 * q->cols + i] = msa_f32_to_bf16(f[i]);
    }
    free(f);
    return ck(cudaMemcpy(dst, tmp, n * 2, cudaMemcpyHostToDevice), "upload weights");
}

static int put_f32(msa_cuda_model *cm, const float *src, size_t n, float **out) {
    *out = NULL;
    if (!src) return MSA_OK;
    int rc = dalloc(cm, n * 4, (void **)out);
    if (!rc) rc = ck(cudaMemcpy(*out, src, n * 4, cudaMemcpyHostToDevice), "upload norms");
    return rc;
}

/* The quantized form of one matrix: the GGUF tensors `names` (n of them,
 * stacked by rows: rows[i] rows of `in` elements each; with layer >= 0 the
 * names are blk.<layer>.NAME) uploaded as their file bytes, when every one
 * has a type the quantized kernels take and the expected shape. Otherwise
 * q->nseg stays 0 and the caller uploads bf16. MSA_CUDA_WEIGHTS=bf16 in the
 * environment keeps every matrix bf16 (comparisons). */
static int upload_q(msa_cuda_model *cm, const msa_gguf *g, int layer, const char *const *names,
                    const int64_t *rows, int n, int64_t in, qweight *q) {
    memset(q, 0, sizeof *q);
    const char *env = getenv("MSA_CUDA_WEIGHTS");
    if (!g || (env && !strcmp(env, "bf16")) || n > MSA_FWD_QGEMV_MAX_SEG || in > MSA_FWD_QGEMV_MAX_IN)
        return MSA_OK;
    const msa_gguf_tensor *t[MSA_FWD_QGEMV_MAX_SEG];
    for (int i = 0; i < n; i++) {
        char nm[96];
        if (layer >= 0) snprintf(nm, sizeof nm, "blk.%d.%s", layer, names[i]);
        else snprintf(nm, sizeof nm, "%s", names[i]);
        if (msa_gguf_find_tensor(g, nm, &t[i]) != MSA_OK || !t[i]->data ||
            !msa_fwd_qtype_supported(t[i]->type) || t[i]->ne[0] != in || t[i]->ne[1] != rows[i] ||
            t[i]->size != msa_fwd_qrow_bytes(t[i]->type, (int)in) * (size_t)rows[i])
            return MSA_OK;
    }
    for (int i = 0; i < n; i++) {
        void *d;
        int rc = dalloc(cm, t[i]->size, &d);
        if (!rc) rc = ck(cudaMemcpy(d, t[i]->data, t[i]->size, cudaMemcpyHostToDevice), "upload quantized weights");
        if (rc) return rc;
        q->seg[i] = (msa_fwd_qmat){d, t[i]->type, (int)rows[i]};
        q->bytes += t[i]->size;
    }
    q->nseg = n;
    q->in = (int)in;
    return MSA_OK;
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
    size_t wb = 0, deq = 0;
    /* quantized GGUFs keep their matrices' bytes (not with a trained index,
     * whose rows join the qkv matrix in bf16) */
    const msa_gguf *gg = I->has_trained_index ? NULL : msa_model_gguf(m);
    const int tied = m->output == m->tok_embd;
    /* the embedding stays bf16 for the row lookup; a decode step reads one row */
    if (!rc) rc = dalloc(cm, V * D * 2, (void **)&cm->tok_embd);
    if (!rc) rc = put_w(cm->tok_embd, m->tok_embd, &m->qtok_embd, V * D, tmp);
    if (!rc) {
        const char *oname = tied ? "token_embd.weight" : "output.weight";
        const int64_t vr = (int64_t)V;
        rc = upload_q(cm, gg, -1, &oname, &vr, 1, (int64_t)D, &cm->qout);
    }
    if (!rc) {
        if (tied) cm->output = cm->tok_embd; /* prefill's classifier reads it */
        else if (!cm->qout.nseg && !(rc = dalloc(cm, V * D * 2, (void **)&cm->output)))
            rc = put_w(cm->output, m->output, &m->qoutput, V * D, tmp);
        else if (cm->qout.nseg)
            deq = V * D;
        wb += cm->qout.nseg ? cm->qout.bytes : V * D * 2;
    }
    if (!rc) rc = dalloc(cm, msa_fwd_qgemv_workspace_size(MSA_FWD_QGEMV_MAX_IN), &cm->qgemv_ws);
    if (!rc) rc = put_f32(cm, m->output_norm, D, &cm->output_norm);
    if (!rc) rc = upload_freqs(cm, m->rope_inv_freq, I->head_dim, &cm->inv_freq);
    if (!rc && I->has_trained_index)
        rc = upload_freqs(cm, (int)di <= I->head_dim ? m->rope_inv_freq : NULL, (int)di,
                          &cm->inv_freq_idx);
    for (int l = 0; l < I->n_layers && !rc; l++) {
        const msa_model_layer *S = &m->layers[l];
        cuda_layer *Y = &cm->L[l];
        static const char *const qkv_names[] = {"attn_q.weight", "attn_k.weight", "attn_v.weight"};
        static const char *const o_names[] = {"attn_output.weight"};
        static const char *const gu_names[] = {"ffn_gate.weight", "ffn_up.weight"};
        static const char *const down_names[] = {"ffn_down.weight"};
        const int64_t qkv_rows[] = {(int64_t)qd, (int64_t)kvd, (int64_t)kvd}, o_rows[] = {(int64_t)D},
                      gu_rows[] = {(int64_t)F, (int64_t)F}, down_rows[] = {(int64_t)D};
        if ((rc = upload_q(cm, gg, l, qkv_names, qkv_rows, 3, (int64_t)D, &Y->qqkv)) ||
            (rc = upload_q(cm, gg, l, o_names, o_rows, 1, (int64_t)qd, &Y->qo)) ||
            (rc = upload_q(cm, gg, l, gu_names, gu_rows, 2, (int64_t)D, &Y->q13)) ||
            (rc = upload_q(cm, gg, l, down_names, down_rows, 1, (int64_t)F, &Y->q2)))
            break;
        if (Y->qqkv.nseg && Nq * D > deq) deq = Nq * D;
        if (Y->qo.nseg && D * qd > deq) deq = D * qd;
        if (Y->q13.nseg && 2 * F * D > deq) deq = 2 * F * D;
        if (Y->q2.nseg && D * F > deq) deq = D * F;
        size_t r = 0;
        if (!Y->qqkv.nseg) {
            if ((rc = dalloc(cm, Nq * D * 2, (void **)&Y->wqkv))) break;
            rc = put_w(Y->wqkv, S->wq, &S->qwq, qd * D, tmp);
            r += qd;
            if (!rc) rc = put_w(Y->wqkv + r * D, S->wk, &S->qwk, kvd * D, tmp);
            r += kvd;
            if (!rc) rc = put_w(Y->wqkv + r * D, S->wv, &S->qwv, kvd * D, tmp);
            r += kvd;
        }
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
        if (!rc && !Y->qo.nseg) rc = dalloc(cm, D * qd * 2, (void **)&Y->wo);
        if (!rc && !Y->qo.nseg) rc = put_w(Y->wo, S->wo, &S->qwo, D * qd, tmp);
        if (!rc) rc = put_f32(cm, S->bo, D, &Y->bo);
        if (!rc && !Y->q13.nseg) rc = dalloc(cm, 2 * F * D * 2, (void **)&Y->w13);
        if (!rc && !Y->q13.nseg) rc = put_w(Y->w13, S->w1, &S->qw1, F * D, tmp);
        if (!rc && !Y->q13.nseg) rc = put_w(Y->w13 + F * D, S->w3, &S->qw3, F * D, tmp);
        if (!rc && !Y->q2.nseg) rc = dalloc(cm, D * F * 2, (void **)&Y->w2);
        if (!rc && !Y->q2.nseg) rc = put_w(Y->w2, S->w2, &S->qw2, D * F, tmp);
        if (!rc) rc = put_f32(cm, S->attn_norm, D, &Y->attn_norm);
        if (!rc) rc = put_f32(cm, S->ffn_norm, D, &Y->ffn_norm);
        if (!rc) rc = put_f32(cm, S->idx_q_norm, di, &Y->idx_q_norm);
        if (!rc) rc = put_f32(cm, S->idx_k_norm, di, &Y->idx_k_norm);
        wb += (Y->qqkv.nseg ? Y->qqkv.bytes : Nq * D * 2) + (Y->qo.nseg ? Y->qo.bytes : D * qd * 2) +
              (Y->q13.nseg ? Y->q13.bytes : 2 * F * D * 2) + (Y->q2.nseg ? Y->q2.bytes : D * F * 2) +
              2 * D * 4;
    }
    if (!rc && deq) rc = dalloc(cm, deq * 2, (void **)&cm->deq);
    cm->deq_elems = deq;
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
    return msa_fwd_fill_uniform_bf16((uint16_t *)p, n, seed, scale, st);
}

static int ones_f32(msa_cuda_model *cm, size_t n, float **out) {
    int rc = dalloc(cm, n * 4, (void **)out);
    if (rc) return rc;
    return msa_fwd_fill_f32(*out, n, 1.0f, cm->st);
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
    const bool one = n == 1 && cm->use_gemv && msa_fwd_gemv_fits(D) && msa_fwd_gemv_fits(qd) &&
                     msa_fwd_gemv_fits(F);
    const bool v4 = one && !cm->gemv_v3;
    const double kvd = (double)Hkv * d;

    prof_b(cm, MSA_CUDA_PROF_EMBED, (double)n * D * 6);
    rc = msa_fwd_embed((const uint16_t *)cm->tok_embd, m_tok, cm->x, n, D, st);
    prof_e(cm);
    if (rc) return rc;

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
        msa_fwd_qkv a;
        a.y = cm->y; a.bias = Y->bqkv; a.pos = m_pos; a.inv_freq = cm->inv_freq;
        a.q = (uint16_t *)cm->q; a.qi = I->has_trained_index ? NULL : (uint16_t *)cm->qi;
        a.kc = (uint16_t *)kc; a.vc = (uint16_t *)vc;
        a.kidx = I->has_trained_index ? NULL : (uint16_t *)ki;
        a.Nqkv = cm->Nqkv; a.Hq = Hq; a.Hkv = Hkv; a.d = d; a.G = G; a.Bk = Bk;
        a.neox = cm->rope_neox;
        a.rows = kv == NULL;
        /* bytes the post-processing reads (y) and writes (q, k, v, q_idx, k_idx) */
        const double post = (double)n * (cm->Nqkv * 4 + (qd + 2 * kvd) * 2 +
                                         (I->has_trained_index ? 0 : 2 * kvd * 2));
        prof_b(cm, MSA_CUDA_PROF_QKV, (double)cm->Nqkv * D * 2 + (double)n * cm->Nqkv * 4 +
                                          (v4 ? post : 0));
        /* the quantized GEMV has no epilogue: the post-processing runs after it */
        const bool post_fused = v4 && !Y->qqkv.nseg;
        if (one && Y->qqkv.nseg) {
            rc = qgemv(cm, &Y->qqkv, NULL, cm->x, Y->attn_norm, cm->rms_eps, MSA_FWD_GEMV_NORM, cm->y,
                       NULL, 0);
        } else if (one) {
            /* v4: the post-processing is the GEMV's last-CTA epilogue */
            rc = gemv(cm, Y->wqkv, NULL, cm->x, Y->attn_norm, cm->rms_eps, MSA_FWD_GEMV_NORM,
                      cm->y, NULL, D, cm->Nqkv, 0, MSA_FWD_EPI_QKV, &a);
        } else {
            const bf16 *W;
            rc = msa_fwd_rmsnorm(cm->x, Y->attn_norm, (uint16_t *)cm->xb, n, D, cm->rms_eps, st);
            if (!rc) rc = bf16_rows(cm, &Y->qqkv, Y->wqkv, &W);
            if (!rc) rc = gemm(cm, W, cm->xb, cm->y, CUDA_R_32F, n, D, cm->Nqkv, 0.0f, "qkv");
        }
        prof_e(cm);
        if (rc) return rc;
        if (!post_fused) {
            prof_b(cm, MSA_CUDA_PROF_QKV_POST, post);
            rc = msa_fwd_qkv_post(&a, n, st);
            prof_e(cm);
            if (rc) return rc;
        }
        if (I->has_trained_index) {
            msa_fwd_index ia;
            ia.y = cm->y; ia.pos = m_pos; ia.inv_freq = cm->inv_freq_idx;
            ia.qn = Y->idx_q_norm; ia.kn = Y->idx_k_norm;
            ia.qi = (uint16_t *)cm->qi; ia.kidx = (uint16_t *)ki;
            ia.Nqkv = cm->Nqkv; ia.off0 = qd + 2 * Hkv * d; ia.Hkv = Hkv; ia.di = di; ia.Bk = Bk;
            ia.neox = cm->rope_neox; ia.rows = kv == NULL; ia.eps = cm->rms_eps;
            if ((rc = msa_fwd_index_rope(&ia, n, st))) return rc;
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
            rc = msa_fwd_generic_attention((const uint16_t *)cm->q, (const uint16_t *)kc,
                                           (const uint16_t *)vc, m_pos, o->dense ? NULL : cm->sel,
                                           (uint16_t *)cm->att, n, Hq, Hkv, d, Bk, o->top_k,
                                           1.0f / sqrtf((float)d), NULL, st);
            if (rc) return rc;
        }

        prof_b(cm, MSA_CUDA_PROF_O, (double)D * qd * 2 + (double)n * D * 8);
        if (one && Y->qo.nseg) {
            rc = qgemv(cm, &Y->qo, cm->att, NULL, NULL, 0.0f, MSA_FWD_GEMV_PLAIN, cm->x, NULL, 1);
        } else if (one) {
            rc = gemv(cm, Y->wo, cm->att, NULL, NULL, 0.0f, MSA_FWD_GEMV_PLAIN, cm->x, NULL, qd, D, 1);
        } else {
            const bf16 *W;
            rc = bf16_rows(cm, &Y->qo, Y->wo, &W);
            if (!rc) rc = gemm(cm, W, cm->att, cm->x, CUDA_R_32F, n, qd, D, 1.0f, "wo");
        }
        prof_e(cm);
        if (rc) return rc;
        if (Y->bo) {
            if ((rc = msa_fwd_add_bias(cm->x, Y->bo, n, D, st))) return rc;
        }
        if (one) {
            prof_b(cm, MSA_CUDA_PROF_GATE_UP,
                   (Y->q13.nseg ? (double)Y->q13.bytes : 2.0 * F * D * 2) + (double)F * 2);
            rc = Y->q13.nseg ? qgemv(cm, &Y->q13, NULL, cm->x, Y->ffn_norm, cm->rms_eps,
                                     MSA_FWD_GEMV_NORM, NULL, cm->h, 0)
                             : gemv(cm, Y->w13, NULL, cm->x, Y->ffn_norm, cm->rms_eps,
                                    MSA_FWD_GEMV_NORM, NULL, cm->h, D, F, 0);
            prof_e(cm);
            prof_b(cm, MSA_CUDA_PROF_DOWN, (Y->q2.nseg ? (double)Y->q2.bytes : (double)F * D * 2) + (double)D * 8);
            if (!rc)
                rc = Y->q2.nseg ? qgemv(cm, &Y->q2, cm->h, NULL, NULL, 0.0f, MSA_FWD_GEMV_PLAIN, cm->x,
                                        NULL, 1)
                                : gemv(cm, Y->w2, cm->h, NULL, NULL, 0.0f, MSA_FWD_GEMV_PLAIN, cm->x,
                                       NULL, F, D, 1);
            prof_e(cm);
            if (rc) return rc;
            continue;
        }
        if ((rc = msa_fwd_rmsnorm(cm->x, Y->ffn_norm, (uint16_t *)cm->xb, n, D, cm->rms_eps, st)))
            return rc;
        const bf16 *W;
        if ((rc = bf16_rows(cm, &Y->q13, Y->w13, &W)) ||
            (rc = gemm(cm, W, cm->xb, cm->y, CUDA_R_32F, n, D, 2 * F, 0.0f, "w1/w3")))
            return rc;
        if ((rc = msa_fwd_swiglu(cm->y, (uint16_t *)cm->h, n, F, st))) return rc;
        if ((rc = bf16_rows(cm, &Y->q2, Y->w2, &W)) ||
            (rc = gemm(cm, W, cm->h, cm->x, CUDA_R_32F, n, F, D, 1.0f, "w2")))
            return rc;
    }
    const int r0 = n - logit_rows;
    if (one) {
        /* v4: the argmax is the classifier GEMV's epilogue (per-CTA partials,
         * the last CTA reduces them) */
        prof_b(cm, MSA_CUDA_PROF_CLASSIFIER,
               (cm->qout.nseg ? (double)cm->qout.bytes : (double)V * D * 2) + (double)V * 4);
        if (cm->qout.nseg)
            rc = qgemv(cm, &cm->qout, NULL, cm->x, cm->output_norm, cm->rms_eps, MSA_FWD_GEMV_NORM,
                       cm->logits, NULL, 0);
        else
            rc = gemv(cm, cm->output, NULL, cm->x, cm->output_norm, cm->rms_eps, MSA_FWD_GEMV_NORM,
                      cm->logits, NULL, D, V, 0, MSA_FWD_EPI_ARGMAX);
        prof_e(cm);
        if (rc || (v4 && !cm->qout.nseg)) return rc;
        prof_b(cm, MSA_CUDA_PROF_ARGMAX, (double)V * 4);
        rc = msa_fwd_argmax(cm->logits, 1, V, cm->amax, st);
        prof_e(cm);
        return rc;
    }
    if ((rc = msa_fwd_rmsnorm(cm->x + (size_t)r0 * D, cm->output_norm, (uint16_t *)cm->xb,
                              logit_rows, D, cm->rms_eps, st)))
        return rc;
    const bf16 *Wout = cm->output;
    if (!Wout && (rc = bf16_rows(cm, &cm->qout, NULL, &Wout))) return rc;
    if ((rc = gemm(cm, Wout, cm->xb, cm->logits, CUDA_R_32F, logit_rows, D, V, 0.0f, "classifier")))
        return rc;
    return msa_fwd_argmax(cm->logits, logit_rows, V, cm->amax, st);
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
    if (I->head_dim > MSA_FWD_GENERIC_MAX_D || I->idx_dim > MSA_FWD_GENERIC_MAX_D)
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
        /* 4 ms: the host queues the step */
        if ((rc = msa_fwd_spin(4000000, cm->st))) return rc;
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
                rc = fast ? msa_cuda_topk_scores(&pk, &b, Hkv, Bk, top_k, c.scores, cm->sel, st,
                                                 NULL)
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
    rc = msa_fwd_generic_attention((const uint16_t *)cm->q, (const uint16_t *)pk.k,
                                   (const uint16_t *)pk.v, m_pos, o->dense ? NULL : cm->sel,
                                   (uint16_t *)cm->att, n, Hq, Hkv, d, Bk, top_k,
                                   1.0f / sqrtf((float)d), pk.kv_table, st);
    return rc ? msa_error_context(rc, "generic attention (paged)") : MSA_OK;
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
    if (I->head_dim > MSA_FWD_GENERIC_MAX_D || I->idx_dim > MSA_FWD_GENERIC_MAX_D)
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
