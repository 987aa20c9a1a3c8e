/*
 * safetensors.c: the safetensors reader declared in engine/model/safetensors.h.
 *
 * Each file is mapped read-only and parsed in three passes: the 8-byte
 * header length is checked against the file, the JSON header is parsed by
 * jansson (duplicate keys rejected), and every tensor entry is checked on
 * its own (dtype known, shape entries non-negative integers whose product,
 * times the element size, neither overflows nor differs from the length its
 * data_offsets give, offsets inside the data area). Then the entries are
 * sorted by offset and must tile the data area exactly: no overlap, no
 * hole, nothing after the last tensor, as the format requires. Only then
 * does any pointer into the file leave this module.
 *
 * A sharded model adds model.safetensors.index.json: its weight_map names a
 * shard per tensor. Shard names must be plain file names in the index's
 * folder (no path separators), every shard is validated as above, tensor
 * names must be unique across shards, and every tensor of the weight_map
 * must be found in the shard it names. Lookup is a binary search over all
 * tensors sorted by name.
 */
#include "engine/model/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"

typedef struct st_entry {
    char *name;                 /* owned */
    msa_st_dtype dtype;
    int n_dims;
    int64_t shape[MSA_ST_MAX_DIMS];
    int64_t n_elements;
    uint64_t begin, end;        /* offsets within the data area */
    const uint8_t *data;        /* data area start + begin */
    int file;                   /* index into msa_safetensors.files */
} st_entry;

typedef struct st_file {
    void *map;                  /* NULL for a caller-owned memory image */
    size_t size;
} st_file;

struct msa_safetensors {
    st_file *files;
    int n_files;
    st_entry *t;
    int n_t, cap_t;
};

static const struct {
    const char *name;
    size_t size;
} st_dtypes[MSA_ST_N_DTYPES] = {
    [MSA_ST_BOOL] = {"BOOL", 1},       [MSA_ST_U8] = {"U8", 1},
    [MSA_ST_I8] = {"I8", 1},           [MSA_ST_F8_E5M2] = {"F8_E5M2", 1},
    [MSA_ST_F8_E4M3] = {"F8_E4M3", 1}, [MSA_ST_I16] = {"I16", 2},
    [MSA_ST_U16] = {"U16", 2},         [MSA_ST_F16] = {"F16", 2},
    [MSA_ST_BF16] = {"BF16", 2},       [MSA_ST_I32] = {"I32", 4},
    [MSA_ST_U32] = {"U32", 4},         [MSA_ST_F32] = {"F32", 4},
    [MSA_ST_F64] = {"F64", 8},         [MSA_ST_I64] = {"I64", 8},
    [MSA_ST_U64] = {"U64", 8},
};

const char *msa_st_dtype_name(msa_st_dtype dtype) {
    return (unsigned)dtype < MSA_ST_N_DTYPES ? st_dtypes[dtype].name : "?";
}

size_t msa_st_dtype_size(msa_st_dtype dtype) {
    return (unsigned)dtype < MSA_ST_N_DTYPES ? st_dtypes[dtype].size : 0;
}

static int st_dtype_parse(const char *s, msa_st_dtype *out) {
    for (int i = 0; i < MSA_ST_N_DTYPES; i++)
        if (strcmp(s, st_dtypes[i].name) == 0) {
            *out = (msa_st_dtype)i;
            return 1;
        }
    return 0;
}

/* ---- building the tensor list --------------------------------------------- */

static int st_push(msa_safetensors *st, st_entry *e) {
    if (st->n_t == st->cap_t) {
        int cap = st->cap_t ? st->cap_t * 2 : 64;
        st_entry *t = realloc(st->t, (size_t)cap * sizeof *t);
        if (!t) return msa_error(MSA_ENOMEM, "safetensors: out of memory");
        st->t = t;
        st->cap_t = cap;
    }
    st->t[st->n_t++] = *e;
    return MSA_OK;
}

static int st_add_file(msa_safetensors *st, void *map, size_t size) {
    st_file *f = realloc(st->files, (size_t)(st->n_files + 1) * sizeof *f);
    if (!f) return msa_error(MSA_ENOMEM, "safetensors: out of memory");
    st->files = f;
    f[st->n_files].map = map;
    f[st->n_files].size = size;
    st->n_files++;
    return MSA_OK;
}

static int cmp_offset(const void *a, const void *b) {
    const st_entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const st_entry *)a)->name, ((const st_entry *)b)->name);
}

/* A non-negative JSON integer into *v; 0 when the value is anything else. */
static int json_uint(const json_t *j, uint64_t *v) {
    if (!json_is_integer(j)) return 0;
    json_int_t x = json_integer_value(j);
    if (x < 0) return 0;
    *v = (uint64_t)x;
    return 1;
}

/* Parses and checks one tensor entry `val` named `name`; appends it. */
static int st_parse_entry(msa_safetensors *st, const char *label,
                          const char *name, json_t *val,
                          const uint8_t *area, uint64_t area_size, int file) {
    if (!*name)
        return msa_error(MSA_EFORMAT, "%s: a tensor with an empty name", label);
    if (!json_is_object(val))
        return msa_error(MSA_EFORMAT, "%s: tensor '%s': entry is not an object",
                         label, name);
    json_t *jd = json_object_get(val, "dtype");
    json_t *js = json_object_get(val, "shape");
    json_t *jo = json_object_get(val, "data_offsets");
    if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo))
        return msa_error(MSA_EFORMAT,
                         "%s: tensor '%s': needs string dtype, array shape and "
                         "array data_offsets", label, name);
    st_entry e;
    memset(&e, 0, sizeof e);
    if (!st_dtype_parse(json_string_value(jd), &e.dtype))
        return msa_error(MSA_EFORMAT, "%s: tensor '%s': unknown dtype '%s'",
                         label, name, json_string_value(jd));
    size_t nd = json_array_size(js);
    if (nd > MSA_ST_MAX_DIMS)
        return msa_error(MSA_EUNSUPPORTED,
                         "%s: tensor '%s': %zu dimensions (at most %d)", label,
                         name, nd, MSA_ST_MAX_DIMS);
    e.n_dims = (int)nd;
    uint64_t n = 1;
    for (size_t i = 0; i < nd; i++) {
        uint64_t d;
        if (!json_uint(json_array_get(js, i), &d) || d > (uint64_t)INT64_MAX)
            return msa_error(MSA_EFORMAT,
                             "%s: tensor '%s': shape[%zu] is not a "
                             "non-negative integer", label, name, i);
        e.shape[i] = (int64_t)d;
        if (__builtin_mul_overflow(n, d, &n) || n > (uint64_t)INT64_MAX)
            return msa_error(MSA_EFORMAT,
                             "%s: tensor '%s': element count overflows", label,
                             name);
    }
    e.n_elements = (int64_t)n;
    uint64_t bytes;
    if (__builtin_mul_overflow(n, (uint64_t)st_dtypes[e.dtype].size, &bytes))
        return msa_error(MSA_EFORMAT, "%s: tensor '%s': byte size overflows",
                         label, name);
    if (json_array_size(jo) != 2 || !json_uint(json_array_get(jo, 0), &e.begin) ||
        !json_uint(json_array_get(jo, 1), &e.end))
        return msa_error(MSA_EFORMAT,
                         "%s: tensor '%s': data_offsets must be two "
                         "non-negative integers", label, name);
    if (e.begin > e.end || e.end > area_size)
        return msa_error(MSA_EFORMAT,
                         "%s: tensor '%s': data_offsets [%llu, %llu] outside "
                         "the %llu-byte data area", label, name,
                         (unsigned long long)e.begin,
                         (unsigned long long)e.end,
                         (unsigned long long)area_size);
    if (e.end - e.begin != bytes)
        return msa_error(MSA_EFORMAT,
                         "%s: tensor '%s': %llu bytes at data_offsets but "
                         "shape and dtype need %llu", label, name,
                         (unsigned long long)(e.end - e.begin),
                         (unsigned long long)bytes);
    e.data = area + e.begin;
    e.file = file;
    e.name = strdup(name);
    if (!e.name) return msa_error(MSA_ENOMEM, "safetensors: out of memory");
    int rc = st_push(st, &e);
    if (rc) free(e.name);
    return rc;
}

/* Parses one whole safetensors image (file index `file`) and appends its
 * tensors to st->t. On failure the entries it appended stay in st->t, owned
 * by st (the caller closes st). */
static int st_parse_image(msa_safetensors *st, const uint8_t *base,
                          size_t size, const char *label, int file) {
    if (size < 8)
        return msa_error(MSA_EFORMAT,
                         "%s: %zu bytes, shorter than the 8-byte header length",
                         label, size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | base[i];
    if (n > MSA_ST_MAX_HEADER)
        return msa_error(MSA_EFORMAT,
                         "%s: header length %llu exceeds the %llu-byte limit "
                         "(not a safetensors file?)", label,
                         (unsigned long long)n,
                         (unsigned long long)MSA_ST_MAX_HEADER);
    if (n > size - 8)
        return msa_error(MSA_EFORMAT,
                         "%s: header length %llu but only %zu bytes follow "
                         "(truncated?)", label, (unsigned long long)n,
                         size - 8);
    if (n < 2 || base[8] != '{')
        return msa_error(MSA_EFORMAT, "%s: the header is not a JSON object",
                         label);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)base + 8, (size_t)n,
                              JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return msa_error(MSA_EFORMAT, "%s: header JSON, line %d column %d: %s",
                         label, jerr.line, jerr.column, jerr.text);
    int rc = MSA_OK;
    if (!json_is_object(root)) {
        rc = msa_error(MSA_EFORMAT, "%s: the header is not a JSON object",
                       label);
        goto out;
    }
    const uint8_t *area = base + 8 + n;
    uint64_t area_size = (uint64_t)size - 8 - n;
    int first = st->n_t;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(val)) {
                rc = msa_error(MSA_EFORMAT,
                               "%s: __metadata__ is not an object", label);
                goto out;
            }
            continue; /* free-form strings; nothing the engine needs */
        }
        rc = st_parse_entry(st, label, key, val, area, area_size, file);
        if (rc) goto out;
    }
    /* The tensors must tile [0, area_size) exactly. */
    int cnt = st->n_t - first;
    st_entry *e = st->t + first;
    if (cnt > 1) qsort(e, (size_t)cnt, sizeof *e, cmp_offset);
    uint64_t at = 0;
    for (int i = 0; i < cnt; i++) {
        if (e[i].begin < at) {
            rc = msa_error(MSA_EFORMAT,
                           "%s: tensor '%s' overlaps the tensor before it "
                           "(offset %llu < %llu)", label, e[i].name,
                           (unsigned long long)e[i].begin,
                           (unsigned long long)at);
            goto out;
        }
        if (e[i].begin > at) {
            rc = msa_error(MSA_EFORMAT,
                           "%s: bytes [%llu, %llu) belong to no tensor", label,
                           (unsigned long long)at,
                           (unsigned long long)e[i].begin);
            goto out;
        }
        at = e[i].end;
    }
    if (at != area_size)
        rc = msa_error(MSA_EFORMAT,
                       "%s: bytes [%llu, %llu) after the last tensor belong "
                       "to no tensor (or the file is padded/truncated)",
                       label, (unsigned long long)at,
                       (unsigned long long)area_size);
out:
    json_decref(root);
    return rc;
}

/* Sorts all tensors by name and rejects duplicates (across shards). */
static int st_finish(msa_safetensors *st) {
    if (st->n_t > 1) qsort(st->t, (size_t)st->n_t, sizeof *st->t, cmp_name);
    for (int i = 1; i < st->n_t; i++)
        if (strcmp(st->t[i - 1].name, st->t[i].name) == 0)
            return msa_error(MSA_EFORMAT,
                             "safetensors: tensor '%s' appears in two shards",
                             st->t[i].name);
    return MSA_OK;
}

/* ---- files ------------------------------------------------------------------ */

static int st_alloc(msa_safetensors **out) {
    *out = calloc(1, sizeof **out);
    return *out ? MSA_OK : msa_error(MSA_ENOMEM, "safetensors: out of memory");
}

/* Maps `path` read-only; *map is NULL for an empty file (rejected later by
 * the parser, since it holds no header). */
static int st_map(const char *path, void **map, size_t *size) {
    *map = NULL;
    *size = 0;
    int fd;
    struct stat sb;
    int rc = msa_file_open_read(path, &fd, &sb); /* a FIFO is refused, never waited on */
    if (rc) return rc;
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return msa_error(MSA_EUNSUPPORTED, "%s: too large to map", path);
    }
    *size = (size_t)sb.st_size;
    if (*size > 0) {
        void *m = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            return msa_error_errno(e, "%s: mmap", path);
        }
        *map = m;
    }
    close(fd);
    return MSA_OK;
}

/* Maps and parses one file into st as a new file entry. */
static int st_load_file(msa_safetensors *st, const char *path) {
    void *map;
    size_t size;
    int rc = st_map(path, &map, &size);
    if (rc) return rc;
    rc = st_add_file(st, map, size);
    if (rc) {
        if (map) munmap(map, size);
        return rc;
    }
    static const uint8_t empty[1];
    return st_parse_image(st, map ? map : empty, size, path, st->n_files - 1);
}

/* Reads a whole small file into a malloc'd buffer. */
static int st_slurp(const char *path, size_t limit, char **buf, size_t *len) {
    FILE *f;
    int orc = msa_file_fopen_read(path, &f);
    if (orc) return orc;
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    int rc = MSA_OK;
    while (b) {
        if (n == cap) {
            if (cap >= limit) {
                rc = msa_error(MSA_EFORMAT, "%s: larger than %zu bytes", path,
                               limit);
                break;
            }
            char *nb = realloc(b, cap * 2);
            if (!nb) break;
            b = nb;
            cap *= 2;
        }
        size_t got = fread(b + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) rc = msa_error(MSA_EIO, "%s: read error", path);
            break;
        }
    }
    fclose(f);
    if (!b) return msa_error(MSA_ENOMEM, "%s: out of memory", path);
    if (rc) {
        free(b);
        return rc;
    }
    *buf = b;
    *len = n;
    return MSA_OK;
}

static int st_plain_name(const char *s) {
    return *s && strcmp(s, ".") != 0 && strcmp(s, "..") != 0 &&
           !strchr(s, '/') && !strchr(s, '\\');
}

/* The entry named `name` (st->t sorted by name), or NULL. */
static const st_entry *st_lookup(const msa_safetensors *st, const char *name) {
    int lo = 0, hi = st->n_t - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, st->t[mid].name);
        if (c == 0) return &st->t[mid];
        if (c < 0) hi = mid - 1; else lo = mid + 1;
    }
    return NULL;
}

/* Opens a sharded model from its index file at `index_path`. */
static int st_load_index(msa_safetensors *st, const char *index_path) {
    char *text = NULL;
    size_t len = 0;
    int rc = st_slurp(index_path, (size_t)256 << 20, &text, &len);
    if (rc) return rc;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return msa_error(MSA_EFORMAT, "%s: line %d column %d: %s", index_path,
                         jerr.line, jerr.column, jerr.text);
    json_t *wm = json_object_get(root, "weight_map");
    const char **shards = NULL;
    char *dir = NULL;
    int n_shards = 0;
    if (!json_is_object(wm) || json_object_size(wm) == 0) {
        rc = msa_error(MSA_EFORMAT, "%s: no weight_map object", index_path);
        goto out;
    }
    shards = calloc(json_object_size(wm), sizeof *shards);
    dir = strdup(index_path);
    if (!shards || !dir) {
        rc = msa_error(MSA_ENOMEM, "%s: out of memory", index_path);
        goto out;
    }
    char *slash = strrchr(dir, '/');
    if (slash) slash[1] = 0; else dir[0] = 0;
    const char *key;
    json_t *val;
    json_object_foreach(wm, key, val) {
        if (!json_is_string(val) || !st_plain_name(json_string_value(val))) {
            rc = msa_error(MSA_EFORMAT,
                           "%s: weight_map['%s'] is not a plain file name",
                           index_path, key);
            goto out;
        }
        const char *s = json_string_value(val);
        int seen = 0;
        for (int i = 0; i < n_shards && !seen; i++) seen = !strcmp(shards[i], s);
        if (!seen) shards[n_shards++] = s;
    }
    for (int i = 0; i < n_shards; i++) {
        size_t need = strlen(dir) + strlen(shards[i]) + 1;
        char *p = malloc(need);
        if (!p) {
            rc = msa_error(MSA_ENOMEM, "%s: out of memory", index_path);
            goto out;
        }
        snprintf(p, need, "%s%s", dir, shards[i]);
        rc = st_load_file(st, p);
        free(p);
        if (rc) goto out;
    }
    rc = st_finish(st);
    if (rc) goto out;
    /* Every tensor the index names is in the shard it names. */
    json_object_foreach(wm, key, val) {
        const st_entry *e = st_lookup(st, key);
        if (!e) {
            rc = msa_error(MSA_ENOTFOUND, "%s: tensor '%s' is in no shard",
                           index_path, key);
            goto out;
        }
        /* Shard i was loaded as file i, in the order of `shards`. */
        if (strcmp(shards[e->file], json_string_value(val)) != 0) {
            rc = msa_error(MSA_EFORMAT,
                           "%s: tensor '%s' is in shard %s, not %s", index_path,
                           key, shards[e->file], json_string_value(val));
            goto out;
        }
    }
out:
    free(shards);
    free(dir);
    json_decref(root);
    return rc;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

int msa_safetensors_open(const char *path, msa_safetensors **out) {
    if (!out) return msa_error(MSA_EINVAL, "safetensors: out is NULL");
    *out = NULL;
    if (!path || !*path) return msa_error(MSA_EINVAL, "safetensors: no path");
    struct stat sb;
    if (stat(path, &sb) != 0) return msa_error_errno(errno, "%s", path);
    msa_safetensors *st;
    int rc = st_alloc(&st);
    if (rc) return rc;
    if (S_ISDIR(sb.st_mode)) {
        size_t need = strlen(path) + 64;
        char *p = malloc(need);
        if (!p) {
            msa_safetensors_close(st);
            return msa_error(MSA_ENOMEM, "safetensors: out of memory");
        }
        snprintf(p, need, "%s/model.safetensors.index.json", path);
        if (access(p, F_OK) == 0) {
            rc = st_load_index(st, p);
        } else {
            snprintf(p, need, "%s/model.safetensors", path);
            if (access(p, F_OK) == 0) {
                rc = st_load_file(st, p);
                if (!rc) rc = st_finish(st);
            } else {
                rc = msa_error(MSA_ENOTFOUND,
                               "%s: neither model.safetensors nor "
                               "model.safetensors.index.json", path);
            }
        }
        free(p);
    } else if (ends_with(path, ".json")) {
        rc = st_load_index(st, path);
    } else {
        rc = st_load_file(st, path);
        if (!rc) rc = st_finish(st);
    }
    if (rc) {
        msa_safetensors_close(st);
        return rc;
    }
    *out = st;
    return MSA_OK;
}

int msa_safetensors_open_memory(const void *data, size_t size,
                                const char *label, msa_safetensors **out) {
    if (!out) return msa_error(MSA_EINVAL, "safetensors: out is NULL");
    *out = NULL;
    if (!data && size)
        return msa_error(MSA_EINVAL, "safetensors: NULL data");
    if (!label) label = "safetensors image";
    msa_safetensors *st;
    int rc = st_alloc(&st);
    if (!rc) rc = st_add_file(st, NULL, size);
    static const uint8_t empty[1];
    if (!rc) rc = st_parse_image(st, data ? data : empty, size, label, 0);
    if (!rc) rc = st_finish(st);
    if (rc) {
        msa_safetensors_close(st);
        return rc;
    }
    *out = st;
    return MSA_OK;
}

void msa_safetensors_close(msa_safetensors *st) {
    if (!st) return;
    for (int i = 0; i < st->n_t; i++) free(st->t[i].name);
    for (int i = 0; i < st->n_files; i++)
        if (st->files[i].map) munmap(st->files[i].map, st->files[i].size);
    free(st->t);
    free(st->files);
    free(st);
}

/* ---- lookup ------------------------------------------------------------------ */

int msa_safetensors_count(const msa_safetensors *st) { return st ? st->n_t : 0; }

static void st_fill(const st_entry *e, msa_st_tensor *out) {
    memset(out, 0, sizeof *out);
    out->name = e->name;
    out->st_dtype = e->dtype;
    out->supported = e->dtype == MSA_ST_F32 || e->dtype == MSA_ST_F16 ||
                     e->dtype == MSA_ST_BF16;
    out->dtype = e->dtype == MSA_ST_F16    ? MSA_DTYPE_F16
                 : e->dtype == MSA_ST_BF16 ? MSA_DTYPE_BF16
                                           : MSA_DTYPE_F32;
    out->n_dims = e->n_dims;
    memcpy(out->shape, e->shape, sizeof out->shape);
    out->n_elements = e->n_elements;
    out->data = e->data;
    out->size = e->end - e->begin;
}

int msa_safetensors_get(const msa_safetensors *st, int i, msa_st_tensor *out) {
    if (!st || !out || i < 0 || i >= st->n_t)
        return msa_error(MSA_EINVAL, "safetensors: tensor index %d out of range",
                         i);
    st_fill(&st->t[i], out);
    return MSA_OK;
}

int msa_safetensors_find(const msa_safetensors *st, const char *name,
                         msa_st_tensor *out) {
    if (!st || !name || !out)
        return msa_error(MSA_EINVAL, "safetensors: NULL argument");
    const st_entry *e = st_lookup(st, name);
    if (e) {
        st_fill(e, out);
        return MSA_OK;
    }
    return msa_error(MSA_ENOTFOUND, "safetensors: no tensor '%s'", name);
}

int msa_st_tensor_read_f32(const msa_st_tensor *t, int64_t first, int64_t n,
                           float *dst) {
    if (!t || !t->supported)
        return msa_error(MSA_EUNSUPPORTED, "tensor '%s': dtype %s is not F32, "
                         "F16 or BF16", t ? t->name : "?",
                         t ? msa_st_dtype_name(t->st_dtype) : "?");
    if (first < 0 || n < 0 || first > t->n_elements ||
        n > t->n_elements - first)
        return msa_error(MSA_ERANGE, "tensor '%s': elements [%lld, +%lld) "
                         "outside its %lld", t->name, (long long)first,
                         (long long)n, (long long)t->n_elements);
    const uint8_t *p = (const uint8_t *)t->data;
    if (t->st_dtype == MSA_ST_F32) {
        memcpy(dst, p + first * 4, (size_t)n * 4);
    } else {
        p += first * 2;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + i * 2, 2);
            dst[i] = t->st_dtype == MSA_ST_BF16 ? msa_bf16_to_f32(h)
                                                : msa_f16_to_f32(h);
        }
    }
    return MSA_OK;
}
