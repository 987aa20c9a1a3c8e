/*
 * fuzz-export.c: libFuzzer target for export files ("MSAMEMX1",
 * persist/ops.c), read by msa_store_import() into a store that lives for
 * the whole run (in /dev/shm, not durable). A session the import accepts
 * is removed again, so that every input starts from the same store.
 *
 * The input is an export file whose checksums are recomputed first in 7 of
 * 8 inputs (the header's, every record's, every token chunk's and every
 * block value's: fuzz_util.h), so that mutations reach the record checks
 * behind them. Built by tests/fuzz.cmake against the instrumented library.
 */
#include <stdlib.h>

#include "engine/msa.h"
#include "tests/fuzz_util.h"

static msa_store *store;
static char dir[64];

static void cleanup(void) {
    msa_store_close(store);
    store = NULL;
    fuzz_rmtree(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    snprintf(dir, sizeof dir, "/dev/shm/msa-fuzz-export-XXXXXX");
    if (!mkdtemp(dir)) {
        snprintf(dir, sizeof dir, "/tmp/msa-fuzz-export-XXXXXX");
        if (!mkdtemp(dir)) abort();
    }
    msa_store_params p = msa_store_default_params();
    p.dir = dir;
    p.durable = 0;
    p.map_size = 64u << 20;
    if (msa_store_open(&p, &store) != MSA_OK) {
        fprintf(stderr, "fuzz-export: %s\n", msa_last_error());
        abort();
    }
    atexit(cleanup);
    return 0;
}

/* Record types of persist/ops.c. */
enum { REC_SESSION = 1, REC_TOKENS = 2, REC_BLOCK = 3, REC_END = 4 };

/* Recomputes the checksums. A record length past the end of the file is
 * cut to what is left unless `keep_len`: import allocates the announced
 * length before reading (up to 1 GiB), which under ASan costs ~10 ms an
 * input and would hold the run to ~100 inputs a second. */
static void fix(uint8_t *b, size_t size, int keep_len) {
    if (size < 16) return;
    fuzz_put_le32(b + 12, fuzz_crc32c(0, b, 12));
    size_t pos = 16;
    while (size - pos >= 12) {
        uint32_t type = fuzz_le32(b + pos), len = fuzz_le32(b + pos + 4);
        if (!keep_len && len > size - pos - 12) {
            len = (uint32_t)(size - pos - 12);
            fuzz_put_le32(b + pos + 4, len);
        }
        if (len > size - pos - 8 || size - pos - 8 - len < 4) break;
        uint8_t *p = b + pos + 8;
        if (type == REC_TOKENS && len >= 12)
            fuzz_put_le32(p + 4, fuzz_crc32c(0, p + 8, len - 8));
        if (type == REC_BLOCK && len >= 16) {
            uint32_t el = fuzz_le32(p + 12);
            if (el <= len - 16) {
                fuzz_fix_rec(p + 16, el);
                fuzz_fix_block(p + 16 + el, len - 16 - el);
            }
        }
        if (type == REC_SESSION && len >= 4) {
            uint32_t nl = fuzz_le32(p);
            if (nl <= len - 4) fuzz_fix_rec(p + 4 + nl, len - 4 - nl);
        }
        fuzz_put_le32(p + len, fuzz_crc32c(fuzz_crc32c(0, b + pos, 8), p, len));
        pos += 8 + len + 4;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > (1 << 20)) return 0;
    uint8_t *b = malloc(size ? size : 1);
    if (!b) return 0;
    memcpy(b, data, size);
    /* the last byte decides (the header's first bytes are the magic): 7 in
     * 8 get their checksums recomputed; lengths past the end are kept in 1
     * of 256 (each such input costs a huge allocation, see fix()) */
    uint8_t last = size ? data[size - 1] : 0;
    if ((last & 7) != 7) fix(b, size, last == 0xfe);
    else if (last != 0xff && size > 16) { /* checksums as they are, lengths cut */
        uint8_t *c = malloc(size);
        if (c) {
            memcpy(c, b, size);
            fix(c, size, 0);
            for (size_t i = 16; i + 8 <= size;) { /* copy the cut lengths back */
                uint32_t len = fuzz_le32(c + i + 4);
                memcpy(b + i + 4, c + i + 4, 4);
                if (len > size - i - 8) break;
                i += 8 + (size_t)len + 4;
            }
            free(c);
        }
    }
    char path[32];
    fuzz_path(0, b, size, path);
    free(b);
    if (msa_store_import(store, path, "fuzz") == MSA_OK) {
        /* read it back: the record, every token */
        msa_store_session *ss = NULL;
        if (msa_store_session_open(store, "fuzz", NULL, &ss) == MSA_OK) {
            msa_store_session_info si;
            if (msa_store_session_stat(ss, &si) == MSA_OK && si.n_tokens <= (1u << 20)) {
                int32_t *tok = malloc((size_t)si.n_tokens * sizeof *tok + 4);
                if (tok) msa_store_read_tokens(ss, 0, si.n_tokens, tok);
                free(tok);
            }
            msa_store_session_close(ss);
        }
        /* FUZZ_STRICT=1: an accepted file must also pass fsck */
        if (getenv("FUZZ_STRICT")) {
            uint64_t nf = 0;
            if (msa_store_fsck(store, NULL, NULL, &nf) != MSA_OK || nf) __builtin_trap();
        }
        if (msa_store_remove(store, "fuzz") != MSA_OK) __builtin_trap();
    }
    return 0;
}
