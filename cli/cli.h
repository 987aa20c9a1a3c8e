/*
 * cli.h: what the msa-mem commands share: global options, the command
 * table, error reporting with exit codes, progress bars and JSON output.
 *
 * Every command is a function `int msa_cmd_<name>(msa_cli *cli, int argc,
 * char **argv)` in its own cli/cmd_*.c, listed once in cli/commands.def.
 * argv[0] is the command name; global options have already been removed.
 * The function returns the process exit status (msa_cli_exit_code()).
 */
#ifndef MSA_CLI_H
#define MSA_CLI_H

#include <stdint.h>
#include <stdio.h>

#include <msa/msa.h>

typedef struct msa_cli {
    const char *store_dir;  /* --store or MSA_STORE; NULL: the default */
    const char *model;      /* --model or MSA_MODEL; NULL: none given */
    const char *device;     /* --device cpu|cuda[:N] or MSA_DEVICE; NULL: auto */
    int json;               /* --json: machine-readable output on stdout */
    int quiet;              /* -q: no progress, no chatter */
    int verbose;            /* -v: more detail on stderr */
} msa_cli;

/* Exit codes, documented in `msa-mem --help`. */
enum {
    MSA_EXIT_OK = 0,
    MSA_EXIT_ERROR = 1,     /* any failure not listed below */
    MSA_EXIT_USAGE = 2,     /* bad command line */
    MSA_EXIT_NOTFOUND = 3,  /* no such session, file or model */
    MSA_EXIT_CORRUPT = 4,   /* corrupt data found (fsck, checksums) */
    MSA_EXIT_MODEL = 5,     /* wrong model for a session */
    MSA_EXIT_IO = 6,        /* I/O error, disk full, network */
    MSA_EXIT_BUSY = 7,      /* in use: a session open for writing elsewhere
                               (a second writer, rm of a session in use) */
    MSA_EXIT_INTERRUPTED = 130
};

/* Maps a library status to an exit code. */
int msa_cli_exit_code(int status);

/* Prints "msa-mem: <what>: <msa_last_error() or msa_strerror(status)>" on
 * one line of stderr and returns the exit code for `status`. */
int msa_cli_fail(int status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prints "msa-mem <cmd>: <message>" and a pointer to --help; returns
 * MSA_EXIT_USAGE. */
int msa_cli_usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* True when argv holds -h or --help (commands print their help and return 0). */
int msa_cli_wants_help(int argc, char **argv);

/* Parses sizes and counts written as "1M", "32K", "4096", "2G" (powers of
 * 1024 for K/M/G when `binary`, else 1000). Returns -1 on a malformed value. */
long long msa_cli_parse_count(const char *s, int binary);

/* Human-readable bytes ("1.4 GiB") into buf; returns buf. */
const char *msa_cli_bytes(double bytes, char *buf, size_t n);

/* Monotonic wall-clock seconds (CLOCK_MONOTONIC), for progress and timings. */
double msa_cli_now(void);

/* ---- JSON output ---------------------------------------------------------- */

/* Every --json output is valid JSON (RFC 8259, UTF-8) that keeps every
 * record. Names, paths and texts are bytes, not always UTF-8, and jansson
 * refuses a string that is not valid UTF-8 (json_string() returns NULL,
 * json_pack() fails as a whole), so every such string goes through these:
 * each ill-formed UTF-8 sequence becomes U+FFFD, one per maximal subpart
 * (Unicode 15, section 3.9; what Python's bytes.decode("utf-8",
 * "replace") does); NUL bytes are kept (\u0000). */
#include <jansson.h>

/* A jansson string of s[0..n) (s NULL: ""), never NULL but when out of
 * memory. */
json_t *msa_cli_jstrn(const char *s, size_t n);
json_t *msa_cli_jstr(const char *s);

/* s[0..n) made valid UTF-8 as above, malloc'ed and NUL-terminated (*len,
 * may be NULL, gets its length); NULL when out of memory. */
char *msa_cli_utf8_clean(const char *s, size_t n, size_t *len);

/* Writes s as a JSON string literal (quotes and escapes included), made
 * valid UTF-8 as above. */
void msa_cli_json_write_str(FILE *f, const char *s, size_t n);

/* The MSA top-k that builds before session parameters kept for session
 * `name` (created at `created`, forked from `parent` or "") in the CLI's
 * side file (STORE/cli/<hash>.json; a fork's, else its parent's), 0 when
 * none. */
int msa_cli_legacy_top_k(const msa_cli *cli, const char *name, int64_t created,
                         const char *parent);

/* ---- progress ------------------------------------------------------------ */

/* A one-line progress bar on stderr, redrawn at most 10 times a second, only
 * when stderr is a terminal and not quiet. `unit` names what is counted
 * ("tokens", "blocks", "B" for bytes). */
typedef struct msa_progress {
    const char *label, *unit;
    double total, done, t0, last_draw;
    int enabled;
} msa_progress;

void msa_progress_begin(msa_progress *p, const msa_cli *cli, const char *label,
                        double total, const char *unit);
void msa_progress_update(msa_progress *p, double done);
void msa_progress_end(msa_progress *p);

/* ---- commands -------------------------------------------------------------- */

#define MSA_CLI_COMMAND(name, summary) \
    int msa_cmd_##name(msa_cli *cli, int argc, char **argv);
#include "commands.def"
#undef MSA_CLI_COMMAND

#endif /* MSA_CLI_H */
