/*
 * cmd_convert.c: `msa-mem convert`, model format conversion.
 *
 *   msa-mem convert llama2c MODEL.bin TOKENIZER.bin OUT.gguf
 *
 * writes a llama-architecture GGUF (F32 tensors, tokenizer embedded) from a
 * llama2.c checkpoint and its tokenizer (msa_convert_llama2c()), then opens
 * the result as a model to check it, and prints its shape.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void help(FILE *f) {
    fprintf(f,
            "usage: msa-mem convert llama2c MODEL.bin TOKENIZER.bin OUT.gguf\n"
            "\n"
            "Converts a llama2.c checkpoint and its tokenizer.bin into a GGUF file\n"
            "(architecture llama, F32 tensors, tokenizer embedded) that msa-mem and\n"
            "llama.cpp can load. The output is written under a temporary name and\n"
            "renamed when complete.\n");
}

int msa_cmd_convert(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv)) {
        help(stdout);
        return MSA_EXIT_OK;
    }
    if (argc < 2) return msa_cli_usage_error("convert", "which format? (llama2c)");
    if (strcmp(argv[1], "llama2c") != 0)
        return msa_cli_usage_error("convert", "unknown format '%s' (llama2c)", argv[1]);
    if (argc != 5)
        return msa_cli_usage_error("convert", "expected MODEL.bin TOKENIZER.bin OUT.gguf");
    int rc = msa_convert_llama2c(argv[2], argv[3], argv[4]);
    if (rc) return msa_cli_fail(rc, "convert %s", argv[2]);
    msa_model_params p = msa_model_default_params();
    msa_model *m = NULL;
    rc = msa_model_open(argv[4], &p, &m);
    if (rc) return msa_cli_fail(rc, "checking %s", argv[4]);
    msa_model_info info;
    msa_model_get_info(m, &info);
    if (cli->json) {
        printf("{\"output\":");
        msa_cli_json_write_str(stdout, argv[4], strlen(argv[4])); /* paths need not be UTF-8 */
        printf(",\"arch\":\"%s\",\"layers\":%d,\"dim\":%d,\"heads\":%d,"
               "\"kv_heads\":%d,\"ff\":%d,\"vocab\":%d,\"context\":%d,\"fingerprint\":\"%s\"}\n",
               info.arch, info.n_layers, info.dim, info.n_heads, info.n_kv_heads,
               info.ff_dim, info.vocab_size, info.context_length, info.fingerprint);
    } else if (!cli->quiet)
        printf("wrote %s: %s, %d layers, dim %d, %d heads (%d KV), ff %d, vocab %d, "
               "context %d\nfingerprint %s\n",
               argv[4], info.arch, info.n_layers, info.dim, info.n_heads, info.n_kv_heads,
               info.ff_dim, info.vocab_size, info.context_length, info.fingerprint);
    msa_model_free(m);
    return MSA_EXIT_OK;
}
