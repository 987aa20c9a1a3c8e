/*
 * sha256.h: SHA-256 (FIPS 180-4) for msa-mem's own use: verifying downloaded
 * model files against the digest a server states, and fingerprinting models
 * so that a session can tell which weights it was written with.
 *
 * The interface is the usual streaming one (init, update any number of
 * times, final) plus a one-shot helper, a file helper and hex formatting.
 * It is an internal header of the engine, not part of the installed API.
 * The code is plain portable C, about 300 MB/s on one core: far faster than
 * any network, and fast enough to fingerprint a model once at load.
 */
#ifndef MSA_SHA256_H
#define MSA_SHA256_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MSA_SHA256_DIGEST_SIZE 32
#define MSA_SHA256_HEX_SIZE 65 /* 64 lowercase hex digits and a NUL */

/* The running state of one hash. Plain data: it may be copied to fork a
 * hash (hash a common prefix once, then finish two different tails). */
typedef struct msa_sha256_ctx {
    uint32_t h[8];       /* chaining value */
    uint64_t n_bytes;    /* message length so far */
    uint8_t buf[64];     /* partial block */
    size_t buf_len;      /* bytes held in buf, < 64 */
} msa_sha256_ctx;

/* Starts a new hash in `s` (caller-owned storage). Cannot fail. */
void msa_sha256_init(msa_sha256_ctx *s);

/* Feeds `n` bytes of `data` (which may be NULL when n is 0). Cannot fail;
 * messages up to 2^61 - 1 bytes are hashed correctly. */
void msa_sha256_update(msa_sha256_ctx *s, const void *data, size_t n);

/* Finishes the hash and writes the 32-byte digest to `out`. `s` is left in
 * an unspecified state: call msa_sha256_init() before reusing it. */
void msa_sha256_final(msa_sha256_ctx *s, uint8_t out[MSA_SHA256_DIGEST_SIZE]);

/* One-shot: the digest of `n` bytes of `data`. */
void msa_sha256(const void *data, size_t n, uint8_t out[MSA_SHA256_DIGEST_SIZE]);

/* Writes the digest as 64 lowercase hex digits and a NUL into `hex`;
 * returns `hex`. */
char *msa_sha256_hex(const uint8_t digest[MSA_SHA256_DIGEST_SIZE],
                     char hex[MSA_SHA256_HEX_SIZE]);

/* Parses 64 hex digits (either case, nothing else) into `digest`. Returns
 * MSA_OK, or MSA_EINVAL (without recording a message, since callers use it
 * to test whether a header holds a digest) when `hex` is anything else;
 * `digest` is then unspecified. */
int msa_sha256_parse_hex(const char *hex, uint8_t digest[MSA_SHA256_DIGEST_SIZE]);

/* Feeds the first `limit` bytes of the file at `path` into `s` (all of it
 * when limit is UINT64_MAX). Returns MSA_OK; MSA_ENOTFOUND when the file does
 * not exist; MSA_EIO on a read error; MSA_EFORMAT when the file is shorter
 * than a finite `limit`. After a failure `s` holds a partial hash: start
 * over with msa_sha256_init(). */
int msa_sha256_update_file(msa_sha256_ctx *s, const char *path, uint64_t limit);

/* The digest of the whole file at `path`. Statuses as
 * msa_sha256_update_file(); `out` is unspecified after a failure. */
int msa_sha256_file(const char *path, uint8_t out[MSA_SHA256_DIGEST_SIZE]);

#ifdef __cplusplus
}
#endif

#endif /* MSA_SHA256_H */
