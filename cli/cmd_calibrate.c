/*
 * cmd_calibrate.c: `msa-mem calibrate`, training a model's MSA index.
 *
 *   msa-mem calibrate MODEL.gguf OUT.gguf --text FILE [--text FILE ...]
 *       [--idx-dim 32] [--steps 200] [--lr 0.02] [--seq-len 256]
 *       [--block-size 16 --top-k 4] [--threads N] [--force]
 *
 * Tokenizes the text files with the model's own tokenizer, trains
 * W_q_idx / W_k_idx (and the index norms) of every layer with the KL
 * alignment loss (msa_calibrate(), engine/calibrate/calibrate.c), writes OUT.gguf =
 * MODEL.gguf plus the index tensors, then reports, on the calibration text,
 * the dense attention mass kept by the block selection with the trained
 * index and with the training-free one at --block-size / --top-k.
 *
 * OUT.gguf is checked before any training: it must not be MODEL.gguf
 * (sessions are bound to that file; compared by device and inode, and the
 * library refuses it again), and an existing file is replaced only with
 * --force.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

static void help(FILE *f) {
    fprintf(f,
            "usage: msa-mem calibrate MODEL.gguf OUT.gguf --text FILE [--text FILE ...]\n"
            "                         [--idx-dim 32] [--steps 200] [--lr 0.02] [--seq-len 256]\n"
            "                         [--block-size 16] [--top-k 4] [--threads N] [--force]\n"
            "\n"
            "Trains an MSA index for a model that has none: per layer, one index\n"
            "query head per KV group (W_q_idx) and one shared index key head (W_k_idx),\n"
            "RMSNorm (scale 1+w) and RoPE, fitted with Adam to the KL divergence between\n"
            "the model's dense attention (averaged over each group's query heads) and the\n"
            "index's softmax, on the given text. OUT.gguf is MODEL.gguf with the tensors\n"
            "blk.N.msa_idx_{q,k,q_norm,k_norm}.weight added (docs/index.md).\n"
            "\n"
            "  --text FILE      calibration text (repeatable); a few thousand tokens suffice\n"
            "  --idx-dim N      index dim d_idx (even; default 32)\n"
            "  --steps N        Adam steps per layer (default 200)\n"
            "  --lr X           Adam learning rate (default 0.02)\n"
            "  --seq-len N      tokens per calibration sequence, BOS first (default 256)\n"
            "  --block-size N   Bk for the report (default 16)\n"
            "  --top-k N        k for the report (default 4)\n"
            "  --threads N      CPU threads (default: one per core)\n"
            "  --force          replace OUT.gguf if it exists (never MODEL.gguf itself)\n"
            "\n"
            "examples:\n"
            "  msa-mem convert llama2c stories260K.bin tok512.bin s.gguf\n"
            "  msa-mem calibrate s.gguf s-idx.gguf --text stories.txt\n"
            "  msa-mem calibrate s.gguf s-idx16.gguf --text a.txt --text b.txt --idx-dim 16 \\\n"
            "      --steps 300 --block-size 16 --top-k 4\n");
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *s = malloc(cap);
    while (s) {
        size_t got = fread(s + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        char *t = realloc(s, cap *= 2);
        if (!t) {
            free(s);
            s = NULL;
        } else s = t;
    }
    fclose(f);
    *len = n;
    return s;
}

static void on_step(void *user, int layer, int step, double loss) {
    if (*(int *)user) fprintf(stderr, "layer %d step %d: KL %.4f\n", layer, step, loss);
}

int msa_cmd_calibrate(msa_cli *cli, int argc, char **argv) {
    if (msa_cli_wants_help(argc, argv)) {
        help(stdout);
        return MSA_EXIT_OK;
    }
    msa_calib_params cp = msa_calib_default_params();
    const char *in = NULL, *out = NULL, *texts[64];
    int n_texts = 0, bk = 16, topk = 4, threads = 0, force = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "--text") && has) {
            if (n_texts == 64) return msa_cli_usage_error("calibrate", "at most 64 --text");
            texts[n_texts++] = argv[++i];
        } else if (!strcmp(a, "--idx-dim") && has) cp.idx_dim = atoi(argv[++i]);
        else if (!strcmp(a, "--steps") && has) cp.steps = atoi(argv[++i]);
        else if (!strcmp(a, "--lr") && has) cp.lr = strtof(argv[++i], NULL);
        else if (!strcmp(a, "--seq-len") && has) cp.seq_len = atoi(argv[++i]);
        else if (!strcmp(a, "--block-size") && has) bk = atoi(argv[++i]);
        else if (!strcmp(a, "--top-k") && has) topk = atoi(argv[++i]);
        else if (!strcmp(a, "--threads") && has) threads = atoi(argv[++i]);
        else if (!strcmp(a, "--force")) force = 1;
        else if (a[0] == '-') return msa_cli_usage_error("calibrate", "unknown option '%s'", a);
        else if (!in) in = a;
        else if (!out) out = a;
        else return msa_cli_usage_error("calibrate", "unexpected argument '%s'", a);
    }
    if (!in || !out) return msa_cli_usage_error("calibrate", "expected MODEL.gguf OUT.gguf");
    if (!n_texts) return msa_cli_usage_error("calibrate", "--text FILE is required");
    if (cp.idx_dim < 2 || cp.idx_dim % 2 || cp.steps < 0 || !(cp.lr > 0) || cp.seq_len < 2 ||
        bk < 1 || topk < 1 || threads < 0)
        return msa_cli_usage_error("calibrate", "bad --idx-dim, --steps, --lr, --seq-len, "
                                   "--block-size, --top-k or --threads");

    struct stat si, so;
    if (stat(out, &so) == 0) {
        if (stat(in, &si) == 0 && si.st_dev == so.st_dev && si.st_ino == so.st_ino) {
            fprintf(stderr, "msa-mem: calibrate: %s is the input model (sessions are bound to "
                            "it): write the calibrated model to another file\n", out);
            return msa_cli_exit_code(MSA_EEXIST);
        }
        if (!force) {
            fprintf(stderr, "msa-mem: calibrate: %s already exists: pass --force to replace "
                            "it\n", out);
            return msa_cli_exit_code(MSA_EEXIST);
        }
    }

    msa_model_params mp = msa_model_default_params();
    mp.n_threads = threads;
    msa_model *m = NULL;
    int rc = msa_model_open(in, &mp, &m);
    if (rc) return msa_cli_fail(rc, "opening %s", in);
    msa_tokenizer *tok = NULL;
    if ((rc = msa_tokenizer_open(in, &tok))) {
        msa_model_free(m);
        return msa_cli_fail(rc, "tokenizer of %s", in);
    }
    int32_t *ids = NULL;
    size_t n_ids = 0;
    for (int t = 0; !rc && t < n_texts; t++) {
        size_t len;
        char *s = read_file(texts[t], &len);
        if (!s) {
            rc = msa_cli_fail(MSA_ENOTFOUND, "reading %s", texts[t]);
            break;
        }
        int32_t *more = realloc(ids, (n_ids + len + 16) * sizeof *ids);
        size_t got = 0;
        if (!more) rc = MSA_ENOMEM;
        else {
            ids = more;
            rc = msa_tokenize(tok, s, len, 0, ids + n_ids, len + 16, &got);
        }
        free(s);
        if (rc) rc = msa_cli_fail(rc, "tokenizing %s", texts[t]);
        n_ids += got;
    }
    int ret = rc ? rc : MSA_EXIT_OK;
    if (!rc) {
        int verbose = !cli->quiet && !cli->json;
        cp.bos = msa_tokenizer_bos(tok);
        cp.n_threads = threads;
        cp.on_step = on_step;
        cp.user = &verbose;
        msa_calib_result res;
        memset(&res, 0, sizeof res);
        if (verbose) fprintf(stderr, "calibrating on %zu tokens\n", n_ids);
        rc = msa_calibrate(m, ids, n_ids, &cp, out, &res);
        if (rc) ret = msa_cli_fail(rc, "calibrating %s", in);
        msa_model *mt = NULL;
        double tr = 0, fr = 0;
        if (!rc && (rc = msa_model_open(out, &mp, &mt))) ret = msa_cli_fail(rc, "checking %s", out);
        if (!rc && ((rc = msa_calib_selected_mass(mt, ids, n_ids, cp.seq_len, cp.bos, bk, topk,
                                                  &tr, NULL)) ||
                    (rc = msa_calib_selected_mass(m, ids, n_ids, cp.seq_len, cp.bos, bk, topk,
                                                  &fr, NULL))))
            ret = msa_cli_fail(rc, "evaluating");
        if (!rc && cli->json) {
            printf("{\"output\":");
            msa_cli_json_write_str(stdout, out, strlen(out)); /* paths need not be UTF-8 */
            printf(",\"tokens\":%zu,\"sequences\":%d,\"seq_len\":%d,"
                   "\"idx_dim\":%d,\"steps\":%d,\"seconds\":%.2f,\"loss_first\":[",
                   n_ids, res.n_seq, res.seq_len, cp.idx_dim, cp.steps,
                   res.seconds_inputs + res.seconds_train);
            for (int l = 0; l < res.n_layers; l++) printf(l ? ",%.5f" : "%.5f", res.loss_first[l]);
            printf("],\"loss_last\":[");
            for (int l = 0; l < res.n_layers; l++) printf(l ? ",%.5f" : "%.5f", res.loss_last[l]);
            printf("],\"block_size\":%d,\"top_k\":%d,\"mass_trained\":%.5f,"
                   "\"mass_training_free\":%.5f}\n", bk, topk, tr, fr);
        } else if (!rc && !cli->quiet) {
            printf("wrote %s: %d layers, idx_dim %d, %zu tokens in %d sequences of %d, %.1f s\n",
                   out, res.n_layers, cp.idx_dim, n_ids, res.n_seq, res.seq_len,
                   res.seconds_inputs + res.seconds_train);
            for (int l = 0; l < res.n_layers; l++)
                printf("layer %d: KL per (row, group) %.4f -> %.4f\n", l, res.loss_first[l],
                       res.loss_last[l]);
            printf("Bk %d k %d on the calibration text: dense attention mass in the selected "
                   "blocks %.4f (trained) vs %.4f (training-free)\n", bk, topk, tr, fr);
        }
        msa_model_free(mt);
    }
    free(ids);
    msa_tokenizer_free(tok);
    msa_model_free(m);
    return rc ? (ret ? ret : msa_cli_exit_code(rc)) : MSA_EXIT_OK;
}
