/*
 * base.h: what every layer of msa-mem shares: the error channel, a small
 * thread pool for the CPU backend, half-precision conversions and a clock.
 *
 * It is the bottom of the dependency graph (docs/design.md, "Layers"):
 * kernels/, persist/, memory/ and engine/ all include it; it includes only
 * the public header, for the status codes and dtypes.
 */
#ifndef MSA_BASE_H
#define MSA_BASE_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include "engine/msa.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Records a detailed message for msa_last_error() on this thread and
 * returns `status`, so that failures read `return msa_error(MSA_EIO, ...)`. */
int msa_error(int status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prefixes the current thread's message with context ("session 'a': ") and
 * returns `status`; used when a lower layer already described the failure. */
int msa_error_context(int status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Clears this thread's message. */
void msa_error_clear(void);

/* The one errno -> status mapping of the library (LMDB's codes, some of
 * which are errno values, are mapped in persist/store.c's msa_mdb_status):
 *   ENOENT ENOTDIR                 MSA_ENOTFOUND  (no such file)
 *   ENOSPC EDQUOT EFBIG            MSA_ENOSPC     (no space left on device)
 *   ENOMEM                         MSA_ENOMEM
 *   EEXIST                         MSA_EEXIST
 *   EBUSY EAGAIN ETXTBSY EWOULDBLOCK MSA_EBUSY
 *   EINTR                          MSA_EINTR
 *   EINVAL ENAMETOOLONG            MSA_EINVAL
 *   anything else (EIO, EACCES, EROFS, ...)  MSA_EIO
 * Never negate an errno into a status: -ENOENT is MSA_ENOMEM's value. */
int msa_status_of_errno(int e);

/* msa_error(msa_status_of_errno(e), ...) with ": <strerror(e)>" appended,
 * e.g. msa_error_errno(errno, "%s", path) -> "m.gguf: No such file or
 * directory", MSA_ENOTFOUND. */
int msa_error_errno(int e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- files ----------------------------------------------------------------- */

struct stat;

/* Opens `path` for reading, for the readers of untrusted files (models,
 * tokenizers, configs): opened with O_NONBLOCK, so that a FIFO or a device
 * cannot hang the caller, then fstat'ed, and refused unless it is a regular
 * file; then O_NONBLOCK is cleared again. *fd gets the descriptor (close it)
 * and *st (when not NULL) its stat. Returns MSA_OK; MSA_ENOTFOUND; MSA_EINVAL
 * for a directory, FIFO, socket or device (the message says which);
 * MSA_EIO and the rest of msa_status_of_errno(). */
int msa_file_open_read(const char *path, int *fd, struct stat *st);

/* The same as a stdio stream ("rb"). */
int msa_file_fopen_read(const char *path, FILE **f);

/* ---- CPU parallelism ----------------------------------------------------- */

/* Runs fn(ctx, i) for every i in [0, n) on up to n_threads workers of a
 * process-wide pool (0: one per core), the calling thread included, and
 * returns when all are done. Tasks are handed out dynamically, so uneven
 * tasks balance. Nested calls run serially on the calling thread. */
typedef void (*msa_task_fn)(void *ctx, int64_t i);
void msa_parallel_for(int64_t n, int n_threads, msa_task_fn fn, void *ctx);

/* Number of online cores (at least 1). */
int msa_cpu_count(void);

/* ---- half precision -------------------------------------------------------- */

static inline float msa_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even; NaN stays NaN. */
static inline uint16_t msa_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float msa_f16_to_f32(uint16_t h);
uint16_t msa_f32_to_f16(float f);

/* msa_dtype_size(), msa_dtype_name() and msa_dtype_convert() are public:
 * engine/msa.h. */

/* ---- time ------------------------------------------------------------------ */

/* Monotonic seconds. */
double msa_now(void);

#ifdef __cplusplus
}
#endif

#endif /* MSA_BASE_H */
