/*
 * test-golden.c: files written by an earlier version must stay readable.
 * tests/golden/ holds a store (store/data.mdb) and an export file
 * (story.msax) written by the store format of 2026-12 (format version 1),
 * and MANIFEST, what they hold as that version read it: every session's
 * record (model fingerprint, shapes, token and block counts), a hash of its
 * tokens, and for every layer and block its fill, codec, source tag and
 * hashes of the decoded K, V and index keys. tests/golden/make-golden.sh
 * says how all of it was made (stories260K through the msa-mem CLI; the
 * manifest by this program with --manifest).
 *
 * The test copies the store to a temporary folder (LMDB writes its lock
 * file beside data.mdb) and, through the msa_store_* API alone, without the
 * model:
 *   - lists the sessions and rebuilds the manifest from what it reads
 *     (every block decoded, so every checksum verified), which must equal
 *     MANIFEST line for line;
 *   - reads the index keys per layer in one call and finds them equal to
 *     those of the block reads; the fork's shared full blocks decode to its
 *     parent's bytes;
 *   - runs fsck (clean);
 *   - imports story.msax into a fresh store: the session reads back exactly
 *     as MANIFEST's story, and a round trip through export and import again
 *     keeps it so.
 * When ../shared/assets has stories260K, it also opens the store with the
 * engine: the golden "story" session resumes and its next greedy tokens are
 * those the fork "branch" was extended with when the files were made (a
 * fingerprint mismatch, i.e. a converter that no longer writes the same
 * model, is reported and that part skipped).
 *
 * tests/golden/store2/ is a store of format version 2 (2026-12-06): LMDB's
 * data.mdb and the segment file its full blocks live in, written by
 * `test-golden --make-store2` (synthetic bf16 content from a fixed seed:
 * a session and a fork of it, every full block in the segment), with
 * MANIFEST2 as that version read it. The test copies both files, rebuilds
 * the manifest and runs fsck.
 *
 *   test-golden [--manifest DIR [STORE]]   print DIR/STORE's manifest (STORE: "store")
 *   test-golden --make-store2 DIR          write DIR/store, a format 2 store
 */
#include <dirent.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/msa.h"
#include "tests/testutil.h"

#ifndef MSA_GOLDEN_DIR
#error "MSA_GOLDEN_DIR (the tests/golden folder) must be defined by the build"
#endif

/* ---- hashing ----------------------------------------------------------------- */

/* FNV-1a, 64 bits: stable, simple, and enough to tell one content from another. */
static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}
#define FNV0 0xcbf29ce484222325ULL

static uint64_t hash_tokens(const int32_t *t, uint64_t n) {
    uint64_t h = FNV0;
    for (uint64_t i = 0; i < n; i++) {
        unsigned char le[4] = {(unsigned char)t[i], (unsigned char)(t[i] >> 8),
                               (unsigned char)(t[i] >> 16), (unsigned char)(t[i] >> 24)};
        h = fnv(h, le, 4);
    }
    return h;
}

/* ---- the manifest ---------------------------------------------------------------- */

typedef struct text {
    char *s;
    size_t n, cap;
} text;

static void add(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(text *t, const char *fmt, ...) {
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (w < 0) return;
    size_t len = (size_t)w < sizeof line ? (size_t)w : sizeof line - 1;
    if (t->n + len + 1 > t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 4096;
        while (cap < t->n + len + 1) cap *= 2;
        char *s = realloc(t->s, cap);
        if (!s) return;
        t->s = s;
        t->cap = cap;
    }
    memcpy(t->s + t->n, line, len);
    t->n += len;
    t->s[t->n] = 0;
}

/* Appends the manifest lines of one session (read through ss) to out, as
 * "session NAME ..." and one "block NAME LAYER BLOCK ..." per block. The
 * index keys of each layer are also read in one msa_store_read_index call
 * and must equal the block reads'. Returns MSA_OK or the first failure. */
static int session_manifest(msa_store_session *ss, const char *name, text *out) {
    msa_store_session_info si;
    int rc = msa_store_session_stat(ss, &si);
    if (rc) return rc;
    const msa_store_shape *sh = &si.shape;
    add(out, "session %s fingerprint %s layers %d kv_heads %d head_dim %d idx_heads %d "
        "idx_dim %d block %d kv %s idx %s tokens %llu blocks %llu raw %llu\n", name,
        si.fingerprint, sh->n_layers, sh->n_kv_heads, sh->head_dim, sh->idx_key_heads,
        sh->idx_dim, sh->block_size, msa_dtype_name(sh->kv_dtype), msa_dtype_name(sh->idx_dtype),
        (unsigned long long)si.n_tokens, (unsigned long long)si.n_blocks,
        (unsigned long long)si.raw_bytes);
    int32_t *tok = malloc((si.n_tokens ? si.n_tokens : 1) * sizeof *tok);
    if (!tok) {
        fprintf(stderr, "golden: out of memory for %llu tokens\n", (unsigned long long)si.n_tokens);
        return MSA_ENOMEM;
    }
    rc = msa_store_read_tokens(ss, 0, si.n_tokens, tok);
    if (!rc) add(out, "tokens %s %016llx first %d last %d\n", name,
                 (unsigned long long)hash_tokens(tok, si.n_tokens), si.n_tokens ? tok[0] : -1,
                 si.n_tokens ? tok[si.n_tokens - 1] : -1);
    free(tok);
    if (rc) return rc;
    size_t kvb = (size_t)sh->n_kv_heads * sh->block_size * sh->head_dim * msa_dtype_size(sh->kv_dtype);
    size_t ib = (size_t)sh->idx_key_heads * sh->block_size * sh->idx_dim * msa_dtype_size(sh->idx_dtype);
    uint64_t nb = si.n_blocks;
    void *k = malloc(kvb), *v = malloc(kvb), *kidx = malloc(ib);
    unsigned char *all_idx = malloc((nb ? nb : 1) * ib);
    if (!k || !v || !kidx || !all_idx) {
        fprintf(stderr, "golden: out of memory for block buffers\n");
        rc = MSA_ENOMEM;
    }
    for (int l = 0; !rc && l < sh->n_layers; l++) {
        rc = nb ? msa_store_read_index(ss, l, 0, nb, all_idx) : MSA_OK;
        for (uint64_t b = 0; !rc && b < nb; b++) {
            msa_store_block_info bi;
            rc = msa_store_read_block(ss, l, b, k, v, kidx, &bi);
            if (rc) break;
            CHECKF(!memcmp(kidx, all_idx + b * ib, ib),
                   "%s layer %d block %llu: index keys of read_index differ from read_block's",
                   name, l, (unsigned long long)b);
            add(out, "block %s %d %llu fill %d lossy %d k %016llx v %016llx kidx %016llx tag %s\n",
                name, l, (unsigned long long)b, bi.n_tokens, bi.lossy,
                (unsigned long long)fnv(FNV0, k, kvb), (unsigned long long)fnv(FNV0, v, kvb),
                (unsigned long long)fnv(FNV0, kidx, ib), bi.tag);
        }
    }
    free(k);
    free(v);
    free(kidx);
    free(all_idx);
    return rc;
}

/* The whole store's manifest: every session in name order, with a
 * "parent NAME PARENT" line for forks. */
_Static_assert(MSA_STORE_FORMAT_VERSION >= 2, "the golden stores are formats 1 and 2");

static int store_manifest(msa_store *st, int format, text *out) {
    msa_store_session_info *list = NULL;
    size_t n = 0;
    int rc = msa_store_list(st, &list, &n);
    if (rc) return rc;
    /* the format the golden store was written in; this build must still read it */
    add(out, "store-format %d sessions %zu\n", format, n);
    for (size_t i = 0; !rc && i < n; i++) {
        msa_store_session *ss = NULL;
        rc = msa_store_session_open(st, list[i].name, NULL, &ss);
        if (!rc) rc = session_manifest(ss, list[i].name, out);
        if (!rc && list[i].parent[0]) add(out, "parent %s %s\n", list[i].name, list[i].parent);
        msa_store_session_close(ss);
    }
    msa_store_list_free(list);
    return rc;
}

/* The lines of `all` that belong to session `name` (its session, tokens and
 * block lines), for comparing an imported copy with the original. */
static void session_lines(const char *all, const char *name, text *out) {
    char pre[3][320];
    snprintf(pre[0], sizeof pre[0], "session %s ", name);
    snprintf(pre[1], sizeof pre[1], "tokens %s ", name);
    snprintf(pre[2], sizeof pre[2], "block %s ", name);
    for (const char *p = all; *p;) {
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        for (int j = 0; j < 3; j++)
            if (!strncmp(p, pre[j], strlen(pre[j]))) {
                add(out, "%.*s\n", (int)len, p);
                break;
            }
        p += len + (e != NULL);
    }
}

/* The manifest file without its comment lines. */
static char *read_manifest(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    text t = {0};
    char line[2048];
    while (fgets(line, sizeof line, f))
        if (line[0] != '#' && line[0] != '\n') add(&t, "%s", line);
    fclose(f);
    return t.s ? t.s : strdup("");
}

/* Reports the first line where a and b differ. */
static int same_text(const char *what, const char *a, const char *b) {
    if (!strcmp(a, b)) return 1;
    int line = 1;
    const char *pa = a, *pb = b;
    while (*pa && *pa == *pb) {
        if (*pa == '\n') line++;
        pa++;
        pb++;
    }
    const char *la = pa, *lb = pb;
    while (la > a && la[-1] != '\n') la--;
    while (lb > b && lb[-1] != '\n') lb--;
    fprintf(stderr, "%s: differs at line %d:\n  expected: %.*s\n  read:     %.*s\n", what, line,
            (int)strcspn(la, "\n"), la, (int)strcspn(lb, "\n"), lb);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------ */

static int copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb");
    if (!in) return -1;
    FILE *out = fopen(to, "wb");
    if (!out) {
        fclose(in);
        return -1;
    }
    char buf[65536];
    size_t n;
    int rc = 0;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) rc = -1;
    if (ferror(in)) rc = -1;
    fclose(in);
    if (fclose(out)) rc = -1;
    return rc;
}

static msa_store *open_store(const char *dir, int create) {
    msa_store_params p = msa_store_default_params();
    p.dir = dir;
    p.create = create;
    p.durable = 0;
    msa_store *st = NULL;
    int rc = msa_store_open(&p, &st);
    if (rc) fprintf(stderr, "store %s: %s: %s\n", dir, msa_strerror(rc), msa_last_error());
    return st;
}

/* ---- with the model (optional) -------------------------------------------------------- */

typedef struct ids {
    int32_t v[64];
    int n;
} ids;

static int keep_token(void *user, int32_t tok, const char *text, size_t len) {
    (void)text;
    (void)len;
    ids *c = user;
    if (tok >= 0 && c->n < 64) c->v[c->n++] = tok;
    return 0;
}

/* The golden "story" resumes and continues with the tokens its fork
 * "branch" got when the files were made (greedy, same MSA shape). */
static void resume_with_model(const char *assets, const char *tmp, const char *store_dir,
                              const char *manifest) {
    char bin[4096], tk[4096], gguf[4096];
    snprintf(bin, sizeof bin, "%s/stories260K/stories260K.bin", assets);
    snprintf(tk, sizeof tk, "%s/stories260K/tok512.bin", assets);
    snprintf(gguf, sizeof gguf, "%s/stories260K.gguf", tmp);
    if (access(bin, R_OK) != 0) {
        printf("no stories260K in the assets: the resume part skipped\n");
        return;
    }
    CHECK_OK(msa_convert_llama2c(bin, tk, gguf));
    msa_engine_params p = msa_engine_default_params();
    p.model_path = gguf;
    p.store_dir = store_dir;
    p.block_size = 16;
    p.top_k = 4; /* as make-golden.sh's `new --top-k 4` */
    p.durable = 0;
    msa_engine *e = NULL;
    CHECK_OK(msa_engine_open(&p, &e));
    if (!e) return;
    char want[160];
    snprintf(want, sizeof want, "fingerprint %s ", msa_engine_fingerprint(e));
    if (!strstr(manifest, want)) {
        printf("the converter now writes a model of another fingerprint (%s): the resume "
               "part skipped\n", msa_engine_fingerprint(e));
        msa_engine_free(e);
        return;
    }
    msa_session *story = NULL, *branch = NULL;
    CHECK_OK(msa_session_open(e, "story", 0, &story));
    CHECK_OK(msa_session_open(e, "branch", 0, &branch));
    if (story && branch) {
        int64_t ns = 0, nb = 0;
        msa_session_tokens(story, &ns);
        const int32_t *bt = msa_session_tokens(branch, &nb);
        CHECK(nb > ns && nb - ns <= 64);
        ids got = {0};
        msa_generate_params g = msa_generate_default_params();
        g.max_tokens = (int)(nb - ns);
        g.stop_at_eos = 0;
        CHECK_OK(msa_session_generate(story, &g, keep_token, &got, NULL));
        int same = 0;
        while (same < got.n && ns + same < nb && got.v[same] == bt[ns + same]) same++;
        CHECKF(same == (int)(nb - ns), "resumed golden story matches its fork for %d of %lld "
               "tokens", same, (long long)(nb - ns));
        printf("golden story resumed with the model: %d of %lld tokens as its fork\n", same,
               (long long)(nb - ns));
    }
    msa_session_close(story);
    msa_session_close(branch);
    msa_engine_free(e);
}

/* ---- the format 2 store ------------------------------------------------------------------ */

static uint64_t g_rs = 0x9e3779b97f4a7c15ULL;
static float g_rand(void) {
    g_rs ^= g_rs << 13;
    g_rs ^= g_rs >> 7;
    g_rs ^= g_rs << 17;
    return (float)(g_rs >> 40) / 16777216.0f - 0.5f;
}

/* Appends n tokens to session `name` of st: token ids and bf16 K, V and
 * index keys from the fixed generator, one transaction. */
static int g_append(msa_store *st, const char *name, const msa_store_shape *sh, uint64_t have, uint64_t n) {
    msa_store_session *ss;
    int rc = msa_store_session_open(st, name, NULL, &ss);
    if (rc) return rc;
    msa_store_txn *x;
    if ((rc = msa_store_txn_begin(ss, &x))) {
        msa_store_session_close(ss);
        return rc;
    }
    int32_t tok[256];
    for (uint64_t i = 0; i < n && i < 256; i++) tok[i] = (int32_t)(1 + (g_rs = g_rs * 6364136223846793005ULL + 1) % 500);
    rc = msa_store_txn_put_tokens(x, tok, n);
    size_t kn = (size_t)sh->n_kv_heads * sh->block_size * sh->head_dim, in = (size_t)sh->idx_key_heads * sh->block_size * sh->idx_dim;
    uint16_t *k = calloc(kn, 2), *v = calloc(kn, 2), *ix = calloc(in, 2);
    if (!k || !v || !ix) rc = MSA_ENOMEM;
    uint64_t bs = (uint64_t)sh->block_size;
    for (int l = 0; !rc && l < sh->n_layers; l++)
        for (uint64_t b = have / bs; !rc && b * bs < have + n; b++) {
            uint64_t fill = have + n - b * bs < bs ? have + n - b * bs : bs;
            /* rows already stored keep their values: regenerate the block
             * from a seed of its own */
            uint64_t save = g_rs;
            g_rs = 0x51ed270b27a3b4c9ULL ^ ((uint64_t)l << 32) ^ b;
            for (size_t i = 0; i < kn; i++) { float a = g_rand(), c = g_rand(); msa_dtype_convert(&k[i], MSA_DTYPE_BF16, &a, MSA_DTYPE_F32, 1); msa_dtype_convert(&v[i], MSA_DTYPE_BF16, &c, MSA_DTYPE_F32, 1); }
            for (size_t i = 0; i < in; i++) { float a = g_rand(); msa_dtype_convert(&ix[i], MSA_DTYPE_BF16, &a, MSA_DTYPE_F32, 1); }
            g_rs = save;
            rc = msa_store_txn_put_block(x, l, b, (int)fill, k, v, ix, "golden2");
        }
    free(k);
    free(v);
    free(ix);
    if (!rc) rc = msa_store_txn_commit(x);
    else msa_store_txn_abort(x);
    msa_store_session_close(ss);
    return rc;
}

/* DIR/store: session "seg" of 70 tokens (4 full blocks and a partial one
 * per layer, in 40 + 30), and "seg-fork", a fork of it with 12 more; every
 * full block in the one segment file. */
static int make_store2(const char *dir) {
    char sd[4200];
    snprintf(sd, sizeof sd, "%s/store", dir);
    msa_store_params p = msa_store_default_params();
    p.dir = sd;
    p.segment_min = 1;
    msa_store *st;
    int rc = msa_store_open(&p, &st);
    msa_store_shape sh = {2, 2, 32, 1, 16, 16, MSA_DTYPE_BF16, MSA_DTYPE_BF16};
    if (!rc) rc = msa_store_session_create(st, "seg", "golden-format-2", &sh);
    if (!rc) rc = g_append(st, "seg", &sh, 0, 40);
    if (!rc) rc = g_append(st, "seg", &sh, 40, 30);
    if (!rc) rc = msa_store_fork(st, "seg", "seg-fork");
    if (!rc) rc = g_append(st, "seg-fork", &sh, 70, 12);
    uint64_t nf = 0;
    if (!rc) rc = msa_store_fsck(st, NULL, NULL, &nf);
    if (rc) fprintf(stderr, "make-store2: %s: %s\n", msa_strerror(rc), msa_last_error());
    msa_store_close(st);
    return rc ? 1 : 0;
}

/* ---- main ------------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--make-store2")) return make_store2(argv[2]);
    if ((argc == 3 || argc == 4) && !strcmp(argv[1], "--manifest")) {
        /* make-golden.sh: print the manifest of DIR/STORE (read in place) */
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/%s", argv[2], argc == 4 ? argv[3] : "store");
        msa_store *st = open_store(dir, 0);
        if (!st) return 1;
        text m = {0};
        int rc = store_manifest(st, argc == 4 && !strcmp(argv[3], "store2") ? 2 : 1, &m);
        msa_store_close(st);
        if (rc) {
            fprintf(stderr, "manifest: %s: %s\n", msa_strerror(rc), msa_last_error());
            return 1;
        }
        fputs(m.s ? m.s : "", stdout);
        free(m.s);
        return 0;
    }
    if (argc != 1) {
        fprintf(stderr, "usage: test-golden [--manifest DIR [STORE] | --make-store2 DIR]\n");
        return 2;
    }

    const char *golden = MSA_GOLDEN_DIR;
    char path[4096], tmp[] = "/tmp/msa-test-golden-XXXXXX";
    if (!mkdtemp(tmp)) T_SKIP("cannot make a temporary folder");
    snprintf(path, sizeof path, "%s/MANIFEST", golden);
    char *expected = read_manifest(path);
    CHECKF(expected != NULL, "cannot read %s", path);
    if (!expected) return t_done("test-golden");

    /* 1. the golden store, copied, read through the store API */
    char store_dir[4200], from[4200], to[4300];
    snprintf(store_dir, sizeof store_dir, "%s/store", tmp);
    CHECK(mkdir(store_dir, 0755) == 0);
    snprintf(from, sizeof from, "%s/store/data.mdb", golden);
    snprintf(to, sizeof to, "%s/data.mdb", store_dir);
    CHECKF(copy_file(from, to) == 0, "copying %s", from);
    msa_store *st = open_store(store_dir, 0);
    CHECK(st != NULL);
    text got = {0};
    if (st) {
        CHECK_OK(store_manifest(st, 1, &got));
        CHECK(got.s && same_text("golden store against MANIFEST", expected, got.s));
        /* the fork shares its parent's full blocks: same bytes */
        int shared = 0, checked = 0;
        for (const char *p = got.s ? strstr(got.s, "block branch ") : NULL; p;
             p = strstr(p + 1, "block branch ")) {
            int l;
            unsigned long long b;
            int fill;
            if (sscanf(p, "block branch %d %llu fill %d", &l, &b, &fill) != 3) continue;
            char key[64];
            snprintf(key, sizeof key, "block story %d %llu fill 16 ", l, b);
            const char *q = strstr(got.s, key);
            if (!q || fill != 16) continue;
            checked++;
            const char *hb = strstr(p, " k "), *hs = strstr(q, " k ");
            /* " k <16 hex> v <16 hex> kidx <16 hex>" */
            shared += hb && hs && !strncmp(hb, hs, 3 + 16 + 3 + 16 + 6 + 16);
        }
        CHECKF(checked > 0 && shared == checked, "fork: %d of %d full blocks as the parent's",
               shared, checked);
        uint64_t findings = 0;
        CHECK_OK(msa_store_fsck(st, NULL, NULL, &findings));
        CHECK(findings == 0);
        msa_store_close(st);
    }

    /* 2. the golden export file into a fresh store, and once more round */
    char fresh[4200], again[4200], file2[4300];
    snprintf(fresh, sizeof fresh, "%s/fresh", tmp);
    snprintf(again, sizeof again, "%s/again", tmp);
    snprintf(file2, sizeof file2, "%s/story-again.msax", tmp);
    snprintf(path, sizeof path, "%s/story.msax", golden);
    text want_story = {0};
    session_lines(expected, "story", &want_story);
    CHECK(want_story.n > 0);
    for (int round = 0; round < 2; round++) {
        msa_store *fs = open_store(round ? again : fresh, 1);
        CHECK(fs != NULL);
        if (!fs) break;
        CHECK_OK(msa_store_import(fs, round ? file2 : path, NULL));
        text imp = {0}, imp_story = {0};
        CHECK_OK(store_manifest(fs, 1, &imp));
        if (imp.s) session_lines(imp.s, "story", &imp_story);
        CHECK(imp_story.s && want_story.s &&
              same_text(round ? "re-exported story against MANIFEST" :
                                "imported golden export against MANIFEST",
                        want_story.s, imp_story.s));
        if (!round) CHECK_OK(msa_store_export(fs, "story", file2));
        uint64_t findings = 0;
        CHECK_OK(msa_store_fsck(fs, NULL, NULL, &findings));
        CHECK(findings == 0);
        free(imp.s);
        free(imp_story.s);
        msa_store_close(fs);
    }
    free(want_story.s);

    /* 2b. the format 2 store: LMDB and its segment file */
    snprintf(path, sizeof path, "%s/MANIFEST2", golden);
    char *expected2 = read_manifest(path);
    CHECKF(expected2 != NULL, "cannot read %s", path);
    char store2[4200], segdir[4300];
    snprintf(store2, sizeof store2, "%s/store2", tmp);
    snprintf(segdir, sizeof segdir, "%s/segments", store2);
    CHECK(mkdir(store2, 0755) == 0 && mkdir(segdir, 0755) == 0);
    snprintf(from, sizeof from, "%s/store2/data.mdb", golden);
    snprintf(to, sizeof to, "%s/data.mdb", store2);
    CHECKF(copy_file(from, to) == 0, "copying %s", from);
    int n_seg = 0;
    snprintf(from, sizeof from, "%s/store2/segments", golden);
    DIR *d = opendir(from);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (!strstr(e->d_name, ".seg")) continue;
        char f2[4600], t2[4600];
        snprintf(f2, sizeof f2, "%s/%s", from, e->d_name);
        snprintf(t2, sizeof t2, "%s/%s", segdir, e->d_name);
        CHECKF(copy_file(f2, t2) == 0, "copying %s", f2);
        n_seg++;
    }
    if (d) closedir(d);
    CHECKF(n_seg == 1, "%d segment files in %s", n_seg, from);
    st = expected2 ? open_store(store2, 0) : NULL;
    if (st) {
        text got2 = {0};
        CHECK_OK(store_manifest(st, 2, &got2));
        CHECK(got2.s && same_text("format 2 golden store against MANIFEST2", expected2, got2.s));
        uint64_t findings = 0;
        CHECK_OK(msa_store_fsck(st, NULL, NULL, &findings));
        CHECK(findings == 0);
        free(got2.s);
        msa_store_close(st);
    }
    free(expected2);

    /* 3. with the model, when the assets are there */
    const char *assets = t_assets();
    if (assets) resume_with_model(assets, tmp, store_dir, expected);
    else printf("no assets: the resume part skipped\n");

    free(got.s);
    free(expected);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
    return t_done("test-golden");
}
