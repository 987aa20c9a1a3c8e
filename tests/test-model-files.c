/*
 * test-model-files.c: model files as a careless user or an attacker hands
 * them over (issue 10, items 8 to 11). Needs no assets: every model is a
 * tiny llama GGUF written here with the library's own writer.
 *
 *   - outputs: convert and calibrate refuse to overwrite an input (by
 *     device and inode: the same name, another name, a hard link, a
 *     symbolic link), write through a temporary file and leave nothing
 *     behind when the write fails (a file-size limit stands in for a full
 *     disk: EFBIG, like ENOSPC, is "no space left");
 *   - the fingerprint cache: kept in $XDG_CACHE_HOME/msa-mem/fingerprints,
 *     never beside the model, and a model whose bytes changed is hashed
 *     again even when its mtime was put back;
 *   - refused inputs: a FIFO (without waiting on it), context length 0,
 *     BOS/EOS ids outside the vocabulary, RoPE theta <= 0 or not finite,
 *     overlapping, misaligned and out-of-bounds tensors (random bad values,
 *     seed printed);
 *   - errno mapping: no such file is MSA_ENOTFOUND, a full disk MSA_ENOSPC.
 */
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "engine/model/gguf.h"
#include "engine/model/model.h"
#include "engine/model/safetensors.h"
#include "engine/tokenizer/tokenizer.h"
#include "base/base.h"
#include "testutil.h"

static char tmpdir[256];

/* ---- a tiny llama GGUF --------------------------------------------------------- */

enum { D = 8, F = 16, V = 8, HQ = 2, HKV = 1, HD = D / HQ };

typedef struct spec {
    int64_t context;     /* -1: key absent */
    int64_t bos, eos;    /* -1: key absent */
    double theta;        /* NAN allowed; 0: key absent (default 10000) */
    int theta_absent;
} spec;

static spec good_spec(void) {
    spec s = {512, 1, 2, 10000.0, 0};
    return s;
}

static float weights[V * D * 2 + 16 * D * F];

static int write_model(const char *path, const spec *sp) {
    msa_gguf_writer *w;
    int rc = msa_gguf_writer_init(&w);
    if (rc) return rc;
    static const char *pieces[V] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81", "a", "b",
                                    "\xe2\x96\x81" "a", "ab"};
    size_t lens[V];
    float scores[V];
    int32_t types[V];
    for (int i = 0; i < V; i++) {
        lens[i] = strlen(pieces[i]);
        scores[i] = -(float)i;
        types[i] = i == 0 ? 2 : i < 3 ? 3 : 1;
    }
    rc = msa_gguf_writer_set_str(w, "general.architecture", "llama");
    if (!rc && sp->context >= 0) rc = msa_gguf_writer_set_u32(w, "llama.context_length", (uint32_t)sp->context);
    if (!rc) rc = msa_gguf_writer_set_u32(w, "llama.embedding_length", D);
    if (!rc) rc = msa_gguf_writer_set_u32(w, "llama.feed_forward_length", F);
    if (!rc) rc = msa_gguf_writer_set_u32(w, "llama.block_count", 1);
    if (!rc) rc = msa_gguf_writer_set_u32(w, "llama.attention.head_count", HQ);
    if (!rc) rc = msa_gguf_writer_set_u32(w, "llama.attention.head_count_kv", HKV);
    if (!rc && !sp->theta_absent) rc = msa_gguf_writer_set_f32(w, "llama.rope.freq_base", (float)sp->theta);
    if (!rc) rc = msa_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
    if (!rc) rc = msa_gguf_writer_set_str_array(w, "tokenizer.ggml.tokens", pieces, lens, V);
    if (!rc) rc = msa_gguf_writer_set_array(w, "tokenizer.ggml.scores", MSA_GGUF_FLOAT32, V, scores);
    if (!rc) rc = msa_gguf_writer_set_array(w, "tokenizer.ggml.token_type", MSA_GGUF_INT32, V, types);
    if (!rc && sp->bos >= 0) rc = msa_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)sp->bos);
    if (!rc && sp->eos >= 0) rc = msa_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)sp->eos);
    const float *p = weights;
    int64_t ne[2];
#define ADD(name, a, b)                                                                    \
    do {                                                                                   \
        ne[0] = (a);                                                                       \
        ne[1] = (b);                                                                       \
        if (!rc) rc = msa_gguf_writer_add_tensor(w, name, MSA_GGML_F32, (b) ? 2 : 1, ne, p); \
        p += (a) * ((b) ? (b) : 1);                                                        \
    } while (0)
    ADD("token_embd.weight", D, V);
    ADD("blk.0.attn_norm.weight", D, 0);
    ADD("blk.0.attn_q.weight", D, HQ * HD);
    ADD("blk.0.attn_k.weight", D, HKV * HD);
    ADD("blk.0.attn_v.weight", D, HKV * HD);
    ADD("blk.0.attn_output.weight", HQ * HD, D);
    ADD("blk.0.ffn_norm.weight", D, 0);
    ADD("blk.0.ffn_gate.weight", D, F);
    ADD("blk.0.ffn_down.weight", F, D);
    ADD("blk.0.ffn_up.weight", D, F);
    ADD("output_norm.weight", D, 0);
#undef ADD
    if (!rc) rc = msa_gguf_writer_write(w, path);
    msa_gguf_writer_free(w);
    return rc;
}

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *d = malloc(sz > 0 ? (size_t)sz : 1);
    if (d && fread(d, 1, (size_t)sz, f) != (size_t)sz) {
        free(d);
        d = NULL;
    }
    fclose(f);
    *n = (size_t)sz;
    return d;
}

static void spit(const char *path, const uint8_t *d, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(d, 1, n, f) != n) {
        perror(path);
        exit(1);
    }
    fclose(f);
}

/* The byte offset of tensor `name`'s u64 data offset in the table. */
static size_t offset_field(const uint8_t *d, size_t n, const char *name) {
    size_t l = strlen(name);
    for (size_t i = 8; i + l + 8 < n; i++) {
        uint64_t len;
        memcpy(&len, d + i - 8, 8);
        if (len == l && !memcmp(d + i, name, l)) {
            size_t at = i + l;
            uint32_t nd;
            memcpy(&nd, d + at, 4);
            return at + 4 + 8 * nd + 4;
        }
    }
    return 0;
}

static int open_model(const char *path, msa_model **m) {
    msa_model_params p = msa_model_default_params();
    p.no_fingerprint_cache = 1;
    *m = NULL;
    return msa_model_open(path, &p, m);
}

static int open_tok(const char *path) {
    msa_tokenizer *t = NULL;
    int rc = msa_tokenizer_open(path, &t);
    msa_tokenizer_free(t);
    return rc;
}

/* ---- item 10: what is refused ------------------------------------------------- */

static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "test-model-files: a FIFO made an open wait (hang)\n";
    if (write(2, msg, sizeof msg - 1)) {}
    _exit(1);
}

static void test_fifo(void) {
    char fifo[300];
    snprintf(fifo, sizeof fifo, "%s/model.fifo", tmpdir);
    CHECK(mkfifo(fifo, 0644) == 0);
    signal(SIGALRM, on_alarm);
    alarm(20); /* before the fix: open() of a FIFO without a writer never returns */
    msa_model *m = NULL;
    int rc = open_model(fifo, &m);
    CHECKF(rc == MSA_EINVAL && strstr(msa_last_error(), "FIFO"), "%d %s", rc, msa_last_error());
    CHECK(m == NULL);
    rc = open_tok(fifo);
    CHECKF(rc == MSA_EINVAL && strstr(msa_last_error(), "FIFO"), "%d %s", rc, msa_last_error());
    msa_gguf *g = NULL;
    CHECK(msa_gguf_open(fifo, &g) == MSA_EINVAL && g == NULL);
    char out[300];
    snprintf(out, sizeof out, "%s/fifo-out.gguf", tmpdir);
    CHECK(msa_convert_llama2c(fifo, fifo, out) == MSA_EINVAL);
    CHECK(access(out, F_OK) != 0);
    CHECK(msa_tokenizer_from_json(fifo, &(msa_tokenizer *){NULL}) == MSA_EINVAL);
    /* FIFOs inside a Hugging Face folder: the weights, the tokenizer */
    char hf[300], q[400];
    snprintf(hf, sizeof hf, "%s/hf-fifo", tmpdir);
    mkdir(hf, 0755);
    snprintf(q, sizeof q, "%s/config.json", hf);
    FILE *f = fopen(q, "w");
    fputs("{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", "
          "\"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 1, "
          "\"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"vocab_size\": 8}", f);
    fclose(f);
    snprintf(q, sizeof q, "%s/model.safetensors", hf);
    CHECK(mkfifo(q, 0644) == 0);
    CHECK(msa_hf_is_model_dir(hf)); /* (also links the HF loader into this program) */
    rc = open_model(hf, &m);
    CHECKF(rc != MSA_OK && strstr(msa_last_error(), "FIFO"), "%d %s", rc, msa_last_error());
    snprintf(q, sizeof q, "%s/tokenizer.json", hf);
    CHECK(mkfifo(q, 0644) == 0);
    rc = open_tok(hf);
    CHECKF(rc != MSA_OK && strstr(msa_last_error(), "FIFO"), "%d %s", rc, msa_last_error());
    /* a directory that is not a model folder, /dev/null */
    CHECK(open_model("/dev/null", &m) == MSA_EINVAL);
    alarm(0);
    unlink(fifo);
}

static void expect_refused(const char *what, const spec *sp, int tok_too) {
    char path[300];
    snprintf(path, sizeof path, "%s/bad.gguf", tmpdir);
    CHECK_OK(write_model(path, sp));
    msa_model *m = NULL;
    int rc = open_model(path, &m);
    int trc = tok_too ? open_tok(path) : rc;
    CHECKF((tok_too ? trc : rc) == MSA_EFORMAT, "%s: model %d, tokenizer %d (%s)", what, rc, trc,
           msa_last_error());
    if (!tok_too) CHECK(m == NULL);
    msa_model_free(m);
    unlink(path);
}

static void test_values(void) {
    char path[300];
    snprintf(path, sizeof path, "%s/good.gguf", tmpdir);
    spec s = good_spec();
    CHECK_OK(write_model(path, &s));
    msa_model *m = NULL;
    CHECK_OK(open_model(path, &m));
    if (m) CHECK(m->info.context_length == 512 && m->info.rope_theta == 10000.0f);
    msa_model_free(m);
    CHECK_OK(open_tok(path));
    /* a block_count the tensor table cannot hold: refused before it sizes
     * anything (it was a calloc of block_count layers; fuzz-gguf) */
    {
        msa_gguf_writer *w;
        CHECK_OK(msa_gguf_writer_init(&w));
        msa_gguf_writer_set_str(w, "general.architecture", "llama");
        msa_gguf_writer_set_u32(w, "llama.embedding_length", D);
        msa_gguf_writer_set_u32(w, "llama.feed_forward_length", F);
        msa_gguf_writer_set_u32(w, "llama.block_count", (1u << 29) + (uint32_t)t_randint(1000));
        msa_gguf_writer_set_u32(w, "llama.attention.head_count", HQ);
        int64_t ne[2] = {D, V};
        msa_gguf_writer_add_tensor(w, "token_embd.weight", MSA_GGML_F32, 2, ne, weights);
        msa_gguf_writer_add_tensor(w, "output_norm.weight", MSA_GGML_F32, 1, ne, weights);
        CHECK_OK(msa_gguf_writer_write(w, path));
        msa_gguf_writer_free(w);
        int rc = open_model(path, &m);
        CHECKF(rc == MSA_EFORMAT && strstr(msa_last_error(), "block_count"), "%d %s", rc,
               msa_last_error());
    }
    s.context = -1; /* absent: the default (2048) */
    s.theta_absent = 1;
    CHECK_OK(write_model(path, &s));
    CHECK_OK(open_model(path, &m));
    if (m) CHECK(m->info.context_length == 2048 && m->info.rope_theta == 10000.0f);
    msa_model_free(m);
    unlink(path);

    for (int trial = 0; trial < 24; trial++) {
        s = good_spec();
        char what[64];
        int tok = 0;
        switch (t_randint(5)) {
        case 0:
            s.context = 0;
            snprintf(what, sizeof what, "context length 0");
            break;
        case 1:
            s.bos = V + t_randint(1 << 20);
            tok = 1;
            snprintf(what, sizeof what, "BOS %lld of %d", (long long)s.bos, V);
            break;
        case 2:
            s.eos = V + t_randint(1 << 20);
            tok = 1;
            snprintf(what, sizeof what, "EOS %lld of %d", (long long)s.eos, V);
            break;
        case 3: {
            static const double bad[] = {0.0, -1.0, -1e6, NAN, INFINITY, -INFINITY};
            s.theta = bad[t_randint(6)];
            if (s.theta == -1.0) s.theta = -t_randf(1e-3f, 1e6f);
            snprintf(what, sizeof what, "rope theta %g", s.theta);
            break;
        }
        default:
            s.theta = -0.0;
            snprintf(what, sizeof what, "rope theta -0");
            break;
        }
        expect_refused(what, &s, tok);
    }
}

static void test_tensor_table(void) {
    char path[300], bad[300];
    snprintf(path, sizeof path, "%s/table.gguf", tmpdir);
    snprintf(bad, sizeof bad, "%s/table-bad.gguf", tmpdir);
    spec s = good_spec();
    CHECK_OK(write_model(path, &s));
    size_t n;
    uint8_t *d = slurp(path, &n);
    if (!d) { CHECK(0); return; }
    size_t a = offset_field(d, n, "blk.0.attn_norm.weight"),
           b = offset_field(d, n, "blk.0.ffn_norm.weight"),
           c = offset_field(d, n, "output_norm.weight");
    CHECK(a && b && c);
    uint64_t oa, ob;
    memcpy(&oa, d + a, 8);
    memcpy(&ob, d + b, 8);
    for (int trial = 0; trial < 12; trial++) {
        uint8_t *e = malloc(n);
        memcpy(e, d, n);
        uint64_t v;
        int kind = trial % 4;
        const char *what;
        if (kind == 0) { /* ffn_norm onto attn_norm: same bytes for two tensors */
            v = oa;
            memcpy(e + b, &v, 8);
            what = "overlap (same range)";
        } else if (kind == 1) { /* partly into the tensor before: 32-byte aligned overlap */
            v = ob - 32 * (1 + (uint64_t)t_randint(4));
            memcpy(e + b, &v, 8);
            what = "overlap (partial)";
        } else if (kind == 2) { /* misaligned */
            v = ob + 1 + (uint64_t)t_randint(31);
            memcpy(e + b, &v, 8);
            what = "misaligned offset";
        } else { /* past the end */
            v = (uint64_t)n + 32 * (uint64_t)t_randint(1000);
            memcpy(e + c, &v, 8);
            what = "out of bounds";
        }
        spit(bad, e, n);
        free(e);
        msa_gguf *g = NULL;
        int rc = msa_gguf_open(bad, &g);
        CHECKF(rc == MSA_EFORMAT && g == NULL, "%s: %d (%s)", what, rc, msa_last_error());
        msa_gguf_close(g);
        msa_model *m = NULL;
        CHECKF(open_model(bad, &m) == MSA_EFORMAT, "%s: model accepted", what);
        msa_model_free(m);
    }
    free(d);
    unlink(bad);
    unlink(path);
}

/* tokenizer.json + tokenizer_config.json naming BOS/EOS tokens that the
 * vocabulary lacks: refused (they became -1, "no BOS", silently). */
static void test_tokenizer_config(void) {
    char d[300], p[400];
    snprintf(d, sizeof d, "%s/hf-tok", tmpdir);
    mkdir(d, 0755);
    snprintf(p, sizeof p, "%s/tokenizer.json", d);
    FILE *f = fopen(p, "w");
    fputs("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, "
          "\"<s>\": 3, \"</s>\": 4}, \"merges\": [\"a b\"]},"
          "\"added_tokens\": [{\"id\": 3, \"content\": \"<s>\", \"special\": true},"
          "{\"id\": 4, \"content\": \"</s>\", \"special\": true}],"
          "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", f);
    fclose(f);
    /* one huge id must not size the vocabulary (fuzz-tokenizer-json) */
    {
        char big[300], bp[400];
        snprintf(big, sizeof big, "%s/hf-tok-big", tmpdir);
        mkdir(big, 0755);
        snprintf(bp, sizeof bp, "%s/tokenizer.json", big);
        FILE *g = fopen(bp, "w");
        fprintf(g, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": %d}, "
                "\"merges\": []}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}",
                1100000000 + t_randint(1000000));
        fclose(g);
        msa_tokenizer *t = NULL;
        int rc = msa_tokenizer_open(big, &t);
        CHECKF(rc == MSA_EFORMAT && strstr(msa_last_error(), "token id"), "%d %s", rc,
               msa_last_error());
        msa_tokenizer_free(t);
    }
    snprintf(p, sizeof p, "%s/tokenizer_config.json", d);
    const char *cases[4][2] = {{"<s>", "</s>"}, {"<nope>", "</s>"}, {"<s>", "<eos-missing>"},
                               {NULL, NULL}};
    for (int i = 0; cases[i][0]; i++) {
        f = fopen(p, "w");
        fprintf(f, "{\"bos_token\": \"%s\", \"eos_token\": {\"content\": \"%s\"}}", cases[i][0],
                cases[i][1]);
        fclose(f);
        msa_tokenizer *t = NULL;
        int rc = msa_tokenizer_open(d, &t);
        if (i == 0) {
            CHECK_OK(rc);
            if (t) CHECK(msa_tokenizer_bos(t) == 3 && msa_tokenizer_eos(t) == 4);
        } else {
            CHECKF(rc == MSA_EFORMAT && strstr(msa_last_error(), "not in the vocabulary"),
                   "%s/%s: %d (%s)", cases[i][0], cases[i][1], rc, msa_last_error());
        }
        msa_tokenizer_free(t);
    }
}

/* ---- item 8: outputs ------------------------------------------------------------ */

/* A llama2.c checkpoint (dim 8, 1 layer, vocab 8) and tokenizer. */
static void write_llama2c(const char *ck, const char *tok) {
    int32_t h[7] = {D, F, 1, HQ, HKV, V, 4};
    size_t nf = V * D + D + D * D + 2 * HKV * HD * D + D * D + D + 3 * F * D + D + 4 * HD;
    FILE *f = fopen(ck, "wb");
    fwrite(h, 4, 7, f);
    for (size_t i = 0; i < nf; i++) {
        float x = t_randf(-1, 1);
        fwrite(&x, 4, 1, f);
    }
    fclose(f);
    static const char *pieces[V] = {"<unk>", "\n<s>\n", "\n</s>\n", " ", "a", "b", " a", "ab"};
    f = fopen(tok, "wb");
    int32_t ml = 6;
    fwrite(&ml, 4, 1, f);
    for (int i = 0; i < V; i++) {
        float sc = -(float)i;
        int32_t l = (int32_t)strlen(pieces[i]);
        fwrite(&sc, 4, 1, f);
        fwrite(&l, 4, 1, f);
        fwrite(pieces[i], 1, (size_t)l, f);
    }
    fclose(f);
}

/* Files in tmpdir whose name contains `part`. */
static int count_files(const char *part) {
    char cmd[800];
    snprintf(cmd, sizeof cmd, "ls -a '%s' | grep -c -- '%s' > '%s/.count'", tmpdir, part, tmpdir);
    if (system(cmd)) {}
    char p[300];
    snprintf(p, sizeof p, "%s/.count", tmpdir);
    FILE *f = fopen(p, "r");
    int n = 0;
    if (f && fscanf(f, "%d", &n) != 1) n = -1;
    if (f) fclose(f);
    unlink(p);
    return n;
}

static void test_outputs(void) {
    char ck[300], tok[300], out[300], alias[300], link_[300], sym[300];
    snprintf(ck, sizeof ck, "%s/m.bin", tmpdir);
    snprintf(tok, sizeof tok, "%s/tok.bin", tmpdir);
    snprintf(out, sizeof out, "%s/m.gguf", tmpdir);
    snprintf(alias, sizeof alias, "%s/./m.bin", tmpdir);
    snprintf(link_, sizeof link_, "%s/hard.bin", tmpdir);
    snprintf(sym, sizeof sym, "%s/sym.bin", tmpdir);
    write_llama2c(ck, tok);
    size_t n0, n1;
    uint8_t *before = slurp(ck, &n0), *tb = slurp(tok, &n1);
    CHECK(link(ck, link_) == 0);
    CHECK(symlink(ck, sym) == 0);
    /* the checkpoint or the tokenizer as output, under any name */
    const char *outs[5] = {ck, tok, alias, link_, sym};
    for (int i = 0; i < 5; i++) {
        int rc = msa_convert_llama2c(ck, tok, outs[i]);
        CHECKF(rc == MSA_EEXIST && strstr(msa_last_error(), "refusing"), "%s: %d (%s)", outs[i],
               rc, msa_last_error());
    }
    size_t n;
    uint8_t *after = slurp(ck, &n);
    CHECK(after && n == n0 && !memcmp(after, before, n));
    free(after);
    after = slurp(tok, &n);
    CHECK(after && n == n1 && !memcmp(after, tb, n));
    free(after);
    free(before);
    free(tb);
    struct stat st;
    CHECK(lstat(sym, &st) == 0 && S_ISLNK(st.st_mode));
    CHECK(count_files(".tmp") == 0);

    /* a good conversion, then a second one over it (the library replaces) */
    CHECK_OK(msa_convert_llama2c(ck, tok, out));
    CHECK_OK(msa_convert_llama2c(ck, tok, out));
    CHECK(count_files(".tmp") == 0);

    /* a full disk: the file-size limit makes write() fail with EFBIG
     * (SIGXFSZ ignored), which is "no space left"; nothing is left behind
     * and the old output is intact */
    uint8_t *good = slurp(out, &n0);
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {2048, 2048};
        setrlimit(RLIMIT_FSIZE, &rl);
        int rc = msa_convert_llama2c(ck, tok, out);
        int ok = rc == MSA_ENOSPC && strstr(msa_last_error(), "File too large");
        if (!ok) fprintf(stderr, "full disk: %d (%s)\n", rc, msa_last_error());
        _exit(ok ? 0 : 1);
    }
    int ws = 0;
    waitpid(pid, &ws, 0);
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    after = slurp(out, &n);
    CHECK(after && good && n == n0 && !memcmp(after, good, n));
    free(after);
    free(good);
    CHECK(count_files(".tmp") == 0);
    /* an output folder that does not exist: nothing created */
    char nodir[300];
    snprintf(nodir, sizeof nodir, "%s/no/such/dir/m.gguf", tmpdir);
    CHECK(msa_convert_llama2c(ck, tok, nodir) == MSA_ENOTFOUND);

    /* calibrate onto its own model: refused at once, the model unchanged */
    msa_model *m = NULL;
    CHECK_OK(open_model(out, &m));
    if (m) {
        uint8_t *mb = slurp(out, &n0);
        int32_t toks[64];
        for (int i = 0; i < 64; i++) toks[i] = 3 + t_randint(V - 3);
        msa_calib_params cp = msa_calib_default_params();
        cp.steps = 1;
        cp.seq_len = 16;
        cp.idx_dim = 4;
        int rc = msa_calibrate(m, toks, 64, &cp, out, NULL);
        CHECKF(rc == MSA_EEXIST, "calibrate onto its input: %d (%s)", rc, msa_last_error());
        char other[300];
        snprintf(other, sizeof other, "%s/m-alias.gguf", tmpdir);
        CHECK(link(out, other) == 0);
        CHECK(msa_calibrate(m, toks, 64, &cp, other, NULL) == MSA_EEXIST);
        unlink(other);
        after = slurp(out, &n);
        CHECK(after && mb && n == n0 && !memcmp(after, mb, n));
        free(after);
        free(mb);
        msa_model_free(m);
    }
    unlink(link_);
    unlink(sym);
    unlink(out);
    unlink(ck);
    unlink(tok);
}

/* ---- item 9: the fingerprint cache ---------------------------------------------- */

static void test_fingerprint_cache(void) {
    char cache[300], path[300], side[320];
    snprintf(cache, sizeof cache, "%s/cache", tmpdir);
    setenv("XDG_CACHE_HOME", cache, 1);
    snprintf(path, sizeof path, "%s/fp.gguf", tmpdir);
    snprintf(side, sizeof side, "%s.msa-fp", path);
    spec s = good_spec();
    for (size_t i = 0; i < sizeof weights / sizeof *weights; i++) weights[i] = t_randf(-1, 1);
    CHECK_OK(write_model(path, &s));
    msa_model_params p = msa_model_default_params();
    msa_model *m = NULL;
    char fp0[80] = "", fp1[80] = "", fp2[80] = "";
    CHECK_OK(msa_model_open(path, &p, &m));
    if (m) snprintf(fp0, sizeof fp0, "%s", m->info.fingerprint);
    msa_model_free(m);
    CHECK(access(side, F_OK) != 0); /* nothing beside the model */
    char dir[400];
    snprintf(dir, sizeof dir, "%s/msa-mem/fingerprints", cache);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "test $(ls '%s' | wc -l) -eq 1", dir);
    CHECK(system(cmd) == 0);

    /* the cache is read: a planted fingerprint under a matching key comes back */
    snprintf(cmd, sizeof cmd, "sed -i 's/ [0-9a-f]\\{64\\}$/ %064d/' '%s'/*", 7, dir);
    CHECK(system(cmd) == 0);
    CHECK_OK(msa_model_open(path, &p, &m));
    if (m) CHECK(!strcmp(m->info.fingerprint, "0000000000000000000000000000000000000000000000000000000000000007"));
    msa_model_free(m);

    /* change one weight byte in place, put mtime back: hashed again */
    struct stat st;
    CHECK(stat(path, &st) == 0);
    size_t n;
    uint8_t *d = slurp(path, &n);
    if (!d) { CHECK(0); return; }
    size_t at = n - 1 - (size_t)t_randint(64); /* inside output_norm's bytes */
    int fd = open(path, O_WRONLY);
    uint8_t x = (uint8_t)(d[at] ^ (1u << t_randint(8)));
    CHECK(fd >= 0 && pwrite(fd, &x, 1, (off_t)at) == 1);
    close(fd);
    struct timespec ts[2] = {st.st_atim, st.st_mtim};
    CHECK(utimensat(AT_FDCWD, path, ts, 0) == 0);
    struct stat st2;
    CHECK(stat(path, &st2) == 0 && st2.st_size == st.st_size &&
          st2.st_mtim.tv_sec == st.st_mtim.tv_sec && st2.st_mtim.tv_nsec == st.st_mtim.tv_nsec);
    CHECK_OK(msa_model_open(path, &p, &m));
    if (m) snprintf(fp1, sizeof fp1, "%s", m->info.fingerprint);
    msa_model_free(m);
    p.no_fingerprint_cache = 1;
    CHECK_OK(msa_model_open(path, &p, &m));
    if (m) snprintf(fp2, sizeof fp2, "%s", m->info.fingerprint);
    msa_model_free(m);
    p.no_fingerprint_cache = 0;
    CHECKF(strcmp(fp1, fp0) && !strcmp(fp1, fp2), "changed weights, mtime restored: cached %s, "
           "recomputed %s, before %s", fp1, fp2, fp0);
    /* and the same file unchanged gives the same fingerprint from the cache */
    CHECK_OK(msa_model_open(path, &p, &m));
    if (m) CHECK(!strcmp(m->info.fingerprint, fp2));
    msa_model_free(m);
    /* a replaced file (new inode, same size and mtime) as well */
    d[at] = x;
    d[at - 8] ^= 0x40;
    char repl[320];
    snprintf(repl, sizeof repl, "%s.new", path);
    spit(repl, d, n);
    CHECK(utimensat(AT_FDCWD, repl, ts, 0) == 0);
    CHECK(rename(repl, path) == 0);
    CHECK_OK(msa_model_open(path, &p, &m));
    if (m) CHECK(strcmp(m->info.fingerprint, fp2) != 0);
    msa_model_free(m);
    free(d);
    /* entries of deleted models are pruned when the next entry is written */
    snprintf(cmd, sizeof cmd, "test $(ls '%s' | wc -l) -eq 1", dir);
    CHECK(system(cmd) == 0);
    char other[320];
    snprintf(other, sizeof other, "%s/fp-other.gguf", tmpdir);
    CHECK_OK(write_model(other, &s));
    unlink(path);
    CHECK_OK(msa_model_open(other, &p, &m));
    msa_model_free(m);
    CHECK(system(cmd) == 0);
    unlink(other);
    unsetenv("XDG_CACHE_HOME");
    unlink(path);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", cache);
    if (system(cmd)) {}
}

/* ---- item 11: errno -------------------------------------------------------------- */

static void test_errno(void) {
    CHECK(msa_status_of_errno(ENOENT) == MSA_ENOTFOUND);
    CHECK(msa_status_of_errno(ENOSPC) == MSA_ENOSPC && msa_status_of_errno(EDQUOT) == MSA_ENOSPC);
    CHECK(msa_status_of_errno(ENOMEM) == MSA_ENOMEM && msa_status_of_errno(EIO) == MSA_EIO);
    CHECK(-ENOENT == MSA_ENOMEM); /* why a negated errno must never be a status */
    CHECK(!strcmp(msa_strerror(MSA_ENOSPC), "no space left on device"));
    msa_model *m = NULL;
    char p[300];
    snprintf(p, sizeof p, "%s/missing.gguf", tmpdir);
    CHECK(msa_model_open(p, NULL, &m) == MSA_ENOTFOUND && strstr(msa_last_error(), "No such file"));
    CHECK(open_tok(p) == MSA_ENOTFOUND);
    char tok[300];
    snprintf(tok, sizeof tok, "%s/tok-missing.bin", tmpdir);
    CHECK(msa_convert_llama2c(p, tok, p) == MSA_ENOTFOUND);
}

int main(void) {
    t_seed();
    snprintf(tmpdir, sizeof tmpdir, "/tmp/msa-test-model-files-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    for (size_t i = 0; i < sizeof weights / sizeof *weights; i++) weights[i] = t_randf(-1, 1);
    test_errno();
    test_fifo();
    test_values();
    test_tensor_table();
    test_tokenizer_config();
    test_outputs();
    test_fingerprint_cache();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return t_done("test-model-files");
}
