/*
 * cmd_convert.c: `msa-mem convert`, model format conversion.
 *
 *   msa-mem convert llama2c MODEL.bin TOKENIZER.bin OUT.gguf [--force]
 *
 * writes a llama-architecture GGUF (F32 tensors, tokenizer embedded) from a
 * llama2.c checkpoint and its tokenizer (msa_convert_llama2c()), then opens
 * the result as a model to check it, and prints its shape. An existing
 * OUT.gguf is replaced only with --force; an input never is (the library
 * compares device and inode, so another name or a link is caught too).
 */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

static void help(FILE *f) {
    fprintf(f,
            "usage: msa-mem convert llama2c MODEL.bin TOKENIZER.bin OUT.gguf [--force]\n"
            "\n"
            "Converts a llama2.c checkpoint and its tokenizer.bin into a GGUF file\n"
            "(architecture llama, F32 tensors, tokenizer embedded) that msa-mem and\n"
            "llama.cpp can load. The output is written to a temporary file beside it,\n"
            "synced and renamed when complete: a failure leaves nothing behind.\n"
            "\n"
            "  --force   replace OUT.gguf if it exists (an input is never replaced)\n");
}

int msa_cmd_convert(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv)) {
        help(stdout);
        return MSA_EXIT_OK;
    }
    const char *pos[4];
    int n_pos = 0, force = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--force")) force = 1;
        else if (argv[i][0] == '-' && argv[i][1])
            return msa_cli_usage_error("convert", "unknown option '%s'", argv[i]);
        else if (n_pos == 4) return msa_cli_usage_error("convert", "unexpected argument '%s'", argv[i]);
        else pos[n_pos++] = argv[i];
    }
    if (n_pos < 1) return msa_cli_usage_error("convert", "which format? (llama2c)");
    if (strcmp(pos[0], "llama2c") != 0)
        return msa_cli_usage_error("convert", "unknown format '%s' (llama2c)", pos[0]);
    if (n_pos != 4)
        return msa_cli_usage_error("convert", "expected MODEL.bin TOKENIZER.bin OUT.gguf");
    const char *out = pos[3];
    struct stat so, si;
    if (stat(out, &so) == 0) {
        for (int i = 1; i <= 2; i++) /* the library checks this too, right before renaming */
            if (stat(pos[i], &si) == 0 && si.st_dev == so.st_dev && si.st_ino == so.st_ino) {
                fprintf(stderr, "msa-mem: convert: %s is the input %s: refusing to overwrite "
                                "it (write to another file)\n", out, pos[i]);
                return msa_cli_exit_code(MSA_EEXIST);
            }
        if (!force) {
            fprintf(stderr, "msa-mem: convert: %s already exists: pass --force to replace it\n",
                    out);
            return msa_cli_exit_code(MSA_EEXIST);
        }
    }
    int rc = msa_convert_llama2c(pos[1], pos[2], out);
    if (rc) return msa_cli_fail(rc, "convert %s", pos[1]);
    msa_model_params p = msa_model_default_params();
    msa_model *m = NULL;
    rc = msa_model_open(out, &p, &m);
    if (rc) return msa_cli_fail(rc, "checking %s", out);
    msa_model_info info;
    msa_model_get_info(m, &info);
    if (cli->json) {
        printf("{\"output\":");
        msa_cli_json_write_str(stdout, out, strlen(out)); /* paths need not be UTF-8 */
        printf(",\"arch\":\"%s\",\"layers\":%d,\"dim\":%d,\"heads\":%d,"
               "\"kv_heads\":%d,\"ff\":%d,\"vocab\":%d,\"context\":%d,\"fingerprint\":\"%s\"}\n",
               info.arch, info.n_layers, info.dim, info.n_heads, info.n_kv_heads,
               info.ff_dim, info.vocab_size, info.context_length, info.fingerprint);
    } else if (!cli->quiet)
        printf("wrote %s: %s, %d layers, dim %d, %d heads (%d KV), ff %d, vocab %d, "
               "context %d\nfingerprint %s\n",
               out, info.arch, info.n_layers, info.dim, info.n_heads, info.n_kv_heads,
               info.ff_dim, info.vocab_size, info.context_length, info.fingerprint);
    msa_model_free(m);
    return MSA_EXIT_OK;
}
