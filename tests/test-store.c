/*
 * test-store.c: the store's unit tests.
 *
 *   codec       lossless round trips for bf16/fp16/fp32 (random and partly
 *               filled blocks), fp8 lossy error bounds, CRC32C hw == sw
 *   roundtrip   append in several transactions (partial blocks rewritten),
 *               read back exactly, in this process and in a fresh process
 *               (the program re-executes itself with "verify")
 *   txn memory  two transactions open at once on one handle, an abort in
 *               between, commits in both orders (1 and 3 threads)
 *   rules       blocks out of order, K without index keys, uncovered layers
 *               are refused and nothing is committed
 *   format      a newer format version (MSA_EVERSION), a folder of other
 *               files and a foreign LMDB (MSA_EFORMAT), wrong model (MSA_EMODEL)
 *   fork        shares blocks, both grow apart, remove one keeps the other
 *   export      round trip; truncated and tampered files are refused and
 *               change nothing
 *   corrupt     a flipped byte inside a stored block: MSA_ECORRUPT naming
 *               layer and block, fsck finds it
 *   faults      ENOSPC, EIO, ENOMEM at every fault point of an append, a
 *               fork and a remove; the store reopens with exactly the
 *               committed data; a map limit gives MSA_ENOSPC
 *   compact     shrinks after removal, data intact
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "tests/testutil.h"
#include "tests/test-store-util.h"

static uint64_t seed;

static void fsck_print(void *ctx, const char *line) {
    (void)ctx;
    fprintf(stderr, "  fsck: %s\n", line);
}
static void fsck_quiet(void *ctx, const char *line) {
    (void)line;
    ++*(int *)ctx;
}

static void check_session(msa_store *st, const char *name, uint64_t sd, uint64_t n_expect) {
    uint64_t n = 0;
    int rc;
    uint64_t h = ts_store_hash(st, name, sd, &n, &rc);
    CHECKF(rc == 0, "%s: %s", name, msa_last_error());
    CHECKF(n == n_expect, "%s: %llu tokens, expected %llu", name, (unsigned long long)n, (unsigned long long)n_expect);
    msa_store_shape s = ts_shape();
    CHECKF(h == ts_hash(NULL, &s, sd, n_expect, &rc), "%s: content differs", name);
}

static void test_codec(void) {
    uint8_t buf[1000];
    for (int i = 0; i < 1000; i++) buf[i] = (uint8_t)t_rand_u64();
    for (int off = 0; off < 9; off++) CHECK(msa_crc32c(0, buf + off, 900) == msa_crc32c_sw(0, buf + off, 900));
    /* lengths around the three-lane rounds of the hardware path (3 x 4 KiB),
     * continuing from a CRC, at every alignment */
    size_t big_n = 5 * 12288 + 100;
    uint8_t *big = malloc(big_n + 8);
    for (size_t i = 0; i < big_n + 8; i++) big[i] = (uint8_t)t_rand_u64();
    size_t lens[] = {12287, 12288, 12289, 24576 + 7, 3 * 12288 + 4095, (size_t)t_randint(5 * 12288)};
    for (int off = 0; off < 8; off++)
        for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
            uint32_t start = (uint32_t)t_rand_u64();
            CHECKF(msa_crc32c(start, big + off, lens[li]) == msa_crc32c_sw(start, big + off, lens[li]),
                   "crc32c of %zu bytes at offset %d", lens[li], off);
        }
    free(big);
    CHECK(msa_crc32c_sw(0, "123456789", 9) == 0xE3069283u);
    msa_dtype dts[3] = {MSA_DTYPE_BF16, MSA_DTYPE_F16, MSA_DTYPE_F32};
    for (int di = 0; di < 3; di++)
        for (int lossy = 0; lossy < 2; lossy++) {
            msa_codec_shape cs = {2, 24, 2, 8, 16, dts[di], dts[di]};
            size_t es = msa_dtype_size(dts[di]), kn = 2 * 16 * 24, in = 2 * 16 * 8;
            uint8_t *k = malloc(kn * es), *v = malloc(kn * es), *ix = malloc(in * es);
            uint8_t *k2 = malloc(kn * es), *v2 = malloc(kn * es), *i2 = malloc(in * es);
            int fill = 1 + t_randint(16);
            memset(k, 0, kn * es); memset(v, 0, kn * es); memset(ix, 0, in * es);
            for (int h = 0; h < 2; h++)
                for (int t = 0; t < fill; t++) {
                    for (int c = 0; c < 24; c++) {
                        size_t o = ((size_t)h * 16 + t) * 24 + c;
                        float a = t_randn() * (c == 3 ? 30.f : 1.f), b = t_randn();
                        if (es == 4) { memcpy(k + 4 * o, &a, 4); memcpy(v + 4 * o, &b, 4); }
                        else {
                            uint16_t ha = dts[di] == MSA_DTYPE_BF16 ? msa_f32_to_bf16(a) : msa_f32_to_f16(a);
                            uint16_t hb = dts[di] == MSA_DTYPE_BF16 ? msa_f32_to_bf16(b) : msa_f32_to_f16(b);
                            memcpy(k + 2 * o, &ha, 2); memcpy(v + 2 * o, &hb, 2);
                        }
                    }
                    for (int c = 0; c < 8; c++) {
                        size_t o = ((size_t)h * 16 + t) * 8 + c;
                        for (size_t j = 0; j < es; j++) ix[o * es + j] = (uint8_t)t_rand_u64();
                    }
                }
            void *val;
            size_t len;
            msa_codec_err err = {0};
            CHECK_OK(msa_block_encode(&cs, fill, k, v, ix, 3, lossy, &val, &len, &err));
            int n = 0;
            CHECK_OK(msa_block_decode(&cs, val, len, k2, v2, i2, &n, 1));
            CHECK(n == fill);
            CHECK(!memcmp(ix, i2, in * es)); /* index keys always exact */
            if (!lossy) {
                CHECKF(!memcmp(k, k2, kn * es) && !memcmp(v, v2, kn * es), "dtype %d lossless mismatch", di);
            } else {
                double rel = err.sum_sq > 0 ? sqrt(err.sum_sq_err / err.sum_sq) : 0;
                CHECKF(rel > 0 && rel < 0.05, "fp8 relative RMS error %g", rel);
            }
            /* every single-byte flip is caught */
            uint8_t *bad = malloc(len);
            for (int trial = 0; trial < 20; trial++) {
                memcpy(bad, val, len);
                size_t at = (size_t)t_randint((int)len);
                bad[at] ^= (uint8_t)(1 + t_randint(255));
                CHECKF(msa_block_decode(&cs, bad, len, k2, v2, i2, &n, 1) == MSA_ECORRUPT, "flip at %zu of %zu", at, len);
            }
            free(bad); free(val);
            free(k); free(v); free(ix); free(k2); free(v2); free(i2);
        }
}

/* The per-plane choice at full block size: random planes are stored as is
 * (flag bit 31), exponent planes compressed, every level exact. */
static void test_codec_planes(void) {
    msa_codec_shape cs = {8, 128, 1, 128, 128, MSA_DTYPE_BF16, MSA_DTYPE_BF16};
    size_t kn = 8 * 128 * 128, in = 128 * 128;
    uint16_t *k = malloc(kn * 2), *v = malloc(kn * 2), *ix = malloc(in * 2);
    uint16_t *k2 = malloc(kn * 2), *v2 = malloc(kn * 2), *i2 = malloc(in * 2);
    for (size_t i = 0; i < kn; i++) {
        k[i] = (uint16_t)t_rand_u64();
        v[i] = msa_f32_to_bf16(t_randn());
    }
    for (size_t i = 0; i < in; i++) ix[i] = msa_f32_to_bf16(t_randn() * 3);
    int levels[4] = {1, 3, -1, 19};
    for (int li = 0; li < 4; li++) {
        int fill = li == 2 ? 77 : 128;
        void *val;
        size_t len;
        CHECK_OK(msa_block_encode(&cs, fill, k, v, ix, levels[li], 0, &val, &len, NULL));
        const uint8_t *b = val;
        CHECK(b[11] == 6);
        uint32_t flags[6];
        for (int i = 0; i < 6; i++) flags[i] = msa_get_le32(b + MSA_BLOCK_HDR + 8 * i) & 0x80000000u;
        CHECKF(flags[0] && flags[1], "level %d: random K planes were not stored as is", levels[li]);
        CHECKF(flags[2] && !flags[3], "level %d: V planes: mantissa %x, exponent %x", levels[li], flags[2], flags[3]);
        CHECKF(!flags[5], "level %d: index exponent plane stored as is", levels[li]);
        int n = 0;
        CHECK_OK(msa_block_decode(&cs, val, len, k2, v2, i2, &n, 1));
        CHECK(n == fill);
        int same = 1;
        for (int h = 0; h < 8 && same; h++)
            same = !memcmp(k + (size_t)h * 128 * 128, k2 + (size_t)h * 128 * 128, (size_t)fill * 128 * 2) &&
                   !memcmp(v + (size_t)h * 128 * 128, v2 + (size_t)h * 128 * 128, (size_t)fill * 128 * 2);
        CHECKF(same && !memcmp(ix, i2, (size_t)fill * 128 * 2), "level %d: round trip differs", levels[li]);
        free(val);
    }
    free(k); free(v); free(ix); free(k2); free(v2); free(i2);
}

/* Serial and parallel compression store the same bytes. */
static void test_threads(const char *dir) {
    msa_store *st = ts_open(dir);
    msa_store_shape s = ts_shape();
    uint64_t stored[2] = {0, 0};
    int threads[2] = {1, 3};
    for (int i = 0; i < 2; i++) {
        char name[16];
        snprintf(name, sizeof name, "thr%d", threads[i]);
        msa_store_set_threads(st, threads[i]);
        CHECK_OK(msa_store_session_create(st, name, "fp", &s));
        msa_store_session *ss;
        CHECK_OK(msa_store_session_open(st, name, NULL, &ss));
        uint64_t n = 0;
        for (int c = 0; c < 4; c++, n += 37) CHECK_OK(ts_append(ss, &s, seed, n, 37));
        msa_store_session_info info;
        CHECK_OK(msa_store_session_stat(ss, &info));
        stored[i] = info.stored_bytes;
        msa_store_session_close(ss);
        int rc;
        uint64_t got = 0, h = ts_store_hash(st, name, seed, &got, &rc);
        CHECK_OK(rc);
        CHECKF(got == n && h == ts_hash(NULL, &s, seed, n, &rc), "%d threads: content differs", threads[i]);
        CHECK_OK(msa_store_remove(st, name));
    }
    CHECKF(stored[0] == stored[1], "stored bytes %llu (1 thread) vs %llu (3 threads)",
           (unsigned long long)stored[0], (unsigned long long)stored[1]);
    msa_store_set_threads(st, 0);
    msa_store_close(st);
}

/* Encoded values live in memory the store hands from one transaction to
 * the next: two transactions open at once on one handle (two sessions),
 * an abort in between, commits in both orders, and every session holds
 * exactly its own content. */
static void test_txn_memory(const char *dir) {
    msa_store *st = ts_open(dir);
    msa_store_shape s = ts_shape();
    for (int threads = 1; threads <= 3; threads += 2) {
        msa_store_set_threads(st, threads);
        const char *names[2] = {"mem-a", "mem-b"};
        uint64_t seeds[2] = {seed + 101, seed + 202}, n[2] = {0, 0};
        msa_store_session *ss[2];
        for (int i = 0; i < 2; i++) {
            CHECK_OK(msa_store_session_create(st, names[i], "fp", &s));
            CHECK_OK(msa_store_session_open(st, names[i], NULL, &ss[i]));
        }
        for (int round = 0; round < 6; round++) {
            msa_store_txn *x[2];
            uint64_t c[2] = {(uint64_t)(13 + 11 * round), (uint64_t)(40 - 5 * round)};
            for (int i = 0; i < 2; i++) CHECK_OK(msa_store_txn_begin(ss[i], &x[i]));
            for (int i = 0; i < 2; i++) CHECK_OK(ts_put(x[i], &s, seeds[i], n[i], c[i]));
            if (round == 2) { /* drop one: its memory goes back unused */
                msa_store_txn_abort(x[0]);
                c[0] = 0;
            }
            for (int j = 0; j < 2; j++) {
                int i = round % 2 ? 1 - j : j;
                if (c[i]) CHECK_OK(msa_store_txn_commit(x[i]));
                n[i] += c[i];
            }
        }
        for (int i = 0; i < 2; i++) {
            msa_store_session_close(ss[i]);
            check_session(st, names[i], seeds[i], n[i]);
            CHECK_OK(msa_store_remove(st, names[i]));
        }
    }
    msa_store_set_threads(st, 0);
    msa_store_close(st);
}

static void test_roundtrip(const char *dir, const char *self) {
    msa_store *st = ts_open(dir);
    CHECK(st != NULL);
    if (!st) return;
    msa_store_shape s = ts_shape();
    CHECK_OK(msa_store_session_create(st, "notes", "fp-A", &s));
    CHECK(msa_store_session_create(st, "notes", "fp-A", &s) == MSA_EEXIST);
    msa_store_session *ss;
    CHECK_OK(msa_store_session_open(st, "notes", "fp-A", &ss));
    uint64_t n = 0, steps[] = {5, 11, 1, 16, 40, 3, 1, 1, 70};
    for (int i = 0; i < 9; i++) {
        CHECK_OK(ts_append(ss, &s, seed, n, steps[i]));
        n += steps[i];
    }
    /* a decode-style append: one token per txn */
    for (int i = 0; i < 20; i++) CHECK_OK(ts_append(ss, &s, seed, n++, 1));
    int rc;
    CHECK(ts_hash(ss, &s, seed, n, &rc) == ts_hash(NULL, &s, seed, n, &rc));
    /* index keys of a range */
    uint64_t nb = msa_blocks_for(n, s.block_size);
    uint16_t *idx = malloc(nb * 16 * 8 * 2);
    CHECK_OK(msa_store_read_index(ss, 1, 0, nb, idx));
    ts_bufs b;
    ts_bufs_init(&b, &s);
    int ok = 1;
    for (uint64_t blk = 0; blk < nb; blk++) {
        int fill = (int)((n - blk * 16) < 16 ? n - blk * 16 : 16);
        ts_fill(&b, &s, seed, 1, blk, fill);
        ok &= !memcmp(idx + blk * 16 * 8, b.i, b.in * 2);
    }
    CHECK(ok);
    CHECK(msa_store_read_index(ss, 1, 1, nb, idx) == MSA_ERANGE);
    CHECK(msa_store_read_block(ss, 0, nb, b.k, b.v, b.i, NULL) == MSA_ENOTFOUND);
    ts_bufs_free(&b);
    free(idx);
    msa_store_session_info info;
    CHECK_OK(msa_store_session_stat(ss, &info));
    CHECK(info.n_tokens == n && info.n_blocks == nb && !strcmp(info.fingerprint, "fp-A"));
    msa_store_session_close(ss);
    msa_store_close(st);
    /* a fresh process reads the same content */
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' verify '%s' %llu %llu", self, dir, (unsigned long long)seed, (unsigned long long)n);
    CHECKF(system(cmd) == 0, "%s", cmd);
}

static int verify_main(const char *dir, uint64_t sd, uint64_t n) {
    msa_store *st = ts_open(dir);
    if (!st) return 1;
    check_session(st, "notes", sd, n);
    msa_store_close(st);
    return t_failures ? 1 : 0;
}

static void test_rules(const char *dir) {
    msa_store *st = ts_open(dir);
    msa_store_shape s = ts_shape();
    CHECK_OK(msa_store_session_create(st, "rules", "fp", &s));
    msa_store_session *ss;
    CHECK_OK(msa_store_session_open(st, "rules", NULL, &ss));
    CHECK_OK(ts_append(ss, &s, seed, 0, 20));
    ts_bufs b;
    ts_bufs_init(&b, &s);
    msa_store_txn *x;
    CHECK_OK(msa_store_txn_begin(ss, &x));
    CHECK(msa_store_txn_put_block(x, 0, 3, 4, b.k, b.v, b.i, "") == MSA_EINVAL); /* skips block 2 */
    CHECK(msa_store_txn_put_block(x, 0, 1, 2, b.k, b.v, b.i, "") == MSA_EINVAL); /* shrinks block 1 */
    CHECK(msa_store_txn_put_block(x, 0, 1, 8, b.k, b.v, NULL, "") == MSA_EINVAL); /* no index keys */
    msa_store_txn *x3 = NULL;
    CHECK(msa_store_txn_begin(ss, &x3) == MSA_EBUSY && x3 == NULL);
    int32_t t5[5] = {1, 2, 3, 4, 5};
    CHECK_OK(msa_store_txn_put_tokens(x, t5, 5));
    ts_fill(&b, &s, seed, 0, 1, 9);
    CHECK_OK(msa_store_txn_put_block(x, 0, 1, 9, b.k, b.v, b.i, "x"));
    CHECK(msa_store_txn_commit(x) == MSA_EINVAL); /* layers 1, 2 not covered */
    check_session(st, "rules", seed, 20);
    /* two handles: the second commit sees the first moved the session */
    msa_store_session *s2;
    CHECK_OK(msa_store_session_open(st, "rules", NULL, &s2));
    msa_store_txn *x2;
    CHECK_OK(msa_store_txn_begin(s2, &x2));
    CHECK_OK(ts_put(x2, &s, seed, 20, 4));
    CHECK_OK(ts_append(ss, &s, seed, 20, 4));
    CHECK(msa_store_txn_commit(x2) == MSA_EBUSY);
    check_session(st, "rules", seed, 24);
    ts_bufs_free(&b);
    msa_store_session_close(s2);
    msa_store_session_close(ss);
    msa_store_close(st);
}

static void test_format(const char *base) {
    char dir[4300], path[4400];
    /* wrong model */
    msa_store *st = ts_open(base);
    msa_store_session *ss = NULL;
    CHECK(msa_store_session_open(st, "notes", "fp-B", &ss) == MSA_EMODEL && ss == NULL);
    CHECK(strstr(msa_last_error(), "fp-A") && strstr(msa_last_error(), "fp-B"));
    CHECK(msa_store_session_open(st, "nope", NULL, &ss) == MSA_ENOTFOUND);
    msa_store_close(st);
    /* a folder of someone else's files */
    snprintf(dir, sizeof dir, "%s/other", base);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/notes.txt", dir);
    FILE *f = fopen(path, "w");
    fputs("mine\n", f);
    fclose(f);
    msa_store_params p = ts_params();
    p.dir = dir;
    CHECK(msa_store_open(&p, &st) == MSA_EFORMAT && st == NULL);
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    CHECK(access(path, F_OK) != 0);
    /* a foreign LMDB environment */
    snprintf(dir, sizeof dir, "%s/foreign", base);
    mkdir(dir, 0755);
    MDB_env *env;
    MDB_txn *t;
    MDB_dbi dbi;
    int rc;
    mdb_env_create(&env);
    mdb_env_open(env, dir, 0, 0644);
    mdb_txn_begin(env, NULL, 0, &t);
    mdb_dbi_open(t, NULL, 0, &dbi);
    MDB_val k = {3, "key"}, v = {5, "value"};
    mdb_put(t, dbi, &k, &v, 0);
    mdb_txn_commit(t);
    mdb_env_close(env);
    p.dir = dir;
    rc = msa_store_open(&p, &st);
    CHECKF(rc == MSA_EFORMAT, "foreign LMDB: %d %s", rc, msa_last_error());
    /* a newer format version */
    mdb_env_create(&env);
    mdb_env_set_maxdbs(env, 8);
    mdb_env_open(env, base, 0, 0644);
    mdb_txn_begin(env, NULL, 0, &t);
    mdb_dbi_open(t, "meta", 0, &dbi);
    uint8_t fmt[16];
    memcpy(fmt, "MSAMEMST", 8);
    msa_put_le32(fmt + 8, MSA_STORE_FORMAT_VERSION + 1);
    msa_put_le32(fmt + 12, msa_crc32c(0, fmt, 12));
    MDB_val fk = {6, "format"}, fv = {16, fmt};
    mdb_put(t, dbi, &fk, &fv, 0);
    mdb_txn_commit(t);
    p.dir = base;
    CHECK(msa_store_open(&p, &st) == MSA_EVERSION);
    CHECK(strstr(msa_last_error(), "version"));
    msa_put_le32(fmt + 8, MSA_STORE_FORMAT_VERSION);
    msa_put_le32(fmt + 12, msa_crc32c(0, fmt, 12));
    mdb_txn_begin(env, NULL, 0, &t);
    mdb_put(t, dbi, &fk, &fv, 0);
    mdb_txn_commit(t);
    mdb_env_close(env);
    CHECK_OK(msa_store_open(&p, &st));
    msa_store_close(st);
}

static void test_fork_export(const char *dir, uint64_t n_notes) {
    msa_store *st = ts_open(dir);
    msa_store_shape s = ts_shape();
    CHECK_OK(msa_store_fork(st, "notes", "notes2"));
    CHECK(msa_store_fork(st, "notes", "notes2") == MSA_EEXIST);
    msa_store_session *a, *b;
    CHECK_OK(msa_store_session_open(st, "notes", NULL, &a));
    CHECK_OK(msa_store_session_open(st, "notes2", NULL, &b));
    uint64_t seed2 = seed; /* same past, different futures: fork shares the parent's partial block */
    CHECK_OK(ts_append(a, &s, seed, n_notes, 7));
    CHECK_OK(ts_append(b, &s, seed2, n_notes, 30));
    msa_store_session_close(a);
    msa_store_session_close(b);
    check_session(st, "notes", seed, n_notes + 7);
    check_session(st, "notes2", seed2, n_notes + 30);
    uint64_t nf = 0;
    CHECK_OK(msa_store_fsck(st, fsck_print, NULL, &nf));
    /* export, tamper, truncate */
    char file[4300], bad[4300];
    snprintf(file, sizeof file, "%s.export", dir);
    snprintf(bad, sizeof bad, "%s.bad", dir);
    CHECK_OK(msa_store_export(st, "notes2", file));
    CHECK_OK(msa_store_remove(st, "notes2"));
    CHECK(msa_store_remove(st, "notes2") == MSA_ENOTFOUND);
    check_session(st, "notes", seed, n_notes + 7);
    CHECK_OK(msa_store_fsck(st, fsck_print, NULL, &nf));
    FILE *f = fopen(file, "rb");
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *data = malloc((size_t)len);
    CHECK(fread(data, 1, (size_t)len, f) == (size_t)len);
    fclose(f);
    for (int trial = 0; trial < 12; trial++) {
        long cut = trial < 6 ? 1 + t_randint((int)len - 1) : len;
        long flip = trial < 6 ? -1 : t_randint((int)len);
        f = fopen(bad, "wb");
        if (flip >= 0) data[flip] ^= 0x20;
        fwrite(data, 1, (size_t)cut, f);
        if (flip >= 0) data[flip] ^= 0x20;
        fclose(f);
        int rc = msa_store_import(st, bad, "imported");
        CHECKF(rc == MSA_EFORMAT || rc == MSA_EVERSION, "cut %ld flip %ld: %d %s", cut, flip, rc, msa_last_error());
        msa_store_session *x = NULL;
        CHECK(msa_store_session_open(st, "imported", NULL, &x) == MSA_ENOTFOUND);
        msa_store_session_close(x);
    }
    /* a record announcing far more than the file holds is refused before
     * anything is sized by it (its length field is bytes 20..23: the first
     * record's header follows the 16-byte file header) */
    if (len > 24) {
        static const uint8_t huge[4] = {0, 0, 0, 0x20}; /* 2^29, little-endian */
        uint8_t keep[4];
        memcpy(keep, data + 20, 4);
        memcpy(data + 20, huge, 4);
        f = fopen(bad, "wb");
        fwrite(data, 1, (size_t)len, f);
        fclose(f);
        memcpy(data + 20, keep, 4);
        CHECK(msa_store_import(st, bad, "imported") == MSA_EFORMAT);
        CHECKF(strstr(msa_last_error(), "more than the file holds") != NULL, "%s", msa_last_error());
    }
    CHECK_OK(msa_store_fsck(st, fsck_print, NULL, &nf));
    CHECK_OK(msa_store_import(st, file, NULL));
    CHECK(msa_store_import(st, file, NULL) == MSA_EEXIST);
    check_session(st, "notes2", seed2, n_notes + 30);
    CHECK_OK(msa_store_import(st, file, "copy"));
    check_session(st, "copy", seed2, n_notes + 30);
    CHECK_OK(msa_store_fsck(st, fsck_print, NULL, &nf));
    free(data);
    unlink(file);
    unlink(bad);
    msa_store_close(st);
}

static void test_corrupt(const char *dir) {
    /* flip one byte in the middle of one stored block, straight in LMDB */
    MDB_env *env;
    MDB_txn *t;
    MDB_dbi dbi;
    mdb_env_create(&env);
    mdb_env_set_maxdbs(env, 8);
    mdb_env_set_mapsize(env, 64u << 20);
    CHECK(mdb_env_open(env, dir, 0, 0644) == 0);
    mdb_txn_begin(env, NULL, 0, &t);
    mdb_dbi_open(t, "blocks", 0, &dbi);
    MDB_stat ms;
    mdb_stat(t, dbi, &ms);
    MDB_cursor *c;
    mdb_cursor_open(t, dbi, &c);
    MDB_val k, v;
    int pick = t_randint((int)ms.ms_entries), i = 0;
    int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    while (rc == 0 && i++ < pick) rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    uint8_t key[8];
    memcpy(key, k.mv_data, 8);
    uint8_t *copy = malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    size_t at = 24 + (size_t)t_randint((int)v.mv_size - 24);
    copy[at] ^= 0x10;
    MDB_val nk = {8, key}, nv = {v.mv_size, copy};
    mdb_cursor_close(c);
    mdb_put(t, dbi, &nk, &nv, 0);
    mdb_txn_commit(t);
    mdb_env_close(env);
    free(copy);
    msa_store *st = ts_open(dir);
    int found = 0, findings = 0;
    msa_store_session_info *list;
    size_t n;
    CHECK_OK(msa_store_list(st, &list, &n));
    msa_store_shape s = ts_shape();
    ts_bufs b;
    ts_bufs_init(&b, &s);
    for (size_t si = 0; si < n; si++) {
        msa_store_session *ss;
        CHECK_OK(msa_store_session_open(st, list[si].name, NULL, &ss));
        for (int l = 0; l < s.n_layers; l++)
            for (uint64_t blk = 0; blk < list[si].n_blocks; blk++) {
                int r = msa_store_read_block(ss, l, blk, b.k, b.v, b.i, NULL);
                if (r == MSA_ECORRUPT) {
                    found++;
                    char want[64];
                    snprintf(want, sizeof want, "layer %d, block %llu", l, (unsigned long long)blk);
                    CHECKF(strstr(msa_last_error(), want) && strstr(msa_last_error(), list[si].name), "message: %s",
                           msa_last_error());
                } else {
                    CHECK(r == MSA_OK);
                }
            }
        msa_store_session_close(ss);
    }
    CHECKF(found >= 1, "the flipped block was returned as data (byte %zu)", at);
    uint64_t nf = 0;
    CHECK(msa_store_fsck(st, fsck_quiet, &findings, &nf) == MSA_ECORRUPT);
    CHECK(nf >= 1 && findings == (int)nf);
    ts_bufs_free(&b);
    msa_store_list_free(list);
    msa_store_close(st);
}

/* The one segment file of dir (its path into out), or 0 when there is not
 * exactly one. */
static int only_segment(const char *dir, char *out, size_t n) {
    char sd[4300];
    snprintf(sd, sizeof sd, "%s/segments", dir);
    DIR *d = opendir(sd);
    int found = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        if (strstr(e->d_name, ".seg")) {
            snprintf(out, n, "%s/%s", sd, e->d_name);
            found++;
        }
    if (d) closedir(d);
    return found == 1;
}

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    rewind(f);
    uint8_t *b = malloc(*n ? *n : 1);
    if (b && fread(b, 1, *n, f) != *n) { free(b); b = NULL; }
    fclose(f);
    return b;
}

static void spit(const char *path, const uint8_t *b, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(b, 1, n, f) == n);
    if (f) fclose(f);
}

/* Reads every block of session `name`: the number that gave MSA_ECORRUPT
 * (each message naming the session, layer and block); any other failure
 * counts as a check failure. */
static int corrupt_blocks(msa_store *st, const char *name) {
    msa_store_shape s = ts_shape();
    ts_bufs b;
    ts_bufs_init(&b, &s);
    msa_store_session *ss;
    int bad = 0;
    CHECK_OK(msa_store_session_open(st, name, NULL, &ss));
    msa_store_session_info info;
    CHECK_OK(msa_store_session_stat(ss, &info));
    for (int l = 0; l < s.n_layers; l++)
        for (uint64_t blk = 0; blk < info.n_blocks; blk++) {
            int r = msa_store_read_block(ss, l, blk, b.k, b.v, b.i, NULL);
            char want[64];
            snprintf(want, sizeof want, "layer %d, block %llu", l, (unsigned long long)blk);
            if (r == MSA_ECORRUPT) {
                bad++;
                CHECKF(strstr(msa_last_error(), want) && strstr(msa_last_error(), name), "message: %s",
                       msa_last_error());
            } else {
                CHECKF(r == MSA_OK, "%s %s: %d %s", name, want, r, msa_last_error());
            }
        }
    msa_store_session_close(ss);
    ts_bufs_free(&b);
    return bad;
}

/* Full blocks in segment files (segment_min 1): a flipped byte, a cut and
 * a missing segment file are reported as MSA_ECORRUPT naming the block
 * (never returned as data, never a SIGBUS) by reads and fsck; export,
 * import and salvage copy what segments hold; compact deletes the
 * segments nothing names (a removed session's, a crashed writer's), keeps
 * the others, and moves the live blocks out of a mostly dead one. */
static void test_segments(const char *base) {
    char dir[4300], seg[4600], path[4700];
    snprintf(dir, sizeof dir, "%s/segments-test", base);
    msa_store_params p = ts_params();
    p.dir = dir;
    p.map_size = 4u << 20;
    p.segment_min = 1;
    msa_store *st;
    CHECK_OK(msa_store_open(&p, &st));
    msa_store_shape s = ts_shape();
    const uint64_t na = 100, nb = 37;
    msa_store_session *ss;
    CHECK_OK(msa_store_session_create(st, "a", "fp", &s));
    CHECK_OK(msa_store_session_create(st, "b", "fp", &s));
    CHECK_OK(msa_store_session_open(st, "a", NULL, &ss));
    CHECK_OK(ts_append(ss, &s, seed, 0, 60));
    CHECK_OK(ts_append(ss, &s, seed, 60, na - 60));
    msa_store_session_close(ss);
    CHECK_OK(msa_store_session_open(st, "b", NULL, &ss));
    CHECK_OK(ts_append(ss, &s, seed ^ 1, 0, nb));
    msa_store_session_close(ss);
    msa_store_close(st);
    /* one writer per store handle: both sessions' blocks are in one file */
    CHECK(only_segment(dir, seg, sizeof seg));
    CHECK_OK(msa_store_open(&p, &st));
    check_session(st, "a", seed, na);
    check_session(st, "b", seed ^ 1, nb);
    uint64_t nf = 0;
    CHECK_OK(msa_store_fsck(st, fsck_print, NULL, &nf));
    msa_store_close(st);

    size_t len = 0;
    uint8_t *orig = slurp(seg, &len);
    CHECK(orig && len > 8192);
    if (!orig || len <= 8192) return;
    /* a flipped byte in the blocks */
    uint8_t *bad = malloc(len);
    memcpy(bad, orig, len);
    /* inside the first block (it starts after the 4096-byte header; its
     * K plane alone is 1 KiB): a write pads to 4096 bytes at each commit,
     * and padding is named by nothing */
    size_t at = 4096 + 24 + (size_t)t_randint(1000);
    bad[at] ^= 0x04;
    spit(seg, bad, len);
    CHECK_OK(msa_store_open(&p, &st));
    int found = corrupt_blocks(st, "a") + corrupt_blocks(st, "b");
    CHECKF(found == 1, "a flipped byte at %zu of %zu: %d damaged blocks", at, len, found);
    CHECK(msa_store_fsck(st, fsck_quiet, &(int){0}, &nf) == MSA_ECORRUPT && nf == 1);
    msa_store_close(st);
    /* cut short: the blocks past the cut are damaged, those before intact */
    CHECK(truncate(seg, (off_t)(len / 2)) == 0);
    CHECK_OK(msa_store_open(&p, &st));
    found = corrupt_blocks(st, "a") + corrupt_blocks(st, "b");
    CHECKF(found >= 1, "a segment cut to %zu bytes: no damaged block", len / 2);
    CHECK(msa_store_fsck(st, fsck_quiet, &(int){0}, &nf) == MSA_ECORRUPT);
    msa_store_close(st);
    /* missing */
    CHECK(unlink(seg) == 0);
    CHECK_OK(msa_store_open(&p, &st));
    found = corrupt_blocks(st, "a");
    CHECKF(found == (int)(s.n_layers * (na / s.block_size)), "a missing segment: %d damaged blocks", found);
    msa_store_close(st);
    spit(seg, orig, len);
    free(bad);

    /* export from segments, import into a store that keeps every block in LMDB */
    char exp[4700], dir2[4400];
    snprintf(exp, sizeof exp, "%s/a.msax", base);
    snprintf(dir2, sizeof dir2, "%s/segments-import", base);
    CHECK_OK(msa_store_open(&p, &st));
    CHECK_OK(msa_store_export(st, "a", exp));
    msa_store_params p2 = p;
    p2.dir = dir2;
    p2.segment_min = SIZE_MAX;
    msa_store *st2;
    CHECK_OK(msa_store_open(&p2, &st2));
    CHECK_OK(msa_store_import(st2, exp, NULL));
    check_session(st2, "a", seed, na);
    msa_store_close(st2);
    msa_store_close(st);
    /* salvage reads blocks through their pointers */
    char dir3[4400];
    snprintf(dir3, sizeof dir3, "%s/segments-salvaged", base);
    msa_store_salvage_stats ss_stats;
    CHECK_OK(msa_store_salvage(dir, dir3, NULL, NULL, &ss_stats));
    CHECK(ss_stats.damaged == 0);
    CHECK_OK(msa_store_open(&p, &st));
    msa_store_close(st);
    p2.dir = dir3;
    CHECK_OK(msa_store_open(&p2, &st2));
    check_session(st2, "a", seed, na);
    check_session(st2, "b", seed ^ 1, nb);
    msa_store_close(st2);

    /* a child forked while the handle holds a segment writer (LMDB forbids
     * using the handle there, but a child may close it, as a Python child
     * collecting its objects does): the parent's segment is not cut, and
     * the parent goes on appending to it */
    CHECK_OK(msa_store_open(&p, &st));
    CHECK_OK(msa_store_session_create(st, "e", "fp", &s));
    CHECK_OK(msa_store_session_open(st, "e", NULL, &ss));
    CHECK_OK(ts_append(ss, &s, seed ^ 4, 0, 40));
    msa_store_session_close(ss);
    pid_t pid = fork();
    if (pid == 0) {
        msa_segw_close(st->spare_w);
        _exit(0);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK_OK(msa_store_session_open(st, "e", NULL, &ss));
    CHECK_OK(ts_append(ss, &s, seed ^ 4, 40, 40));
    msa_store_session_close(ss);
    check_session(st, "e", seed ^ 4, 80);
    msa_store_close(st);
    CHECK_OK(msa_store_open(&p, &st));
    check_session(st, "e", seed ^ 4, 80);
    CHECK_OK(msa_store_fsck(st, fsck_print, NULL, &nf));
    CHECK_OK(msa_store_remove(st, "e"));
    msa_store_close(st);

    /* a handle without durable commits: msa_store_sync syncs its segments */
    msa_store_params pn = p;
    pn.durable = 0;
    CHECK_OK(msa_store_open(&pn, &st));
    CHECK_OK(msa_store_session_create(st, "d", "fp", &s));
    CHECK_OK(msa_store_session_open(st, "d", NULL, &ss));
    CHECK_OK(ts_append(ss, &s, seed ^ 3, 0, 40));
    msa_store_session_close(ss);
    CHECK_OK(msa_store_sync(st));
    msa_store_close(st);
    CHECK_OK(msa_store_open(&p, &st));
    check_session(st, "d", seed ^ 3, 40);
    CHECK_OK(msa_store_remove(st, "d"));
    msa_store_close(st);

    /* compact: "c" is written by another handle (a second segment), then
     * removed; a crashed writer's file has a header and no commit */
    CHECK_OK(msa_store_open(&p, &st));
    CHECK_OK(msa_store_session_create(st, "c", "fp", &s));
    CHECK_OK(msa_store_session_open(st, "c", NULL, &ss));
    CHECK_OK(ts_append(ss, &s, seed ^ 2, 0, 50));
    msa_store_session_close(ss);
    msa_store_close(st);
    snprintf(path, sizeof path, "%s/segments/00000000000000ff.seg", dir);
    spit(path, orig, 4096); /* another id's header: named by nothing either way */
    CHECK_OK(msa_store_open(&p, &st));
    CHECK_OK(msa_store_remove(st, "c"));
    int64_t saved = 0;
    CHECK_OK(msa_store_compact(st, &saved));
    CHECKF(saved > 0, "compact saved %lld bytes", (long long)saved);
    CHECK(access(path, F_OK) != 0);
    CHECK(only_segment(dir, path, sizeof path) && !strcmp(path, seg));
    check_session(st, "a", seed, na);
    check_session(st, "b", seed ^ 1, nb);
    CHECK_OK(msa_store_fsck(st, fsck_print, NULL, &nf));
    /* "a" held most of the shared segment: compact copies b's blocks to a
     * new one and deletes the old */
    msa_store_usage u0, u1, u2;
    CHECK_OK(msa_store_usage_get(st, NULL, &u0));
    CHECK_OK(msa_store_remove(st, "a"));
    CHECK_OK(msa_store_usage_get(st, NULL, &u1));
    /* a's blocks are unused now, and counted so; compact gives them back */
    CHECKF(u1.segment_file_bytes == u0.segment_file_bytes &&
           u1.segment_unused_bytes > u0.segment_unused_bytes + 4096,
           "segment bytes %llu/%llu unused before, %llu/%llu after removing a",
           (unsigned long long)u0.segment_unused_bytes, (unsigned long long)u0.segment_file_bytes,
           (unsigned long long)u1.segment_unused_bytes, (unsigned long long)u1.segment_file_bytes);
    CHECK_OK(msa_store_compact(st, &saved));
    CHECKF(saved > 0, "compact saved %lld bytes", (long long)saved);
    CHECK(only_segment(dir, path, sizeof path) && strcmp(path, seg));
    CHECK_OK(msa_store_usage_get(st, NULL, &u2));
    CHECKF(u2.segment_file_bytes < u1.segment_file_bytes && u2.segment_unused_bytes < 3 * 4096,
           "after compact: %llu of %llu segment bytes unused", (unsigned long long)u2.segment_unused_bytes,
           (unsigned long long)u2.segment_file_bytes);
    check_session(st, "b", seed ^ 1, nb);
    CHECK_OK(msa_store_fsck(st, fsck_print, NULL, &nf));
    msa_store_close(st);
    CHECK_OK(msa_store_open(&p, &st));
    check_session(st, "b", seed ^ 1, nb);
    msa_store_close(st);
    free(orig);
}

/* Runs op under an injected `err` at every fault point; after each, the
 * store must reopen and hold `before` or, when op succeeded, `after`. */
typedef int (*fault_op)(msa_store *st, uint64_t n);

static int op_append(msa_store *st, uint64_t n) {
    msa_store_session *ss;
    int rc = msa_store_session_open(st, "f", NULL, &ss);
    if (rc) return rc;
    msa_store_shape s = ts_shape();
    rc = ts_append(ss, &s, seed, n, 21);
    msa_store_session_close(ss);
    return rc;
}

static void test_faults(const char *dir, int threads) {
    msa_store *st = ts_open(dir);
    msa_store_set_threads(st, threads);
    msa_store_shape s = ts_shape();
    CHECK_OK(msa_store_session_create(st, "f", "fp", &s));
    CHECK_OK(op_append(st, 0));
    uint64_t n = 21;
    msa_fault_arm(0, 0);
    CHECK_OK(op_append(st, n));
    n += 21;
    long points = msa_fault_points();
    CHECK(points > 10);
    int errs[3] = {ENOSPC, EIO, ENOMEM}, failures = 0;
    for (int e = 0; e < 3; e++)
        for (long p = 1; p <= points + 1; p++) {
            msa_fault_arm(errs[e], p);
            int rc = op_append(st, n);
            msa_fault_arm(0, 0);
            if (rc == 0) n += 21;
            else {
                failures++;
                int want = errs[e] == ENOSPC ? MSA_ENOSPC : errs[e] == EIO ? MSA_EIO : MSA_ENOMEM;
                CHECKF(rc == want, "fault %d at point %ld: %d (%s)", errs[e], p, rc, msa_last_error());
            }
            if (p % 7 == 0 || p == points) { /* reopen: exactly the committed data */
                msa_store_close(st);
                st = ts_open(dir);
                msa_store_set_threads(st, threads);
            }
            check_session(st, "f", seed, n);
        }
    printf("faults (%d compression threads): %ld fault points per append, %d injected failures\n",
           threads, points, failures);
    CHECKF(failures >= (int)points, "only %d injected failures", failures);
    /* fork and remove under faults */
    for (long p = 1; p < 40; p++) {
        msa_fault_arm(EIO, p);
        int rc = msa_store_fork(st, "f", "g");
        msa_fault_arm(0, 0);
        msa_store_session *g = NULL;
        int orc = msa_store_session_open(st, "g", NULL, &g);
        msa_store_session_close(g);
        CHECK(rc == 0 ? orc == 0 : orc == MSA_ENOTFOUND);
        if (rc == 0) {
            msa_fault_arm(EIO, p);
            rc = msa_store_remove(st, "g");
            msa_fault_arm(0, 0);
            if (rc) check_session(st, "g", seed, n);
            CHECK_OK(rc ? msa_store_remove(st, "g") : 0);
        }
    }
    uint64_t nf = 0;
    CHECK_OK(msa_store_fsck(st, fsck_print, NULL, &nf));
    msa_store_close(st);
    /* a real limit: the map may not grow past 4 MiB (blocks in LMDB: the
     * limit is LMDB's; a full disk under segment files is the ENOSPC
     * injected above) */
    msa_store_params p = ts_params();
    p.segment_min = SIZE_MAX;
    p.dir = dir;
    p.map_size = 2u << 20;
    p.map_max = 4u << 20;
    CHECK_OK(msa_store_open(&p, &st));
    msa_store_session *ss;
    CHECK_OK(msa_store_session_open(st, "f", NULL, &ss));
    int rc = 0;
    for (int i = 0; i < 400 && !rc; i++) {
        rc = ts_append(ss, &s, seed, n, 100);
        if (!rc) n += 100;
    }
    CHECKF(rc == MSA_ENOSPC, "map limit: %d %s", rc, msa_last_error());
    msa_store_session_close(ss);
    check_session(st, "f", seed, n);
    CHECK_OK(msa_store_fsck(st, fsck_print, NULL, &nf));
    /* at its limit the store cannot even remove (LMDB copies pages on
     * write): reopen it with room, remove, then compact */
    msa_store_close(st);
    p.map_max = 0;
    CHECK_OK(msa_store_open(&p, &st));
    CHECK_OK(msa_store_remove(st, "f"));
    int64_t saved = 0;
    CHECK_OK(msa_store_compact(st, &saved));
    CHECKF(saved > 0, "compact saved %lld bytes", (long long)saved);
    CHECK_OK(msa_store_fsck(st, fsck_print, NULL, &nf));
    msa_store_close(st);
}

int main(int argc, char **argv) {
    if (argc == 5 && !strcmp(argv[1], "verify")) {
        int rc = verify_main(argv[2], strtoull(argv[3], NULL, 0), strtoull(argv[4], NULL, 0));
        return rc;
    }
    seed = t_seed();
    char dir[4200];
    ts_tmpdir(dir, sizeof dir, "store");
    char self[4096];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    self[sl > 0 ? sl : 0] = 0;
    test_codec();
    test_codec_planes();
    test_roundtrip(dir, self);
    test_threads(dir);
    test_txn_memory(dir);
    test_rules(dir);
    test_format(dir);
    test_fork_export(dir, 5 + 11 + 1 + 16 + 40 + 3 + 1 + 1 + 70 + 20);
    test_corrupt(dir);
    test_segments(dir);
    char fdir[4300];
    snprintf(fdir, sizeof fdir, "%s/faults", dir);
    test_faults(fdir, 1);
    snprintf(fdir, sizeof fdir, "%s/faults-mt", dir);
    test_faults(fdir, 3);
    if (!t_failures) ts_rmrf(dir);
    else fprintf(stderr, "store left in %s\n", dir);
    return t_done("test-store");
}
