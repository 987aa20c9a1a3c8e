/*
 * cmd_session.c: the session commands of msa-mem: `new`, `ingest`, `chat`,
 * `ask` and `gen`. They are thin: each opens an engine (the model given by
 * --model or MSA_MODEL, the store by --store or MSA_STORE), opens one
 * session and calls the public API (engine/msa.h, section 4d).
 *
 * Per-session CLI state. The session's parameters (the MSA top-k of `new
 * --top-k`) are stored in the session's record (msa_session_set_params), so
 * fork, export, import and every C or Python caller see them. What the
 * store does not keep is kept in a small JSON sidecar, STORE/cli/<hash of
 * name>.json: the manifest of ingested files (absolute path -> size, mtime,
 * FNV-1a 64-bit content hash, source tag), so that running `ingest` again
 * skips unchanged files. Builds before session parameters kept the top-k in
 * the sidecar ("top_k"): a session whose record stores no top-k takes it
 * from there, once, into its record (open_session).
 * The sidecar records the session's creation time; a sidecar whose time
 * differs from the session's (the session was removed and created again,
 * or is a fork or an import of another) is ignored. It is written after
 * every ingested file by write-and-rename; a crash between a commit and
 * that write means the file is ingested again next time.
 *
 * Source tags and lines. `ingest` appends each file as one text that starts
 * with the line "### FILE: <path>", tagged with the path; the session layer
 * turns that into "path:first-last" per block, counting the header as line
 * 1. `ask --explain` subtracts that header line again for the sources found
 * in the manifest, so the ranges it prints are the file's own lines.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* ---- small helpers --------------------------------------------------------- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig) {
    (void)sig;
    g_interrupted = 1;
}

/* SIGINT sets a flag that the progress and token callbacks read, so that the
 * library stops at a chunk boundary; a second Ctrl-C kills as usual. */
static void catch_sigint(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
}

static uint64_t fnv1a64(const void *data, size_t n, uint64_t h) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}
#define FNV_INIT 14695981039346656037ull

static char *read_stream(FILE *f, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *d = malloc(cap + 1);
    while (d) {
        size_t got = fread(d + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        char *e = realloc(d, cap * 2 + 1);
        if (!e) { free(d); return NULL; }
        d = e;
        cap *= 2;
    }
    if (d) d[n] = 0;
    *len = n;
    return d;
}

/* Reads a whole file (at most `max` bytes; larger files fail with EFBIG). */
static char *read_file(const char *path, size_t max, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (uint64_t)st.st_size > max) {
        fclose(f);
        errno = EFBIG;
        return NULL;
    }
    char *d = read_stream(f, len);
    fclose(f);
    return d;
}

/* ---- options shared by the commands ---------------------------------------- */

typedef struct run_opts {
    msa_sampling_params sampling;
    int threads;
    int max_tokens;
    int tmpl;          /* chat template; -1: the model's */
    int dense;
    int block_size;    /* new sessions */
    int top_k;         /* MSA blocks read per step, for new sessions; an
                          existing session keeps its own */
    int create;        /* --create: make the session when it is missing */
} run_opts;

static run_opts run_opts_default(void) {
    run_opts o;
    memset(&o, 0, sizeof o);
    o.sampling = msa_sampling_default_params();
    o.max_tokens = 128;
    o.tmpl = -1;
    return o;
}

/* Matches "--name VALUE" or "--name=VALUE" at argv[*i]; on a match *val is
 * the value and *i moves past it. Returns 1 on a match, 0 when argv[*i] is
 * another option, -1 when the value is missing (usage error printed). */
static int opt_value(const char *cmd, int argc, char **argv, int *i, const char *name,
                     const char **val) {
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n)) return 0;
    if (a[n] == '=') { *val = a + n + 1; return 1; }
    if (a[n]) return 0;
    if (*i + 1 >= argc) {
        msa_cli_usage_error(cmd, "%s needs a value", name);
        return -1;
    }
    *val = argv[++*i];
    return 1;
}

static int parse_int(const char *cmd, const char *name, const char *s, long lo, long hi,
                     int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return msa_cli_usage_error(cmd, "%s takes an integer in %ld..%ld, not '%s'", name, lo,
                                   hi, s);
    *out = (int)v;
    return 0;
}

static int parse_float(const char *cmd, const char *name, const char *s, double lo,
                       double hi, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return msa_cli_usage_error(cmd, "%s takes a number in %g..%g, not '%s'", name, lo, hi,
                                   s);
    *out = (float)v;
    return 0;
}

enum { OPT_SAMPLING = 1, OPT_GEN = 2, OPT_TEMPLATE = 4, OPT_CREATE = 8, OPT_MAY_CREATE = 16 };

/* Sessions are created by `new`, or by a command given --create: a typo in a
 * name is an error (exit 3), not a new empty session. */
static unsigned open_flags(const run_opts *o) {
    return o->create ? MSA_SESSION_CREATE : MSA_SESSION_OPEN;
}

/* Parses one shared option at argv[*i]. Returns 1 when taken, 0 when not a
 * shared option, or MSA_EXIT_USAGE + 100 on a bad value (message printed). */
static int parse_shared(const char *cmd, int which, int argc, char **argv, int *i,
                        run_opts *o) {
    const char *v;
    int r;
#define OPT(name) ((r = opt_value(cmd, argc, argv, i, name, &v)) != 0)
#define BAD (MSA_EXIT_USAGE + 100)
    if (OPT("--threads")) {
        if (r < 0 || parse_int(cmd, "--threads", v, 0, 4096, &o->threads)) return BAD;
        return 1;
    }
    if ((which & OPT_MAY_CREATE) && !strcmp(argv[*i], "--create")) {
        o->create = 1;
        return 1;
    }
    if (which & OPT_CREATE) {
        if (OPT("--block-size")) {
            if (r < 0 || parse_int(cmd, "--block-size", v, 1, 1 << 16, &o->block_size)) return BAD;
            return 1;
        }
        if (OPT("--top-k")) {
            if (r < 0 || parse_int(cmd, "--top-k", v, 1, 4096, &o->top_k)) return BAD;
            return 1;
        }
    }
    if (which & OPT_SAMPLING) {
        msa_sampling_params *s = &o->sampling;
        if (OPT("--temp")) {
            if (r < 0 || parse_float(cmd, "--temp", v, 0, 100, &s->temperature)) return BAD;
            return 1;
        }
        if (OPT("--top-k")) {
            if (r < 0 || parse_int(cmd, "--top-k", v, 0, 1 << 30, &s->top_k)) return BAD;
            return 1;
        }
        if (OPT("--top-p")) {
            if (r < 0 || parse_float(cmd, "--top-p", v, 0, 1, &s->top_p)) return BAD;
            if (s->top_p == 0) {
                msa_cli_usage_error(cmd, "--top-p takes a number in (0, 1] (1: off), not '%s'", v);
                return BAD;
            }
            return 1;
        }
        if (OPT("--min-p")) {
            if (r < 0 || parse_float(cmd, "--min-p", v, 0, 1, &s->min_p)) return BAD;
            return 1;
        }
        if (OPT("--repeat-penalty")) {
            if (r < 0 || parse_float(cmd, "--repeat-penalty", v, 0, 100, &s->repeat_penalty))
                return BAD;
            if (s->repeat_penalty == 0) {
                msa_cli_usage_error(cmd, "--repeat-penalty takes a number in (0, 100] (1: off), "
                                    "not '%s'", v);
                return BAD;
            }
            return 1;
        }
        if (OPT("--repeat-last-n")) {
            if (r < 0 || parse_int(cmd, "--repeat-last-n", v, 0, 1 << 20, &s->repeat_last_n))
                return BAD;
            return 1;
        }
        if (OPT("--seed")) {
            if (r < 0) return BAD;
            char *end;
            errno = 0;
            unsigned long long seed = strtoull(v, &end, 0);
            if (errno || end == v || *end) {
                msa_cli_usage_error(cmd, "--seed takes an integer, not '%s'", v);
                return BAD;
            }
            s->seed = seed;
            return 1;
        }
    }
    if (which & OPT_GEN) {
        if (OPT("--max-tokens") || (r = opt_value(cmd, argc, argv, i, "-n", &v)) != 0) {
            if (r < 0 || parse_int(cmd, "--max-tokens", v, 0, 1 << 24, &o->max_tokens)) return BAD;
            return 1;
        }
        if (!strcmp(argv[*i], "--dense")) { o->dense = 1; return 1; }
    }
    if (which & OPT_TEMPLATE) {
        if (OPT("--template")) {
            if (r < 0) return BAD;
            o->tmpl = msa_chat_template_from_name(v);
            if (o->tmpl < 0) {
                msa_cli_usage_error(cmd, "unknown template '%s' (plain, llama3, chatml, llama2)", v);
                return BAD;
            }
            return 1;
        }
    }
    return 0;
#undef OPT
#undef BAD
}

static const char *sampling_help =
    "Sampling (greedy by default):\n"
    "  --temp T            temperature, 0..100; 0 is greedy (default 0)\n"
    "  --top-k K           keep the K most likely tokens (0: off)\n"
    "  --top-p P           nucleus sampling, in (0, 1] (1: off)\n"
    "  --min-p P           drop tokens below P x the best one's probability (0: off)\n"
    "  --repeat-penalty R  penalise recent tokens, in (0, 100] (1: off)\n"
    "  --repeat-last-n N   how far back the penalty looks (64)\n"
    "  --seed S            same seed, same session state: same tokens (0)\n"
    "  --threads N         CPU workers (0: one per core)\n";

/* ---- the sidecar ------------------------------------------------------------ */

typedef struct sidecar {
    char path[4200];
    json_t *root;      /* {"session", "created", "top_k", "files": {abs: {...}}} */
} sidecar;

static int store_dir_of(const msa_cli *cli, char *buf, size_t n) {
    if (cli->store_dir) {
        snprintf(buf, n, "%s", cli->store_dir);
        return MSA_OK;
    }
    return msa_store_default_dir(buf, n);
}

/* Loads the sidecar of `name` (an empty one when there is none). */
static void sidecar_load(const msa_cli *cli, const char *name, sidecar *sc) {
    char dir[4096];
    sc->root = NULL;
    sc->path[0] = 0;
    if (store_dir_of(cli, dir, sizeof dir) == MSA_OK) {
        uint64_t h = fnv1a64(name, strlen(name), FNV_INIT);
        snprintf(sc->path, sizeof sc->path, "%s/cli/%016llx.json", dir, (unsigned long long)h);
        json_error_t err;
        sc->root = json_load_file(sc->path, 0, &err);
        json_t *want = msa_cli_jstr(name); /* names need not be UTF-8 */
        if (sc->root && (!json_is_object(sc->root) ||
                         !json_equal(json_object_get(sc->root, "session"), want))) {
            json_decref(sc->root);
            sc->root = NULL;
        }
        json_decref(want);
    }
    if (!sc->root) {
        sc->root = json_object();
        json_object_set_new(sc->root, "session", msa_cli_jstr(name));
    }
}

/* The top-k that builds before session parameters kept here (0: none). */
static int sidecar_top_k(const sidecar *sc) {
    return (int)json_integer_value(json_object_get(sc->root, "top_k"));
}

/* The manifest key of a file: its real path, or for a path that is not
 * valid UTF-8 (which a JSON key cannot hold) "hex:" and its bytes in hex. */
static void manifest_key(const char *real, char *key, size_t n) {
    size_t len = strlen(real), clean_len;
    char *c = msa_cli_utf8_clean(real, len, &clean_len);
    int valid = c && clean_len == len && !memcmp(c, real, len);
    free(c);
    if (valid) {
        snprintf(key, n, "%s", real);
        return;
    }
    size_t o = (size_t)snprintf(key, n, "hex:");
    for (size_t i = 0; i < len && o + 3 < n; i++) o += (size_t)snprintf(key + o, n - o, "%02x", (unsigned char)real[i]);
}

static void sidecar_validate(const msa_cli *cli, sidecar *sc, int64_t created,
                             const char *parent);

int msa_cli_legacy_top_k(const msa_cli *cli, const char *name, int64_t created,
                         const char *parent) {
    sidecar sc;
    sidecar_load(cli, name, &sc);
    sidecar_validate(cli, &sc, created, parent);
    int k = sidecar_top_k(&sc);
    json_decref(sc.root);
    return k > 0 ? k : 0;
}

/* Creation time (0 when unknown) and parent ("" when none) of `name`. */
static int64_t session_created(msa_engine *e, const char *name, char *parent, size_t n_parent) {
    msa_store_session_info *list;
    size_t n;
    int64_t t = 0;
    parent[0] = 0;
    if (msa_store_list(msa_engine_store(e), &list, &n) != MSA_OK) return 0;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(list[i].name, name)) {
            t = list[i].created;
            snprintf(parent, n_parent, "%s", list[i].parent);
        }
    msa_store_list_free(list);
    return t;
}

static void sidecar_load(const msa_cli *cli, const char *name, sidecar *sc);

/* Drops a sidecar that belongs to an earlier session of the same name. A
 * session without one that was forked from another (`msa-mem fork`) starts
 * from its parent's: the fork holds what the parent held. */
static void sidecar_validate(const msa_cli *cli, sidecar *sc, int64_t created,
                             const char *parent) {
    json_t *c = json_object_get(sc->root, "created");
    if (c && json_integer_value(c) != created) {
        json_object_del(sc->root, "files");
        json_object_del(sc->root, "top_k");
        c = NULL;
    }
    if (!c && parent && *parent) {
        sidecar ps;
        sidecar_load(cli, parent, &ps);
        json_t *f = json_object_get(ps.root, "files"), *k = json_object_get(ps.root, "top_k");
        if (f) json_object_set(sc->root, "files", f);
        if (k) json_object_set(sc->root, "top_k", k);
        json_decref(ps.root);
    }
    json_object_set_new(sc->root, "created", json_integer(created));
}

static int sidecar_save(const sidecar *sc) {
    if (!sc->path[0]) return MSA_OK;
    char dir[sizeof sc->path], tmp[sizeof sc->path + 32];
    snprintf(dir, sizeof dir, "%s", sc->path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    mkdir(dir, 0755);
    snprintf(tmp, sizeof tmp, "%s.tmp%ld", sc->path, (long)getpid());
    if (json_dump_file(sc->root, tmp, JSON_INDENT(1) | JSON_SORT_KEYS) != 0 ||
        rename(tmp, sc->path) != 0) {
        unlink(tmp);
        fprintf(stderr, "msa-mem: warning: cannot write %s: %s\n", sc->path, strerror(errno));
        return MSA_EIO;
    }
    return MSA_OK;
}

/* ---- opening ---------------------------------------------------------------- */

typedef struct opened {
    msa_engine *e;
    msa_session *s;
    sidecar sc;
    double open_s;   /* engine + session open time */
    double sess_s;   /* session open time alone */
} opened;

static void opened_close(opened *o) {
    msa_session_close(o->s);
    msa_engine_free(o->e);
    json_decref(o->sc.root);
    memset(o, 0, sizeof *o);
}

/* Opens the engine and session `name` (flags as msa_session_open). */
static int open_session(msa_cli *cli, const char *cmd, const char *name, int flags,
                        const run_opts *ro, opened *o) {
    memset(o, 0, sizeof *o);
    if (!cli->model)
        return msa_cli_usage_error(cmd, "no model: give --model PATH (a GGUF file) or set "
                                   "MSA_MODEL");
    if (cli->device && strcmp(cli->device, "cpu") && strcmp(cli->device, "auto") &&
        strncmp(cli->device, "cuda", 4))
        return msa_cli_usage_error(cmd, "--device takes cpu, cuda or cuda:N, not '%s'",
                                   cli->device);
    sidecar_load(cli, name, &o->sc);
    msa_engine_params p = msa_engine_default_params();
    p.model_path = cli->model;
    p.store_dir = cli->store_dir;
    p.n_threads = ro->threads;
    p.block_size = ro->block_size;
    p.top_k = ro->top_k; /* a session created here stores it; others keep theirs */
    p.dense = ro->dense;
    if (cli->device && !strncmp(cli->device, "cuda", 4)) {
        p.device = MSA_DEVICE_CUDA;
        p.cuda_device = cli->device[4] == ':' ? atoi(cli->device + 5) : 0;
    }
    double t0 = now_s();
    int rc = msa_engine_open(&p, &o->e);
    if (rc) {
        json_decref(o->sc.root);
        o->sc.root = NULL;
        return msa_cli_fail(rc, "opening the model %s and the store", cli->model);
    }
    double t1 = now_s();
    rc = msa_session_open(o->e, name, flags, &o->s);
    o->sess_s = now_s() - t1;
    o->open_s = now_s() - t0;
    if (rc) {
        opened_close(o);
        if (rc == MSA_ENOTFOUND)
            return msa_cli_fail(rc, "session '%s' (create it with `msa-mem new %s`, or pass "
                                "--create)", name, name);
        return msa_cli_fail(rc, "cannot open session '%s'", name);
    }
    char parent[MSA_STORE_NAME_MAX + 1];
    int64_t created = session_created(o->e, name, parent, sizeof parent);
    sidecar_validate(cli, &o->sc, created, parent);
    /* a session of an earlier build: its top-k was in the sidecar (its own,
     * or for a fork its parent's); store it in the record now */
    msa_store_session *ss = NULL;
    msa_session_params stored = msa_session_default_params();
    rc = msa_store_session_open(msa_engine_store(o->e), name, NULL, &ss);
    if (!rc) rc = msa_store_session_get_params(ss, &stored);
    msa_store_session_close(ss);
    if (rc) {
        opened_close(o);
        return msa_cli_fail(rc, "reading the parameters of session '%s'", name);
    }
    int legacy = sidecar_top_k(&o->sc);
    if (!stored.top_k && legacy > 0) {
        msa_session_params sp = msa_session_default_params();
        sp.top_k = legacy;
        if ((rc = msa_session_set_params(o->s, &sp))) {
            opened_close(o);
            return msa_cli_fail(rc, "storing the top-k of session '%s'", name);
        }
        if (cli->verbose)
            fprintf(stderr, "msa-mem: session '%s': top-k %d (from %s) is now stored with "
                            "the session\n", name, legacy, o->sc.path);
    }
    msa_session_params now;
    if (ro->top_k && msa_session_get_params(o->s, &now) == MSA_OK && now.top_k != ro->top_k &&
        !cli->quiet)
        fprintf(stderr, "msa-mem: session '%s' exists and keeps its top-k %d (--top-k applies "
                        "to a session created here)\n", name, now.top_k);
    return 0;
}

static int64_t n_tokens_of(msa_session *s) {
    int64_t n;
    msa_session_tokens(s, &n);
    return n;
}

/* ---- show ------------------------------------------------------------------- */

static void show_help(void) {
    printf("usage: msa-mem show NAME [--range A:B] [--ids]\n"
           "\n"
           "Prints what session NAME holds, as the model's tokenizer writes it (chat\n"
           "template tokens included): the text it ingested, the messages and the\n"
           "generations, in order. Reads the store only (the session may be in use);\n"
           "the model (--model or MSA_MODEL) must be the one the session was written\n"
           "by.\n"
           "\n"
           "  --range A:B   tokens A up to (not including) B; either may be left out\n"
           "                (0, the end) and a negative one counts from the end\n"
           "  --ids         the token ids, one line, instead of the text\n"
           "  --json        {\"session\", \"tokens\", \"start\", \"end\", \"text\", \"ids\"}\n"
           "\n"
           "Examples:\n"
           "  msa-mem show notes\n"
           "  msa-mem show notes --range -200:      # the last 200 tokens\n"
           "  msa-mem show notes --range 0:64 --ids\n"
           "  msa-mem show notes --json | jq -r .text\n");
}

/* "A:B" with either side optional and negatives from the end, clamped. */
static int parse_range(const char *s, int64_t n, int64_t *a, int64_t *b) {
    const char *colon = strchr(s, ':');
    if (!colon) return -1;
    char *end;
    *a = 0;
    *b = n;
    if (colon > s) {
        long long v = strtoll(s, &end, 10);
        if (end != colon) return -1;
        *a = v < 0 ? n + v : v;
    }
    if (colon[1]) {
        long long v = strtoll(colon + 1, &end, 10);
        if (*end) return -1;
        *b = v < 0 ? n + v : v;
    }
    if (*a < 0) *a = 0;
    if (*b > n) *b = n;
    if (*b < *a) *b = *a;
    return 0;
}

int msa_cmd_show(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv)) {
        show_help();
        return 0;
    }
    const char *name = NULL, *range = NULL;
    int ids_only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--range")) {
            if (i + 1 >= argc) return msa_cli_usage_error("show", "--range needs A:B");
            range = argv[++i];
        } else if (!strcmp(argv[i], "--ids")) {
            ids_only = 1;
        } else if (argv[i][0] == '-' && argv[i][1] && !(argv[i][1] >= '0' && argv[i][1] <= '9')) {
            return msa_cli_usage_error("show", "unknown option '%s'", argv[i]);
        } else if (name) {
            return msa_cli_usage_error("show", "one session at a time ('%s' and '%s')", name, argv[i]);
        } else {
            name = argv[i];
        }
    }
    if (!name) return msa_cli_usage_error("show", "which session? (msa-mem show NAME)");
    if (!cli->model)
        return msa_cli_usage_error("show", "no model: give --model PATH (a GGUF file) or set MSA_MODEL");
    msa_engine_params p = msa_engine_default_params();
    p.model_path = cli->model;
    p.store_dir = cli->store_dir;
    msa_engine *e;
    int rc = msa_engine_open(&p, &e);
    if (rc) return msa_cli_fail(rc, "opening the model %s and the store", cli->model);
    msa_store_session *ss = NULL;
    msa_store_session_info in;
    rc = msa_store_session_open(msa_engine_store(e), name, NULL, &ss);
    if (!rc) rc = msa_store_session_stat(ss, &in);
    if (rc) {
        msa_store_session_close(ss);
        msa_engine_free(e);
        if (rc == MSA_ENOTFOUND) return msa_cli_fail(rc, "show (`msa-mem ls` lists the sessions)");
        return msa_cli_fail(rc, "show");
    }
    if (strcmp(in.fingerprint, msa_engine_fingerprint(e))) {
        fprintf(stderr, "msa-mem: session '%s' was written by model %s, not by %s (%s): its tokens "
                        "mean nothing to this tokenizer\n", name, in.fingerprint, cli->model,
                msa_engine_fingerprint(e));
        msa_store_session_close(ss);
        msa_engine_free(e);
        return msa_cli_exit_code(MSA_EMODEL);
    }
    int64_t n = (int64_t)in.n_tokens, a = 0, b = n;
    if (range && parse_range(range, n, &a, &b)) {
        msa_store_session_close(ss);
        msa_engine_free(e);
        return msa_cli_usage_error("show", "--range takes A:B (integers, either may be left out), "
                                   "not '%s'", range);
    }
    int32_t *ids = malloc((size_t)(b - a + 1) * sizeof *ids);
    rc = ids ? msa_store_read_tokens(ss, (uint64_t)a, (uint64_t)(b - a), ids) : MSA_ENOMEM;
    msa_store_session_close(ss);
    char *text = NULL;
    size_t len = 0, cap = (size_t)(b - a) * 8 + 64;
    const msa_tokenizer *tok = msa_engine_tokenizer(e);
    if (!rc && !ids_only) {
        text = malloc(cap);
        rc = text ? msa_detokenize(tok, ids, (size_t)(b - a), 0, text, cap, &len) : MSA_ENOMEM;
        if (rc == MSA_ERANGE) {
            char *more = realloc(text, len);
            rc = more ? msa_detokenize(tok, ids, (size_t)(b - a), 0, more, len, &len) : MSA_ENOMEM;
            if (more) text = more;
        }
    }
    if (rc) {
        free(ids);
        free(text);
        msa_engine_free(e);
        return msa_cli_fail(rc, "session '%s': reading tokens %lld..%lld", name, (long long)a, (long long)b);
    }
    if (cli->json) {
        printf("{\"session\": ");
        msa_cli_json_write_str(stdout, name, strlen(name));
        printf(", \"tokens\": %lld, \"start\": %lld, \"end\": %lld", (long long)n, (long long)a, (long long)b);
        if (!ids_only) {
            printf(", \"text\": ");
            msa_cli_json_write_str(stdout, text, len);
        }
        printf(", \"ids\": [");
        for (int64_t i = 0; i < b - a; i++) printf(i ? ", %d" : "%d", ids[i]);
        printf("]}\n");
    } else if (ids_only) {
        for (int64_t i = 0; i < b - a; i++) printf(i ? " %d" : "%d", ids[i]);
        putchar('\n');
    } else {
        fwrite(text, 1, len, stdout);
        if (len && text[len - 1] != '\n') putchar('\n');
    }
    free(ids);
    free(text);
    msa_engine_free(e);
    return 0;
}

/* ---- new ------------------------------------------------------------------- */

static void new_help(void) {
    printf("usage: msa-mem new NAME [--block-size N] [--top-k K]\n"
           "\n"
           "Creates an empty session bound to the model (--model or MSA_MODEL). The\n"
           "session remembers the model's fingerprint and refuses other models.\n"
           "\n"
           "  --block-size N   tokens per memory block (default 128). Smaller blocks\n"
           "                   make selection finer-grained\n"
           "  --top-k K        memory blocks each step reads per KV group, the local\n"
           "                   block included (default 16); stored with the session,\n"
           "                   so fork, export, import and the C and Python APIs use\n"
           "                   it too (`msa-mem info` shows it)\n"
           "  --threads N      CPU workers (0: one per core)\n"
           "\n"
           "Examples:\n"
           "  msa-mem --model m.gguf new notes\n"
           "  msa-mem new repo --block-size 64 --top-k 8\n"
           "  MSA_STORE=/tmp/store msa-mem new scratch --json\n");
}

int msa_cmd_new(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv)) { new_help(); return 0; }
    run_opts ro = run_opts_default();
    const char *name = NULL;
    for (int i = 1; i < argc; i++) {
        int r = parse_shared("new", OPT_CREATE, argc, argv, &i, &ro);
        if (r > 1) return MSA_EXIT_USAGE;
        if (r == 1) continue;
        if (argv[i][0] == '-' && argv[i][1])
            return msa_cli_usage_error("new", "unknown option '%s'", argv[i]);
        if (name) return msa_cli_usage_error("new", "one session name only");
        name = argv[i];
    }
    if (!name) return msa_cli_usage_error("new", "which session? give NAME");
    opened o;
    int rc = open_session(cli, "new", name, MSA_SESSION_CREATE | MSA_SESSION_EXCLUSIVE, &ro, &o);
    if (rc) return rc;
    msa_session_info info;
    msa_session_get_info(o.s, &info);
    sidecar_save(&o.sc);
    if (cli->json) {
        json_t *j = json_pack("{s:o, s:i, s:i, s:i, s:s}", "name", msa_cli_jstr(name), "block_size",
                              info.block_size, "top_k", info.top_k, "n_layers", info.n_layers,
                              "fingerprint", info.fingerprint);
        json_dumpf(j, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(j);
    } else if (!cli->quiet) {
        printf("created session '%s': block size %d, top-k %d, %d layers, model %.16s...\n",
               name, info.block_size, info.top_k, info.n_layers, info.fingerprint);
    }
    opened_close(&o);
    return 0;
}

/* ---- ingest: finding files ---------------------------------------------------- */

typedef struct ingest_item {
    char *abs;     /* path to open */
    char *rel;     /* source tag: the path relative to the ingested folder */
    int is_stdin;
} ingest_item;

typedef struct item_list {
    ingest_item *v;
    size_t n, cap;
    size_t ignored;  /* left out by .gitignore (non-git folders) */
} item_list;

static int items_add(item_list *l, const char *abs, const char *rel, int is_stdin) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        ingest_item *v = realloc(l->v, cap * sizeof *v);
        if (!v) return MSA_ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    ingest_item *it = &l->v[l->n];
    it->abs = strdup(abs);
    it->rel = strdup(rel);
    it->is_stdin = is_stdin;
    if (!it->abs || !it->rel) { free(it->abs); free(it->rel); return MSA_ENOMEM; }
    l->n++;
    return MSA_OK;
}

static void items_free(item_list *l) {
    for (size_t i = 0; i < l->n; i++) { free(l->v[i].abs); free(l->v[i].rel); }
    free(l->v);
}

/* Runs argv (no shell), collecting its stdout. Returns the exit status, or
 * -1 when it could not be run. */
static int run_capture(char *const argv[], char **out, size_t *len) {
    int fd[2];
    *out = NULL;
    *len = 0;
    if (pipe(fd)) return -1;
    pid_t pid = fork();
    if (pid < 0) { close(fd[0]); close(fd[1]); return -1; }
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(fd[1]);
    FILE *f = fdopen(fd[0], "rb");
    if (f) {
        *out = read_stream(f, len);
        fclose(f);
    } else {
        close(fd[0]);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A folder inside a git work tree: the files git tracks under it. Returns 1
 * when it was one (files added), 0 when not, <0 on failure. */
static int git_files(const char *dir, item_list *l) {
    char *out;
    size_t len;
    char *check[] = {"git", "-C", (char *)dir, "rev-parse", "--is-inside-work-tree", NULL};
    int st = run_capture(check, &out, &len);
    int inside = st == 0 && out && !strncmp(out, "true", 4);
    free(out);
    if (!inside) return 0;
    char *ls[] = {"git", "-C", (char *)dir, "ls-files", "-z", NULL};
    if (run_capture(ls, &out, &len) != 0 || !out) { free(out); return -1; }
    for (size_t p = 0; p < len;) {
        const char *rel = out + p;
        size_t n = strlen(rel);
        char abs[PATH_MAX + 256];
        snprintf(abs, sizeof abs, "%s/%s", dir, rel);
        struct stat sb;
        if (n && lstat(abs, &sb) == 0 && S_ISREG(sb.st_mode) && items_add(l, abs, rel, 0)) {
            free(out);
            return MSA_ENOMEM;
        }
        p += n + 1;
    }
    free(out);
    return 1;
}

/* gitignore, the subset we honour (folders that are not git work trees):
 * blank lines and '#' comments; '!' negation; a trailing '/' matches
 * folders only; a pattern holding a '/' elsewhere is anchored to the folder
 * of its .gitignore and matched against the path below it, otherwise
 * against the name alone; '*', '?' and '[...]' as fnmatch(3) with '*' not
 * crossing '/'; a leading "**" + "/" means "in any folder" and a trailing
 * "/" + "**" means "everything inside". The last matching rule wins; an
 * ignored folder is not entered. Symbolic links are not followed. */
typedef struct ign_rule {
    char *base;      /* folder of the .gitignore, relative ("" at the top) */
    char *pat;
    int neg, dir_only, anchored;
} ign_rule;

typedef struct ign_set {
    ign_rule *v;
    size_t n, cap;
} ign_set;

static void ign_load(ign_set *s, const char *abs_dir, const char *rel_dir) {
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/.gitignore", abs_dir);
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        size_t n = strcspn(line, "\r\n");
        line[n] = 0;
        while (n && line[n - 1] == ' ') line[--n] = 0;
        char *p = line;
        if (!*p || *p == '#') continue;
        ign_rule r = {0};
        if (*p == '!') { r.neg = 1; p++; }
        else if (*p == '\\') p++;
        n = strlen(p);
        if (n >= 3 && !strcmp(p + n - 3, "/**")) { p[n - 3] = 0; n -= 3; }
        if (n && p[n - 1] == '/') { r.dir_only = 1; p[--n] = 0; }
        if (!strncmp(p, "**/", 3)) p += 3;
        else if (strchr(p, '/')) r.anchored = 1;
        if (*p == '/') p++;
        if (!*p) continue;
        if (s->n == s->cap) {
            size_t cap = s->cap ? 2 * s->cap : 16;
            ign_rule *v = realloc(s->v, cap * sizeof *v);
            if (!v) break;
            s->v = v;
            s->cap = cap;
        }
        r.base = strdup(rel_dir);
        r.pat = strdup(p);
        if (!r.base || !r.pat) { free(r.base); free(r.pat); break; }
        s->v[s->n++] = r;
    }
    fclose(f);
}

static int ign_match(const ign_set *s, const char *rel, const char *name, int is_dir) {
    int ignored = 0;
    for (size_t i = 0; i < s->n; i++) {
        const ign_rule *r = &s->v[i];
        if (r->dir_only && !is_dir) continue;
        size_t bl = strlen(r->base);
        if (bl && (strncmp(rel, r->base, bl) || rel[bl] != '/')) continue;
        const char *below = bl ? rel + bl + 1 : rel;
        int m = r->anchored ? fnmatch(r->pat, below, FNM_PATHNAME) == 0
                            : fnmatch(r->pat, name, 0) == 0;
        if (m) ignored = !r->neg;
    }
    return ignored;
}

static void ign_pop(ign_set *s, size_t n) {
    while (s->n > n) {
        s->n--;
        free(s->v[s->n].base);
        free(s->v[s->n].pat);
    }
}

static int walk(const char *abs_dir, const char *rel_dir, ign_set *ign, item_list *l) {
    size_t mark = ign->n;
    ign_load(ign, abs_dir, rel_dir);
    struct dirent **ents;
    int n = scandir(abs_dir, &ents, NULL, alphasort);
    if (n < 0) { ign_pop(ign, mark); return MSA_OK; }
    int rc = MSA_OK;
    for (int i = 0; i < n; i++) {
        const char *nm = ents[i]->d_name;
        if (rc || !strcmp(nm, ".") || !strcmp(nm, "..") || !strcmp(nm, ".git")) {
            free(ents[i]);
            continue;
        }
        char abs[PATH_MAX + 256], rel[PATH_MAX + 256];
        snprintf(abs, sizeof abs, "%s/%s", abs_dir, nm);
        if (*rel_dir) snprintf(rel, sizeof rel, "%s/%s", rel_dir, nm);
        else snprintf(rel, sizeof rel, "%s", nm);
        struct stat st;
        if (lstat(abs, &st) == 0 && (S_ISDIR(st.st_mode) || S_ISREG(st.st_mode))) {
            int is_dir = S_ISDIR(st.st_mode);
            if (ign_match(ign, rel, nm, is_dir)) l->ignored++;
            else if (is_dir) rc = walk(abs, rel, ign, l);
            else rc = items_add(l, abs, rel, 0);
        }
        free(ents[i]);
    }
    free(ents);
    ign_pop(ign, mark);
    return rc;
}

static int collect(const char *arg, item_list *l) {
    if (!strcmp(arg, "-")) return items_add(l, "-", "stdin", 1);
    struct stat st;
    if (stat(arg, &st) != 0)
        return errno; /* positive: -ENOENT would read as MSA_ENOMEM */
    if (S_ISREG(st.st_mode)) {
        const char *rel = arg;
        while (!strncmp(rel, "./", 2)) rel += 2;
        return items_add(l, arg, rel, 0);
    }
    if (!S_ISDIR(st.st_mode)) return EINVAL;
    int g = git_files(arg, l);
    if (g) return g < 0 ? g : MSA_OK;
    ign_set ign = {0};
    int rc = walk(arg, "", &ign, l);
    ign_pop(&ign, 0);
    free(ign.v);
    return rc;
}

/* ---- ingest ---------------------------------------------------------------- */

static void ingest_help(void) {
    printf("usage: msa-mem ingest NAME [PATH|-]... [--text TEXT] [options]\n"
           "\n"
           "Appends text to a session's memory: files, folders, a whole repository,\n"
           "standard input ('-') or --text. The session must exist (`msa-mem new`),\n"
           "or be created here with --create.\n"
           "\n"
           "A folder inside a git work tree contributes the files git tracks under it\n"
           "(git ls-files); any other folder is walked, honouring .gitignore files (a\n"
           "subset: '#', '!', trailing '/', anchoring '/', '*', '?', '[...]', leading\n"
           "'**/' and trailing '/**'; symbolic links are not followed, .git is skipped).\n"
           "Binary files (a NUL byte in the first 8 KiB) and files larger than\n"
           "--max-file-size are skipped and counted. Each file becomes one append whose\n"
           "text starts with the line \"### FILE: <path>\" and whose blocks are tagged\n"
           "with the path and lines, which `ask --explain` shows.\n"
           "\n"
           "Running ingest again skips files whose path, size, mtime and content hash\n"
           "are unchanged (kept in STORE/cli/<hash of NAME>.json); a changed file is\n"
           "appended again (memory is append-only). Ctrl-C stops at the last committed\n"
           "chunk; the file in progress is ingested in full again next time.\n"
           "\n"
           "  --max-file-size N  skip larger files (default 1M; K, M, G suffixes)\n"
           "  --text TEXT        append TEXT (source tag \"text\")\n"
           "  --source TAG       source tag for stdin and --text\n"
           "  --force            ingest unchanged files again\n"
           "  --create           create the session when it is missing\n"
           "  --block-size N, --top-k K   for a session created here (see `new`)\n"
           "  --threads N        CPU workers (0: one per core)\n"
           "  --json             print a summary as JSON\n"
           "\n"
           "Examples:\n"
           "  msa-mem ingest repo ~/src/project --create\n"
           "  git log -p | msa-mem ingest history - --source git-log\n"
           "  msa-mem ingest notes notes/ --max-file-size 256K --json\n");
}

typedef struct prog_ctx {
    msa_progress *p;
    double base;
} prog_ctx;

static int ingest_progress(void *user, int64_t done, int64_t total) {
    prog_ctx *c = user;
    (void)total;
    msa_progress_update(c->p, c->base + (double)done);
    return g_interrupted ? 1 : 0;
}

static int is_binary(const char *d, size_t n) {
    return memchr(d, 0, n < 8192 ? n : 8192) != NULL;
}

typedef struct ingest_plan {
    int action;        /* 0 ingest, 1 unchanged, 2 binary, 3 too large, 4 unreadable */
    size_t tokens;
} ingest_plan;

int msa_cmd_ingest(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv)) { ingest_help(); return 0; }
    run_opts ro = run_opts_default();
    const char *name = NULL, *source = NULL;
    long long max_size = 1 << 20;
    int force = 0;
    item_list items = {0};
    char **paths = calloc((size_t)argc + 1, sizeof *paths);
    const char **texts = calloc((size_t)argc + 1, sizeof *texts);
    int n_paths = 0, n_texts = 0, rc = 0;
    if (!paths || !texts) { free(paths); free(texts); return msa_cli_fail(MSA_ENOMEM, "ingest"); }
    for (int i = 1; i < argc; i++) {
        const char *v;
        int r = parse_shared("ingest", OPT_CREATE | OPT_MAY_CREATE, argc, argv, &i, &ro);
        if (r > 1) { rc = MSA_EXIT_USAGE; goto done; }
        if (r == 1) continue;
        if ((r = opt_value("ingest", argc, argv, &i, "--max-file-size", &v))) {
            if (r < 0 || (max_size = msa_cli_parse_count(v, 1)) < 0) {
                rc = r < 0 ? MSA_EXIT_USAGE
                           : msa_cli_usage_error("ingest", "bad --max-file-size '%s'", v);
                goto done;
            }
        } else if ((r = opt_value("ingest", argc, argv, &i, "--text", &v))) {
            if (r < 0) { rc = MSA_EXIT_USAGE; goto done; }
            texts[n_texts++] = v;
        } else if ((r = opt_value("ingest", argc, argv, &i, "--source", &v))) {
            if (r < 0) { rc = MSA_EXIT_USAGE; goto done; }
            source = v;
        } else if (!strcmp(argv[i], "--force")) {
            force = 1;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            rc = msa_cli_usage_error("ingest", "unknown option '%s'", argv[i]);
            goto done;
        } else if (!name) {
            name = argv[i];
        } else {
            paths[n_paths++] = argv[i];
        }
    }
    if (!name) { rc = msa_cli_usage_error("ingest", "which session? give NAME"); goto done; }
    if (!n_paths && !n_texts) {
        rc = msa_cli_usage_error("ingest", "nothing to ingest: give PATH, '-' or --text");
        goto done;
    }
    for (int i = 0; i < n_paths; i++) {
        int r = collect(paths[i], &items);
        if (r) {
            /* r < 0: a status (MSA_ENOMEM); r > 0: an errno of the path */
            rc = r < 0 ? msa_cli_fail(r, "listing %s", paths[i])
                       : (fprintf(stderr, "msa-mem: cannot ingest %s: %s\n", paths[i],
                                  r == EINVAL ? "not a regular file or folder" : strerror(r)),
                          r == ENOENT || r == ENOTDIR ? MSA_EXIT_NOTFOUND : MSA_EXIT_IO);
            goto done;
        }
    }

    opened o;
    rc = open_session(cli, "ingest", name, open_flags(&ro), &ro, &o);
    if (rc) goto done;
    json_t *files = json_object_get(o.sc.root, "files");
    if (!files) {
        files = json_object();
        json_object_set_new(o.sc.root, "files", files);
    }
    const msa_tokenizer *tok = msa_engine_tokenizer(o.e);

    /* pass 1: classify every file and count its tokens, for the progress bar */
    ingest_plan *plan = calloc(items.n + 1, sizeof *plan);
    char *stdin_text = NULL;
    size_t stdin_len = 0;
    size_t counts[5] = {0};
    double total_tokens = 0;
    for (size_t i = 0; plan && i < items.n; i++) {
        ingest_item *it = &items.v[i];
        size_t len;
        char *d;
        if (it->is_stdin) {
            if (!stdin_text) stdin_text = read_stream(stdin, &stdin_len);
            d = stdin_text;
            len = stdin_len;
        } else {
            struct stat st;
            if (stat(it->abs, &st) != 0) { plan[i].action = 4; counts[4]++; continue; }
            if ((long long)st.st_size > max_size) { plan[i].action = 3; counts[3]++; continue; }
            d = read_file(it->abs, (size_t)max_size, &len);
            if (!d) { plan[i].action = errno == EFBIG ? 3 : 4; counts[plan[i].action]++; continue; }
        }
        if (!d) { plan[i].action = 4; counts[4]++; continue; }
        if (is_binary(d, len)) {
            plan[i].action = 2;
            counts[2]++;
        } else if (!it->is_stdin && !force) {
            char real[PATH_MAX], key[2 * PATH_MAX + 8];
            json_t *e = NULL;
            if (realpath(it->abs, real)) {
                manifest_key(real, key, sizeof key);
                e = json_object_get(files, key);
            }
            struct stat st;
            char hash[17];
            snprintf(hash, sizeof hash, "%016llx", (unsigned long long)fnv1a64(d, len, FNV_INIT));
            if (e && stat(it->abs, &st) == 0 &&
                json_integer_value(json_object_get(e, "size")) == (json_int_t)st.st_size &&
                json_integer_value(json_object_get(e, "mtime")) == (json_int_t)st.st_mtime &&
                json_string_value(json_object_get(e, "hash")) &&
                !strcmp(json_string_value(json_object_get(e, "hash")), hash)) {
                plan[i].action = 1;
                counts[1]++;
            }
        }
        if (plan[i].action == 0) {
            size_t n = 0, cap = len + 64;
            int32_t *ids = malloc(cap * sizeof *ids);
            if (ids && msa_tokenize(tok, d, len, 0, ids, cap, &n) == MSA_ERANGE) {
                /* n holds the count needed */
            }
            free(ids);
            plan[i].tokens = n + 8;
            total_tokens += (double)plan[i].tokens;
        }
        if (!it->is_stdin) free(d);
    }
    if (!plan) { opened_close(&o); rc = msa_cli_fail(MSA_ENOMEM, "ingest"); goto done; }
    for (int i = 0; i < n_texts; i++) total_tokens += (double)strlen(texts[i]) / 2 + 1;

    /* pass 2: append */
    catch_sigint();
    msa_progress prog;
    msa_progress_begin(&prog, cli, "ingest", total_tokens, "tokens");
    prog_ctx pc = {&prog, 0};
    int64_t tokens0 = n_tokens_of(o.s);
    double t0 = now_s();
    size_t n_done = 0;
    const char *in_progress = NULL;
    json_t *done_list = json_array();
    int arc = MSA_OK;
    for (size_t i = 0; i < items.n && !arc && !g_interrupted; i++) {
        if (plan[i].action) continue;
        ingest_item *it = &items.v[i];
        size_t len;
        char *d;
        struct stat st = {0};
        if (it->is_stdin) {
            d = stdin_text;
            len = stdin_len;
        } else {
            stat(it->abs, &st);
            d = read_file(it->abs, (size_t)max_size, &len);
            if (!d) { counts[4]++; continue; }
        }
        const char *tag = it->is_stdin && source ? source : it->rel;
        size_t hl = strlen(tag) + 16;
        char *text = malloc(hl + len + 1);
        if (!text) { arc = MSA_ENOMEM; if (!it->is_stdin) free(d); break; }
        int w = snprintf(text, hl, "### FILE: %s\n", tag);
        memcpy(text + w, d, len);
        text[w + len] = 0;
        in_progress = it->rel;
        int64_t before = n_tokens_of(o.s);
        arc = msa_session_append_text(o.s, text, (size_t)w + len, tag, ingest_progress, &pc);
        free(text);
        int64_t added = n_tokens_of(o.s) - before;
        pc.base += (double)added;
        if (arc == MSA_OK) {
            in_progress = NULL;
            n_done++;
            json_array_append_new(done_list,
                                  json_pack("{s:o, s:I}", "path", msa_cli_jstr(tag), "tokens",
                                            (json_int_t)added));
            if (!it->is_stdin) {
                char real[PATH_MAX], hash[17], key[2 * PATH_MAX + 8];
                snprintf(hash, sizeof hash, "%016llx",
                         (unsigned long long)fnv1a64(d, len, FNV_INIT));
                if (realpath(it->abs, real)) {
                    manifest_key(real, key, sizeof key);
                    json_object_set_new(files, key,
                                        json_pack("{s:I, s:I, s:s, s:o}", "size",
                                                  (json_int_t)st.st_size, "mtime",
                                                  (json_int_t)st.st_mtime, "hash", hash,
                                                  "source", msa_cli_jstr(tag)));
                    sidecar_save(&o.sc);
                }
            }
        }
        if (!it->is_stdin) free(d);
    }
    for (int i = 0; i < n_texts && !arc && !g_interrupted; i++) {
        int64_t before = n_tokens_of(o.s);
        in_progress = "--text";
        arc = msa_session_append_text(o.s, texts[i], strlen(texts[i]), source ? source : "text",
                                      ingest_progress, &pc);
        pc.base += (double)(n_tokens_of(o.s) - before);
        if (!arc) {
            in_progress = NULL;
            n_done++;
            json_array_append_new(done_list,
                                  json_pack("{s:o, s:I}", "path", msa_cli_jstr(source ? source : "text"),
                                            "tokens", (json_int_t)(n_tokens_of(o.s) - before)));
        }
    }
    msa_progress_end(&prog);
    double el = now_s() - t0;
    int64_t tokens1 = n_tokens_of(o.s);
    int interrupted = arc == MSA_EINTR || g_interrupted;
    double tps = el > 0 ? (double)(tokens1 - tokens0) / el : 0;
    if (cli->json) {
        json_t *j = json_pack("{s:o, s:I, s:I, s:I, s:f, s:f, s:b, s:o, s:{s:I, s:I, s:I, s:I, s:I}}",
                              "session", msa_cli_jstr(name), "files_ingested", (json_int_t)n_done,
                              "tokens_added", (json_int_t)(tokens1 - tokens0), "n_tokens",
                              (json_int_t)tokens1, "seconds", el, "tokens_per_s", tps,
                              "interrupted", interrupted, "files", done_list, "skipped",
                              "unchanged", (json_int_t)counts[1], "binary", (json_int_t)counts[2],
                              "too_large", (json_int_t)counts[3], "unreadable",
                              (json_int_t)counts[4], "ignored", (json_int_t)items.ignored);
        json_dumpf(j, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(j);
    } else {
        json_decref(done_list);
        if (!cli->quiet) {
            printf("ingested %zu item%s into '%s': %lld tokens in %.1f s (%.0f tokens/s); "
                   "session now %lld tokens\n",
                   n_done, n_done == 1 ? "" : "s", name, (long long)(tokens1 - tokens0), el, tps,
                   (long long)tokens1);
            if (counts[1] + counts[2] + counts[3] + counts[4] + items.ignored) {
                const char *what[5] = {"", "unchanged", "binary", "too large", "unreadable"};
                printf("skipped:");
                for (int k = 1; k < 5; k++)
                    if (counts[k]) printf(" %zu %s%s", counts[k], what[k], k == 3 ? " (> --max-file-size)" : "");
                if (items.ignored) printf(" %zu ignored by .gitignore", items.ignored);
                putchar('\n');
            }
        }
    }
    if (interrupted) {
        fprintf(stderr, "msa-mem: interrupted: session '%s' holds %lld tokens, as of its last "
                        "committed chunk%s%s%s\n",
                name, (long long)tokens1, in_progress ? "; " : "",
                in_progress ? in_progress : "",
                in_progress ? " was partly ingested and is ingested in full next time" : "");
        rc = MSA_EXIT_INTERRUPTED;
    } else if (arc) {
        rc = msa_cli_fail(arc, "ingesting %s into '%s'", in_progress ? in_progress : "", name);
    }
    free(plan);
    free(stdin_text);
    opened_close(&o);
done:
    items_free(&items);
    free(paths);
    free(texts);
    return rc;
}

/* ---- generation output --------------------------------------------------------- */

typedef struct gen_ctx {
    FILE *out;          /* NULL: keep the text only */
    char *text;
    size_t len, cap;
    int n;
    double t_start, t_first, t_last;
    double *gaps;       /* seconds between consecutive tokens, for the median */
    int n_gaps, cap_gaps;
} gen_ctx;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median time between tokens after the first, in ms (0 when none). */
static double median_gap_ms(gen_ctx *g) {
    if (!g->n_gaps) return 0;
    qsort(g->gaps, (size_t)g->n_gaps, sizeof *g->gaps, cmp_double);
    return 1e3 * g->gaps[g->n_gaps / 2];
}

static int on_token(void *user, int32_t token, const char *text, size_t len) {
    gen_ctx *g = user;
    if (token >= 0) {
        double t = now_s();
        if (g->n++ == 0) {
            g->t_first = t;
        } else {
            if (g->n_gaps == g->cap_gaps) {
                int cap = g->cap_gaps ? 2 * g->cap_gaps : 64;
                double *v = realloc(g->gaps, (size_t)cap * sizeof *v);
                if (v) { g->gaps = v; g->cap_gaps = cap; }
            }
            if (g->n_gaps < g->cap_gaps) g->gaps[g->n_gaps++] = t - g->t_last;
        }
        g->t_last = t;
    }
    if (len) {
        if (g->out) {
            fwrite(text, 1, len, g->out);
            fflush(g->out);
        }
        if (g->len + len + 1 > g->cap) {
            size_t cap = (g->cap ? 2 * g->cap : 256) + len;
            char *t = realloc(g->text, cap);
            if (t) { g->text = t; g->cap = cap; }
        }
        if (g->len + len + 1 <= g->cap) {
            memcpy(g->text + g->len, text, len);
            g->len += len;
            g->text[g->len] = 0;
        }
    }
    return g_interrupted ? 1 : 0;
}

static msa_generate_params gen_params(const run_opts *ro, const char *source) {
    msa_generate_params gp = msa_generate_default_params();
    gp.sampling = ro->sampling;
    gp.max_tokens = ro->max_tokens;
    gp.source = source;
    return gp;
}

/* ---- gen --------------------------------------------------------------------- */

static void gen_help(void) {
    printf("usage: msa-mem gen NAME [--prompt TEXT] [-n N] [sampling options]\n"
           "\n"
           "Continues the session's text: appends --prompt (if given), then generates\n"
           "up to N tokens, streaming them to stdout. Every generated token joins the\n"
           "session's memory. A session reopened by a new process is not prefilled\n"
           "again: only its last token is recomputed over the stored memory. An\n"
           "empty session generates from BOS. The session must exist (`msa-mem new`),\n"
           "or be created here with --create.\n"
           "\n"
           "  --prompt TEXT     text appended before generating\n"
           "  --create          create the session when it is missing\n"
           "  -n, --max-tokens N  tokens to generate (default 128)\n"
           "  --dense           attend over every token instead of MSA's selected\n"
           "                    blocks (for comparisons)\n"
           "  --json            print text and timings as JSON instead of streaming\n"
           "\n"
           "%s"
           "\n"
           "Timing (on stderr unless -q, or in --json): the time to open the session,\n"
           "to the first token (which includes recomputing the last logits after a\n"
           "resume), and the mean time per token after the first.\n"
           "\n"
           "Examples:\n"
           "  msa-mem gen story --prompt \"Once upon a time\" -n 64 --create\n"
           "  msa-mem gen story -n 32 --temp 0.8 --top-p 0.9 --seed 7\n"
           "  msa-mem gen story -n 16 --json | jq .ms_per_token\n",
           sampling_help);
}

int msa_cmd_gen(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv)) { gen_help(); return 0; }
    run_opts ro = run_opts_default();
    const char *name = NULL, *prompt = NULL;
    for (int i = 1; i < argc; i++) {
        const char *v;
        int r = parse_shared("gen", OPT_SAMPLING | OPT_GEN | OPT_MAY_CREATE, argc, argv, &i, &ro);
        if (r > 1) return MSA_EXIT_USAGE;
        if (r == 1) continue;
        if ((r = opt_value("gen", argc, argv, &i, "--prompt", &v))) {
            if (r < 0) return MSA_EXIT_USAGE;
            prompt = v;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return msa_cli_usage_error("gen", "unknown option '%s'", argv[i]);
        } else if (name) {
            return msa_cli_usage_error("gen", "one session name only (quote the prompt and "
                                       "pass it with --prompt)");
        } else {
            name = argv[i];
        }
    }
    if (!name) return msa_cli_usage_error("gen", "which session? give NAME");
    opened o;
    int rc = open_session(cli, "gen", name, open_flags(&ro), &ro, &o);
    if (rc) return rc;
    catch_sigint();
    int64_t before = n_tokens_of(o.s);
    double t_prompt = 0;
    if (prompt && *prompt) {
        double t = now_s();
        rc = msa_session_append_text(o.s, prompt, strlen(prompt), "gen prompt", NULL, NULL);
        t_prompt = now_s() - t;
        if (rc) {
            opened_close(&o);
            return msa_cli_fail(rc, "appending the prompt to '%s'", name);
        }
    }
    int64_t after_prompt = n_tokens_of(o.s);
    gen_ctx g = {.out = cli->json ? NULL : stdout};
    msa_generate_params gp = gen_params(&ro, "generated");
    int n = 0;
    g.t_start = now_s();
    rc = msa_session_generate(o.s, &gp, on_token, &g, &n);
    double t_end = now_s();
    if (!cli->json && g.len && g.text[g.len - 1] != '\n') putchar('\n');
    fflush(stdout);
    if (rc) {
        free(g.text);
        free(g.gaps);
        opened_close(&o);
        return msa_cli_fail(rc, "generating in '%s'", name);
    }
    msa_session_info info;
    msa_session_get_info(o.s, &info);
    double first_ms = g.n ? 1e3 * (g.t_first - g.t_start) : 0;
    double per_ms = g.n > 1 ? 1e3 * (t_end - g.t_first) / (g.n - 1) : first_ms;
    if (cli->json) {
        json_t *j = json_pack(
            "{s:o, s:o, s:i, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:b, s:{s:I, s:I, s:I, s:I}}",
            "session", msa_cli_jstr(name), "text", msa_cli_jstrn(g.text, g.len), "n_generated", n, "tokens_before",
            (json_int_t)before, "tokens_after_prompt", (json_int_t)after_prompt, "tokens_after",
            (json_int_t)info.n_tokens, "open_ms", 1e3 * o.open_s, "session_open_ms",
            1e3 * o.sess_s, "prompt_ms", 1e3 * t_prompt, "first_token_ms", first_ms,
            "ms_per_token", per_ms, "dense", ro.dense, "pager", "host_lookups",
            (json_int_t)info.pager.host_lookups, "host_misses", (json_int_t)info.pager.host_misses,
            "bytes_store_to_host", (json_int_t)info.pager.bytes_store_to_host, "steps",
            (json_int_t)info.pager.steps);
        json_object_set_new(j, "last_step_model_ms", json_real(info.last_step_ms));
        json_object_set_new(j, "median_ms_per_token", json_real(median_gap_ms(&g)));
        json_dumpf(j, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(j);
    } else if (!cli->quiet) {
        fprintf(stderr,
                "[%s: %lld tokens before, %d generated, %lld now; opened in %.1f ms; first "
                "token %.1f ms; %.2f ms/token%s]\n",
                name, (long long)before, n, (long long)info.n_tokens, 1e3 * o.open_s, first_ms,
                per_ms, ro.dense ? " (dense)" : "");
    }
    free(g.text);
    free(g.gaps);
    opened_close(&o);
    return g_interrupted ? MSA_EXIT_INTERRUPTED : 0;
}

/* ---- ask --------------------------------------------------------------------- */

static void ask_help(void) {
    printf("usage: msa-mem ask NAME \"QUESTION\" [--explain] [-n N] [options]\n"
           "\n"
           "Asks one question of a session: appends it as a user message (chat\n"
           "template of the model, or --template), generates the answer and prints it.\n"
           "The question and the answer stay in the session's memory.\n"
           "\n"
           "  -n, --max-tokens N  answer length limit (default 128)\n"
           "  --template T      plain, llama3, chatml or llama2 (default: the model's)\n"
           "  --explain         then list the memory blocks read while answering,\n"
           "                    grouped by source (file:lines), most-read first. Reads\n"
           "                    are summed over layers, KV groups and steps; blocks at\n"
           "                    or after the question's first block (the question\n"
           "                    itself) are left out. A source's share is the part of\n"
           "                    all those reads that went to it: a block holding k\n"
           "                    sources gives each 1/k of its reads, so the shares add\n"
           "                    up to 100%% (in --json: \"reads\" is that part, and\n"
           "                    \"block_reads\" the whole reads of its blocks)\n"
           "  --limit N         sources listed by --explain (default 10; 0: all)\n"
           "  --json            answer, and with --explain the blocks and sources, as JSON\n"
           "\n"
           "%s"
           "\n"
           "Examples:\n"
           "  msa-mem ask repo \"Where is the retry delay set?\" --explain\n"
           "  msa-mem ask notes \"What did Tom find?\" -n 64 --temp 0.7 --seed 1\n"
           "  msa-mem ask repo \"What does fsck check?\" --explain --json | jq .sources\n",
           sampling_help);
}

/* A "path:a-b" segment of a source tag, summed over the blocks holding it.
 * reads: the reads attributed to it, a block's reads split equally among
 * the sources in its tag ("a.c:1-9 + b.c:1-3": half each), so that the
 * reads of all sources add up to the reads of all blocks and the shares to
 * 100%. block_reads: the whole reads of those blocks. */
typedef struct src_agg {
    char *src;
    double reads;
    uint64_t block_reads;
    int n_blocks;
    int64_t (*ranges)[2];
    int n_ranges;
} src_agg;

static int range_cmp(const void *a, const void *b) {
    const int64_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

static int agg_cmp(const void *a, const void *b) {
    const src_agg *x = a, *y = b;
    if (x->reads != y->reads) return x->reads > y->reads ? -1 : 1;
    return strcmp(x->src, y->src);
}

/* Whether `src` is a file that ingest appended (with its header line). */
static int ingested_source(json_t *files, const char *src) {
    const char *k;
    json_t *v;
    json_t *want = msa_cli_jstr(src); /* the manifest holds it made valid UTF-8 */
    int found = 0;
    json_object_foreach(files, k, v) {
        if (json_equal(json_object_get(v, "source"), want)) { found = 1; break; }
    }
    json_decref(want);
    return found;
}

static void agg_add(src_agg **v, int *n, const char *seg, double reads, uint64_t block_reads,
                    json_t *files) {
    char src[MSA_STORE_TAG_MAX + 1];
    snprintf(src, sizeof src, "%s", seg);
    long long a = 0, b = 0;
    char *colon = strrchr(src, ':');
    if (colon && !strchr(colon, ' ') && sscanf(colon + 1, "%lld-%lld", &a, &b) == 2) {
        *colon = 0;
        if (ingested_source(files, src)) { /* line 1 is the "### FILE:" header */
            a = a > 1 ? a - 1 : 1;
            b = b > 1 ? b - 1 : 1;
        }
    } else {
        a = b = 0;
    }
    int i;
    for (i = 0; i < *n; i++)
        if (!strcmp((*v)[i].src, src)) break;
    if (i == *n) {
        src_agg *nv = realloc(*v, (size_t)(*n + 1) * sizeof *nv);
        if (!nv) return;
        *v = nv;
        memset(&nv[i], 0, sizeof nv[i]);
        nv[i].src = strdup(src);
        if (!nv[i].src) return;
        (*n)++;
    }
    src_agg *g = &(*v)[i];
    g->reads += reads;
    g->block_reads += block_reads;
    g->n_blocks++;
    if (a > 0) {
        int64_t (*r)[2] = realloc(g->ranges, (size_t)(g->n_ranges + 1) * sizeof *r);
        if (!r) return;
        g->ranges = r;
        r[g->n_ranges][0] = a;
        r[g->n_ranges][1] = b;
        g->n_ranges++;
    }
}

/* Merges a source's ranges in place; returns the count. */
static int merge_ranges(src_agg *g) {
    if (!g->n_ranges) return 0;
    qsort(g->ranges, (size_t)g->n_ranges, sizeof *g->ranges, range_cmp);
    int m = 0;
    for (int i = 1; i < g->n_ranges; i++) {
        if (g->ranges[i][0] <= g->ranges[m][1] + 1) {
            if (g->ranges[i][1] > g->ranges[m][1]) g->ranges[m][1] = g->ranges[i][1];
        } else {
            m++;
            g->ranges[m][0] = g->ranges[i][0];
            g->ranges[m][1] = g->ranges[i][1];
        }
    }
    g->n_ranges = m + 1;
    return g->n_ranges;
}

static void lines_str(const src_agg *g, char *buf, size_t n) {
    size_t len = 0;
    buf[0] = 0;
    for (int i = 0; i < g->n_ranges && len < n; i++) {
        int w = snprintf(buf + len, n - len, "%s%lld-%lld", i ? "," : "",
                         (long long)g->ranges[i][0], (long long)g->ranges[i][1]);
        if (w < 0) break;
        len += (size_t)w;
    }
}

int msa_cmd_ask(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv)) { ask_help(); return 0; }
    run_opts ro = run_opts_default();
    const char *name = NULL, *question = NULL;
    int explain = 0, limit = 10;
    for (int i = 1; i < argc; i++) {
        const char *v;
        int r = parse_shared("ask", OPT_SAMPLING | OPT_GEN | OPT_TEMPLATE, argc, argv, &i, &ro);
        if (r > 1) return MSA_EXIT_USAGE;
        if (r == 1) continue;
        if (!strcmp(argv[i], "--explain")) {
            explain = 1;
        } else if ((r = opt_value("ask", argc, argv, &i, "--limit", &v))) {
            if (r < 0 || parse_int("ask", "--limit", v, 0, 1 << 30, &limit)) return MSA_EXIT_USAGE;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return msa_cli_usage_error("ask", "unknown option '%s'", argv[i]);
        } else if (!name) {
            name = argv[i];
        } else if (!question) {
            question = argv[i];
        } else {
            return msa_cli_usage_error("ask", "quote the question: it must be one argument");
        }
    }
    if (!name || !question) return msa_cli_usage_error("ask", "give NAME and \"QUESTION\"");
    opened o;
    int rc = open_session(cli, "ask", name, MSA_SESSION_OPEN, &ro, &o);
    if (rc) return rc;
    msa_session_explain_reset(o.s);
    catch_sigint();
    int64_t q0 = n_tokens_of(o.s);
    msa_session_info info;
    msa_session_get_info(o.s, &info);
    int64_t q_block = q0 / info.block_size;
    rc = msa_session_append_message(o.s, ro.tmpl, "user", question, 1, NULL);
    if (rc) {
        opened_close(&o);
        return msa_cli_fail(rc, "appending the question to '%s'", name);
    }
    gen_ctx g = {.out = cli->json ? NULL : stdout};
    msa_generate_params gp = gen_params(&ro, "answer");
    int n = 0;
    g.t_start = now_s();
    rc = msa_session_generate(o.s, &gp, on_token, &g, &n);
    if (!cli->json && g.len && g.text[g.len - 1] != '\n') putchar('\n');
    fflush(stdout);
    if (rc) {
        free(g.text);
        free(g.gaps);
        opened_close(&o);
        return msa_cli_fail(rc, "answering in '%s'", name);
    }
    json_t *j = cli->json ? json_pack("{s:o, s:o, s:o, s:i, s:I, s:I}", "session",
                                      msa_cli_jstr(name), "question", msa_cli_jstr(question),
                                      "answer", msa_cli_jstrn(g.text, g.len),
                                      "n_generated", n, "question_first_token", (json_int_t)q0,
                                      "question_first_block", (json_int_t)q_block)
                          : NULL;
    if (explain) {
        msa_session_get_info(o.s, &info);
        size_t cap = (size_t)info.n_blocks + 1, m = 0;
        msa_block_reads *br = calloc(cap, sizeof *br);
        if (!br || msa_session_explain(o.s, br, cap, &m) != MSA_OK) m = 0;
        src_agg *agg = NULL;
        int n_agg = 0;
        uint64_t total = 0;
        json_t *files = json_object_get(o.sc.root, "files");
        json_t *jb = json_array();
        for (size_t i = 0; i < m; i++) {
            if (br[i].block >= q_block) continue;
            total += br[i].reads;
            json_array_append_new(jb, json_pack("{s:I, s:I, s:I, s:I, s:o}", "block",
                                                (json_int_t)br[i].block, "first_token",
                                                (json_int_t)br[i].first_token, "n_tokens",
                                                (json_int_t)br[i].n_tokens, "reads",
                                                (json_int_t)br[i].reads, "source",
                                                msa_cli_jstr(br[i].source)));
            /* a block may hold several sources ("a.c:1-9 + b.c:1-3"): each
             * gets an equal part of its reads */
            char tag[sizeof br[i].source];
            snprintf(tag, sizeof tag, "%s", br[i].source);
            int parts = 1;
            for (const char *q = tag; (q = strstr(q, " + ")); q += 3) parts++;
            double part = (double)br[i].reads / parts;
            char *p = tag;
            if (!*p) agg_add(&agg, &n_agg, "(untagged)", part, br[i].reads, files);
            while (*p) {
                char *sep = strstr(p, " + ");
                if (sep) *sep = 0;
                agg_add(&agg, &n_agg, p, part, br[i].reads, files);
                if (!sep) break;
                p = sep + 3;
            }
        }
        qsort(agg, (size_t)n_agg, sizeof *agg, agg_cmp);
        int shown = limit && limit < n_agg ? limit : n_agg;
        json_t *js = json_array();
        if (!cli->json)
            printf("\nmemory read (blocks before the question, block %lld; %zu blocks of %lld "
                   "tokens read;\nreads summed over layers, KV groups and steps; a block of "
                   "several sources gives each\nan equal part of its reads, so the shares add "
                   "up to 100%%):\n"
                   "  %8s  %6s  %6s  %s\n",
                   (long long)q_block, json_array_size(jb), (long long)info.block_size, "reads",
                   "share", "blocks", "source");
        for (int i = 0; i < n_agg; i++) {
            char lines[512];
            merge_ranges(&agg[i]);
            lines_str(&agg[i], lines, sizeof lines);
            double share = total ? agg[i].reads / (double)total : 0;
            if (i < shown && !cli->json)
                printf("  %8.0f  %5.1f%%  %6d  %s%s%s\n", agg[i].reads, 100 * share,
                       agg[i].n_blocks, agg[i].src, *lines ? ":" : "", lines);
            json_t *jl = json_array();
            for (int r = 0; r < agg[i].n_ranges; r++)
                json_array_append_new(jl, json_pack("[I, I]", (json_int_t)agg[i].ranges[r][0],
                                                    (json_int_t)agg[i].ranges[r][1]));
            json_array_append_new(js, json_pack("{s:o, s:f, s:I, s:f, s:i, s:o}", "source",
                                                msa_cli_jstr(agg[i].src), "reads", agg[i].reads,
                                                "block_reads", (json_int_t)agg[i].block_reads,
                                                "share", share, "blocks", agg[i].n_blocks,
                                                "lines", jl));
            free(agg[i].src);
            free(agg[i].ranges);
        }
        if (!cli->json && shown < n_agg) printf("  ... %d more sources (--limit 0 lists all)\n",
                                                n_agg - shown);
        if (!cli->json && n_agg)
            printf("  %8llu  100.0%%  %6zu  (all blocks read)\n", (unsigned long long)total,
                   json_array_size(jb));
        if (!cli->json && cli->verbose) {
            printf("\nblocks, most-read first:\n");
            for (size_t i = 0; i < json_array_size(jb); i++) {
                json_t *b = json_array_get(jb, i);
                printf("  block %4lld  tokens %lld..%lld  %8lld reads  %s\n",
                       (long long)json_integer_value(json_object_get(b, "block")),
                       (long long)json_integer_value(json_object_get(b, "first_token")),
                       (long long)(json_integer_value(json_object_get(b, "first_token")) +
                                   json_integer_value(json_object_get(b, "n_tokens")) - 1),
                       (long long)json_integer_value(json_object_get(b, "reads")),
                       json_string_value(json_object_get(b, "source")));
            }
        }
        free(agg);
        free(br);
        if (j) {
            json_object_set_new(j, "blocks", jb);
            json_object_set_new(j, "sources", js);
        } else {
            json_decref(jb);
            json_decref(js);
        }
    }
    if (j) {
        json_dumpf(j, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(j);
    }
    free(g.text);
    free(g.gaps);
    opened_close(&o);
    return g_interrupted ? MSA_EXIT_INTERRUPTED : 0;
}

/* ---- chat -------------------------------------------------------------------- */

static void chat_help(void) {
    printf("usage: msa-mem chat NAME [--template T] [--system TEXT] [-n N] [options]\n"
           "\n"
           "Talks with a session: reads one user message per line of standard input\n"
           "(a terminal or a pipe), appends it with the chat template and streams the\n"
           "reply to stdout. Every turn stays in the session, so a later `chat` (or\n"
           "`ask`) continues with all of it. The session must exist (`msa-mem new`),\n"
           "or be created here with --create.\n"
           "Empty lines are skipped; /exit or end of input ends the chat; Ctrl-C stops\n"
           "the reply in progress and ends the chat.\n"
           "\n"
           "  --template T      plain, llama3, chatml or llama2 (default: the model's)\n"
           "  --system TEXT     a system message, appended when the session is empty\n"
           "  --create          create the session when it is missing\n"
           "  -n, --max-tokens N  reply length limit per turn (default 128)\n"
           "  --json            one JSON object per turn: {\"user\", \"reply\", \"tokens\"}\n"
           "\n"
           "%s"
           "\n"
           "Examples:\n"
           "  msa-mem chat assistant --create\n"
           "  printf 'Hi!\\nWhat did I just say?\\n' | msa-mem chat assistant -n 64\n"
           "  msa-mem chat notes --template chatml --system \"Be brief.\"\n",
           sampling_help);
}

int msa_cmd_chat(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv)) { chat_help(); return 0; }
    run_opts ro = run_opts_default();
    const char *name = NULL, *system = NULL;
    for (int i = 1; i < argc; i++) {
        const char *v;
        int r = parse_shared("chat", OPT_SAMPLING | OPT_GEN | OPT_TEMPLATE | OPT_MAY_CREATE, argc,
                             argv, &i, &ro);
        if (r > 1) return MSA_EXIT_USAGE;
        if (r == 1) continue;
        if ((r = opt_value("chat", argc, argv, &i, "--system", &v))) {
            if (r < 0) return MSA_EXIT_USAGE;
            system = v;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return msa_cli_usage_error("chat", "unknown option '%s'", argv[i]);
        } else if (name) {
            return msa_cli_usage_error("chat", "one session name only");
        } else {
            name = argv[i];
        }
    }
    if (!name) return msa_cli_usage_error("chat", "which session? give NAME");
    opened o;
    int rc = open_session(cli, "chat", name, open_flags(&ro), &ro, &o);
    if (rc) return rc;
    int tmpl = ro.tmpl >= 0 ? ro.tmpl : msa_engine_chat_template(o.e);
    if (system && n_tokens_of(o.s) == 0) {
        rc = msa_session_append_message(o.s, tmpl, "system", system, 0, NULL);
        if (rc) { opened_close(&o); return msa_cli_fail(rc, "appending the system message"); }
    }
    int tty = isatty(0);
    if (tty && !cli->quiet)
        fprintf(stderr, "session '%s' (%lld tokens, template %s); /exit or Ctrl-D ends\n", name,
                (long long)n_tokens_of(o.s), msa_chat_template_name(tmpl));
    catch_sigint();
    char *line = NULL;
    size_t lcap = 0;
    int turns = 0;
    while (!g_interrupted) {
        if (tty) { fprintf(stderr, "> "); fflush(stderr); }
        ssize_t got = getline(&line, &lcap, stdin);
        if (got < 0) break;
        while (got && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
        if (!got) continue;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        rc = msa_session_append_message(o.s, tmpl, "user", line, 1, NULL);
        if (rc) { rc = msa_cli_fail(rc, "appending a message to '%s'", name); break; }
        gen_ctx g = {.out = cli->json ? NULL : stdout};
        msa_generate_params gp = gen_params(&ro, NULL);
        char src[64];
        snprintf(src, sizeof src, "turn %d reply", ++turns);
        gp.source = src;
        int n = 0;
        rc = msa_session_generate(o.s, &gp, on_token, &g, &n);
        free(g.gaps);
        if (rc) { free(g.text); rc = msa_cli_fail(rc, "generating in '%s'", name); break; }
        /* the plain template has no end-of-turn token: end the reply's line */
        if (tmpl == MSA_CHAT_PLAIN && (!g.len || g.text[g.len - 1] != '\n'))
            msa_session_append_text(o.s, "\n", 1, src, NULL, NULL);
        if (cli->json) {
            json_t *j = json_pack("{s:o, s:o, s:i, s:I}", "user", msa_cli_jstrn(line, (size_t)got),
                                  "reply", msa_cli_jstrn(g.text, g.len), "tokens", n, "n_tokens",
                                  (json_int_t)n_tokens_of(o.s));
            json_dumpf(j, stdout, JSON_COMPACT);
            putchar('\n');
            json_decref(j);
        } else if (!g.len || g.text[g.len - 1] != '\n') {
            putchar('\n');
        }
        fflush(stdout);
        free(g.text);
    }
    free(line);
    if (g_interrupted && !rc) {
        fprintf(stderr, "\nmsa-mem: interrupted; session '%s' keeps %lld tokens\n", name,
                (long long)n_tokens_of(o.s));
        rc = MSA_EXIT_INTERRUPTED;
    }
    opened_close(&o);
    return rc;
}
