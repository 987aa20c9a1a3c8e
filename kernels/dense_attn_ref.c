/*
 * dense_attn_ref.c: dense causal attention on the CPU, the baseline that MSA
 * is checked and timed against. Same online-softmax core as the sparse path
 * (msa_ref_attend_group), over every block 0 .. q_pos / Bk of the row.
 *
 * One task per (row, group). A decode step with few KV groups has few tasks;
 * splitting a row along its blocks (flash-decoding) would use more cores and
 * is not done here.
 */
#include <stdlib.h>

#include "base/base.h"
#include "kernels/ref.h"

typedef struct dense_ctx {
    const msa_ref_problem *p;
    float *ml; /* [n_q][Hkv][2][G] running max and sum */
} dense_ctx;

static void dense_task(void *vc, int64_t i) {
    const dense_ctx *c = vc;
    const msa_ref_problem *p = c->p;
    int row = (int)(i / p->Hkv), g = (int)(i % p->Hkv);
    float *m = c->ml + (size_t)i * 2 * p->G;
    msa_ref_attend_group(p, row, g, NULL, p->q_pos[row] / p->Bk + 1, m, m + p->G);
}

int msa_ref_dense_attention(const msa_ref_problem *p) {
    if (p->n_q <= 0) return MSA_OK;
    size_t n = (size_t)p->n_q * p->Hq * 2;
    float *ml = malloc(n * sizeof(float));
    if (!ml)
        return msa_error(MSA_ENOMEM, "msa_dense_attention: cannot allocate %zu bytes "
                         "of softmax state", n * sizeof(float));
    dense_ctx c = {p, ml};
    msa_parallel_for((int64_t)p->n_q * p->Hkv, p->n_threads, dense_task, &c);
    free(ml);
    return MSA_OK;
}
