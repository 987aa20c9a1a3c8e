/*
 * base.c: error channel, thread pool, half conversions, clock.
 *
 * The pool is deliberately plain: one mutex, one condition variable to wake
 * workers and one to report completion, and an atomic task counter that the
 * workers (and the caller) pull from. A parallel_for over a few hundred
 * microseconds of work costs a few microseconds of wake-up, which is what the
 * CPU decode path needs.
 */
#include "base/base.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- errors ---------------------------------------------------------------- */

static _Thread_local char err_msg[1024];

const char *msa_strerror(int status) {
    switch (status) {
    case MSA_OK: return "success";
    case MSA_EINVAL: return "invalid argument";
    case MSA_ENOMEM: return "out of memory";
    case MSA_EIO: return "I/O error";
    case MSA_ECORRUPT: return "checksum mismatch or corrupt data";
    case MSA_ENOTFOUND: return "not found";
    case MSA_EEXIST: return "already exists";
    case MSA_EVERSION: return "unsupported format version";
    case MSA_EMODEL: return "session belongs to a different model";
    case MSA_EUNSUPPORTED: return "not supported";
    case MSA_ECUDA: return "CUDA error";
    case MSA_ENOSPC: return "no space left on device";
    case MSA_EBUSY: return "resource busy";
    case MSA_EFORMAT: return "malformed or truncated file";
    case MSA_ENET: return "network error";
    case MSA_EINTR: return "interrupted";
    case MSA_ENODEV: return "no GPU available";
    case MSA_ERANGE: return "value out of range";
    case MSA_EAUTH: return "authentication refused";
    case MSA_EFAILED: return "session failed earlier: close and reopen it";
    default: return "unknown error";
    }
}

const char *msa_last_error(void) { return err_msg; }

void msa_error_clear(void) { err_msg[0] = 0; }

int msa_error(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    return status;
}

int msa_status_of_errno(int e) {
    switch (e) {
    case 0: return MSA_OK;
    case ENOENT: case ENOTDIR: return MSA_ENOTFOUND;
    case ENOSPC: case EDQUOT: case EFBIG: return MSA_ENOSPC;
    case ENOMEM: return MSA_ENOMEM;
    case EEXIST: return MSA_EEXIST;
    case EBUSY: case EAGAIN: case ETXTBSY: return MSA_EBUSY;
#if EWOULDBLOCK != EAGAIN
    case EWOULDBLOCK: return MSA_EBUSY;
#endif
    case EINTR: return MSA_EINTR;
    case EINVAL: case ENAMETOOLONG: return MSA_EINVAL;
    default: return MSA_EIO;
    }
}

int msa_error_errno(int e, const char *fmt, ...) {
    char what[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return msa_error(msa_status_of_errno(e), "%s: %s", what, strerror(e));
}

/* ---- files ------------------------------------------------------------------- */

static const char *file_kind(mode_t m) {
    return S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a FIFO (named pipe)"
           : S_ISSOCK(m) ? "a socket" : S_ISCHR(m) ? "a character device"
           : S_ISBLK(m) ? "a block device" : "not a regular file";
}

int msa_file_open_read(const char *path, int *fd_out, struct stat *st_out) {
    *fd_out = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) return msa_error_errno(errno, "%s", path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return msa_error_errno(e, "%s", path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return msa_error(MSA_EINVAL, "%s: %s, not a regular file", path, file_kind(st.st_mode));
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        int e = errno;
        close(fd);
        return msa_error_errno(e, "%s", path);
    }
    if (st_out) *st_out = st;
    *fd_out = fd;
    return MSA_OK;
}

int msa_file_fopen_read(const char *path, FILE **f) {
    *f = NULL;
    int fd;
    int rc = msa_file_open_read(path, &fd, NULL);
    if (rc) return rc;
    *f = fdopen(fd, "rb");
    if (!*f) {
        int e = errno;
        close(fd);
        return msa_error_errno(e, "%s", path);
    }
    return MSA_OK;
}

int msa_error_context(int status, const char *fmt, ...) {
    char prefix[512], old[sizeof err_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err_msg, sizeof old);
    if (old[0])
        snprintf(err_msg, sizeof err_msg, "%.500s: %.500s", prefix, old);
    else
        snprintf(err_msg, sizeof err_msg, "%.500s: %s", prefix, msa_strerror(status));
    return status;
}

/* ---- thread pool ------------------------------------------------------------- */

enum { MSA_MAX_WORKERS = 256 };

typedef struct pool {
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    pthread_t threads[MSA_MAX_WORKERS];
    int n_workers;          /* threads started, the caller not counted */
    uint64_t generation;    /* bumped for every job */
    /* the current job */
    msa_task_fn fn;
    void *ctx;
    int64_t n;
    int want;               /* workers (besides the caller) asked to help */
    int active;             /* workers still inside the job */
    atomic_int_fast64_t next;
} pool;

static pool g_pool = {.mu = PTHREAD_MUTEX_INITIALIZER,
                      .wake = PTHREAD_COND_INITIALIZER,
                      .done = PTHREAD_COND_INITIALIZER};
static pthread_mutex_t g_job_mu = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local int in_pool_job;

static void run_tasks(pool *p, msa_task_fn fn, void *ctx, int64_t n) {
    for (;;) {
        int64_t i = atomic_fetch_add(&p->next, 1);
        if (i >= n) break;
        fn(ctx, i);
    }
}

static void *worker_main(void *arg) {
    int id = (int)(intptr_t)arg;
    pool *p = &g_pool;
    uint64_t seen = 0;
    in_pool_job = 1;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
        seen = p->generation;
        if (id >= p->want) continue;
        msa_task_fn fn = p->fn;
        void *ctx = p->ctx;
        int64_t n = p->n;
        pthread_mutex_unlock(&p->mu);
        run_tasks(p, fn, ctx, n);
        pthread_mutex_lock(&p->mu);
        if (--p->active == 0) pthread_cond_signal(&p->done);
    }
    return NULL;
}

int msa_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

/* A child of fork() has none of the parent's workers: start afresh. */
static void pool_after_fork_child(void) {
    pool *p = &g_pool;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    pthread_mutex_init(&g_job_mu, NULL);
    p->n_workers = 0;
    p->active = 0;
    p->want = 0;
    in_pool_job = 0;
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void) { pthread_atfork(NULL, NULL, pool_after_fork_child); }

/* Starts workers up to `count` (caller excluded); returns how many exist. */
static int pool_grow(pool *p, int count) {
    pthread_once(&atfork_once, register_atfork);
    if (count > MSA_MAX_WORKERS) count = MSA_MAX_WORKERS;
    while (p->n_workers < count) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&p->threads[p->n_workers], &attr, worker_main,
                                (void *)(intptr_t)p->n_workers);
        pthread_attr_destroy(&attr);
        if (rc != 0) break; /* run with what we have */
        p->n_workers++;
    }
    return p->n_workers;
}

void msa_parallel_for(int64_t n, int n_threads, msa_task_fn fn, void *ctx) {
    if (n <= 0) return;
    if (n_threads <= 0) n_threads = msa_cpu_count();
    if (n_threads > n) n_threads = (int)n;
    if (n_threads <= 1 || in_pool_job) {
        for (int64_t i = 0; i < n; i++) fn(ctx, i);
        return;
    }
    pool *p = &g_pool;
    pthread_mutex_lock(&g_job_mu); /* one job at a time in the pool */
    pthread_mutex_lock(&p->mu);
    int helpers = pool_grow(p, n_threads - 1);
    if (helpers > n_threads - 1) helpers = n_threads - 1;
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->want = helpers;
    p->active = helpers;
    atomic_store(&p->next, 0);
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);

    in_pool_job = 1;
    run_tasks(p, fn, ctx, n);
    in_pool_job = 0;

    pthread_mutex_lock(&p->mu);
    while (p->active > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&g_job_mu);
}

/* ---- half precision ---------------------------------------------------------- */

float msa_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            u = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | man << 13;
    } else {
        u = sign | (exp + 127 - 15) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t msa_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00); /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* overflow: inf */
    if (a < 0x38800000u) { /* subnormal or zero in half */
        if (a < 0x33000000u) return (uint16_t)sign;
        uint32_t man = (a & 0x7fffff) | 0x800000;
        int shift = 126 - (int)(a >> 23); /* 14..24 */
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t r = a - 0x38000000u; /* rebias exponent */
    uint32_t half = r >> 13, rem = r & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;
    return (uint16_t)(sign | half);
}

const char *msa_dtype_name(msa_dtype dtype) {
    switch (dtype) {
    case MSA_DTYPE_F32: return "f32";
    case MSA_DTYPE_F16: return "f16";
    case MSA_DTYPE_BF16: return "bf16";
    }
    return "?";
}

size_t msa_dtype_size(msa_dtype dtype) {
    return dtype == MSA_DTYPE_F32 ? 4 : 2;
}

int msa_dtype_convert(void *dst, msa_dtype dst_type, const void *src, msa_dtype src_type,
                      size_t n) {
    if (n == 0) return MSA_OK;
    if (!dst || !src) return msa_error(MSA_EINVAL, "dtype convert: NULL buffer");
    if ((unsigned)dst_type > MSA_DTYPE_BF16 || (unsigned)src_type > MSA_DTYPE_BF16)
        return msa_error(MSA_EINVAL, "dtype convert: unknown dtype %d -> %d", (int)src_type,
                         (int)dst_type);
    if (dst_type == src_type) {
        memcpy(dst, src, n * msa_dtype_size(src_type));
        return MSA_OK;
    }
    for (size_t i = 0; i < n; i++) {
        float x;
        if (src_type == MSA_DTYPE_F32) x = ((const float *)src)[i];
        else if (src_type == MSA_DTYPE_F16) x = msa_f16_to_f32(((const uint16_t *)src)[i]);
        else x = msa_bf16_to_f32(((const uint16_t *)src)[i]);
        if (dst_type == MSA_DTYPE_F32) ((float *)dst)[i] = x;
        else if (dst_type == MSA_DTYPE_F16) ((uint16_t *)dst)[i] = msa_f32_to_f16(x);
        else ((uint16_t *)dst)[i] = msa_f32_to_bf16(x);
    }
    return MSA_OK;
}

/* ---- time -------------------------------------------------------------------- */

double msa_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *msa_version(void) {
#ifdef MSA_HAVE_CUDA
    return "0.1.0 cuda";
#else
    return "0.1.0 cpu";
#endif
}
