/*
 * cmd_store.c: the store's commands: ls, info, rm, fork, export, import,
 * fsck, compact and `bench store`. Each opens the store named by --store
 * (or MSA_STORE, or the default directory), does one thing, and prints
 * text or, with --json, one JSON document built with jansson.
 */
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* create: make the store when missing; readonly: the command only reads
 * (so a store the user may read but not write still works) */
static int open_store_ro(msa_cli *cli, int create, int readonly, msa_store **st) {
    msa_store_params p = msa_store_default_params();
    p.dir = cli->store_dir;
    p.create = create;
    p.readonly = readonly;
    int rc = msa_store_open(&p, st);
    return rc ? msa_cli_fail(rc, "opening the store") : 0;
}

/* A failure whose message is the CLI's own (msa_cli_fail adds the
 * library's last error). */
static int fail_msg(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail_msg(int status, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "msa-mem: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return msa_cli_exit_code(status);
}

static int open_store(msa_cli *cli, int create, msa_store **st) {
    msa_store_params p = msa_store_default_params();
    p.dir = cli->store_dir;
    p.create = create;
    int rc = msa_store_open(&p, st);
    return rc ? msa_cli_fail(rc, "opening the store") : 0;
}

static void print_json(json_t *j) {
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (s) puts(s);
    free(s);
    json_decref(j);
}

static const char *when(int64_t t, char *buf, size_t n) {
    struct tm tm;
    time_t tt = (time_t)t;
    localtime_r(&tt, &tm);
    strftime(buf, n, "%Y-%m-%d %H:%M", &tm);
    return buf;
}

/* A session as JSON. Names are bytes, not always UTF-8: msa_cli_jstr (cli.h)
 * keeps every record valid JSON. u (may be NULL) adds own and shared bytes. */
static json_t *info_json(const msa_store_session_info *s, const msa_store_usage *u) {
    const msa_store_shape *h = &s->shape;
    json_t *j = json_pack("{s:o, s:s, s:o, s:I, s:I, s:I, s:I, s:f, s:I, s:I, s:{s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:s}}",
                     "name", msa_cli_jstr(s->name), "model", s->fingerprint, "parent", msa_cli_jstr(s->parent),
                     "tokens", (json_int_t)s->n_tokens, "blocks", (json_int_t)s->n_blocks,
                     "raw_bytes", (json_int_t)s->raw_bytes, "bytes_on_disk", (json_int_t)s->stored_bytes,
                     "ratio", s->ratio, "created", (json_int_t)s->created, "last_use", (json_int_t)s->last_use,
                     "shape", "layers", h->n_layers, "kv_heads", h->n_kv_heads, "head_dim", h->head_dim,
                     "index_key_heads", h->idx_key_heads, "index_dim", h->idx_dim, "block_size", h->block_size,
                     "kv_dtype", msa_dtype_name(h->kv_dtype), "index_dtype", msa_dtype_name(h->idx_dtype));
    if (j && u) {
        json_object_set_new(j, "own_bytes", json_integer((json_int_t)u->own_bytes));
        json_object_set_new(j, "shared_bytes", json_integer((json_int_t)u->shared_bytes));
    }
    return j;
}

int msa_cmd_ls(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv)) {
        printf("usage: msa-mem ls [--store DIR] [--json]\n\n"
               "Lists the store's sessions: tokens, blocks, bytes on disk, compression\n"
               "ratio, model fingerprint and last use. Forks share blocks: OWN is what a\n"
               "session alone holds (its unshared blocks and its tokens), SHARED the\n"
               "blocks it shares with other sessions (listed under each of them), and\n"
               "the total counts every block once. In --json, bytes_on_disk is\n"
               "own_bytes + shared_bytes, and \"total\" the store's own and shared bytes.\n\n"
               "Examples:\n  msa-mem ls\n  msa-mem --store /data/mem ls --json\n");
        return 0;
    }
    if (argc > 1) return msa_cli_usage_error("ls", "unexpected argument '%s'", argv[1]);
    msa_store *st;
    msa_store_params p = msa_store_default_params();
    p.dir = cli->store_dir;
    p.create = 0;
    p.readonly = 1;
    int rc = msa_store_open(&p, &st);
    if (rc == MSA_ENOTFOUND) { /* no store yet (a fresh machine): no sessions, not an error */
        char d[4096];
        const char *dir = cli->store_dir;
        if (!dir) dir = msa_store_default_dir(d, sizeof d) == MSA_OK ? d : "";
        if (cli->json) print_json(json_pack("{s:o, s:[]}", "store", msa_cli_jstr(dir), "sessions"));
        else printf("(no sessions: there is no store at %s yet; `msa-mem new` makes one)\n", dir);
        return 0;
    }
    if (rc) return msa_cli_fail(rc, "opening the store");
    msa_store_session_info *list;
    size_t n;
    if ((rc = msa_store_list(st, &list, &n))) {
        msa_store_close(st);
        return msa_cli_fail(rc, "listing sessions");
    }
    msa_store_usage *use = calloc(n + 1, sizeof *use), total;
    for (size_t i = 0; !rc && use && i < n; i++) rc = msa_store_usage_get(st, list[i].name, &use[i]);
    if (!rc && use) rc = msa_store_usage_get(st, NULL, &total);
    if (rc || !use) {
        free(use);
        msa_store_list_free(list);
        msa_store_close(st);
        return msa_cli_fail(rc ? rc : MSA_ENOMEM, "measuring the sessions' sizes");
    }
    if (cli->json) {
        json_t *a = json_array();
        for (size_t i = 0; i < n; i++) json_array_append_new(a, info_json(&list[i], &use[i]));
        print_json(json_pack("{s:o, s:o, s:{s:I, s:I, s:I, s:I, s:I}}", "store", msa_cli_jstr(msa_store_dir(st)),
                             "sessions", a, "total", "bytes_on_disk",
                             (json_int_t)(total.own_bytes + total.shared_bytes), "own_bytes",
                             (json_int_t)total.own_bytes, "shared_bytes", (json_int_t)total.shared_bytes,
                             "segment_file_bytes", (json_int_t)total.segment_file_bytes,
                             "segment_unused_bytes", (json_int_t)total.segment_unused_bytes));
    } else {
        printf("%-24s %10s %8s %10s %10s %6s  %-18s %s\n", "NAME", "TOKENS", "BLOCKS", "OWN", "SHARED", "RATIO",
               "MODEL", "LAST USE");
        for (size_t i = 0; i < n; i++) {
            char b[32], b2[32], w[32], fp[19];
            snprintf(fp, sizeof fp, "%.16s%s", list[i].fingerprint, strlen(list[i].fingerprint) > 16 ? ".." : "");
            printf("%-24s %10llu %8llu %10s %10s %5.2fx  %-18s %s\n", list[i].name,
                   (unsigned long long)list[i].n_tokens, (unsigned long long)list[i].n_blocks,
                   msa_cli_bytes((double)use[i].own_bytes, b, sizeof b),
                   use[i].shared_bytes ? msa_cli_bytes((double)use[i].shared_bytes, b2, sizeof b2) : "-",
                   list[i].ratio, fp, when(list[i].last_use, w, sizeof w));
        }
        if (!n) printf("(no sessions in %s)\n", msa_store_dir(st));
        else {
            char b[32], b2[32], b3[32];
            printf("total: %zu session%s, %s: %s own + %s in shared blocks, each counted once\n", n,
                   n == 1 ? "" : "s", msa_cli_bytes((double)(total.own_bytes + total.shared_bytes), b, sizeof b),
                   msa_cli_bytes((double)total.own_bytes, b2, sizeof b2),
                   msa_cli_bytes((double)total.shared_bytes, b3, sizeof b3));
        }
        /* a few MiB are headers and padding; say so once it is worth a compact */
        if (total.segment_unused_bytes > ((uint64_t)64 << 20)) {
            char b[32], b2[32];
            printf("segment files: %s, of which %s used by no session (`msa-mem compact` returns it)\n",
                   msa_cli_bytes((double)total.segment_file_bytes, b, sizeof b),
                   msa_cli_bytes((double)total.segment_unused_bytes, b2, sizeof b2));
        }
    }
    free(use);
    msa_store_list_free(list);
    msa_store_close(st);
    return 0;
}

static void collect_line(void *ctx, const char *line) {
    json_array_append_new(ctx, msa_cli_jstr(line));
}

int msa_cmd_info(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv) || argc != 2) {
        if (argc != 2 && !msa_cli_wants_help(argc, argv)) return msa_cli_usage_error("info", "needs one session name");
        printf("usage: msa-mem info NAME [--json]\n\nShows a session: model, shapes, parameters (the MSA\n"
               "top-k stored with it), tokens, blocks, sizes (own and shared with forks), times,\n"
               "and any damaged block (its index keys and token chunks are checked as opening the\n"
               "session reads them; `msa-mem fsck` decodes every block). Exit status 4 when\n"
               "something is damaged.\n\n"
               "Example:\n  msa-mem info notes --json\n");
        return 0;
    }
    msa_store *st;
    int rc = open_store_ro(cli, 0, 1, &st);
    if (rc) return rc;
    msa_store_session *s = NULL;
    msa_store_session_info in;
    msa_session_params sp;
    msa_store_usage use;
    if ((rc = msa_store_session_open(st, argv[1], NULL, &s)) || (rc = msa_store_session_stat(s, &in)) ||
        (rc = msa_store_session_get_params(s, &sp)) || (rc = msa_store_usage_get(st, argv[1], &use))) {
        msa_store_session_close(s);
        msa_store_close(st);
        return msa_cli_fail(rc, "info %s", argv[1]);
    }
    json_t *damaged = json_array();
    uint64_t n_bad = 0;
    int crc = msa_store_session_check(s, 0, collect_line, damaged, &n_bad);
    msa_store_session_close(s);
    if (crc && crc != MSA_ECORRUPT) {
        json_decref(damaged);
        msa_store_close(st);
        return msa_cli_fail(crc, "info %s: checking its blocks", argv[1]);
    }
    /* a session of a build before session parameters: its top-k, if any,
     * is still in the CLI's side file (stored with it when next opened) */
    int legacy = sp.top_k ? 0 : msa_cli_legacy_top_k(cli, argv[1], in.created, in.parent);
    if (cli->json) {
        json_t *j = info_json(&in, &use);
        json_t *pj = json_object();
        json_object_set_new(pj, "top_k", sp.top_k ? json_integer(sp.top_k) : json_null());
        json_object_set_new(pj, "top_k_from", json_string(sp.top_k ? "session" : legacy ? "cli side file" : "default"));
        json_object_set_new(pj, "top_k_effective", json_integer(sp.top_k ? sp.top_k : legacy ? legacy : 16));
        json_object_set_new(j, "params", pj);
        json_object_set_new(j, "damaged", damaged);
        print_json(j);
    } else {
        char b1[32], b2[32], w1[32], w2[32];
        const msa_store_shape *h = &in.shape;
        printf("session   %s\n", in.name);
        if (*in.parent) printf("forked    from %s\n", in.parent);
        printf("model     %s\n", in.fingerprint);
        printf("shape     %d layers, %d KV heads x %d (%s), index %d x %d (%s), blocks of %d\n", h->n_layers,
               h->n_kv_heads, h->head_dim, msa_dtype_name(h->kv_dtype), h->idx_key_heads, h->idx_dim,
               msa_dtype_name(h->idx_dtype), h->block_size);
        if (sp.top_k) printf("params    top-k %d\n", sp.top_k);
        else if (legacy) printf("params    top-k %d (from the CLI side file; stored with the session when next opened)\n", legacy);
        else printf("params    top-k not stored (the engine's, 16 by default)\n");
        printf("tokens    %llu in %llu blocks per layer\n", (unsigned long long)in.n_tokens, (unsigned long long)in.n_blocks);
        char b3[32], b4[32];
        printf("size      %s raw, %s on disk (%.2fx): %s own, %s in blocks shared with forks\n",
               msa_cli_bytes((double)in.raw_bytes, b1, sizeof b1), msa_cli_bytes((double)in.stored_bytes, b2, sizeof b2),
               in.ratio, msa_cli_bytes((double)use.own_bytes, b3, sizeof b3),
               msa_cli_bytes((double)use.shared_bytes, b4, sizeof b4));
        printf("created   %s\nlast use  %s\n", when(in.created, w1, sizeof w1), when(in.last_use, w2, sizeof w2));
        for (size_t i = 0; i < json_array_size(damaged); i++)
            printf("damaged   %s\n", json_string_value(json_array_get(damaged, i)));
        json_decref(damaged);
    }
    msa_store_close(st);
    if (n_bad) {
        return fail_msg(MSA_ECORRUPT, "info %s: %llu damaged blocks or records (generation leaves damaged "
                            "blocks out of the selection; `msa-mem salvage` copies the session up to its "
                            "first damage)", argv[1], (unsigned long long)n_bad);
    }
    return 0;
}

/* rm, fork, export, import, compact share a shape: check args, open, act */
static int simple_help(const char *cmd, const char *usage, const char *what, const char *ex) {
    printf("usage: msa-mem %s %s\n\n%s\n\nExample:\n  %s\n", cmd, usage, what, ex);
    return 0;
}

static int done_json(msa_cli *cli, json_t *j) {
    if (cli->json) print_json(j);
    else json_decref(j);
    return 0;
}

int msa_cmd_rm(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv))
        return simple_help("rm", "NAME...", "Removes sessions (blocks shared with forks stay for them). A session\n"
                           "in use (open for writing by another process: ingest, chat, gen, ask) is\n"
                           "busy: it is not removed and rm exits with status 7.", "msa-mem rm old-notes");
    if (argc < 2) return msa_cli_usage_error("rm", "needs a session name");
    msa_store *st;
    int rc = open_store(cli, 0, &st);
    if (rc) return rc;
    for (int i = 1; i < argc; i++)
        if ((rc = msa_session_remove(st, argv[i]))) {
            msa_store_close(st);
            return msa_cli_fail(rc, "rm %s", argv[i]);
        }
    msa_store_close(st);
    return done_json(cli, json_pack("{s:b}", "ok", 1));
}

int msa_cmd_fork(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv))
        return simple_help("fork", "SRC DST", "Makes DST a copy of SRC that shares its blocks; both grow apart.",
                           "msa-mem fork notes notes-experiment");
    if (argc != 3) return msa_cli_usage_error("fork", "needs SRC and DST");
    msa_store *st;
    int rc = open_store(cli, 0, &st);
    if (rc) return rc;
    rc = msa_store_fork(st, argv[1], argv[2]);
    msa_store_close(st);
    if (rc) return msa_cli_fail(rc, "fork %s %s", argv[1], argv[2]);
    return done_json(cli, json_pack("{s:b, s:o}", "ok", 1, "session", msa_cli_jstr(argv[2])));
}

int msa_cmd_export(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv))
        return simple_help("export", "NAME FILE", "Writes a session to one portable, checksummed file.",
                           "msa-mem export notes notes.msax");
    if (argc != 3) return msa_cli_usage_error("export", "needs NAME and FILE");
    msa_store *st;
    int rc = open_store_ro(cli, 0, 1, &st);
    if (rc) return rc;
    rc = msa_store_export(st, argv[1], argv[2]);
    msa_store_close(st);
    if (rc) return msa_cli_fail(rc, "export %s", argv[1]);
    return done_json(cli, json_pack("{s:b, s:o}", "ok", 1, "file", msa_cli_jstr(argv[2])));
}

int msa_cmd_import(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv))
        return simple_help("import", "FILE [NAME]",
                           "Reads an exported session (under NAME, else its own name). A truncated or\n"
                           "tampered file is refused and the store is left unchanged.",
                           "msa-mem import notes.msax notes-copy");
    if (argc != 2 && argc != 3) return msa_cli_usage_error("import", "needs FILE and an optional NAME");
    msa_store *st;
    int rc = open_store(cli, 1, &st);
    if (rc) return rc;
    rc = msa_store_import(st, argv[1], argc == 3 ? argv[2] : NULL);
    msa_store_close(st);
    if (rc) return msa_cli_fail(rc, "import %s", argv[1]);
    return done_json(cli, json_pack("{s:b}", "ok", 1));
}

int msa_cmd_compact(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv))
        return simple_help("compact", "", "Rewrites the store without free pages and gives back the space of removed\nsessions in segment files (deleting those no block uses, moving the live\nblocks out of mostly unused ones); needs no other process using it.",
                           "msa-mem compact");
    msa_store *st;
    int rc = open_store(cli, 0, &st);
    if (rc) return rc;
    int64_t saved = 0;
    rc = msa_store_compact(st, &saved);
    msa_store_close(st);
    if (rc) return msa_cli_fail(rc, "compact");
    char b[32];
    if (!cli->json) printf("compacted: %s freed\n", msa_cli_bytes((double)saved, b, sizeof b));
    return done_json(cli, json_pack("{s:b, s:I}", "ok", 1, "bytes_freed", (json_int_t)saved));
}

static void fsck_line(void *ctx, const char *line) {
    if (ctx) json_array_append_new(ctx, msa_cli_jstr(line));
    else printf("%s\n", line);
}

int msa_cmd_fsck(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv))
        return simple_help("fsck", "",
                           "Checks every LMDB page of the store, every session record, token chunk,\n"
                           "block entry and block checksum, decodes every block and recounts shared\n"
                           "blocks. Exit status 4 when anything is wrong; each finding is one line.\n"
                           "A store too damaged to open is read without LMDB, as salvage reads it.",
                           "msa-mem fsck --json");
    msa_store *st;
    msa_store_params p = msa_store_default_params();
    p.dir = cli->store_dir;
    p.create = 0;
    p.readonly = 1;
    int rc = msa_store_open(&p, &st);
    json_t *arr = cli->json ? json_array() : NULL;
    uint64_t n = 0;
    if (rc == MSA_ECORRUPT) {
        /* damaged LMDB pages: list what salvage would find */
        char d[4096];
        const char *dir = cli->store_dir;
        if (!dir) dir = msa_store_default_dir(d, sizeof d) == MSA_OK ? d : "";
        char why[1024];
        snprintf(why, sizeof why, "%s", msa_last_error());
        msa_store_salvage_stats ss;
        int r2 = msa_store_salvage(dir, NULL, fsck_line, arr, &ss);
        if (cli->json)
            print_json(json_pack("{s:b, s:I, s:o, s:o}", "clean", 0, "findings_count", (json_int_t)ss.damaged,
                                 "findings", arr, "error", msa_cli_jstr(why)));
        if (r2) fprintf(stderr, "msa-mem: fsck: reading it without LMDB: %s\n", msa_last_error());
        return fail_msg(MSA_ECORRUPT, "%s", why);
    }
    if (rc) {
        json_decref(arr);
        return msa_cli_fail(rc, "opening the store");
    }
    rc = msa_store_fsck(st, fsck_line, arr, &n);
    msa_store_close(st);
    if (rc && rc != MSA_ECORRUPT) {
        json_decref(arr);
        return msa_cli_fail(rc, "fsck");
    }
    char why[1024];
    snprintf(why, sizeof why, "%s", rc ? msa_last_error() : "");
    if (cli->json) print_json(json_pack("{s:b, s:I, s:o}", "clean", !n, "findings_count", (json_int_t)n, "findings", arr));
    else if (!n) printf("clean\n");
    if (n) return fail_msg(MSA_ECORRUPT, "%s", why);
    return 0;
}

static void salvage_line(void *ctx, const char *line) {
    msa_cli *cli = ctx;
    if (!cli->quiet && !cli->json) printf("%s\n", line);
}

typedef struct salvage_json {
    msa_cli *cli;
    json_t *lines;
} salvage_json;

static void salvage_json_line(void *ctx, const char *line) {
    json_array_append_new(((salvage_json *)ctx)->lines, msa_cli_jstr(line));
}

/* The CLI's per-session sidecars (STORE/cli/, cmd_session.c: top-k and the
 * ingest manifest) go with the sessions: salvage keeps each session's
 * creation time, which is what a sidecar is checked against. */
static void copy_sidecars(const char *src, const char *dst) {
    char sd[4200], dd[4200];
    snprintf(sd, sizeof sd, "%s/cli", src);
    snprintf(dd, sizeof dd, "%s/cli", dst);
    DIR *d = opendir(sd);
    if (!d) return;
    mkdir(dd, 0755);
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 6 || strcmp(e->d_name + n - 5, ".json")) continue;
        char a[4500], b[4500];
        snprintf(a, sizeof a, "%s/%s", sd, e->d_name);
        snprintf(b, sizeof b, "%s/%s", dd, e->d_name);
        FILE *in = fopen(a, "rb"), *out = in ? fopen(b, "wbx") : NULL;
        char buf[8192];
        size_t got;
        while (in && out && (got = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, got, out);
        if (in) fclose(in);
        if (out) fclose(out);
    }
    closedir(d);
}

int msa_cmd_salvage(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv))
        return simple_help("salvage", "[SRC] DST",
                           "Copies every intact session of the store SRC (default: --store) into a new\n"
                           "store DST, reading SRC without LMDB so that a damaged file is read as far as\n"
                           "its pages allow, and verifying every record and block. A session with a\n"
                           "damaged block or token chunk is copied up to that damage (all layers, cut at\n"
                           "a block boundary); one whose record is damaged is left out. Each line says\n"
                           "what happened to one session or names one damaged page. SRC is not changed\n"
                           "and must not be in use. Exit status 0 when nothing was damaged, 4 when\n"
                           "something was left out (DST then holds everything intact).",
                           "msa-mem salvage ~/.local/share/msa-mem /tmp/rescued && msa-mem --store /tmp/rescued fsck");
    if (argc != 2 && argc != 3) return msa_cli_usage_error("salvage", "needs DST, or SRC and DST");
    char d[4096];
    const char *src = argc == 3 ? argv[1] : cli->store_dir, *dst = argv[argc - 1];
    if (!src) {
        if (msa_store_default_dir(d, sizeof d)) return msa_cli_fail(MSA_ENOTFOUND, "salvage");
        src = d;
    }
    msa_store_salvage_stats ss;
    salvage_json sj = {cli, json_array()};
    int rc = msa_store_salvage(src, dst, cli->json ? salvage_json_line : salvage_line, cli->json ? (void *)&sj : cli,
                               &ss);
    if (rc) {
        json_decref(sj.lines);
        return msa_cli_fail(rc, "salvage %s %s", src, dst);
    }
    copy_sidecars(src, dst);
    if (cli->json)
        print_json(json_pack("{s:o, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "source", msa_cli_jstr(src),
                             "store", msa_cli_jstr(dst),
                             "sessions_seen", (json_int_t)ss.sessions_seen, "sessions_copied",
                             (json_int_t)ss.sessions_copied, "sessions_truncated", (json_int_t)ss.sessions_truncated,
                             "sessions_lost", (json_int_t)ss.sessions_lost, "tokens_copied",
                             (json_int_t)ss.tokens_copied, "tokens_lost", (json_int_t)ss.tokens_lost,
                             "blocks_copied", (json_int_t)ss.blocks_copied, "damaged", (json_int_t)ss.damaged,
                             "lines", sj.lines));
    else {
        json_decref(sj.lines);
        if (!cli->quiet)
            printf("salvaged into %s: %llu sessions whole, %llu up to their first damage, %llu left out; "
                   "%llu tokens copied, %llu lost\n", dst, (unsigned long long)ss.sessions_copied,
                   (unsigned long long)ss.sessions_truncated, (unsigned long long)ss.sessions_lost,
                   (unsigned long long)ss.tokens_copied, (unsigned long long)ss.tokens_lost);
    }
    if (ss.damaged) {
        return fail_msg(MSA_ECORRUPT, "salvage: %s was damaged (%llu findings); %s holds every intact session",
                            src, (unsigned long long)ss.damaged, dst);
    }
    return 0;
}
