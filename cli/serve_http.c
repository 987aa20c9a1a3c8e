/*
 * serve_http.c: the HTTP side of `msa-mem serve`, on libmicrohttpd.
 *
 * libmicrohttpd runs one thread per connection (MHD_USE_THREAD_PER_CONNECTION),
 * so a handler may block: a non-streaming request generates on its
 * connection's thread; a streaming one gets a response whose content reader
 * waits on a serve_stream that a generating thread fills, one SSE event per
 * token. When the client disconnects, libmicrohttpd fails the next write
 * and frees the response; its free callback cancels the stream, and the
 * generation stops at its next token (what it committed stays in the store).
 *
 * Before a body is read: the API key (Authorization: Bearer, 401 otherwise)
 * and the declared Content-Length against --max-body (413); while it is
 * read, the same limit on what actually arrives (chunked uploads). The body
 * is parsed with jansson, which rejects truncated JSON and invalid UTF-8;
 * both give 400 in OpenAI's error format. Idle connections are dropped
 * after 120 s.
 */
#ifdef MSA_HAVE_MHD

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "serve.h"

#if MHD_VERSION < 0x00097002
typedef int MHD_Result_t;
#else
typedef enum MHD_Result MHD_Result_t;
#endif

/* ---- the engine lock ------------------------------------------------------ */

void serve_ticket_lock(serve_ticket *t) {
    pthread_mutex_lock(&t->mu);
    unsigned long me = t->next++;
    while (t->serving != me) pthread_cond_wait(&t->cv, &t->mu);
    pthread_mutex_unlock(&t->mu);
}

void serve_ticket_unlock(serve_ticket *t) {
    pthread_mutex_lock(&t->mu);
    t->serving++;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

void serve_ticket_yield(serve_ticket *t) {
    pthread_mutex_lock(&t->mu);
    if (t->next == t->serving + 1) { /* nobody waits */
        pthread_mutex_unlock(&t->mu);
        return;
    }
    t->serving++;
    unsigned long me = t->next++;
    pthread_cond_broadcast(&t->cv);
    while (t->serving != me) pthread_cond_wait(&t->cv, &t->mu);
    pthread_mutex_unlock(&t->mu);
}

/* ---- streams -------------------------------------------------------------- */

serve_stream *serve_stream_new(void) {
    serve_stream *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->refs = 2;
    return s;
}

void serve_stream_write(serve_stream *s, const char *data, size_t n) {
    pthread_mutex_lock(&s->mu);
    if (!s->cancelled) {
        if (s->off && s->off == s->len) s->off = s->len = 0;
        if (s->len + n > s->cap) {
            size_t cap = s->cap ? s->cap : 4096;
            while (cap < s->len + n) cap *= 2;
            char *b = realloc(s->buf, cap);
            if (b) { s->buf = b; s->cap = cap; }
        }
        if (s->len + n <= s->cap) {
            memcpy(s->buf + s->len, data, n);
            s->len += n;
        }
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
}

void serve_stream_event(serve_stream *s, const char *event, json_t *obj) {
    char *js = json_dumps(obj, JSON_COMPACT);
    if (!js) return;
    size_t need = strlen(js) + (event ? strlen(event) : 0) + 32;
    char *line = malloc(need);
    if (line) {
        int n = event ? snprintf(line, need, "event: %s\ndata: %s\n\n", event, js)
                      : snprintf(line, need, "data: %s\n\n", js);
        serve_stream_write(s, line, (size_t)n);
        free(line);
    }
    free(js);
}

void serve_stream_finish(serve_stream *s) {
    pthread_mutex_lock(&s->mu);
    s->done = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

int serve_stream_cancelled(serve_stream *s) {
    pthread_mutex_lock(&s->mu);
    int c = s->cancelled;
    pthread_mutex_unlock(&s->mu);
    return c;
}

void serve_stream_unref(serve_stream *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    int left = --s->refs;
    pthread_mutex_unlock(&s->mu);
    if (left) return;
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->buf);
    free(s);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    serve_stream *s = cls;
    pthread_mutex_lock(&s->mu);
    while (s->off == s->len && !s->done) pthread_cond_wait(&s->cv, &s->mu);
    ssize_t n;
    if (s->off < s->len) {
        size_t k = s->len - s->off < max ? s->len - s->off : max;
        memcpy(buf, s->buf + s->off, k);
        s->off += k;
        n = (ssize_t)k;
    } else {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void stream_free(void *cls) {
    serve_stream *s = cls;
    pthread_mutex_lock(&s->mu);
    s->cancelled = 1; /* harmless once done; stops a generation otherwise */
    pthread_mutex_unlock(&s->mu);
    serve_stream_unref(s);
}

/* ---- errors ------------------------------------------------------------- */

json_t *serve_error_json(const char *message, const char *type, const char *param,
                         const char *code) {
    json_t *e = json_object();
    json_object_set_new(e, "message", json_string(message ? message : ""));
    json_object_set_new(e, "type", json_string(type ? type : "invalid_request_error"));
    json_object_set_new(e, "param", param ? json_string(param) : json_null());
    json_object_set_new(e, "code", code ? json_string(code) : json_null());
    json_t *o = json_object();
    json_object_set_new(o, "error", e);
    return o;
}

void serve_reply_error(serve_reply *r, int status, const char *type, const char *param,
                       const char *code, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* jansson refuses invalid UTF-8: a message quoting user bytes is cut at
     * the first byte that is not plain ASCII rather than lost */
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p >= 0x80) { *p = 0; break; }
    if (r->body) json_decref(r->body);
    r->status = status;
    r->body = serve_error_json(msg, type, param, code);
    r->stream = NULL;
}

/* ---- connections ------------------------------------------------------------- */

typedef struct conn {
    char *body;
    size_t len, cap;
    int too_big;
    int refused;       /* a reply was queued before the body was read */
} conn;

static MHD_Result_t send_json(struct MHD_Connection *c, int status, json_t *body) {
    char *js = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!js) js = strdup("{}");
    size_t n = strlen(js);
    char *text = malloc(n + 2);
    if (text) {
        memcpy(text, js, n);
        text[n] = '\n';
        text[n + 1] = 0;
    }
    free(js);
    struct MHD_Response *r = MHD_create_response_from_buffer(text ? n + 1 : 0, text,
                                                             MHD_RESPMEM_MUST_FREE);
    if (!r) { free(text); return MHD_NO; }
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    MHD_Result_t rc = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return rc;
}

static MHD_Result_t send_error(struct MHD_Connection *c, int status, const char *type,
                               const char *code, const char *msg) {
    return send_json(c, status, serve_error_json(msg, type, NULL, code));
}

static int key_ok(serve_state *st, struct MHD_Connection *c) {
    const char *want = st->cfg.api_key;
    if (!want || !*want) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7)) return 0;
    h += 7;
    while (*h == ' ') h++;
    /* constant time in the key's length */
    size_t n = strlen(want), m = strlen(h);
    unsigned diff = (unsigned)(n != m);
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)want[i] ^ (unsigned char)(i < m ? h[i] : 0);
    return diff == 0;
}

static MHD_Result_t on_request(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version,
                               const char *upload_data, size_t *upload_data_size,
                               void **con_cls) {
    serve_state *st = cls;
    conn *k = *con_cls;
    if (!k) { /* headers only: decide now what can be decided without the body */
        k = calloc(1, sizeof *k);
        if (!k) return MHD_NO;
        *con_cls = k;
        if (!key_ok(st, c)) {
            k->refused = 1;
            return send_error(c, 401, "invalid_request_error", "invalid_api_key",
                              "Incorrect API key provided (send it as 'Authorization: "
                              "Bearer KEY'; the server's key is --api-key or MSA_API_KEY)");
        }
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > st->cfg.max_body) {
            k->refused = 1;
            char msg[160];
            snprintf(msg, sizeof msg, "request body of %s bytes is over the server's limit of "
                     "%zu bytes (--max-body)", cl, st->cfg.max_body);
            return send_error(c, 413, "invalid_request_error", "request_too_large", msg);
        }
        return MHD_YES;
    }
    if (k->refused) { *upload_data_size = 0; return MHD_YES; }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (k->too_big) return MHD_YES;
        if (k->len + n > st->cfg.max_body) {
            k->too_big = 1;
            free(k->body);
            k->body = NULL;
            k->len = k->cap = 0;
            return MHD_YES;
        }
        if (k->len + n + 1 > k->cap) {
            size_t cap = k->cap ? k->cap : 8192;
            while (cap < k->len + n + 1) cap *= 2;
            char *b = realloc(k->body, cap);
            if (!b) { k->too_big = 1; return MHD_YES; }
            k->body = b;
            k->cap = cap;
        }
        memcpy(k->body + k->len, upload_data, n);
        k->len += n;
        return MHD_YES;
    }
    /* the whole request is here */
    if (k->too_big) {
        char msg[160];
        snprintf(msg, sizeof msg, "request body over the server's limit of %zu bytes "
                 "(--max-body)", st->cfg.max_body);
        return send_error(c, 413, "invalid_request_error", "request_too_large", msg);
    }
    json_t *body = NULL;
    if (!strcmp(method, "POST")) {
        json_error_t je;
        body = json_loadb(k->body ? k->body : "", k->len, JSON_REJECT_DUPLICATES, &je);
        if (!body) {
            char msg[400];
            snprintf(msg, sizeof msg, "the request body is not valid JSON: %s (line %d, "
                     "column %d)", je.text, je.line, je.column);
            for (char *p = msg; *p; p++)
                if ((unsigned char)*p >= 0x80) *p = '?';
            return send_error(c, 400, "invalid_request_error", "invalid_json", msg);
        }
        if (!json_is_object(body)) {
            json_decref(body);
            return send_error(c, 400, "invalid_request_error", "invalid_json",
                              "the request body must be a JSON object");
        }
    }
    serve_reply rep = {0};
    serve_api_handle(st, method, url, body, &rep);
    json_decref(body);
    if (st->cfg.verbose)
        fprintf(stderr, "msa-mem serve: %s %s -> %d%s\n", method, url,
                rep.stream ? 200 : rep.status, rep.stream ? " (stream)" : "");
    if (rep.stream) {
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096,
                                                                   stream_read, rep.stream,
                                                                   stream_free);
        if (!r) { stream_free(rep.stream); return MHD_NO; }
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        MHD_Result_t rc = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return rc;
    }
    if (!rep.body) rep.body = json_object();
    return send_json(c, rep.status ? rep.status : 200, rep.body);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    conn *k = *con_cls;
    if (k) {
        free(k->body);
        free(k);
        *con_cls = NULL;
    }
}

int serve_http_run(serve_state *st) {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)st->cfg.port);
    if (inet_pton(AF_INET, st->cfg.host, &sa.sin_addr) != 1) {
        fprintf(stderr, "msa-mem serve: --host takes an IPv4 address (127.0.0.1, 0.0.0.0), "
                "not '%s'\n", st->cfg.host);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    /* SIGINT and SIGTERM are taken by sigwait() below: blocked here, before
     * any thread starts, so that every thread inherits the mask */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
        (uint16_t)st->cfg.port, NULL, NULL, on_request, st,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, st,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)1024,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1,
        MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "msa-mem serve: cannot listen on %s:%d: %s\n", st->cfg.host,
                st->cfg.port, strerror(errno));
        return 6;
    }
    int port = st->cfg.port;
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    if (di && di->port) port = di->port;
    /* the line tests and scripts wait for: stdout, flushed */
    printf("msa-mem serve: listening on http://%s:%d/v1 (model %s)\n", st->cfg.host, port,
           st->cfg.model_id);
    fflush(stdout);
    int sig = 0;
    sigwait(&stop, &sig);
    if (!st->cfg.quiet) fprintf(stderr, "msa-mem serve: stopping (signal %d)\n", sig);
    __atomic_store_n(&st->stopping, 1, __ATOMIC_SEQ_CST);
    MHD_stop_daemon(d);
    /* streaming generations run on threads of their own: wait for them
     * before the engine goes (they stop at their next token) */
    for (int i = 0; i < 3000; i++) {
        pthread_mutex_lock(&st->mu);
        int left = st->in_flight;
        pthread_mutex_unlock(&st->mu);
        if (!left) break;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

#endif /* MSA_HAVE_MHD */
