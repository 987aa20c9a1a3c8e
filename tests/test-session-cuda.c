/*
 * test-session-cuda.c: sessions on a CUDA engine (bf16 weights and blocks,
 * the pager in CUDA mode, msa_cuda_model_forward_mem) against sessions on
 * the CPU engine, on the stories260K model converted into a temp folder.
 *
 *   1. resume across processes on CUDA: a child process fills a session and
 *      generates part of the tokens, the parent reopens it and generates the
 *      rest; the tokens equal one uninterrupted CUDA run. (Run first: the
 *      parent must not touch CUDA before it forks.)
 *   2. CPU vs CUDA, teacher-forced: two sessions (one per engine, one store) get the prompt, then the
 *      CPU's greedy token each step; every step's logits are compared
 *      (cosine, argmax). Free-running greedy ids are compared too and the
 *      length of the agreeing prefix is reported.
 *   3. a GPU pool of a few blocks (evictions every step) gives the same
 *      tokens as a roomy one.
 *   4. a session's dtype is fixed: the CPU engine refuses a bf16 session.
 *   5. index keys beyond the GPU budget are paged: a session whose
 *      gpu_index_bytes holds four blocks of index keys gives the same
 *      tokens as one with the default budget; then the forward pass over a
 *      pager of its own (no session around it), resident vs streamed
 *      index keys: same greedy tokens, the pager's counters show the index
 *      bytes paged, and the cost per decode step of each is printed.
 *
 * Label gpu: exits 77 without CUDA in the build or without a GPU.
 */
#include <errno.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/session/engine.h"
#include "engine/msa.h"
#include "base/base.h"
#include "memory/pager.h"
#include "tests/testutil.h"
#include "tests/session_util.h"
#ifdef MSA_HAVE_CUDA
#include "engine/forward/model_cuda.h"
#endif

static msa_engine *open_engine(int cuda, int block_size, int top_k, int chunk) {
    return open_engine_on(cuda, block_size, top_k, chunk, (size_t)64 << 20);
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Greedy decoding through msa_cuda_model_forward_mem over a pager of its
 * own with GPU index budget `index_bytes`: prompt ids, then `steps` tokens.
 * Returns the ms per decode step (after a warm-up), or -1 on failure. */
#ifdef MSA_HAVE_CUDA
static double forward_run(msa_engine *e, size_t index_bytes, const int32_t *prompt_ids,
                          int n_prompt, int steps, int top_k, int32_t *out, msa_pager_stats *st,
                          int *streamed, uint64_t *chunks, int64_t *chunk_blocks) {
    const msa_model_info *I = msa_cuda_model_info(e->cm);
    msa_pager_params p = msa_pager_default_params();
    p.cfg.n_q_heads = I->n_heads;
    p.cfg.n_kv_heads = I->n_kv_heads;
    p.cfg.head_dim = I->head_dim;
    p.cfg.idx_dim = I->idx_dim;
    p.cfg.idx_key_heads = I->idx_key_heads;
    p.cfg.block_size = 16;
    p.cfg.top_k = top_k;
    p.n_layers = I->n_layers;
    p.max_tokens = 1024;
    p.dtype = MSA_DTYPE_BF16;
    p.device = MSA_DEVICE_CUDA;
    p.stream = msa_cuda_model_stream(e->cm);
    p.host_cache_bytes = (size_t)16 << 20;
    p.gpu_pool_bytes = (size_t)16 << 20;
    p.gpu_index_bytes = index_bytes;
    msa_memsource *ms = NULL;
    msa_kvmem *m = NULL;
    double ms_step = -1;
    if (msa_memsource_init(&ms, &p) != MSA_OK) return -1;
    msa_block_source src = msa_memsource_source(ms);
    int rc = msa_kvmem_paged_init(&m, &p, &src);
    msa_forward_opts o = msa_forward_default_opts();
    o.block_size = 16;
    o.top_k = top_k;
    int32_t tok = 0;
    if (!rc) rc = msa_cuda_model_forward_mem(e->cm, m, prompt_ids, n_prompt, 0, &o, NULL, &tok);
    const int warm = 5;
    double t0 = 0;
    for (int i = 0; !rc && i < steps; i++) {
        if (i == warm) t0 = msa_now();
        out[i] = tok;
        rc = msa_cuda_model_forward_mem(e->cm, m, &out[i], 1, n_prompt + i, &o, NULL, &tok);
    }
    if (rc) {
        fprintf(stderr, "forward over a pager (index budget %zu): %s: %s\n", index_bytes,
                msa_strerror(rc), msa_last_error());
    } else {
        ms_step = 1e3 * (msa_now() - t0) / (steps - warm);
        msa_kvmem_paged_stats(m, st);
        msa_kvmem_paged_index_info(m, streamed, chunk_blocks, chunks);
    }
    msa_kvmem_paged_free(m);
    msa_memsource_free(ms);
    return ms_step;
}
#endif

static void test_index_budget(void) {
#ifdef MSA_HAVE_CUDA
    /* a session: four blocks of index keys (idx_key_heads x Bk x d_idx bf16) */
    msa_engine *e = open_engine(1, 16, 2, 16);
    CHECK(e != NULL);
    if (!e) return;
    const msa_model_info *I = msa_cuda_model_info(e->cm);
    const size_t ibb = (size_t)I->idx_key_heads * 16 * I->idx_dim * 2;
    msa_engine_free(e);
    collect ref = {0}, tiny = {0};
    msa_session_info info;
    uint64_t idx_bytes[2] = {0, 0};
    double ms_tok[2] = {0, 0};
    for (int pass = 0; pass < 2; pass++) {
        e = open_engine(1, 16, 2, 16);
        CHECK(e != NULL);
        if (!e) return;
        if (pass) e->gpu_index_bytes = 4 * ibb;
        char name[32];
        snprintf(name, sizeof name, "index-%s", pass ? "paged" : "resident");
        collect *out = pass ? &tiny : &ref;
        msa_session *s = NULL;
        CHECK_OK(msa_session_open(e, name, MSA_SESSION_CREATE, &s));
        if (!s) {
            msa_engine_free(e);
            return;
        }
        CHECK_OK(msa_session_append_text(s, prompt, strlen(prompt), "prompt.txt", NULL, NULL));
        double t0 = msa_now();
        CHECK_OK(generate(s, 150, out));
        ms_tok[pass] = 1e3 * (msa_now() - t0) / 150;
        CHECK_OK(msa_session_get_info(s, &info));
        idx_bytes[pass] = info.pager.bytes_index_to_gpu;
        msa_session_close(s);
        msa_engine_free(e);
    }
    int same = tiny.n == 150 && tiny.n == ref.n &&
               !memcmp(tiny.ids, ref.ids, sizeof(int32_t) * (size_t)ref.n);
    CHECKF(same, "a session with a GPU index budget of 4 blocks differs from a roomy one");
    printf("session, GPU index budget of 4 blocks (%zu bytes) vs the default: 150 tokens %s; "
           "%.3f vs %.3f ms/token; index bytes copied up since the last pager open %llu vs "
           "%llu\n", 4 * ibb, same ? "identical" : "DIFFER", ms_tok[1], ms_tok[0],
           (unsigned long long)idx_bytes[1], (unsigned long long)idx_bytes[0]);
    CHECK(idx_bytes[1] > 0);

    /* the forward pass over a pager of its own: resident vs streamed */
    e = open_engine(1, 16, 2, 16);
    CHECK(e != NULL);
    if (!e) return;
    enum { NP = 40, STEPS = 200 };
    int32_t ids[NP];
    I = msa_cuda_model_info(e->cm);
    for (int i = 0; i < NP; i++) ids[i] = 1 + (i * 37 + 11) % (I->vocab_size - 1);
    static int32_t toks[3][STEPS];
    const size_t budgets[3] = {(size_t)1 << 30, 4 * ibb, 64 * ibb};
    const char *names[3] = {"resident", "paged, 4-block budget", "paged, 64-block budget"};
    for (int top_k = 2; top_k <= 4; top_k += 2)
        for (int c = 0; c < 3; c++) {
            msa_pager_stats st;
            memset(&st, 0, sizeof st);
            int streamed = 0;
            uint64_t chunks = 0;
            int64_t chunk_blocks = 0;
            double ms = forward_run(e, budgets[c], ids, NP, STEPS, top_k, toks[c], &st,
                                    &streamed, &chunks, &chunk_blocks);
            CHECK(ms >= 0);
            if (ms < 0) break;
            int agree = !memcmp(toks[c], toks[0], sizeof toks[0]);
            printf("forward over a pager, k=%d, %s: %.3f ms/step; %d layers streamed, %llu "
                   "chunks of <= %lld blocks, %llu index bytes copied up; tokens %s\n",
                   top_k, names[c], ms, streamed, (unsigned long long)chunks,
                   (long long)chunk_blocks, (unsigned long long)st.bytes_index_to_gpu,
                   c == 0 ? "(reference)" : agree ? "identical" : "DIFFER");
            if (c == 0) {
                CHECK(streamed == 0 && chunks == 0);
            } else {
                CHECKF(agree, "k=%d, index budget %zu: tokens differ from resident", top_k,
                       budgets[c]);
                CHECK(streamed == I->n_layers && chunks > 0);
                /* every step pages every block of every layer */
                CHECK(st.bytes_index_to_gpu >= (uint64_t)STEPS * I->n_layers * ibb);
            }
        }
    msa_engine_free(e);
#endif
}

#define RESUME_TOTAL 120
#define RESUME_FIRST 37

int main(int argc, char **argv) {
#ifndef MSA_HAVE_CUDA
    T_SKIP("built without CUDA");
#endif
    t_seed();
    const char *assets = t_assets();
    if (!assets) T_SKIP("no test assets (set MSA_ASSETS or keep ../shared/assets)");
    char tmp[2048]; /* removed at exit, also after a skip or a failure */
    if (!t_tmpdir(tmp, sizeof tmp, "test-session-cuda")) T_SKIP("cannot make a temporary folder");
    char bin[4096], tok[4096];
    snprintf(bin, sizeof bin, "%s/stories260K/stories260K.bin", assets);
    snprintf(tok, sizeof tok, "%s/stories260K/tok512.bin", assets);
    snprintf(model_path, sizeof model_path, "%s/stories260K.gguf", tmp);
    snprintf(store_dir, sizeof store_dir, "%s/store", tmp);
    CHECK_OK(msa_convert_llama2c(bin, tok, model_path));

    /* 1. resume across processes (child first: no CUDA in the parent yet) */
    pid_t pid = fork();
    if (pid == 0) {
        msa_engine *ce = open_engine(1, 16, 4, 24);
        if (!ce) _exit(77);
        msa_session *cs = NULL;
        if (msa_session_open(ce, "resumed", MSA_SESSION_CREATE, &cs)) _exit(2);
        if (msa_session_append_text(cs, prompt, strlen(prompt), "prompt.txt", NULL, NULL)) _exit(3);
        collect part = {0};
        if (generate(cs, RESUME_FIRST, &part)) _exit(4);
        msa_session_close(cs);
        msa_engine_free(ce);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
        T_SKIP("no CUDA device (the CUDA engine does not open)");
    CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);

    msa_engine *e = open_engine(1, 16, 4, 24);
    CHECK(e != NULL);
    if (!e) return t_done("test-session-cuda");
    msa_session *s = NULL;
    collect whole = {0};
    CHECK_OK(msa_session_open(e, "whole", MSA_SESSION_CREATE, &s));
    CHECK_OK(msa_session_append_text(s, prompt, strlen(prompt), "prompt.txt", NULL, NULL));
    CHECK_OK(generate(s, RESUME_TOTAL, &whole));
    msa_session_close(s);
    CHECK_OK(msa_session_open(e, "resumed", 0, &s));
    int64_t n_before = 0;
    msa_session_tokens(s, &n_before);
    collect rest = {0};
    CHECK_OK(generate(s, RESUME_TOTAL - RESUME_FIRST, &rest));
    int64_t n_tok;
    const int32_t *toks = msa_session_tokens(s, &n_tok);
    int prompt_len = (int)(n_before - RESUME_FIRST);
    int mismatch = -1;
    for (int i = 0; i < RESUME_TOTAL && mismatch < 0; i++)
        if (prompt_len + i >= n_tok || toks[prompt_len + i] != whole.ids[i]) mismatch = i;
    CHECKF(mismatch < 0, "CUDA: resumed run differs from the uninterrupted one at token %d",
           mismatch);
    printf("resume on CUDA: %d tokens (%d before the restart) %s\n", RESUME_TOTAL, RESUME_FIRST,
           mismatch < 0 ? "identical" : "DIFFER");
    msa_session_info info;
    CHECK_OK(msa_session_get_info(s, &info));
    CHECK(info.pager.gpu_slots > 0);
    printf("  pager: steps %llu, gpu lookups %llu hits %llu, store->host %llu bytes\n",
           (unsigned long long)info.pager.steps, (unsigned long long)info.pager.gpu_lookups,
           (unsigned long long)info.pager.gpu_hits,
           (unsigned long long)info.pager.bytes_store_to_host);
    msa_session_close(s);

    /* 2. CPU vs CUDA: teacher-forced logits, then free-running ids */
    msa_engine *ec = open_engine(0, 16, 4, 24);
    CHECK(ec != NULL);
    if (!ec) return t_done("test-session-cuda");
    /* 4. a session's dtype is fixed at creation */
    CHECK(msa_session_open(ec, "whole", 0, &s) == MSA_EUNSUPPORTED);
    printf("CPU engine on a bf16 session: %s\n", msa_last_error());
    msa_session *sc = NULL, *sg = NULL;
    CHECK_OK(msa_session_open(ec, "tf-cpu", MSA_SESSION_CREATE, &sc));
    CHECK_OK(msa_session_open(e, "tf-cuda", MSA_SESSION_CREATE, &sg));
    if (!sc || !sg) return t_done("test-session-cuda");
    CHECK_OK(msa_session_append_text(sc, prompt, strlen(prompt), "prompt.txt", NULL, NULL));
    CHECK_OK(msa_session_append_text(sg, prompt, strlen(prompt), "prompt.txt", NULL, NULL));
    msa_model_info mi;
    msa_model_get_info(msa_engine_model(ec), &mi);
    const int steps = 100;
    int agree = 0;
    double min_cos = 1.0, sum_cos = 0.0;
    for (int i = 0; i < steps; i++) {
        const float *lc = msa_session_last_logits(sc), *lg = msa_session_last_logits(sg);
        CHECK(lc && lg);
        if (!lc || !lg) break;
        double dot = 0, nc = 0, ng = 0;
        for (int j = 0; j < mi.vocab_size; j++) {
            dot += (double)lc[j] * lg[j];
            nc += (double)lc[j] * lc[j];
            ng += (double)lg[j] * lg[j];
        }
        double cs = dot / (sqrt(nc * ng) + 1e-30);
        if (cs < min_cos) min_cos = cs;
        sum_cos += cs;
        int32_t tc = argmax(lc, mi.vocab_size), tg = argmax(lg, mi.vocab_size);
        agree += tc == tg;
        CHECK_OK(msa_session_append_tokens(sc, &tc, 1, "forced", NULL, NULL));
        CHECK_OK(msa_session_append_tokens(sg, &tc, 1, "forced", NULL, NULL));
    }
    printf("teacher-forced, %d steps: argmax agreement %d/%d, cosine min %.6f mean %.6f\n",
           steps, agree, steps, min_cos, sum_cos / steps);
    CHECKF(min_cos > 0.99, "logits cosine %.6f", min_cos);
    CHECKF(agree >= steps * 9 / 10, "argmax agreement %d of %d", agree, steps);
    msa_session_close(sc);
    msa_session_close(sg);

    collect gc = {0}, gg = {0};
    CHECK_OK(msa_session_open(ec, "free-cpu", MSA_SESSION_CREATE, &sc));
    CHECK_OK(msa_session_open(e, "free-cuda", MSA_SESSION_CREATE, &sg));
    CHECK_OK(msa_session_append_text(sc, prompt, strlen(prompt), "prompt.txt", NULL, NULL));
    CHECK_OK(msa_session_append_text(sg, prompt, strlen(prompt), "prompt.txt", NULL, NULL));
    CHECK_OK(generate(sc, 150, &gc));
    CHECK_OK(generate(sg, 150, &gg));
    int same = 0;
    while (same < gc.n && same < gg.n && gc.ids[same] == gg.ids[same]) same++;
    printf("free-running greedy: CPU and CUDA agree on the first %d of 150 tokens\n", same);
    CHECKF(same >= 20, "CPU and CUDA greedy ids agree for only %d tokens", same);
    msa_session_close(sc);
    msa_session_close(sg);
    msa_engine_free(ec);
#ifdef MSA_HAVE_CUDA
    printf("CUDA append through the host (download + widen + pager append): %.3f s in all\n",
           msa_cuda_model_append_seconds(e->cm));
#endif
    msa_engine_free(e);

    /* 3. a GPU pool of 6 blocks gives the same tokens as a roomy one (k = 2:
     * a decode step reads at most 4 blocks besides the tail) */
    size_t block_bytes = 2 * 4 * 16 * 8 * 2; /* K+V of one bf16 block */
    collect ref = {0}, tiny = {0};
    for (int pass = 0; pass < 2; pass++) {
        e = open_engine(1, 16, 2, 24);
        CHECK(e != NULL);
        if (!e) break;
        if (pass) e->gpu_pool_bytes = 6 * block_bytes;
        const char *name = pass ? "tiny" : "roomy";
        collect *out = pass ? &tiny : &ref;
        CHECK_OK(msa_session_open(e, name, MSA_SESSION_CREATE, &s));
        CHECK_OK(msa_session_append_text(s, prompt, strlen(prompt), "prompt.txt", NULL, NULL));
        CHECK_OK(generate(s, 150, out));
        CHECK_OK(msa_session_get_info(s, &info));
        printf("%s pool: %lld slots, gpu evictions %llu, misses %llu\n", name,
               (long long)info.pager.gpu_slots, (unsigned long long)info.pager.gpu_evictions,
               (unsigned long long)info.pager.gpu_misses);
        if (pass)
            CHECKF(info.pager.gpu_evictions > 0, "evictions %llu",
                   (unsigned long long)info.pager.gpu_evictions);
        msa_session_close(s);
        msa_engine_free(e);
    }
    CHECK(tiny.n == 150 && tiny.n == ref.n &&
          !memcmp(tiny.ids, ref.ids, sizeof(int32_t) * (size_t)ref.n));

    /* 5. index keys beyond the GPU budget are paged */
    test_index_budget();
    return t_done("test-session-cuda");
}
