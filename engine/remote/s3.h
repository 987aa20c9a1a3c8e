/*
 * s3.h: a small S3 client on libcurl, for the remote tier (remote.c).
 *
 * Requests are signed by libcurl itself (CURLOPT_AWS_SIGV4,
 * "aws:amz:REGION:s3"); this file only builds URLs, sets the conditional
 * headers and the payload hash (x-amz-content-sha256, the real SHA-256 of
 * the body, so the body is covered by the signature), reads status codes,
 * ETags and ListObjectsV2 XML, and retries.
 *
 * Addressing: with an endpoint (a custom S3-compatible server) path style,
 * ENDPOINT/BUCKET/KEY; without one, AWS's virtual-hosted style,
 * https://BUCKET.s3.REGION.amazonaws.com/KEY. Keys are percent-encoded
 * (everything but A-Z a-z 0-9 - . _ ~ and /) so that the URL path is the
 * canonical URI libcurl signs.
 *
 * TLS: for https the peer and host name are always verified
 * (CURLOPT_SSL_VERIFYPEER/HOST); there is no switch to turn that off.
 *
 * Retries: connection errors, timeouts, a stalled or cut transfer, HTTP 5xx,
 * 408 and 429 are retried up to max_retries times with exponential backoff
 * (base 0.2 s, doubled, capped at 5 s, with jitter). Every other answer is
 * final. A client (msa_s3) holds one curl easy handle and is used by one
 * thread at a time; the configuration (msa_s3_config) is shared read-only.
 */
#ifndef MSA_REMOTE_S3_H
#define MSA_REMOTE_S3_H

#include <stddef.h>
#include <stdint.h>

typedef struct msa_s3_config {
    char endpoint[512];    /* "http://127.0.0.1:8333" or "" for AWS */
    char bucket[256];
    char region[64];
    char access_key[256];
    char secret_key[256];
    char session_token[2048]; /* "" when none */
    int max_retries;       /* default 5 */
    long connect_timeout_s;/* default 10 */
    long stall_timeout_s;  /* a transfer below 1 byte/s this long fails (30) */
    double backoff_s;      /* first wait (0.2) */
    /* counters, updated atomically by every client on this config */
    long retries, requests;
} msa_s3_config;

/* Fills region and credentials from the environment and the AWS files:
 * AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, else the
 * profile (AWS_PROFILE, else "default") of AWS_SHARED_CREDENTIALS_FILE
 * (~/.aws/credentials); AWS_REGION, AWS_DEFAULT_REGION, else the profile's
 * region in AWS_CONFIG_FILE (~/.aws/config), else us-east-1. `profile`
 * (may be NULL) overrides AWS_PROFILE. Fields already set are kept.
 * Returns 0 (MSA_OK) or MSA_EAUTH when no credentials were found. */
int msa_s3_load_credentials(msa_s3_config *c, const char *profile);

typedef struct msa_s3 msa_s3;

int msa_s3_open(const msa_s3_config *c, msa_s3 **out);
void msa_s3_close(msa_s3 *s);

/* A response body (malloc'ed, NUL-terminated past len) and headers. */
typedef struct msa_s3_resp {
    long status;
    char etag[128];        /* as the server sent it, quotes included */
    char meta_sha256[72];  /* x-amz-meta-sha256, "" when absent */
    uint8_t *body;
    size_t len;
    int64_t content_length;/* -1 when not sent */
} msa_s3_resp;
void msa_s3_resp_free(msa_s3_resp *r);

enum {
    MSA_S3_PUT_ANY = 0,      /* unconditional */
    MSA_S3_PUT_CREATE = 1,   /* If-None-Match: *  (412: it exists) */
    MSA_S3_PUT_IF_MATCH = 2  /* If-Match: etag    (412: it changed) */
};

/* PUT body under key with the condition; meta_sha256 (may be NULL) is sent
 * as x-amz-meta-sha256. Returns MSA_OK (etag_out, if given, filled; 128
 * bytes), MSA_EEXIST when a create-only PUT found the object, MSA_EBUSY
 * when an If-Match PUT found another ETag (or no object), MSA_EAUTH
 * (401/403), MSA_ENOTFOUND (no such bucket), MSA_ENET after the retries. */
int msa_s3_put(msa_s3 *s, const char *key, const void *body, size_t len,
               int cond, const char *etag, const char *meta_sha256,
               char *etag_out);

/* GET (head_only: HEAD). Returns MSA_OK with *r filled (free it), or
 * MSA_ENOTFOUND (404), MSA_EAUTH, MSA_ENET; on failure *r holds nothing.
 * A body shorter than its Content-Length is a transfer error (retried). */
int msa_s3_get(msa_s3 *s, const char *key, int head_only, msa_s3_resp *r);

/* DELETE. MSA_OK also when it was not there (S3 answers 204 either way). */
int msa_s3_delete(msa_s3 *s, const char *key);

/* One listed object. */
typedef struct msa_s3_object {
    char key[1024];
    int64_t size;
    int64_t last_modified; /* Unix seconds, 0 when unparsable */
} msa_s3_object;

/* Lists every key under prefix (ListObjectsV2, following continuation
 * tokens), calling fn for each; fn returning non-zero stops the listing
 * with that status. Returns MSA_OK, MSA_ECORRUPT for a malformed answer,
 * or the errors of msa_s3_get. */
int msa_s3_list(msa_s3 *s, const char *prefix,
                int (*fn)(void *ctx, const msa_s3_object *o), void *ctx);

/* Percent-encodes a key for a URL path (keeps '/'); 0 or -1 when it does
 * not fit. Exposed for tests. */
int msa_s3_encode_path(const char *key, char *out, size_t n, int keep_slash);

/* Parses ListObjectsV2 XML: exposed for tests. Calls fn per <Contents>;
 * *truncated and next_token (n bytes) from IsTruncated and
 * NextContinuationToken. Returns MSA_OK or MSA_ECORRUPT. */
int msa_s3_parse_list(const char *xml, size_t len,
                      int (*fn)(void *ctx, const msa_s3_object *o), void *ctx,
                      int *truncated, char *next_token, size_t n);

#endif /* MSA_REMOTE_S3_H */
