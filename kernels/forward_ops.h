/*
 * forward_ops.h: the transformer forward pass's own kernels (everything the
 * GPU forward in engine/forward/forward_cuda.cu runs besides cuBLAS and the
 * MSA attention core), each as a plain C reference and, with CUDA, a kernel
 * behind a C launcher.
 *
 *   op                 reference (forward_ref.c)     launcher (forward.cu, gemv.cu)
 *   embedding row      msa_fwd_embed_ref             msa_fwd_embed
 *   rmsnorm -> bf16    msa_fwd_rmsnorm_ref           msa_fwd_rmsnorm
 *   qkv post (RoPE)    msa_fwd_qkv_post_ref          msa_fwd_qkv_post
 *   trained index      msa_fwd_index_rope_ref        msa_fwd_index_rope
 *   SwiGLU             msa_fwd_swiglu_ref            msa_fwd_swiglu
 *   bias add           msa_fwd_add_bias_ref          msa_fwd_add_bias
 *   argmax             msa_fwd_argmax_ref            msa_fwd_argmax
 *   decode GEMV        msa_fwd_gemv_ref              msa_fwd_gemv
 *   generic attention  msa_fwd_generic_attention_ref msa_fwd_generic_attention
 *   random fill        msa_fwd_fill_uniform_bf16_ref msa_fwd_fill_uniform_bf16
 *   constant fill      (none: p[i] = v)              msa_fwd_fill_f32
 *   spin (timing)      (none)                        msa_fwd_spin
 *
 * bf16 values are uint16_t bit patterns (base/base.h converts them, rounding
 * to nearest even as the GPU does). The references take host pointers and
 * are written to be obviously right, not fast; they accumulate in double
 * where the GPU sums in a tree, so a test compares them by normalised error,
 * not bit for bit (tests/test-forward-kernels-cuda.c). The launchers take
 * device pointers, queue work on `st` and return without synchronising;
 * MSA_OK, MSA_EINVAL or MSA_EUNSUPPORTED for arguments they refuse (nothing
 * is queued then), MSA_ECUDA when the launch fails. None allocates.
 *
 * The kernels compute exactly what they computed inside forward_cuda.cu
 * (same launch shapes, same arithmetic; forward.cu and gemv.cu are built
 * without --use_fast_math, as forward_cuda.cu was), so the GPU forward's
 * results did not change when they moved here.
 */
#ifndef MSA_KERNELS_FORWARD_OPS_H
#define MSA_KERNELS_FORWARD_OPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef MSA_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The qkv post-processing of one chunk of n rows (msa_fwd_qkv_post, and the
 * qkv epilogue of msa_fwd_gemv): for row i at position pos[i], the bias
 * (when given), RoPE on every query head and on every key head (pairs
 * (2p, 2p+1), or (p, p + d/2) with neox), the training-free index (q_idx
 * of group g = the fp32 mean of the group's post-RoPE query heads, summed in
 * head order, rounded once; k_idx = the post-RoPE key), and the row's k, v
 * (and k_idx) stored in bf16 at its position. */
typedef struct msa_fwd_qkv {
    const float *y;        /* (n, Nqkv) fp32: q (Hq*d), k (Hkv*d), v (Hkv*d), ... */
    const float *bias;     /* (Nqkv) or NULL */
    const int32_t *pos;    /* (n) positions */
    const float *inv_freq; /* (d/2) RoPE frequencies */
    uint16_t *q;           /* (n, Hq, d) bf16 out */
    uint16_t *qi;          /* (n, Hkv, d) training-free q_idx out, or NULL (trained index) */
    uint16_t *kc, *vc;     /* layer memory (blocks, Hkv, Bk, d), block pos/Bk, row pos%Bk */
    uint16_t *kidx;        /* (blocks, Hkv, Bk, d) training-free k_idx out, or NULL */
    int Nqkv, Hq, Hkv, d, G, Bk, neox;
    int rows;              /* 1: kc, vc, kidx are row-major staging (n, Hkv, d), row i at i */
} msa_fwd_qkv;

/* The trained index of one chunk (msa_fwd_index_rope): for row i, the Hkv
 * query heads and the one shared key head read from y at columns off0 ..
 * off0 + (Hkv + 1) * di, each RMS-normed with scale (1 + w) (Gemma style)
 * then RoPE'd over di at pos[i]; q_idx to qi (n, Hkv, di), the key to kidx
 * at its position (blocks, 1, Bk, di) or row i (rows). */
typedef struct msa_fwd_index {
    const float *y;        /* (n, Nqkv) */
    const int32_t *pos;    /* (n) */
    const float *inv_freq; /* (di/2) */
    const float *qn, *kn;  /* (di) norm weights of the query and key heads */
    uint16_t *qi;          /* (n, Hkv, di) out */
    uint16_t *kidx;        /* key out */
    int Nqkv, off0, Hkv, di, Bk, neox, rows;
    float eps;
} msa_fwd_index;

/* The decode GEMV: y = W u for one input row u (W bf16 (outd, in) row-major,
 * fp32 accumulation). u is bf16: xb itself (PLAIN), or bf16(rmsnorm(xf) * nw)
 * (NORM, the sum of squares in rmsnorm's order). Output: y[r] = acc,
 * y[r] += acc (accumulate), or with h set the gate/up pair fused with
 * SwiGLU (W holds 2*outd rows, gate then up; h[r] = bf16(silu(g) * u)).
 * Epilogues, run by the last CTA to finish: QKV runs the qkv
 * post-processing of row 0 (qkv, whose y must be this GEMV's y); ARGMAX
 * writes amax[0] = the lowest row of the largest y (0 when none). v3
 * selects the previous input stage and no epilogue (comparisons: the
 * caller then runs the post-processing / argmax itself). */
enum { MSA_FWD_GEMV_PLAIN = 0, MSA_FWD_GEMV_NORM = 1 };
enum { MSA_FWD_EPI_NONE = 0, MSA_FWD_EPI_QKV = 1, MSA_FWD_EPI_ARGMAX = 2 };
typedef struct msa_fwd_gemv_args {
    const uint16_t *W;
    const uint16_t *xb;     /* PLAIN input (in) bf16, 16-byte aligned */
    const float *xf, *nw;   /* NORM input (in) and weights (in) */
    float eps;
    int mode;               /* MSA_FWD_GEMV_* */
    int in, outd;
    float *y;               /* (outd) out, or NULL with h */
    int accumulate;
    uint16_t *h;            /* (outd) SwiGLU out, or NULL */
    int epi;                /* MSA_FWD_EPI_* */
    const msa_fwd_qkv *qkv; /* EPI_QKV */
    int32_t *amax;          /* EPI_ARGMAX: (1) device */
    void *workspace;        /* msa_fwd_gemv_workspace_size() bytes, zeroed once by the
                               caller (arrival counters, zero again after every launch) */
    int v3;
    int sms;                /* the GPU's multiprocessors (0: asked of the device) */
} msa_fwd_gemv_args;

/* ---- references (host pointers) ------------------------------------------- */

/* Sizes the references keep on the stack: head dims, index dims and GEMV
 * inputs up to these. */
#define MSA_FWD_REF_MAX_D 256
#define MSA_FWD_REF_MAX_DI 256
#define MSA_FWD_GEMV_REF_MAX_IN 16384

/* x (n, D) = emb[tokens[i]] widened to fp32. */
void msa_fwd_embed_ref(const uint16_t *emb, const int32_t *tokens, float *x, int n, int D);
/* out (rows, D) bf16 = bf16(w * (x / sqrt(mean(x^2) + eps))). */
void msa_fwd_rmsnorm_ref(const float *x, const float *w, uint16_t *out, int rows, int D, float eps);
void msa_fwd_qkv_post_ref(const msa_fwd_qkv *a, int n);
void msa_fwd_index_rope_ref(const msa_fwd_index *a, int n);
/* h (n, F) bf16 = silu(y[:, :F]) * y[:, F:], y (n, 2F) */
void msa_fwd_swiglu_ref(const float *y, uint16_t *h, int n, int F);
/* x (n, D) += b (D) */
void msa_fwd_add_bias_ref(float *x, const float *b, int n, int D);
/* out[r] = the lowest index of the largest element of row r (NaN never
 * wins; 0 when no element beats -inf). */
void msa_fwd_argmax_ref(const float *logits, int rows, int V, int32_t *out);
/* The GEMV of msa_fwd_gemv_args over host arrays (workspace, v3 and sms
 * ignored; the QKV epilogue runs msa_fwd_qkv_post_ref on row 0). */
void msa_fwd_gemv_ref(const msa_fwd_gemv_args *g);
/* One (row, query head) at a time: exact softmax (scale) over the visible
 * tokens (j <= pos[i]) of the listed blocks of its group: sel
 * (n, Hkv, top_k), entries < 0 or past the row's local block skipped; NULL:
 * every block 0 .. pos/Bk. Block b is read from slot table[b] (NULL: b) of
 * k, v (slots, Hkv, Bk, d). out (n, Hq, d) bf16; 0 for a row with nothing
 * visible. */
void msa_fwd_generic_attention_ref(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                                   const int32_t *pos, const int32_t *sel, uint16_t *out, int n,
                                   int Hq, int Hkv, int d, int Bk, int top_k, float scale,
                                   const int32_t *table);
/* p[i] = bf16(uniform in [-scale, scale) from a hash of (seed, i)). */
void msa_fwd_fill_uniform_bf16_ref(uint16_t *p, size_t n, uint64_t seed, float scale);

/* ---- CUDA launchers (device pointers) -------------------------------------- */
#ifdef MSA_HAVE_CUDA

#define MSA_FWD_GENERIC_MAX_D 256 /* generic attention: head dims up to this */
#define MSA_FWD_GEMV_MAX_IN 16384

int msa_fwd_embed(const uint16_t *emb, const int32_t *tokens, float *x, int n, int D,
                  cudaStream_t st);
int msa_fwd_rmsnorm(const float *x, const float *w, uint16_t *out, int rows, int D, float eps,
                    cudaStream_t st);
int msa_fwd_qkv_post(const msa_fwd_qkv *a, int n, cudaStream_t st);
int msa_fwd_index_rope(const msa_fwd_index *a, int n, cudaStream_t st);
int msa_fwd_swiglu(const float *y, uint16_t *h, int n, int F, cudaStream_t st);
int msa_fwd_add_bias(float *x, const float *b, int n, int D, cudaStream_t st);
/* one CTA of 1024 threads per row */
int msa_fwd_argmax(const float *logits, int rows, int V, int32_t *out, cudaStream_t st);

/* Whether the GEMV takes an input of `in` (a multiple of 8, at most
 * MSA_FWD_GEMV_MAX_IN); the launcher returns MSA_EUNSUPPORTED otherwise. */
int msa_fwd_gemv_fits(int in);
size_t msa_fwd_gemv_workspace_size(void);
/* Queued with programmatic dependent launch (the next kernel may start
 * while this one drains). MSA_EINVAL when an epilogue would need more
 * CTAs than the workspace holds. */
int msa_fwd_gemv(const msa_fwd_gemv_args *g, cudaStream_t st);

/* MSA_EUNSUPPORTED for d past MSA_FWD_GENERIC_MAX_D. */
int msa_fwd_generic_attention(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                              const int32_t *pos, const int32_t *sel, uint16_t *out, int n,
                              int Hq, int Hkv, int d, int Bk, int top_k, float scale,
                              const int32_t *table, cudaStream_t st);

int msa_fwd_fill_uniform_bf16(uint16_t *p, size_t n, uint64_t seed, float scale, cudaStream_t st);
int msa_fwd_fill_f32(float *p, size_t n, float v, cudaStream_t st);
/* Holds the stream for ns nanoseconds (per-kernel timing: the host queues a
 * whole step behind it, so that events time the GPU and not the host). */
int msa_fwd_spin(long long ns, cudaStream_t st);

#endif /* MSA_HAVE_CUDA */

#ifdef __cplusplus
}
#endif

#endif /* MSA_KERNELS_FORWARD_OPS_H */
