/*
 * test-remote.c: the parts of the remote tier that need no server
 * (engine/remote/s3.c): the ListObjectsV2 reader on real and hostile XML
 * (entities, missing or oversized keys, truncated answers, every prefix of
 * a valid answer), key percent-encoding, credentials and region from the
 * environment and from AWS's INI files with profiles, and the params
 * checks of msa_remote_open. The server cases are tests/test_remote.py.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/remote/s3.h"
#include "tests/testutil.h"

typedef struct seen {
    int n;
    char keys[8][1024];
    int64_t sizes[8], mtimes[8];
} seen;

static int on_obj(void *ctx, const msa_s3_object *o) {
    seen *s = ctx;
    if (s->n < 8) {
        snprintf(s->keys[s->n], sizeof s->keys[0], "%s", o->key);
        s->sizes[s->n] = o->size;
        s->mtimes[s->n] = o->last_modified;
    }
    s->n++;
    return 0;
}

static int stop_obj(void *ctx, const msa_s3_object *o) {
    (void)ctx;
    (void)o;
    return MSA_EINTR;
}

static const char *LIST =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
    "<Name>b</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>"
    "<IsTruncated>true</IsTruncated><NextContinuationToken>tok/+=&amp;x</NextContinuationToken>"
    "<Contents><Key>p/objects/a&amp;b&lt;c&#233;&#x41;</Key><LastModified>2026-12-04T19:10:14.000Z"
    "</LastModified><ETag>&quot;x&quot;</ETag><Size>1234</Size></Contents>"
    "<Contents><Key>p/sessions/s.json</Key><Size>7</Size></Contents>"
    "</ListBucketResult>";

static void test_list(void) {
    seen s = {0};
    int trunc = 0;
    char tok[256];
    CHECK_OK(msa_s3_parse_list(LIST, strlen(LIST), on_obj, &s, &trunc, tok, sizeof tok));
    CHECK(s.n == 2 && trunc == 1);
    CHECK(!strcmp(tok, "tok/+=&x"));
    CHECKF(!strcmp(s.keys[0], "p/objects/a&b<c\xc3\xa9" "A"), "%s", s.keys[0]);
    CHECK(s.sizes[0] == 1234 && s.mtimes[0] == 1796411414);
    CHECK(!strcmp(s.keys[1], "p/sessions/s.json") && s.sizes[1] == 7 && s.mtimes[1] == 0);

    /* every prefix of the answer: refused or parsed, never a crash or a
       key read past the buffer (ASan builds catch the latter) */
    size_t n = strlen(LIST);
    for (size_t cut = 0; cut < n; cut++) {
        char *b = malloc(cut + 1);
        memcpy(b, LIST, cut);
        b[cut] = 0;
        seen z = {0};
        int rc = msa_s3_parse_list(b, cut, on_obj, &z, &trunc, tok, sizeof tok);
        CHECK(rc == MSA_OK || rc == MSA_ECORRUPT);
        CHECK(z.n <= 2);
        free(b);
    }
    /* hostile pieces */
    const char *bad[] = {
        "<html>not s3</html>",
        "<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>", /* no key */
        "<ListBucketResult><Contents><Key>a&bogus;</Key></Contents></ListBucketResult>",
        "<ListBucketResult><Contents><Key>a&#0;</Key></Contents></ListBucketResult>",
        "<ListBucketResult><Contents><Key>a&#x110000;</Key></Contents></ListBucketResult>",
        "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>", /* no token */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        seen z = {0};
        CHECKF(msa_s3_parse_list(bad[i], strlen(bad[i]), on_obj, &z, &trunc, tok, sizeof tok) ==
                   MSA_ECORRUPT, "case %zu", i);
    }
    /* a key longer than a key may be */
    size_t big = 5000;
    char *x = malloc(big + 100);
    strcpy(x, "<ListBucketResult><Contents><Key>");
    size_t at = strlen(x);
    memset(x + at, 'k', big);
    strcpy(x + at + big, "</Key></Contents></ListBucketResult>");
    seen z = {0};
    CHECK(msa_s3_parse_list(x, strlen(x), on_obj, &z, &trunc, tok, sizeof tok) == MSA_ECORRUPT);
    free(x);
    /* an embedded NUL inside a key */
    const char nul[] = "<ListBucketResult><Contents><Key>a\0b</Key></Contents></ListBucketResult>";
    CHECK(msa_s3_parse_list(nul, sizeof nul - 1, on_obj, &z, &trunc, tok, sizeof tok) == MSA_ECORRUPT);
    /* a callback's status stops the listing */
    CHECK(msa_s3_parse_list(LIST, strlen(LIST), stop_obj, &z, &trunc, tok, sizeof tok) == MSA_EINTR);
}

static void test_encode(void) {
    char out[64];
    CHECK(!msa_s3_encode_path("p/objects/ab-_.~", out, sizeof out, 1) && !strcmp(out, "p/objects/ab-_.~"));
    CHECK(!msa_s3_encode_path("a b/+=&\xc3\xa9", out, sizeof out, 1) && !strcmp(out, "a%20b/%2B%3D%26%C3%A9"));
    CHECK(!msa_s3_encode_path("a/b", out, sizeof out, 0) && !strcmp(out, "a%2Fb"));
    CHECK(msa_s3_encode_path("0123456789012345678901234567890123456789012345678901234567890123", out, sizeof out, 1) == -1);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void test_credentials(void) {
    char dir[] = "/tmp/msa-test-remote-XXXXXX";
    if (!mkdtemp(dir)) { CHECK(0); return; }
    char cred[256], conf[256];
    snprintf(cred, sizeof cred, "%s/credentials", dir);
    snprintf(conf, sizeof conf, "%s/config", dir);
    write_file(cred, "[default]\naws_access_key_id = AKDEF\naws_secret_access_key=SKDEF\n\n"
                     "# a comment\n[work]\n aws_access_key_id = AKWORK \naws_secret_access_key = SKWORK\n"
                     "aws_session_token = TOKWORK\n");
    write_file(conf, "[default]\nregion = eu-west-1\n[profile work]\nregion=ap-south-1\n"
                     "[profile cfgonly]\naws_access_key_id=AKCFG\naws_secret_access_key=SKCFG\n");
    const char *vars[] = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                          "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) unsetenv(vars[i]);
    setenv("AWS_SHARED_CREDENTIALS_FILE", cred, 1);
    setenv("AWS_CONFIG_FILE", conf, 1);
    msa_s3_config c;
    memset(&c, 0, sizeof c);
    CHECK_OK(msa_s3_load_credentials(&c, NULL));
    CHECK(!strcmp(c.access_key, "AKDEF") && !strcmp(c.secret_key, "SKDEF") && !c.session_token[0]);
    CHECK(!strcmp(c.region, "eu-west-1"));
    memset(&c, 0, sizeof c);
    setenv("AWS_PROFILE", "work", 1);
    CHECK_OK(msa_s3_load_credentials(&c, NULL));
    CHECK(!strcmp(c.access_key, "AKWORK") && !strcmp(c.session_token, "TOKWORK"));
    CHECK(!strcmp(c.region, "ap-south-1"));
    memset(&c, 0, sizeof c);
    CHECK_OK(msa_s3_load_credentials(&c, "cfgonly")); /* keys in the config file */
    CHECK(!strcmp(c.access_key, "AKCFG") && !strcmp(c.region, "us-east-1"));
    /* the environment wins over the files */
    memset(&c, 0, sizeof c);
    setenv("AWS_ACCESS_KEY_ID", "AKENV", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "SKENV", 1);
    setenv("AWS_DEFAULT_REGION", "us-west-2", 1);
    CHECK_OK(msa_s3_load_credentials(&c, NULL));
    CHECK(!strcmp(c.access_key, "AKENV") && !strcmp(c.region, "us-west-2"));
    setenv("AWS_REGION", "sa-east-1", 1);
    memset(&c, 0, sizeof c);
    CHECK_OK(msa_s3_load_credentials(&c, NULL));
    CHECK(!strcmp(c.region, "sa-east-1"));
    /* nothing anywhere: MSA_EAUTH naming where it looked */
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) unsetenv(vars[i]);
    memset(&c, 0, sizeof c);
    CHECK(msa_s3_load_credentials(&c, "nosuch") == MSA_EAUTH);
    CHECK(strstr(msa_last_error(), "nosuch") && strstr(msa_last_error(), cred));

    /* msa_remote_open's checks */
    setenv("AWS_ACCESS_KEY_ID", "AK", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "SK", 1);
    msa_remote *r;
    msa_remote_params p = msa_remote_default_params();
    const char *bad_urls[] = {"http://b/p", "s3://", "s3://ab", "s3://Bad_Bucket/p", NULL};
    for (int i = 0; bad_urls[i]; i++) {
        p.url = bad_urls[i];
        CHECKF(msa_remote_open(&p, &r) == MSA_EINVAL && r == NULL, "%s", bad_urls[i]);
    }
    p.url = "s3://bucket/pre/fix/";
    p.endpoint = "ftp://x";
    CHECK(msa_remote_open(&p, &r) == MSA_EINVAL);
    p.endpoint = "http://127.0.0.1:1";
    CHECK_OK(msa_remote_open(&p, &r));
    /* nothing listens on port 1: a network error after the retries, fast */
    p.max_retries = 1;
    msa_remote_close(r);
    CHECK_OK(msa_remote_open(&p, &r));
    msa_remote_session_info *l;
    size_t n;
    double t0 = msa_now();
    CHECK(msa_remote_list(r, &l, &n) == MSA_ENET);
    CHECK(strstr(msa_last_error(), "2 attempts") != NULL);
    CHECK(msa_now() - t0 < 5);
    msa_remote_close(r);
    unlink(cred);
    unlink(conf);
    rmdir(dir);
}

int main(void) {
    test_list();
    test_encode();
    test_credentials();
    return t_done("test-remote");
}
