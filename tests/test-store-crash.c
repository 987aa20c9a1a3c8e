/*
 * test-store-crash.c: crash safety. A child process appends to a session
 * in durable transactions of random sizes, reporting on a pipe the token
 * count and content hash it is about to commit ("B") and has committed
 * ("A"). The parent SIGKILLs it at random moments, 25 times by default
 * (MSA_CRASH_ROUNDS). After every kill the store must open, fsck must be
 * clean, and the session must hash to the last committed state or to the
 * one whose commit was in flight. Label: slow.
 */
#include <signal.h>
#include <sys/wait.h>

#include "tests/testutil.h"
#include "tests/test-store-util.h"

static void child(const char *dir, uint64_t sd, int fd, uint64_t rng) {
    msa_store *st = ts_open(dir);
    if (!st) _exit(2);
    msa_store_shape s = ts_shape();
    msa_store_session *ss;
    if (msa_store_session_open(st, "c", "fp", &ss)) _exit(3);
    msa_store_session_info info;
    if (msa_store_session_stat(ss, &info)) _exit(4);
    uint64_t n = info.n_tokens;
    for (;;) {
        rng = ts_mix(rng + 1);
        uint64_t c = 1 + rng % 40;
        int rc;
        char line[96];
        int len = snprintf(line, sizeof line, "B %llu %llu\n", (unsigned long long)(n + c),
                           (unsigned long long)ts_hash(NULL, &s, sd, n + c, &rc));
        if (write(fd, line, (size_t)len) != len) _exit(5);
        if (ts_append(ss, &s, sd, n, c)) _exit(6);
        n += c;
        len = snprintf(line, sizeof line, "A %llu %llu\n", (unsigned long long)n,
                       (unsigned long long)ts_hash(NULL, &s, sd, n, &rc));
        if (write(fd, line, (size_t)len) != len) _exit(7);
    }
}

int main(void) {
    uint64_t seed = t_seed();
    char dir[4200];
    ts_tmpdir(dir, sizeof dir, "crash");
    msa_store *st = ts_open(dir);
    msa_store_shape s = ts_shape();
    CHECK_OK(msa_store_session_create(st, "c", "fp", &s));
    msa_store_close(st);
    int rounds = getenv("MSA_CRASH_ROUNDS") ? atoi(getenv("MSA_CRASH_ROUNDS")) : 25;
    uint64_t committed_n = 0, committed_h = 0;
    int rc;
    committed_h = ts_hash(NULL, &s, seed, 0, &rc);
    for (int r = 0; r < rounds; r++) {
        int p[2];
        if (pipe(p)) return 1;
        pid_t pid = fork();
        if (pid == 0) {
            close(p[0]);
            child(dir, seed, p[1], seed ^ (uint64_t)r);
        }
        close(p[1]);
        usleep((useconds_t)(20000 + t_randint(250000)));
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        CHECKF(WIFSIGNALED(status), "child ended by itself (status %d)", status);
        /* the child's reports */
        FILE *f = fdopen(p[0], "r");
        char kind;
        unsigned long long n, h;
        uint64_t pend_n = (uint64_t)-1, pend_h = 0;
        int commits = 0;
        while (fscanf(f, " %c %llu %llu", &kind, &n, &h) == 3) {
            if (kind == 'B') { pend_n = n; pend_h = h; }
            else { committed_n = n; committed_h = h; pend_n = (uint64_t)-1; commits++; }
        }
        fclose(f);
        st = ts_open(dir);
        CHECK(st != NULL);
        if (!st) break;
        uint64_t nf = 0;
        CHECKF(msa_store_fsck(st, NULL, NULL, &nf) == MSA_OK, "round %d: fsck found %llu problems", r,
               (unsigned long long)nf);
        uint64_t got_n = 0;
        uint64_t got = ts_store_hash(st, "c", seed, &got_n, &rc);
        CHECKF(rc == 0, "round %d: %s", r, msa_last_error());
        int ok = (got_n == committed_n && got == committed_h) || (got_n == pend_n && got == pend_h);
        CHECKF(ok, "round %d: store holds %llu tokens (hash %llx); last commit %llu (%llx), in flight %llu",
               r, (unsigned long long)got_n, (unsigned long long)got, (unsigned long long)committed_n,
               (unsigned long long)committed_h, (unsigned long long)pend_n);
        if (got_n == pend_n) { committed_n = pend_n; committed_h = pend_h; }
        printf("round %2d: %3d commits seen, store at %llu tokens\n", r, commits, (unsigned long long)got_n);
        msa_store_close(st);
    }
    if (!t_failures) ts_rmrf(dir);
    else fprintf(stderr, "store left in %s\n", dir);
    return t_done("test-store-crash");
}
