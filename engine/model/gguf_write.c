/*
 * gguf_write.c: the GGUF writer used by the converters. Metadata is
 * serialised into one growing byte buffer as it is set (a key set twice is
 * rewritten by rebuilding from the entry list), tensors are remembered by
 * reference, and msa_gguf_writer_write() streams header, metadata, tensor
 * descriptions and 32-byte-aligned data to PATH.tmp before renaming it into
 * place. Output is GGUF v3, little-endian (the only byte order we build for).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/model/gguf.h"
#include "base/base.h"

enum { W_ALIGN = 32 };

typedef struct w_kv {
    char *key;
    uint8_t *val;       /* serialised type + value */
    size_t val_len;
} w_kv;

typedef struct w_tensor {
    char *name;
    int type, n_dims;
    int64_t ne[4];
    const void *data;
    size_t size;
} w_tensor;

struct msa_gguf_writer {
    w_kv *kv;
    size_t n_kv, cap_kv;
    w_tensor *t;
    size_t n_t, cap_t;
};

/* A small growable byte buffer. */
typedef struct wbuf {
    uint8_t *p;
    size_t n, cap;
    int oom;
} wbuf;

static void put(wbuf *b, const void *data, size_t n) {
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}
static void put_u32(wbuf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(wbuf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(wbuf *b, const char *s, size_t n) {
    put_u64(b, n);
    put(b, s, n);
}

int msa_gguf_writer_init(msa_gguf_writer **out) {
    if (!out) return msa_error(MSA_EINVAL, "msa_gguf_writer_init: out is NULL");
    *out = calloc(1, sizeof **out);
    return *out ? MSA_OK : msa_error(MSA_ENOMEM, "GGUF writer");
}

void msa_gguf_writer_free(msa_gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val);
    }
    for (size_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w);
}

/* Takes ownership of b->p as the value of `key`. */
static int set_value(msa_gguf_writer *w, const char *key, wbuf *b) {
    if (b->oom) {
        free(b->p);
        return msa_error(MSA_ENOMEM, "GGUF writer: key '%s'", key);
    }
    for (size_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->kv[i].key, key) == 0) {
            free(w->kv[i].val);
            w->kv[i].val = b->p;
            w->kv[i].val_len = b->n;
            return MSA_OK;
        }
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? 2 * w->cap_kv : 16;
        w_kv *kv = realloc(w->kv, cap * sizeof *kv);
        if (!kv) {
            free(b->p);
            return msa_error(MSA_ENOMEM, "GGUF writer");
        }
        w->kv = kv;
        w->cap_kv = cap;
    }
    char *k = strdup(key);
    if (!k) {
        free(b->p);
        return msa_error(MSA_ENOMEM, "GGUF writer");
    }
    w->kv[w->n_kv++] = (w_kv){k, b->p, b->n};
    return MSA_OK;
}

static int set_scalar(msa_gguf_writer *w, const char *key, msa_gguf_type t, const void *v,
                      size_t n) {
    if (!w || !key) return msa_error(MSA_EINVAL, "GGUF writer: NULL argument");
    wbuf b = {0};
    put_u32(&b, t);
    put(&b, v, n);
    return set_value(w, key, &b);
}

int msa_gguf_writer_set_str(msa_gguf_writer *w, const char *key, const char *s) {
    if (!w || !key || !s) return msa_error(MSA_EINVAL, "GGUF writer: NULL argument");
    wbuf b = {0};
    put_u32(&b, MSA_GGUF_STRING);
    put_str(&b, s, strlen(s));
    return set_value(w, key, &b);
}

int msa_gguf_writer_set_u32(msa_gguf_writer *w, const char *key, uint32_t v) {
    return set_scalar(w, key, MSA_GGUF_UINT32, &v, 4);
}
int msa_gguf_writer_set_i32(msa_gguf_writer *w, const char *key, int32_t v) {
    return set_scalar(w, key, MSA_GGUF_INT32, &v, 4);
}
int msa_gguf_writer_set_f32(msa_gguf_writer *w, const char *key, float v) {
    return set_scalar(w, key, MSA_GGUF_FLOAT32, &v, 4);
}
int msa_gguf_writer_set_bool(msa_gguf_writer *w, const char *key, int v) {
    uint8_t b = v ? 1 : 0;
    return set_scalar(w, key, MSA_GGUF_BOOL, &b, 1);
}

static size_t elem_size(msa_gguf_type t) {
    switch (t) {
    case MSA_GGUF_UINT8: case MSA_GGUF_INT8: case MSA_GGUF_BOOL: return 1;
    case MSA_GGUF_UINT16: case MSA_GGUF_INT16: return 2;
    case MSA_GGUF_UINT32: case MSA_GGUF_INT32: case MSA_GGUF_FLOAT32: return 4;
    case MSA_GGUF_UINT64: case MSA_GGUF_INT64: case MSA_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

int msa_gguf_writer_set_array(msa_gguf_writer *w, const char *key, msa_gguf_type elem,
                              uint64_t n, const void *data) {
    size_t es = elem_size(elem);
    if (!w || !key || (!data && n) || !es)
        return msa_error(MSA_EINVAL, "GGUF writer: bad array '%s'", key ? key : "(null)");
    wbuf b = {0};
    put_u32(&b, MSA_GGUF_ARRAY);
    put_u32(&b, elem);
    put_u64(&b, n);
    put(&b, data, (size_t)n * es);
    return set_value(w, key, &b);
}

int msa_gguf_writer_set_str_array(msa_gguf_writer *w, const char *key, const char *const *strs,
                                  const size_t *lens, uint64_t n) {
    if (!w || !key || (!strs && n)) return msa_error(MSA_EINVAL, "GGUF writer: NULL argument");
    wbuf b = {0};
    put_u32(&b, MSA_GGUF_ARRAY);
    put_u32(&b, MSA_GGUF_STRING);
    put_u64(&b, n);
    for (uint64_t i = 0; i < n; i++) put_str(&b, strs[i], lens ? lens[i] : strlen(strs[i]));
    return set_value(w, key, &b);
}

int msa_gguf_writer_copy_kv(msa_gguf_writer *w, const msa_gguf *g, int64_t i) {
    msa_gguf_type t;
    const char *key = g ? msa_gguf_kv_key(g, i, &t) : NULL;
    if (!w || !key) return msa_error(MSA_EINVAL, "GGUF writer: no metadata entry %lld",
                                     (long long)i);
    wbuf b = {0};
    int rc;
    if (t == MSA_GGUF_STRING) {
        const char *s;
        size_t n;
        if ((rc = msa_gguf_get_str(g, key, &s, &n))) return rc;
        put_u32(&b, MSA_GGUF_STRING);
        put_str(&b, s, n);
        return set_value(w, key, &b);
    }
    if (t == MSA_GGUF_ARRAY) {
        msa_gguf_type elem;
        uint64_t n;
        const void *data;
        if ((rc = msa_gguf_get_array(g, key, &elem, &n, &data))) return rc;
        if (elem != MSA_GGUF_STRING) return msa_gguf_writer_set_array(w, key, elem, n, data);
        put_u32(&b, MSA_GGUF_ARRAY);
        put_u32(&b, MSA_GGUF_STRING);
        put_u64(&b, n);
        for (uint64_t k = 0; k < n; k++) {
            const char *s;
            size_t len;
            if ((rc = msa_gguf_get_str_item(g, key, k, &s, &len))) {
                free(b.p);
                return rc;
            }
            put_str(&b, s, len);
        }
        return set_value(w, key, &b);
    }
    if (t == MSA_GGUF_FLOAT32 || t == MSA_GGUF_FLOAT64) {
        double v;
        if ((rc = msa_gguf_get_float(g, key, &v))) return rc;
        if (t == MSA_GGUF_FLOAT64) return set_scalar(w, key, t, &v, 8);
        float f = (float)v;
        return set_scalar(w, key, t, &f, 4);
    }
    size_t es = elem_size(t);
    int64_t v;
    if (!es || (rc = msa_gguf_get_int(g, key, &v))) return es ? rc : msa_error(
        MSA_EUNSUPPORTED, "GGUF writer: key '%s' of type %d", key, (int)t);
    return set_scalar(w, key, t, &v, es); /* little-endian: the low bytes */
}

int msa_gguf_writer_add_tensor(msa_gguf_writer *w, const char *name, int type, int n_dims,
                               const int64_t *ne, const void *data) {
    if (!w || !name || !ne || !data || n_dims < 1 || n_dims > 4)
        return msa_error(MSA_EINVAL, "GGUF writer: bad tensor '%s'", name ? name : "(null)");
    size_t row = msa_ggml_row_bytes(type, ne[0]);
    if (!row) return msa_error(MSA_EINVAL, "GGUF writer: tensor '%s' of type %s, row %lld",
                               name, msa_ggml_type_name(type), (long long)ne[0]);
    size_t size = row;
    for (int d = 1; d < n_dims; d++) {
        if (ne[d] < 0) return msa_error(MSA_EINVAL, "GGUF writer: tensor '%s' shape", name);
        size *= (size_t)ne[d];
    }
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return msa_error(MSA_EEXIST, "GGUF writer: tensor '%s' added twice", name);
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? 2 * w->cap_t : 64;
        w_tensor *t = realloc(w->t, cap * sizeof *t);
        if (!t) return msa_error(MSA_ENOMEM, "GGUF writer");
        w->t = t;
        w->cap_t = cap;
    }
    w_tensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return msa_error(MSA_ENOMEM, "GGUF writer");
    t->type = type;
    t->n_dims = n_dims;
    for (int d = 0; d < 4; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    t->data = data;
    t->size = size;
    w->n_t++;
    return MSA_OK;
}

static int write_all(FILE *f, const void *p, size_t n, const char *path) {
    if (n && fwrite(p, 1, n, f) != n)
        return msa_error(errno == ENOSPC ? MSA_ENOSPC : MSA_EIO, "%s: write: %s", path,
                         strerror(errno));
    return MSA_OK;
}

int msa_gguf_writer_write(msa_gguf_writer *w, const char *path) {
    if (!w || !path) return msa_error(MSA_EINVAL, "GGUF writer: NULL argument");
    /* Header, metadata and tensor descriptions in one buffer. */
    wbuf b = {0};
    put_u32(&b, 0x46554747u);
    put_u32(&b, 3);
    put_u64(&b, w->n_t);
    put_u64(&b, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        put_str(&b, w->kv[i].key, strlen(w->kv[i].key));
        put(&b, w->kv[i].val, w->kv[i].val_len);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        const w_tensor *t = &w->t[i];
        put_str(&b, t->name, strlen(t->name));
        put_u32(&b, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) put_u64(&b, (uint64_t)t->ne[d]);
        put_u32(&b, (uint32_t)t->type);
        put_u64(&b, off);
        off += (t->size + W_ALIGN - 1) / W_ALIGN * W_ALIGN;
    }
    static const uint8_t zeros[W_ALIGN];
    if (b.n % W_ALIGN) put(&b, zeros, W_ALIGN - b.n % W_ALIGN);
    if (b.oom) {
        free(b.p);
        return msa_error(MSA_ENOMEM, "GGUF writer: header");
    }

    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    if (!tmp) {
        free(b.p);
        return msa_error(MSA_ENOMEM, "GGUF writer");
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        int e = errno;
        free(b.p);
        free(tmp);
        return msa_error(MSA_EIO, "%s: %s", path, strerror(e));
    }
    int rc = write_all(f, b.p, b.n, path);
    free(b.p);
    for (size_t i = 0; !rc && i < w->n_t; i++) {
        const w_tensor *t = &w->t[i];
        rc = write_all(f, t->data, t->size, path);
        if (!rc && t->size % W_ALIGN && i + 1 < w->n_t)
            rc = write_all(f, zeros, W_ALIGN - t->size % W_ALIGN, path);
    }
    if (!rc && fflush(f) != 0)
        rc = msa_error(errno == ENOSPC ? MSA_ENOSPC : MSA_EIO, "%s: %s", path, strerror(errno));
    if (!rc && fsync(fileno(f)) != 0)
        rc = msa_error(MSA_EIO, "%s: fsync: %s", path, strerror(errno));
    if (fclose(f) != 0 && !rc)
        rc = msa_error(errno == ENOSPC ? MSA_ENOSPC : MSA_EIO, "%s: %s", path, strerror(errno));
    if (!rc && rename(tmp, path) != 0)
        rc = msa_error(MSA_EIO, "%s: rename: %s", path, strerror(errno));
    if (rc) unlink(tmp);
    free(tmp);
    return rc;
}
