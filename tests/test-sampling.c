/*
 * test-sampling.c: the sampler against its definition.
 *
 * Greedy is argmax; a temperature-1 draw over many positions follows the
 * softmax (checked with a chi-square bound); top-k, top-p and min-p never
 * return a token outside their set; the repetition penalty demotes recent
 * tokens; the same seed and position give the same token.
 */
#include "engine/session/sampling.h"

#include "base/base.h"
#include "tests/testutil.h"

enum { V = 64 };

static void random_logits(float *x, int n) {
    for (int i = 0; i < n; i++) x[i] = 2.0f * t_randn();
}

int main(void) {
    t_seed();
    static float logits[V], tmp[V];
    static unsigned char work[V * 16];
    msa_sampling_params p = msa_sampling_default_params();

    /* greedy */
    for (int trial = 0; trial < 100; trial++) {
        random_logits(logits, V);
        int best = 0;
        for (int i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
        memcpy(tmp, logits, sizeof tmp);
        CHECK(msa_sample(tmp, V, &p, NULL, 0, trial, work) == best);
    }

    /* temperature 1: empirical frequencies follow the softmax */
    random_logits(logits, V);
    double prob[V], sum = 0;
    float mx = logits[0];
    for (int i = 1; i < V; i++) if (logits[i] > mx) mx = logits[i];
    for (int i = 0; i < V; i++) sum += prob[i] = exp(logits[i] - mx);
    for (int i = 0; i < V; i++) prob[i] /= sum;
    p.temperature = 1.0f;
    p.seed = t_rand_u64();
    enum { DRAWS = 200000 };
    static int count[V];
    for (int d = 0; d < DRAWS; d++) {
        memcpy(tmp, logits, sizeof tmp);
        int t = msa_sample(tmp, V, &p, NULL, 0, d, work);
        CHECK(t >= 0 && t < V);
        if (t >= 0 && t < V) count[t]++;
    }
    double chi2 = 0;
    int dof = 0;
    for (int i = 0; i < V; i++) {
        double e = prob[i] * DRAWS;
        if (e < 5) continue;
        chi2 += (count[i] - e) * (count[i] - e) / e;
        dof++;
    }
    /* mean dof, sd sqrt(2 dof): 6 sd is a false alarm once in 10^9 runs */
    CHECKF(chi2 < dof + 6 * sqrt(2.0 * dof), "chi2 %.1f with %d dof", chi2, dof);

    /* same seed and position: same token; reproducible across calls */
    for (int d = 0; d < 50; d++) {
        memcpy(tmp, logits, sizeof tmp);
        int a = msa_sample(tmp, V, &p, NULL, 0, 1000 + d, work);
        memcpy(tmp, logits, sizeof tmp);
        CHECK(a == msa_sample(tmp, V, &p, NULL, 0, 1000 + d, work));
    }

    /* top-k: only the k best */
    p.top_k = 3;
    int order[V];
    for (int i = 0; i < V; i++) order[i] = i;
    for (int i = 0; i < V; i++)
        for (int j = i + 1; j < V; j++)
            if (logits[order[j]] > logits[order[i]]) { int t = order[i]; order[i] = order[j]; order[j] = t; }
    for (int d = 0; d < 2000; d++) {
        memcpy(tmp, logits, sizeof tmp);
        int t = msa_sample(tmp, V, &p, NULL, 0, d, work);
        CHECK(t == order[0] || t == order[1] || t == order[2]);
    }
    p.top_k = 0;

    /* top-p: never outside the smallest prefix reaching the mass */
    p.top_p = 0.5f;
    double acc = 0;
    int allowed = 0;
    while (allowed < V) { acc += prob[order[allowed]]; allowed++; if (acc >= 0.5) break; }
    for (int d = 0; d < 2000; d++) {
        memcpy(tmp, logits, sizeof tmp);
        int t = msa_sample(tmp, V, &p, NULL, 0, d, work), ok = 0;
        for (int i = 0; i < allowed; i++) ok |= t == order[i];
        CHECK(ok);
    }
    p.top_p = 1.0f;

    /* min-p: only tokens at least min_p as likely as the best */
    p.min_p = 0.2f;
    for (int d = 0; d < 2000; d++) {
        memcpy(tmp, logits, sizeof tmp);
        int t = msa_sample(tmp, V, &p, NULL, 0, d, work);
        CHECK(prob[t] >= 0.2 * prob[order[0]] * (1 - 1e-5));
    }
    p.min_p = 0;

    /* repetition penalty demotes the greedy winner when it was just seen */
    msa_sampling_params g = msa_sampling_default_params();
    for (int i = 0; i < V; i++) logits[i] = 0.1f * i; /* best: V-1, then V-2 */
    g.repeat_penalty = 10.0f;
    int32_t recent[] = {V - 1};
    memcpy(tmp, logits, sizeof tmp);
    CHECK(msa_sample(tmp, V, &g, recent, 1, 0, work) == V - 2);
    CHECK(tmp[V - 1] < logits[V - 1]);

    /* invalid parameters */
    g.top_p = 0;
    CHECK(msa_sample(tmp, V, &g, NULL, 0, 0, work) == MSA_EINVAL);
    /* what the command line refuses, the library refuses: NaN and infinite
     * values (which pass a plain `< 0` test), a repeat penalty of 0 */
    const float bad_temp[] = {NAN, INFINITY, -INFINITY, -1.0f, 101.0f};
    for (int i = 0; i < 5; i++) {
        g = msa_sampling_default_params();
        g.temperature = bad_temp[i];
        CHECKF(msa_sampling_check(&g) == MSA_EINVAL && msa_sample(tmp, V, &g, NULL, 0, 0, work) ==
               MSA_EINVAL, "temperature %g accepted", bad_temp[i]);
        CHECK(strstr(msa_last_error(), "temperature") != NULL);
    }
    const float bad_pen[] = {0.0f, NAN, INFINITY, -1.0f};
    for (int i = 0; i < 4; i++) {
        g = msa_sampling_default_params();
        g.repeat_penalty = bad_pen[i];
        CHECKF(msa_sampling_check(&g) == MSA_EINVAL, "repeat_penalty %g accepted", bad_pen[i]);
        CHECK(strstr(msa_last_error(), "repeat_penalty") != NULL);
    }
    g = msa_sampling_default_params();
    g.top_p = NAN;
    CHECK(msa_sampling_check(&g) == MSA_EINVAL);
    g = msa_sampling_default_params();
    g.min_p = NAN;
    CHECK(msa_sampling_check(&g) == MSA_EINVAL);
    g = msa_sampling_default_params();
    g.repeat_last_n = -1;
    CHECK(msa_sampling_check(&g) == MSA_EINVAL);
    g = msa_sampling_default_params();
    g.temperature = 100.0f;
    g.repeat_penalty = 100.0f;
    CHECK_OK(msa_sampling_check(&g)); /* the command line's upper ends are valid */
    return t_done("test-sampling");
}
