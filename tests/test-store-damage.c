/*
 * test-store-damage.c: damaged stores through the library, in one process
 * (the library must return a status, never abort its host): a store of
 * four sessions of seeded content (tests/test-store-util.h: every value is
 * a function of the seed, so a session of n tokens has exactly one correct
 * content), copied and damaged in located places:
 *
 *   - the header of the root (branch) page of 'blockmap', of 'blocks', and
 *     of the main table: msa_store_open gives MSA_ECORRUPT saying to
 *     salvage; msa_store_salvage copies every session, each equal to its
 *     original bit for bit (hash of tokens, K, V, index keys, tags), and
 *     the copy passes fsck;
 *   - one byte of one block value: the store opens; session_check (full),
 *     fsck and export report it (export leaves no file); salvage copies the
 *     session up to that block, equal to the original's prefix, and the
 *     others whole;
 *   - one overflow page header: remove and compact refuse (LMDB would free
 *     or copy the wrong pages), fsck names it, salvage copies all.
 *
 * Where to damage is found with the store's own LMDB reader (lmdbraw.c).
 * Seeded (MSA_TEST_SEED to replay); about 1 s.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "test-store-util.h"

enum { NSESS = 4 };
static const char *names[NSESS] = {"s0", "s1", "s2", "fork-of-s1"};
static uint64_t seeds[NSESS], ntok[NSESS];

/* s2 has wider heads: its block values (about 8 KiB) are LMDB overflow
 * values; the others' (under 2 KiB) sit inside leaf pages */
static msa_store_shape shape_of(int i) {
    msa_store_shape s = ts_shape();
    if (i == 2) s.head_dim = 64;
    return s;
}

static void copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    char buf[65536];
    size_t n;
    while (a && b && (n = fread(buf, 1, sizeof buf, a)) > 0) fwrite(buf, 1, n, b);
    if (a) fclose(a);
    if (b) fclose(b);
}

/* A fresh copy of the store in a new folder; returns its data.mdb path. */
static void fresh_copy(const char *src, char *dir, size_t n, char *file, size_t fn) {
    t_tmpdir(dir, n, "damage");
    char a[4200];
    snprintf(a, sizeof a, "%s/data.mdb", src);
    snprintf(file, fn, "%s/data.mdb", dir);
    copy_file(a, file);
}

static void flip(const char *file, uint64_t off, uint8_t mask) {
    int fd = open(file, O_RDWR);
    uint8_t b = 0;
    if (fd < 0 || pread(fd, &b, 1, (off_t)off) != 1) { CHECK(0); if (fd >= 0) close(fd); return; }
    b ^= mask;
    CHECK(pwrite(fd, &b, 1, (off_t)off) == 1);
    close(fd);
}

/* Expected hash of session i cut to n tokens (n: its own length). */
static uint64_t want_hash(int i, uint64_t n) {
    msa_store_shape s = shape_of(i);
    int rc;
    uint64_t seed = seeds[i == 3 ? 1 : i];
    return ts_hash(NULL, &s, seed, n, &rc);
}

static void lines(void *ctx, const char *line) {
    (void)ctx;
    printf("  %s\n", line);
}

/* Salvages src into a new folder and checks each session: whole, or cut to
 * cut[i] tokens (when not UINT64_MAX). */
static void salvage_and_check(const char *src, const uint64_t *cut) {
    char dst[4096];
    t_tmpdir(dst, sizeof dst, "rescued");
    char into[4300];
    snprintf(into, sizeof into, "%s/new", dst);
    msa_store_salvage_stats ss;
    CHECK_OK(msa_store_salvage(src, into, lines, NULL, &ss));
    CHECK(ss.damaged >= 1);
    msa_store *st = ts_open(into);
    CHECK(st != NULL);
    if (!st) {
        ts_rmrf(dst);
        return;
    }
    uint64_t nf = 0;
    CHECKF(msa_store_fsck(st, lines, NULL, &nf) == MSA_OK, "%s", msa_last_error());
    for (int i = 0; i < NSESS; i++) {
        uint64_t n = 0, expect_n = cut && cut[i] != UINT64_MAX ? cut[i] : ntok[i];
        int rc;
        uint64_t h = ts_store_hash(st, names[i], seeds[i == 3 ? 1 : i], &n, &rc);
        CHECKF(rc == MSA_OK && n == expect_n && h == want_hash(i, expect_n),
               "session %s: rc %d, %llu tokens (%llu expected), content %s", names[i], rc,
               (unsigned long long)n, (unsigned long long)expect_n, h == want_hash(i, expect_n) ? "same" : "differs");
    }
    msa_store_close(st);
    ts_rmrf(dst); /* more folders than t_tmpdir keeps track of */
}

/* The file offset of the root page of a table, and its depth. */
static int table_root(const char *file, const char *table, uint64_t *off, int *depth) {
    msa_raw *r;
    if (msa_raw_open(file, 0, &r)) return -1;
    msa_raw_db db;
    int rc = strcmp(table, "main") ? msa_raw_find_db(r, table, &db) : MSA_OK;
    if (!strcmp(table, "main")) db = *msa_raw_main(r);
    if (!rc) {
        *off = db.root * msa_raw_page_size(r);
        *depth = db.depth;
    }
    msa_raw_close(r);
    return rc;
}

/* The file offset and length of the stored value of session i's block. */
static int block_at(const char *file, int i, int layer, uint64_t block, uint64_t *off, size_t *len) {
    msa_raw *r;
    if (msa_raw_open(file, 0, &r)) return -1;
    msa_raw_db sdb, mdb, bdb;
    const uint8_t *v;
    size_t vl;
    int rc = msa_raw_find_db(r, "sessions", &sdb) || msa_raw_find_db(r, "blockmap", &mdb) ||
             msa_raw_find_db(r, "blocks", &bdb) ||
             msa_raw_get(r, &sdb, names[i], strlen(names[i]), &v, &vl);
    if (!rc) {
        MDB_val mv = {vl, (void *)v};
        msa_srec rec;
        msa_bent e;
        uint8_t kb[20], ib[8];
        rc = msa_srec_decode(&mv, &rec);
        if (!rc) {
            msa_key_block(kb, rec.sid, (uint32_t)layer, block);
            rc = msa_raw_get(r, &mdb, kb, 20, &v, &vl);
        }
        if (!rc) {
            mv.mv_size = vl;
            mv.mv_data = (void *)v;
            rc = msa_bent_decode(&mv, &e);
        }
        if (!rc) {
            msa_put_be64(ib, e.id);
            rc = msa_raw_get(r, &bdb, ib, 8, &v, &vl);
        }
        if (!rc) {
            *off = (uint64_t)(v - msa_raw_map(r));
            *len = vl;
        }
    }
    msa_raw_close(r);
    return rc;
}

int main(void) {
    uint64_t seed = t_seed();
    (void)ts_tmpdir; /* test-store-util.h's, for the other store tests */
    char base[4096];
    t_tmpdir(base, sizeof base, "damage-base");
    msa_store_shape sh = ts_shape();
    /* the store: three sessions of 400..900 tokens and a fork of s1 grown */
    msa_store *st = ts_open(base);
    CHECK(st != NULL);
    if (!st) return t_done("test-store-damage");
    for (int i = 0; i < 3; i++) {
        seeds[i] = seed + 101 * (uint64_t)(i + 1);
        ntok[i] = 400 + (uint64_t)t_randint(500);
        sh = shape_of(i);
        CHECK_OK(msa_store_session_create(st, names[i], "fp", &sh));
        msa_store_session *ss;
        CHECK_OK(msa_store_session_open(st, names[i], NULL, &ss));
        for (uint64_t n = 0; n < ntok[i];) {
            uint64_t c = 1 + (uint64_t)t_randint(200);
            if (c > ntok[i] - n) c = ntok[i] - n;
            CHECK_OK(ts_append(ss, &sh, seeds[i], n, c));
            n += c;
        }
        msa_store_session_close(ss);
    }
    CHECK_OK(msa_store_fork(st, "s1", "fork-of-s1"));
    {
        msa_store_session *ss;
        CHECK_OK(msa_store_session_open(st, "fork-of-s1", NULL, &ss));
        sh = shape_of(1);
        CHECK_OK(ts_append(ss, &sh, seeds[1], ntok[1], 37));
        ntok[3] = ntok[1] + 37;
        msa_store_session_close(ss);
    }
    msa_store_close(st);
    printf("sessions of %llu, %llu, %llu and %llu tokens\n", (unsigned long long)ntok[0],
           (unsigned long long)ntok[1], (unsigned long long)ntok[2], (unsigned long long)ntok[3]);

    /* 1. the root page's header of a table */
    const char *tables[] = {"blockmap", "blocks", "main"};
    for (int t = 0; t < 3; t++) {
        char dir[4096], file[4300];
        fresh_copy(base, dir, sizeof dir, file, sizeof file);
        uint64_t off = 0;
        int depth = 0;
        CHECK_OK(table_root(file, tables[t], &off, &depth));
        if (strcmp(tables[t], "main")) CHECKF(depth >= 2, "table %s has depth %d", tables[t], depth);
        flip(file, off + t_randint(4), (uint8_t)(1u << t_randint(8))); /* its page number */
        msa_store_params p = ts_params();
        p.dir = dir;
        msa_store *d = NULL;
        int rc = msa_store_open(&p, &d);
        CHECKF(rc == MSA_ECORRUPT && strstr(msa_last_error(), "salvage") && !d, "%s: open gave %d: %s", tables[t],
               rc, msa_last_error());
        msa_store_close(d);
        printf("%s root page damaged:\n", tables[t]);
        salvage_and_check(dir, NULL);
        ts_rmrf(dir);
    }

    /* 2. one byte of one block */
    {
        char dir[4096], file[4300];
        fresh_copy(base, dir, sizeof dir, file, sizeof file);
        uint64_t blk = 2 + (uint64_t)t_randint((int)(ntok[0] / 16) - 3), off = 0;
        size_t len = 0;
        CHECK_OK(block_at(file, 0, 1, blk, &off, &len));
        flip(file, off + MSA_BLOCK_HDR + 8 * 15 + (uint64_t)t_randint((int)(len - MSA_BLOCK_HDR - 8 * 15)), 0x10);
        msa_store *d = ts_open(dir);
        CHECK(d != NULL);
        if (d) {
            msa_store_session *ss;
            uint64_t nd = 0;
            CHECK_OK(msa_store_session_open(d, "s0", NULL, &ss));
            CHECK(msa_store_session_check(ss, 1, lines, NULL, &nd) == MSA_ECORRUPT && nd == 1);
            msa_store_session_close(ss);
            CHECK_OK(msa_store_session_open(d, "s1", NULL, &ss));
            CHECK_OK(msa_store_session_check(ss, 1, NULL, NULL, &nd));
            msa_store_session_close(ss);
            CHECK(msa_store_fsck(d, lines, NULL, &nd) == MSA_ECORRUPT && nd == 1);
            char out[4400];
            snprintf(out, sizeof out, "%s/s0.msax", dir);
            int rc = msa_store_export(d, "s0", out);
            char want[64];
            snprintf(want, sizeof want, "layer 1, block %llu", (unsigned long long)blk);
            CHECKF(rc == MSA_ECORRUPT && strstr(msa_last_error(), want) && access(out, F_OK) != 0,
                   "export gave %d: %s", rc, msa_last_error());
            snprintf(out, sizeof out, "%s/s1.msax", dir);
            CHECK_OK(msa_store_export(d, "s1", out));
            msa_store_close(d);
        }
        printf("block (s0, 1, %llu) damaged:\n", (unsigned long long)blk);
        uint64_t cut[NSESS] = {blk * 16, UINT64_MAX, UINT64_MAX, UINT64_MAX};
        salvage_and_check(dir, cut);
        ts_rmrf(dir);
    }

    /* 3. one overflow page header (pages 2 -> 0, say) */
    {
        char dir[4096], file[4300];
        fresh_copy(base, dir, sizeof dir, file, sizeof file);
        uint64_t off = 0;
        size_t len = 0;
        CHECK_OK(block_at(file, 2, 0, 1, &off, &len));
        CHECKF(off % 4096 == 16, "block value at %llu of %zu bytes is not an overflow value",
               (unsigned long long)off, len);
        flip(file, off - 16 + 12, 0x02); /* mp_pages */
        msa_store *d = ts_open(dir);
        CHECK(d != NULL);
        if (d) {
            int rc = msa_store_remove(d, "s2");
            CHECKF(rc == MSA_ECORRUPT && strstr(msa_last_error(), "overflow"), "remove gave %d: %s", rc,
                   msa_last_error());
            CHECK(msa_store_compact(d, NULL) == MSA_ECORRUPT);
            uint64_t nd = 0;
            CHECK(msa_store_fsck(d, lines, NULL, &nd) == MSA_ECORRUPT && nd == 1);
            int hrc;
            uint64_t n = 0;
            CHECK(ts_store_hash(d, "s2", seeds[2], &n, &hrc) == want_hash(2, ntok[2]) && hrc == MSA_OK);
            msa_store_close(d);
        }
        printf("an overflow header of s2 damaged:\n");
        salvage_and_check(dir, NULL);
        ts_rmrf(dir);
    }
    return t_done("test-store-damage");
}
