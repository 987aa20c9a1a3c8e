/*
 * gguf_write.c: the GGUF writer used by the converters. Metadata is
 * serialised into one growing byte buffer as it is set (a key set twice is
 * rewritten by rebuilding from the entry list), tensors are remembered by
 * reference, and msa_gguf_writer_write() streams header, metadata, tensor
 * descriptions and 32-byte-aligned data to a temporary file beside the
 * output before renaming it into place. Output is GGUF v3, little-endian
 * (the only byte order we build for).
 *
 * Replacing a file safely. The temporary file is created in the output's
 * own folder (so the rename cannot cross file systems) under a fresh name
 * (O_EXCL: two writers never share one), written, fsync'ed, renamed over
 * the output, and the folder is fsync'ed so the rename itself survives a
 * power loss. On any failure the temporary file is removed and the output
 * is untouched. The writer refuses to replace a file it was told is being
 * read (msa_gguf_writer_protect: the inputs of a conversion, the model a
 * calibration reads), compared by device and inode, not by name, so that
 * "./m.gguf", a hard link or a symbolic link to the input are all caught.
 * With msa_gguf_writer_no_replace() an existing output is never replaced
 * (renameat2 RENAME_NOREPLACE, or link + unlink where the file system lacks
 * it), which closes the window between a caller's existence check and the
 * rename.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
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
    struct { uint64_t dev, ino; } keep[8]; /* files that must not be replaced */
    int n_keep;
    int no_replace;
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
        return msa_error_errno(errno, "%s: write", path);
    return MSA_OK;
}

int msa_gguf_writer_protect(msa_gguf_writer *w, uint64_t dev, uint64_t ino) {
    if (!w) return msa_error(MSA_EINVAL, "GGUF writer: NULL argument");
    if (w->n_keep == (int)(sizeof w->keep / sizeof w->keep[0]))
        return msa_error(MSA_ERANGE, "GGUF writer: too many protected files");
    w->keep[w->n_keep].dev = dev;
    w->keep[w->n_keep].ino = ino;
    w->n_keep++;
    return MSA_OK;
}

int msa_gguf_writer_protect_path(msa_gguf_writer *w, const char *path) {
    struct stat st;
    if (!path || stat(path, &st) != 0) return MSA_OK; /* nothing there to protect */
    return msa_gguf_writer_protect(w, (uint64_t)st.st_dev, (uint64_t)st.st_ino);
}

int msa_gguf_writer_protect_gguf(msa_gguf_writer *w, const msa_gguf *g) {
    uint64_t dev, ino;
    return msa_gguf_file_id(g, &dev, &ino) ? msa_gguf_writer_protect(w, dev, ino) : MSA_OK;
}

void msa_gguf_writer_no_replace(msa_gguf_writer *w) {
    if (w) w->no_replace = 1;
}

/* MSA_EEXIST when `path` names a protected file (or, with no_replace, any
 * file). */
static int check_protected(const msa_gguf_writer *w, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return MSA_OK;
    for (int i = 0; i < w->n_keep; i++)
        if ((uint64_t)st.st_dev == w->keep[i].dev && (uint64_t)st.st_ino == w->keep[i].ino)
            return msa_error(MSA_EEXIST, "%s is an input of this command: refusing to "
                             "overwrite it (write to another file)", path);
    if (w->no_replace) return msa_error(MSA_EEXIST, "%s already exists", path);
    return MSA_OK;
}

static int put_in_place(const msa_gguf_writer *w, const char *tmp, const char *path) {
    if (!w->no_replace) {
        if (rename(tmp, path) != 0) return msa_error_errno(errno, "%s: rename", path);
        return MSA_OK;
    }
#ifdef RENAME_NOREPLACE
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) == 0) return MSA_OK;
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) {
        int e = errno;
        return e == EEXIST ? msa_error(MSA_EEXIST, "%s already exists", path)
                           : msa_error_errno(e, "%s: rename", path);
    }
#endif
    /* no renameat2 here: link() fails with EEXIST as well */
    if (link(tmp, path) != 0) {
        int e = errno;
        return e == EEXIST ? msa_error(MSA_EEXIST, "%s already exists", path)
                           : msa_error_errno(e, "%s: link", path);
    }
    unlink(tmp);
    return MSA_OK;
}

/* fsync of the folder that holds path (best effort: some file systems
 * refuse fsync on folders). */
static void sync_dir(const char *path, size_t dlen) {
    char dir[4096];
    if (dlen >= sizeof dir) return;
    if (dlen) {
        memcpy(dir, path, dlen);
        dir[dlen] = 0;
    } else {
        strcpy(dir, ".");
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
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

    int rc = check_protected(w, path);
    if (rc) {
        free(b.p);
        return rc;
    }
    /* a fresh name beside the output */
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 48);
    if (!tmp) {
        free(b.p);
        return msa_error(MSA_ENOMEM, "GGUF writer");
    }
    const char *slash = strrchr(path, '/');
    size_t dlen = slash ? (size_t)(slash - path + 1) : 0;
    int fd = -1;
    static unsigned counter;
    for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(tmp, plen + 48, "%.*s.%s.%ld.%x.tmp", (int)dlen, path, path + dlen,
                 (long)getpid(), (unsigned)(ts.tv_nsec ^ __atomic_add_fetch(&counter, 1,
                                                                          __ATOMIC_RELAXED)));
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST) break;
    }
    FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (!f) {
        int e = errno;
        if (fd >= 0) {
            close(fd);
            unlink(tmp);
        }
        free(b.p);
        free(tmp);
        return msa_error_errno(e, "%s: cannot create a temporary file beside it", path);
    }
    rc = write_all(f, b.p, b.n, path);
    free(b.p);
    for (size_t i = 0; !rc && i < w->n_t; i++) {
        const w_tensor *t = &w->t[i];
        rc = write_all(f, t->data, t->size, path);
        if (!rc && t->size % W_ALIGN && i + 1 < w->n_t)
            rc = write_all(f, zeros, W_ALIGN - t->size % W_ALIGN, path);
    }
    if (!rc && fflush(f) != 0) rc = msa_error_errno(errno, "%s: write", path);
    if (!rc && fsync(fileno(f)) != 0) rc = msa_error_errno(errno, "%s: fsync", path);
    if (fclose(f) != 0 && !rc) rc = msa_error_errno(errno, "%s: close", path);
    /* again: the input may have been moved to the output's name meanwhile */
    if (!rc) rc = check_protected(w, path);
    if (!rc) rc = put_in_place(w, tmp, path);
    if (rc) unlink(tmp);
    if (!rc) sync_dir(path, dlen);
    free(tmp);
    return rc;
}
