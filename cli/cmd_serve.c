/*
 * cmd_serve.c: `msa-mem serve`, an OpenAI-compatible HTTP API over one
 * engine, in which conversations are stored sessions (serve.h for the
 * parts, docs/server.md for the behaviour and the figures).
 *
 * This file holds the options, the help text and the start: open the
 * engine, read the stored snapshots back, listen. Built only with
 * libmicrohttpd (Debian's libmicrohttpd-dev); without it the command says
 * so and exits 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#ifdef MSA_HAVE_MHD
#include "serve.h"
#endif

static void help(void) {
    printf(
        "usage: msa-mem serve --model MODEL.gguf [--store DIR] [options]\n"
        "\n"
        "Serves an OpenAI-compatible HTTP API on one model. Every conversation is a\n"
        "session in the store: a request whose prompt extends a stored conversation\n"
        "prefills only the new tokens (usage.prompt_tokens_details.cached_tokens\n"
        "counts the rest), and every stored response is an immutable snapshot that\n"
        "previous_response_id continues as a fork sharing its blocks. Sessions\n"
        "survive a restart or a kill of the server.\n"
        "\n"
        "Endpoints (under http://HOST:PORT):\n"
        "  GET  /v1/models            the one model served (its id: --model-name)\n"
        "  POST /v1/chat/completions  messages through the model's chat template;\n"
        "                             stream: true gives server-sent events\n"
        "  POST /v1/completions       a plain prompt (string or token ids)\n"
        "  POST /v1/responses         input and instructions; previous_response_id\n"
        "  GET  /health               in-flight requests, snapshots, counters\n"
        "Sampling: temperature, top_p, max_tokens (max_completion_tokens,\n"
        "max_output_tokens), stop (up to 4 strings), seed; also top_k, min_p and\n"
        "repetition_penalty. prompt_cache_key keeps a client's conversations apart\n"
        "from every other's. Tool calls are not supported yet.\n"
        "\n"
        "Options:\n"
        "  --host ADDR        IPv4 address to listen on (default 127.0.0.1; 0.0.0.0\n"
        "                     for every interface: then set an API key)\n"
        "  --port N           TCP port (default 8080; 0: any free port, printed)\n"
        "  --api-key KEY      require 'Authorization: Bearer KEY' (default: the\n"
        "                     environment variable MSA_API_KEY; none: no auth)\n"
        "  --model-name ID    the model id clients send (default: the model file's\n"
        "                     name without .gguf)\n"
        "  --max-body BYTES   request body limit (default 8M; over it: 413)\n"
        "  --queue N          generation requests in flight, running or waiting for\n"
        "                     the engine, before 429 (default 128)\n"
        "  --max-tokens N     max_tokens of a request that gives none (default 256)\n"
        "  --max-sessions N   chat snapshots kept, least recently used dropped\n"
        "                     first (default 1024; responses are always kept)\n"
        "  --timeout SEC      wall-clock limit of one generation (default 600)\n"
        "  --live N           conversations kept open between requests, so that the\n"
        "                     next turn does not read the session back (default 16)\n"
        "  --threads N        CPU workers of the forward pass (default: every core)\n"
        "  --block-size N, --top-k K   MSA shapes of new sessions (128, 16)\n"
        "  --no-sync          commits reach the OS without fsync: a crash or kill of\n"
        "                     the server loses nothing, a crash of the machine may\n"
        "                     lose the latest commits (default: fsync every commit)\n"
        "Global options --model, --store and --device (cpu, cuda[:N]) apply, as do\n"
        "MSA_MODEL, MSA_STORE and MSA_DEVICE.\n"
        "\n"
        "Examples:\n"
        "  msa-mem serve --model stories260K.gguf --port 8080\n"
        "  MSA_API_KEY=secret msa-mem serve --model qwen2.5-0.5b-instruct.gguf \\\n"
        "      --host 0.0.0.0 --store /srv/msa\n"
        "  curl -s localhost:8080/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        "      -d '{\"model\": \"stories260K\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}'\n"
        "  python3 examples/openai_client.py --base-url http://127.0.0.1:8080/v1\n"
        "\n"
        "Stops cleanly on SIGINT or SIGTERM; what was committed is in the store either\n"
        "way. docs/server.md says what is and is not implemented.\n");
}

#ifdef MSA_HAVE_MHD
static int need_value(const char *opt, int i, int argc) {
    if (i + 1 >= argc) return msa_cli_usage_error("serve", "%s needs a value", opt);
    return 0;
}

static const char *model_id_of(const char *path, char *buf, size_t cap) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    if (!*b) b = path;
    snprintf(buf, cap, "%s", b);
    size_t n = strlen(buf);
    if (n > 5 && !strcmp(buf + n - 5, ".gguf")) buf[n - 5] = 0;
    return buf;
}
#endif

int msa_cmd_serve(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv)) {
        help();
        return 0;
    }
#ifndef MSA_HAVE_MHD
    fprintf(stderr, "msa-mem serve: this msa-mem was built without libmicrohttpd: install the "
            "Debian package libmicrohttpd-dev and build again\n");
    return MSA_EXIT_ERROR;
#else
    serve_state st;
    memset(&st, 0, sizeof st);
    serve_config *c = &st.cfg;
    c->host = "127.0.0.1";
    c->port = 8080;
    c->api_key = getenv("MSA_API_KEY");
    c->max_body = 8u << 20;
    c->queue = 128;
    c->max_tokens = 256;
    c->max_chat_sessions = 1024;
    c->timeout_s = 600;
    c->live = 16;
    c->quiet = cli->quiet;
    c->verbose = cli->verbose;
    const char *model_name = NULL;
    int threads = 0, block_size = 0, top_k = 0, durable = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        long long v = 0;
#define VALUE() do { if (need_value(a, i, argc)) return MSA_EXIT_USAGE; } while (0)
#define COUNT(lo, hi) do { VALUE(); v = msa_cli_parse_count(argv[++i], 1); \
        if (v < (lo) || v > (hi)) return msa_cli_usage_error("serve", "%s takes a number from " \
            "%lld to %lld, not '%s'", a, (long long)(lo), (long long)(hi), argv[i]); } while (0)
        if (!strcmp(a, "--host")) { VALUE(); c->host = argv[++i]; }
        else if (!strcmp(a, "--port")) { COUNT(0, 65535); c->port = (int)v; }
        else if (!strcmp(a, "--api-key")) { VALUE(); c->api_key = argv[++i]; }
        else if (!strcmp(a, "--model-name")) { VALUE(); model_name = argv[++i]; }
        else if (!strcmp(a, "--max-body")) { COUNT(1024, 1LL << 32); c->max_body = (size_t)v; }
        else if (!strcmp(a, "--queue")) { COUNT(1, 100000); c->queue = (int)v; }
        else if (!strcmp(a, "--max-tokens")) { COUNT(1, 1 << 24); c->max_tokens = (int)v; }
        else if (!strcmp(a, "--max-sessions")) { COUNT(1, 1 << 24); c->max_chat_sessions = (int)v; }
        else if (!strcmp(a, "--timeout")) { COUNT(1, 1 << 30); c->timeout_s = (double)v; }
        else if (!strcmp(a, "--threads")) { COUNT(0, 4096); threads = (int)v; }
        else if (!strcmp(a, "--block-size")) { COUNT(1, 1 << 20); block_size = (int)v; }
        else if (!strcmp(a, "--top-k")) { COUNT(1, 1 << 20); top_k = (int)v; }
        else if (!strcmp(a, "--no-sync")) durable = 0;
        else if (!strcmp(a, "--live")) { COUNT(0, 100000); c->live = (int)v; }
        else return msa_cli_usage_error("serve", "unknown option '%s'", a);
#undef COUNT
#undef VALUE
    }
    if (!cli->model)
        return msa_cli_usage_error("serve", "no model: give --model PATH (a GGUF file) or set "
                                   "MSA_MODEL");
    if (cli->device && strcmp(cli->device, "cpu") && strcmp(cli->device, "auto") &&
        strncmp(cli->device, "cuda", 4))
        return msa_cli_usage_error("serve", "--device takes cpu, cuda or cuda:N, not '%s'",
                                   cli->device);
    char idbuf[256];
    c->model_id = model_name ? model_name : model_id_of(cli->model, idbuf, sizeof idbuf);

    msa_engine_params p = msa_engine_default_params();
    p.model_path = cli->model;
    p.store_dir = cli->store_dir;
    p.n_threads = threads;
    p.block_size = block_size;
    p.top_k = top_k;
    p.durable = durable;
    if (cli->device && !strncmp(cli->device, "cuda", 4)) {
        p.device = MSA_DEVICE_CUDA;
        p.cuda_device = cli->device[4] == ':' ? atoi(cli->device + 5) : 0;
    }
    int rc = msa_engine_open(&p, &st.eng);
    if (rc) return msa_cli_fail(rc, "cannot open model %s", cli->model);
    st.tok = msa_engine_tokenizer(st.eng);
    st.tmpl = msa_engine_chat_template(st.eng);
    msa_model_info mi;
    msa_model_get_info(msa_engine_model(st.eng), &mi);
    st.ctx_len = mi.context_length;
    pthread_mutex_init(&st.engine_lock.mu, NULL);
    pthread_cond_init(&st.engine_lock.cv, NULL);
    rc = serve_api_init(&st);
    if (rc) {
        msa_engine_free(st.eng);
        return msa_cli_fail(rc, "cannot read the store's sessions");
    }
    if (!c->quiet)
        fprintf(stderr, "msa-mem serve: model %s (%s, %d layers, chat template %s), store %s%s\n",
                c->model_id, mi.arch, mi.n_layers, msa_chat_template_name(st.tmpl),
                msa_store_dir(msa_engine_store(st.eng)),
                c->api_key && *c->api_key ? ", API key required" : "");
    if (strcmp(c->host, "127.0.0.1") && strcmp(c->host, "::1") && (!c->api_key || !*c->api_key))
        fprintf(stderr, "msa-mem serve: warning: listening on %s without an API key: anyone who "
                "reaches this port can read and write the store's conversations (--api-key or "
                "MSA_API_KEY)\n", c->host);
    int code = serve_http_run(&st);
    serve_api_free(&st);
    msa_engine_free(st.eng);
    return code;
#endif
}
