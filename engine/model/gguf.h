/*
 * gguf.h: reading and writing GGUF files (internal to the library).
 *
 * GGUF is the single-file model format of llama.cpp: a header (magic
 * "GGUF", version, tensor count, key/value count), typed key/value metadata,
 * tensor descriptions (name, shape, ggml type, offset), then the tensor data,
 * each tensor aligned to `general.alignment` (32 by default). Versions 2 and
 * 3 are read (both use 64-bit counts); only little-endian files.
 *
 * The reader maps the file read-only and validates everything at open: every
 * length, count and offset is checked against the file before it is used, so
 * that the getters below never read outside the mapping. A file is untrusted
 * input; a malformed one gives MSA_EFORMAT (or MSA_EVERSION for another
 * version) with a message naming the byte offset, never a crash.
 *
 * Lifetimes: every pointer handed out (strings, array data, tensor data and
 * descriptions) points into the mapping or into the reader's own tables and
 * stays valid until msa_gguf_close(). Strings from the file are NOT NUL
 * terminated (use the returned length); tensor names are (they are copied).
 *
 * Tensors of ggml types that are not read (msa_ggml_type_read) are listed (so
 * that a quantised model can still be opened for its tokenizer) but have
 * data NULL and size 0; msa_gguf_find_tensor() returns MSA_EUNSUPPORTED,
 * naming the type, for them.
 *
 * A reader may be used from several threads at once: nothing in it changes
 * after open.
 */
#ifndef MSA_GGUF_H
#define MSA_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "engine/msa.h"

/* Metadata value types, with GGUF's own numbering. */
typedef enum msa_gguf_type {
    MSA_GGUF_UINT8 = 0,
    MSA_GGUF_INT8 = 1,
    MSA_GGUF_UINT16 = 2,
    MSA_GGUF_INT16 = 3,
    MSA_GGUF_UINT32 = 4,
    MSA_GGUF_INT32 = 5,
    MSA_GGUF_FLOAT32 = 6,
    MSA_GGUF_BOOL = 7,
    MSA_GGUF_STRING = 8,
    MSA_GGUF_ARRAY = 9,
    MSA_GGUF_UINT64 = 10,
    MSA_GGUF_INT64 = 11,
    MSA_GGUF_FLOAT64 = 12
} msa_gguf_type;

/* ggml tensor type ids that this project reads (engine/model/ggml_quant.c
 * gives each block layout). The writer writes F32, F16, BF16 and Q8_0. */
enum {
    MSA_GGML_F32 = 0,
    MSA_GGML_F16 = 1,
    MSA_GGML_Q4_0 = 2,   /* blocks of 32 (18 bytes) */
    MSA_GGML_Q4_1 = 3,   /* 32 (20) */
    MSA_GGML_Q5_0 = 6,   /* 32 (22) */
    MSA_GGML_Q5_1 = 7,   /* 32 (24) */
    MSA_GGML_Q8_0 = 8,   /* 32: fp16 scale + 32 int8 (34 bytes) */
    MSA_GGML_Q2_K = 10,  /* super-blocks of 256 (84) */
    MSA_GGML_Q3_K = 11,  /* 256 (110) */
    MSA_GGML_Q4_K = 12,  /* 256 (144) */
    MSA_GGML_Q5_K = 13,  /* 256 (176) */
    MSA_GGML_Q6_K = 14,  /* 256 (210) */
    MSA_GGML_BF16 = 30
};

/* Tensor shapes follow ggml: ne[0] is the fastest-varying (contiguous)
 * dimension, so a weight matrix W (out, in) has ne = {in, out}. */
typedef struct msa_gguf_tensor {
    const char *name;   /* NUL-terminated copy */
    int n_dims;         /* 1..4 */
    int64_t ne[4];      /* elements per dimension; 1 past n_dims */
    int type;           /* ggml type id (MSA_GGML_*) */
    const void *data;   /* into the mapping; NULL for unsupported types */
    size_t size;        /* bytes; 0 for unsupported types */
} msa_gguf_tensor;

typedef struct msa_gguf msa_gguf;

/* Maps and validates the GGUF file at `path`. On success *out owns the
 * mapping; release it with msa_gguf_close().
 * Returns MSA_OK; MSA_ENOTFOUND (no such file), MSA_EIO (cannot read or map),
 * MSA_EFORMAT (not GGUF, truncated, or inconsistent: the message names the
 * byte offset), MSA_EVERSION (GGUF version other than 2 or 3, or a
 * big-endian file), MSA_ENOMEM. On failure *out is NULL. */
int msa_gguf_open(const char *path, msa_gguf **out);

/* As msa_gguf_open() over `size` bytes at `data`, which are not copied: the
 * caller keeps them alive and unchanged until msa_gguf_close(). For tests,
 * fuzzing and files already in memory. */
int msa_gguf_open_memory(const void *data, size_t size, msa_gguf **out);

/* Releases the reader and its mapping. Accepts NULL. */
void msa_gguf_close(msa_gguf *g);

/* The device and inode of the file opened by msa_gguf_open(): returns 1 and
 * fills both, or 0 for a reader opened from memory. Writers use it to refuse
 * replacing a file that is being read (msa_gguf_writer_protect()). */
int msa_gguf_file_id(const msa_gguf *g, uint64_t *dev, uint64_t *ino);

/* 1 when `path` names the file `g` was opened from (same device and inode),
 * else 0. */
int msa_gguf_is_file(const msa_gguf *g, const char *path);

/* The file's GGUF version (2 or 3). */
int msa_gguf_version(const msa_gguf *g);

/* ---- metadata ------------------------------------------------------------
 * Every getter returns MSA_OK, MSA_ENOTFOUND when the key is absent (an
 * expected outcome: no error message is recorded), MSA_EFORMAT when the key
 * holds another type (message names key and type), or MSA_EINVAL for NULL
 * arguments. Outputs are unchanged on failure. */

/* A string value: *s points into the mapping, *len bytes, not NUL
 * terminated. len may be NULL. */
int msa_gguf_get_str(const msa_gguf *g, const char *key, const char **s,
                     size_t *len);

/* Any integer type or bool. A UINT64 above INT64_MAX gives MSA_ERANGE. */
int msa_gguf_get_int(const msa_gguf *g, const char *key, int64_t *v);

/* FLOAT32 or FLOAT64 (integers are not converted). */
int msa_gguf_get_float(const msa_gguf *g, const char *key, double *v);

/* An array value: element type and count. For numeric and bool arrays *data
 * points at n packed little-endian elements in the mapping, possibly
 * unaligned (read them with memcpy). For string arrays *data is NULL (use
 * msa_gguf_get_str_item()); arrays of arrays give MSA_EUNSUPPORTED. data may
 * be NULL. */
int msa_gguf_get_array(const msa_gguf *g, const char *key, msa_gguf_type *elem,
                       uint64_t *n, const void **data);

/* Item i of a string array, in O(1) (offsets are indexed at open).
 * MSA_ERANGE when i >= n; MSA_EFORMAT when the key is not a string array. */
int msa_gguf_get_str_item(const msa_gguf *g, const char *key, uint64_t i,
                          const char **s, size_t *len);

/* Number of metadata keys, and the key of entry i (NUL terminated, valid
 * until close) and its type, for listings. NULL when i is out of range. */
int64_t msa_gguf_n_kv(const msa_gguf *g);
const char *msa_gguf_kv_key(const msa_gguf *g, int64_t i, msa_gguf_type *type);

/* ---- tensors ------------------------------------------------------------- */

/* Finds a tensor by name. MSA_OK; MSA_ENOTFOUND when absent (no message);
 * MSA_EUNSUPPORTED when its ggml type is not one we read (message names the
 * tensor and the type; *t is still set, with data NULL). */
int msa_gguf_find_tensor(const msa_gguf *g, const char *name,
                         const msa_gguf_tensor **t);

int64_t msa_gguf_n_tensors(const msa_gguf *g);

/* Tensor i in file order, or NULL when i is out of range. */
const msa_gguf_tensor *msa_gguf_tensor_at(const msa_gguf *g, int64_t i);

/* The name of a ggml type ("F16", "Q4_K", ...; "type N" when unknown, in a
 * static buffer per thread). */
const char *msa_ggml_type_name(int type);

/* ---- tensor formats (engine/model/ggml_quant.c) --------------------------- */

/* 1 when tensors of ggml `type` are read (the float types, Q4_0, Q4_1,
 * Q5_0, Q5_1, Q8_0 and Q2_K..Q6_K), else 0. */
int msa_ggml_type_read(int type);

/* Elements per block of `type` (1 for float types, 32 or 256 for the
 * quantized ones), 0 for a type that is not read. */
int msa_ggml_block_size(int type);

/* Bytes of one row of ne0 elements of `type`, or 0 when the type is not one
 * we read or ne0 is not a multiple of its block. */
size_t msa_ggml_row_bytes(int type, int64_t ne0);

/* Converts `n` elements (a multiple of the block) of `type` at `src` to
 * fp32, equal bit for bit to gguf-py's dequantization. */
void msa_ggml_to_f32(int type, const void *src, float *dst, int64_t n);

/* ---- writing (engine/model/gguf_write.c) ----------------------------------------
 * A writer collects metadata and tensors in memory and writes a GGUF v3 file
 * in one go. Keys are written in the order they are first set (setting a
 * key again replaces its value); tensors in the order they are added, each
 * aligned to 32 bytes. Strings and metadata are copied; tensor data is NOT:
 * it must stay valid until msa_gguf_writer_write() returns. */
typedef struct msa_gguf_writer msa_gguf_writer;

/* A new, empty writer. MSA_OK or MSA_ENOMEM (*out NULL). */
int msa_gguf_writer_init(msa_gguf_writer **out);
void msa_gguf_writer_free(msa_gguf_writer *w);

/* Scalar setters. MSA_OK, MSA_EINVAL (NULL key/value), MSA_ENOMEM. */
int msa_gguf_writer_set_str(msa_gguf_writer *w, const char *key, const char *s);
int msa_gguf_writer_set_u32(msa_gguf_writer *w, const char *key, uint32_t v);
int msa_gguf_writer_set_i32(msa_gguf_writer *w, const char *key, int32_t v);
int msa_gguf_writer_set_f32(msa_gguf_writer *w, const char *key, float v);
int msa_gguf_writer_set_bool(msa_gguf_writer *w, const char *key, int v);

/* A numeric array of n elements of `elem` (not STRING or ARRAY), packed
 * little-endian at `data` (copied). */
int msa_gguf_writer_set_array(msa_gguf_writer *w, const char *key,
                              msa_gguf_type elem, uint64_t n, const void *data);

/* A string array: strs[i] of lens[i] bytes (lens NULL: NUL-terminated). */
int msa_gguf_writer_set_str_array(msa_gguf_writer *w, const char *key,
                                  const char *const *strs, const size_t *lens,
                                  uint64_t n);

/* Copies metadata entry i of reader `g` (msa_gguf_kv_key() order) with its
 * key, type and value (for tools that rewrite a GGUF with additions).
 * MSA_OK, MSA_EINVAL (i out of range), MSA_EUNSUPPORTED (an array of
 * arrays), MSA_ERANGE (a UINT64 above INT64_MAX), MSA_ENOMEM. */
int msa_gguf_writer_copy_kv(msa_gguf_writer *w, const msa_gguf *g, int64_t i);

/* Adds a tensor of ggml `type` (any type msa_ggml_type_read() accepts) and shape
 * ne[0..n_dims-1] (ggml order); `data` holds exactly
 * msa_ggml_row_bytes(type, ne[0]) * rows bytes and is not copied.
 * MSA_EINVAL for a bad shape or type, MSA_EEXIST for a duplicate name. */
int msa_gguf_writer_add_tensor(msa_gguf_writer *w, const char *name, int type,
                               int n_dims, const int64_t *ne, const void *data);

/* Files the writer must never replace: by device and inode, from a stat, a
 * path (nothing is recorded when it does not exist) or an open reader
 * (nothing for one opened from memory). Up to 8. MSA_OK, MSA_ERANGE. */
int msa_gguf_writer_protect(msa_gguf_writer *w, uint64_t dev, uint64_t ino);
int msa_gguf_writer_protect_path(msa_gguf_writer *w, const char *path);
int msa_gguf_writer_protect_gguf(msa_gguf_writer *w, const msa_gguf *g);

/* Never replace an existing file at the output path (MSA_EEXIST). */
void msa_gguf_writer_no_replace(msa_gguf_writer *w);

/* Writes the file: to a fresh temporary file in the folder of `path`,
 * fsync, rename over `path`, fsync of the folder, so that a crash never
 * leaves a half-written model under the final name (gguf_write.c).
 * MSA_OK; MSA_EEXIST (path is a protected file, or exists under
 * no_replace); MSA_EIO, MSA_ENOSPC and the other errno statuses. After a
 * failure the temporary file is removed and `path` is untouched. */
int msa_gguf_writer_write(msa_gguf_writer *w, const char *path);

#endif /* MSA_GGUF_H */
