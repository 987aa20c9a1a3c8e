/*
 * test-pull.c: the parts of engine/pull/pull.c that need no network: sources
 * resolved to URLs and file names (Hugging Face shorthand, revisions,
 * escaping, endpoints), the default models folder, and msa_pull()'s
 * refusals of bad input before any transfer. The transfers themselves are
 * tested end to end by tests/test_pull.py against tests/pull_server.py.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/pull/pull.h"
#include "base/base.h"
#include "tests/testutil.h"

static void check_resolve(const char *src, const char *endpoint, const char *want_url,
                          const char *want_name, int want_hf) {
    char url[1024], name[256];
    int hf = -1;
    int rc = msa_pull_resolve(src, endpoint, url, sizeof url, name, sizeof name, &hf);
    CHECKF(rc == MSA_OK, "%s: %d %s", src, rc, msa_last_error());
    if (rc) return;
    CHECKF(!strcmp(url, want_url), "%s: url %s, want %s", src, url, want_url);
    CHECKF(!strcmp(name, want_name), "%s: name %s, want %s", src, name, want_name);
    CHECKF(hf == want_hf, "%s: is_hf %d", src, hf);
}

static void check_bad(const char *src) {
    char url[1024], name[256];
    int hf;
    CHECKF(msa_pull_resolve(src, NULL, url, sizeof url, name, sizeof name, &hf) == MSA_EINVAL,
           "%s accepted", src);
}

int main(void) {
    unsetenv("HF_ENDPOINT");
    check_resolve("Qwen/Qwen2.5-0.5B:model.safetensors", NULL,
                  "https://huggingface.co/Qwen/Qwen2.5-0.5B/resolve/main/model.safetensors",
                  "model.safetensors", 1);
    check_resolve("org/repo@v1.0:sub/dir/w.gguf", NULL,
                  "https://huggingface.co/org/repo/resolve/v1.0/sub/dir/w.gguf", "w.gguf", 1);
    check_resolve("org/repo@refs/pr/3:a b.gguf", "https://hf-mirror.example/", 
                  "https://hf-mirror.example/org/repo/resolve/refs%2Fpr%2F3/a%20b.gguf", "a b.gguf", 1);
    check_resolve("https://huggingface.co/x/y/resolve/main/z.bin", NULL,
                  "https://huggingface.co/x/y/resolve/main/z.bin", "z.bin", 1);
    check_resolve("https://HuggingFace.co:443/x/y/resolve/main/z.bin", NULL,
                  "https://HuggingFace.co:443/x/y/resolve/main/z.bin", "z.bin", 1);
    check_resolve("https://example.org/models/m%2Bq8.gguf?download=1", NULL,
                  "https://example.org/models/m%2Bq8.gguf?download=1", "m+q8.gguf", 0);
    check_resolve("http://huggingface.co/x/y/resolve/main/z.bin", NULL,
                  "http://huggingface.co/x/y/resolve/main/z.bin", "z.bin", 0);
    setenv("HF_ENDPOINT", "http://127.0.0.1:8080", 1);
    check_resolve("a/b:c.gguf", NULL, "http://127.0.0.1:8080/a/b/resolve/main/c.gguf", "c.gguf", 1);
    check_resolve("http://127.0.0.1:8081/c.gguf", NULL, "http://127.0.0.1:8081/c.gguf", "c.gguf", 0);
    unsetenv("HF_ENDPOINT");

    check_bad("");
    check_bad("model.gguf");
    check_bad("org/repo");
    check_bad("org/repo:");
    check_bad("orgrepo:file");
    check_bad("org/re/po:file");
    check_bad("org/repo@:file");
    check_bad("org/repo:dir/");
    check_bad("https://example.org/");
    check_bad("https://example.org");

    char dir[512];
    setenv("XDG_DATA_HOME", "/x/data", 1);
    CHECK(msa_pull_models_dir(dir, sizeof dir) == MSA_OK && !strcmp(dir, "/x/data/msa-mem/models/"));
    unsetenv("XDG_DATA_HOME");
    setenv("HOME", "/home/u", 1);
    CHECK(msa_pull_models_dir(dir, sizeof dir) == MSA_OK &&
          !strcmp(dir, "/home/u/.local/share/msa-mem/models/"));
    CHECK(msa_pull_models_dir(dir, 8) == MSA_EINVAL);

    /* Refusals before any transfer. */
    msa_pull_params p = msa_pull_default_params();
    CHECK(p.max_retries == 5 && p.resume == 1 && p.overwrite == 0);
    p.sha256 = "xyz";
    CHECK(msa_pull("a/b:c.gguf", "/tmp/never", &p, NULL, NULL, NULL) == MSA_EINVAL);
    CHECK(msa_pull("nonsense", "/tmp/never", NULL, NULL, NULL, NULL) == MSA_EINVAL);
    CHECK(msa_pull(NULL, NULL, NULL, NULL, NULL, NULL) == MSA_EINVAL);
    char exists[] = "/tmp/msa-test-pull-XXXXXX";
    int fd = mkstemp(exists);
    CHECK(fd >= 0);
    close(fd);
    CHECK(msa_pull("https://example.invalid/x.gguf", exists, NULL, NULL, NULL, NULL) == MSA_EEXIST);
    unlink(exists);
    return t_done("test-pull");
}
