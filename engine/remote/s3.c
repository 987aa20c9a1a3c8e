/*
 * s3.c: the S3 client of s3.h: libcurl with its own SigV4 signing, a
 * minimal ListObjectsV2 reader, credentials from the environment and the
 * AWS files, bounded retries with backoff.
 *
 * The XML reader is deliberately small: it looks for <Contents> elements
 * and, inside each, the text of <Key>, <Size> and <LastModified>, plus
 * <IsTruncated> and <NextContinuationToken> at the top. It never follows
 * anything out of the buffer (every search is bounded by the end of the
 * enclosing element), decodes the five XML entities and numeric character
 * references, and refuses a key that does not fit or holds a NUL.
 */
#include "engine/remote/s3.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/pull/sha256.h"

struct msa_s3 {
    const msa_s3_config *c;
    msa_s3_config *cw;      /* the same, for the counters */
    CURL *curl;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

/* ---- credentials ----------------------------------------------------------- */

static void trim(char *s) {
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = 0;
    size_t i = 0;
    while (s[i] && isspace((unsigned char)s[i])) i++;
    if (i) memmove(s, s + i, n - i + 1);
}

/* Reads `key` of section `section` (either "[name]" or "[profile name]")
 * of an INI file into out. Returns 1 when found. */
static int ini_get(const char *path, const char *profile, int config_file,
                   const char *key, char *out, size_t n) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[4096];
    int in = 0, found = 0;
    while (fgets(line, sizeof line, f)) {
        trim(line);
        if (!line[0] || line[0] == '#' || line[0] == ';') continue;
        if (line[0] == '[') {
            char *e = strchr(line, ']');
            if (!e) { in = 0; continue; }
            *e = 0;
            char *name = line + 1;
            trim(name);
            if (config_file && !strncmp(name, "profile ", 8)) { name += 8; trim(name); }
            in = !strcmp(name, profile);
            continue;
        }
        if (!in) continue;
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = 0;
        char *k = line, *v = eq + 1;
        trim(k);
        trim(v);
        if (!strcmp(k, key) && strlen(v) < n) {
            memcpy(out, v, strlen(v) + 1);
            found = 1;
        }
    }
    fclose(f);
    return found;
}

static void aws_file(const char *env, const char *name, char *out, size_t n) {
    const char *e = getenv(env);
    if (e && *e) { snprintf(out, n, "%s", e); return; }
    const char *home = getenv("HOME");
    snprintf(out, n, "%s/.aws/%s", home ? home : "", name);
}

static void set_if_empty(char *dst, size_t n, const char *v) {
    if (!dst[0] && v && *v && strlen(v) < n) memcpy(dst, v, strlen(v) + 1);
}

int msa_s3_load_credentials(msa_s3_config *c, const char *profile) {
    if (!profile || !*profile) profile = getenv("AWS_PROFILE");
    if (!profile || !*profile) profile = "default";
    char cred[4096], conf[4096];
    aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials", cred, sizeof cred);
    aws_file("AWS_CONFIG_FILE", "config", conf, sizeof conf);
    if (!c->access_key[0] && getenv("AWS_ACCESS_KEY_ID") && *getenv("AWS_ACCESS_KEY_ID")) {
        set_if_empty(c->access_key, sizeof c->access_key, getenv("AWS_ACCESS_KEY_ID"));
        set_if_empty(c->secret_key, sizeof c->secret_key, getenv("AWS_SECRET_ACCESS_KEY"));
        set_if_empty(c->session_token, sizeof c->session_token, getenv("AWS_SESSION_TOKEN"));
    }
    if (!c->access_key[0]) {
        /* the credentials file, then the config file (it may hold keys too) */
        for (int f = 0; f < 2 && !c->access_key[0]; f++) {
            const char *path = f ? conf : cred;
            char ak[256] = "", sk[256] = "", tok[2048] = "";
            if (ini_get(path, profile, f, "aws_access_key_id", ak, sizeof ak) &&
                ini_get(path, profile, f, "aws_secret_access_key", sk, sizeof sk)) {
                ini_get(path, profile, f, "aws_session_token", tok, sizeof tok);
                set_if_empty(c->access_key, sizeof c->access_key, ak);
                set_if_empty(c->secret_key, sizeof c->secret_key, sk);
                set_if_empty(c->session_token, sizeof c->session_token, tok);
            }
        }
    }
    set_if_empty(c->region, sizeof c->region, getenv("AWS_REGION"));
    set_if_empty(c->region, sizeof c->region, getenv("AWS_DEFAULT_REGION"));
    if (!c->region[0]) {
        char r[64] = "";
        if (ini_get(conf, profile, 1, "region", r, sizeof r)) set_if_empty(c->region, sizeof c->region, r);
    }
    set_if_empty(c->region, sizeof c->region, "us-east-1");
    if (!c->access_key[0] || !c->secret_key[0])
        return msa_error(MSA_EAUTH,
                         "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                         "or give profile '%s' aws_access_key_id and aws_secret_access_key in %s",
                         profile, cred);
    return MSA_OK;
}

/* ---- the client -------------------------------------------------------------- */

int msa_s3_open(const msa_s3_config *c, msa_s3 **out) {
    *out = NULL;
    pthread_once(&curl_once, curl_init_once);
    msa_s3 *s = calloc(1, sizeof *s);
    if (!s) return msa_error(MSA_ENOMEM, "s3: out of memory");
    s->c = c;
    s->cw = (msa_s3_config *)c;
    s->curl = curl_easy_init();
    if (!s->curl) { free(s); return msa_error(MSA_ENOMEM, "s3: curl_easy_init failed"); }
    *out = s;
    return MSA_OK;
}

void msa_s3_close(msa_s3 *s) {
    if (!s) return;
    curl_easy_cleanup(s->curl);
    free(s);
}

void msa_s3_resp_free(msa_s3_resp *r) {
    if (!r) return;
    free(r->body);
    r->body = NULL;
    r->len = 0;
}

int msa_s3_encode_path(const char *key, char *out, size_t n, int keep_slash) {
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        int plain = isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~' ||
                    (keep_slash && *p == '/');
        if (o + 4 > n) return -1;
        if (plain) out[o++] = (char)*p;
        else { out[o++] = '%'; out[o++] = hex[*p >> 4]; out[o++] = hex[*p & 15]; }
    }
    if (o >= n) return -1;
    out[o] = 0;
    return 0;
}

/* URL of key (NULL: the bucket) with an already encoded query (may be NULL). */
static int make_url(const msa_s3_config *c, const char *key, const char *query,
                    char *url, size_t n) {
    char path[4096] = "";
    if (key && msa_s3_encode_path(key, path, sizeof path, 1))
        return msa_error(MSA_EINVAL, "s3: key too long: %.80s...", key);
    int len;
    if (c->endpoint[0]) {
        size_t el = strlen(c->endpoint);
        while (el && c->endpoint[el - 1] == '/') el--;
        len = snprintf(url, n, "%.*s/%s/%s%s%s", (int)el, c->endpoint, c->bucket, path,
                       query ? "?" : "", query ? query : "");
    } else {
        len = snprintf(url, n, "https://%s.s3.%s.amazonaws.com/%s%s%s", c->bucket, c->region,
                       path, query ? "?" : "", query ? query : "");
    }
    if (len < 0 || (size_t)len >= n) return msa_error(MSA_EINVAL, "s3: URL too long");
    return MSA_OK;
}

typedef struct xfer {
    msa_s3_resp *r;
    size_t cap;
    const uint8_t *up;     /* upload body */
    size_t up_len, up_off;
    int oom;
} xfer;

static size_t on_body(char *p, size_t sz, size_t nm, void *u) {
    xfer *x = u;
    size_t n = sz * nm;
    if (x->r->len + n + 1 > x->cap) {
        size_t cap = x->cap ? x->cap : 4096;
        while (cap < x->r->len + n + 1) cap *= 2;
        uint8_t *b = realloc(x->r->body, cap);
        if (!b) { x->oom = 1; return 0; }
        x->r->body = b;
        x->cap = cap;
    }
    memcpy(x->r->body + x->r->len, p, n);
    x->r->len += n;
    x->r->body[x->r->len] = 0;
    return n;
}

static size_t on_read(char *p, size_t sz, size_t nm, void *u) {
    xfer *x = u;
    size_t n = sz * nm, left = x->up_len - x->up_off;
    if (n > left) n = left;
    memcpy(p, x->up + x->up_off, n);
    x->up_off += n;
    return n;
}

static int on_seek(void *u, curl_off_t off, int origin) {
    xfer *x = u;
    if (origin != SEEK_SET || off < 0 || (size_t)off > x->up_len) return CURL_SEEKFUNC_CANTSEEK;
    x->up_off = (size_t)off;
    return CURL_SEEKFUNC_OK;
}

static void header_value(const char *line, size_t n, const char *name, char *out, size_t cap) {
    size_t nl = strlen(name);
    if (n <= nl || strncasecmp(line, name, nl) || line[nl] != ':') return;
    const char *v = line + nl + 1;
    const char *e = line + n;
    while (v < e && (*v == ' ' || *v == '\t')) v++;
    while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ')) e--;
    size_t len = (size_t)(e - v);
    if (len >= cap) len = cap - 1;
    memcpy(out, v, len);
    out[len] = 0;
}

static size_t on_header(char *p, size_t sz, size_t nm, void *u) {
    xfer *x = u;
    size_t n = sz * nm;
    if (n > 5 && !strncmp(p, "HTTP/", 5)) { /* a new response (after 100-continue) */
        x->r->etag[0] = 0;
        x->r->meta_sha256[0] = 0;
    }
    header_value(p, n, "ETag", x->r->etag, sizeof x->r->etag);
    header_value(p, n, "x-amz-meta-sha256", x->r->meta_sha256, sizeof x->r->meta_sha256);
    return n;
}

static int transient_curl(CURLcode rc) {
    switch (rc) {
    case CURLE_COULDNT_CONNECT: case CURLE_OPERATION_TIMEDOUT: case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR: case CURLE_SEND_ERROR: case CURLE_GOT_NOTHING:
    case CURLE_SSL_CONNECT_ERROR: case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_HTTP2: case CURLE_HTTP2_STREAM: case CURLE_READ_ERROR:
        return 1;
    default:
        return 0;
    }
}

static void backoff(const msa_s3_config *c, int attempt) {
    double w = (c->backoff_s > 0 ? c->backoff_s : 0.2);
    for (int i = 0; i < attempt && w < 5.0; i++) w *= 2;
    if (w > 5.0) w = 5.0;
    unsigned seed = (unsigned)(uintptr_t)&w ^ (unsigned)time(NULL) ^ (unsigned)attempt;
    w *= 0.5 + (double)(rand_r(&seed) % 1000) / 2000.0; /* 0.5x .. 1x */
    struct timespec ts = {(time_t)w, (long)((w - (double)(time_t)w) * 1e9)};
    while (nanosleep(&ts, &ts) && errno == EINTR) {}
}

/* Pulls "<Code>X</Code>" out of an S3 error body for the message. */
static void error_code(const msa_s3_resp *r, char *out, size_t n) {
    out[0] = 0;
    if (!r->body) return;
    const char *a = strstr((const char *)r->body, "<Code>");
    if (!a) return;
    a += 6;
    const char *b = strstr(a, "</Code>");
    if (!b || (size_t)(b - a) >= n) return;
    memcpy(out, a, (size_t)(b - a));
    out[b - a] = 0;
}

/* One request with retries. method GET/HEAD/PUT/DELETE; body for PUT. */
static int request(msa_s3 *s, const char *method, const char *key, const char *query,
                   const void *body, size_t len, struct curl_slist *extra,
                   msa_s3_resp *r, const char *what) {
    const msa_s3_config *c = s->c;
    char url[8192];
    int rc = make_url(c, key, query, url, sizeof url);
    if (rc) return rc;
    /* payload hash: the real one for PUT, the empty body's otherwise */
    uint8_t dg[MSA_SHA256_DIGEST_SIZE];
    msa_sha256(body ? body : "", body ? len : 0, dg);
    char hex[2 * MSA_SHA256_DIGEST_SIZE + 1];
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < MSA_SHA256_DIGEST_SIZE; i++) { hex[2 * i] = hx[dg[i] >> 4]; hex[2 * i + 1] = hx[dg[i] & 15]; }
    hex[64] = 0;
    char hdr[2200];
    struct curl_slist *h = NULL;
    snprintf(hdr, sizeof hdr, "x-amz-content-sha256: %s", hex);
    h = curl_slist_append(h, hdr);
    if (c->session_token[0]) {
        snprintf(hdr, sizeof hdr, "x-amz-security-token: %s", c->session_token);
        h = curl_slist_append(h, hdr);
    }
    /* No "Expect:" override: libcurl 7.88 signs the emptied header it then
       does not send, and the server's signature differs. */
    for (struct curl_slist *e = extra; e; e = e->next) h = curl_slist_append(h, e->data);
    if (!h) return msa_error(MSA_ENOMEM, "s3: out of memory");
    char sigv4[128], userpwd[600], errbuf[CURL_ERROR_SIZE];
    snprintf(sigv4, sizeof sigv4, "aws:amz:%s:s3", c->region);
    snprintf(userpwd, sizeof userpwd, "%s:%s", c->access_key, c->secret_key);
    int max = c->max_retries >= 0 ? c->max_retries : 5;
    int status = MSA_ENET;
    for (int attempt = 0;; attempt++) {
        memset(r, 0, sizeof *r);
        r->content_length = -1;
        xfer x = {.r = r, .up = body, .up_len = len};
        CURL *cu = s->curl;
        curl_easy_reset(cu);
        errbuf[0] = 0;
        curl_easy_setopt(cu, CURLOPT_URL, url);
        curl_easy_setopt(cu, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(cu, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(cu, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(cu, CURLOPT_SSL_VERIFYHOST, 2L);
        curl_easy_setopt(cu, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(cu, CURLOPT_USERAGENT, "msa-mem/0.1");
        curl_easy_setopt(cu, CURLOPT_CONNECTTIMEOUT, c->connect_timeout_s > 0 ? c->connect_timeout_s : 10L);
        curl_easy_setopt(cu, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(cu, CURLOPT_LOW_SPEED_TIME, c->stall_timeout_s > 0 ? c->stall_timeout_s : 30L);
        curl_easy_setopt(cu, CURLOPT_AWS_SIGV4, sigv4);
        curl_easy_setopt(cu, CURLOPT_USERPWD, userpwd);
        curl_easy_setopt(cu, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(cu, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(cu, CURLOPT_HEADERDATA, &x);
        curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(cu, CURLOPT_WRITEDATA, &x);
        if (!strcmp(method, "HEAD")) curl_easy_setopt(cu, CURLOPT_NOBODY, 1L);
        else if (!strcmp(method, "PUT")) {
            curl_easy_setopt(cu, CURLOPT_UPLOAD, 1L);
            curl_easy_setopt(cu, CURLOPT_READFUNCTION, on_read);
            curl_easy_setopt(cu, CURLOPT_READDATA, &x);
            curl_easy_setopt(cu, CURLOPT_SEEKFUNCTION, on_seek);
            curl_easy_setopt(cu, CURLOPT_SEEKDATA, &x);
            curl_easy_setopt(cu, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
            curl_easy_setopt(cu, CURLOPT_EXPECT_100_TIMEOUT_MS, 500L);
        } else if (strcmp(method, "GET")) curl_easy_setopt(cu, CURLOPT_CUSTOMREQUEST, method);
        __atomic_add_fetch(&s->cw->requests, 1, __ATOMIC_RELAXED);
        CURLcode cr = curl_easy_perform(cu);
        long code = 0;
        curl_easy_getinfo(cu, CURLINFO_RESPONSE_CODE, &code);
        curl_off_t cl = -1;
        curl_easy_getinfo(cu, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
        r->status = code;
        r->content_length = cl;
        int retry = 0;
        if (x.oom) { status = msa_error(MSA_ENOMEM, "s3: out of memory reading %s", what); }
        else if (cr != CURLE_OK) {
            status = msa_error(MSA_ENET, "s3: %s %s: %s", method, what,
                               errbuf[0] ? errbuf : curl_easy_strerror(cr));
            retry = transient_curl(cr);
        } else if (strcmp(method, "HEAD") && cl >= 0 && (size_t)cl != r->len && code < 300) {
            status = msa_error(MSA_ENET, "s3: %s %s: %zu of %lld bytes", method, what, r->len,
                               (long long)cl);
            retry = 1;
        } else if (code >= 200 && code < 300) {
            status = MSA_OK;
        } else {
            char ec[128];
            error_code(r, ec, sizeof ec);
            retry = code >= 500 || code == 408 || code == 429;
            int st = code == 404 ? MSA_ENOTFOUND
                   : code == 401 || code == 403 ? MSA_EAUTH
                   : code == 412 ? MSA_EBUSY
                   : code == 409 ? MSA_EBUSY
                   : retry ? MSA_ENET : MSA_EIO;
            status = msa_error(st, "s3: %s %s: HTTP %ld%s%s", method, what, code,
                               ec[0] ? " " : "", ec);
        }
        if (status == MSA_OK || !retry || attempt >= max) {
            if (status != MSA_OK) msa_s3_resp_free(r);
            else if (!r->body) { /* an empty body: keep a valid pointer */
                r->body = calloc(1, 1);
                if (!r->body) status = msa_error(MSA_ENOMEM, "s3: out of memory");
            }
            if (status != MSA_OK && retry && attempt >= max && attempt > 0)
                msa_error_context(status, "after %d attempts", attempt + 1);
            break;
        }
        msa_s3_resp_free(r);
        __atomic_add_fetch(&s->cw->retries, 1, __ATOMIC_RELAXED);
        backoff(c, attempt);
    }
    curl_slist_free_all(h);
    return status;
}

int msa_s3_put(msa_s3 *s, const char *key, const void *body, size_t len, int cond,
               const char *etag, const char *meta_sha256, char *etag_out) {
    struct curl_slist *ex = NULL;
    char hdr[256];
    if (cond == MSA_S3_PUT_CREATE) ex = curl_slist_append(ex, "If-None-Match: *");
    else if (cond == MSA_S3_PUT_IF_MATCH) {
        snprintf(hdr, sizeof hdr, "If-Match: %s", etag ? etag : "\"\"");
        ex = curl_slist_append(ex, hdr);
    }
    if (meta_sha256) {
        snprintf(hdr, sizeof hdr, "x-amz-meta-sha256: %s", meta_sha256);
        ex = curl_slist_append(ex, hdr);
    }
    ex = curl_slist_append(ex, "Content-Type: application/octet-stream");
    if (!ex) return msa_error(MSA_ENOMEM, "s3: out of memory");
    msa_s3_resp r;
    int rc = request(s, "PUT", key, NULL, body ? body : "", len, ex, &r, key);
    curl_slist_free_all(ex);
    if (rc == MSA_EBUSY && cond == MSA_S3_PUT_CREATE)
        return msa_error(MSA_EEXIST, "s3: %s exists", key);
    if (rc == MSA_ENOTFOUND && cond == MSA_S3_PUT_IF_MATCH)
        return msa_error(MSA_EBUSY, "s3: %s was removed meanwhile", key);
    if (rc) return rc;
    if (etag_out) snprintf(etag_out, 128, "%s", r.etag);
    msa_s3_resp_free(&r);
    return MSA_OK;
}

int msa_s3_get(msa_s3 *s, const char *key, int head_only, msa_s3_resp *r) {
    return request(s, head_only ? "HEAD" : "GET", key, NULL, NULL, 0, NULL, r, key);
}

int msa_s3_delete(msa_s3 *s, const char *key) {
    msa_s3_resp r;
    int rc = request(s, "DELETE", key, NULL, NULL, 0, NULL, &r, key);
    if (rc == MSA_ENOTFOUND) return MSA_OK;
    if (!rc) msa_s3_resp_free(&r);
    return rc;
}

/* ---- ListObjectsV2 ------------------------------------------------------------- */

/* The text of the first <tag>...</tag> in [p, end): *a, *b bound it. */
static int find_elem(const char *p, const char *end, const char *tag, const char **a,
                     const char **b) {
    char open[64], close[64];
    snprintf(open, sizeof open, "<%s>", tag);
    snprintf(close, sizeof close, "</%s>", tag);
    size_t ol = strlen(open), cl = strlen(close);
    const char *o = memmem(p, (size_t)(end - p), open, ol);
    if (!o) return 0;
    o += ol;
    const char *c = memmem(o, (size_t)(end - o), close, cl);
    if (!c) return 0;
    *a = o;
    *b = c;
    return 1;
}

/* Decodes XML text [a, b) into out (n bytes). -1 on overflow or a bad entity. */
static int xml_text(const char *a, const char *b, char *out, size_t n) {
    size_t o = 0;
    while (a < b) {
        unsigned long ch;
        if (*a == '&') {
            const char *semi = memchr(a, ';', (size_t)(b - a));
            if (!semi || semi - a > 10) return -1;
            size_t el = (size_t)(semi - a - 1);
            const char *e = a + 1;
            if (el == 3 && !strncmp(e, "amp", 3)) ch = '&';
            else if (el == 2 && !strncmp(e, "lt", 2)) ch = '<';
            else if (el == 2 && !strncmp(e, "gt", 2)) ch = '>';
            else if (el == 4 && !strncmp(e, "quot", 4)) ch = '"';
            else if (el == 4 && !strncmp(e, "apos", 4)) ch = '\'';
            else if (el >= 2 && e[0] == '#') {
                char num[12];
                memcpy(num, e + 1, el - 1);
                num[el - 1] = 0;
                char *end;
                ch = num[0] == 'x' ? strtoul(num + 1, &end, 16) : strtoul(num, &end, 10);
                if (*end || ch == 0 || ch > 0x10FFFF) return -1;
            } else return -1;
            a = semi + 1;
        } else {
            ch = (unsigned char)*a++;
            if (!ch) return -1;
            if (o + 1 >= n) return -1;
            out[o++] = (char)ch;
            continue;
        }
        /* UTF-8 encode */
        char u[4];
        int ul;
        if (ch < 0x80) { u[0] = (char)ch; ul = 1; }
        else if (ch < 0x800) { u[0] = (char)(0xC0 | ch >> 6); u[1] = (char)(0x80 | (ch & 63)); ul = 2; }
        else if (ch < 0x10000) { u[0] = (char)(0xE0 | ch >> 12); u[1] = (char)(0x80 | (ch >> 6 & 63)); u[2] = (char)(0x80 | (ch & 63)); ul = 3; }
        else { u[0] = (char)(0xF0 | ch >> 18); u[1] = (char)(0x80 | (ch >> 12 & 63)); u[2] = (char)(0x80 | (ch >> 6 & 63)); u[3] = (char)(0x80 | (ch & 63)); ul = 4; }
        if (o + (size_t)ul >= n) return -1;
        memcpy(out + o, u, (size_t)ul);
        o += (size_t)ul;
    }
    out[o] = 0;
    return 0;
}

static int64_t parse_iso8601(const char *s) {
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec) != 6)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm);
}

int msa_s3_parse_list(const char *xml, size_t len,
                      int (*fn)(void *ctx, const msa_s3_object *o), void *ctx,
                      int *truncated, char *next_token, size_t n) {
    const char *p = xml, *end = xml + len;
    *truncated = 0;
    if (n) next_token[0] = 0;
    if (!memmem(xml, len, "<ListBucketResult", 17))
        return msa_error(MSA_ECORRUPT, "s3: list answer is not a ListBucketResult");
    const char *a, *b;
    for (;;) {
        const char *ca, *cb;
        if (!find_elem(p, end, "Contents", &ca, &cb)) break;
        msa_s3_object o;
        memset(&o, 0, sizeof o);
        char num[64];
        if (!find_elem(ca, cb, "Key", &a, &b) || xml_text(a, b, o.key, sizeof o.key))
            return msa_error(MSA_ECORRUPT, "s3: list answer has a bad or missing <Key>");
        if (find_elem(ca, cb, "Size", &a, &b) && !xml_text(a, b, num, sizeof num))
            o.size = strtoll(num, NULL, 10);
        if (find_elem(ca, cb, "LastModified", &a, &b) && !xml_text(a, b, num, sizeof num))
            o.last_modified = parse_iso8601(num);
        int rc = fn(ctx, &o);
        if (rc) return rc;
        p = cb + strlen("</Contents>");
    }
    char tmp[16];
    if (find_elem(xml, end, "IsTruncated", &a, &b) && !xml_text(a, b, tmp, sizeof tmp))
        *truncated = !strcmp(tmp, "true");
    if (*truncated) {
        if (!find_elem(xml, end, "NextContinuationToken", &a, &b) ||
            xml_text(a, b, next_token, n) || !next_token[0])
            return msa_error(MSA_ECORRUPT, "s3: truncated list without a continuation token");
    }
    return MSA_OK;
}

int msa_s3_list(msa_s3 *s, const char *prefix,
                int (*fn)(void *ctx, const msa_s3_object *o), void *ctx) {
    char token[2048] = "", etok[6200], epre[3200], query[10000];
    if (msa_s3_encode_path(prefix ? prefix : "", epre, sizeof epre, 0))
        return msa_error(MSA_EINVAL, "s3: prefix too long");
    for (int page = 0;; page++) {
        /* parameters in the canonical (sorted) order, values encoded, so the
           query libcurl signs is the canonical query string */
        if (token[0]) {
            if (msa_s3_encode_path(token, etok, sizeof etok, 0))
                return msa_error(MSA_ECORRUPT, "s3: continuation token too long");
            snprintf(query, sizeof query, "continuation-token=%s&list-type=2&prefix=%s", etok, epre);
        } else {
            snprintf(query, sizeof query, "list-type=2&prefix=%s", epre);
        }
        msa_s3_resp r;
        int rc = request(s, "GET", NULL, query, NULL, 0, NULL, &r, "list");
        if (rc) return rc;
        int truncated;
        rc = msa_s3_parse_list((const char *)r.body, r.len, fn, ctx, &truncated, token, sizeof token);
        msa_s3_resp_free(&r);
        if (rc) return rc;
        if (!truncated) return MSA_OK;
        if (page > 10000000) return msa_error(MSA_ECORRUPT, "s3: endless listing");
    }
}
