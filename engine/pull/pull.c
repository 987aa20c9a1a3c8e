/*
 * pull.c: msa_pull(), the model downloader behind `msa-mem pull`.
 *
 * One file, one libcurl easy transfer per attempt. The bytes go to
 * DEST.part (locked with flock so that two pulls cannot interleave) and are
 * hashed as they arrive; an attempt that finds DEST.part reads it back
 * through SHA-256 first and asks for the rest with "Range: bytes=N-". The
 * answer decides what happens to the bytes already there:
 *
 *   206 with Content-Range starting at N   append (a resume)
 *   200                                    the server ignored Range: truncate
 *                                          and take the whole file
 *   206 starting elsewhere, or 416         truncate and start over (twice at
 *                                          most, not counted as retries)
 *
 * Headers of every response, redirects included, are read: Hugging Face
 * states the LFS sha256 in X-Linked-Etag on its 302 to the CDN, and the CDN's
 * own answer carries the size. Transient failures (connection lost,
 * timeouts, a transfer that stalls, HTTP 408/429/5xx) are retried with
 * exponential backoff, each retry resuming from what reached the disk.
 * Only a complete, verified file is fsync'ed and renamed to DEST.
 *
 * Known limits: a file that changes on the server between two attempts is
 * caught only by a stated digest (If-Range is not used, since the first
 * attempt's validator is not kept on disk); a single connection per file.
 */
#include "engine/pull/pull.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "engine/pull/sha256.h"
#include "base/base.h"

#define DEFAULT_ENDPOINT "https://huggingface.co"

msa_pull_params msa_pull_default_params(void) {
    msa_pull_params p;
    memset(&p, 0, sizeof p);
    p.max_retries = 5;
    p.retry_wait_s = 1.0;
    p.connect_timeout_s = 30;
    p.stall_timeout_s = 60;
    p.resume = 1;
    return p;
}

/* ---- sources, URLs and paths ---------------------------------------------- */

static const char *endpoint_or_default(const char *endpoint) {
    if (endpoint && *endpoint) return endpoint;
    const char *e = getenv("HF_ENDPOINT");
    return e && *e ? e : DEFAULT_ENDPOINT;
}

static int is_url(const char *s) {
    return !strncasecmp(s, "http://", 7) || !strncasecmp(s, "https://", 8);
}

/* The "scheme://host[:port]" prefix of a URL (user info dropped), lowercased,
 * with the default port made explicit so that equal origins compare equal. */
static void url_origin(const char *url, char *out, size_t n) {
    const char *p = strstr(url, "://");
    out[0] = 0;
    if (!p) return;
    size_t scheme_len = (size_t)(p - url);
    const char *host = p + 3, *end = host + strcspn(host, "/?#");
    const char *at = memchr(host, '@', (size_t)(end - host));
    if (at) host = at + 1;
    const char *colon = NULL;
    for (const char *q = host; q < end; q++)
        if (*q == ':') colon = q;
    const char *bracket = memchr(host, ']', (size_t)(end - host)); /* [v6] */
    if (colon && bracket && colon < bracket) colon = NULL;
    const char *port = colon ? colon + 1 : (scheme_len == 5 ? "443" : "80");
    int port_len = colon ? (int)(end - colon - 1) : (int)strlen(port);
    snprintf(out, n, "%.*s://%.*s:%.*s", (int)scheme_len, url,
             (int)((colon ? colon : end) - host), host, port_len, port);
    for (char *q = out; *q; q++) *q = (char)tolower((unsigned char)*q);
}

/* Appends `s` (length len) to out, percent-encoding all but unreserved
 * characters and, when keep_slash, '/'. Returns 0, or -1 when out is full. */
static int append_encoded(char *out, size_t n, const char *s, size_t len, int keep_slash) {
    size_t at = strlen(out);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        int plain = isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' ||
                    (keep_slash && c == '/');
        if (at + (plain ? 1 : 3) >= n) return -1;
        if (plain) out[at++] = (char)c;
        else at += (size_t)snprintf(out + at, n - at, "%%%02X", c);
    }
    out[at] = 0;
    return 0;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The last path segment of a URL, percent-decoded, into name. */
static void url_file_name(const char *url, char *name, size_t n) {
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    size_t path_end = strcspn(p, "?#");
    const char *seg = p, *slash = NULL;
    for (const char *q = p; q < p + path_end; q++)
        if (*q == '/') slash = q;
    seg = slash ? slash + 1 : p + path_end; /* no '/': host only, no name */
    size_t o = 0;
    for (const char *q = seg; q < p + path_end && o + 1 < n; q++) {
        if (*q == '%' && hexval(q[1]) >= 0 && hexval(q[2]) >= 0) {
            name[o++] = (char)(hexval(q[1]) << 4 | hexval(q[2]));
            q += 2;
        } else {
            name[o++] = *q;
        }
    }
    name[o] = 0;
}

int msa_pull_resolve(const char *source, const char *endpoint, char *url,
                     size_t url_n, char *name, size_t name_n, int *is_hf) {
    if (!source || !*source || !url || !name || !is_hf || !url_n || !name_n)
        return msa_error(MSA_EINVAL, "pull: no source given");
    const char *ep = endpoint_or_default(endpoint);
    if (!is_url(ep))
        return msa_error(MSA_EINVAL, "pull: endpoint '%s' is not an http(s) URL", ep);
    char ep_origin[512], src_origin[512];
    url_origin(ep, ep_origin, sizeof ep_origin);
    url[0] = 0;
    if (is_url(source)) {
        if (strlen(source) >= url_n) return msa_error(MSA_EINVAL, "pull: URL too long");
        strcpy(url, source);
    } else {
        /* ORG/REPO[@REVISION]:PATH */
        const char *colon = strchr(source, ':');
        if (!colon || !colon[1])
            return msa_error(MSA_EINVAL,
                             "pull: '%s' is neither an http(s) URL nor ORG/REPO[@REVISION]:PATH",
                             source);
        const char *at = memchr(source, '@', (size_t)(colon - source));
        const char *repo_end = at ? at : colon;
        const char *slash = memchr(source, '/', (size_t)(repo_end - source));
        if (!slash || slash == source || slash + 1 == repo_end ||
            memchr(slash + 1, '/', (size_t)(repo_end - slash - 1)) || (at && at + 1 == colon))
            return msa_error(MSA_EINVAL,
                             "pull: '%s': expected ORG/REPO:PATH or ORG/REPO@REVISION:PATH",
                             source);
        const char *path = colon + 1;
        while (*path == '/') path++;
        size_t ep_len = strlen(ep);
        while (ep_len && ep[ep_len - 1] == '/') ep_len--;
        if (ep_len + 2 > url_n) return msa_error(MSA_EINVAL, "pull: URL too long");
        snprintf(url, url_n, "%.*s/", (int)ep_len, ep);
        if (append_encoded(url, url_n, source, (size_t)(repo_end - source), 1) ||
            append_encoded(url, url_n, "/resolve/", 9, 1) ||
            (at ? append_encoded(url, url_n, at + 1, (size_t)(colon - at - 1), 0)
                : append_encoded(url, url_n, "main", 4, 0)) ||
            append_encoded(url, url_n, "/", 1, 1) ||
            append_encoded(url, url_n, path, strlen(path), 1))
            return msa_error(MSA_EINVAL, "pull: URL too long");
    }
    url_file_name(url, name, name_n);
    if (!name[0] || !strcmp(name, ".") || !strcmp(name, "..") || strchr(name, '/'))
        return msa_error(MSA_EINVAL, "pull: '%s' names no file; give DEST", source);
    url_origin(url, src_origin, sizeof src_origin);
    *is_hf = src_origin[0] && !strcmp(src_origin, ep_origin);
    return MSA_OK;
}

int msa_pull_models_dir(char *buf, size_t n) {
    const char *xdg = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
    int len;
    if (xdg && *xdg) len = snprintf(buf, n, "%s/msa-mem/models/", xdg);
    else if (home && *home) len = snprintf(buf, n, "%s/.local/share/msa-mem/models/", home);
    else return msa_error(MSA_ENOTFOUND, "pull: neither XDG_DATA_HOME nor HOME is set; give DEST");
    if (len < 0 || (size_t)len >= n) return msa_error(MSA_EINVAL, "pull: models folder path too long");
    return MSA_OK;
}

/* mkdir -p of the directory part of `path` (everything before the last '/'). */
static int make_parent_dirs(const char *path) {
    char tmp[4096];
    if (strlen(path) >= sizeof tmp) return msa_error(MSA_EINVAL, "%s: path too long", path);
    strcpy(tmp, path);
    char *last = strrchr(tmp, '/');
    if (!last || last == tmp) return MSA_OK;
    *last = 0;
    for (char *p = tmp + 1; ; p++) {
        if (*p == '/' || !*p) {
            char c = *p;
            *p = 0;
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
                return msa_error(errno == ENOSPC ? MSA_ENOSPC : MSA_EIO,
                                 "cannot create folder %s: %s", tmp, strerror(errno));
            *p = c;
            if (!c) break;
        }
    }
    return MSA_OK;
}

/* ---- one transfer ------------------------------------------------------------ */

/* Where a digest was stated, best first. */
enum { SRC_NONE = 99, SRC_PARAM = 0, SRC_LINKED = 1, SRC_XCHECKSUM = 2,
       SRC_REPR = 3, SRC_DIGEST = 4, SRC_ETAG = 5 };
static const char *const src_names[] = {"--sha256", "X-Linked-Etag", "X-Checksum-Sha256",
                                        "Repr-Digest", "Digest", "ETag"};

enum { ABORT_NONE, ABORT_STATUS, ABORT_RESTART };

typedef struct xfer {
    int fd;
    uint64_t offset;        /* bytes on disk when the body began */
    uint64_t written;       /* bytes appended in this attempt */
    msa_sha256_ctx hash;    /* over bytes 0 .. offset + written */
    int status;             /* of the latest response */
    int started;            /* the body of the final response has begun */
    int discard;            /* final response is an error page: drop it */
    long long content_length;            /* -1: none */
    int have_cr;
    uint64_t cr_start, cr_total;         /* Content-Range; cr_total 0: '*' */
    int total_known;
    uint64_t total;
    uint8_t stated[MSA_SHA256_DIGEST_SIZE]; /* best digest seen so far */
    int stated_src;                       /* SRC_* */
    char server_msg[256];                 /* X-Error-Message */
    long retry_after;                     /* seconds, -1: none */
    int abort;                            /* ABORT_* */
    int abort_status;                     /* with ABORT_STATUS */
    msa_pull_progress_fn progress;
    void *user;
    const char *part_path;
} xfer;

static void trim(const char **b, const char **e) {
    while (*b < *e && isspace((unsigned char)**b)) (*b)++;
    while (*e > *b && isspace((unsigned char)(*e)[-1])) (*e)--;
}

static void state_digest(xfer *x, int src, const uint8_t d[MSA_SHA256_DIGEST_SIZE]) {
    if (src < x->stated_src) {
        memcpy(x->stated, d, MSA_SHA256_DIGEST_SIZE);
        x->stated_src = src;
    }
}

/* A 64-hex value, optionally quoted ("W/" weak tags are rejected). */
static void take_hex_digest(xfer *x, int src, const char *b, const char *e) {
    if (e - b >= 2 && *b == '"' && e[-1] == '"') b++, e--;
    if (e - b != 64) return;
    char hex[MSA_SHA256_HEX_SIZE];
    memcpy(hex, b, 64);
    hex[64] = 0;
    uint8_t d[MSA_SHA256_DIGEST_SIZE];
    if (msa_sha256_parse_hex(hex, d) == MSA_OK) state_digest(x, src, d);
}

static int b64val(int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
}

/* "sha-256=<base64>" (Digest) or "sha-256=:<base64>:" (Repr-Digest) among
 * comma-separated entries. */
static void take_b64_digest(xfer *x, int src, const char *b, const char *e) {
    while (b < e) {
        const char *item_end = memchr(b, ',', (size_t)(e - b));
        if (!item_end) item_end = e;
        const char *ib = b, *ie = item_end;
        trim(&ib, &ie);
        if (ie - ib > 8 && !strncasecmp(ib, "sha-256=", 8)) {
            ib += 8;
            if (ie - ib >= 2 && *ib == ':' && ie[-1] == ':') ib++, ie--;
            uint8_t d[48];
            size_t n = 0;
            uint32_t acc = 0;
            int bits = 0, bad = 0;
            for (const char *q = ib; q < ie && *q != '='; q++) {
                int v = b64val((unsigned char)*q);
                if (v < 0 || n >= sizeof d) { bad = 1; break; }
                acc = acc << 6 | (uint32_t)v;
                bits += 6;
                if (bits >= 8) {
                    bits -= 8;
                    d[n++] = (uint8_t)(acc >> bits);
                }
            }
            if (!bad && n == MSA_SHA256_DIGEST_SIZE) state_digest(x, src, d);
        }
        b = item_end + 1;
    }
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *ud) {
    xfer *x = ud;
    size_t len = size * nitems;
    const char *b = buf, *e = buf + len;
    if (len >= 5 && !strncmp(buf, "HTTP/", 5)) { /* a new response begins */
        const char *sp = memchr(buf, ' ', len);
        x->status = sp ? atoi(sp + 1) : 0;
        x->content_length = -1;
        x->have_cr = 0;
        x->server_msg[0] = 0;
        x->retry_after = -1;
        return len;
    }
    const char *colon = memchr(buf, ':', len);
    if (!colon) return len;
    const char *name = b, *name_end = colon, *v = colon + 1;
    trim(&name, &name_end);
    trim(&v, &e);
    size_t nl = (size_t)(name_end - name);
#define IS(h) (nl == sizeof(h) - 1 && !strncasecmp(name, h, nl))
    if (IS("Content-Length")) {
        x->content_length = strtoll(v, NULL, 10);
    } else if (IS("Content-Range")) {
        unsigned long long s = 0, t = 0;
        char tail[32] = "";
        if (e - v > 6 && !strncasecmp(v, "bytes ", 6) &&
            sscanf(v + 6, "%llu-%*u/%31[0-9*]", &s, tail) == 2) {
            x->have_cr = 1;
            x->cr_start = s;
            t = tail[0] == '*' ? 0 : strtoull(tail, NULL, 10);
            x->cr_total = t;
        }
    } else if (IS("X-Linked-Etag")) {
        take_hex_digest(x, SRC_LINKED, v, e);
    } else if (IS("X-Checksum-Sha256")) {
        take_hex_digest(x, SRC_XCHECKSUM, v, e);
    } else if (IS("Repr-Digest")) {
        take_b64_digest(x, SRC_REPR, v, e);
    } else if (IS("Digest")) {
        take_b64_digest(x, SRC_DIGEST, v, e);
    } else if (IS("ETag")) {
        take_hex_digest(x, SRC_ETAG, v, e);
    } else if (IS("X-Error-Message")) {
        snprintf(x->server_msg, sizeof x->server_msg, "%.*s", (int)(e - v), v);
    } else if (IS("Retry-After")) {
        if (v < e && isdigit((unsigned char)*v)) x->retry_after = strtol(v, NULL, 10);
    }
#undef IS
    return len;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int fail_abort(xfer *x, int status) {
    x->abort = ABORT_STATUS;
    x->abort_status = status;
    return -1;
}

/* Decides, when the final response's body begins, what to do with the
 * bytes already on disk. Returns 0 to go on, -1 to abort the transfer. */
static int body_begins(xfer *x) {
    x->started = 1;
    if (x->status == 206) {
        if (!x->have_cr || x->cr_start != x->offset) {
            x->abort = ABORT_RESTART;
            return -1;
        }
        x->total_known = x->cr_total > 0;
        x->total = x->cr_total;
    } else if (x->status == 200) {
        if (x->offset > 0) { /* Range ignored: the whole file comes again */
            if (ftruncate(x->fd, 0) != 0 || lseek(x->fd, 0, SEEK_SET) != 0)
                return fail_abort(x, msa_error(MSA_EIO, "%s: cannot truncate: %s",
                                               x->part_path, strerror(errno)));
            msa_sha256_init(&x->hash);
            x->offset = 0;
        }
        x->total_known = x->content_length >= 0;
        x->total = x->total_known ? (uint64_t)x->content_length : 0;
    } else {
        x->discard = 1;
        return 0;
    }
    struct statvfs vfs;
    if (x->total_known && x->total > x->offset && fstatvfs(x->fd, &vfs) == 0) {
        uint64_t free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
        uint64_t need = x->total - x->offset;
        if (free_bytes < need)
            return fail_abort(x, msa_error(MSA_ENOSPC,
                                           "%s: %llu bytes still to download but only %llu free "
                                           "on that disk; free some space and pull again",
                                           x->part_path, (unsigned long long)need,
                                           (unsigned long long)free_bytes));
    }
    return 0;
}

static size_t on_body(char *buf, size_t size, size_t nmemb, void *ud) {
    xfer *x = ud;
    size_t n = size * nmemb;
    if (!x->started && body_begins(x) != 0) return 0;
    if (x->discard) return n;
    if (write_all(x->fd, buf, n) != 0) {
        int e = errno;
        fail_abort(x, msa_error(e == ENOSPC || e == EDQUOT ? MSA_ENOSPC : MSA_EIO,
                                "%s: write failed: %s%s", x->part_path, strerror(e),
                                e == ENOSPC || e == EDQUOT
                                    ? " (the partial download is kept: free some space "
                                      "and pull again to resume, or delete it)"
                                    : ""));
        return 0;
    }
    msa_sha256_update(&x->hash, buf, n);
    x->written += n;
    if (x->progress && x->progress(x->user, x->offset + x->written, x->total_known ? x->total : 0)) {
        fail_abort(x, msa_error(MSA_EINTR, "pull cancelled; the partial download is kept in %s",
                                x->part_path));
        return 0;
    }
    return n;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

static int transient_curl(CURLcode c) {
    switch (c) {
    case CURLE_COULDNT_CONNECT: case CURLE_OPERATION_TIMEDOUT: case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR: case CURLE_SEND_ERROR: case CURLE_GOT_NOTHING:
    case CURLE_HTTP2: case CURLE_HTTP2_STREAM: case CURLE_SSL_CONNECT_ERROR:
        return 1;
    default:
        return 0;
    }
}

static int transient_http(int status) {
    return status == 408 || status == 429 || status == 500 || status == 502 ||
           status == 503 || status == 504;
}

/* Sleeps `seconds`, calling progress about ten times a second; returns
 * non-zero when the caller cancels. */
static int backoff_wait(double seconds, xfer *x, uint64_t done) {
    double end = msa_now() + seconds;
    while (msa_now() < end) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        if (x->progress && x->progress(x->user, done, x->total_known ? x->total : 0)) return 1;
    }
    return 0;
}

static int fsync_parent(const char *path) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) dir[1] = 0;
    else if (slash) *slash = 0;
    else strcpy(dir, ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* ---- msa_pull ---------------------------------------------------------------- */

int msa_pull(const char *source, const char *dest, const msa_pull_params *params,
             msa_pull_progress_fn progress, void *user, msa_pull_result *result) {
    msa_pull_params p = params ? *params : msa_pull_default_params();
    char url[4096], name[1024], path[4096], part[4200];
    int is_hf = 0, rc;
    if ((rc = msa_pull_resolve(source, p.endpoint, url, sizeof url, name, sizeof name, &is_hf)))
        return rc;
    uint8_t want[MSA_SHA256_DIGEST_SIZE];
    if (p.sha256 && msa_sha256_parse_hex(p.sha256, want) != MSA_OK)
        return msa_error(MSA_EINVAL, "pull: expected sha256 '%s' is not 64 hex digits", p.sha256);

    /* The destination. */
    struct stat st;
    if (!dest || !*dest) {
        if ((rc = msa_pull_models_dir(path, sizeof path))) return rc;
        if (strlen(path) + strlen(name) >= sizeof path)
            return msa_error(MSA_EINVAL, "pull: destination path too long");
        strcat(path, name);
    } else {
        size_t dl = strlen(dest);
        int as_dir = dest[dl - 1] == '/' || (stat(dest, &st) == 0 && S_ISDIR(st.st_mode));
        if (dl + strlen(name) + 2 >= sizeof path)
            return msa_error(MSA_EINVAL, "pull: destination path too long");
        snprintf(path, sizeof path, "%s%s%s", dest,
                 as_dir && dest[dl - 1] != '/' ? "/" : "", as_dir ? name : "");
    }
    snprintf(part, sizeof part, "%s.part", path);
    if (!p.overwrite && stat(path, &st) == 0)
        return msa_error(MSA_EEXIST, "%s already exists (overwrite it with --force)", path);
    if ((rc = make_parent_dirs(path))) return rc;

    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return msa_error(MSA_ENET, "libcurl failed to initialise: %s",
                         curl_easy_strerror(curl_init_rc));

    int fd = open(part, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return msa_error_errno(errno, "cannot create %s", part);
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        close(fd);
        return msa_error(MSA_EBUSY, "%s is being written by another pull", part);
    }

    const char *token = p.token ? p.token : getenv("HF_TOKEN");
    int send_token = is_hf && token && *token;
    xfer x;
    memset(&x, 0, sizeof x);
    x.fd = fd;
    x.progress = progress;
    x.user = user;
    x.part_path = part;
    uint64_t resumed_bytes = 0;
    int attempt = 0, restarts = 0, first = 1;
    char errbuf[CURL_ERROR_SIZE];
    rc = MSA_OK;

    for (;;) {
        /* What is on disk now, and its hash. */
        if (fstat(fd, &st) != 0) {
            rc = msa_error_errno(errno, "%s", part);
            break;
        }
        uint64_t have = (uint64_t)st.st_size;
        if (have > 0 && first && !p.resume) {
            if (ftruncate(fd, 0) != 0) {
                rc = msa_error_errno(errno, "%s: cannot truncate", part);
                break;
            }
            have = 0;
        }
        msa_sha256_init(&x.hash);
        if (have > 0 && (rc = msa_sha256_update_file(&x.hash, part, have))) break;
        if (lseek(fd, (off_t)have, SEEK_SET) < 0) {
            rc = msa_error_errno(errno, "%s", part);
            break;
        }
        if (have > 0) resumed_bytes = have;
        first = 0;
        x.offset = have;
        x.written = 0;
        x.status = 0;
        x.started = x.discard = 0;
        x.content_length = -1;
        x.have_cr = 0;
        x.stated_src = SRC_NONE;
        x.server_msg[0] = 0;
        x.retry_after = -1;
        x.abort = ABORT_NONE;
        x.abort_status = MSA_OK;

        CURL *c = curl_easy_init();
        if (!c) {
            rc = msa_error(MSA_ENOMEM, "libcurl could not create a transfer");
            break;
        }
        char range[48];
        errbuf[0] = 0;
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
#if LIBCURL_VERSION_NUM >= 0x075500
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR,
                         strncasecmp(url, "https:", 6) ? "http,https" : "https");
#else
        curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
        curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS,
                         strncasecmp(url, "https:", 6) ? (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS)
                                                       : (long)CURLPROTO_HTTPS);
#endif
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
        curl_easy_setopt(c, CURLOPT_USERAGENT, "msa-mem/" "0.1");
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, p.connect_timeout_s > 0 ? p.connect_timeout_s : 30L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, p.stall_timeout_s > 0 ? p.stall_timeout_s : 60L);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, &x);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &x);
        if (send_token) { /* sent to the first host only (no UNRESTRICTED_AUTH) */
            curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BEARER);
            curl_easy_setopt(c, CURLOPT_XOAUTH2_BEARER, token);
        }
        if (have > 0) {
            snprintf(range, sizeof range, "%llu-", (unsigned long long)have);
            curl_easy_setopt(c, CURLOPT_RANGE, range);
        }
        CURLcode cc = curl_easy_perform(c);
        curl_easy_cleanup(c);

        /* An empty body never reaches on_body. */
        if (cc == CURLE_OK && !x.started && (x.status == 200 || x.status == 206))
            body_begins(&x); /* sets x.abort when the bytes cannot be used */

        int retry = 0;
        if (x.abort == ABORT_STATUS) {
            rc = x.abort_status;
        } else if (x.abort == ABORT_RESTART || (x.status == 416 && have > 0)) {
            if (++restarts > 2) {
                rc = msa_error(MSA_ENET, "%s: the server's ranges do not match the file", url);
            } else if (ftruncate(fd, 0) != 0) {
                rc = msa_error_errno(errno, "%s: cannot truncate", part);
            } else {
                continue;
            }
        } else if (cc != CURLE_OK) {
            const char *what = errbuf[0] ? errbuf : curl_easy_strerror(cc);
            if (transient_curl(cc) && attempt < p.max_retries) {
                retry = 1;
            } else if (cc == CURLE_PEER_FAILED_VERIFICATION
#if LIBCURL_VERSION_NUM < 0x073e00
                       || cc == CURLE_SSL_CACERT
#endif
            ) {
                rc = msa_error(MSA_ENET, "%s: TLS certificate verification failed: %s", url, what);
            } else if (cc == CURLE_COULDNT_RESOLVE_HOST) {
                rc = msa_error(MSA_ENET, "%s: cannot resolve the host: %s", url, what);
            } else {
                uint64_t kept = x.offset + x.written;
                rc = msa_error(MSA_ENET, "%s: %s (after %d attempt%s)%s%s%s", url, what,
                               attempt + 1, attempt ? "s" : "",
                               kept ? "; the partial download is kept in " : "",
                               kept ? part : "", kept ? " and the next pull resumes it" : "");
            }
        } else if (x.status == 404) {
            rc = msa_error(MSA_ENOTFOUND, "%s: not found (HTTP 404)%s%s%s", url,
                           x.server_msg[0] ? ": " : "", x.server_msg,
                           is_hf ? "; check the repository, revision and file name" : "");
        } else if (x.status == 401 || x.status == 403) {
            rc = msa_error(MSA_EAUTH, "%s: HTTP %d%s%s; %s", url, x.status,
                           x.server_msg[0] ? ": " : "", x.server_msg,
                           send_token ? "the token in HF_TOKEN was refused or lacks access to "
                                        "this repository (for a gated model, accept its terms "
                                        "on the website)"
                           : is_hf    ? "the repository is private or gated, or does not exist: "
                                        "set HF_TOKEN to an access token"
                                      : "the server wants credentials");
        } else if (transient_http(x.status)) {
            if (attempt < p.max_retries) retry = 1;
            else
                rc = msa_error(MSA_ENET, "%s: HTTP %d after %d attempts%s%s", url, x.status,
                               attempt + 1, x.server_msg[0] ? ": " : "", x.server_msg);
        } else if (x.status != 200 && x.status != 206) {
            rc = msa_error(MSA_ENET, "%s: unexpected HTTP %d%s%s", url, x.status,
                           x.server_msg[0] ? ": " : "", x.server_msg);
        } else if (x.total_known && x.offset + x.written != x.total) {
            if (x.offset + x.written < x.total && attempt < p.max_retries) retry = 1;
            else
                rc = msa_error(MSA_ECORRUPT, "%s: received %llu bytes of the %llu announced", url,
                               (unsigned long long)(x.offset + x.written),
                               (unsigned long long)x.total);
        }
        if (retry) {
            double wait = p.retry_wait_s * (double)(1u << (attempt < 5 ? attempt : 5));
            if (wait > 30) wait = 30;
            if (x.retry_after >= 0) wait = x.retry_after > 60 ? 60 : (double)x.retry_after;
            attempt++;
            if (backoff_wait(wait, &x, x.offset + x.written)) {
                rc = msa_error(MSA_EINTR, "pull cancelled; the partial download is kept in %s", part);
                break;
            }
            continue;
        }
        break;
    }

    /* Verify and move into place. */
    uint8_t got[MSA_SHA256_DIGEST_SIZE];
    int verified_src = SRC_NONE;
    if (rc == MSA_OK) {
        msa_sha256_final(&x.hash, got);
        char got_hex[MSA_SHA256_HEX_SIZE], want_hex[MSA_SHA256_HEX_SIZE];
        msa_sha256_hex(got, got_hex);
        if (p.sha256 && memcmp(got, want, sizeof got)) {
            rc = msa_error(MSA_ECORRUPT, "%s: sha256 %s, expected %s; the download was deleted",
                           url, got_hex, msa_sha256_hex(want, want_hex));
        } else if (x.stated_src != SRC_NONE && memcmp(got, x.stated, sizeof got)) {
            rc = msa_error(MSA_ECORRUPT,
                           "%s: sha256 %s, but the server stated %s (%s)%s; the download was "
                           "deleted",
                           url, got_hex, msa_sha256_hex(x.stated, want_hex),
                           src_names[x.stated_src],
                           resumed_bytes ? " (the file may have changed since the first, resumed "
                                           "attempt)"
                                         : "");
        } else {
            verified_src = p.sha256 ? SRC_PARAM : x.stated_src;
        }
    }
    if (rc == MSA_OK && fsync(fd) != 0)
        rc = msa_error_errno(errno, "%s: fsync", part);
    if (rc == MSA_OK && !p.overwrite && stat(path, &st) == 0)
        rc = msa_error(MSA_EEXIST, "%s appeared while downloading; the download is kept in %s",
                       path, part);
    else if (rc == MSA_OK && rename(part, path) != 0)
        rc = msa_error_errno(errno, "cannot rename %s to %s", part, path);
    if (rc == MSA_OK) fsync_parent(path);

    /* What to leave behind: nothing for data that cannot be resumed. */
    if (rc != MSA_OK && rc != MSA_EEXIST) {
        int drop = rc == MSA_ECORRUPT || rc == MSA_ENOTFOUND ||
                   (fstat(fd, &st) == 0 && st.st_size == 0);
        if (drop) unlink(part);
    }
    close(fd);
    if (rc != MSA_OK) return rc;

    if (result) {
        memset(result, 0, sizeof *result);
        snprintf(result->path, sizeof result->path, "%s", path);
        snprintf(result->url, sizeof result->url, "%s", url);
        result->bytes = x.offset + x.written;
        result->resumed_bytes = x.offset;
        msa_sha256_hex(got, result->sha256);
        result->verified = verified_src != SRC_NONE;
        if (result->verified)
            snprintf(result->verified_by, sizeof result->verified_by, "%s", src_names[verified_src]);
    }
    return MSA_OK;
}
