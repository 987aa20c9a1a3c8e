/*
 * cmd_pull.c: `msa-mem pull SOURCE [DEST]`, a thin command over msa_pull()
 * (engine/pull/pull.c): option parsing, a progress bar, and the result as text
 * or JSON. Everything about HTTP, resuming and verification lives in the
 * library, so that bindings get the same behaviour.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void pull_help(void) {
    printf(
        "usage: msa-mem pull [options] SOURCE [DEST]\n"
        "\n"
        "Downloads a model file. SOURCE is an http(s) URL or a Hugging Face file\n"
        "written ORG/REPO:PATH or ORG/REPO@REVISION:PATH (REVISION: a branch, tag or\n"
        "commit; default main), fetched from $HF_ENDPOINT (default\n"
        "https://huggingface.co)/ORG/REPO/resolve/REVISION/PATH.\n"
        "\n"
        "DEST is a file, or a folder (or a path ending in '/') that receives the\n"
        "file's name; by default the models folder $XDG_DATA_HOME/msa-mem/models/\n"
        "(~/.local/share/msa-mem/models/).\n"
        "\n"
        "The file is written to DEST.part and renamed to DEST only once complete\n"
        "and verified. An interrupted download is resumed by the next pull (HTTP\n"
        "Range). The SHA-256 is checked against --sha256 or the digest the server\n"
        "states (X-Linked-Etag for Hugging Face LFS files, X-Checksum-Sha256,\n"
        "Repr-Digest/Digest sha-256, or a 64-hex ETag). HF_TOKEN, when set, is sent\n"
        "as a bearer token to the Hugging Face endpoint only, never to the host it\n"
        "redirects to, nor to other URLs.\n"
        "\n"
        "Options:\n"
        "  --sha256 HEX        expected SHA-256 of the file (64 hex digits)\n"
        "  --force             replace DEST if it exists\n"
        "  --no-resume         discard an existing DEST.part and start over\n"
        "  --retries N         retries after transient network errors (default 5)\n"
        "  --retry-wait SEC    first wait before a retry, doubled each time (default 1)\n"
        "  --json              print {path, bytes, sha256, resumed, ...} on stdout\n"
        "  -q                  no progress bar\n"
        "\n"
        "Examples:\n"
        "  msa-mem pull Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q8_0.gguf\n"
        "  msa-mem pull Qwen/Qwen2.5-0.5B-Instruct@main:model.safetensors ~/models/qwen/\n"
        "  HF_TOKEN=hf_... msa-mem pull meta-llama/Llama-3.2-1B:model.safetensors\n"
        "  msa-mem pull https://example.org/m.gguf /data/m.gguf --sha256 0123...cdef\n"
        "\n"
        "Exit status: 0 done; 2 usage; 3 not found (HTTP 404); 4 checksum mismatch\n"
        "(the download is deleted); 6 network error (the partial file is kept for\n"
        "resuming), access refused (set HF_TOKEN) or disk full; 1 other errors.\n");
}

typedef struct pull_ui {
    msa_progress bar;
    int begun;
    const msa_cli *cli;
    const char *label;
} pull_ui;

static int on_progress(void *user, uint64_t done, uint64_t total) {
    pull_ui *ui = user;
    if (!ui->begun) {
        msa_progress_begin(&ui->bar, ui->cli, ui->label, (double)total, "B");
        ui->begun = 1;
    }
    ui->bar.total = (double)total;
    msa_progress_update(&ui->bar, (double)done);
    return 0;
}

int msa_cmd_pull(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv)) {
        pull_help();
        return 0;
    }
    msa_pull_params params = msa_pull_default_params();
    const char *pos[2] = {NULL, NULL};
    int n_pos = 0, only_args = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!only_args && a[0] == '-' && a[1]) {
            const char *val = i + 1 < argc ? argv[i + 1] : NULL;
            if (!strcmp(a, "--")) { only_args = 1; continue; }
            if (!strcmp(a, "--force")) { params.overwrite = 1; continue; }
            if (!strcmp(a, "--no-resume")) { params.resume = 0; continue; }
            if (!strcmp(a, "--sha256") || !strcmp(a, "--retries") || !strcmp(a, "--retry-wait")) {
                if (!val) return msa_cli_usage_error("pull", "%s needs a value", a);
                i++;
                if (!strcmp(a, "--sha256")) {
                    params.sha256 = val;
                } else if (!strcmp(a, "--retries")) {
                    long long n = msa_cli_parse_count(val, 0);
                    if (n < 0 || n > 100) return msa_cli_usage_error("pull", "bad --retries '%s'", val);
                    params.max_retries = (int)n;
                } else {
                    char *end;
                    double s = strtod(val, &end);
                    if (*end || s < 0 || s > 600)
                        return msa_cli_usage_error("pull", "bad --retry-wait '%s'", val);
                    params.retry_wait_s = s;
                }
                continue;
            }
            return msa_cli_usage_error("pull", "unknown option '%s'", a);
        }
        if (n_pos == 2) return msa_cli_usage_error("pull", "too many arguments");
        pos[n_pos++] = a;
    }
    if (!n_pos) return msa_cli_usage_error("pull", "give a SOURCE (URL or ORG/REPO:PATH)");

    pull_ui ui = {.cli = cli, .label = "pull"};
    const char *slash = strrchr(pos[0], '/');
    const char *colon = strrchr(pos[0], ':');
    ui.label = slash && slash[1] ? slash + 1 : colon && colon[1] ? colon + 1 : pos[0];

    msa_pull_result res;
    int rc = msa_pull(pos[0], pos[1], &params, on_progress, &ui, &res);
    if (ui.begun) msa_progress_end(&ui.bar);
    if (rc != MSA_OK) return msa_cli_fail(rc, "pull %s", pos[0]);

    if (cli->json) {
        printf("{\"path\": ");
        msa_cli_json_write_str(stdout, res.path, strlen(res.path));
        printf(", \"url\": ");
        msa_cli_json_write_str(stdout, res.url, strlen(res.url));
        printf(", \"bytes\": %llu, \"sha256\": \"%s\", \"resumed\": %s, \"resumed_bytes\": %llu, "
               "\"verified\": %s, \"verified_by\": ",
               (unsigned long long)res.bytes, res.sha256, res.resumed_bytes ? "true" : "false",
               (unsigned long long)res.resumed_bytes, res.verified ? "true" : "false");
        if (res.verified) msa_cli_json_write_str(stdout, res.verified_by, strlen(res.verified_by));
        else printf("null");
        printf("}\n");
    } else if (!cli->quiet) {
        char size[32];
        printf("%s\n", res.path);
        fprintf(stderr, "%s, sha256 %s (%s%s)%s\n",
                msa_cli_bytes((double)res.bytes, size, sizeof size), res.sha256,
                res.verified ? "verified against " : "no digest stated by the server, not verified",
                res.verified ? res.verified_by : "", res.resumed_bytes ? ", resumed" : "");
    }
    return MSA_EXIT_OK;
}
