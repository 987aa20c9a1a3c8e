/*
 * store_int.h: the store's handles and record formats, shared by store.c
 * (open, sessions, transactions, reads) and ops.c (fork, remove, export,
 * import, compact, fsck). Not installed.
 *
 * LMDB databases of a store:
 *   meta      "format" -> "MSAMEMST" u32 version u32 crc; "next_block" and
 *             "next_session" -> u64 counters
 *   sessions  name -> session record (below)
 *   tokens    sid(be64) chunk(be32) -> u32 crc, u32 count, count x i32
 *   blockmap  sid(be64) layer(be32) block(be64) -> block entry (below)
 *   blocks    block id(be64) -> block value (internal.h, "MSB1"), or for
 *             a full block of a store of format 2, a pointer to the value
 *             in a segment file ("MSP1", segment.c)
 *   refs      block id(be64) -> u32 references, present only when > 1
 *
 * A block entry names the stored block a session's (layer, block) uses, so
 * that forks share blocks: the partial last block is copied on write.
 */
#ifndef MSA_PERSIST_STORE_INT_H
#define MSA_PERSIST_STORE_INT_H

#include <pthread.h>

#include "persist/internal.h"

#define MSA_STORE_MAGIC "MSAMEMST"
enum { MSA_TOK_CHUNK = 4096 };

struct msa_store {
    MDB_env *env;
    MDB_dbi meta, sessions, tokens, blockmap, blocks, refs;
    msa_store_params params;
    char *dir;
    int lock_fd;            /* flock: shared while open, exclusive to compact */
    int n_sessions_open;
    size_t map_size;
    unsigned psize;         /* LMDB page size */
    const uint8_t *map_base; /* where LMDB mapped data.mdb (NULL: unknown) */
    int threads;            /* compression threads of new transactions (0: one per core) */
    pthread_rwlock_t grow;  /* read txns hold it shared; map growth exclusive */
    pthread_mutex_t arena_mu;
    struct msa_arena *spare; /* encoded-value memory kept from the last transaction */
    uint32_t format;        /* the store's format version as last read or written */
    msa_segs *segs;         /* segment files, mapped for reading */
    msa_segw *spare_w;      /* this handle's segment writer between transactions (arena_mu) */
};

/* A session record, decoded. params are the session's parameters
 * (msa_session_params, in the order of its fields; 0: unset), kept in the
 * record so that fork, export and import carry them. A record with all of
 * them 0 is written in version 1 (no params), else in version 2: version 1
 * followed by u32 count and count x i32 (up to MSA_SREC_PARAMS are kept). */
enum { MSA_SREC_PARAMS = 16 };
typedef struct msa_srec {
    uint64_t sid, n_tokens, raw_bytes, stored_bytes, gen;
    int64_t created, last_use;
    msa_store_shape shape;
    char fingerprint[MSA_STORE_FINGERPRINT_MAX + 1];
    char parent[MSA_STORE_NAME_MAX + 1];
    int32_t params[MSA_SREC_PARAMS];
} msa_srec;

/* A block entry, decoded. */
typedef struct msa_bent {
    uint32_t n_tokens, stored_len, raw_len;
    uint64_t id;
    char tag[MSA_STORE_TAG_MAX + 1];
} msa_bent;

struct msa_store_session {
    msa_store *st;
    char name[MSA_STORE_NAME_MAX + 1];
    msa_srec rec;
    MDB_txn *rtxn;
    int reading;
    msa_store_txn *txn;
    /* readahead of sequential block reads (store.c, read_one) */
    int ra_layer, ra_kv;
    uint64_t ra_last, ra_next; /* the last block read; blocks below ra_next are asked for */
};

/* records */
int msa_srec_decode(const MDB_val *v, msa_srec *r);
size_t msa_srec_encode(const msa_srec *r, uint8_t *buf); /* buf >= MSA_SREC_MAX */
enum { MSA_SREC_MAX = 104 + MSA_STORE_FINGERPRINT_MAX + MSA_STORE_NAME_MAX + 4 + 4 * MSA_SREC_PARAMS };
int msa_bent_decode(const MDB_val *v, msa_bent *e);
size_t msa_bent_encode(const msa_bent *e, uint8_t *buf); /* buf >= 1100 */
void msa_key_tokens(uint8_t k[12], uint64_t sid, uint32_t chunk);
void msa_key_block(uint8_t k[20], uint64_t sid, uint32_t layer, uint64_t block);
int msa_shape_check(const msa_store_shape *sh);
/* MSA_OK, or MSA_EINVAL for a session name that is empty, longer than
 * MSA_STORE_NAME_MAX bytes or holds a control character. */
int msa_name_check(const char *name);
msa_codec_shape msa_codec_shape_of(const msa_store_shape *sh);
uint64_t msa_blocks_for(uint64_t n_tokens, int block_size);

/* A block value by id from the blocks table, resolved through its
 * segment pointer when it has one: MSA_OK, MSA_ENOTFOUND (no message),
 * MSA_ECORRUPT (a damaged pointer or segment, message says what), or the
 * status of an LMDB error. */
int msa_block_get(MDB_txn *t, msa_store *st, uint64_t id, MDB_val *v);

/* Writes the format record with version `ver` (a store becomes format 2
 * with its first segment pointer). */
int msa_put_format(MDB_txn *t, msa_store *st, uint32_t ver);

/* LMDB calls with a fault point in front */
int msa_put(MDB_txn *t, MDB_dbi d, MDB_val *k, MDB_val *v, unsigned flags);
int msa_del(MDB_txn *t, MDB_dbi d, MDB_val *k);

/* Runs fn in a write transaction and commits; on MDB_MAP_FULL aborts,
 * grows the map and runs fn again, so fn must have no effect outside the
 * transaction. Returns fn's status or the commit's, mapped. */
int msa_with_write(msa_store *st, int (*fn)(MDB_txn *t, void *ctx), void *ctx,
                   const char *what);
/* A read transaction (caller holds st->grow shared): begins, handling
 * MDB_MAP_RESIZED and stale readers. */
int msa_read_begin(msa_store *st, MDB_txn **t);
void msa_read_end(msa_store *st, MDB_txn *t);

/* counters in meta */
int msa_meta_next(MDB_txn *t, msa_store *st, const char *key, uint64_t *out, uint64_t n);
/* block references */
int msa_block_addref(MDB_txn *t, msa_store *st, uint64_t id);
int msa_block_release(MDB_txn *t, msa_store *st, uint64_t id);
int msa_get_srec(MDB_txn *t, msa_store *st, const char *name, msa_srec *r);
int msa_put_srec(MDB_txn *t, msa_store *st, const char *name, const msa_srec *r);
int64_t msa_unix_now(void);
/* Checks every LMDB tree page by page (lmdbraw.c) in the snapshot of a
 * fresh read transaction; deep adds overflow page headers. */
int msa_store_check_trees(msa_store *st, int deep, void (*report)(void *, const char *), void *ctx,
                          uint64_t *n_findings);
/* (Re)opens st->env from st->dir and st->params and checks the format. */
int msa_store_env_open(msa_store *st);

#endif
