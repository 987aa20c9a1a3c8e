/*
 * embed.c: the smallest complete use of msa-mem from C. It opens an engine
 * (a GGUF model and a store), opens or creates a session, appends a text to
 * its memory and generates a continuation, streaming it to stdout. Run it
 * twice: the second run resumes the stored session (no re-prefill) and
 * continues after what the first one generated.
 *
 *   embed MODEL.gguf STORE_DIR [SESSION] [TEXT]
 *
 * Built by examples/CMakeLists.txt against libmsa.so, and run by
 * tests/test_cli.py with the real stories260K model so that it cannot rot.
 * Outside the tree, after `cmake --install`:
 *
 *   cc embed.c -o embed $(pkg-config --cflags --libs msa)
 */
#include <stdio.h>
#include <string.h>

#include <msa/msa.h>

static int print_token(void *user, int32_t token, const char *text, size_t len) {
    (void)user;
    (void)token;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0; /* non-zero would stop generating */
}

static int fail(const char *what, int rc) {
    fprintf(stderr, "embed: %s: %s (%s)\n", what, msa_strerror(rc), msa_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: embed MODEL.gguf STORE_DIR [SESSION] [TEXT]\n");
        return 2;
    }
    const char *name = argc > 3 ? argv[3] : "embed-example";
    const char *text = argc > 4 ? argv[4] : "Once upon a time, there was a little cat.";

    msa_engine_params ep = msa_engine_default_params();
    ep.model_path = argv[1];
    ep.store_dir = argv[2];
    msa_engine *engine;
    int rc = msa_engine_open(&ep, &engine);
    if (rc) return fail("opening the engine", rc);

    msa_session *s;
    rc = msa_session_open(engine, name, MSA_SESSION_CREATE, &s);
    if (rc) {
        msa_engine_free(engine);
        return fail("opening the session", rc);
    }
    int64_t before;
    msa_session_tokens(s, &before);
    if (before == 0) { /* a new session: give it something to remember */
        rc = msa_session_append_text(s, text, strlen(text), "embed.c", NULL, NULL);
        if (rc) goto out;
    }

    msa_generate_params gp = msa_generate_default_params(); /* greedy */
    gp.max_tokens = 24;
    int n = 0;
    rc = msa_session_generate(s, &gp, print_token, NULL, &n);
    if (rc) goto out;

    msa_session_info info;
    rc = msa_session_get_info(s, &info);
    if (rc) goto out;
    printf("\n[session '%s': %lld tokens before, %d generated, %lld now, %lld blocks]\n",
           name, (long long)before, n, (long long)info.n_tokens, (long long)info.n_blocks);
out:
    if (rc) fail("session", rc);
    msa_session_close(s);
    msa_engine_free(engine);
    return rc ? 1 : 0;
}
