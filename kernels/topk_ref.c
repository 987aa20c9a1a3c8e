/*
 * topk_ref.c: Top-k block selection of one (row, group), the exp-free step
 * of MSA (DESIGN.md section 1).
 *
 * The local block is always taken; the other top_k - 1 places go to the
 * best of the `local` visible blocks before it. "Best" is a strict total
 * order: higher score first, then lower block id, so the result is unique
 * even when scores tie exactly. Raw (unscaled, un-exponentiated) block
 * scores are ranked: softmax and a positive scale are monotone.
 *
 * A full sort would cost O(nb log nb) per (row, group) at ~8K blocks for a
 * 1M-token memory; a heap of the current best top_k - 1 ids, worst at the
 * root, costs O(nb log k) and lives in the output row itself.
 */
#include "kernels/ref.h"

/* a ranks before b */
static inline int better(const float *s, int32_t a, int32_t b) {
    return s[a] > s[b] || (s[a] == s[b] && a < b);
}

/* Restores the heap property below position i (worst at the root). */
static void sift_down(const float *s, int32_t *h, int n, int i) {
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n) return;
        if (c + 1 < n && better(s, h[c], h[c + 1])) c++; /* the worse child */
        if (!better(s, h[i], h[c])) return;
        int32_t t = h[i];
        h[i] = h[c];
        h[c] = t;
        i = c;
    }
}

static void sift_up(const float *s, int32_t *h, int i) {
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (!better(s, h[parent], h[i])) return;
        int32_t t = h[i];
        h[i] = h[parent];
        h[parent] = t;
        i = parent;
    }
}

void msa_ref_topk(const float *score, int local, int top_k, int32_t *out) {
    out[0] = local;
    int cap = top_k - 1, n = 0;
    int32_t *h = out + 1; /* [cap] heap of candidate ids */
    for (int32_t b = 0; b < local; b++) {
        if (n < cap) {
            h[n] = b;
            sift_up(score, h, n++);
        } else if (cap > 0 && better(score, b, h[0])) {
            h[0] = b;
            sift_down(score, h, n, 0);
        }
    }
    /* Heap sort in place: the root is the worst, so pop it to the back. */
    for (int m = n; m > 1; m--) {
        int32_t t = h[0];
        h[0] = h[m - 1];
        h[m - 1] = t;
        sift_down(score, h, m - 1, 0);
    }
    for (int i = n; i < cap; i++) h[i] = -1;
}
