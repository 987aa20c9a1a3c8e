/*
 * test-restore.c: MSA state across every way a session is stored and
 * brought back, on the real stories260K model with blocks of 16 and k = 4,
 * so that sessions are several times longer than what a step selects and
 * the partial last block matters.
 *
 * A token sequence T (the prompt, then greedy tokens) is cut at every
 * offset of one block: c = 6 Bk .. 7 Bk, the ends of a full block and every
 * fill 1 .. Bk-1 of the next one. For each cut:
 *   - A: a session given T[0..c) continues for G tokens in the same
 *     process (the reference);
 *   - B: the same session closed after T[0..c), the engine freed, a new
 *     engine opened on the store: its continuation and the blocks it
 *     selects while continuing (msa_session_explain: blocks and read
 *     counts over the steps after the first, which a reopened session
 *     spends recomputing its last token) equal A's;
 *   - F: a fork of B taken at c, opened after B continued: it continues
 *     exactly as A, and B's tokens are unchanged by it;
 *   - I: B exported at c and imported under a new name: continues as A;
 *   - after every commit, in every session, each layer's blocks cover
 *     exactly the session's tokens (the KV lane), and the index keys of
 *     every block read back (the index lane has the same length).
 * The offsets are fixed (every one is tested); the greedy continuations
 * involve no randomness, so the seed only picks the order of the cuts.
 */
#include <sys/stat.h>
#include <unistd.h>

#include "engine/msa.h"
#include "base/base.h"
#include "tests/testutil.h"
#include "tests/session_util.h"

#define BK 16
#define TOPK 4
#define G 8                       /* tokens each continuation generates */
#define CUT0 (6 * BK)             /* the first cut: a full block */
#define N_CUTS (BK + 1)
#define T_LEN (CUT0 + BK + G + 8) /* the reference sequence */

static msa_engine *engine(void) { return open_engine_on(0, BK, TOPK, 24, 0); }

/* The KV and index lanes of a stored session cover exactly its tokens. */
static void check_lanes(msa_engine *e, const char *name) {
    msa_store *st = msa_engine_store(e);
    msa_store_session *ss = NULL;
    CHECK_OK(msa_store_session_open(st, name, NULL, &ss));
    if (!ss) return;
    msa_store_session_info info;
    CHECK_OK(msa_store_session_stat(ss, &info));
    const msa_store_shape *sh = &info.shape;
    const size_t idx_bytes = (size_t)sh->idx_key_heads * sh->block_size * sh->idx_dim * 4;
    void *idx = malloc(idx_bytes * (info.n_blocks ? info.n_blocks : 1));
    int bad = 0;
    for (int l = 0; l < sh->n_layers; l++) {
        uint64_t covered = 0;
        for (uint64_t b = 0; b < info.n_blocks; b++) {
            msa_store_block_info bi;
            if (msa_store_read_block(ss, l, b, NULL, NULL, NULL, &bi)) {
                bad++;
                continue;
            }
            covered += (uint64_t)bi.n_tokens;
            if (b + 1 < info.n_blocks && bi.n_tokens != sh->block_size) bad++;
        }
        if (covered != info.n_tokens) bad++;
        if (info.n_blocks && msa_store_read_index(ss, l, 0, info.n_blocks, idx)) bad++;
    }
    CHECKF(bad == 0, "session %s (%llu tokens, %llu blocks): %d lane mismatches", name,
           (unsigned long long)info.n_tokens, (unsigned long long)info.n_blocks, bad);
    free(idx);
    msa_store_session_close(ss);
}

/* Opens (creating when `tokens` is given, and appending them) and returns
 * the session, or NULL. */
static msa_session *session_with(msa_engine *e, const char *name, const int32_t *tokens, int n) {
    msa_session *s = NULL;
    int rc = msa_session_open(e, name, tokens ? MSA_SESSION_CREATE : 0, &s);
    CHECKF(rc == MSA_OK, "open %s: %s", name, msa_last_error());
    if (rc) return NULL;
    if (tokens) {
        rc = msa_session_append_tokens(s, tokens, (size_t)n, "cut", NULL, NULL);
        CHECKF(rc == MSA_OK, "append to %s: %s", name, msa_last_error());
    }
    return s;
}

typedef struct continuation {
    collect ids;
    msa_block_reads reads[256];
    size_t n_reads;
} continuation;

/* G greedy tokens and the blocks read while generating all but the first
 * (a reopened session first recomputes its last token over the stored
 * memory, which reads blocks of its own; from the second token on, a
 * resumed session and one that never stopped run the same steps). */
static void continue_session(msa_session *s, continuation *out) {
    memset(out, 0, sizeof *out);
    collect rest = {0};
    CHECK_OK(generate(s, 1, &out->ids));
    msa_session_explain_reset(s);
    CHECK_OK(generate(s, G - 1, &rest));
    for (int i = 0; i < rest.n && out->ids.n < 1024; i++) out->ids.ids[out->ids.n++] = rest.ids[i];
    CHECK_OK(msa_session_explain(s, out->reads, 256, &out->n_reads));
}

static int same_reads(const continuation *a, const continuation *b) {
    if (a->n_reads != b->n_reads) return 0;
    for (size_t i = 0; i < a->n_reads; i++) {
        /* most-read first; ties in any order: look the block up */
        size_t j = 0;
        while (j < b->n_reads && b->reads[j].block != a->reads[i].block) j++;
        if (j == b->n_reads || b->reads[j].reads != a->reads[i].reads) return 0;
    }
    return 1;
}

static int same_ids(const continuation *a, const continuation *b) {
    return a->ids.n == G && b->ids.n == G && !memcmp(a->ids.ids, b->ids.ids, sizeof(int32_t) * G);
}

int main(void) {
    t_seed();
    const char *assets = t_assets();
    if (!assets) T_SKIP("no test assets (set MSA_ASSETS or keep ../shared/assets)");
    char tmp[] = "/tmp/msa-test-restore-XXXXXX";
    if (!mkdtemp(tmp)) T_SKIP("cannot make a temporary folder");
    char bin[4096], tok[4096], xfile[4096];
    snprintf(bin, sizeof bin, "%s/stories260K/stories260K.bin", assets);
    snprintf(tok, sizeof tok, "%s/stories260K/tok512.bin", assets);
    snprintf(model_path, sizeof model_path, "%s/stories260K.gguf", tmp);
    snprintf(store_dir, sizeof store_dir, "%s/store", tmp);
    snprintf(xfile, sizeof xfile, "%s/cut.msax", tmp);
    CHECK_OK(msa_convert_llama2c(bin, tok, model_path));

    /* T: the prompt, then greedy tokens, from one session */
    msa_engine *e = engine();
    CHECK(e != NULL);
    if (!e) return t_done("test-restore");
    msa_session *s = NULL;
    CHECK_OK(msa_session_open(e, "T", MSA_SESSION_CREATE, &s));
    CHECK_OK(msa_session_append_text(s, prompt, strlen(prompt), "prompt.txt", NULL, NULL));
    int64_t n0 = 0;
    msa_session_tokens(s, &n0);
    collect gen = {0};
    CHECK_OK(generate(s, T_LEN - (int)n0, &gen));
    int64_t nt = 0;
    const int32_t *tv = msa_session_tokens(s, &nt);
    CHECKF(nt >= T_LEN, "reference sequence of %lld tokens (want %d)", (long long)nt, T_LEN);
    if (nt < T_LEN) return t_done("test-restore");
    int32_t T[T_LEN];
    memcpy(T, tv, sizeof T);
    msa_session_close(s);
    msa_engine_free(e);

    /* the cuts, in a seeded order (each one independent of the others) */
    int order[N_CUTS];
    for (int i = 0; i < N_CUTS; i++) order[i] = i;
    for (int i = N_CUTS - 1; i > 0; i--) {
        int j = t_randint(i + 1), t = order[i];
        order[i] = order[j], order[j] = t;
    }
    int ok_ids = 0, ok_sel = 0, ok_fork = 0, ok_import = 0;
    for (int oi = 0; oi < N_CUTS; oi++) {
        const int c = CUT0 + order[oi];
        char a[32], b[32], f[32], im[32];
        snprintf(a, sizeof a, "a%d", c);
        snprintf(b, sizeof b, "b%d", c);
        snprintf(f, sizeof f, "f%d", c);
        snprintf(im, sizeof im, "i%d", c);
        continuation ca, cb, cf, ci;

        /* A: continues in the same process */
        e = engine();
        if (!e) break;
        s = session_with(e, a, T, c);
        if (s) continue_session(s, &ca);
        msa_session_close(s);
        check_lanes(e, a);
        /* B: stored at c, then a fork and an export of it */
        s = session_with(e, b, T, c);
        msa_session_close(s);
        check_lanes(e, b);
        CHECK_OK(msa_store_fork(msa_engine_store(e), b, f));
        unlink(xfile);
        CHECK_OK(msa_store_export(msa_engine_store(e), b, xfile));
        CHECK_OK(msa_store_import(msa_engine_store(e), xfile, im));
        msa_engine_free(e);

        /* a new engine on the store: B, then its fork, then the import */
        e = engine();
        if (!e) break;
        s = session_with(e, b, NULL, 0);
        if (s) continue_session(s, &cb);
        msa_session_close(s);
        check_lanes(e, b);
        s = session_with(e, f, NULL, 0);
        if (s) continue_session(s, &cf);
        msa_session_close(s);
        check_lanes(e, f);
        s = session_with(e, im, NULL, 0);
        if (s) continue_session(s, &ci);
        msa_session_close(s);
        check_lanes(e, im);
        /* B still holds its own continuation, untouched by the fork's */
        s = session_with(e, b, NULL, 0);
        int64_t nb = 0;
        const int32_t *bt = s ? msa_session_tokens(s, &nb) : NULL;
        CHECKF(bt && nb == c + G && !memcmp(bt, T, sizeof(int32_t) * (size_t)c) &&
                   !memcmp(bt + c, cb.ids.ids, sizeof(int32_t) * G),
               "cut %d: B after its fork continued holds %lld tokens", c, (long long)nb);
        msa_session_close(s);
        msa_engine_free(e);

        const int si = same_ids(&ca, &cb), ss = same_reads(&ca, &cb);
        const int sf = same_ids(&ca, &cf) && same_reads(&ca, &cf);
        const int sm = same_ids(&ca, &ci) && same_reads(&ca, &ci);
        CHECKF(si, "cut %d (block fill %d): resumed continuation differs", c, c % BK ? c % BK : BK);
        CHECKF(ss, "cut %d: resumed selection differs (%zu vs %zu blocks read)", c, ca.n_reads,
               cb.n_reads);
        CHECKF(sf, "cut %d: the fork continues differently", c);
        CHECKF(sm, "cut %d: the imported copy continues differently", c);
        CHECKF(ca.n_reads > TOPK, "cut %d: only %zu blocks were read (selection not exercised)", c,
               ca.n_reads);
        ok_ids += si, ok_sel += ss, ok_fork += sf, ok_import += sm;
    }
    printf("test-restore: %d cuts (block fills 1..%d and full): continuation equal %d, selection "
           "equal %d, fork %d, import %d\n",
           N_CUTS, BK - 1, ok_ids, ok_sel, ok_fork, ok_import);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    CHECK(system(cmd) == 0);
    return t_done("test-restore");
}
