/*
 * sha256.c: SHA-256 as FIPS 180-4 section 6.2 describes it, written for
 * clarity first: one compression function over a 64-word message schedule,
 * big-endian loads and stores done byte by byte (so alignment and host byte
 * order never matter), and padding done in final().
 *
 * Tested in tests/test-sha256.c against the FIPS 180-2 example vectors and
 * against python3's hashlib on random messages of random lengths, fed in
 * random pieces so that every buffering path is taken.
 */
#include "engine/pull/sha256.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "base/base.h"

/* The first 32 bits of the fractional parts of the cube roots of the first
 * 64 primes (FIPS 180-4 section 4.2.2). */
static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
    0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
    0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static inline uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static inline uint32_t load_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void store_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Compresses one 64-byte block into the chaining value h. */
static void compress(uint32_t h[8], const uint8_t block[64]) {
    uint32_t w[64];
    for (int t = 0; t < 16; t++) w[t] = load_be32(block + 4 * t);
    for (int t = 16; t < 64; t++) {
        uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
        uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
        w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    uint32_t e = h[4], f = h[5], g = h[6], k = h[7];
    for (int t = 0; t < 64; t++) {
        uint32_t S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
        uint32_t ch = (e & f) ^ (~e & g);
        uint32_t t1 = k + S1 + ch + K[t] + w[t];
        uint32_t S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
        uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
        uint32_t t2 = S0 + maj;
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += k;
}

void msa_sha256_init(msa_sha256_ctx *s) {
    /* First 32 bits of the fractional parts of the square roots of the
     * first 8 primes (FIPS 180-4 section 5.3.3). */
    static const uint32_t H0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, H0, sizeof H0);
    s->n_bytes = 0;
    s->buf_len = 0;
}

void msa_sha256_update(msa_sha256_ctx *s, const void *data, size_t n) {
    const uint8_t *p = data;
    s->n_bytes += n;
    if (s->buf_len) { /* top up the partial block first */
        size_t take = 64 - s->buf_len;
        if (take > n) take = n;
        memcpy(s->buf + s->buf_len, p, take);
        s->buf_len += take;
        p += take;
        n -= take;
        if (s->buf_len < 64) return;
        compress(s->h, s->buf);
        s->buf_len = 0;
    }
    for (; n >= 64; p += 64, n -= 64) compress(s->h, p);
    if (n) {
        memcpy(s->buf, p, n);
        s->buf_len = n;
    }
}

void msa_sha256_final(msa_sha256_ctx *s, uint8_t out[MSA_SHA256_DIGEST_SIZE]) {
    /* Padding: a 1 bit, zeros up to 56 mod 64 bytes, then the length in
     * bits as a big-endian 64-bit number. */
    uint64_t bits = s->n_bytes * 8;
    s->buf[s->buf_len++] = 0x80;
    if (s->buf_len > 56) {
        memset(s->buf + s->buf_len, 0, 64 - s->buf_len);
        compress(s->h, s->buf);
        s->buf_len = 0;
    }
    memset(s->buf + s->buf_len, 0, 56 - s->buf_len);
    store_be32(s->buf + 56, (uint32_t)(bits >> 32));
    store_be32(s->buf + 60, (uint32_t)bits);
    compress(s->h, s->buf);
    for (int i = 0; i < 8; i++) store_be32(out + 4 * i, s->h[i]);
}

void msa_sha256(const void *data, size_t n, uint8_t out[MSA_SHA256_DIGEST_SIZE]) {
    msa_sha256_ctx s;
    msa_sha256_init(&s);
    msa_sha256_update(&s, data, n);
    msa_sha256_final(&s, out);
}

char *msa_sha256_hex(const uint8_t digest[MSA_SHA256_DIGEST_SIZE],
                     char hex[MSA_SHA256_HEX_SIZE]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < MSA_SHA256_DIGEST_SIZE; i++) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 15];
    }
    hex[64] = 0;
    return hex;
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int msa_sha256_parse_hex(const char *hex, uint8_t digest[MSA_SHA256_DIGEST_SIZE]) {
    if (!hex) return MSA_EINVAL;
    for (int i = 0; i < MSA_SHA256_DIGEST_SIZE; i++) {
        int hi = hex_value(hex[2 * i]);
        if (hi < 0) return MSA_EINVAL;
        int lo = hex_value(hex[2 * i + 1]);
        if (lo < 0) return MSA_EINVAL;
        digest[i] = (uint8_t)(hi << 4 | lo);
    }
    return hex[64] ? MSA_EINVAL : MSA_OK;
}

int msa_sha256_update_file(msa_sha256_ctx *s, const char *path, uint64_t limit) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return msa_error_errno(errno, "%s", path);
    uint8_t buf[1 << 14];
    uint64_t left = limit;
    while (left) {
        size_t want = left < sizeof buf ? (size_t)left : sizeof buf;
        size_t got = fread(buf, 1, want, f);
        msa_sha256_update(s, buf, got);
        left -= got;
        if (got < want) break;
    }
    int rc = MSA_OK;
    if (ferror(f)) rc = msa_error(MSA_EIO, "%s: read error", path);
    else if (limit != UINT64_MAX && left)
        rc = msa_error(MSA_EFORMAT, "%s: %llu bytes short of the %llu expected", path,
                       (unsigned long long)left, (unsigned long long)limit);
    fclose(f);
    return rc;
}

int msa_sha256_file(const char *path, uint8_t out[MSA_SHA256_DIGEST_SIZE]) {
    msa_sha256_ctx s;
    msa_sha256_init(&s);
    int rc = msa_sha256_update_file(&s, path, UINT64_MAX);
    if (rc == MSA_OK) msa_sha256_final(&s, out);
    return rc;
}
