/*
 * sampling.h: turning a row of logits into the next token.
 *
 * The order is llama.cpp's: repetition penalty, top-k, temperature, softmax,
 * min-p, top-p, then a draw. Temperature 0 is greedy (argmax; ties go to the
 * lower id). The draw's random number depends only on the seed and the
 * token's position, so a session resumed in another process samples exactly
 * what one that never stopped would have.
 */
#ifndef MSA_SAMPLING_H
#define MSA_SAMPLING_H

#include <stdint.h>

#include "engine/msa.h"

/* Picks a token from logits[n_vocab]. `recent` holds the last n_recent
 * tokens of the context (for the repetition penalty); `position` is the
 * index the sampled token will take in the session. `work` is scratch of
 * n_vocab entries (see msa_sampler_work_size), and `logits` may be modified
 * (penalties are applied in place). Returns the token id (>= 0), or
 * MSA_EINVAL for an empty vocabulary or invalid parameters. */
int32_t msa_sample(float *logits, int n_vocab, const msa_sampling_params *p,
                   const int32_t *recent, int n_recent, int64_t position,
                   void *work);

/* MSA_OK, or MSA_EINVAL (with a message naming the field) for sampling
 * parameters out of range: temperature outside 0..100, top_p outside
 * (0, 1], min_p outside 0..1, repeat_penalty outside (0, 100], a negative
 * top_k or repeat_last_n, and NaN anywhere. */
int msa_sampling_check(const msa_sampling_params *p);

/* Bytes of scratch msa_sample() needs for a vocabulary of n_vocab. */
size_t msa_sampler_work_size(int n_vocab);

#endif /* MSA_SAMPLING_H */
