/*
 * fuzz_replay.c: a main() for the fuzz targets in ordinary builds, so that
 * the default test run replays every seed and every input that once made a
 * target crash (tests/fuzz/<target>/), with whatever compiler and
 * sanitizers the build uses, and without clang or libFuzzer.
 *
 *   fuzz-replay-gguf FILE|DIR...
 *
 * Runs LLVMFuzzerInitialize (when the target has one), then the target on
 * every file given, or every file in the folders given, and prints how many
 * ran. A crash is the failure; exit 1 when no input was found.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int n_run;

static void run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    size_t cap = 1 << 16, n = 0;
    uint8_t *d = malloc(cap);
    for (;;) {
        if (!d) { fprintf(stderr, "out of memory\n"); exit(1); }
        n += fread(d + n, 1, cap - n, f);
        if (n < cap) break;
        d = realloc(d, cap *= 2);
    }
    fclose(f);
    /* a copy of exactly n bytes, so that ASan sees reads past the end */
    uint8_t *e = malloc(n ? n : 1);
    memcpy(e, d, n);
    free(d);
    LLVMFuzzerTestOneInput(e, n);
    free(e);
    n_run++;
}

static int by_name(const struct dirent **a, const struct dirent **b) {
    return strcmp((*a)->d_name, (*b)->d_name);
}

int main(int argc, char **argv) {
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) { perror(argv[i]); return 1; }
        if (!S_ISDIR(st.st_mode)) { run_file(argv[i]); continue; }
        struct dirent **ents;
        int n = scandir(argv[i], &ents, NULL, by_name);
        for (int j = 0; j < n; j++) {
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", argv[i], ents[j]->d_name);
            if (ents[j]->d_name[0] != '.' && stat(p, &st) == 0 && S_ISREG(st.st_mode)) run_file(p);
            free(ents[j]);
        }
        free(ents);
    }
    printf("%s: %d inputs replayed, no crash\n", argv[0], n_run);
    return n_run ? 0 : 1;
}
