/*
 * gguf.c: the GGUF reader. The file is mapped read-only and parsed once at
 * open with a bounds-checked cursor; every count is checked against the
 * bytes left before anything is allocated for it, so a hostile header cannot
 * make us allocate more than a small multiple of the file size. Keys and
 * tensor names go into hash tables (FNV-1a, open addressing), string arrays
 * get a table of item offsets, so that every getter is O(1) and reads only
 * bytes that were validated at open.
 *
 * Layout read (GGUF v2/v3, little-endian):
 *   u32 magic "GGUF", u32 version, u64 n_tensors, u64 n_kv
 *   n_kv x { string key, u32 type, value }       string = u64 len + bytes
 *                                                array  = u32 elem, u64 n, n values
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset }
 *   padding to general.alignment (default 32), then the data section;
 *   tensor offsets are relative to its start and multiples of the alignment.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "engine/model/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"

enum { GGUF_MAGIC = 0x46554747u, GGUF_DEFAULT_ALIGN = 32, MAX_ARRAY_DEPTH = 4 };

typedef struct kv_entry {
    char *key;              /* NUL-terminated copy */
    msa_gguf_type type;
    msa_gguf_type elem;     /* arrays: element type */
    uint64_t n;             /* arrays: element count */
    size_t val;             /* file offset of the value (arrays: first element;
                               strings: the u64 length) */
    uint64_t *str_off;      /* string arrays: [n] offsets of each item's u64
                               length field */
} kv_entry;

struct msa_gguf {
    const uint8_t *base;    /* the whole file */
    size_t size;
    int mapped;             /* 1: munmap at close */
    int version;
    kv_entry *kv;           /* [n_kv] in file order */
    int64_t n_kv;
    int64_t *kv_hash;       /* [kv_cap] index into kv or -1 */
    uint64_t kv_cap;
    msa_gguf_tensor *tensors; /* [n_tensors] */
    int64_t n_tensors;
    int64_t *t_hash;        /* [t_cap] */
    uint64_t t_cap;
    size_t data_start;
    uint32_t alignment;
    uint64_t dev, ino;      /* the file opened (0, 0: from memory) */
};

/* ---- little helpers -------------------------------------------------------- */

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t rd_u64_at(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Bounds-checked cursor over the file. */
typedef struct cursor {
    const uint8_t *p;
    size_t size, off;
} cursor;

static int need(const cursor *c, uint64_t n, const char *what) {
    if (n > c->size - c->off)
        return msa_error(MSA_EFORMAT,
                         "GGUF truncated at offset %zu: %s needs %llu bytes, %zu left",
                         c->off, what, (unsigned long long)n, c->size - c->off);
    return MSA_OK;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what) {
    int rc = need(c, 4, what);
    if (rc) return rc;
    memcpy(v, c->p + c->off, 4);
    c->off += 4;
    return MSA_OK;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what) {
    int rc = need(c, 8, what);
    if (rc) return rc;
    memcpy(v, c->p + c->off, 8);
    c->off += 8;
    return MSA_OK;
}

/* Reads a string header and skips its bytes: *at = offset of the bytes. */
static int rd_str(cursor *c, size_t *at, uint64_t *len, const char *what) {
    int rc = rd_u64(c, len, what);
    if (rc) return rc;
    if ((rc = need(c, *len, what))) return rc;
    *at = c->off;
    c->off += (size_t)*len;
    return MSA_OK;
}

static size_t scalar_size(uint32_t t) {
    switch (t) {
    case MSA_GGUF_UINT8: case MSA_GGUF_INT8: case MSA_GGUF_BOOL: return 1;
    case MSA_GGUF_UINT16: case MSA_GGUF_INT16: return 2;
    case MSA_GGUF_UINT32: case MSA_GGUF_INT32: case MSA_GGUF_FLOAT32: return 4;
    case MSA_GGUF_UINT64: case MSA_GGUF_INT64: case MSA_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

static const char *type_name(int t) {
    static const char *names[] = {"uint8", "int8", "uint16", "int16", "uint32",
                                  "int32", "float32", "bool", "string", "array",
                                  "uint64", "int64", "float64"};
    return t >= 0 && t <= 12 ? names[t] : "unknown";
}

const char *msa_ggml_type_name(int type) {
    static const char *names[] = {
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0",
        "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS",
        "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8",
        "I16", "I32", "I64", "F64", "IQ1_M", "BF16", "Q4_0_4_4", "Q4_0_4_8",
        "Q4_0_8_8", "TQ1_0", "TQ2_0"};
    static _Thread_local char buf[32];
    if (type >= 0 && type < (int)(sizeof names / sizeof names[0])) return names[type];
    snprintf(buf, sizeof buf, "type %d", type);
    return buf;
}

/* ---- parsing ------------------------------------------------------------------ */

/* Skips (validating) a value of type t at the cursor; arrays recurse. For
 * string arrays, when offs is not NULL, records each item's offset. */
static int skip_value(cursor *c, uint32_t t, int depth, uint64_t *offs_n,
                      uint64_t **offs, const char *key) {
    int rc;
    if (t == MSA_GGUF_STRING) {
        size_t at;
        uint64_t len;
        return rd_str(c, &at, &len, key);
    }
    if (t == MSA_GGUF_ARRAY) {
        uint32_t elem;
        uint64_t n;
        if (depth >= MAX_ARRAY_DEPTH)
            return msa_error(MSA_EFORMAT, "GGUF key '%s': arrays nested too deep", key);
        if ((rc = rd_u32(c, &elem, key)) || (rc = rd_u64(c, &n, key))) return rc;
        if (elem == MSA_GGUF_STRING) {
            if (n > (c->size - c->off) / 8)
                return msa_error(MSA_EFORMAT,
                                 "GGUF key '%s': %llu strings cannot fit in the %zu bytes left",
                                 key, (unsigned long long)n, c->size - c->off);
            uint64_t *o = NULL;
            if (offs && n) {
                o = malloc((size_t)n * sizeof *o);
                if (!o) return msa_error(MSA_ENOMEM, "GGUF key '%s': string table", key);
            }
            for (uint64_t i = 0; i < n; i++) {
                size_t at;
                uint64_t len;
                if (o) o[i] = c->off;
                if ((rc = rd_str(c, &at, &len, key))) {
                    free(o);
                    return rc;
                }
            }
            if (offs) {
                *offs = o;
                *offs_n = n;
            }
            return MSA_OK;
        }
        if (elem == MSA_GGUF_ARRAY) {
            if (n > (c->size - c->off) / 12)
                return msa_error(MSA_EFORMAT, "GGUF key '%s': array count %llu too large",
                                 key, (unsigned long long)n);
            for (uint64_t i = 0; i < n; i++)
                if ((rc = skip_value(c, MSA_GGUF_ARRAY, depth + 1, NULL, NULL, key)))
                    return rc;
            return MSA_OK;
        }
        size_t es = scalar_size(elem);
        if (!es)
            return msa_error(MSA_EFORMAT, "GGUF key '%s': unknown array element type %u",
                             key, elem);
        if (n > (c->size - c->off) / es)
            return msa_error(MSA_EFORMAT,
                             "GGUF truncated at offset %zu: array '%s' of %llu x %zu bytes",
                             c->off, key, (unsigned long long)n, es);
        c->off += (size_t)n * es;
        return MSA_OK;
    }
    size_t es = scalar_size(t);
    if (!es) return msa_error(MSA_EFORMAT, "GGUF key '%s': unknown value type %u", key, t);
    if ((rc = need(c, es, key))) return rc;
    c->off += es;
    return MSA_OK;
}

static char *copy_name(const uint8_t *p, uint64_t len) {
    if (memchr(p, 0, (size_t)len)) return NULL;
    char *s = malloc((size_t)len + 1);
    if (!s) return NULL;
    memcpy(s, p, (size_t)len);
    s[len] = 0;
    return s;
}

static uint64_t pow2_cap(uint64_t n) {
    uint64_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    return cap;
}

static const kv_entry *kv_find(const msa_gguf *g, const char *key) {
    if (!g || !key || !g->kv_cap) return NULL;
    size_t len = strlen(key);
    uint64_t mask = g->kv_cap - 1;
    for (uint64_t h = fnv1a(key, len) & mask;; h = (h + 1) & mask) {
        int64_t i = g->kv_hash[h];
        if (i < 0) return NULL;
        if (strcmp(g->kv[i].key, key) == 0) return &g->kv[i];
    }
}

static int64_t tensor_index(const msa_gguf *g, const char *name) {
    if (!g || !name || !g->t_cap) return -1;
    uint64_t mask = g->t_cap - 1;
    for (uint64_t h = fnv1a(name, strlen(name)) & mask;; h = (h + 1) & mask) {
        int64_t i = g->t_hash[h];
        if (i < 0) return -1;
        if (strcmp(g->tensors[i].name, name) == 0) return i;
    }
}

/* Two tensors whose bytes overlap are refused: in a file written by any
 * GGUF writer each tensor has its own range, so an overlap means a crafted
 * or damaged table (and would let one tensor's bytes stand for another's). */
static int cmp_by_data(const void *a, const void *b) {
    const msa_gguf_tensor *x = *(const msa_gguf_tensor *const *)a,
                          *y = *(const msa_gguf_tensor *const *)b;
    return x->data < y->data ? -1 : x->data > y->data;
}

static int check_overlap(msa_gguf *g) {
    int64_t n = 0;
    for (int64_t i = 0; i < g->n_tensors; i++) n += g->tensors[i].data && g->tensors[i].size;
    if (n < 2) return MSA_OK;
    const msa_gguf_tensor **v = malloc((size_t)n * sizeof *v);
    if (!v) return msa_error(MSA_ENOMEM, "GGUF tensor table");
    n = 0;
    for (int64_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].data && g->tensors[i].size) v[n++] = &g->tensors[i];
    qsort(v, (size_t)n, sizeof *v, cmp_by_data);
    int rc = MSA_OK;
    const uint8_t *d0 = g->base + g->data_start;
    for (int64_t i = 0; i + 1 < n && !rc; i++) {
        const uint8_t *a = v[i]->data, *b = v[i + 1]->data;
        if ((size_t)(b - a) < v[i]->size)
            rc = msa_error(MSA_EFORMAT, "GGUF tensors '%s' (offset %zu, %zu bytes) and '%s' "
                           "(offset %zu) overlap", v[i]->name, (size_t)(a - d0), v[i]->size,
                           v[i + 1]->name, (size_t)(b - d0));
    }
    free(v);
    return rc;
}

static int parse(msa_gguf *g) {
    cursor c = {g->base, g->size, 0};
    uint32_t magic, version;
    uint64_t n_tensors, n_kv;
    int rc;

    if ((rc = rd_u32(&c, &magic, "magic"))) return rc;
    if (magic != GGUF_MAGIC) return msa_error(MSA_EFORMAT, "not a GGUF file (bad magic)");
    if ((rc = rd_u32(&c, &version, "version"))) return rc;
    if (version != 2 && version != 3) {
        if ((version & 0xffffu) == 0 && (version >> 24) >= 1 && (version >> 24) <= 3)
            return msa_error(MSA_EVERSION, "big-endian GGUF files are not supported");
        return msa_error(MSA_EVERSION, "GGUF version %u (versions 2 and 3 are read)", version);
    }
    g->version = (int)version;
    if ((rc = rd_u64(&c, &n_tensors, "tensor count")) || (rc = rd_u64(&c, &n_kv, "key count")))
        return rc;
    /* A key/value takes at least 13 bytes, a tensor description 32. */
    if (n_kv > (c.size - c.off) / 13)
        return msa_error(MSA_EFORMAT, "GGUF claims %llu keys in %zu bytes",
                         (unsigned long long)n_kv, c.size);
    if (n_tensors > (c.size - c.off) / 32)
        return msa_error(MSA_EFORMAT, "GGUF claims %llu tensors in %zu bytes",
                         (unsigned long long)n_tensors, c.size);

    g->kv = calloc(n_kv ? n_kv : 1, sizeof *g->kv);
    g->kv_cap = pow2_cap(n_kv);
    g->kv_hash = malloc(g->kv_cap * sizeof *g->kv_hash);
    if (!g->kv || !g->kv_hash) return msa_error(MSA_ENOMEM, "GGUF key table");
    memset(g->kv_hash, 0xff, g->kv_cap * sizeof *g->kv_hash);

    for (uint64_t i = 0; i < n_kv; i++) {
        kv_entry *e = &g->kv[i];
        size_t at;
        uint64_t len;
        uint32_t t;
        if ((rc = rd_str(&c, &at, &len, "key"))) return rc;
        if (!(e->key = copy_name(c.p + at, len)))
            return memchr(c.p + at, 0, (size_t)len)
                       ? msa_error(MSA_EFORMAT, "GGUF key at offset %zu contains a NUL", at)
                       : msa_error(MSA_ENOMEM, "GGUF key");
        g->n_kv = (int64_t)i + 1;
        if ((rc = rd_u32(&c, &t, e->key))) return rc;
        e->type = (msa_gguf_type)t;
        if (t == MSA_GGUF_ARRAY) {
            uint32_t elem;
            uint64_t n;
            cursor peek = c;
            if ((rc = rd_u32(&peek, &elem, e->key)) || (rc = rd_u64(&peek, &n, e->key)))
                return rc;
            e->elem = (msa_gguf_type)elem;
            e->n = n;
            e->val = peek.off;
            uint64_t n_str = 0;
            if ((rc = skip_value(&c, t, 0, &n_str, &e->str_off, e->key))) return rc;
        } else {
            e->val = c.off;
            if ((rc = skip_value(&c, t, 0, NULL, NULL, e->key))) return rc;
        }
        /* Insert; duplicates are malformed. */
        uint64_t mask = g->kv_cap - 1;
        uint64_t h = fnv1a(e->key, strlen(e->key)) & mask;
        for (; g->kv_hash[h] >= 0; h = (h + 1) & mask)
            if (strcmp(g->kv[g->kv_hash[h]].key, e->key) == 0)
                return msa_error(MSA_EFORMAT, "GGUF key '%s' appears twice", e->key);
        g->kv_hash[h] = (int64_t)i;
    }

    /* Alignment. */
    g->alignment = GGUF_DEFAULT_ALIGN;
    const kv_entry *al = kv_find(g, "general.alignment");
    if (al) {
        uint32_t a;
        if (al->type != MSA_GGUF_UINT32)
            return msa_error(MSA_EFORMAT, "GGUF general.alignment is %s, not uint32",
                             type_name(al->type));
        memcpy(&a, g->base + al->val, 4);
        if (a == 0 || (a & (a - 1)) || a > (1u << 20))
            return msa_error(MSA_EFORMAT, "GGUF general.alignment %u is not a power of two", a);
        g->alignment = a;
    }

    /* Tensor descriptions. */
    g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *g->tensors);
    g->t_cap = pow2_cap(n_tensors);
    g->t_hash = malloc(g->t_cap * sizeof *g->t_hash);
    if (!g->tensors || !g->t_hash) return msa_error(MSA_ENOMEM, "GGUF tensor table");
    memset(g->t_hash, 0xff, g->t_cap * sizeof *g->t_hash);
    uint64_t *offsets = malloc((n_tensors ? n_tensors : 1) * sizeof *offsets);
    if (!offsets) return msa_error(MSA_ENOMEM, "GGUF tensor offsets");

    for (uint64_t i = 0; i < n_tensors; i++) {
        msa_gguf_tensor *t = &g->tensors[i];
        size_t at;
        uint64_t len, ne;
        uint32_t nd, type;
        char *name;
        if ((rc = rd_str(&c, &at, &len, "tensor name"))) goto fail;
        if (!(name = copy_name(c.p + at, len))) {
            rc = memchr(c.p + at, 0, (size_t)len)
                     ? msa_error(MSA_EFORMAT, "GGUF tensor name at offset %zu contains a NUL", at)
                     : msa_error(MSA_ENOMEM, "GGUF tensor name");
            goto fail;
        }
        t->name = name;
        g->n_tensors = (int64_t)i + 1;
        if ((rc = rd_u32(&c, &nd, name))) goto fail;
        if (nd < 1 || nd > 4) {
            rc = msa_error(MSA_EFORMAT, "GGUF tensor '%s' has %u dimensions", name, nd);
            goto fail;
        }
        t->n_dims = (int)nd;
        for (int d = 0; d < 4; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < nd; d++) {
            if ((rc = rd_u64(&c, &ne, name))) goto fail;
            if (ne > (uint64_t)INT64_MAX) {
                rc = msa_error(MSA_EFORMAT, "GGUF tensor '%s': dimension %u is %llu", name, d,
                               (unsigned long long)ne);
                goto fail;
            }
            t->ne[d] = (int64_t)ne;
        }
        if ((rc = rd_u32(&c, &type, name)) || (rc = rd_u64(&c, &offsets[i], name))) goto fail;
        t->type = (int)type;
        uint64_t mask = g->t_cap - 1;
        uint64_t h = fnv1a(name, strlen(name)) & mask;
        for (; g->t_hash[h] >= 0; h = (h + 1) & mask)
            if (strcmp(g->tensors[g->t_hash[h]].name, name) == 0) {
                rc = msa_error(MSA_EFORMAT, "GGUF tensor '%s' appears twice", name);
                goto fail;
            }
        g->t_hash[h] = (int64_t)i;
    }

    /* Data section and tensor bounds. */
    g->data_start = c.off;
    if (g->data_start % g->alignment) g->data_start += g->alignment - g->data_start % g->alignment;
    for (uint64_t i = 0; i < n_tensors; i++) {
        msa_gguf_tensor *t = &g->tensors[i];
        size_t row = msa_ggml_row_bytes(t->type, t->ne[0]);
        if (!row && t->ne[0] != 0) {
            if (msa_ggml_type_read(t->type)) {
                rc = msa_error(MSA_EFORMAT, "GGUF tensor '%s': %s row of %lld elements (blocks of %d)",
                               t->name, msa_ggml_type_name(t->type), (long long)t->ne[0],
                               msa_ggml_block_size(t->type));
                goto fail;
            }
            continue; /* a type we do not read: listed, no data */
        }
        if (offsets[i] % g->alignment) {
            rc = msa_error(MSA_EFORMAT, "GGUF tensor '%s': offset %llu not aligned to %u",
                           t->name, (unsigned long long)offsets[i], g->alignment);
            goto fail;
        }
        /* size = row * ne1 * ne2 * ne3, overflow-checked against the file. */
        uint64_t size = row, limit = g->size;
        for (int d = 1; d < 4; d++) {
            if (t->ne[d] && size > limit / (uint64_t)t->ne[d]) {
                size = UINT64_MAX;
                break;
            }
            size *= (uint64_t)t->ne[d];
        }
        if (g->data_start > g->size || offsets[i] > g->size - g->data_start ||
            size > g->size - g->data_start - offsets[i]) {
            rc = msa_error(MSA_EFORMAT,
                           "GGUF tensor '%s' (%s, offset %llu) runs past the end of the %zu-byte file",
                           t->name, msa_ggml_type_name(t->type), (unsigned long long)offsets[i],
                           g->size);
            goto fail;
        }
        t->data = g->base + g->data_start + offsets[i];
        t->size = (size_t)size;
    }
    if ((rc = check_overlap(g))) goto fail;
    free(offsets);
    return MSA_OK;
fail:
    free(offsets);
    return rc;
}

static int finish_open(msa_gguf *g, msa_gguf **out) {
    int rc = parse(g);
    if (rc) {
        msa_gguf_close(g);
        return rc;
    }
    *out = g;
    return MSA_OK;
}

int msa_gguf_open_memory(const void *data, size_t size, msa_gguf **out) {
    if (!out) return msa_error(MSA_EINVAL, "msa_gguf_open_memory: out is NULL");
    *out = NULL;
    if (!data && size) return msa_error(MSA_EINVAL, "msa_gguf_open_memory: data is NULL");
    msa_gguf *g = calloc(1, sizeof *g);
    if (!g) return msa_error(MSA_ENOMEM, "GGUF reader");
    g->base = data;
    g->size = size;
    return finish_open(g, out);
}

int msa_gguf_open(const char *path, msa_gguf **out) {
    if (!out || !path) return msa_error(MSA_EINVAL, "msa_gguf_open: NULL argument");
    *out = NULL;
    int fd;
    struct stat st;
    int rc = msa_file_open_read(path, &fd, &st); /* a FIFO is refused, never waited on */
    if (rc) return rc;
    if (st.st_size < 24) {
        close(fd);
        return msa_error(MSA_EFORMAT, "%s: %lld bytes is too short for GGUF", path,
                         (long long)st.st_size);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) return msa_error_errno(e, "%s: mmap", path);
    msa_gguf *g = calloc(1, sizeof *g);
    if (!g) {
        munmap(p, (size_t)st.st_size);
        return msa_error(MSA_ENOMEM, "GGUF reader");
    }
    g->base = p;
    g->size = (size_t)st.st_size;
    g->mapped = 1;
    g->dev = (uint64_t)st.st_dev;
    g->ino = (uint64_t)st.st_ino;
    rc = finish_open(g, out);
    if (rc) return msa_error_context(rc, "%s", path);
    return MSA_OK;
}

int msa_gguf_file_id(const msa_gguf *g, uint64_t *dev, uint64_t *ino) {
    if (!g || !g->mapped) return 0;
    *dev = g->dev;
    *ino = g->ino;
    return 1;
}

int msa_gguf_is_file(const msa_gguf *g, const char *path) {
    struct stat st;
    uint64_t dev, ino;
    return path && msa_gguf_file_id(g, &dev, &ino) && stat(path, &st) == 0 &&
           (uint64_t)st.st_dev == dev && (uint64_t)st.st_ino == ino;
}

void msa_gguf_close(msa_gguf *g) {
    if (!g) return;
    for (int64_t i = 0; i < g->n_kv; i++) {
        free(g->kv[i].key);
        free(g->kv[i].str_off);
    }
    for (int64_t i = 0; i < g->n_tensors; i++) free((char *)g->tensors[i].name);
    free(g->kv);
    free(g->kv_hash);
    free(g->tensors);
    free(g->t_hash);
    if (g->mapped) munmap((void *)g->base, g->size);
    free(g);
}

int msa_gguf_version(const msa_gguf *g) { return g ? g->version : 0; }

/* ---- getters -------------------------------------------------------------------- */

static int lookup(const msa_gguf *g, const char *key, const kv_entry **e) {
    if (!g || !key) return msa_error(MSA_EINVAL, "msa_gguf: NULL argument");
    *e = kv_find(g, key);
    return *e ? MSA_OK : MSA_ENOTFOUND;
}

static int wrong_type(const kv_entry *e, const char *want) {
    return msa_error(MSA_EFORMAT, "GGUF key '%s' is %s, expected %s", e->key,
                     type_name(e->type), want);
}

int msa_gguf_get_str(const msa_gguf *g, const char *key, const char **s, size_t *len) {
    const kv_entry *e = NULL;
    int rc = lookup(g, key, &e);
    if (rc) return rc;
    if (e->type != MSA_GGUF_STRING) return wrong_type(e, "string");
    uint64_t n = rd_u64_at(g->base + e->val);
    if (s) *s = (const char *)g->base + e->val + 8;
    if (len) *len = (size_t)n;
    return MSA_OK;
}

int msa_gguf_get_int(const msa_gguf *g, const char *key, int64_t *v) {
    const kv_entry *e = NULL;
    int rc = lookup(g, key, &e);
    if (rc) return rc;
    const uint8_t *p = g->base + e->val;
    int64_t r;
    switch (e->type) {
    case MSA_GGUF_UINT8: case MSA_GGUF_BOOL: r = p[0]; break;
    case MSA_GGUF_INT8: r = (int8_t)p[0]; break;
    case MSA_GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); r = x; break; }
    case MSA_GGUF_INT16: { int16_t x; memcpy(&x, p, 2); r = x; break; }
    case MSA_GGUF_UINT32: { uint32_t x; memcpy(&x, p, 4); r = x; break; }
    case MSA_GGUF_INT32: { int32_t x; memcpy(&x, p, 4); r = x; break; }
    case MSA_GGUF_INT64: memcpy(&r, p, 8); break;
    case MSA_GGUF_UINT64: {
        uint64_t x = rd_u64_at(p);
        if (x > (uint64_t)INT64_MAX)
            return msa_error(MSA_ERANGE, "GGUF key '%s': %llu does not fit int64", key,
                             (unsigned long long)x);
        r = (int64_t)x;
        break;
    }
    default: return wrong_type(e, "an integer");
    }
    if (v) *v = r;
    return MSA_OK;
}

int msa_gguf_get_float(const msa_gguf *g, const char *key, double *v) {
    const kv_entry *e = NULL;
    int rc = lookup(g, key, &e);
    if (rc) return rc;
    if (e->type == MSA_GGUF_FLOAT32) {
        float f;
        memcpy(&f, g->base + e->val, 4);
        if (v) *v = f;
    } else if (e->type == MSA_GGUF_FLOAT64) {
        double d;
        memcpy(&d, g->base + e->val, 8);
        if (v) *v = d;
    } else {
        return wrong_type(e, "a float");
    }
    return MSA_OK;
}

int msa_gguf_get_array(const msa_gguf *g, const char *key, msa_gguf_type *elem, uint64_t *n,
                       const void **data) {
    const kv_entry *e = NULL;
    int rc = lookup(g, key, &e);
    if (rc) return rc;
    if (e->type != MSA_GGUF_ARRAY) return wrong_type(e, "array");
    if (e->elem == MSA_GGUF_ARRAY)
        return msa_error(MSA_EUNSUPPORTED, "GGUF key '%s': arrays of arrays are not read", key);
    if (elem) *elem = e->elem;
    if (n) *n = e->n;
    if (data) *data = e->elem == MSA_GGUF_STRING ? NULL : g->base + e->val;
    return MSA_OK;
}

int msa_gguf_get_str_item(const msa_gguf *g, const char *key, uint64_t i, const char **s,
                          size_t *len) {
    const kv_entry *e = NULL;
    int rc = lookup(g, key, &e);
    if (rc) return rc;
    if (e->type != MSA_GGUF_ARRAY || e->elem != MSA_GGUF_STRING)
        return wrong_type(e, "array of strings");
    if (i >= e->n)
        return msa_error(MSA_ERANGE, "GGUF key '%s': item %llu of %llu", key,
                         (unsigned long long)i, (unsigned long long)e->n);
    const uint8_t *p = g->base + e->str_off[i];
    if (s) *s = (const char *)p + 8;
    if (len) *len = (size_t)rd_u64_at(p);
    return MSA_OK;
}

int64_t msa_gguf_n_kv(const msa_gguf *g) { return g ? g->n_kv : 0; }

const char *msa_gguf_kv_key(const msa_gguf *g, int64_t i, msa_gguf_type *type) {
    if (!g || i < 0 || i >= g->n_kv) return NULL;
    if (type) *type = g->kv[i].type;
    return g->kv[i].key;
}

int msa_gguf_find_tensor(const msa_gguf *g, const char *name, const msa_gguf_tensor **t) {
    if (!g || !name || !t) return msa_error(MSA_EINVAL, "msa_gguf_find_tensor: NULL argument");
    int64_t i = tensor_index(g, name);
    if (i < 0) return MSA_ENOTFOUND;
    *t = &g->tensors[i];
    int ty = g->tensors[i].type;
    if (!msa_ggml_type_read(ty))
        return msa_error(MSA_EUNSUPPORTED, "tensor '%s' has ggml type %s, which is not read "
                         "(F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, "
                         "Q5_K and Q6_K are)", name, msa_ggml_type_name(ty));
    return MSA_OK;
}

int64_t msa_gguf_n_tensors(const msa_gguf *g) { return g ? g->n_tensors : 0; }

const msa_gguf_tensor *msa_gguf_tensor_at(const msa_gguf *g, int64_t i) {
    if (!g || i < 0 || i >= g->n_tensors) return NULL;
    return &g->tensors[i];
}
