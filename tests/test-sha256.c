/*
 * test-sha256.c: engine/pull/sha256.c against the FIPS 180-2 example vectors
 * ("abc", the 448-bit two-block message, a million 'a'), against python3's
 * hashlib on random messages (lengths around every block boundary, fed in
 * random pieces so that every buffering path runs), and the file and hex
 * helpers. The hashlib part is skipped with a note when python3 is absent.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/pull/sha256.h"
#include "base/base.h"
#include "tests/testutil.h"

static void hex_of(const void *data, size_t n, char hex[MSA_SHA256_HEX_SIZE]) {
    uint8_t d[MSA_SHA256_DIGEST_SIZE];
    msa_sha256(data, n, d);
    msa_sha256_hex(d, hex);
}

/* Hashes `data` through the streaming interface in random-sized pieces. */
static void hex_streamed(const uint8_t *data, size_t n, char hex[MSA_SHA256_HEX_SIZE]) {
    msa_sha256_ctx s;
    msa_sha256_init(&s);
    size_t at = 0;
    while (at < n) {
        size_t piece = (size_t)t_randint(t_randint(4) == 0 ? 200 : 70);
        if (piece > n - at) piece = n - at;
        msa_sha256_update(&s, data + at, piece);
        at += piece;
    }
    msa_sha256_update(&s, NULL, 0);
    uint8_t d[MSA_SHA256_DIGEST_SIZE];
    msa_sha256_final(&s, d);
    msa_sha256_hex(d, hex);
}

static void test_fips_vectors(void) {
    char hex[MSA_SHA256_HEX_SIZE];
    hex_of("abc", 3, hex);
    CHECKF(!strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
           "abc: %s", hex);
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    hex_of(m448, strlen(m448), hex);
    CHECKF(!strcmp(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
           "448-bit: %s", hex);
    hex_of("", 0, hex);
    CHECKF(!strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
           "empty: %s", hex);

    /* A million 'a', fed 1000 at a time and all at once. */
    static uint8_t million[1000000];
    memset(million, 'a', sizeof million);
    const char *want = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    msa_sha256_ctx s;
    msa_sha256_init(&s);
    for (int i = 0; i < 1000; i++) msa_sha256_update(&s, million, 1000);
    uint8_t d[MSA_SHA256_DIGEST_SIZE];
    msa_sha256_final(&s, d);
    msa_sha256_hex(d, hex);
    CHECKF(!strcmp(hex, want), "million a (streamed): %s", hex);
    hex_of(million, sizeof million, hex);
    CHECKF(!strcmp(hex, want), "million a (one shot): %s", hex);

    /* A copied state forks the hash. */
    msa_sha256_ctx a, b;
    msa_sha256_init(&a);
    msa_sha256_update(&a, "ab", 2);
    b = a;
    msa_sha256_update(&a, "c", 1);
    msa_sha256_final(&a, d);
    msa_sha256_hex(d, hex);
    CHECK(!strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    msa_sha256_update(&b, "c", 1);
    msa_sha256_final(&b, d);
    CHECK(!strcmp(msa_sha256_hex(d, hex), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
}

static void test_hex_parse(void) {
    uint8_t d[MSA_SHA256_DIGEST_SIZE], e[MSA_SHA256_DIGEST_SIZE];
    char hex[MSA_SHA256_HEX_SIZE];
    msa_sha256("abc", 3, d);
    msa_sha256_hex(d, hex);
    CHECK(msa_sha256_parse_hex(hex, e) == MSA_OK && !memcmp(d, e, sizeof d));
    for (char *p = hex; *p; p++)
        if (*p >= 'a' && *p <= 'f') *p = (char)(*p - 'a' + 'A');
    CHECK(msa_sha256_parse_hex(hex, e) == MSA_OK && !memcmp(d, e, sizeof d));
    CHECK(msa_sha256_parse_hex("abc", e) == MSA_EINVAL);
    CHECK(msa_sha256_parse_hex(NULL, e) == MSA_EINVAL);
    char longer[80];
    snprintf(longer, sizeof longer, "%s0", hex);
    CHECK(msa_sha256_parse_hex(longer, e) == MSA_EINVAL);
    hex[10] = 'g';
    CHECK(msa_sha256_parse_hex(hex, e) == MSA_EINVAL);
}

/* Random messages, checked against python3's hashlib. Lengths cover 0..130
 * (every position of the padding around one and two blocks) and a spread of
 * larger ones; each is also written to a file for msa_sha256_file(). */
static void test_against_hashlib(const char *dir) {
    enum { N = 160 };
    static size_t len[N];
    static uint8_t *msg[N];
    for (int i = 0; i < N; i++) {
        len[i] = i <= 130 ? (size_t)i : (size_t)t_randint(i == N - 1 ? 3000000 : 70000);
        msg[i] = malloc(len[i] ? len[i] : 1);
        for (size_t j = 0; j < len[i]; j++) msg[i][j] = (uint8_t)t_rand_u64();
        char path[512];
        snprintf(path, sizeof path, "%s/m%03d", dir, i);
        FILE *f = fopen(path, "wb");
        CHECK(f != NULL);
        if (!f) return;
        CHECK(fwrite(msg[i], 1, len[i], f) == len[i]);
        fclose(f);
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "python3 -c 'import hashlib,sys\n"
             "for i in range(%d): print(hashlib.sha256(open(\"%%s/m%%03d\" %% (sys.argv[1], i), \"rb\").read()).hexdigest())' '%s'",
             N, dir);
    FILE *p = popen(cmd, "r");
    char line[128];
    int n_lines = 0;
    for (int i = 0; p && i < N && fgets(line, sizeof line, p); i++) {
        line[strcspn(line, "\n")] = 0;
        n_lines++;
        char one[MSA_SHA256_HEX_SIZE], streamed[MSA_SHA256_HEX_SIZE], file[MSA_SHA256_HEX_SIZE];
        hex_of(msg[i], len[i], one);
        hex_streamed(msg[i], len[i], streamed);
        char path[512];
        snprintf(path, sizeof path, "%s/m%03d", dir, i);
        uint8_t d[MSA_SHA256_DIGEST_SIZE];
        CHECK_OK(msa_sha256_file(path, d));
        msa_sha256_hex(d, file);
        CHECKF(!strcmp(one, line), "len %zu: one-shot %s, hashlib %s", len[i], one, line);
        CHECKF(!strcmp(streamed, line), "len %zu: streamed %s, hashlib %s", len[i], streamed, line);
        CHECKF(!strcmp(file, line), "len %zu: file %s, hashlib %s", len[i], file, line);
    }
    int st = p ? pclose(p) : -1;
    if (n_lines == 0 && st != 0)
        printf("note: python3 not available, hashlib comparison skipped\n");
    else
        CHECKF(n_lines == N, "python3 printed %d of %d digests", n_lines, N);

    /* Prefix hashing of a file, as a resumed download does. */
    char path[512];
    snprintf(path, sizeof path, "%s/m%03d", dir, N - 1);
    size_t cut = len[N - 1] / 3;
    msa_sha256_ctx s;
    msa_sha256_init(&s);
    CHECK_OK(msa_sha256_update_file(&s, path, cut));
    msa_sha256_update(&s, msg[N - 1] + cut, len[N - 1] - cut);
    uint8_t d[MSA_SHA256_DIGEST_SIZE], e[MSA_SHA256_DIGEST_SIZE];
    msa_sha256_final(&s, d);
    msa_sha256(msg[N - 1], len[N - 1], e);
    CHECK(!memcmp(d, e, sizeof d));
    msa_sha256_init(&s);
    CHECK(msa_sha256_update_file(&s, path, (uint64_t)len[N - 1] + 1) == MSA_EFORMAT);
    snprintf(path, sizeof path, "%s/absent", dir);
    CHECK(msa_sha256_file(path, d) == MSA_ENOTFOUND);

    for (int i = 0; i < N; i++) {
        snprintf(path, sizeof path, "%s/m%03d", dir, i);
        unlink(path);
        free(msg[i]);
    }
}

int main(void) {
    t_seed();
    test_fips_vectors();
    test_hex_parse();
    char dir[] = "/tmp/msa-test-sha256-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    test_against_hashlib(dir);
    rmdir(dir);
    return t_done("test-sha256");
}
