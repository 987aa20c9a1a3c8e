/*
 * fuzz-store-records.c: libFuzzer target for the store's record decoders
 * (persist/): the session record (msa_srec_decode), the block entry
 * (msa_bent_decode), the block codec (msa_block_verify,
 * msa_block_decode) and the segment pointer (msa_segptr_decode, and
 * msa_segs_resolve against a store directory with no segments). They read
 * what LMDB hands back, i.e. whatever a damaged or hostile data.mdb holds.
 *
 * Input: byte 0 picks the decoder; for the codec, bytes 1..4 pick the shape
 * (KV heads, head dim, index key heads and dim, block size, dtypes) and the
 * rest is the value. Checksums are fixed up first in 7 of 8 inputs
 * (fuzz_util.h). Built by tests/fuzz.cmake against the instrumented library.
 */
#include <stdlib.h>

#include "persist/store_int.h"
#include "tests/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size > (1 << 20)) return 0;
    int fix = (data[0] & 0x38) != 0x38;
    uint8_t *b = malloc(size);
    if (!b) return 0;
    memcpy(b, data, size);
    switch (data[0] & 3) {
    case 0: {
        if (fix) fuzz_fix_rec(b + 1, size - 1);
        MDB_val v = {size - 1, b + 1};
        msa_srec r;
        msa_srec_decode(&v, &r);
        break;
    }
    case 1: {
        if (fix) fuzz_fix_rec(b + 1, size - 1);
        MDB_val v = {size - 1, b + 1};
        msa_bent e;
        msa_bent_decode(&v, &e);
        break;
    }
    case 3: {
        uint8_t *v = b + 1;
        size_t len = size - 1;
        if (fix && len >= MSA_SEGPTR_LEN) msa_put_le32(v + 4, msa_crc32c(0, v + 8, MSA_SEGPTR_LEN - 8));
        msa_segptr p;
        msa_segptr_decode(v, len, &p);
        msa_value_stored_len(v, len);
        static msa_segs *segs;
        if (!segs) msa_segs_new("/nonexistent/msa-fuzz-store", &segs);
        MDB_val mv = {len, v};
        if (segs) msa_segs_resolve(segs, &mv);
        break;
    }
    default: {
        if (size < 5) break;
        static const msa_dtype dts[4] = {MSA_DTYPE_F32, MSA_DTYPE_F16, MSA_DTYPE_BF16,
                                         MSA_DTYPE_F32};
        msa_codec_shape sh;
        sh.n_kv_heads = 1 + (b[1] & 3);
        sh.head_dim = 1 + (b[1] >> 2 & 15);
        sh.idx_key_heads = 1 + (b[2] & 3);
        sh.idx_dim = 1 + (b[2] >> 2 & 15);
        sh.block_size = 1 + (b[3] & 31);
        sh.kv_dtype = dts[b[4] & 3];
        sh.idx_dtype = dts[b[4] >> 2 & 3];
        uint8_t *v = b + 5;
        size_t len = size - 5;
        if (fix) fuzz_fix_block(v, len);
        size_t kv = (size_t)sh.n_kv_heads * sh.block_size * sh.head_dim * 4;
        size_t ki = (size_t)sh.idx_key_heads * sh.block_size * sh.idx_dim * 4;
        void *k = malloc(kv), *vv = malloc(kv), *ix = malloc(ki);
        int nt = 0;
        if (k && vv && ix) {
            msa_block_verify(v, len);
            msa_block_decode(&sh, v, len, k, vv, ix, &nt, 1);
            msa_block_decode(&sh, v, len, NULL, NULL, ix, &nt, 0);
        }
        free(k);
        free(vv);
        free(ix);
        break;
    }
    }
    free(b);
    return 0;
}
