/*
 * sampling.c: repetition penalty, top-k, temperature, min-p, top-p, and a
 * seeded draw (see sampling.h for the order and the reproducibility rule).
 *
 * Top-k and top-p need the candidates in descending order; a full sort of a
 * 128K vocabulary costs about a millisecond, so candidates are first cut to
 * the top-k (or, without top-k, to those within ~30 nats of the maximum at
 * the chosen temperature, which carry all but e^-30 of the mass) and only
 * that set is sorted.
 */
#include "engine/session/sampling.h"

#include <math.h>
#include <stdlib.h>

#include "base/base.h"

typedef struct cand {
    float logit;
    int32_t id;
} cand;

size_t msa_sampler_work_size(int n_vocab) {
    return (size_t)(n_vocab > 0 ? n_vocab : 1) * sizeof(cand);
}

static int cand_desc(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return x->id - y->id;
}

/* splitmix64: a well-mixed 64-bit value from a seed and a position. */
static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* The ranges the command line enforces (cli/cmd_session.c), so that every
 * caller gets the same refusals. Comparisons are written so that NaN fails
 * them. */
int msa_sampling_check(const msa_sampling_params *p) {
    if (!p) return msa_error(MSA_EINVAL, "sampling parameters are NULL");
    if (!(p->temperature >= 0 && p->temperature <= 100))
        return msa_error(MSA_EINVAL, "sampling: temperature %g is outside 0..100 (0: greedy)",
                         p->temperature);
    if (!(p->top_p > 0 && p->top_p <= 1))
        return msa_error(MSA_EINVAL, "sampling: top_p %g is outside (0, 1] (1: off)", p->top_p);
    if (!(p->min_p >= 0 && p->min_p <= 1))
        return msa_error(MSA_EINVAL, "sampling: min_p %g is outside 0..1 (0: off)", p->min_p);
    if (!(p->repeat_penalty > 0 && p->repeat_penalty <= 100))
        return msa_error(MSA_EINVAL, "sampling: repeat_penalty %g is outside (0, 100] (1: off)",
                         p->repeat_penalty);
    if (p->top_k < 0)
        return msa_error(MSA_EINVAL, "sampling: top_k %d is negative (0: off)", p->top_k);
    if (p->repeat_last_n < 0)
        return msa_error(MSA_EINVAL, "sampling: repeat_last_n %d is negative", p->repeat_last_n);
    return MSA_OK;
}

int32_t msa_sample(float *logits, int n_vocab, const msa_sampling_params *p,
                   const int32_t *recent, int n_recent, int64_t position,
                   void *work) {
    if (n_vocab <= 0 || !logits || !p)
        return msa_error(MSA_EINVAL, "sample: empty vocabulary or missing arguments");
    int rc = msa_sampling_check(p);
    if (rc) return rc;

    /* Repetition penalty: shrink the logits of recently seen tokens (divide a
     * positive logit, multiply a negative one), each token once. */
    if (p->repeat_penalty != 1.0f && recent && n_recent > 0) {
        int start = p->repeat_last_n > 0 && n_recent > p->repeat_last_n
                        ? n_recent - p->repeat_last_n : 0;
        for (int i = start; i < n_recent; i++) {
            int32_t t = recent[i];
            if (t < 0 || t >= n_vocab) continue;
            int seen = 0;
            for (int j = start; j < i && !seen; j++) seen = recent[j] == t;
            if (seen) continue;
            logits[t] = logits[t] > 0 ? logits[t] / p->repeat_penalty
                                      : logits[t] * p->repeat_penalty;
        }
    }

    if (p->temperature == 0 || p->top_k == 1) return argmax(logits, n_vocab);

    cand *c = work;
    float mx = logits[argmax(logits, n_vocab)];
    /* Candidates: drop what cannot matter (below max - 30 T), then keep the
     * top-k if asked. */
    float floor_logit = mx - 30.0f * p->temperature;
    int n = 0;
    for (int i = 0; i < n_vocab; i++)
        if (logits[i] >= floor_logit) c[n++] = (cand){logits[i], i};
    qsort(c, (size_t)n, sizeof *c, cand_desc);
    if (p->top_k > 0 && n > p->top_k) n = p->top_k;

    /* Softmax at the temperature, in place of the logits. */
    double sum = 0;
    for (int i = 0; i < n; i++) {
        c[i].logit = expf((c[i].logit - mx) / p->temperature);
        sum += c[i].logit;
    }
    for (int i = 0; i < n; i++) c[i].logit = (float)(c[i].logit / sum);

    /* min-p: keep tokens at least min_p times as likely as the best. */
    if (p->min_p > 0) {
        float cut = p->min_p * c[0].logit;
        int m = 1;
        while (m < n && c[m].logit >= cut) m++;
        n = m;
    }
    /* top-p: the smallest prefix whose mass reaches top_p. */
    if (p->top_p < 1) {
        double acc = 0;
        int m = 0;
        while (m < n) {
            acc += c[m].logit;
            m++;
            if (acc >= p->top_p) break;
        }
        n = m;
    }
    double total = 0;
    for (int i = 0; i < n; i++) total += c[i].logit;
    double u = (double)(mix64(p->seed ^ mix64((uint64_t)position)) >> 11) *
               (1.0 / 9007199254740992.0) * total;
    double acc = 0;
    for (int i = 0; i < n; i++) {
        acc += c[i].logit;
        if (u < acc) return c[i].id;
    }
    return c[n - 1].id;
}

msa_sampling_params msa_sampling_default_params(void) {
    msa_sampling_params p = {0};
    p.temperature = 0.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    p.seed = 0;
    return p;
}
