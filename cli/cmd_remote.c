/*
 * cmd_remote.c: `msa-mem remote`, sessions shared through an S3-compatible
 * object store (engine/msa.h section 6).
 *
 * Remotes are named in the store's directory, in remotes.json (written to
 * a temporary file and renamed over it):
 *   {"default": "origin", "remotes": {"origin": {"url": "s3://bucket/prefix",
 *    "endpoint": "http://127.0.0.1:8333", "region": "", "profile": ""}}}
 * Credentials are never written there: they come from the environment or
 * the AWS files, as the AWS CLI reads them.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static void remote_help(void) {
    printf("usage: msa-mem remote SUBCOMMAND [options]\n"
           "\n"
           "Shares sessions between machines through an S3-compatible object store\n"
           "(AWS S3, SeaweedFS, MinIO, Ceph RGW, ...). The local store stays the cache and\n"
           "the point of durability: sessions are written here and pushed; a pull copies\n"
           "a remote session's newer tokens and blocks into this store. Block objects are\n"
           "immutable and named by their SHA-256; each session's manifest is replaced only\n"
           "by compare-and-swap, so of two stores that push one session at once exactly one\n"
           "wins and the other gets a conflict (exit 7, busy) and loses nothing local.\n"
           "\n"
           "Subcommands:\n"
           "  add NAME URL [--endpoint URL] [--region R] [--profile P]\n"
           "                      name a remote: URL is s3://BUCKET or s3://BUCKET/PREFIX;\n"
           "                      --endpoint for a server other than AWS (path-style)\n"
           "  remove NAME         forget a remote (nothing on it is deleted)\n"
           "  list                the remotes this store knows\n"
           "  ls                  the sessions on a remote (tokens, generation, bytes)\n"
           "  push SESSION...     copy local sessions to the remote\n"
           "  pull SESSION...     copy remote sessions here (creating them)\n"
           "  sync [SESSION...]   push what is ahead here, pull what is ahead there (all\n"
           "                      sessions of both sides when none are named)\n"
           "  delete SESSION...   remove sessions' manifests from the remote\n"
           "  gc [--min-age S] [--dry-run]\n"
           "                      delete objects no manifest references and older than S\n"
           "                      seconds (default 3600, so pushes in flight are safe)\n"
           "\n"
           "Options:\n"
           "  --remote NAME       which remote (default: the first one added)\n"
           "  --threads N         parallel requests (default 8)\n"
           "  --retries N         retries of a failed request (default 5; backoff doubles)\n"
           "  --timeout S         a request that moves no byte for S seconds fails (30)\n"
           "  --json              one JSON document on stdout\n"
           "\n"
           "Credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN),\n"
           "else the profile (--profile at add, AWS_PROFILE, default) in ~/.aws/credentials\n"
           "or ~/.aws/config. Region: --region, AWS_REGION, AWS_DEFAULT_REGION, the profile's,\n"
           "us-east-1. https is always verified.\n"
           "\n"
           "Examples:\n"
           "  msa-mem remote add origin s3://agents/mem --endpoint http://127.0.0.1:8333\n"
           "  msa-mem remote push notes\n"
           "  msa-mem --store /other/store remote pull notes    # on another machine\n"
           "  msa-mem remote sync --json\n"
           "  msa-mem remote gc --min-age 0 --dry-run\n");
}

/* ---- the remotes file ------------------------------------------------------ */

static int remotes_path(msa_cli *cli, char *buf, size_t n) {
    char d[4096];
    const char *dir = cli->store_dir;
    if (!dir) {
        int rc = msa_store_default_dir(d, sizeof d);
        if (rc) return msa_cli_fail(rc, "finding the store directory");
        dir = d;
    }
    if ((size_t)snprintf(buf, n, "%s/remotes.json", dir) >= n) {
        fprintf(stderr, "msa-mem: store path too long\n");
        return MSA_EXIT_USAGE;
    }
    return 0;
}

static json_t *remotes_load(const char *path, int *err) {
    *err = 0;
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT) return json_pack("{s:s, s:{}}", "default", "", "remotes");
        fprintf(stderr, "msa-mem: %s: %s\n", path, strerror(errno));
        *err = MSA_EXIT_IO;
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loadf(f, 0, &je);
    fclose(f);
    if (!j || !json_is_object(json_object_get(j, "remotes"))) {
        fprintf(stderr, "msa-mem: %s: not a remotes file (%s); fix or remove it\n", path,
                j ? "no \"remotes\" object" : je.text);
        json_decref(j);
        *err = MSA_EXIT_CORRUPT;
        return NULL;
    }
    return j;
}

static int remotes_save(const char *path, json_t *j) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    if (json_dump_file(j, tmp, JSON_INDENT(2) | JSON_SORT_KEYS)) {
        fprintf(stderr, "msa-mem: cannot write %s (does the store directory exist?)\n", tmp);
        unlink(tmp);
        return MSA_EXIT_IO;
    }
    if (rename(tmp, path)) {
        fprintf(stderr, "msa-mem: cannot rename %s: %s\n", tmp, strerror(errno));
        unlink(tmp);
        return MSA_EXIT_IO;
    }
    return 0;
}

static void print_json(json_t *j) {
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (s) puts(s);
    free(s);
    json_decref(j);
}

/* ---- options ------------------------------------------------------------------ */

typedef struct ropts {
    const char *remote, *endpoint, *region, *profile;
    int threads, retries, timeout, dry_run;
    long long min_age;
    char *args[256];
    int n_args;
} ropts;

static int parse_opts(const char *sub, int argc, char **argv, ropts *o) {
    memset(o, 0, sizeof *o);
    o->threads = 8;
    o->retries = 5;
    o->timeout = 30;
    o->min_age = 3600;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define VAL() do { if (!v) return msa_cli_usage_error("remote", "%s %s needs a value", sub, a); i++; } while (0)
        if (!strcmp(a, "--remote") || !strcmp(a, "-r")) { VAL(); o->remote = v; }
        else if (!strcmp(a, "--endpoint")) { VAL(); o->endpoint = v; }
        else if (!strcmp(a, "--region")) { VAL(); o->region = v; }
        else if (!strcmp(a, "--profile")) { VAL(); o->profile = v; }
        else if (!strcmp(a, "--threads") || !strcmp(a, "--retries") || !strcmp(a, "--timeout") ||
                 !strcmp(a, "--min-age")) {
            VAL();
            long long n = msa_cli_parse_count(v, 0);
            if (n < 0 || n > 1000000000LL)
                return msa_cli_usage_error("remote", "%s: bad number '%s'", a, v);
            if (!strcmp(a, "--threads")) { if (n < 1 || n > 64) return msa_cli_usage_error("remote", "--threads takes 1..64"); o->threads = (int)n; }
            else if (!strcmp(a, "--retries")) o->retries = (int)n;
            else if (!strcmp(a, "--timeout")) { if (n < 1) return msa_cli_usage_error("remote", "--timeout takes >= 1 s"); o->timeout = (int)n; }
            else o->min_age = n;
        } else if (!strcmp(a, "--dry-run")) o->dry_run = 1;
        else if (a[0] == '-' && a[1]) return msa_cli_usage_error("remote", "%s: unknown option '%s'", sub, a);
        else {
            if (o->n_args == 256) return msa_cli_usage_error("remote", "too many arguments");
            o->args[o->n_args++] = argv[i];
        }
#undef VAL
    }
    return 0;
}

/* Opens the remote named by --remote (or the default one). */
static int open_remote(msa_cli *cli, const ropts *o, msa_remote **out, const char **name_out) {
    char path[4200];
    int rc = remotes_path(cli, path, sizeof path), err;
    if (rc) return rc;
    json_t *j = remotes_load(path, &err);
    if (!j) return err;
    json_t *all = json_object_get(j, "remotes");
    const char *name = o->remote;
    if (!name) name = json_string_value(json_object_get(j, "default"));
    if ((!name || !*name) && json_object_size(all) == 1) name = json_object_iter_key(json_object_iter(all));
    if (!name || !*name) {
        fprintf(stderr, "msa-mem remote: no remote %s; add one: msa-mem remote add origin "
                        "s3://BUCKET/PREFIX [--endpoint URL]\n",
                json_object_size(all) ? "chosen (give --remote NAME)" : "configured");
        json_decref(j);
        return MSA_EXIT_NOTFOUND;
    }
    json_t *e = json_object_get(all, name);
    if (!json_is_object(e)) {
        fprintf(stderr, "msa-mem remote: no remote named '%s' (see `msa-mem remote list`)\n", name);
        json_decref(j);
        return MSA_EXIT_NOTFOUND;
    }
    static char keep[4][1024];
    const char *fields[4] = {"url", "endpoint", "region", "profile"};
    for (int i = 0; i < 4; i++) {
        const char *s = json_string_value(json_object_get(e, fields[i]));
        snprintf(keep[i], sizeof keep[i], "%s", s ? s : "");
    }
    static char keep_name[256];
    snprintf(keep_name, sizeof keep_name, "%s", name);
    json_decref(j);
    msa_remote_params p = msa_remote_default_params();
    p.url = keep[0];
    p.endpoint = keep[1][0] ? keep[1] : NULL;
    p.region = keep[2][0] ? keep[2] : NULL;
    p.profile = keep[3][0] ? keep[3] : NULL;
    p.n_threads = o->threads;
    p.max_retries = o->retries;
    p.timeout_s = o->timeout;
    rc = msa_remote_open(&p, out);
    if (rc) return msa_cli_fail(rc, "remote '%s'", keep_name);
    if (name_out) *name_out = keep_name;
    return 0;
}

static int open_store(msa_cli *cli, int create, msa_store **st) {
    msa_store_params p = msa_store_default_params();
    p.dir = cli->store_dir;
    p.create = create;
    int rc = msa_store_open(&p, st);
    return rc ? msa_cli_fail(rc, "opening the store") : 0;
}

/* ---- subcommands ------------------------------------------------------------------ */

static int sub_add(msa_cli *cli, const ropts *o) {
    if (o->n_args != 2) return msa_cli_usage_error("remote", "add takes NAME and URL (s3://BUCKET/PREFIX)");
    const char *name = o->args[0], *url = o->args[1];
    for (const char *c = name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-' || *c == '_'))
            return msa_cli_usage_error("remote", "a remote's name holds only letters, digits, - and _");
    /* check the URL and endpoint now rather than at the first push */
    msa_remote_params p = msa_remote_default_params();
    p.url = url;
    p.endpoint = o->endpoint;
    if (strncmp(url, "s3://", 5)) return msa_cli_usage_error("remote", "'%s' is not an s3://BUCKET[/PREFIX] URL", url);
    if (o->endpoint && strncmp(o->endpoint, "http://", 7) && strncmp(o->endpoint, "https://", 8))
        return msa_cli_usage_error("remote", "--endpoint '%s' is not an http(s):// URL", o->endpoint);
    (void)p;
    char path[4200];
    int rc = remotes_path(cli, path, sizeof path), err;
    if (rc) return rc;
    /* the store directory must exist for the file: create the store */
    msa_store *st;
    if ((rc = open_store(cli, 1, &st))) return rc;
    msa_store_close(st);
    json_t *j = remotes_load(path, &err);
    if (!j) return err;
    json_t *all = json_object_get(j, "remotes");
    if (json_object_get(all, name)) {
        json_decref(j);
        fprintf(stderr, "msa-mem remote: a remote named '%s' exists (remove it first)\n", name);
        return MSA_EXIT_ERROR;
    }
    json_object_set_new(all, name, json_pack("{s:s, s:s, s:s, s:s}", "url", url, "endpoint",
                                             o->endpoint ? o->endpoint : "", "region",
                                             o->region ? o->region : "", "profile",
                                             o->profile ? o->profile : ""));
    const char *def = json_string_value(json_object_get(j, "default"));
    if (!def || !*def) json_object_set_new(j, "default", json_string(name));
    rc = remotes_save(path, j);
    json_decref(j);
    if (rc) return rc;
    if (cli->json) print_json(json_pack("{s:s, s:s, s:s}", "added", name, "url", url, "endpoint", o->endpoint ? o->endpoint : ""));
    else if (!cli->quiet) printf("remote '%s': %s%s%s\n", name, url, o->endpoint ? " at " : "", o->endpoint ? o->endpoint : "");
    return 0;
}

static int sub_remove(msa_cli *cli, const ropts *o) {
    if (o->n_args != 1) return msa_cli_usage_error("remote", "remove takes NAME");
    char path[4200];
    int rc = remotes_path(cli, path, sizeof path), err;
    if (rc) return rc;
    json_t *j = remotes_load(path, &err);
    if (!j) return err;
    json_t *all = json_object_get(j, "remotes");
    if (json_object_del(all, o->args[0])) {
        json_decref(j);
        fprintf(stderr, "msa-mem remote: no remote named '%s'\n", o->args[0]);
        return MSA_EXIT_NOTFOUND;
    }
    const char *def = json_string_value(json_object_get(j, "default"));
    if (def && !strcmp(def, o->args[0])) {
        const char *next = json_object_size(all) ? json_object_iter_key(json_object_iter(all)) : "";
        json_object_set_new(j, "default", json_string(next));
    }
    rc = remotes_save(path, j);
    json_decref(j);
    if (!rc && !cli->quiet && !cli->json) printf("removed remote '%s'\n", o->args[0]);
    return rc;
}

static int sub_list(msa_cli *cli, const ropts *o) {
    (void)o;
    char path[4200];
    int rc = remotes_path(cli, path, sizeof path), err;
    if (rc) return rc;
    json_t *j = remotes_load(path, &err);
    if (!j) return err;
    if (cli->json) { print_json(j); return 0; }
    json_t *all = json_object_get(j, "remotes");
    const char *def = json_string_value(json_object_get(j, "default"));
    const char *k;
    json_t *v;
    if (!json_object_size(all)) printf("(no remotes; `msa-mem remote add NAME s3://BUCKET/PREFIX`)\n");
    json_object_foreach(all, k, v) {
        const char *ep = json_string_value(json_object_get(v, "endpoint"));
        printf("%s%-12s %s%s%s\n", def && !strcmp(def, k) ? "* " : "  ", k,
               json_string_value(json_object_get(v, "url")), ep && *ep ? "  at " : "", ep ? ep : "");
    }
    json_decref(j);
    return 0;
}

static int sub_ls(msa_cli *cli, const ropts *o) {
    msa_remote *r;
    const char *rn;
    int rc = open_remote(cli, o, &r, &rn);
    if (rc) return rc;
    msa_remote_session_info *l;
    size_t n;
    if ((rc = msa_remote_list(r, &l, &n))) {
        msa_remote_close(r);
        return msa_cli_fail(rc, "listing remote '%s'", rn);
    }
    if (cli->json) {
        json_t *a = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(a, json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:s, s:i}",
                                               "name", l[i].name, "model", l[i].fingerprint,
                                               "tokens", (json_int_t)l[i].n_tokens,
                                               "blocks", (json_int_t)l[i].n_blocks,
                                               "bytes", (json_int_t)l[i].bytes,
                                               "generation", (json_int_t)l[i].generation,
                                               "pushed_at", (json_int_t)l[i].pushed_at,
                                               "pushed_by", l[i].pushed_by,
                                               "layers", l[i].shape.n_layers));
        print_json(json_pack("{s:s, s:o}", "remote", rn, "sessions", a));
    } else {
        if (!n) printf("(no sessions on remote '%s')\n", rn);
        else printf("%-24s %10s %8s %10s %5s  %s\n", "SESSION", "TOKENS", "BLOCKS", "BYTES", "GEN", "PUSHED");
        for (size_t i = 0; i < n; i++) {
            char b[32], w[32];
            time_t t = (time_t)l[i].pushed_at;
            struct tm tm;
            localtime_r(&t, &tm);
            strftime(w, sizeof w, "%Y-%m-%d %H:%M", &tm);
            printf("%-24s %10llu %8llu %10s %5llu  %s by %s\n", l[i].name, (unsigned long long)l[i].n_tokens,
                   (unsigned long long)l[i].n_blocks, msa_cli_bytes((double)l[i].bytes, b, sizeof b),
                   (unsigned long long)l[i].generation, w, l[i].pushed_by);
        }
    }
    msa_remote_list_free(l);
    msa_remote_close(r);
    return 0;
}

static json_t *stats_json(const char *session, const char *action, const msa_remote_stats *s) {
    return json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f}",
                     "session", session, "action", action,
                     "objects_sent", (json_int_t)s->objects_sent,
                     "objects_present", (json_int_t)s->objects_present,
                     "objects_fetched", (json_int_t)s->objects_fetched,
                     "bytes_sent", (json_int_t)s->bytes_sent, "bytes_fetched", (json_int_t)s->bytes_fetched,
                     "requests", (json_int_t)s->requests, "retries", (json_int_t)s->retries,
                     "tokens_local", (json_int_t)s->tokens_local, "tokens_remote", (json_int_t)s->tokens_remote,
                     "generation", (json_int_t)s->generation, "seconds", s->seconds);
}

static void stats_text(const msa_cli *cli, const char *session, const char *action, const msa_remote_stats *s) {
    if (cli->quiet) return;
    char b[32];
    double bytes = (double)(s->bytes_sent + s->bytes_fetched);
    printf("%s: %s (%llu tokens here, %llu there, generation %llu", session, action,
           (unsigned long long)s->tokens_local, (unsigned long long)s->tokens_remote,
           (unsigned long long)s->generation);
    if (s->objects_sent || s->objects_fetched || s->objects_present)
        printf("; %llu objects %s, %llu already there, %s in %.2f s", (unsigned long long)(s->objects_sent + s->objects_fetched),
               s->objects_fetched ? "fetched" : "sent", (unsigned long long)s->objects_present,
               msa_cli_bytes(bytes, b, sizeof b), s->seconds);
    if (s->retries) printf("; %llu retries", (unsigned long long)s->retries);
    printf(")\n");
}

/* dir: 1 push, 2 pull, 3 sync */
static int sub_move(msa_cli *cli, const ropts *o, int dir) {
    const char *what = dir == 1 ? "push" : dir == 2 ? "pull" : "sync";
    if (dir != 3 && !o->n_args) return msa_cli_usage_error("remote", "%s takes one or more SESSION names", what);
    msa_remote *r;
    const char *rn;
    int rc = open_remote(cli, o, &r, &rn);
    if (rc) return rc;
    msa_store *st;
    if ((rc = open_store(cli, dir != 1, &st))) { msa_remote_close(r); return rc; }
    /* the sessions: named, or (sync) all of both sides */
    char **names = NULL;
    size_t n = 0;
    msa_store_session_info *ll = NULL;
    msa_remote_session_info *rl = NULL;
    size_t nl = 0, nr = 0;
    if (o->n_args) { names = (char **)o->args; n = (size_t)o->n_args; }
    else {
        int e = msa_store_list(st, &ll, &nl);
        if (!e) e = msa_remote_list(r, &rl, &nr);
        if (e) { msa_store_list_free(ll); msa_store_close(st); msa_remote_close(r); return msa_cli_fail(e, "listing sessions"); }
        names = calloc(nl + nr + 1, sizeof *names);
        for (size_t i = 0; names && i < nl; i++) names[n++] = ll[i].name;
        for (size_t i = 0; names && i < nr; i++) {
            int dup = 0;
            for (size_t k = 0; k < nl; k++) dup |= !strcmp(ll[k].name, rl[i].name);
            if (!dup) names[n++] = rl[i].name;
        }
    }
    json_t *out = json_array();
    int worst = 0, exit_code = 0;
    for (size_t i = 0; i < n; i++) {
        const char *s = names[i];
        msa_remote_stats stt;
        memset(&stt, 0, sizeof stt);
        int d = dir;
        const char *action = NULL;
        if (dir == 3) {
            msa_remote_relation rel;
            rc = msa_remote_compare(r, st, s, &rel);
            if (!rc) {
                if (rel == MSA_REMOTE_SAME) { action = "up to date"; d = 0; }
                else if (rel == MSA_REMOTE_LOCAL_AHEAD || rel == MSA_REMOTE_ONLY_LOCAL) d = 1;
                else if (rel == MSA_REMOTE_REMOTE_AHEAD || rel == MSA_REMOTE_ONLY_REMOTE) d = 2;
                else { d = 1; } /* diverged: push reports the conflict */
            }
        } else rc = 0;
        if (!rc && d == 1) rc = msa_remote_push(r, st, s, &stt);
        else if (!rc && d == 2) rc = msa_remote_pull(r, st, s, &stt);
        if (rc) {
            int code = msa_cli_fail(rc, "%s of '%s' with remote '%s'", d == 2 ? "pull" : d == 1 ? "push" : "sync", s, rn);
            if (!exit_code || rc == MSA_EBUSY) exit_code = code;
            worst = rc;
            json_array_append_new(out, json_pack("{s:s, s:s, s:s, s:s}", "session", s, "action", "failed",
                                                 "error", msa_strerror(rc), "message", msa_last_error()));
            continue;
        }
        if (!action)
            action = stt.up_to_date ? "up to date"
                   : stt.local_ahead ? "local is ahead (push it)"
                   : d == 1 ? "pushed" : "pulled";
        if (cli->json) json_array_append_new(out, stats_json(s, action, &stt));
        else stats_text(cli, s, action, &stt);
    }
    (void)worst;
    if (cli->json) print_json(json_pack("{s:s, s:o}", "remote", rn, "sessions", out));
    else json_decref(out);
    if (!o->n_args) free(names);
    msa_store_list_free(ll);
    msa_remote_list_free(rl);
    msa_store_close(st);
    msa_remote_close(r);
    return exit_code;
}

static int sub_delete(msa_cli *cli, const ropts *o) {
    if (!o->n_args) return msa_cli_usage_error("remote", "delete takes one or more SESSION names");
    msa_remote *r;
    const char *rn;
    int rc = open_remote(cli, o, &r, &rn), code = 0;
    if (rc) return rc;
    json_t *out = json_array();
    for (int i = 0; i < o->n_args; i++) {
        rc = msa_remote_remove(r, o->args[i]);
        if (rc) code = msa_cli_fail(rc, "deleting '%s' from remote '%s'", o->args[i], rn);
        else if (!cli->quiet && !cli->json) printf("deleted '%s' from remote '%s' (its objects go at the next gc)\n", o->args[i], rn);
        json_array_append_new(out, json_pack("{s:s, s:s}", "session", o->args[i], "action",
                                             rc ? "failed" : "deleted"));
    }
    if (cli->json) print_json(json_pack("{s:s, s:o}", "remote", rn, "sessions", out));
    else json_decref(out);
    msa_remote_close(r);
    return code;
}

static int sub_gc(msa_cli *cli, const ropts *o) {
    if (o->n_args) return msa_cli_usage_error("remote", "gc takes no arguments");
    msa_remote *r;
    const char *rn;
    int rc = open_remote(cli, o, &r, &rn);
    if (rc) return rc;
    msa_remote_gc_stats g;
    rc = msa_remote_gc(r, o->min_age, o->dry_run, &g);
    msa_remote_close(r);
    if (rc) return msa_cli_fail(rc, "gc of remote '%s'", rn);
    if (cli->json)
        print_json(json_pack("{s:s, s:b, s:I, s:I, s:I, s:I, s:I, s:I}", "remote", rn, "dry_run", o->dry_run,
                             "manifests", (json_int_t)g.manifests, "referenced", (json_int_t)g.referenced,
                             "objects", (json_int_t)g.objects, "deleted", (json_int_t)g.deleted,
                             "bytes_deleted", (json_int_t)g.bytes_deleted, "kept_young", (json_int_t)g.kept_young));
    else if (!cli->quiet) {
        char b[32];
        printf("remote '%s': %llu sessions reference %llu of %llu objects; %s %llu (%s)%s",
               rn, (unsigned long long)g.manifests, (unsigned long long)g.referenced,
               (unsigned long long)g.objects, o->dry_run ? "would delete" : "deleted",
               (unsigned long long)g.deleted, msa_cli_bytes((double)g.bytes_deleted, b, sizeof b),
               g.kept_young ? "" : "\n");
        if (g.kept_young) printf("; kept %llu younger than %lld s\n", (unsigned long long)g.kept_young, o->min_age);
    }
    return 0;
}

int msa_cmd_remote(msa_cli *cli, int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        remote_help();
        return argc < 2 ? MSA_EXIT_USAGE : 0;
    }
    if (msa_cli_wants_help(argc, argv)) { remote_help(); return 0; }
    const char *sub = argv[1];
    ropts o;
    int rc = parse_opts(sub, argc, argv, &o);
    if (rc) return rc;
    if (!strcmp(sub, "add")) return sub_add(cli, &o);
    if (!strcmp(sub, "remove")) return sub_remove(cli, &o);
    if (!strcmp(sub, "list")) return sub_list(cli, &o);
    if (!strcmp(sub, "ls")) return sub_ls(cli, &o);
    if (!strcmp(sub, "push")) return sub_move(cli, &o, 1);
    if (!strcmp(sub, "pull")) return sub_move(cli, &o, 2);
    if (!strcmp(sub, "sync")) return sub_move(cli, &o, 3);
    if (!strcmp(sub, "delete")) return sub_delete(cli, &o);
    if (!strcmp(sub, "gc")) return sub_gc(cli, &o);
    return msa_cli_usage_error("remote", "unknown subcommand '%s'", sub);
}
