/*
 * lmdbraw.c: LMDB's data file read without LMDB, for checking its trees
 * before LMDB walks them and for salvaging what a damaged file still holds.
 *
 * Why: LMDB trusts its pages. A flipped bit in a branch page makes it
 * assert (`mdb.c: Assertion 'IS_LEAF(mp)' failed`, an abort of the host
 * process) or read past a page (a segfault); mdb_env_copy2 walks every
 * page the same way. The store must report damage instead, so every tree
 * is checked here, page by page, before the store trusts it (at open, see
 * store.c; deeper in fsck), and salvage.c reads the intact entries of a
 * damaged file through this reader, never through LMDB.
 *
 * The format is LMDB 0.9's on-disk format (data version 1, the format of
 * every 0.9.x release), 64-bit build:
 *
 *   page      u64 pgno, u16 pad, u16 flags, u16 lower, u16 upper (or u32
 *             pages for an overflow page): 16 bytes, then u16 node offsets
 *             (lower - 16) / 2 of them
 *   node      u16 lo, u16 hi, u16 flags, u16 ksize, key, data. Leaf: data
 *             size lo | hi << 16 (8 bytes: the first page of an overflow
 *             run when flags has F_BIGDATA; a 48-byte MDB_db for a named
 *             table, F_SUBDATA). Branch: child page lo | hi << 16 | flags << 32
 *   meta      pages 0 and 1: page header, u32 magic 0xBEEFC0DE, u32 version 1,
 *             u64 address, u64 mapsize, MDB_db free, MDB_db main, u64
 *             last_pg, u64 txnid; the newer valid one is current. The page
 *             size is the free table's md_pad.
 *   MDB_db    u32 pad, u16 flags, u16 depth, u64 branch, leaf, overflow
 *             pages, u64 entries, u64 root (~0: empty)
 *
 * What a check verifies per tree: every page lies inside the file and at
 * or below last_pg, carries its own page number, is a branch above the
 * tree's depth and a leaf at it, has sane lower/upper bounds, nodes inside
 * the page, keys in strictly increasing order and inside the bounds its
 * parent gives them, overflow runs inside the file (deep: the overflow
 * page's own header too), no page used twice, and the page and entry
 * counts of the tree's MDB_db. That is every fact LMDB's reads rely on,
 * so a tree that passes can be walked by LMDB without an assertion or a
 * read outside the map. It is not a checksum: a flipped bit inside a key
 * that keeps the order, or inside a value, passes here and is left to the
 * store's own checksums (session records, block entries and values, token
 * chunks all carry CRC32C).
 *
 * The file is mapped read-only (MAP_PRIVATE) and nothing is written. The
 * caller makes sure no writer reuses the pages of the snapshot it checks
 * (a read transaction open for that snapshot, or the store held alone).
 */
#include "persist/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    PHDR = 16, NODESZ = 8,
    P_BRANCH = 0x01, P_LEAF = 0x02, P_OVERFLOW = 0x04, P_META = 0x08,
    F_BIGDATA = 0x01, F_SUBDATA = 0x02, F_DUPDATA = 0x04,
    DB_INTEGERKEY = 0x08, DB_DUPSORT = 0x04,
    MAX_DEPTH = 32
};
#define LMDB_MAGIC 0xBEEFC0DEu
#define P_INVALID (~(uint64_t)0)

struct msa_raw {
    int fd;
    const uint8_t *map;
    size_t size;            /* bytes mapped (the file's size at open) */
    uint32_t psize;
    uint64_t npages;        /* pages inside the file */
    uint64_t last_pg, txnid;
    msa_raw_db free_db, main_db;
    uint8_t *seen;          /* [npages / 8] pages of intact trees (msa_raw_check) */
    uint8_t *freed;         /* [npages / 8] pages on the free list */
    int marking;            /* msa_raw_check is filling `seen` */
    char path[4200];
};

static uint16_t g16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t g32(const uint8_t *p) { return msa_get_le32(p); }
static uint64_t g64(const uint8_t *p) { return msa_get_le64(p); }

static void db_of(const uint8_t *b, msa_raw_db *d) {
    d->flags = g16(b + 4);
    d->depth = g16(b + 6);
    d->branch_pages = g64(b + 8);
    d->leaf_pages = g64(b + 16);
    d->overflow_pages = g64(b + 24);
    d->entries = g64(b + 32);
    d->root = g64(b + 40);
}

/* A meta page: 0 when valid (magic, version, sane page size). */
static int meta_read(const uint8_t *pg, size_t avail, uint32_t *psize, uint64_t *last, uint64_t *txnid,
                     msa_raw_db *fdb, msa_raw_db *mdb) {
    if (avail < PHDR + 136) return -1;
    if (!(g16(pg + 10) & P_META)) return -1;
    const uint8_t *m = pg + PHDR;
    if (g32(m) != LMDB_MAGIC || g32(m + 4) != 1) return -1;
    uint32_t ps = g32(m + 24); /* mm_dbs[FREE].md_pad */
    if (ps < 512 || ps > 65536 || (ps & (ps - 1))) return -1;
    *psize = ps;
    db_of(m + 24, fdb);
    db_of(m + 72, mdb);
    *last = g64(m + 120);
    *txnid = g64(m + 128);
    return 0;
}

int msa_raw_open(const char *path, uint64_t want_txnid, msa_raw **out) {
    *out = NULL;
    msa_raw *r = calloc(1, sizeof *r);
    if (!r) return msa_error(MSA_ENOMEM, "%s", path);
    snprintf(r->path, sizeof r->path, "%s", path);
    r->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (r->fd < 0) {
        int e = errno;
        free(r);
        return msa_error(e == ENOENT ? MSA_ENOTFOUND : MSA_EIO, "%s: %s", path, strerror(e));
    }
    struct stat sb;
    if (fstat(r->fd, &sb) || sb.st_size < 2 * 512) {
        close(r->fd);
        free(r);
        return msa_error(MSA_ECORRUPT, "%s: too short for an LMDB file", path);
    }
    r->size = (size_t)sb.st_size;
    void *map = mmap(NULL, r->size, PROT_READ, MAP_PRIVATE, r->fd, 0);
    if (map == MAP_FAILED) {
        int e = errno;
        close(r->fd);
        free(r);
        return msa_error(e == ENOMEM ? MSA_ENOMEM : MSA_EIO, "%s: mmap: %s", path, strerror(e));
    }
    r->map = map;
    madvise(map, r->size, MADV_RANDOM); /* tree pages are scattered; readahead reads what is not needed */
    /* both meta pages; the page size comes from the first valid one */
    uint32_t ps[2] = {0, 0};
    uint64_t last[2], txn[2];
    msa_raw_db fdb[2], mdb[2];
    int ok0 = meta_read(r->map, r->size, &ps[0], &last[0], &txn[0], &fdb[0], &mdb[0]) == 0;
    uint32_t p1 = ok0 ? ps[0] : 4096;
    int ok1 = r->size >= 2 * (size_t)p1 &&
              meta_read(r->map + p1, r->size - p1, &ps[1], &last[1], &txn[1], &fdb[1], &mdb[1]) == 0 &&
              (!ok0 || ps[1] == ps[0]);
    int pick = -1;
    if (want_txnid) {
        if (ok0 && txn[0] == want_txnid) pick = 0;
        else if (ok1 && txn[1] == want_txnid) pick = 1;
        if (pick < 0) {
            msa_raw_close(r);
            return msa_error(MSA_EBUSY, "%s: no meta page of transaction %llu (a writer moved on)", path,
                             (unsigned long long)want_txnid);
        }
    } else if (ok0 && ok1) {
        pick = txn[1] > txn[0];
    } else if (ok0 || ok1) {
        pick = ok1;
    } else {
        msa_raw_close(r);
        return msa_error(MSA_ECORRUPT, "%s: neither LMDB meta page is valid", path);
    }
    r->psize = ps[pick];
    r->npages = r->size / r->psize;
    r->last_pg = last[pick];
    r->txnid = txn[pick];
    r->free_db = fdb[pick];
    r->main_db = mdb[pick];
    *out = r;
    return MSA_OK;
}

void msa_raw_close(msa_raw *r) {
    if (!r) return;
    if (r->map) munmap((void *)r->map, r->size);
    if (r->fd >= 0) close(r->fd);
    free(r->seen);
    free(r->freed);
    free(r);
}

uint32_t msa_raw_page_size(const msa_raw *r) { return r->psize; }
const uint8_t *msa_raw_map(const msa_raw *r) { return r->map; }
uint64_t msa_raw_txnid(const msa_raw *r) { return r->txnid; }
const msa_raw_db *msa_raw_main(const msa_raw *r) { return &r->main_db; }

/* ---- a walk ------------------------------------------------------------------ */

typedef struct walk {
    msa_raw *r;
    const char *table;
    int deep;
    void (*report)(void *, const char *);
    void *rctx;
    uint64_t findings;
    uint64_t branch, leaf, overflow, entries;
    int intkey;
    /* iteration */
    msa_raw_fn fn;
    void *fctx;
    int stop;               /* fn's nonzero return */
    const uint8_t *from;    /* iteration starts at the first key >= from */
    size_t from_len;
    int subdb;              /* the main table: named tables are F_SUBDATA */
    int oom;
} walk;

static void finding(walk *w, uint64_t pg, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void finding(walk *w, uint64_t pg, const char *fmt, ...) {
    char msg[600], line[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(line, sizeof line, "LMDB table '%s', page %llu: %s", w->table, (unsigned long long)pg, msg);
    w->findings++;
    if (w->report) w->report(w->rctx, line);
}

static int key_cmp(const walk *w, const uint8_t *a, size_t al, const uint8_t *b, size_t bl) {
    if (w->intkey && al == 8 && bl == 8) {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        return x < y ? -1 : x > y;
    }
    size_t n = al < bl ? al : bl;
    int c = n ? memcmp(a, b, n) : 0;
    return c ? c : (al < bl ? -1 : al > bl);
}

static const uint8_t *page_at(const msa_raw *r, uint64_t pg) {
    return r->map + (size_t)pg * r->psize;
}

/* The page exists and is not a meta page. */
static int pg_in_file(const msa_raw *r, uint64_t pg) {
    return pg >= 2 && pg <= r->last_pg && pg < r->npages;
}

typedef struct bound {
    const uint8_t *key;
    size_t len;
} bound;

/* Checks one overflow run, returns its data (NULL when bad, after a finding). */
static const uint8_t *overflow(walk *w, uint64_t at, uint64_t opg, size_t dsize, int check_hdr) {
    msa_raw *r = w->r;
    uint64_t n = (PHDR - 1 + (uint64_t)dsize) / r->psize + 1;
    if (!pg_in_file(r, opg) || opg + n - 1 > r->last_pg || opg + n > r->npages) {
        finding(w, at, "an overflow value of %zu bytes at page %llu lies outside the file", dsize,
                (unsigned long long)opg);
        return NULL;
    }
    const uint8_t *op = page_at(r, opg);
    if (check_hdr && (g64(op) != opg || !(g16(op + 10) & P_OVERFLOW) || g32(op + 12) != n)) {
        finding(w, opg, "overflow page header damaged (page number %llu, flags 0x%x, %u pages; %llu expected)",
                (unsigned long long)g64(op), g16(op + 10), g32(op + 12), (unsigned long long)n);
        return NULL;
    }
    return op + PHDR;
}

static void walk_node(walk *w, const uint8_t *p, uint64_t pg, int lvl, int depth, uint16_t flags, uint16_t lower,
                      uint16_t upper, uint32_t ps, int want, bound lo, bound hi);

/* Walks the subtree at page pg, level `lvl` of `depth`, keys within [lo, hi). */
static void walk_page(walk *w, uint64_t pg, int lvl, int depth, bound lo, bound hi, uint64_t parent) {
    msa_raw *r = w->r;
    if (w->stop || w->oom) return;
    if (!pg_in_file(r, pg)) {
        finding(w, parent, "child page %llu lies outside the file (last page %llu, %llu in the file)",
                (unsigned long long)pg, (unsigned long long)r->last_pg, (unsigned long long)r->npages);
        return;
    }
    if (w->r->marking) {
        if (w->r->seen[pg >> 3] & (1u << (pg & 7))) {
            finding(w, parent, "child page %llu is used twice", (unsigned long long)pg);
            return;
        }
        w->r->seen[pg >> 3] |= (uint8_t)(1u << (pg & 7));
    }
    const uint8_t *p = page_at(r, pg);
    uint32_t ps = r->psize;
    uint16_t flags = g16(p + 10), lower = g16(p + 12), upper = g16(p + 14);
    int want = lvl < depth ? P_BRANCH : P_LEAF;
    uint64_t before = w->findings;
    walk_node(w, p, pg, lvl, depth, flags, lower, upper, ps, want, lo, hi);
    if (w->findings != before && w->r->marking) /* a damaged page: msa_raw_scan reads what it still holds */
        w->r->seen[pg >> 3] &= (uint8_t)~(1u << (pg & 7));
}

static void walk_node(walk *w, const uint8_t *p, uint64_t pg, int lvl, int depth, uint16_t flags, uint16_t lower,
                      uint16_t upper, uint32_t ps, int want, bound lo, bound hi) {
    msa_raw *r = w->r;
    if (g64(p) != pg) {
        finding(w, pg, "header names page %llu", (unsigned long long)g64(p));
        return;
    }
    if ((flags & 0x6f) != want) {
        finding(w, pg, "flags 0x%x, a %s was expected at level %d of %d", flags,
                want == P_BRANCH ? "branch page" : "leaf page", lvl, depth);
        return;
    }
    if (lower < PHDR || (lower & 1) || upper > ps || lower > upper) {
        finding(w, pg, "bounds lower %u, upper %u in a page of %u", lower, upper, ps);
        return;
    }
    int nk = (lower - PHDR) / 2;
    if (nk < 1) {
        finding(w, pg, "no entries");
        return;
    }
    if (want == P_BRANCH) w->branch++;
    else w->leaf++;
    const uint8_t *prev = NULL;
    size_t prev_len = 0;
    /* validate every node first, so that a bad page is left out whole */
    for (int i = 0; i < nk; i++) {
        uint16_t off = g16(p + PHDR + 2 * i);
        if (off < upper || (size_t)off + NODESZ > ps) {
            finding(w, pg, "entry %d at offset %u outside the node area [%u, %u)", i, off, upper, ps);
            return;
        }
        const uint8_t *nd = p + off;
        uint16_t nf = g16(nd + 4), ks = g16(nd + 6);
        size_t kend = (size_t)off + NODESZ + ks;
        if (kend > ps) {
            finding(w, pg, "entry %d: a key of %u bytes passes the page end", i, ks);
            return;
        }
        const uint8_t *key = nd + NODESZ;
        if (want == P_LEAF) {
            size_t ds = (size_t)g16(nd) | (size_t)g16(nd + 2) << 16;
            if (nf & ~(F_BIGDATA | F_SUBDATA)) {
                finding(w, pg, "entry %d: node flags 0x%x", i, nf);
                return;
            }
            if ((nf & F_SUBDATA) && !w->subdb) {
                finding(w, pg, "entry %d: a named table outside the main table", i);
                return;
            }
            if ((nf & F_SUBDATA) && (ds != 48 || (nf & F_BIGDATA))) {
                finding(w, pg, "entry %d: a named table record of %zu bytes", i, ds);
                return;
            }
            if (kend + ((nf & F_BIGDATA) ? 8 : ds) > ps) {
                finding(w, pg, "entry %d: a value of %zu bytes passes the page end", i, ds);
                return;
            }
        }
        if (i > 0 || want == P_LEAF) { /* a branch's first key is not used */
            if (prev && key_cmp(w, prev, prev_len, key, ks) >= 0) {
                finding(w, pg, "entry %d: keys out of order", i);
                return;
            }
            if ((lo.key && key_cmp(w, key, ks, lo.key, lo.len) < 0) ||
                (hi.key && key_cmp(w, key, ks, hi.key, hi.len) >= 0)) {
                finding(w, pg, "entry %d: a key outside the range its parent gives", i);
                return;
            }
            prev = key;
            prev_len = ks;
        }
    }
    /* ask for all children (or, deep, the overflow headers) at once: a cold
     * walk then waits for one queue of disk reads, not for nk reads in turn */
    for (int i = 0; i < nk && (want == P_BRANCH || w->deep); i++) {
        const uint8_t *nd = p + g16(p + PHDR + 2 * i);
        uint16_t nf = g16(nd + 4);
        uint64_t child = want == P_BRANCH ? (uint64_t)g16(nd) | (uint64_t)g16(nd + 2) << 16 | (uint64_t)nf << 32
                         : (nf & F_BIGDATA) ? g64(nd + NODESZ + g16(nd + 6)) : 0;
        if (child && pg_in_file(r, child)) madvise((void *)page_at(r, child), r->psize, MADV_WILLNEED);
    }
    for (int i = 0; i < nk && !w->stop && !w->oom; i++) {
        const uint8_t *nd = p + g16(p + PHDR + 2 * i);
        uint16_t nf = g16(nd + 4), ks = g16(nd + 6);
        const uint8_t *key = nd + NODESZ;
        if (want == P_BRANCH) {
            uint64_t child = (uint64_t)g16(nd) | (uint64_t)g16(nd + 2) << 16 | (uint64_t)nf << 32;
            bound clo = i ? (bound){key, ks} : lo, chi = hi;
            if (i + 1 < nk) {
                const uint8_t *nn = p + g16(p + PHDR + 2 * (i + 1));
                chi = (bound){nn + NODESZ, g16(nn + 6)};
            }
            /* iteration: skip subtrees wholly before `from` */
            if (w->fn && w->from && i + 1 < nk && key_cmp(w, chi.key, chi.len, w->from, w->from_len) <= 0) {
                /* still count what a check would: not needed when iterating */
                continue;
            }
            walk_page(w, child, lvl + 1, depth, clo, chi, pg);
            continue;
        }
        size_t ds = (size_t)g16(nd) | (size_t)g16(nd + 2) << 16;
        const uint8_t *val = key + ks;
        w->entries++;
        if (nf & F_BIGDATA) {
            uint64_t opg = g64(val);
            uint64_t n = (PHDR - 1 + (uint64_t)ds) / r->psize + 1;
            w->overflow += n;
            val = overflow(w, pg, opg, ds, w->deep && !w->fn); /* readers take the data as the node says */
            if (!val) continue;
            if (r->marking) {
                for (uint64_t q = opg; q < opg + n; q++) {
                    if (r->seen[q >> 3] & (1u << (q & 7))) {
                        finding(w, pg, "overflow page %llu is used twice", (unsigned long long)q);
                        val = NULL;
                        break;
                    }
                    r->seen[q >> 3] |= (uint8_t)(1u << (q & 7));
                }
                if (!val) continue;
            }
        }
        if (w->fn) {
            if (w->from && key_cmp(w, key, ks, w->from, w->from_len) < 0) continue;
            int rc = w->fn(w->fctx, key, ks, val, ds, nf);
            if (rc) w->stop = rc;
        }
    }
}

static int seen_alloc(msa_raw *r) {
    free(r->seen);
    r->seen = calloc((size_t)(r->npages / 8 + 1), 1);
    return r->seen ? MSA_OK : msa_error(MSA_ENOMEM, "%s: %llu pages", r->path, (unsigned long long)r->npages);
}

static void walk_db(walk *w, const msa_raw_db *db) {
    if (db->root == P_INVALID) {
        if (db->depth || db->entries)
            finding(w, 0, "an empty table with depth %u and %llu entries", db->depth,
                    (unsigned long long)db->entries);
        return;
    }
    if (db->depth < 1 || db->depth > MAX_DEPTH) {
        finding(w, db->root, "tree depth %u", db->depth);
        return;
    }
    if (db->flags & DB_DUPSORT) {
        finding(w, db->root, "a table with sorted duplicates (not used by the store)");
        return;
    }
    w->intkey = (db->flags & DB_INTEGERKEY) != 0;
    bound none = {NULL, 0};
    walk_page(w, db->root, 1, db->depth, none, none, db->root);
}

/* ---- the check ------------------------------------------------------------------ */

typedef struct named {
    char name[64];
    msa_raw_db db;
} named;

typedef struct named_list {
    named t[16];
    int n;
} named_list;

static int collect_named(void *ctx, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl, unsigned flags) {
    named_list *l = ctx;
    if (!(flags & F_SUBDATA) || vl != 48 || l->n == 16) return 0;
    named *e = &l->t[l->n++];
    size_t n = kl < sizeof e->name - 1 ? kl : sizeof e->name - 1;
    memcpy(e->name, k, n);
    e->name[n] = 0;
    db_of(v, &e->db);
    return 0;
}

static void counts_match(walk *w, const msa_raw_db *db) {
    if (w->findings) return; /* the counts of a damaged tree say nothing more */
    if (w->branch != db->branch_pages || w->leaf != db->leaf_pages || w->overflow != db->overflow_pages ||
        w->entries != db->entries)
        finding(w, db->root, "the table records %llu branch, %llu leaf, %llu overflow pages and %llu entries; "
                "its pages hold %llu, %llu, %llu and %llu",
                (unsigned long long)db->branch_pages, (unsigned long long)db->leaf_pages,
                (unsigned long long)db->overflow_pages, (unsigned long long)db->entries,
                (unsigned long long)w->branch, (unsigned long long)w->leaf, (unsigned long long)w->overflow,
                (unsigned long long)w->entries);
}

static int check_freed(void *ctx, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl, unsigned fl) {
    walk *w = ctx;
    msa_raw *r = w->r;
    (void)fl;
    uint64_t txn = kl == 8 ? g64(k) : 0;
    uint64_t n = vl >= 8 ? g64(v) : 0;
    if (kl != 8 || txn > r->txnid || vl < 8 || (vl - 8) / 8 < n || n == 0) {
        finding(w, 0, "a free-list record (transaction %llu) is malformed", (unsigned long long)txn);
        return 0;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t pg = g64(v + 8 + 8 * i);
        /* a page allocated and freed by one transaction is on the list but
         * was never written: past the file's end is fine, past last_pg not */
        if (pg < 2 || pg > r->last_pg) {
            finding(w, 0, "transaction %llu freed page %llu, outside the file (last page %llu)",
                    (unsigned long long)txn, (unsigned long long)pg, (unsigned long long)r->last_pg);
            return 0;
        }
        if (pg < r->npages && (r->seen[pg >> 3] & (1u << (pg & 7)))) {
            finding(w, 0, "transaction %llu freed page %llu, which a table still uses", (unsigned long long)txn,
                    (unsigned long long)pg);
            return 0;
        }
    }
    return 0;
}

int msa_raw_check(msa_raw *r, int deep, void (*report)(void *, const char *), void *ctx, uint64_t *n_findings) {
    *n_findings = 0;
    int rc = seen_alloc(r);
    if (rc) return rc;
    uint64_t total = 0;
    r->marking = 1;
    /* the free list: its pages count as used too */
    walk w = {r, "free list", deep, report, ctx, 0, 0, 0, 0, 0, 0, NULL, NULL, 0, NULL, 0, 0, 0};
    walk_db(&w, &r->free_db);
    counts_match(&w, &r->free_db);
    total += w.findings;
    named_list tables = {0};
    walk m = {r, "main", deep, report, ctx, 0, 0, 0, 0, 0, 0, collect_named, &tables, 0, NULL, 0, 1, 0};
    walk_db(&m, &r->main_db);
    counts_match(&m, &r->main_db);
    total += m.findings;
    for (int i = 0; i < tables.n; i++) {
        walk t = {r, tables.t[i].name, deep, report, ctx, 0, 0, 0, 0, 0, 0, NULL, NULL, 0, NULL, 0, 0, 0};
        walk_db(&t, &tables.t[i].db);
        counts_match(&t, &tables.t[i].db);
        total += t.findings;
    }
    r->marking = 0;
    /* the free list's values: page numbers LMDB will write to. One outside
     * the file, or one a tree still uses, would make the next commit write
     * past the map (SIGBUS) or over live data. */
    if (!w.findings) {
        walk fv = {r, "free list", deep, report, ctx, 0, 0, 0, 0, 0, 0, check_freed, NULL, 0, NULL, 0, 0, 0};
        fv.fctx = &fv;
        walk_db(&fv, &r->free_db);
        total += fv.findings;
    }
    *n_findings = total; /* r->seen stays for msa_raw_scan */
    return MSA_OK;
}

/* ---- pages no intact tree reaches ------------------------------------------------ */

static int mark_freed(void *ctx, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl, unsigned fl) {
    (void)k; (void)kl; (void)fl;
    msa_raw *r = ctx;
    /* an IDL: u64 count, then the page numbers */
    if (vl < 8) return 0;
    uint64_t n = g64(v);
    if (n > (vl - 8) / 8) n = (vl - 8) / 8;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t pg = g64(v + 8 + 8 * i);
        if (pg < r->npages) r->freed[pg >> 3] |= (uint8_t)(1u << (pg & 7));
    }
    return 0;
}

int msa_raw_scan(msa_raw *r, msa_raw_fn fn, void *ctx, uint64_t *n_pages) {
    *n_pages = 0;
    if (!r->seen) return msa_error(MSA_EINVAL, "msa_raw_scan before msa_raw_check");
    free(r->freed);
    if (!(r->freed = calloc((size_t)(r->npages / 8 + 1), 1))) return msa_error(MSA_ENOMEM, "%s", r->path);
    walk fw = {r, "free list", 1, NULL, NULL, 0, 0, 0, 0, 0, 0, mark_freed, r, 0, NULL, 0, 0, 0};
    const uint8_t *seen = r->seen;
    walk_db(&fw, &r->free_db);
    uint32_t ps = r->psize;
    for (uint64_t pg = 2; pg <= r->last_pg && pg < r->npages; pg++) {
        if ((seen[pg >> 3] | r->freed[pg >> 3]) & (1u << (pg & 7))) continue;
        const uint8_t *p = page_at(r, pg);
        uint16_t flags = g16(p + 10), lower = g16(p + 12), upper = g16(p + 14);
        /* a damaged header (page number, flags) still lets the nodes be read
         * when the bounds are sane: each value must pass its own checksum */
        if (lower <= PHDR || (lower & 1) || upper > ps || lower > upper) continue;
        if (g64(p) == pg && (flags & 0x6f) != P_LEAF) continue; /* an intact page of another kind */
        if (g64(p) != pg && (flags & (P_OVERFLOW | P_META))) continue;
        (*n_pages)++;
        int nk = (lower - PHDR) / 2;
        for (int i = 0; i < nk; i++) { /* each node on its own: a damaged one is skipped */
            uint16_t off = g16(p + PHDR + 2 * i);
            if (off < upper || (size_t)off + NODESZ > ps) continue;
            const uint8_t *nd = p + off;
            uint16_t nf = g16(nd + 4), ks = g16(nd + 6);
            size_t ds = (size_t)g16(nd) | (size_t)g16(nd + 2) << 16, kend = (size_t)off + NODESZ + ks;
            if (kend > ps || (nf & ~(F_BIGDATA | F_SUBDATA))) continue;
            const uint8_t *val = nd + NODESZ + ks;
            if (nf & F_BIGDATA) {
                if (kend + 8 > ps) continue;
                walk q = {r, "", 0, NULL, NULL, 0, 0, 0, 0, 0, 0, NULL, NULL, 0, NULL, 0, 0, 0};
                val = overflow(&q, pg, g64(val), ds, 0);
                if (!val) continue;
            } else if (kend + ds > ps) {
                continue;
            }
            int rc = fn(ctx, nd + NODESZ, ks, val, ds, nf);
            if (rc) return rc > 0 ? MSA_OK : rc;
        }
    }
    return MSA_OK;
}

/* ---- reading ------------------------------------------------------------------- */

typedef struct find_ctx {
    const char *name;
    msa_raw_db *db;
    int found;
} find_ctx;

static int find_named(void *ctx, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl, unsigned flags) {
    find_ctx *f = ctx;
    if ((flags & F_SUBDATA) && vl == 48 && kl == strlen(f->name) && !memcmp(k, f->name, kl)) {
        db_of(v, f->db);
        f->found = 1;
        return 1;
    }
    return 0;
}

int msa_raw_find_db(msa_raw *r, const char *name, msa_raw_db *db) {
    find_ctx f = {name, db, 0};
    walk w = {r, "main", 0, NULL, NULL, 0, 0, 0, 0, 0, 0, find_named, &f, 0, NULL, 0, 1, 0};
    walk_db(&w, &r->main_db);
    if (f.found) return MSA_OK;
    return msa_error(w.findings ? MSA_ECORRUPT : MSA_ENOTFOUND, "%s: no intact record of table '%s'", r->path,
                     name);
}

int msa_raw_iter(msa_raw *r, const msa_raw_db *db, const char *table, const void *from, size_t from_len,
                 msa_raw_fn fn, void *ctx, void (*report)(void *, const char *), void *rctx, uint64_t *n_bad) {
    walk w = {r, table, 1, report, rctx, 0, 0, 0, 0, 0, 0, fn, ctx, 0, from, from_len, 0, 0};
    walk_db(&w, db);
    if (n_bad) *n_bad = w.findings;
    return w.stop > 0 ? 0 : w.stop;
}

/* A lookup: descends by key, validating each page on the way. */
int msa_raw_get(msa_raw *r, const msa_raw_db *db, const void *key, size_t klen, const uint8_t **val,
                size_t *vlen) {
    *val = NULL;
    *vlen = 0;
    if (db->root == P_INVALID) return MSA_ENOTFOUND;
    if (db->depth < 1 || db->depth > MAX_DEPTH) return MSA_ECORRUPT;
    walk w = {r, "", 0, NULL, NULL, 0, 0, 0, 0, 0, 0, NULL, NULL, 0, NULL, 0, 0, 0};
    w.intkey = (db->flags & DB_INTEGERKEY) != 0;
    uint64_t pg = db->root;
    for (int lvl = 1; lvl <= db->depth; lvl++) {
        if (!pg_in_file(r, pg)) return MSA_ECORRUPT;
        const uint8_t *p = page_at(r, pg);
        uint16_t flags = g16(p + 10), lower = g16(p + 12), upper = g16(p + 14);
        int want = lvl < db->depth ? P_BRANCH : P_LEAF;
        if (g64(p) != pg || (flags & 0x6f) != want || lower < PHDR || (lower & 1) || upper > r->psize ||
            lower > upper || lower == PHDR)
            return MSA_ECORRUPT;
        int nk = (lower - PHDR) / 2, pick = -1;
        for (int i = 0; i < nk; i++) {
            uint16_t off = g16(p + PHDR + 2 * i);
            if (off < upper || (size_t)off + NODESZ > r->psize) return MSA_ECORRUPT;
            const uint8_t *nd = p + off;
            uint16_t ks = g16(nd + 6);
            if ((size_t)off + NODESZ + ks > r->psize) return MSA_ECORRUPT;
            int c = (want == P_BRANCH && i == 0) ? -1 : key_cmp(&w, nd + NODESZ, ks, key, klen);
            if (want == P_BRANCH) {
                if (c <= 0) pick = i;
                else break;
            } else if (c == 0) {
                pick = i;
                break;
            }
        }
        if (pick < 0) return MSA_ENOTFOUND;
        const uint8_t *nd = p + g16(p + PHDR + 2 * pick);
        uint16_t nf = g16(nd + 4), ks = g16(nd + 6);
        if (want == P_BRANCH) {
            pg = (uint64_t)g16(nd) | (uint64_t)g16(nd + 2) << 16 | (uint64_t)nf << 32;
            continue;
        }
        size_t ds = (size_t)g16(nd) | (size_t)g16(nd + 2) << 16;
        size_t kend = (size_t)((nd + NODESZ + ks) - p);
        const uint8_t *v = nd + NODESZ + ks;
        if (nf & F_BIGDATA) {
            if (kend + 8 > r->psize) return MSA_ECORRUPT;
            w.table = "";
            v = overflow(&w, pg, g64(v), ds, 0); /* a damaged header does not move the data */
            if (!v) return MSA_ECORRUPT;
        } else if (kend + ds > r->psize) {
            return MSA_ECORRUPT;
        }
        *val = v;
        *vlen = ds;
        return MSA_OK;
    }
    return MSA_ECORRUPT;
}

int msa_raw_overflow_ok(const void *map, size_t map_len, uint32_t psize, const void *data, size_t len) {
    const uint8_t *d = data, *m = map;
    if (!m || !psize || d < m + PHDR || d >= m + map_len) return 1; /* not in the map: a page of this txn */
    size_t off = (size_t)(d - m) - PHDR;
    if (off % psize) return 1; /* a value inside a leaf page */
    const uint8_t *op = m + off;
    uint64_t n = (PHDR - 1 + (uint64_t)len) / psize + 1;
    return g64(op) == off / psize && (g16(op + 10) & P_OVERFLOW) && g32(op + 12) == n;
}
