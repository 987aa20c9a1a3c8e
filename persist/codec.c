/*
 * codec.c: how one (layer, block) becomes one LMDB value and back.
 *
 * Lossless: each section (K, V, index keys) is split into byte planes
 * (plane j = byte j of every element; 2 planes for bf16/fp16, 4 for fp32)
 * and every plane is compressed with zstd on its own. A plane that zstd
 * cannot shrink (the low mantissa bytes of bf16 usually) is stored as is,
 * which also makes reading it a plain copy. Lossy (K and V only): each row
 * of head_dim values becomes fp8 e4m3 codes with one f32 scale per row
 * (amax / 448), then the same planes-and-zstd path.
 *
 * Choosing per plane (measured on KV-like bf16 planes of 128 KiB, EPYC):
 * a plane whose bytes look random in a 4 KiB sample (byte entropy above
 * 7.8 bits) is stored as is without running zstd at all; zstd could save
 * at most ~2% there and never did on mantissa planes. The other planes
 * (sign and exponent bytes) owe their ratio to zstd's Huffman coding of
 * literals, not to matches. At the default level 1 they are therefore
 * compressed as literals only: ZSTD_compressSequences with no sequences
 * Huffman-codes the plane without running a match finder. That replaced
 * the fast strategy with a 64-entry hash table and 7-byte minimum matches
 * (itself 2x as fast as plain level 1 at a better ratio: 0.46 vs 0.23
 * GB/s, 2.77x vs 2.53x), which found almost no matches: on the store
 * bench's KV-like data the ratio is the same to three digits (1.470x) and
 * the write takes 12-16% less CPU. Other levels are used as given. The
 * output is ordinary zstd frames either way, so the format did not change
 * and old blocks read as before.
 *
 * Every plane carries a CRC32C of its stored bytes and the header its own,
 * so a read verifies exactly what it returns; the plain planes have one
 * more CRC that fsck checks after decompression. The value layout is in
 * internal.h.
 */
#include "persist/internal.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_compressSequences (zstd >= 1.5.0) */
#include <zstd.h>

static _Thread_local ZSTD_CCtx *tl_cctx;
static _Thread_local int tl_cctx_level = -1000; /* level the context is set up for */
static _Thread_local ZSTD_DCtx *tl_dctx;
static _Thread_local uint8_t *tl_scratch;
static _Thread_local size_t tl_scratch_cap;

static _Thread_local uint8_t *tl_out;
static _Thread_local size_t tl_out_cap;

/* the encoder's output when it goes to a thread's reused buffer: memory
 * that stays mapped, so each value costs no fresh page faults */
static uint8_t *out_scratch(size_t n) {
    if (n > tl_out_cap) {
        void *p = realloc(tl_out, n);
        if (!p) return NULL;
        tl_out = p;
        tl_out_cap = n;
    }
    return tl_out;
}

static uint8_t *scratch(size_t n) {
    if (n > tl_scratch_cap) {
        void *p = realloc(tl_scratch, n);
        if (!p) return NULL;
        tl_scratch = p;
        tl_scratch_cap = n;
    }
    return tl_scratch;
}

/* ---- fp8 e4m3 (the "fn" variant: no infinities, max 448) ------------------ */

static float e4m3_table[256];
static int e4m3_ready;

static void e4m3_init(void) {
    for (int c = 0; c < 256; c++) {
        int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
        float v = e ? ldexpf(1.0f + m / 8.0f, e - 7) : ldexpf(m / 8.0f, -6);
        if (e == 15 && m == 7) v = NAN;
        e4m3_table[c] = s ? -v : v;
    }
    e4m3_ready = 1;
}

static uint8_t f32_to_e4m3(float x) {
    uint8_t s = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (!(a == a)) return 0x7f;
    if (a >= 448.0f) return s | 0x7e;
    if (a < 0.015625f) /* below 2^-6: subnormal steps of 2^-9 */
        return s | (uint8_t)nearbyintf(a * 512.0f);
    int e;
    float f = frexpf(a, &e); /* a = f * 2^e, f in [0.5, 1) */
    e -= 1;
    int m = (int)nearbyintf((f * 2.0f - 1.0f) * 8.0f);
    if (m == 8) { m = 0; e++; }
    if (e + 7 > 15 || (e + 7 == 15 && m == 7)) return s | 0x7e;
    return s | (uint8_t)((e + 7) << 3 | m);
}

static float load_f(const void *p, size_t i, msa_dtype dt) {
    if (dt == MSA_DTYPE_F32) return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return dt == MSA_DTYPE_BF16 ? msa_bf16_to_f32(h) : msa_f16_to_f32(h);
}

static void store_f(void *p, size_t i, msa_dtype dt, float v) {
    if (dt == MSA_DTYPE_F32) ((float *)p)[i] = v;
    else ((uint16_t *)p)[i] = dt == MSA_DTYPE_BF16 ? msa_f32_to_bf16(v) : msa_f32_to_f16(v);
}

/* ---- byte planes ----------------------------------------------------------- */

/* n elements of s bytes at src -> planes dst[j][0..n) */
static void shuffle(uint8_t *const *dst, const uint8_t *src, size_t n, int s) {
    if (s == 2) {
        uint8_t *a = dst[0], *b = dst[1];
        for (size_t i = 0; i < n; i++) { a[i] = src[2 * i]; b[i] = src[2 * i + 1]; }
    } else if (s == 4) {
        uint8_t *a = dst[0], *b = dst[1], *c = dst[2], *d = dst[3];
        for (size_t i = 0; i < n; i++) {
            a[i] = src[4 * i]; b[i] = src[4 * i + 1]; c[i] = src[4 * i + 2]; d[i] = src[4 * i + 3];
        }
    } else {
        memcpy(dst[0], src, n);
    }
}

static void unshuffle(uint8_t *dst, const uint8_t *const *src, size_t n, int s) {
    if (s == 2) {
        const uint8_t *a = src[0], *b = src[1];
        uint16_t *d16 = (uint16_t *)(void *)dst;
        for (size_t i = 0; i < n; i++) d16[i] = (uint16_t)(a[i] | b[i] << 8);
    } else if (s == 4) {
        const uint8_t *a = src[0], *b = src[1], *c = src[2], *d = src[3];
        uint32_t *d32 = (uint32_t *)(void *)dst;
        for (size_t i = 0; i < n; i++)
            d32[i] = (uint32_t)a[i] | (uint32_t)b[i] << 8 | (uint32_t)c[i] << 16 | (uint32_t)d[i] << 24;
    } else {
        memcpy(dst, src[0], n);
    }
}

/* ---- per-plane choice ---------------------------------------------------------- */

/* Byte entropy of a sample of the plane (up to 4 windows of 1 KiB spread
 * over it), in bits per byte, times 1024 to stay in integers. Counting is
 * ~10 GB/s; a 4 KiB sample of uniform bytes reads about 7.95 bits. */
static int plane_looks_random(const uint8_t *p, size_t n) {
    enum { WIN = 1024, NWIN = 4 };
    uint32_t h[256] = {0};
    size_t total = 0;
    if (n <= (size_t)WIN * NWIN) {
        for (size_t i = 0; i < n; i++) h[p[i]]++;
        total = n;
    } else {
        for (int w = 0; w < NWIN; w++) {
            const uint8_t *q = p + (n - WIN) / (NWIN - 1) * (size_t)w;
            for (int i = 0; i < WIN; i++) h[q[i]]++;
        }
        total = (size_t)WIN * NWIN;
    }
    if (total < 256) return 0; /* too few bytes to tell; let zstd try */
    double bits = 0, inv = 1.0 / (double)total;
    for (int i = 0; i < 256; i++)
        if (h[i]) {
            double q = h[i] * inv;
            bits -= q * log2(q);
        }
    return bits > 7.8;
}

/* Sets the thread's context up for `level` (see the top of the file). */
static int cctx_setup(int level) {
    if (!tl_cctx && !(tl_cctx = ZSTD_createCCtx())) return MSA_ENOMEM;
    if (tl_cctx_level == level) return MSA_OK;
    ZSTD_CCtx_reset(tl_cctx, ZSTD_reset_session_and_parameters);
    size_t r = ZSTD_CCtx_setParameter(tl_cctx, ZSTD_c_compressionLevel, level);
    if (level == 1) { /* entropy coding first; few, long matches */
        if (!ZSTD_isError(r)) r = ZSTD_CCtx_setParameter(tl_cctx, ZSTD_c_strategy, ZSTD_fast);
        if (!ZSTD_isError(r)) r = ZSTD_CCtx_setParameter(tl_cctx, ZSTD_c_windowLog, 17);
        if (!ZSTD_isError(r)) r = ZSTD_CCtx_setParameter(tl_cctx, ZSTD_c_hashLog, 6);
        if (!ZSTD_isError(r)) r = ZSTD_CCtx_setParameter(tl_cctx, ZSTD_c_minMatch, 7);
        if (!ZSTD_isError(r)) r = ZSTD_CCtx_setParameter(tl_cctx, ZSTD_c_targetLength, 0);
    }
    if (!ZSTD_isError(r)) r = ZSTD_CCtx_setParameter(tl_cctx, ZSTD_c_checksumFlag, 0);
    if (!ZSTD_isError(r)) r = ZSTD_CCtx_setParameter(tl_cctx, ZSTD_c_contentSizeFlag, 1);
    if (ZSTD_isError(r)) {
        tl_cctx_level = -1000;
        return MSA_EIO;
    }
    tl_cctx_level = level;
    return MSA_OK;
}

/* ---- sections ---------------------------------------------------------------- */

typedef struct section {
    const void *buf;  /* caller layout [heads][block_size][dim] */
    int heads, dim;
    msa_dtype dt;
    int lossy;
} section;

static int section_planes(const section *s) {
    return s->lossy ? 5 : (int)msa_dtype_size(s->dt);
}

/* bytes of plane p of a section with `rows` filled rows per head */
static size_t plane_len(const section *s, int p, size_t rows) {
    size_t e = (size_t)s->heads * rows * s->dim;
    if (!s->lossy) return e;
    return p == 0 ? e : (size_t)s->heads * rows;
}

static void section_init(section *sec, const msa_codec_shape *sh, int which,
                         const void *buf, int lossy) {
    sec->buf = buf;
    sec->heads = which == 2 ? sh->idx_key_heads : sh->n_kv_heads;
    sec->dim = which == 2 ? sh->idx_dim : sh->head_dim;
    sec->dt = which == 2 ? sh->idx_dtype : sh->kv_dtype;
    sec->lossy = which == 2 ? 0 : lossy;
}

/* Writes the plain planes of a section into planes[] (already sized). */
static void section_to_planes(const section *s, int bs, int n, uint8_t **planes,
                              msa_codec_err *err) {
    size_t es = msa_dtype_size(s->dt), head_elems = (size_t)n * s->dim;
    if (!s->lossy) {
        for (int h = 0; h < s->heads; h++) {
            uint8_t *dst[4];
            for (int j = 0; j < (int)es; j++) dst[j] = planes[j] + h * head_elems;
            shuffle(dst, (const uint8_t *)s->buf + (size_t)h * bs * s->dim * es, head_elems, (int)es);
        }
        return;
    }
    if (!e4m3_ready) e4m3_init();
    for (int h = 0; h < s->heads; h++)
        for (int t = 0; t < n; t++) {
            size_t src0 = ((size_t)h * bs + t) * s->dim, row = (size_t)h * n + t;
            float amax = 0;
            for (int i = 0; i < s->dim; i++) {
                float a = fabsf(load_f(s->buf, src0 + i, s->dt));
                if (a > amax) amax = a;
            }
            float scale = amax > 0 ? amax / 448.0f : 0.0f;
            float inv = scale > 0 ? 1.0f / scale : 0.0f;
            for (int i = 0; i < s->dim; i++) {
                float x = load_f(s->buf, src0 + i, s->dt);
                uint8_t c = f32_to_e4m3(x * inv);
                planes[0][row * s->dim + i] = c;
                if (err) {
                    double d = fabs((double)e4m3_table[c] * scale - x);
                    if (d > err->max_abs) err->max_abs = d;
                    err->sum_sq_err += d * d;
                    err->sum_sq += (double)x * x;
                }
            }
            uint8_t sb[4];
            memcpy(sb, &scale, 4);
            for (int j = 0; j < 4; j++) planes[1 + j][row] = sb[j];
        }
}

/* Plain planes of a section -> caller layout, rows past n zeroed. */
static void planes_to_section(const section *s, int bs, int n, const uint8_t *const *planes,
                              void *out) {
    size_t es = msa_dtype_size(s->dt), head_elems = (size_t)n * s->dim;
    size_t head_bytes = (size_t)bs * s->dim * es;
    for (int h = 0; h < s->heads; h++) {
        uint8_t *dst = (uint8_t *)out + h * head_bytes;
        if (!s->lossy) {
            const uint8_t *src[4];
            for (int j = 0; j < (int)es; j++) src[j] = planes[j] + h * head_elems;
            unshuffle(dst, src, head_elems, (int)es);
        } else {
            if (!e4m3_ready) e4m3_init();
            for (int t = 0; t < n; t++) {
                size_t row = (size_t)h * n + t;
                uint8_t sb[4] = {planes[1][row], planes[2][row], planes[3][row], planes[4][row]};
                float scale;
                memcpy(&scale, sb, 4);
                for (int i = 0; i < s->dim; i++)
                    store_f(dst, (size_t)t * s->dim + i, s->dt,
                            e4m3_table[planes[0][row * s->dim + i]] * scale);
            }
        }
        memset(dst + head_elems * es, 0, head_bytes - head_elems * es);
    }
}

/* ---- encode ------------------------------------------------------------------- */

static int block_encode(const msa_codec_shape *sh, int n, const void *k, const void *v,
                        const void *kidx, int level, int lossy, int to_scratch, void **out,
                        size_t *out_len, msa_codec_err *err) {
    *out = NULL;
    *out_len = 0;
    section sec[3];
    section_init(&sec[0], sh, 0, k, lossy);
    section_init(&sec[1], sh, 1, v, lossy);
    section_init(&sec[2], sh, 2, kidx, 0);
    size_t plen[MSA_BLOCK_MAX_PLANES], total = 0, bound = 0, raw = 0;
    int np = 0;
    for (int s = 0; s < 3; s++) {
        raw += (size_t)sec[s].heads * n * sec[s].dim * msa_dtype_size(sec[s].dt);
        for (int p = 0; p < section_planes(&sec[s]); p++) {
            plen[np] = plane_len(&sec[s], p, (size_t)n);
            total += plen[np];
            bound += ZSTD_compressBound(plen[np]);
            np++;
        }
    }
    size_t hdr = MSA_BLOCK_HDR + (size_t)np * 8;
    int f = msa_fault_point();
    uint8_t *plain = f == ENOMEM ? NULL : scratch(total);
    uint8_t *val = !plain ? NULL : to_scratch ? out_scratch(hdr + bound) : malloc(hdr + bound);
    if (!val) return msa_error(MSA_ENOMEM, "block encode: %zu bytes", hdr + bound + total);
    int zrc = cctx_setup(level);
    if (zrc) {
        if (!to_scratch) free(val);
        return msa_error(zrc, "block encode: zstd context for level %d", level);
    }
    uint8_t *pp[MSA_BLOCK_MAX_PLANES];
    size_t off = 0;
    for (int i = 0; i < np; i++) { pp[i] = plain + off; off += plen[i]; }
    for (int s = 0, i = 0; s < 3; i += section_planes(&sec[s]), s++)
        section_to_planes(&sec[s], sh->block_size, n, pp + i, err);
    uint32_t plain_crc = msa_crc32c(0, plain, total);
    size_t pos = hdr;
    for (int i = 0; i < np; i++) {
        size_t c = plen[i];
        if (!plane_looks_random(pp[i], plen[i])) {
            c = level == 1 ? ZSTD_compressSequences(tl_cctx, val + pos, bound - (pos - hdr), NULL, 0, pp[i], plen[i])
                           : ZSTD_compress2(tl_cctx, val + pos, bound - (pos - hdr), pp[i], plen[i]);
            if (ZSTD_isError(c)) {
                if (!to_scratch) free(val);
                return msa_error(MSA_EIO, "block encode: zstd: %s", ZSTD_getErrorName(c));
            }
        }
        uint32_t flag = 0;
        if (c >= plen[i]) { /* incompressible: store the plane as it is */
            memcpy(val + pos, pp[i], plen[i]);
            c = plen[i];
            flag = 0x80000000u;
        }
        msa_put_le32(val + MSA_BLOCK_HDR + 8 * i, (uint32_t)c | flag);
        msa_put_le32(val + MSA_BLOCK_HDR + 8 * i + 4, msa_crc32c(0, val + pos, c));
        pos += c;
    }
    msa_put_le32(val, MSA_BLOCK_MAGIC);
    val[8] = (uint8_t)sh->kv_dtype;
    val[9] = (uint8_t)sh->idx_dtype;
    val[10] = (uint8_t)lossy;
    val[11] = (uint8_t)np;
    msa_put_le32(val + 12, (uint32_t)n);
    msa_put_le32(val + 16, plain_crc);
    msa_put_le32(val + 20, (uint32_t)raw);
    msa_put_le32(val + 4, msa_crc32c(0, val + 8, hdr - 8));
    uint8_t *shrunk = to_scratch ? NULL : realloc(val, pos);
    *out = shrunk ? shrunk : val;
    *out_len = pos;
    return MSA_OK;
}

int msa_block_encode(const msa_codec_shape *sh, int n, const void *k, const void *v,
                     const void *kidx, int level, int lossy, void **out, size_t *out_len,
                     msa_codec_err *err) {
    return block_encode(sh, n, k, v, kidx, level, lossy, 0, out, out_len, err);
}

int msa_block_encode_scratch(const msa_codec_shape *sh, int n, const void *k, const void *v,
                             const void *kidx, int level, int lossy, const void **out,
                             size_t *out_len, msa_codec_err *err) {
    void *o = NULL;
    int rc = block_encode(sh, n, k, v, kidx, level, lossy, 1, &o, out_len, err);
    *out = o;
    return rc;
}

/* ---- decode ------------------------------------------------------------------- */

typedef struct parsed {
    int np, n, lossy;
    size_t off[MSA_BLOCK_MAX_PLANES], len[MSA_BLOCK_MAX_PLANES];
    uint32_t raw_flag[MSA_BLOCK_MAX_PLANES], crc[MSA_BLOCK_MAX_PLANES], plain_crc;
} parsed;

static int parse(const uint8_t *val, size_t len, parsed *p) {
    if (len < MSA_BLOCK_HDR) return msa_error(MSA_ECORRUPT, "block value too short (%zu bytes)", len);
    if (msa_get_le32(val) != MSA_BLOCK_MAGIC) return msa_error(MSA_ECORRUPT, "bad block magic");
    p->np = val[11];
    size_t hdr = MSA_BLOCK_HDR + (size_t)p->np * 8;
    if (p->np < 1 || p->np > MSA_BLOCK_MAX_PLANES || hdr > len)
        return msa_error(MSA_ECORRUPT, "bad block header (plane count %d)", p->np);
    if (msa_crc32c(0, val + 8, hdr - 8) != msa_get_le32(val + 4))
        return msa_error(MSA_ECORRUPT, "block header checksum mismatch");
    p->lossy = val[10];
    p->n = (int)msa_get_le32(val + 12);
    p->plain_crc = msa_get_le32(val + 16);
    size_t pos = hdr;
    for (int i = 0; i < p->np; i++) {
        uint32_t w = msa_get_le32(val + MSA_BLOCK_HDR + 8 * i);
        p->raw_flag[i] = w & 0x80000000u;
        p->len[i] = w & 0x7fffffffu;
        p->crc[i] = msa_get_le32(val + MSA_BLOCK_HDR + 8 * i + 4);
        p->off[i] = pos;
        pos += p->len[i];
    }
    if (pos != len) return msa_error(MSA_ECORRUPT, "block planes add up to %zu of %zu bytes", pos, len);
    return MSA_OK;
}

/* Asks the kernel to read [p, p + n) of the map now, in large requests.
 * The store's map has readahead off (MDB_NORDAHEAD), so that reading the
 * index keys at the end of a block does not pull in its K and V; what a
 * read does need is fetched here in one go instead of page by page. Only a
 * hint: errors are ignored. */
void msa_prefetch(const void *p, size_t n) {
    static long page;
    if (!page) page = sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096;
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(page - 1);
    if (n) (void)madvise((void *)a, (uintptr_t)p + n - a, MADV_WILLNEED);
}

int msa_block_verify(const void *val, size_t len) {
    parsed p;
    int rc = parse(val, len, &p);
    if (!rc) msa_prefetch((const uint8_t *)val + p.off[0], len - p.off[0]);
    if (rc) return rc;
    for (int i = 0; i < p.np; i++)
        if (msa_crc32c(0, (const uint8_t *)val + p.off[i], p.len[i]) != p.crc[i])
            return msa_error(MSA_ECORRUPT, "plane %d checksum mismatch", i);
    return MSA_OK;
}

int msa_block_decode(const msa_codec_shape *sh, const void *vp, size_t len, void *k, void *v,
                     void *kidx, int *n_tokens, int full) {
    const uint8_t *val = vp;
    parsed p;
    int rc = parse(val, len, &p);
    if (rc) return rc;
    if (p.n < 1 || p.n > sh->block_size || val[8] != sh->kv_dtype || val[9] != sh->idx_dtype)
        return msa_error(MSA_ECORRUPT, "block header does not match the session's shapes");
    if (n_tokens) *n_tokens = p.n;
    section sec[3];
    void *outs[3] = {k, v, kidx};
    for (int s = 0; s < 3; s++) section_init(&sec[s], sh, s, outs[s], p.lossy);
    int expect = 0;
    for (int s = 0; s < 3; s++) expect += section_planes(&sec[s]);
    if (expect != p.np) return msa_error(MSA_ECORRUPT, "block has %d planes, shapes say %d", p.np, expect);
    if (full && (!k || !v || !kidx)) full = 0;
    if (k && v && kidx) full = 1;
    /* the planes this read needs: all, or from the first one of the index
     * keys (the last section) to the end */
    size_t from = p.off[(k || v || full) ? 0 : section_planes(&sec[0]) + section_planes(&sec[1])];
    if (k || v || kidx || full) msa_prefetch(val + from, len - from);
    /* scratch for planes that must be decompressed */
    size_t need = 0;
    for (int s = 0, i = 0; s < 3; i += section_planes(&sec[s]), s++)
        for (int j = 0; j < section_planes(&sec[s]); j++)
            if ((outs[s] || full) && !p.raw_flag[i + j]) need += plane_len(&sec[s], j, (size_t)p.n);
    uint8_t *buf = scratch(need ? need : 1);
    if (!buf) return msa_error(MSA_ENOMEM, "block decode: %zu bytes", need);
    if (!tl_dctx && !(tl_dctx = ZSTD_createDCtx())) return msa_error(MSA_ENOMEM, "zstd context");
    const uint8_t *pl[MSA_BLOCK_MAX_PLANES] = {0};
    uint32_t plain_crc = 0;
    size_t off = 0;
    for (int s = 0, i = 0; s < 3; i += section_planes(&sec[s]), s++) {
        if (!outs[s] && !full) continue;
        for (int j = 0; j < section_planes(&sec[s]); j++) {
            int q = i + j;
            size_t want = plane_len(&sec[s], j, (size_t)p.n);
            if (msa_crc32c(0, val + p.off[q], p.len[q]) != p.crc[q])
                return msa_error(MSA_ECORRUPT, "plane %d checksum mismatch", q);
            if (p.raw_flag[q]) {
                if (p.len[q] != want) return msa_error(MSA_ECORRUPT, "plane %d has %zu bytes, not %zu", q, p.len[q], want);
                pl[q] = val + p.off[q];
            } else {
                size_t got = ZSTD_decompressDCtx(tl_dctx, buf + off, want, val + p.off[q], p.len[q]);
                if (ZSTD_isError(got) || got != want)
                    return msa_error(MSA_ECORRUPT, "plane %d does not decompress (%s)", q,
                                     ZSTD_isError(got) ? ZSTD_getErrorName(got) : "short");
                pl[q] = buf + off;
                off += want;
            }
            if (full) plain_crc = msa_crc32c(plain_crc, pl[q], want);
        }
    }
    if (full && plain_crc != p.plain_crc) return msa_error(MSA_ECORRUPT, "decoded data checksum mismatch");
    for (int s = 0, i = 0; s < 3; i += section_planes(&sec[s]), s++)
        if (outs[s]) planes_to_section(&sec[s], sh->block_size, p.n, pl + i, outs[s]);
    return MSA_OK;
}
