/*
 * calibrate.h: training the MSA index projections of a model that has none.
 * The API is public (engine/msa.h, "Calibration"); this header holds only
 * the library-internal layer objective, for calibrate.c and its gradient
 * test. `msa-mem calibrate` is the command.
 *
 * For every layer, W_q_idx (Hkv*di, D), W_k_idx (di, D) and the two index
 * RMSNorm weights (scale 1+w) are fitted with Adam, full batch, to the
 * paper's KL alignment loss: teacher[r, i, j] = the main-branch attention
 * probabilities of row i over the visible tokens j <= i, averaged over the G
 * query heads of group r; student[r, i, j] = softmax over visible j of
 * q_idx[i, r] . k_idx[j] / sqrt(di), one index query per group and one index
 * key shared by all groups; loss = sum over rows and groups of
 * KL(teacher || student). The student is dense over the visible tokens (no
 * block selection inside the loss): for calibration that is the simple and
 * exact choice. The model's own forward pass provides the inputs (the
 * layer's normed input and the teacher), detached: only the index weights
 * learn. The result is written as the input GGUF plus the four index tensors
 * per layer (docs/index.md, "Calibrating a trained index").
 */
#ifndef MSA_CALIBRATE_H
#define MSA_CALIBRATE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The public part (msa_calib_params, msa_calib_result, msa_calibrate(),
 * msa_calib_selected_mass()) is declared in engine/msa.h. */

/* ---- the layer objective (exposed for the gradient test) ------------------ */

typedef struct msa_calib_layer {
    int D, Hkv, di;
    int n_seq, T;              /* n_seq sequences of T rows, positions 0..T-1 */
    float rms_eps;
    float rope_theta;
    int rope_neox;
    const float *rope_inv_freq;/* (di/2) or NULL */
    const float *x;            /* (n_seq*T, D) the layer's normed input */
    const float *teacher;      /* per sequence and group, rows i of i+1 probabilities,
                                  packed: (n_seq, Hkv, T*(T+1)/2) */
    double plogp;              /* sum of t log t over the teacher, when plogp_set */
    int plogp_set;             /* 0: computed inside every call */
} msa_calib_layer;

/* The loss (sum over sequences, rows and groups of KL(teacher || student))
 * at weights wq (Hkv*di, D), wk (di, D), qn (di), kn (di); when the
 * gradient pointers are non-NULL (all four or none) they receive its
 * gradient. Returns a negative value on allocation failure. */
double msa_calib_layer_loss(const msa_calib_layer *L, const float *wq, const float *wk,
                            const float *qn, const float *kn, float *gwq, float *gwk,
                            float *gqn, float *gkn, int n_threads);

#ifdef __cplusplus
}
#endif

#endif /* MSA_CALIBRATE_H */
