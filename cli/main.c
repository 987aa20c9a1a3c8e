/*
 * main.c: the msa-mem command line: global options, the command table
 * (cli/commands.def) and the shared helpers of cli/cli.h.
 *
 * Global options may stand before or after the command name:
 *   msa-mem --store DIR ls --json   ==   msa-mem ls --store DIR --json
 */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct command {
    const char *name, *summary;
    int (*run)(msa_cli *cli, int argc, char **argv);
} command;

static const command commands[] = {
#define MSA_CLI_COMMAND(name, summary) {#name, summary, msa_cmd_##name},
#include "commands.def"
#undef MSA_CLI_COMMAND
};
enum { N_COMMANDS = sizeof commands / sizeof commands[0] };

static void print_help(FILE *f) {
    fprintf(f,
            "usage: msa-mem [global options] COMMAND [options] [args]\n"
            "\n"
            "A long-memory engine for language models: sessions are kept as KV-cache\n"
            "blocks in a persistent store and read back through MiniMax Sparse\n"
            "Attention, which reads only the few blocks that matter at each step.\n"
            "\n"
            "Commands:\n");
    for (int i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f,
            "\n"
            "Global options (also from the environment):\n"
            "  --store DIR     the store (MSA_STORE; default $XDG_DATA_HOME/msa-mem)\n"
            "  --model PATH    a GGUF file or Hugging Face model directory (MSA_MODEL)\n"
            "  --device DEV    cpu (default), cuda or cuda:N (MSA_DEVICE); a session keeps\n"
            "                  the device it was created on (f32 on cpu, bf16 on cuda)\n"
            "  --json          machine-readable output on stdout\n"
            "  -q, --quiet     no progress bars or chatter\n"
            "  -v, --verbose   more detail on stderr\n"
            "  -h, --help      help; `msa-mem COMMAND --help` for a command\n"
            "  -V, --version   the version and build features (`msa-mem version --json`)\n"
            "\n"
            "Exit status: 0 success, 1 error, 2 usage, 3 not found, 4 corrupt data,\n"
            "5 wrong model for a session, 6 I/O or network error, 7 busy (a session\n"
            "in use by another process: a second writer, rm of an open session),\n"
            "130 interrupted.\n"
            "\n"
            "--json output is always valid UTF-8 JSON: bytes of names, paths and texts\n"
            "that are not valid UTF-8 are shown as U+FFFD, one per ill-formed sequence\n"
            "(as Python's bytes.decode('utf-8', 'replace')); no record is dropped.\n");
}

int msa_cli_exit_code(int status) {
    switch (status) {
    case MSA_OK: return MSA_EXIT_OK;
    case MSA_EINVAL: return MSA_EXIT_USAGE;
    case MSA_ENOTFOUND: return MSA_EXIT_NOTFOUND;
    case MSA_ECORRUPT: case MSA_EFORMAT: case MSA_EVERSION: return MSA_EXIT_CORRUPT;
    case MSA_EMODEL: return MSA_EXIT_MODEL;
    case MSA_EIO: case MSA_ENOSPC: case MSA_ENET: case MSA_EAUTH: return MSA_EXIT_IO;
    case MSA_EINTR: return MSA_EXIT_INTERRUPTED;
    case MSA_EBUSY: return MSA_EXIT_BUSY;
    default: return MSA_EXIT_ERROR;
    }
}

int msa_cli_fail(int status, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "msa-mem: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    const char *detail = msa_last_error();
    fprintf(stderr, ": %s\n", detail && *detail ? detail : msa_strerror(status));
    /* damaged stored data: say what to do, unless the message did */
    if (status == MSA_ECORRUPT && detail && !strstr(detail, "salvage") &&
        (strstr(detail, "session '") || strstr(detail, "block") || strstr(detail, "LMDB")))
        fprintf(stderr, "msa-mem: the store holds damaged data: `msa-mem fsck` names it, `msa-mem salvage "
                        "SRC DST` copies every intact session into a new store\n");
    return msa_cli_exit_code(status);
}

int msa_cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "msa-mem %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see `msa-mem %s --help`)\n", cmd);
    return MSA_EXIT_USAGE;
}

int msa_cli_wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--")) break;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return 1;
    }
    return 0;
}

long long msa_cli_parse_count(const char *s, int binary) {
    if (!s || !*s) return -1;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0) return -1;
    double unit = binary ? 1024.0 : 1000.0, mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = unit; end++; break;
    case 'm': case 'M': mul = unit * unit; end++; break;
    case 'g': case 'G': mul = unit * unit * unit; end++; break;
    default: break;
    }
    if (*end == 'i' && binary) end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end) return -1;
    return (long long)llround(v * mul);
}

const char *msa_cli_bytes(double b, char *buf, size_t n) {
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024 && i < 4) { b /= 1024; i++; }
    snprintf(buf, n, i ? "%.1f %s" : "%.0f %s", b, u[i]);
    return buf;
}

double msa_cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- JSON output ---------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at s[0..n), or, when it is
 * ill-formed, minus the length of its maximal subpart (>= 1 byte) that one
 * U+FFFD replaces. */
static long utf8_seq(const unsigned char *s, size_t n) {
    unsigned char b = s[0];
    if (b < 0x80) return 1;
    int need;
    unsigned char lo = 0x80, hi = 0xbf; /* range of the second byte */
    if (b >= 0xc2 && b <= 0xdf) need = 1;
    else if (b == 0xe0) { need = 2; lo = 0xa0; }
    else if (b == 0xed) { need = 2; hi = 0x9f; }
    else if (b >= 0xe1 && b <= 0xef) need = 2;
    else if (b == 0xf0) { need = 3; lo = 0x90; }
    else if (b == 0xf4) { need = 3; hi = 0x8f; }
    else if (b >= 0xf1 && b <= 0xf3) need = 3;
    else return -1;
    for (int i = 1; i <= need; i++) {
        unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xbf;
        if ((size_t)i >= n || s[i] < l || s[i] > h) return -i;
    }
    return need + 1;
}

char *msa_cli_utf8_clean(const char *s, size_t n, size_t *len) {
    if (!s) n = 0;
    char *out = malloc(3 * n + 1); /* one byte becomes at most 3 (U+FFFD) */
    if (!out) return NULL;
    size_t o = 0;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        long r = utf8_seq(u + i, n - i);
        if (r > 0) {
            memcpy(out + o, u + i, (size_t)r);
            o += (size_t)r;
            i += (size_t)r;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i += (size_t)-r;
        }
    }
    out[o] = 0;
    if (len) *len = o;
    return out;
}

json_t *msa_cli_jstrn(const char *s, size_t n) {
    size_t len;
    char *c = msa_cli_utf8_clean(s, n, &len);
    if (!c) return NULL;
    json_t *j = json_stringn_nocheck(c, len);
    free(c);
    return j;
}

json_t *msa_cli_jstr(const char *s) { return msa_cli_jstrn(s, s ? strlen(s) : 0); }

void msa_cli_json_write_str(FILE *f, const char *s, size_t n) {
    json_t *j = msa_cli_jstrn(s, n);
    char *d = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    fputs(d ? d : "\"\"", f);
    free(d);
    json_decref(j);
}

/* ---- progress ------------------------------------------------------------ */

void msa_progress_begin(msa_progress *p, const msa_cli *cli, const char *label,
                        double total, const char *unit) {
    memset(p, 0, sizeof *p);
    p->label = label;
    p->unit = unit;
    p->total = total;
    p->t0 = msa_cli_now();
    p->enabled = !(cli && cli->quiet) && isatty(2);
}

static void fmt_count(double v, const char *unit, char *buf, size_t n) {
    if (unit && !strcmp(unit, "B")) {
        msa_cli_bytes(v, buf, n);
        return;
    }
    if (v >= 1e6) snprintf(buf, n, "%.2fM", v / 1e6);
    else if (v >= 1e4) snprintf(buf, n, "%.1fK", v / 1e3);
    else snprintf(buf, n, "%.0f", v);
}

static void progress_draw(msa_progress *p, int final) {
    double el = msa_cli_now() - p->t0;
    double rate = el > 0 ? p->done / el : 0;
    char done[32], rate_s[32], eta[32] = "";
    fmt_count(p->done, p->unit, done, sizeof done);
    fmt_count(rate, p->unit, rate_s, sizeof rate_s);
    if (p->total > 0) {
        double f = p->done / p->total;
        if (f > 1) f = 1;
        int w = 24, fill = (int)(f * w);
        char bar[32];
        for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
        bar[w] = 0;
        if (!final && rate > 0) {
            double left = (p->total - p->done) / rate;
            snprintf(eta, sizeof eta, " ETA %dm%02ds", (int)left / 60, (int)left % 60);
        }
        fprintf(stderr, "\r%s [%s] %3.0f%% %s %s, %s/s%s   ", p->label, bar, f * 100,
                done, p->unit, rate_s, eta);
    } else {
        fprintf(stderr, "\r%s %s %s, %s/s   ", p->label, done, p->unit, rate_s);
    }
    if (final) fputc('\n', stderr);
    fflush(stderr);
}

void msa_progress_update(msa_progress *p, double done) {
    p->done = done;
    if (!p->enabled) return;
    double now = msa_cli_now();
    if (now - p->last_draw < 0.1) return;
    p->last_draw = now;
    progress_draw(p, 0);
}

void msa_progress_end(msa_progress *p) {
    if (p->enabled) progress_draw(p, 1);
}

/* ---- commands -------------------------------------------------------------- */

int msa_cmd_version(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv)) {
        printf("usage: msa-mem version [--json]\n\nPrints the library version and build features.\n");
        return 0;
    }
    if (cli->json)
        printf("{\"version\": \"%d.%d.%d\", \"build\": \"%s\", \"cuda_available\": %s}\n",
               MSA_VERSION_MAJOR, MSA_VERSION_MINOR, MSA_VERSION_PATCH, msa_version(),
               msa_cuda_available() ? "true" : "false");
    else
        printf("msa-mem %s (GPU %s)\n", msa_version(),
               msa_cuda_available() ? "available" : "not available");
    return 0;
}

/* Removes global options from argv (wherever they stand) into `cli`. */
static int take_globals(msa_cli *cli, int *argc, char **argv) {
    int out = 1;
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;
        if (!strcmp(a, "--")) { /* the rest is arguments */
            while (i < *argc) argv[out++] = argv[i++];
            break;
        }
        if (!strcmp(a, "--store")) slot = &cli->store_dir;
        else if (!strcmp(a, "--model")) slot = &cli->model;
        else if (!strcmp(a, "--device")) slot = &cli->device;
        if (slot) {
            if (i + 1 >= *argc) {
                fprintf(stderr, "msa-mem: %s needs a value\n", a);
                return MSA_EXIT_USAGE;
            }
            *slot = argv[++i];
            continue;
        }
        if (!strncmp(a, "--store=", 8)) { cli->store_dir = a + 8; continue; }
        if (!strncmp(a, "--model=", 8)) { cli->model = a + 8; continue; }
        if (!strncmp(a, "--device=", 9)) { cli->device = a + 9; continue; }
        if (!strcmp(a, "--json")) { cli->json = 1; continue; }
        if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) { cli->quiet = 1; continue; }
        if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) { cli->verbose = 1; continue; }
        argv[out++] = argv[i];
    }
    *argc = out;
    argv[out] = NULL;
    return 0;
}

int main(int argc, char **argv) {
    msa_cli cli = {0};
    cli.store_dir = getenv("MSA_STORE");
    cli.model = getenv("MSA_MODEL");
    cli.device = getenv("MSA_DEVICE");
    int rc = take_globals(&cli, &argc, argv);
    if (rc) return rc;
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
        !strcmp(argv[1], "help")) {
        print_help(stdout);
        return argc < 2 ? MSA_EXIT_USAGE : 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V"))
        return msa_cmd_version(&cli, 1, argv + 1);
    for (int i = 0; i < N_COMMANDS; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(&cli, argc - 1, argv + 1);
    fprintf(stderr, "msa-mem: unknown command '%s' (see `msa-mem --help`)\n", argv[1]);
    return MSA_EXIT_USAGE;
}
