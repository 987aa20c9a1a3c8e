/*
 * test-store-concurrency.c: one writer process and three reader processes
 * on one store. Session content is a pure function of its token count, so
 * every state a reader can see has exactly one correct content: readers
 * check that every block they read equals the generated block of the fill
 * it reports, that fills and token counts only grow, and that a block is
 * never missing below the token count they saw (no torn or uncommitted
 * state is ever visible). The writer commits 300 small transactions.
 */
#include <signal.h>
#include <sys/wait.h>

#include "tests/testutil.h"
#include "tests/test-store-util.h"

static int reader(const char *dir, uint64_t sd) {
    msa_store *st = ts_open(dir);
    if (!st) return 2;
    msa_store_shape s = ts_shape();
    msa_store_session *ss;
    if (msa_store_session_open(st, "w", "fp", &ss)) return 3;
    ts_bufs b, e;
    ts_bufs_init(&b, &s);
    ts_bufs_init(&e, &s);
    uint64_t last_n = 0, reads = 0;
    int bad = 0;
    double t0 = msa_now();
    while (msa_now() - t0 < 20 && !bad) {
        msa_store_session_info info;
        if (msa_store_session_stat(ss, &info)) {
            fprintf(stderr, "reader: stat: %s\n", msa_last_error());
            bad = 1;
            break;
        }
        if (info.n_tokens < last_n) { fprintf(stderr, "tokens went back\n"); bad = 1; }
        last_n = info.n_tokens;
        if (info.n_tokens == 0) continue;
        uint64_t nb = info.n_blocks;
        int l = (int)(reads % (uint64_t)s.n_layers);
        uint64_t blk = reads % nb;
        if (reads % 3 == 0) blk = nb - 1; /* the partial block, being rewritten */
        msa_store_block_info bi;
        int rc = msa_store_read_block(ss, l, blk, b.k, b.v, b.i, &bi);
        if (rc) { fprintf(stderr, "reader: %s\n", msa_last_error()); bad = 1; break; }
        int fill_min = (int)((info.n_tokens - blk * 16) < 16 ? info.n_tokens - blk * 16 : 16);
        if (bi.n_tokens < fill_min) { fprintf(stderr, "fill shrank\n"); bad = 1; }
        ts_fill(&e, &s, sd, l, blk, bi.n_tokens);
        if (memcmp(b.k, e.k, b.kn * 2) || memcmp(b.v, e.v, b.kn * 2) || memcmp(b.i, e.i, b.in * 2)) {
            fprintf(stderr, "reader saw content of no committed state (layer %d block %llu)\n", l,
                    (unsigned long long)blk);
            bad = 1;
        }
        int32_t tok[16];
        uint64_t m = info.n_tokens < 16 ? info.n_tokens : 16;
        if (msa_store_read_tokens(ss, info.n_tokens - m, m, tok)) {
            fprintf(stderr, "reader: tokens: %s\n", msa_last_error());
            bad = 1;
            break;
        }
        for (uint64_t i = 0; i < m; i++)
            if (tok[i] != ts_token(sd, info.n_tokens - m + i)) {
                fprintf(stderr, "reader: token %llu is %d, committed %d\n",
                        (unsigned long long)(info.n_tokens - m + i), tok[i],
                        ts_token(sd, info.n_tokens - m + i));
                bad = 1;
                break;
            }
        reads++;
        if (info.n_tokens >= 300 * 7) break;
    }
    printf("reader %d: %llu reads, last saw %llu tokens\n", (int)getpid(), (unsigned long long)reads,
           (unsigned long long)last_n);
    fflush(stdout);
    ts_bufs_free(&b);
    ts_bufs_free(&e);
    msa_store_session_close(ss);
    msa_store_close(st);
    return bad;
}

int main(void) {
    uint64_t seed = t_seed();
    char dir[4200];
    ts_tmpdir(dir, sizeof dir, "conc");
    msa_store *st = ts_open(dir);
    msa_store_shape s = ts_shape();
    CHECK_OK(msa_store_session_create(st, "w", "fp", &s));
    msa_store_close(st);
    pid_t pids[3];
    for (int i = 0; i < 3; i++)
        if ((pids[i] = fork()) == 0) _exit(reader(dir, seed));
    /* the writer: this process, with a fresh handle */
    st = ts_open(dir);
    msa_store_params p = ts_params();
    (void)p;
    msa_store_session *ss;
    CHECK_OK(msa_store_session_open(st, "w", "fp", &ss));
    uint64_t n = 0;
    for (int i = 0; i < 300; i++) {
        CHECK_OK(ts_append(ss, &s, seed, n, 7));
        n += 7;
    }
    msa_store_session_close(ss);
    for (int i = 0; i < 3; i++) {
        int status;
        waitpid(pids[i], &status, 0);
        CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "reader %d failed (status %d)", i, status);
    }
    uint64_t nf;
    CHECK_OK(msa_store_fsck(st, NULL, NULL, &nf));
    msa_store_close(st);
    if (!t_failures) ts_rmrf(dir);
    return t_done("test-store-concurrency");
}
