/*
 * serve.h: what the parts of `msa-mem serve` share.
 *
 *   cmd_serve.c   options, --help, start and stop
 *   serve_http.c  the HTTP side on libmicrohttpd: routing, Bearer auth, the
 *                 request size limit, the admission queue (429), OpenAI's
 *                 error object, and server-sent-event streams fed by a
 *                 generating thread
 *   serve_api.c   the OpenAI endpoints over the engine: chat templates,
 *                 sampling parameters, the snapshot table (which stored
 *                 session a request continues from) and generation
 *
 * One engine serves every request. Its model is used by one thread at a
 * time (the forward pass has one scratch area), so every engine call runs
 * under `engine_lock`, a FIFO ticket lock that a generating request gives up
 * and takes again after every token and every prefill chunk: concurrent
 * streams interleave token by token in arrival order instead of one
 * finishing before the next starts. Everything else (HTTP, JSON, the
 * tokenizer, which is immutable and thread-safe) runs outside it.
 */
#ifndef MSA_SERVE_H
#define MSA_SERVE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <msa/msa.h>

typedef struct serve_config {
    const char *host;        /* "127.0.0.1" */
    int port;                /* 8080 */
    const char *api_key;     /* NULL or "": no auth */
    const char *model_id;    /* the name /v1/models lists */
    size_t max_body;         /* request body limit in bytes */
    int queue;               /* generation requests in flight before 429 */
    int max_tokens;          /* default max_tokens when a request has none */
    int max_chat_sessions;   /* chat snapshots kept (LRU); responses are kept */
    double timeout_s;        /* wall-clock limit of one generation */
    int live;                /* working sessions kept open (live heads) */
    int quiet, verbose;
} serve_config;

/* The FIFO lock around the engine. */
typedef struct serve_ticket {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned long next, serving;
} serve_ticket;

void serve_ticket_lock(serve_ticket *t);
void serve_ticket_unlock(serve_ticket *t);
/* Lets every thread that queued before this call run once, then returns
 * holding the lock again. */
void serve_ticket_yield(serve_ticket *t);

/* One stored session the server knows: a snapshot of a conversation after
 * a request. Snapshots are never changed: a request that continues one
 * forks it (msa_store_fork shares the blocks) and its fork becomes the new
 * snapshot, so two continuations of one snapshot never disturb each other. */
typedef struct serve_snap {
    char *name;              /* store session name ("srv.c.chatcmpl-...") */
    int32_t *tokens;         /* [n] */
    int64_t n;
    int kind;                /* 'c' chat/completions, 'k' keyed, 'r' response */
    uint64_t key;            /* prompt_cache_key hash for kind 'k' */
    uint64_t last_use;       /* LRU clock */
} serve_snap;

/* An open working session that holds what snapshot `snap` holds. */
typedef struct serve_live {
    char *snap, *wname;
    msa_session *s;
} serve_live;

typedef struct serve_state {
    serve_config cfg;
    msa_engine *eng;
    const msa_tokenizer *tok;
    int tmpl;                /* chat template */
    int ctx_len;             /* the model's trained context */
    serve_ticket engine_lock;

    pthread_mutex_t mu;      /* the snapshot table, counters */
    serve_snap *snaps;
    int n_snaps, cap_snaps;
    serve_live *live;        /* [cfg.live], oldest first; engine lock */
    int n_live;
    int in_flight;           /* generation requests admitted */
    volatile int stopping;   /* SIGINT/SIGTERM: generations stop at their next token */
    uint64_t n_requests, n_rejected;
} serve_state;

/* ---- streams ------------------------------------------------------------- */

/* Bytes passed from a generating thread to the HTTP connection that sends
 * them. The writer appends and may block on nothing; the reader (the
 * connection) waits for bytes or the end. When the client goes away the
 * connection marks the stream cancelled and the generation stops at its
 * next token. Reference counted: writer and reader each hold one. */
typedef struct serve_stream {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *buf;
    size_t len, cap, off;
    int done, cancelled, refs;
} serve_stream;

serve_stream *serve_stream_new(void);
void serve_stream_write(serve_stream *s, const char *data, size_t n);
/* "data: <json>\n\n", or with an event name first (Responses API). */
void serve_stream_event(serve_stream *s, const char *event, json_t *obj);
void serve_stream_finish(serve_stream *s);
int serve_stream_cancelled(serve_stream *s);
void serve_stream_unref(serve_stream *s);

/* ---- requests ------------------------------------------------------------ */

/* A reply: a status and a JSON body, or (stream != NULL) an SSE stream
 * filled by a thread that serve_api started. */
typedef struct serve_reply {
    int status;
    json_t *body;
    serve_stream *stream;
} serve_reply;

/* OpenAI's error object: {"error": {"message", "type", "param", "code"}}. */
json_t *serve_error_json(const char *message, const char *type, const char *param,
                         const char *code);
void serve_reply_error(serve_reply *r, int status, const char *type, const char *param,
                       const char *code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* serve_api.c: loads the snapshot table from the store. */
int serve_api_init(serve_state *st);
void serve_api_free(serve_state *st);

/* serve_api.c: answers one request (method, path, parsed body or NULL). */
void serve_api_handle(serve_state *st, const char *method, const char *path,
                      json_t *body, serve_reply *out);

/* serve_http.c: runs the server until SIGINT/SIGTERM; returns an exit code. */
int serve_http_run(serve_state *st);

#endif /* MSA_SERVE_H */
