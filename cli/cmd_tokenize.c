/*
 * cmd_tokenize.c: `msa-mem tokenize`, text to token ids with the tokenizer
 * of a model (a GGUF, vocab-only or full), a tokenizer.json, a directory
 * holding one, or a llama2.c tokenizer .bin. For checking what a model will
 * see, and for comparing against other implementations.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void help(void) {
    printf("usage: msa-mem tokenize --model PATH [--no-bos] [--special] [--json] [TEXT|-]\n"
           "\n"
           "Prints the token ids of TEXT (or of standard input, when TEXT is '-' or\n"
           "absent) on one line, separated by spaces. The text is taken byte for byte:\n"
           "a trailing newline from stdin is tokenized too.\n"
           "\n"
           "  --model PATH  a GGUF (vocab-only or full model), a tokenizer.json, a\n"
           "                directory holding tokenizer.json, or a llama2.c tokenizer.bin\n"
           "  --no-bos      leave out BOS even where the vocabulary asks for it\n"
           "  --special     turn special-token text (\"<|eot_id|>\") into its id\n"
           "  --json        print {\"ids\": [...], \"tokens\": [{\"id\", \"piece\"}, ...]}\n"
           "\n"
           "Examples:\n"
           "  msa-mem tokenize --model llama-3.gguf \"Hello world\"\n"
           "  printf 'one\\ntwo' | msa-mem tokenize --model tokenizer.json --no-bos\n"
           "  msa-mem tokenize --model models/llama3/ --json \"caf\xc3\xa9\"\n");
}

static char *read_all(FILE *f, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *d = malloc(cap);
    while (d) {
        size_t got = fread(d + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        char *e = realloc(d, cap * 2);
        if (!e) { free(d); return NULL; }
        d = e;
        cap *= 2;
    }
    *len = n;
    return d;
}

int msa_cmd_tokenize(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv)) {
        help();
        return 0;
    }
    int no_bos = 0, special = 0;
    const char *text_arg = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--no-bos")) no_bos = 1;
        else if (!strcmp(argv[i], "--special")) special = 1;
        else if (!strcmp(argv[i], "--") && i + 1 < argc && !text_arg) text_arg = argv[++i];
        else if (argv[i][0] == '-' && argv[i][1])
            return msa_cli_usage_error("tokenize", "unknown option '%s'", argv[i]);
        else if (text_arg)
            return msa_cli_usage_error("tokenize", "give the text as one argument (quote it)");
        else text_arg = argv[i];
    }
    if (!cli->model) return msa_cli_usage_error("tokenize", "--model PATH is required");

    msa_tokenizer *tok;
    int rc = msa_tokenizer_open(cli->model, &tok);
    if (rc) return msa_cli_fail(rc, "cannot load a tokenizer from %s", cli->model);

    size_t len;
    char *text;
    if (!text_arg || !strcmp(text_arg, "-")) {
        text = read_all(stdin, &len);
    } else {
        len = strlen(text_arg);
        text = malloc(len + 1);
        if (text) memcpy(text, text_arg, len + 1);
    }
    if (!text) {
        msa_tokenizer_free(tok);
        return msa_cli_fail(MSA_ENOMEM, "reading the text");
    }
    int flags = (special ? MSA_TOK_PARSE_SPECIAL : 0) |
                (!no_bos && msa_tokenizer_add_bos(tok) ? MSA_TOK_ADD_BOS : 0);
    size_t cap = len + 16, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    rc = ids ? msa_tokenize(tok, text, len, flags, ids, cap, &n) : MSA_ENOMEM;
    if (rc == MSA_ERANGE) { /* more ids than bytes: only with added specials */
        int32_t *more = realloc(ids, n * sizeof *ids);
        if (more) {
            ids = more;
            rc = msa_tokenize(tok, text, len, flags, ids, n, &n);
        }
    }
    if (rc) {
        free(ids);
        free(text);
        msa_tokenizer_free(tok);
        return msa_cli_fail(rc, "tokenizing");
    }
    if (cli->json) {
        printf("{\"tokenizer\": ");
        msa_cli_json_write_str(stdout, msa_tokenizer_kind(tok), strlen(msa_tokenizer_kind(tok)));
        printf(", \"ids\": [");
        for (size_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
        printf("], \"tokens\": [");
        for (size_t i = 0; i < n; i++) {
            const char *p;
            size_t pl;
            msa_token_piece(tok, ids[i], &p, &pl);
            printf(i ? ", {\"id\": %d, \"piece\": " : "{\"id\": %d, \"piece\": ", ids[i]);
            msa_cli_json_write_str(stdout, p, pl); /* pieces need not be UTF-8 */
            putchar('}');
        }
        printf("]}\n");
    } else {
        for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        putchar('\n');
    }
    free(ids);
    free(text);
    msa_tokenizer_free(tok);
    return 0;
}
