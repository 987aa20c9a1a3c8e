/*
 * calibrate.h: training the MSA index projections of a model that has none
 * (internal to the library; `msa-mem calibrate` is the command).
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

typedef struct msa_calib_params {
    int idx_dim;        /* di (default 32) */
    int steps;          /* Adam steps per layer (default 200) */
    float lr;           /* Adam learning rate (default 0.02) */
    int seq_len;        /* tokens per calibration sequence, BOS first (default 256) */
    int32_t bos;        /* prepended to every sequence; -1: none */
    int n_threads;      /* 0: one per core */
    uint64_t seed;      /* weight initialisation (default 1) */
    /* optional: called every `log_every` steps and after the last one */
    void (*on_step)(void *user, int layer, int step, double loss);
    void *user;
    int log_every;      /* default 50 */
} msa_calib_params;

msa_calib_params msa_calib_default_params(void);

enum { MSA_CALIB_MAX_LAYERS = 256 };

typedef struct msa_calib_result {
    int n_layers, n_seq, seq_len;
    /* mean KL per (row, group), before the first and after the last step */
    double loss_first[MSA_CALIB_MAX_LAYERS], loss_last[MSA_CALIB_MAX_LAYERS];
    double seconds_inputs, seconds_train;
} msa_calib_result;

/* Trains the index of every layer of `m` (a GGUF model without a trained
 * index) on `tokens` (text ids; cut into sequences of seq_len with BOS
 * first) and writes out_path = the model's GGUF (every metadata key and
 * tensor) plus blk.N.msa_idx_{q,k,q_norm,k_norm}.weight and
 * <arch>.msa.index_dim. res may be NULL.
 * MSA_OK; MSA_EINVAL (bad parameters, fewer than 2 tokens),
 * MSA_EUNSUPPORTED (a model with a trained index already, not from a GGUF,
 * or with tensor types the writer cannot copy), MSA_ENOMEM, the forward
 * pass's and the writer's errors. */
int msa_calibrate(msa_model *m, const int32_t *tokens, size_t n_tokens,
                  const msa_calib_params *p, const char *out_path, msa_calib_result *res);

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

/* Dense attention mass that MSA's block selection keeps, for evaluation:
 * runs `tokens` in sequences of seq_len (BOS first when bos >= 0) through
 * the model with blocks of block_size and top_k, and for every layer, row,
 * query head, averages the share of the head's dense softmax mass inside
 * the blocks its group selected. *mean and *min (either may be NULL).
 * MSA_OK or the forward pass's errors. */
int msa_calib_selected_mass(msa_model *m, const int32_t *tokens, size_t n_tokens, int seq_len,
                            int32_t bos, int block_size, int top_k, double *mean, double *min);

#ifdef __cplusplus
}
#endif

#endif /* MSA_CALIBRATE_H */
