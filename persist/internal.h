/*
 * internal.h: what the files of persist/ share and nothing outside sees:
 * CRC32C, the block codec, the on-disk record layouts, the one place LMDB
 * codes become MSA_* statuses, and the fault-injection hook used by the
 * store's tests (compiled into test builds only).
 *
 * All multi-byte integers on disk are little-endian; LMDB keys are
 * big-endian so that LMDB's byte order sorts them numerically.
 */
#ifndef MSA_PERSIST_INTERNAL_H
#define MSA_PERSIST_INTERNAL_H

#include <lmdb.h>
#include <stdint.h>
#include <stddef.h>

#include "engine/msa.h"
#include "base/base.h"

/* ---- CRC32C (Castagnoli) ------------------------------------------------- */

/* crc32c of buf continuing from crc (0 to start). Uses the SSE4.2 crc32
 * instruction when the CPU has it, else a slicing-by-8 table. */
uint32_t msa_crc32c(uint32_t crc, const void *buf, size_t n);
/* The portable version alone (tests compare the two). */
uint32_t msa_crc32c_sw(uint32_t crc, const void *buf, size_t n);

/* ---- little/big endian helpers ------------------------------------------ */

static inline void msa_put_le32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline uint32_t msa_get_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline void msa_put_le64(uint8_t *p, uint64_t v) {
    msa_put_le32(p, (uint32_t)v);
    msa_put_le32(p + 4, (uint32_t)(v >> 32));
}
static inline uint64_t msa_get_le64(const uint8_t *p) {
    return (uint64_t)msa_get_le32(p) | (uint64_t)msa_get_le32(p + 4) << 32;
}
static inline void msa_put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void msa_put_be64(uint8_t *p, uint64_t v) {
    msa_put_be32(p, (uint32_t)(v >> 32));
    msa_put_be32(p + 4, (uint32_t)v);
}
static inline uint32_t msa_get_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}
static inline uint64_t msa_get_be64(const uint8_t *p) {
    return (uint64_t)msa_get_be32(p) << 32 | msa_get_be32(p + 4);
}

/* ---- block codec ------------------------------------------------------------
 *
 * A stored block value ("MSB1"):
 *
 *   0   u32 magic 'MSB1'
 *   4   u32 crc32c of bytes [8, end)
 *   8   u8  kv dtype, u8 idx dtype, u8 lossy, u8 n_planes (total)
 *   12  u32 n_tokens
 *   16  u32 crc32c of the plain (pre-zstd) planes, in order
 *   20  u32 raw bytes (K + V + index keys as the caller holds them, filled rows)
 *   24  n_planes x u32: plane length after zstd; bit 31 set = stored as is
 *   ..  the planes
 *
 * A section (K, V, index keys) of e elements of s bytes is s byte planes of
 * e bytes (plane j holds byte j of every element), so that the exponent
 * bytes of 16-bit floats, which barely vary, sit together for zstd. A lossy
 * K or V section is one plane of fp8 e4m3 codes plus the 4 byte planes of
 * its per-row f32 scales.
 */
enum { MSA_BLOCK_HDR = 24, MSA_BLOCK_MAX_PLANES = 3 * 5 };
#define MSA_BLOCK_MAGIC 0x3142534du /* "MSB1" little-endian */

typedef struct msa_codec_shape {
    int n_kv_heads, head_dim, idx_key_heads, idx_dim, block_size;
    msa_dtype kv_dtype, idx_dtype;
} msa_codec_shape;

typedef struct msa_codec_err {
    double max_abs, sum_sq_err, sum_sq; /* over lossy values */
} msa_codec_err;

/* Encodes the first n_tokens rows of each head into a malloc'ed value
 * (*out, *out_len). Returns MSA_OK or MSA_ENOMEM / MSA_EIO (zstd failure).
 * err (optional) accumulates the lossy error. */
int msa_block_encode(const msa_codec_shape *sh, int n_tokens, const void *k,
                     const void *v, const void *kidx, int level, int lossy,
                     void **out, size_t *out_len, msa_codec_err *err);
/* The same into this thread's reused output buffer: *out is valid until
 * the thread's next encode (the caller copies it where it keeps it). */
int msa_block_encode_scratch(const msa_codec_shape *sh, int n_tokens, const void *k,
                             const void *v, const void *kidx, int level, int lossy,
                             const void **out, size_t *out_len, msa_codec_err *err);

/* Verifies the value's checksum (cheap) and, when any of k, v, kidx is
 * given, decodes those sections into [heads][block_size][dim] buffers
 * (rows past n_tokens zeroed) and verifies the plain checksum too (only
 * when all three are decoded, or always when `full`). Returns MSA_OK,
 * MSA_ECORRUPT (message says what failed, caller adds the block's name),
 * MSA_ENOMEM. *n_tokens gets the fill. */
int msa_block_decode(const msa_codec_shape *sh, const void *val, size_t len,
                     void *k, void *v, void *kidx, int *n_tokens, int full);

/* Just the header check: magic, crc over the value, plane lengths add up. */
int msa_block_verify(const void *val, size_t len);

/* Asks the kernel to read [p, p + n) of a mapped file now, in large
 * requests (madvise WILLNEED; a hint, errors ignored). */
void msa_prefetch(const void *p, size_t n);

/* ---- segment files (segment.c) ----------------------------------------------
 *
 * Full blocks whose value is at least msa_store_params.segment_min bytes
 * (default MSA_SEG_MIN_VALUE) are appended
 * to segment files (STORE/segments/<id>.seg) and the blocks table holds a
 * pointer to them ("MSP1", store format 2):
 *
 *   0   u32 magic 'MSP1'
 *   4   u32 crc32c of bytes [8, 32)
 *   8   u64 segment id
 *   16  u64 offset of the value in the segment file
 *   24  u32 length of the value
 *   28  u32 the value's own checksum (its bytes [4, 8)), to tell that the
 *       bytes found there are the block named
 *
 * Partial blocks (rewritten as they fill) and small values stay in LMDB.
 * See segment.c for the files and the order of writes. */
enum { MSA_SEGPTR_LEN = 32 };
#define MSA_SEGPTR_MAGIC 0x3150534du /* "MSP1" little-endian */
#define MSA_SEG_MIN_VALUE ((size_t)32 << 10)
#define MSA_SEG_MAX ((uint64_t)1 << 30)   /* a segment's largest size */
#define MSA_SEG_FLUSH ((size_t)8 << 20)   /* staged bytes that start a write */

typedef struct msa_segptr {
    uint64_t seg, off;
    uint32_t len, vcrc;
} msa_segptr;

size_t msa_segptr_encode(const msa_segptr *p, uint8_t out[MSA_SEGPTR_LEN]);
/* 1 when a blocks-table value is a segment pointer (size and magic) */
int msa_segptr_is(const void *v, size_t len);
/* MSA_OK or MSA_ECORRUPT (checksum, range) */
int msa_segptr_decode(const void *v, size_t len, msa_segptr *p);
/* The length of the block a blocks-table value holds or points to. */
uint64_t msa_value_stored_len(const void *v, size_t len);

/* Segment files mapped read-only on first use, one table per store
 * handle (or salvage source). Thread-safe; mappings stay valid until
 * msa_segs_forget or msa_segs_free. */
typedef struct msa_segs msa_segs;
int msa_segs_new(const char *store_dir, msa_segs **out);
void msa_segs_forget(msa_segs *s);
void msa_segs_free(msa_segs *s);
/* A blocks-table value: when it is a pointer, *v becomes the block's bytes
 * in its segment (checked: pointer checksum, file header, length, the
 * value's magic and checksum field); an inline value is left as it is.
 * MSA_OK, MSA_ECORRUPT (message says what), MSA_EIO, MSA_ENOMEM. */
int msa_segs_resolve(msa_segs *s, MDB_val *v);
/* The ids of the segment files of a store, ascending, and (sizes not
 * NULL) their sizes in bytes (0: gone meanwhile); malloc'ed, none: NULL. */
int msa_segs_list(const char *store_dir, uint64_t **ids, uint64_t **sizes, size_t *n);
/* fdatasyncs every segment file of a store, then their directory. */
int msa_segs_sync(const char *store_dir);
/* Deletes one segment file; *bytes gets its size. */
int msa_segs_remove(const char *store_dir, uint64_t id, uint64_t *bytes);

/* The writer of one new segment file (created O_EXCL with a random id;
 * written with O_DIRECT where the file system allows). Appends are staged
 * and written out every MSA_SEG_FLUSH bytes; seal writes the rest and,
 * when `sync`, fdatasyncs: after it every appended value is durable.
 * commit marks what is written as named by committed pointers; rewind
 * drops what was appended since (the next appends overwrite it); close
 * cuts the file after the last commit (and deletes it if nothing was
 * committed). */
typedef struct msa_segw msa_segw;
int msa_segw_open(const char *store_dir, int sync, msa_segw **out);
/* 0 in a child forked after the writer was opened: the segment is the
 * parent's, which the child must not append to (nor cut at close). */
int msa_segw_mine(const msa_segw *w);
int msa_segw_fits(const msa_segw *w, size_t len);
int msa_segw_append(msa_segw *w, const void *val, size_t len, msa_segptr *p);
int msa_segw_seal(msa_segw *w);
void msa_segw_commit(msa_segw *w);
void msa_segw_rewind(msa_segw *w);
void msa_segw_close(msa_segw *w);

/* ---- LMDB ------------------------------------------------------------------ */

/* The one place LMDB (and errno) codes become statuses. Records
 * "<what>: <mdb_strerror(rc)>" for msa_last_error() and returns the status:
 * MDB_NOTFOUND -> MSA_ENOTFOUND, MDB_MAP_FULL / ENOSPC / EDQUOT ->
 * MSA_ENOSPC, MDB_READERS_FULL / EAGAIN / EBUSY -> MSA_EBUSY, ENOMEM ->
 * MSA_ENOMEM, MDB_CORRUPTED / MDB_PAGE_NOTFOUND / MDB_INVALID ->
 * MSA_ECORRUPT, MDB_VERSION_MISMATCH -> MSA_EVERSION, EINVAL /
 * MDB_BAD_VALSIZE / MDB_BAD_DBI -> MSA_EINVAL, ENOENT -> MSA_ENOTFOUND,
 * everything else -> MSA_EIO. */
int msa_mdb_status(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- LMDB's file without LMDB (lmdbraw.c) ------------------------------------
 *
 * A read-only reader of LMDB's data file (data.mdb) that checks every page
 * it reads, so that damage is reported instead of tripping LMDB's
 * assertions or reading outside the map. Used to check the trees before
 * LMDB walks them (store.c at open, fsck.c) and to salvage the intact
 * entries of a damaged file (salvage.c). See lmdbraw.c for the format. */
typedef struct msa_raw msa_raw;
typedef struct msa_raw_db {
    uint16_t flags, depth;
    uint64_t branch_pages, leaf_pages, overflow_pages, entries, root;
} msa_raw_db;

typedef int (*msa_raw_fn)(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                          unsigned node_flags);

/* Maps `path` read-only and picks its current meta page (the newer valid
 * one), or with want_txnid != 0 the one of that transaction (MSA_EBUSY when
 * neither is: a writer moved on). MSA_ECORRUPT when no meta page is valid,
 * MSA_ENOTFOUND, MSA_EIO, MSA_ENOMEM. */
int msa_raw_open(const char *path, uint64_t want_txnid, msa_raw **out);
void msa_raw_close(msa_raw *r);
uint32_t msa_raw_page_size(const msa_raw *r);
const uint8_t *msa_raw_map(const msa_raw *r); /* the file's first byte, mapped */
uint64_t msa_raw_txnid(const msa_raw *r);
const msa_raw_db *msa_raw_main(const msa_raw *r);

/* Checks the free list, the main table and every named table: one line per
 * finding to report ("LMDB table 'blocks', page 123: ..."), *n_findings.
 * deep: also the header of every overflow page (one page read per large
 * value). Returns MSA_OK (findings or not) or MSA_ENOMEM. */
int msa_raw_check(msa_raw *r, int deep, void (*report)(void *, const char *), void *ctx,
                  uint64_t *n_findings);

/* After msa_raw_check: every leaf page that no intact tree reaches and the
 * free list does not hold (the pages below a damaged branch page, and the
 * damaged pages themselves), each node on its own (a damaged node is
 * skipped): fn gets its key and value, which belong to some table and must
 * be recognised by their own checksums. *n_pages gets the pages read. */
int msa_raw_scan(msa_raw *r, msa_raw_fn fn, void *ctx, uint64_t *n_pages);

/* The record of a named table: MSA_OK, MSA_ENOTFOUND, MSA_ECORRUPT (the main
 * table is damaged where it would be). */
int msa_raw_find_db(msa_raw *r, const char *name, msa_raw_db *db);

/* Visits every intact entry of a table in key order, from the first key >=
 * `from` (NULL: the first). Values point into the map (valid until close).
 * A damaged page is reported (to report, counted in *n_bad) and its subtree
 * skipped. fn returns nonzero to stop: a positive value stops quietly, a
 * negative one is returned. */
int msa_raw_iter(msa_raw *r, const msa_raw_db *db, const char *table, const void *from, size_t from_len,
                 msa_raw_fn fn, void *ctx, void (*report)(void *, const char *), void *rctx, uint64_t *n_bad);

/* One value by key: MSA_OK (*val into the map), MSA_ENOTFOUND, MSA_ECORRUPT
 * (a damaged page on the way; no message recorded). */
int msa_raw_get(msa_raw *r, const msa_raw_db *db, const void *key, size_t klen, const uint8_t **val,
                size_t *vlen);

/* For a value LMDB returned from the map: 0 when it is an overflow value whose
 * page header does not match (damaged), else 1 (also for values not in the
 * map or inside a leaf page). */
int msa_raw_overflow_ok(const void *map, size_t map_len, uint32_t psize, const void *data, size_t len);

/* ---- fault injection (test builds only) -----------------------------------
 *
 * Compiled in only where MSA_FAULT_INJECTION is defined: the
 * msa_persist_faults objects (persist/CMakeLists.txt) that the tests' msa_test
 * library is made of. In libmsa.so and libmsa.a (targets msa, msa_static)
 * the fault points below are the constant 0, the arming functions do not
 * exist and MSA_STORE_FAULT is not read.
 *
 * Every write, commit and allocation on the store's write paths passes a
 * fault point. When armed with (err, nth), the nth point from now fails
 * as if the system had returned errno `err` (ENOSPC, EIO or ENOMEM).
 * The environment variable MSA_STORE_FAULT="enospc:N" (or eio:N, enomem:N)
 * arms it at the first point. msa_fault_points() counts points passed
 * since the last arm, so that a test can learn how many steps an append
 * has and fail each one in turn.
 *
 * Every read transaction of a session handle (stat, tokens, blocks, index
 * keys, the start of an append) passes a read point. msa_fault_arm_reads
 * (err, nth) lets the nth read point from now and every one after it fail
 * with `err`, until it is called again with (0, 0): a disk gone bad, for
 * the paths that must give up cleanly when the store cannot be read. */
#ifdef MSA_FAULT_INJECTION
void msa_fault_arm(int err, long nth);
long msa_fault_points(void);
/* 0 or the errno to fail with at this point. */
int msa_fault_point(void);
void msa_fault_arm_reads(int err, long nth);
/* 0 or the errno to fail this read with. */
int msa_fault_read_point(void);
#else
#define msa_fault_point() 0
#define msa_fault_read_point() 0
#endif

#endif /* MSA_PERSIST_INTERNAL_H */
