/*
 * serve_api.c: the OpenAI endpoints of `msa-mem serve` over one engine.
 *
 *   GET  /v1/models
 *   POST /v1/chat/completions   messages through the model's chat template
 *   POST /v1/completions        a plain prompt
 *   POST /v1/responses          input (+ instructions), previous_response_id
 *
 * Conversations are sessions. Every request ends as a snapshot: a stored
 * session ("srv.c.<id>", "srv.k.<key>.<id>" with a prompt_cache_key,
 * "srv.r.<response id>") holding the request's prompt and the generated
 * reply, which is never changed afterwards. A new request is rendered to
 * tokens; the snapshot whose tokens are the longest prefix of them (only
 * among the snapshots of the same prompt_cache_key, when one is given; the
 * snapshot of previous_response_id, for /v1/responses) is forked
 * (msa_store_fork shares its blocks, it costs a few bytes per block), and
 * the fork is prefilled with the new tokens only and generates. So the
 * tokens a stored snapshot holds are never recomputed (usage's
 * prompt_tokens_details.cached_tokens counts them), two requests that
 * continue one snapshot each get their own fork, and nothing a client can
 * see is ever modified under another client. The fork is the request's
 * private working session ("srv.w.<id>"); when the request ends it is
 * forked into the new snapshot and stays open as that snapshot's live head,
 * which the conversation's next turn takes instead of forking and opening
 * the snapshot again (see "live sessions" below).
 *
 * Chat snapshots (not responses, whose ids clients hold) are dropped least
 * recently used first beyond --max-sessions; blocks they share with other
 * sessions stay. Everything is in the store, committed chunk by chunk, so a
 * restart (or SIGKILL) loses at most the tokens of the chunk in progress;
 * the table is read back from the store at start.
 *
 * A continued chat hits its snapshot when the client sends back the reply
 * it got: rendering the conversation reproduces the stored tokens when the
 * reply's text tokenizes back to the tokens generated (almost always; a
 * reply cut by a `stop` string does not, since the stop tokens were
 * generated and stored). When it does not, the longest snapshot that still
 * is a prefix (the one before the reply) serves, and only the rest is
 * prefilled again.
 */
#ifdef MSA_HAVE_MHD

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#include "serve.h"

enum { EP_CHAT, EP_COMPLETION, EP_RESPONSE };
enum { MAX_STOPS = 4 };

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void random_hex(char *out, int n) {
    static const char hx[] = "0123456789abcdef";
    unsigned char b[32];
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    ssize_t got = fd >= 0 ? read(fd, b, (size_t)(n + 1) / 2) : -1;
    if (fd >= 0) close(fd);
    if (got != (n + 1) / 2) { /* not expected; still unique enough per process */
        uint64_t x = now_us() ^ ((uint64_t)getpid() << 32);
        for (int i = 0; i < (n + 1) / 2; i++) { x = x * 6364136223846793005ull + 1442695040888963407ull; b[i] = (unsigned char)(x >> 56); }
    }
    for (int i = 0; i < n; i++) out[i] = hx[(b[i / 2] >> (i % 2 ? 0 : 4)) & 15];
    out[n] = 0;
}

/* FNV-1a: prompt_cache_key -> the 16 hex digits in keyed snapshot names. */
static uint64_t key_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* ---- the snapshot table ------------------------------------------------------ */

static int snap_add(serve_state *st, const char *name, const int32_t *tok, int64_t n,
                    int kind, uint64_t key, uint64_t last_use) {
    if (st->n_snaps == st->cap_snaps) {
        int cap = st->cap_snaps ? 2 * st->cap_snaps : 64;
        serve_snap *s = realloc(st->snaps, (size_t)cap * sizeof *s);
        if (!s) return MSA_ENOMEM;
        st->snaps = s;
        st->cap_snaps = cap;
    }
    serve_snap *s = &st->snaps[st->n_snaps];
    memset(s, 0, sizeof *s);
    s->name = strdup(name);
    s->tokens = malloc((size_t)(n ? n : 1) * sizeof *tok);
    if (!s->name || !s->tokens) { free(s->name); free(s->tokens); return MSA_ENOMEM; }
    if (n) memcpy(s->tokens, tok, (size_t)n * sizeof *tok);
    s->n = n;
    s->kind = kind;
    s->key = key;
    s->last_use = last_use;
    st->n_snaps++;
    return MSA_OK;
}

static void snap_drop(serve_state *st, int i) {
    free(st->snaps[i].name);
    free(st->snaps[i].tokens);
    st->snaps[i] = st->snaps[--st->n_snaps];
}

static int snap_find(serve_state *st, const char *name) {
    for (int i = 0; i < st->n_snaps; i++)
        if (!strcmp(st->snaps[i].name, name)) return i;
    return -1;
}

/* Parses a name of ours: kind and key; 0 for a name that is not. */
static int name_kind(const char *name, uint64_t *key) {
    *key = 0;
    if (!strncmp(name, "srv.c.", 6)) return 'c';
    if (!strncmp(name, "srv.r.", 6)) return 'r';
    if (!strncmp(name, "srv.k.", 6) && strlen(name) > 23 && name[22] == '.') {
        char hex[17];
        memcpy(hex, name + 6, 16);
        hex[16] = 0;
        *key = strtoull(hex, NULL, 16);
        return 'k';
    }
    return 0;
}

int serve_api_init(serve_state *st) {
    pthread_mutex_init(&st->mu, NULL);
    msa_store *store = msa_engine_store(st->eng);
    msa_store_session_info *list = NULL;
    size_t n = 0;
    int rc = msa_store_list(store, &list, &n);
    if (rc) return rc;
    const char *fp = msa_engine_fingerprint(st->eng);
    int loaded = 0, other = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t key;
        if (!strncmp(list[i].name, "srv.w.", 6)) { /* a live head of a killed server */
            msa_store_remove(store, list[i].name);
            continue;
        }
        int kind = name_kind(list[i].name, &key);
        if (!kind) continue;
        if (strcmp(list[i].fingerprint, fp)) { other++; continue; }
        msa_store_session *ss = NULL;
        if (msa_store_session_open(store, list[i].name, fp, &ss)) continue;
        msa_store_session_info si;
        int32_t *tok = NULL;
        if (!msa_store_session_stat(ss, &si) &&
            (tok = malloc((size_t)(si.n_tokens ? si.n_tokens : 1) * sizeof *tok)) &&
            (si.n_tokens == 0 || !msa_store_read_tokens(ss, 0, si.n_tokens, tok))) {
            if (!snap_add(st, list[i].name, tok, (int64_t)si.n_tokens, kind, key,
                          (uint64_t)si.last_use * 1000000u))
                loaded++;
        }
        free(tok);
        msa_store_session_close(ss);
    }
    msa_store_list_free(list);
    if (!st->cfg.quiet)
        fprintf(stderr, "msa-mem serve: %d stored conversation snapshots in %s%s\n", loaded,
                msa_store_dir(store), other ? " (and some of other models, not served)" : "");
    return MSA_OK;
}

static void live_drop_oldest(serve_state *st);

void serve_api_free(serve_state *st) {
    while (st->n_live) live_drop_oldest(st);
    free(st->live);
    while (st->n_snaps) snap_drop(st, st->n_snaps - 1);
    free(st->snaps);
    pthread_mutex_destroy(&st->mu);
}

/* ---- tokens and templates ------------------------------------------------------- */

static int tokenize(serve_state *st, const char *text, size_t len, int flags, int32_t **out,
                    size_t *n) {
    size_t cap = len + 16;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return MSA_ENOMEM;
    int rc = msa_tokenize(st->tok, text, len, flags, ids, cap, n);
    if (rc == MSA_ERANGE) {
        cap = *n;
        int32_t *b = realloc(ids, cap * sizeof *ids);
        if (!b) { free(ids); return MSA_ENOMEM; }
        ids = b;
        rc = msa_tokenize(st->tok, text, len, flags, ids, cap, n);
    }
    if (rc) { free(ids); return rc; }
    *out = ids;
    return MSA_OK;
}

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;

static int sb_put(sbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) return MSA_ENOMEM;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return MSA_OK;
}

static int render_generation_prompt(serve_state *st, sbuf *b);
static void closing_text(serve_state *st, char *out, size_t cap);

/* One message. An assistant's is rendered as the generation prompt, the
 * content and what closes a turn, which is what the session holds after it
 * generated that content (the template's own form may differ by a space:
 * plain's "Assistant: " against the prompt's "Assistant:"). */
static int render_message(serve_state *st, sbuf *b, const char *role, const char *content) {
    if (!strcmp(role, "assistant")) {
        char close[128];
        closing_text(st, close, sizeof close);
        if (render_generation_prompt(st, b) || sb_put(b, content, strlen(content)) ||
            sb_put(b, close, strlen(close)))
            return MSA_ENOMEM;
        return MSA_OK;
    }
    size_t need = msa_chat_render(st->tmpl, role, content, 0, NULL, 0);
    char *t = malloc(need + 1);
    if (!t) return MSA_ENOMEM;
    msa_chat_render(st->tmpl, role, content, 0, t, need + 1);
    int rc = sb_put(b, t, need);
    free(t);
    return rc;
}

/* The text that opens the assistant's reply: what add_generation_prompt adds. */
static int render_generation_prompt(serve_state *st, sbuf *b) {
    char with[256], without[256];
    size_t a = msa_chat_render(st->tmpl, "user", "", 1, with, sizeof with);
    size_t c = msa_chat_render(st->tmpl, "user", "", 0, without, sizeof without);
    if (a >= sizeof with || c > a) return MSA_OK;
    return sb_put(b, with + c, a - c);
}

/* What closes an assistant turn after its content ("<|im_end|>\n"). */
static void closing_text(serve_state *st, char *out, size_t cap) {
    char full[256];
    msa_chat_render(st->tmpl, "assistant", "\x01", 0, full, sizeof full);
    char *mark = strchr(full, '\x01');
    snprintf(out, cap, "%s", mark ? mark + 1 : "");
}

/* ---- request parsing -------------------------------------------------------------- */

typedef struct req {
    int ep;
    int stream, include_usage;
    msa_generate_params gp;
    char *stops[MAX_STOPS];
    int n_stops;
    int32_t *tokens;           /* the whole prompt */
    int64_t n_tokens;
    char *base;                /* snapshot to fork, NULL: a new session */
    int64_t n_base;            /* its tokens (a prefix of tokens) */
    int kind;
    uint64_t key;
    char id[64];
    char prev_id[80];
    int store;                 /* responses: keep the snapshot (default 1) */
    json_t *echo;              /* responses: fields echoed in the object */
    int64_t created;
    double deadline;
    serve_state *st;
    serve_stream *stream_out;
    /* results */
    sbuf text;
    size_t emitted;
    int n_cb, n_gen, stop_hit, cancelled, timed_out, rc;
    char err[600];
    double t_first;            /* seconds to the first token */
    int seq;                   /* responses stream sequence_number */
} req;

static void req_free(req *r) {
    for (int i = 0; i < r->n_stops; i++) free(r->stops[i]);
    free(r->tokens);
    free(r->base);
    free(r->text.p);
    json_decref(r->echo);
    free(r);
}

/* Field getters: 0 when absent or null, 1 when set, -1 after an error reply. */
static int get_number(json_t *o, const char *k, double lo, double hi, double *out,
                      serve_reply *rep) {
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) {
        serve_reply_error(rep, 400, "invalid_request_error", k, "invalid_type",
                          "'%s' must be a number", k);
        return -1;
    }
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi)) {
        serve_reply_error(rep, 400, "invalid_request_error", k, "invalid_value",
                          "'%s' is %g; it must be between %g and %g", k, x, lo, hi);
        return -1;
    }
    *out = x;
    return 1;
}

static int get_int(json_t *o, const char *k, long long lo, long long hi, long long *out,
                   serve_reply *rep) {
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v)) {
        serve_reply_error(rep, 400, "invalid_request_error", k, "invalid_type",
                          "'%s' must be an integer", k);
        return -1;
    }
    long long x = json_integer_value(v);
    if (x < lo || x > hi) {
        serve_reply_error(rep, 400, "invalid_request_error", k, "invalid_value",
                          "'%s' is %lld; it must be between %lld and %lld", k, x, lo, hi);
        return -1;
    }
    *out = x;
    return 1;
}

static int get_bool(json_t *o, const char *k, int *out, serve_reply *rep) {
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) {
        serve_reply_error(rep, 400, "invalid_request_error", k, "invalid_type",
                          "'%s' must be a boolean", k);
        return -1;
    }
    *out = json_is_true(v);
    return 1;
}

/* Common fields: model, sampling, max tokens, stop, stream, unsupported ones. */
static int parse_common(serve_state *st, json_t *b, req *r, serve_reply *rep) {
    json_t *m = json_object_get(b, "model");
    if (!m || !json_is_string(m)) {
        serve_reply_error(rep, 400, "invalid_request_error", "model",
                          m ? "invalid_type" : "missing_required_parameter",
                          "'model' must be given as a string (this server serves '%s')",
                          st->cfg.model_id);
        return -1;
    }
    if (strcmp(json_string_value(m), st->cfg.model_id)) {
        serve_reply_error(rep, 404, "invalid_request_error", "model", "model_not_found",
                          "The model '%.200s' does not exist; this server serves '%s' "
                          "(GET /v1/models)", json_string_value(m), st->cfg.model_id);
        return -1;
    }
    r->gp = msa_generate_default_params();
    r->gp.sampling.temperature = 1.0f; /* OpenAI's default */
    r->gp.max_tokens = st->cfg.max_tokens;
    double x;
    int k;
    if ((k = get_number(b, "temperature", 0, 2, &x, rep)) < 0) return -1;
    if (k) r->gp.sampling.temperature = (float)x;
    if ((k = get_number(b, "top_p", 0, 1, &x, rep)) < 0) return -1;
    if (k) {
        if (x == 0) r->gp.sampling.temperature = 0; /* only the top token */
        else r->gp.sampling.top_p = (float)x;
    }
    for (const char *const *f = (const char *const[]){"frequency_penalty", "presence_penalty",
                                                       NULL}; *f; f++)
        if (get_number(b, *f, -2, 2, &x, rep) < 0) return -1;
    /* llama.cpp's and vLLM's extensions that msa_sampling_params has */
    if ((k = get_number(b, "min_p", 0, 1, &x, rep)) < 0) return -1;
    if (k) r->gp.sampling.min_p = (float)x;
    if ((k = get_number(b, "repetition_penalty", 0.01, 100, &x, rep)) < 0) return -1;
    if (k) r->gp.sampling.repeat_penalty = (float)x;
    long long v;
    if ((k = get_int(b, "top_k", 0, 1 << 30, &v, rep)) < 0) return -1;
    if (k) r->gp.sampling.top_k = (int)v;
    const char *mt[] = {"max_tokens", "max_completion_tokens", "max_output_tokens"};
    for (int i = 0; i < 3; i++) {
        if ((k = get_int(b, mt[i], 1, 1 << 24, &v, rep)) < 0) return -1;
        if (k) r->gp.max_tokens = (int)v;
    }
    if ((k = get_int(b, "seed", -(1LL << 62), 1LL << 62, &v, rep)) < 0) return -1;
    if (k) r->gp.sampling.seed = (uint64_t)v;
    else r->gp.sampling.seed = now_us();
    if ((k = get_int(b, "n", 1, 1, &v, rep)) < 0) return -1;
    if (get_bool(b, "stream", &r->stream, rep) < 0) return -1;
    json_t *so = json_object_get(b, "stream_options");
    if (so && json_is_object(so) && get_bool(so, "include_usage", &r->include_usage, rep) < 0)
        return -1;
    json_t *stop = json_object_get(b, "stop");
    if (stop && !json_is_null(stop)) {
        json_t *one = json_is_string(stop) ? stop : NULL;
        size_t n = one ? 1 : json_is_array(stop) ? json_array_size(stop) : 0;
        if ((!one && !json_is_array(stop)) || n > MAX_STOPS) {
            serve_reply_error(rep, 400, "invalid_request_error", "stop", "invalid_type",
                              "'stop' must be a string or an array of at most %d strings",
                              MAX_STOPS);
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            json_t *s = one ? one : json_array_get(stop, i);
            if (!json_is_string(s)) {
                serve_reply_error(rep, 400, "invalid_request_error", "stop", "invalid_type",
                                  "'stop' must be a string or an array of strings");
                return -1;
            }
            if (!json_string_length(s)) continue;
            r->stops[r->n_stops++] = strdup(json_string_value(s));
        }
    }
    json_t *tools = json_object_get(b, "tools");
    if (tools && json_is_array(tools) && json_array_size(tools)) {
        serve_reply_error(rep, 400, "invalid_request_error", "tools", "unsupported_parameter",
                          "tools are not supported by msa-mem serve yet");
        return -1;
    }
    json_t *lp = json_object_get(b, "logprobs");
    if (lp && (json_is_true(lp) || (json_is_integer(lp) && json_integer_value(lp) > 0))) {
        serve_reply_error(rep, 400, "invalid_request_error", "logprobs", "unsupported_parameter",
                          "logprobs are not supported by msa-mem serve");
        return -1;
    }
    json_t *rf = json_object_get(b, "response_format");
    if (rf && json_is_object(rf)) {
        json_t *t = json_object_get(rf, "type");
        if (t && json_is_string(t) && strcmp(json_string_value(t), "text")) {
            serve_reply_error(rep, 400, "invalid_request_error", "response_format",
                              "unsupported_parameter",
                              "response_format '%.40s' is not supported (only text)",
                              json_string_value(t));
            return -1;
        }
    }
    json_t *ck = json_object_get(b, "prompt_cache_key");
    if (ck && !json_is_null(ck)) {
        if (!json_is_string(ck)) {
            serve_reply_error(rep, 400, "invalid_request_error", "prompt_cache_key",
                              "invalid_type", "'prompt_cache_key' must be a string");
            return -1;
        }
        r->kind = 'k';
        r->key = key_hash(json_string_value(ck));
    }
    return 0;
}

/* A message's content: a string, null, or an array of text parts. */
static int content_text(json_t *c, sbuf *out, const char *param, serve_reply *rep) {
    if (!c || json_is_null(c)) return 0;
    if (json_is_string(c)) return sb_put(out, json_string_value(c), json_string_length(c)) ? -1 : 0;
    if (json_is_array(c)) {
        size_t i;
        json_t *p;
        json_array_foreach(c, i, p) {
            json_t *t = json_is_object(p) ? json_object_get(p, "type") : NULL;
            json_t *tx = json_is_object(p) ? json_object_get(p, "text") : NULL;
            const char *ty = t && json_is_string(t) ? json_string_value(t) : "";
            if ((strcmp(ty, "text") && strcmp(ty, "input_text") && strcmp(ty, "output_text")) ||
                !tx || !json_is_string(tx)) {
                serve_reply_error(rep, 400, "invalid_request_error", param, "invalid_value",
                                  "content parts must be {\"type\": \"text\", \"text\": ...}"
                                  " (this model reads text only)");
                return -1;
            }
            if (sb_put(out, json_string_value(tx), json_string_length(tx))) return -1;
        }
        return 0;
    }
    serve_reply_error(rep, 400, "invalid_request_error", param, "invalid_type",
                      "message content must be a string or an array of text parts");
    return -1;
}

/* Renders messages [{role, content}] into b. */
static int render_messages(serve_state *st, json_t *msgs, const char *param, sbuf *b,
                           serve_reply *rep) {
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        char p[64];
        snprintf(p, sizeof p, "%s[%zu]", param, i);
        if (!json_is_object(m)) {
            serve_reply_error(rep, 400, "invalid_request_error", p, "invalid_type",
                              "each message must be an object with 'role' and 'content'");
            return -1;
        }
        json_t *role = json_object_get(m, "role");
        const char *rs = role && json_is_string(role) ? json_string_value(role) : NULL;
        if (!rs) {
            serve_reply_error(rep, 400, "invalid_request_error", p, "invalid_value",
                              "a message needs a 'role' string");
            return -1;
        }
        if (!strcmp(rs, "developer")) rs = "system";
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant")) {
            serve_reply_error(rep, 400, "invalid_request_error", p, "invalid_value",
                              "role '%.40s' is not supported (system, developer, user, "
                              "assistant)", rs);
            return -1;
        }
        json_t *ty = json_object_get(m, "type");
        if (ty && json_is_string(ty) && strcmp(json_string_value(ty), "message")) {
            serve_reply_error(rep, 400, "invalid_request_error", p, "invalid_value",
                              "input items of type '%.40s' are not supported (message)",
                              json_string_value(ty));
            return -1;
        }
        sbuf c = {0};
        if (content_text(json_object_get(m, "content"), &c, p, rep) < 0) { free(c.p); return -1; }
        int rc = render_message(st, b, rs, c.p ? c.p : "");
        free(c.p);
        if (rc) return -1;
    }
    return 0;
}

static int prompt_tokens(serve_state *st, const char *text, size_t len, int bos, req *r,
                         serve_reply *rep) {
    size_t n = 0;
    int32_t *ids = NULL;
    int flags = MSA_TOK_PARSE_SPECIAL | (bos && msa_tokenizer_add_bos(st->tok) ? MSA_TOK_ADD_BOS : 0);
    int rc = tokenize(st, text, len, flags, &ids, &n);
    if (rc) {
        serve_reply_error(rep, 500, "server_error", NULL, NULL, "tokenizing the prompt: %s",
                          msa_strerror(rc));
        return -1;
    }
    r->tokens = ids;
    r->n_tokens = (int64_t)n;
    return 0;
}

/* Picks the snapshot to fork: the longest whose tokens are a prefix of the
 * request's, among those of the request's kind. */
static void choose_base(serve_state *st, req *r) {
    pthread_mutex_lock(&st->mu);
    int best = -1;
    for (int i = 0; i < st->n_snaps; i++) {
        serve_snap *s = &st->snaps[i];
        if (r->kind == 'k' ? s->kind != 'k' || s->key != r->key : s->kind == 'k') continue;
        if (s->n > r->n_tokens || s->n == 0) continue;
        if (best >= 0 && s->n <= st->snaps[best].n) continue;
        if (memcmp(s->tokens, r->tokens, (size_t)s->n * sizeof *s->tokens)) continue;
        best = i;
    }
    if (best >= 0) {
        r->base = strdup(st->snaps[best].name);
        r->n_base = r->base ? st->snaps[best].n : 0;
        st->snaps[best].last_use = now_us();
    }
    pthread_mutex_unlock(&st->mu);
}

/* ---- generation -------------------------------------------------------------------- */

static json_t *usage_json(req *r) {
    int64_t cached = r->n_base;
    if (r->ep == EP_RESPONSE)
        return json_pack("{sI sI sI s{sI} s{si}}", "input_tokens", (json_int_t)r->n_tokens,
                         "output_tokens", (json_int_t)r->n_gen, "total_tokens",
                         (json_int_t)(r->n_tokens + r->n_gen), "input_tokens_details",
                         "cached_tokens", (json_int_t)cached, "output_tokens_details",
                         "reasoning_tokens", 0);
    return json_pack("{sI sI sI s{sI}}", "prompt_tokens", (json_int_t)r->n_tokens,
                     "completion_tokens", (json_int_t)r->n_gen, "total_tokens",
                     (json_int_t)(r->n_tokens + r->n_gen), "prompt_tokens_details",
                     "cached_tokens", (json_int_t)cached);
}

static const char *finish_reason(req *r) {
    if (r->stop_hit || r->n_gen > r->n_cb) return "stop"; /* a stop string, or EOS */
    return "length";
}

static const char *object_name(req *r, int chunk) {
    if (r->ep == EP_CHAT) return chunk ? "chat.completion.chunk" : "chat.completion";
    return "text_completion";
}

static json_t *response_object(req *r, const char *status) {
    json_t *o = json_pack("{ss ss sI ss ss}", "id", r->id, "object", "response", "created_at",
                          (json_int_t)r->created, "status", status, "model",
                          r->st->cfg.model_id);
    json_object_update(o, r->echo);
    json_object_set_new(o, "previous_response_id",
                        r->prev_id[0] ? json_string(r->prev_id) : json_null());
    json_object_set_new(o, "error", json_null());
    int incomplete = !strcmp(status, "incomplete");
    json_object_set_new(o, "incomplete_details",
                        incomplete ? json_pack("{ss}", "reason", "max_output_tokens") : json_null());
    json_t *out = json_array();
    if (strcmp(status, "in_progress")) {
        char mid[48];
        snprintf(mid, sizeof mid, "msg_%s", r->id + 5);
        json_array_append_new(out, json_pack("{ss ss ss ss s[{ss ss s[]}]}", "type", "message",
                                             "id", mid, "status", status, "role", "assistant",
                                             "content", "type", "output_text", "text",
                                             r->text.p ? r->text.p : "", "annotations"));
        json_object_set_new(o, "usage", usage_json(r));
    } else {
        json_object_set_new(o, "usage", json_null());
    }
    json_object_set_new(o, "output", out);
    json_object_set_new(o, "parallel_tool_calls", json_false());
    json_object_set_new(o, "tool_choice", json_string("auto"));
    json_object_set_new(o, "tools", json_array());
    json_object_set_new(o, "store", json_boolean(r->store));
    return o;
}

/* Streams text[emitted .. upto) as one delta event. */
static void emit_delta(req *r, size_t upto) {
    if (!r->stream_out || upto <= r->emitted) return;
    json_t *d = json_stringn(r->text.p + r->emitted, upto - r->emitted);
    if (!d) return; /* not at a character boundary: wait for more */
    r->emitted = upto;
    json_t *ev;
    if (r->ep == EP_RESPONSE) {
        char mid[48];
        snprintf(mid, sizeof mid, "msg_%s", r->id + 5);
        ev = json_pack("{ss si ss si si so}", "type", "response.output_text.delta",
                       "sequence_number", r->seq++, "item_id", mid, "output_index", 0,
                       "content_index", 0, "delta", d);
        serve_stream_event(r->stream_out, "response.output_text.delta", ev);
    } else {
        ev = json_pack("{ss ss sI ss s[{si so sn}]}", "id", r->id, "object", object_name(r, 1),
                       "created", (json_int_t)r->created, "model", r->st->cfg.model_id,
                       "choices", "index", 0, r->ep == EP_CHAT ? "delta" : "text",
                       r->ep == EP_CHAT ? json_pack("{so}", "content", d) : d,
                       "finish_reason");
        serve_stream_event(r->stream_out, NULL, ev);
    }
    json_decref(ev);
}

/* Bytes at the end of the text that may still become a stop string. */
static size_t holdback(req *r) {
    size_t best = 0;
    for (int i = 0; i < r->n_stops; i++) {
        size_t sl = strlen(r->stops[i]);
        for (size_t k = sl - 1; k > best; k--)
            if (k <= r->text.len && !memcmp(r->text.p + r->text.len - k, r->stops[i], k)) {
                best = k;
                break;
            }
    }
    return best;
}

static int on_token(void *user, int32_t token, const char *text, size_t len) {
    req *r = user;
    if (token >= 0) {
        r->n_cb++;
        if (r->n_cb == 1) r->t_first = now_s();
    }
    size_t before = r->text.len;
    if (len && sb_put(&r->text, text, len)) return 1;
    if (r->n_stops && len) {
        for (int i = 0; i < r->n_stops; i++) {
            size_t sl = strlen(r->stops[i]);
            size_t from = before >= sl ? before - sl + 1 : 0;
            char *hit = r->text.len >= sl ? memmem(r->text.p + from, r->text.len - from,
                                                   r->stops[i], sl) : NULL;
            if (hit) {
                r->text.len = (size_t)(hit - r->text.p);
                r->text.p[r->text.len] = 0;
                r->stop_hit = 1;
            }
        }
    }
    if (r->stream_out) emit_delta(r, r->text.len - (r->stop_hit ? 0 : holdback(r)));
    if (r->stop_hit) return 1;
    if ((r->stream_out && serve_stream_cancelled(r->stream_out)) ||
        __atomic_load_n(&r->st->stopping, __ATOMIC_SEQ_CST)) { r->cancelled = 1; return 1; }
    if (now_s() > r->deadline) { r->timed_out = 1; return 1; }
    if (token >= 0) serve_ticket_yield(&r->st->engine_lock);
    return 0;
}

static int on_prefill(void *user, int64_t done, int64_t total) {
    req *r = user;
    if ((r->stream_out && serve_stream_cancelled(r->stream_out)) ||
        __atomic_load_n(&r->st->stopping, __ATOMIC_SEQ_CST)) { r->cancelled = 1; return 1; }
    if (now_s() > r->deadline) { r->timed_out = 1; return 1; }
    serve_ticket_yield(&r->st->engine_lock);
    return 0;
}

static void snapshot_name(req *r, char *out, size_t cap) {
    if (r->ep == EP_RESPONSE) snprintf(out, cap, "srv.r.%s", r->id);
    else if (r->kind == 'k') snprintf(out, cap, "srv.k.%016llx.%s", (unsigned long long)r->key, r->id);
    else snprintf(out, cap, "srv.c.%s", r->id);
}

/* Removes chat snapshots past --max-sessions, least recently used first.
 * Called with the engine lock held. */
static void evict(serve_state *st) {
    for (;;) {
        pthread_mutex_lock(&st->mu);
        int n_chat = 0, lru = -1;
        for (int i = 0; i < st->n_snaps; i++) {
            if (st->snaps[i].kind == 'r') continue;
            n_chat++;
            if (lru < 0 || st->snaps[i].last_use < st->snaps[lru].last_use) lru = i;
        }
        if (n_chat <= st->cfg.max_chat_sessions || lru < 0) {
            pthread_mutex_unlock(&st->mu);
            return;
        }
        char *name = strdup(st->snaps[lru].name);
        snap_drop(st, lru);
        pthread_mutex_unlock(&st->mu);
        if (!name) return;
        msa_store_remove(msa_engine_store(st->eng), name);
        free(name);
    }
}

/* ---- live sessions ------------------------------------------------------------------ */
/*
 * Opening a session reads its tokens and every index key from the store,
 * which grows with the conversation. So the working session of a finished
 * request stays open ("srv.w.<id>", not a snapshot) as the live head of the
 * snapshot it was forked into: a request that continues exactly that
 * snapshot takes the open handle instead of forking and opening. Up to
 * --live of them, the oldest closed (and its working session removed)
 * first. Called with the engine lock held.
 */

static msa_session *live_take(serve_state *st, const char *snap, char *wname, size_t cap) {
    for (int i = 0; i < st->n_live; i++) {
        if (strcmp(st->live[i].snap, snap)) continue;
        msa_session *s = st->live[i].s;
        snprintf(wname, cap, "%s", st->live[i].wname);
        free(st->live[i].snap);
        free(st->live[i].wname);
        memmove(&st->live[i], &st->live[i + 1], (size_t)(st->n_live - i - 1) * sizeof *st->live);
        st->n_live--;
        return s;
    }
    return NULL;
}

static void live_drop_oldest(serve_state *st) {
    msa_session_close(st->live[0].s);
    msa_store_remove(msa_engine_store(st->eng), st->live[0].wname);
    free(st->live[0].snap);
    free(st->live[0].wname);
    memmove(&st->live[0], &st->live[1], (size_t)(st->n_live - 1) * sizeof *st->live);
    st->n_live--;
}

/* Keeps s open as the head of snapshot `snap`; closes it when it cannot. */
static void live_put(serve_state *st, const char *snap, msa_session *s, const char *wname) {
    if (st->cfg.live <= 0) goto drop;
    while (st->n_live >= st->cfg.live) live_drop_oldest(st);
    if (!st->live) st->live = calloc((size_t)st->cfg.live, sizeof *st->live);
    char *a = strdup(snap), *b = strdup(wname);
    if (!st->live || !a || !b) { free(a); free(b); goto drop; }
    st->live[st->n_live++] = (serve_live){a, b, s};
    return;
drop:
    msa_session_close(s);
    msa_store_remove(msa_engine_store(st->eng), wname);
}

/* Runs the request: take the live head of its snapshot, or fork the
 * snapshot (or create an empty session) and open it; prefill the new
 * tokens; generate; fork the result into the new snapshot. Sets r->rc and
 * r->err on failure. */
static void run(req *r) {
    serve_state *st = r->st;
    msa_store *store = msa_engine_store(st->eng);
    char name[MSA_STORE_NAME_MAX + 1], wname[MSA_STORE_NAME_MAX + 1];
    snapshot_name(r, name, sizeof name);
    snprintf(wname, sizeof wname, "srv.w.%s", r->id);
    msa_session *s = NULL;
    double t0 = now_s();
    serve_ticket_lock(&st->engine_lock);
    double t_lock = now_s();
    int rc = MSA_OK, live = 0;
    if (r->base && (s = live_take(st, r->base, wname, sizeof wname))) {
        int64_t n = 0;
        const int32_t *have = msa_session_tokens(s, &n);
        if (n == r->n_base && (!n || !memcmp(have, r->tokens, (size_t)n * sizeof *have))) {
            live = 1;
        } else { /* not what it should be (a failed session): drop it */
            msa_session_close(s);
            msa_store_remove(store, wname);
            s = NULL;
            snprintf(wname, sizeof wname, "srv.w.%s", r->id);
        }
    }
    if (!s && r->base) {
        rc = msa_store_fork(store, r->base, wname);
        if (rc == MSA_ENOTFOUND) { /* dropped meanwhile: start afresh */
            free(r->base);
            r->base = NULL;
            r->n_base = 0;
            rc = MSA_OK;
        }
    }
    if (!rc && !s) {
        rc = msa_session_open(st->eng, wname, r->base ? MSA_SESSION_OPEN
                              : MSA_SESSION_CREATE | MSA_SESSION_EXCLUSIVE, &s);
        if (!rc) {
            int64_t n = 0;
            const int32_t *have = msa_session_tokens(s, &n);
            if (n != r->n_base || (n && memcmp(have, r->tokens, (size_t)n * sizeof *have))) {
                rc = MSA_ECORRUPT;
                snprintf(r->err, sizeof r->err, "snapshot '%s' no longer holds the tokens it "
                         "was chosen for", r->base ? r->base : name);
            }
        }
    }
    double t_open = now_s();
    if (!rc && r->n_tokens > r->n_base)
        rc = msa_session_append_tokens(s, r->tokens + r->n_base,
                                       (size_t)(r->n_tokens - r->n_base),
                                       r->ep == EP_RESPONSE ? "response input" : "prompt",
                                       on_prefill, r);
    if (!rc && r->n_tokens > r->n_base && !(r->ep == EP_RESPONSE && !r->store)) {
        /* the prompt alone is a snapshot too: the next request with the
         * same prompt (a shared system prompt, a retry, a reply that does
         * not tokenize back) starts from it */
        char pname[MSA_STORE_NAME_MAX + 16];
        if (r->ep == EP_RESPONSE) snprintf(pname, sizeof pname, "srv.c.%s.p", r->id);
        else snprintf(pname, sizeof pname, "%s.p", name);
        if (msa_store_fork(store, wname, pname) == MSA_OK) {
            pthread_mutex_lock(&st->mu);
            snap_add(st, pname, r->tokens, r->n_tokens, r->kind == 'k' ? 'k' : 'c', r->key,
                     now_us());
            pthread_mutex_unlock(&st->mu);
        }
    }
    double t_prefill = now_s();
    if (!rc) {
        msa_generate_params gp = r->gp;
        gp.source = "reply";
        rc = msa_session_generate(s, &gp, on_token, r, &r->n_gen);
    }
    if (rc == MSA_EINTR && (r->cancelled || r->timed_out)) rc = MSA_OK;
    if (rc && !r->err[0])
        snprintf(r->err, sizeof r->err, "%s: %s", msa_strerror(rc),
                 msa_last_error()[0] ? msa_last_error() : "generation failed");
    for (char *c = r->err; *c; c++) /* it goes into JSON: plain ASCII */
        if ((unsigned char)*c >= 0x80 || (unsigned char)*c < 0x20) *c = '?';
    r->rc = rc;
    if (s) {
        /* what was committed (all of it, or up to a failure) becomes the
         * new snapshot */
        int64_t n = 0;
        const int32_t *tok = msa_session_tokens(s, &n);
        int keep = tok && !(r->ep == EP_RESPONSE && !r->store) &&
                   msa_store_fork(store, wname, name) == MSA_OK;
        if (keep) {
            pthread_mutex_lock(&st->mu);
            snap_add(st, name, tok, n, r->ep == EP_RESPONSE ? 'r' : r->kind ? r->kind : 'c',
                     r->key, now_us());
            pthread_mutex_unlock(&st->mu);
        }
        if (keep && !rc) {
            live_put(st, name, s, wname);
        } else {
            msa_session_close(s);
            msa_store_remove(store, wname);
        }
    } else if (rc) {
        msa_store_remove(store, wname); /* a fork that did not open */
    }
    pthread_mutex_lock(&st->mu);
    st->n_requests++;
    pthread_mutex_unlock(&st->mu);
    evict(st);
    serve_ticket_unlock(&st->engine_lock);
    if (st->cfg.verbose)
        fprintf(stderr, "msa-mem serve: %s: %lld tokens (%lld cached%s), %d generated; wait "
                "%.1f ms, %s %.1f ms, prefill+snapshot %.1f ms, generate+snapshot %.1f ms%s\n",
                r->id, (long long)r->n_tokens, (long long)r->n_base, live ? ", live" : "",
                r->n_gen, (t_lock - t0) * 1e3, live ? "take live" : "fork+open",
                (t_open - t_lock) * 1e3, (t_prefill - t_open) * 1e3,
                (now_s() - t_prefill) * 1e3, r->cancelled ? " (cancelled)" : "");
}

static void finish_admission(serve_state *st) {
    pthread_mutex_lock(&st->mu);
    st->in_flight--;
    pthread_mutex_unlock(&st->mu);
}

/* The final non-streaming body. */
static void reply_body(req *r, serve_reply *rep) {
    if (r->rc) {
        serve_reply_error(rep, 500, "server_error", NULL, NULL, "%s", r->err);
        return;
    }
    const char *text = r->text.p ? r->text.p : "";
    if (r->ep == EP_RESPONSE) {
        rep->status = 200;
        rep->body = response_object(r, strcmp(finish_reason(r), "length") ? "completed" : "incomplete");
        return;
    }
    json_t *choice = r->ep == EP_CHAT
        ? json_pack("{si s{ss ss sn} ss sn}", "index", 0, "message", "role", "assistant",
                    "content", text, "refusal", "finish_reason", finish_reason(r), "logprobs")
        : json_pack("{si ss ss sn}", "index", 0, "text", text, "finish_reason", finish_reason(r),
                    "logprobs");
    rep->status = 200;
    rep->body = json_pack("{ss ss sI ss s[o] so ss}", "id", r->id, "object", object_name(r, 0),
                          "created", (json_int_t)r->created, "model", r->st->cfg.model_id,
                          "choices", choice, "usage", usage_json(r), "system_fingerprint",
                          "msa-mem");
}

static void *stream_main(void *arg) {
    req *r = arg;
    serve_state *st = r->st;
    serve_stream *out = r->stream_out;
    if (r->ep == EP_RESPONSE) {
        json_t *o = response_object(r, "in_progress");
        json_t *ev = json_pack("{ss si so}", "type", "response.created", "sequence_number",
                               r->seq++, "response", o);
        serve_stream_event(out, "response.created", ev);
        json_decref(ev);
    } else if (r->ep == EP_CHAT) {
        json_t *ev = json_pack("{ss ss sI ss s[{si s{ss ss} sn sn}]}", "id", r->id, "object",
                               object_name(r, 1), "created", (json_int_t)r->created, "model",
                               st->cfg.model_id, "choices", "index", 0, "delta", "role",
                               "assistant", "content", "", "finish_reason", "logprobs");
        serve_stream_event(out, NULL, ev);
        json_decref(ev);
    }
    run(r);
    if (r->rc) {
        json_t *e = serve_error_json(r->err, "server_error", NULL, NULL);
        serve_stream_event(out, r->ep == EP_RESPONSE ? "error" : NULL, e);
        json_decref(e);
    } else {
        r->emitted = r->emitted < r->text.len ? r->emitted : r->text.len;
        emit_delta(r, r->text.len);
        if (r->ep == EP_RESPONSE) {
            const char *status = strcmp(finish_reason(r), "length") ? "completed" : "incomplete";
            json_t *ev = json_pack("{ss si so}", "type", !strcmp(status, "completed")
                                   ? "response.completed" : "response.incomplete",
                                   "sequence_number", r->seq++, "response",
                                   response_object(r, status));
            serve_stream_event(out, !strcmp(status, "completed") ? "response.completed"
                               : "response.incomplete", ev);
            json_decref(ev);
        } else {
            json_t *ev = json_pack("{ss ss sI ss s[{si so ss sn}]}", "id", r->id, "object",
                                   object_name(r, 1), "created", (json_int_t)r->created,
                                   "model", st->cfg.model_id, "choices", "index", 0,
                                   r->ep == EP_CHAT ? "delta" : "text",
                                   r->ep == EP_CHAT ? json_object() : json_string(""),
                                   "finish_reason", finish_reason(r), "logprobs");
            serve_stream_event(out, NULL, ev);
            json_decref(ev);
            if (r->include_usage) {
                ev = json_pack("{ss ss sI ss s[] so}", "id", r->id, "object", object_name(r, 1),
                               "created", (json_int_t)r->created, "model", st->cfg.model_id,
                               "choices", "usage", usage_json(r));
                serve_stream_event(out, NULL, ev);
                json_decref(ev);
            }
        }
    }
    if (r->ep != EP_RESPONSE) serve_stream_write(out, "data: [DONE]\n\n", 14);
    serve_stream_finish(out);
    serve_stream_unref(out);
    finish_admission(st);
    req_free(r);
    return NULL;
}

/* Admits and runs a parsed request: in this thread, or on a thread of its
 * own that feeds the reply's stream. Takes r. */
static void start(serve_state *st, req *r, serve_reply *rep) {
    pthread_mutex_lock(&st->mu);
    int full = st->in_flight >= st->cfg.queue;
    if (full) st->n_rejected++;
    else st->in_flight++;
    pthread_mutex_unlock(&st->mu);
    if (full) {
        serve_reply_error(rep, 429, "rate_limit_error", NULL, "rate_limit_exceeded",
                          "the server has %d requests in flight (--queue); retry later",
                          st->cfg.queue);
        req_free(r);
        return;
    }
    r->created = (int64_t)time(NULL);
    r->deadline = now_s() + st->cfg.timeout_s;
    if (!r->base) choose_base(st, r);
    if (r->stream) {
        r->stream_out = serve_stream_new();
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (!r->stream_out || pthread_create(&th, &at, stream_main, r)) {
            pthread_attr_destroy(&at);
            if (r->stream_out) { serve_stream_unref(r->stream_out); serve_stream_unref(r->stream_out); }
            finish_admission(st);
            req_free(r);
            serve_reply_error(rep, 500, "server_error", NULL, NULL, "cannot start a thread");
            return;
        }
        pthread_attr_destroy(&at);
        rep->status = 200;
        rep->stream = r->stream_out;
        return;
    }
    run(r);
    reply_body(r, rep);
    finish_admission(st);
    req_free(r);
}

/* ---- endpoints ------------------------------------------------------------------------ */

static void chat(serve_state *st, json_t *b, serve_reply *rep) {
    req *r = calloc(1, sizeof *r);
    if (!r) { serve_reply_error(rep, 500, "server_error", NULL, NULL, "out of memory"); return; }
    r->st = st;
    r->ep = EP_CHAT;
    memcpy(r->id, "chatcmpl-", 9);
    random_hex(r->id + 9, 24);
    if (parse_common(st, b, r, rep) < 0) { req_free(r); return; }
    json_t *msgs = json_object_get(b, "messages");
    if (!msgs || !json_is_array(msgs) || !json_array_size(msgs)) {
        serve_reply_error(rep, 400, "invalid_request_error", "messages",
                          msgs ? "invalid_type" : "missing_required_parameter",
                          "'messages' must be a non-empty array of messages");
        req_free(r);
        return;
    }
    sbuf text = {0};
    if (render_messages(st, msgs, "messages", &text, rep) < 0 ||
        render_generation_prompt(st, &text) ||
        prompt_tokens(st, text.p ? text.p : "", text.len, 1, r, rep) < 0) {
        if (!rep->body) serve_reply_error(rep, 500, "server_error", NULL, NULL, "out of memory");
        free(text.p);
        req_free(r);
        return;
    }
    free(text.p);
    start(st, r, rep);
}

static void completion(serve_state *st, json_t *b, serve_reply *rep) {
    req *r = calloc(1, sizeof *r);
    if (!r) { serve_reply_error(rep, 500, "server_error", NULL, NULL, "out of memory"); return; }
    r->st = st;
    r->ep = EP_COMPLETION;
    memcpy(r->id, "cmpl-", 5);
    random_hex(r->id + 5, 24);
    if (parse_common(st, b, r, rep) < 0) { req_free(r); return; }
    long long v;
    int k;
    if ((k = get_int(b, "best_of", 1, 1, &v, rep)) < 0) { req_free(r); return; }
    json_t *echo = json_object_get(b, "echo");
    if (echo && json_is_true(echo)) {
        serve_reply_error(rep, 400, "invalid_request_error", "echo", "unsupported_parameter",
                          "echo is not supported by msa-mem serve");
        req_free(r);
        return;
    }
    json_t *suffix = json_object_get(b, "suffix");
    if (suffix && !json_is_null(suffix)) {
        serve_reply_error(rep, 400, "invalid_request_error", "suffix", "unsupported_parameter",
                          "suffix is not supported by msa-mem serve");
        req_free(r);
        return;
    }
    json_t *p = json_object_get(b, "prompt");
    if (p && json_is_array(p) && json_array_size(p) == 1 && json_is_string(json_array_get(p, 0)))
        p = json_array_get(p, 0);
    if (p && json_is_string(p)) {
        if (prompt_tokens(st, json_string_value(p), json_string_length(p), 1, r, rep) < 0) {
            req_free(r);
            return;
        }
    } else if (p && json_is_array(p) && json_array_size(p) &&
               json_is_integer(json_array_get(p, 0))) { /* token ids */
        size_t n = json_array_size(p);
        r->tokens = malloc(n * sizeof *r->tokens);
        int32_t V = msa_tokenizer_n_vocab(st->tok);
        for (size_t i = 0; r->tokens && i < n; i++) {
            json_t *t = json_array_get(p, i);
            if (!json_is_integer(t) || json_integer_value(t) < 0 || json_integer_value(t) >= V) {
                serve_reply_error(rep, 400, "invalid_request_error", "prompt", "invalid_value",
                                  "prompt token %zu is not a token id of this model (0..%d)",
                                  i, V - 1);
                req_free(r);
                return;
            }
            r->tokens[i] = (int32_t)json_integer_value(t);
        }
        r->n_tokens = (int64_t)n;
    } else {
        serve_reply_error(rep, 400, "invalid_request_error", "prompt",
                          p ? "invalid_type" : "missing_required_parameter",
                          "'prompt' must be a string, an array of one string, or an array "
                          "of token ids");
        req_free(r);
        return;
    }
    start(st, r, rep);
}

static int valid_response_id(const char *s) {
    size_t n = strlen(s);
    if (n < 6 || n > 64 || strncmp(s, "resp_", 5)) return 0;
    for (size_t i = 5; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'z') ||
              (s[i] >= 'A' && s[i] <= 'Z') || s[i] == '_' || s[i] == '-'))
            return 0;
    return 1;
}

static void responses(serve_state *st, json_t *b, serve_reply *rep) {
    req *r = calloc(1, sizeof *r);
    if (!r) { serve_reply_error(rep, 500, "server_error", NULL, NULL, "out of memory"); return; }
    r->st = st;
    r->ep = EP_RESPONSE;
    r->store = 1;
    memcpy(r->id, "resp_", 5);
    random_hex(r->id + 5, 32);
    if (parse_common(st, b, r, rep) < 0) { req_free(r); return; }
    r->kind = 0; /* responses continue by id, never by cache key */
    if (get_bool(b, "store", &r->store, rep) < 0) { req_free(r); return; }
    json_t *ins = json_object_get(b, "instructions");
    if (ins && !json_is_null(ins) && !json_is_string(ins)) {
        serve_reply_error(rep, 400, "invalid_request_error", "instructions", "invalid_type",
                          "'instructions' must be a string");
        req_free(r);
        return;
    }
    json_t *input = json_object_get(b, "input");
    if (!input || !(json_is_string(input) || json_is_array(input))) {
        serve_reply_error(rep, 400, "invalid_request_error", "input",
                          input ? "invalid_type" : "missing_required_parameter",
                          "'input' must be a string or an array of messages");
        req_free(r);
        return;
    }
    /* the conversation so far: the previous response's snapshot */
    const int32_t *prev = NULL;
    int64_t n_prev = 0;
    json_t *pid = json_object_get(b, "previous_response_id");
    int32_t *prev_copy = NULL;
    if (pid && !json_is_null(pid)) {
        if (!json_is_string(pid)) {
            serve_reply_error(rep, 400, "invalid_request_error", "previous_response_id",
                              "invalid_type", "'previous_response_id' must be a string");
            req_free(r);
            return;
        }
        const char *id = json_string_value(pid);
        char name[128];
        int i = -1;
        pthread_mutex_lock(&st->mu);
        if (valid_response_id(id)) {
            snprintf(name, sizeof name, "srv.r.%s", id);
            i = snap_find(st, name);
        }
        if (i >= 0) {
            n_prev = st->snaps[i].n;
            prev_copy = malloc((size_t)(n_prev ? n_prev : 1) * sizeof *prev_copy);
            if (prev_copy) memcpy(prev_copy, st->snaps[i].tokens, (size_t)n_prev * sizeof *prev_copy);
            st->snaps[i].last_use = now_us();
            r->base = strdup(name);
        }
        pthread_mutex_unlock(&st->mu);
        if (i < 0) {
            serve_reply_error(rep, 404, "invalid_request_error", "previous_response_id",
                              "previous_response_not_found",
                              "Previous response with id '%.64s' not found.", id);
            req_free(r);
            return;
        }
        snprintf(r->prev_id, sizeof r->prev_id, "%s", id);
        prev = prev_copy;
    }
    sbuf text = {0};
    int bad = 0;
    if (n_prev && !msa_token_is_eog(st->tok, prev[n_prev - 1])) {
        char close[128];
        closing_text(st, close, sizeof close); /* the reply ended without its end marker */
        bad |= sb_put(&text, close, strlen(close));
    }
    if (ins && json_is_string(ins) && json_string_length(ins))
        bad |= render_message(st, &text, "system", json_string_value(ins));
    if (json_is_string(input)) bad |= render_message(st, &text, "user", json_string_value(input));
    else if (render_messages(st, input, "input", &text, rep) < 0) bad = -1;
    if (!bad) bad = render_generation_prompt(st, &text);
    size_t n_new = 0;
    int32_t *ids = NULL;
    if (!bad) {
        int flags = MSA_TOK_PARSE_SPECIAL |
                    (!n_prev && msa_tokenizer_add_bos(st->tok) ? MSA_TOK_ADD_BOS : 0);
        bad = tokenize(st, text.p ? text.p : "", text.len, flags, &ids, &n_new) ? 1 : 0;
    }
    free(text.p);
    if (bad) {
        if (!rep->body) serve_reply_error(rep, 500, "server_error", NULL, NULL, "out of memory");
        free(prev_copy);
        free(ids);
        req_free(r);
        return;
    }
    r->n_tokens = n_prev + (int64_t)n_new;
    r->tokens = malloc((size_t)(r->n_tokens ? r->n_tokens : 1) * sizeof *r->tokens);
    if (r->tokens) {
        if (n_prev) memcpy(r->tokens, prev, (size_t)n_prev * sizeof *prev);
        if (n_new) memcpy(r->tokens + n_prev, ids, n_new * sizeof *ids);
    }
    r->n_base = r->base ? n_prev : 0;
    free(prev_copy);
    free(ids);
    r->echo = json_object();
    json_object_set_new(r->echo, "instructions", ins && json_is_string(ins) ? json_copy(ins) : json_null());
    json_object_set_new(r->echo, "max_output_tokens", json_integer(r->gp.max_tokens));
    json_object_set_new(r->echo, "temperature", json_real(r->gp.sampling.temperature));
    json_object_set_new(r->echo, "top_p", json_real(r->gp.sampling.top_p));
    json_object_set_new(r->echo, "metadata", json_object());
    json_object_set_new(r->echo, "text", json_pack("{s{ss}}", "format", "type", "text"));
    json_object_set_new(r->echo, "truncation", json_string("disabled"));
    if (!r->tokens) { serve_reply_error(rep, 500, "server_error", NULL, NULL, "out of memory"); req_free(r); return; }
    start(st, r, rep);
}

static void models(serve_state *st, serve_reply *rep) {
    rep->status = 200;
    rep->body = json_pack("{ss s[{ss ss sI ss}]}", "object", "list", "data", "id",
                          st->cfg.model_id, "object", "model", "created",
                          (json_int_t)time(NULL), "owned_by", "msa-mem");
}

void serve_api_handle(serve_state *st, const char *method, const char *path, json_t *body,
                      serve_reply *out) {
    static const struct { const char *path, *method; } routes[] = {
        {"/v1/models", "GET"}, {"/v1/chat/completions", "POST"},
        {"/v1/completions", "POST"}, {"/v1/responses", "POST"}, {"/health", "GET"},
    };
    int route = -1;
    for (int i = 0; i < 5; i++)
        if (!strcmp(path, routes[i].path)) route = i;
    if (route < 0) {
        serve_reply_error(out, 404, "invalid_request_error", NULL, "unknown_url",
                          "Unknown request URL: %s %.200s (this server has GET /v1/models, "
                          "POST /v1/chat/completions, /v1/completions, /v1/responses)",
                          method, path);
        return;
    }
    if (strcmp(method, routes[route].method)) {
        serve_reply_error(out, 405, "invalid_request_error", NULL, "method_not_allowed",
                          "%s %s is not served; use %s", method, path, routes[route].method);
        return;
    }
    switch (route) {
    case 0: models(st, out); break;
    case 1: chat(st, body, out); break;
    case 2: completion(st, body, out); break;
    case 3: responses(st, body, out); break;
    case 4:
        pthread_mutex_lock(&st->mu);
        out->status = 200;
        out->body = json_pack("{ss si si si sI sI}", "status", "ok", "in_flight", st->in_flight,
                              "snapshots", st->n_snaps, "live", st->n_live, "requests",
                              (json_int_t)st->n_requests, "rejected", (json_int_t)st->n_rejected);
        pthread_mutex_unlock(&st->mu);
        break;
    }
}

#endif /* MSA_HAVE_MHD */
