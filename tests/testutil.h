/*
 * testutil.h: the few helpers every test program shares: checks that report
 * file and line and keep going, a seeded random generator whose seed is
 * printed (set MSA_TEST_SEED to replay a failure), and the assets folder.
 */
#ifndef MSA_TESTUTIL_H
#define MSA_TESTUTIL_H

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int t_failures;
static int t_checks;

#define CHECK(cond)                                                           \
    do {                                                                      \
        t_checks++;                                                           \
        if (!(cond)) {                                                        \
            t_failures++;                                                     \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,  \
                    #cond);                                                   \
        }                                                                     \
    } while (0)

#define CHECKF(cond, ...)                                                     \
    do {                                                                      \
        t_checks++;                                                           \
        if (!(cond)) {                                                        \
            t_failures++;                                                     \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__,  \
                    #cond);                                                   \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
        }                                                                     \
    } while (0)

/* Checks that an msa call returns MSA_OK, printing msa_last_error() if not. */
#define CHECK_OK(expr)                                                        \
    do {                                                                      \
        int rc_ = (expr);                                                     \
        t_checks++;                                                           \
        if (rc_ != 0) {                                                       \
            t_failures++;                                                     \
            fprintf(stderr, "%s:%d: %s returned %d (%s): %s\n", __FILE__,     \
                    __LINE__, #expr, rc_, msa_strerror(rc_), msa_last_error()); \
        }                                                                     \
    } while (0)

/* Ends a test program: prints a summary, exit status 1 on any failure. */
static inline int t_done(const char *name) {
    if (t_checks == 0) {
        fprintf(stderr, "%s: no checks ran\n", name);
        return 1;
    }
    printf("%s: %d checks, %d failed\n", name, t_checks, t_failures);
    return t_failures ? 1 : 0;
}

/* Skips the whole program (ctest SKIP_RETURN_CODE 77). */
#define T_SKIP(...)                                                           \
    do {                                                                      \
        printf("SKIPPED: ");                                                  \
        printf(__VA_ARGS__);                                                  \
        printf("\n");                                                         \
        exit(77);                                                             \
    } while (0)

/* A temporary folder "$TMPDIR/msa-<tag>-XXXXXX" (/tmp when TMPDIR is not
 * set) into buf, or 0 when it cannot be made. It is removed, with all it
 * holds, when the program ends through exit() or a return from main (a
 * failure, T_SKIP and a success alike), so that tests leave nothing behind;
 * MSA_TEST_KEEP_TMP=1 keeps it (its path is printed). Children that a test
 * forks leave it alone (they end with _exit, and the removal runs only in
 * the process that made the folder). */
#include <unistd.h>
static char t_tmp_dirs[8][4096] __attribute__((unused));
static int t_n_tmp_dirs __attribute__((unused));
static pid_t t_tmp_owner __attribute__((unused));

static inline void t_tmp_cleanup(void) {
    if (getpid() != t_tmp_owner) return;
    const char *keep = getenv("MSA_TEST_KEEP_TMP");
    for (int i = 0; i < t_n_tmp_dirs; i++) {
        if (keep && *keep && strcmp(keep, "0")) {
            printf("kept %s (MSA_TEST_KEEP_TMP)\n", t_tmp_dirs[i]);
            continue;
        }
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "rm -rf '%.4096s'", t_tmp_dirs[i]);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", t_tmp_dirs[i]);
    }
}

static inline int t_tmpdir(char *buf, size_t n, const char *tag) {
    const char *base = getenv("TMPDIR");
    snprintf(buf, n, "%s/msa-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    if (!mkdtemp(buf)) return 0;
    if (t_n_tmp_dirs < 8) {
        if (!t_n_tmp_dirs) {
            t_tmp_owner = getpid();
            atexit(t_tmp_cleanup);
        }
        snprintf(t_tmp_dirs[t_n_tmp_dirs++], sizeof t_tmp_dirs[0], "%s", buf);
    }
    return 1;
}

/* xorshift64*: fast, seeded, good enough for test data. */
static uint64_t t_rng_state;

/* The one seed policy of the tests: every test program that draws anything
 * calls t_seed() once at the start and takes all its randomness from
 * t_rand_u64() and the helpers below (or passes values drawn from them on,
 * e.g. as a sampler's or a child process's seed); none seeds from the clock,
 * the pid or rand() itself. The seed is fresh on every run (clock and pid)
 * unless MSA_TEST_SEED is set (decimal or 0x hex), and it is always printed,
 * so that a failing run can be replayed. A malformed MSA_TEST_SEED stops
 * the program with exit status 2. */
static inline uint64_t t_seed(void) {
    const char *s = getenv("MSA_TEST_SEED");
    uint64_t seed;
    if (s && *s) {
        char *end;
        errno = 0;
        seed = strtoull(s, &end, 0);
        if (errno || end == s || *end) {
            fprintf(stderr, "MSA_TEST_SEED='%s' is not an unsigned integer\n", s);
            exit(2);
        }
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 40);
    }
    if (!seed) seed = 1;
    t_rng_state = seed;
    printf("seed %llu (MSA_TEST_SEED to replay)\n", (unsigned long long)seed);
    fflush(stdout);
    return seed;
}

static inline uint64_t t_rand_u64(void) {
    uint64_t x = t_rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    t_rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Uniform in [lo, hi). */
static inline float t_randf(float lo, float hi) {
    return lo + (hi - lo) * (float)(t_rand_u64() >> 40) * (1.0f / 16777216.0f);
}

/* Uniform integer in [0, n). */
static inline int t_randint(int n) { return (int)(t_rand_u64() % (uint64_t)n); }

/* Standard normal (Box-Muller). */
static inline float t_randn(void) {
    float u = t_randf(1e-7f, 1.0f), v = t_randf(0.0f, 1.0f);
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

/* The assets folder: $MSA_ASSETS, else the default ctest passes
 * (../shared/assets beside the source). NULL when neither exists. */
static inline const char *t_assets(void) {
    const char *d = getenv("MSA_ASSETS");
    if (!d || !*d) d = getenv("MSA_DEFAULT_ASSETS");
    if (!d || access(d, R_OK) != 0) return NULL;
    return d;
}

#endif /* MSA_TESTUTIL_H */
