/*
 * segment.c: full blocks kept in append-only segment files beside LMDB.
 *
 * A full block's value (the "MSB1" bytes of internal.h, unchanged) is
 * appended to a segment file, STORE/segments/<id>.seg, and LMDB's blocks
 * table holds a 32-byte pointer to it ("MSP1", internal.h). LMDB then
 * copies, writes and syncs a few dozen bytes per block instead of the
 * block itself, and the segment is written with O_DIRECT from memory the
 * writer reuses: no page-cache copy, no fresh pages, and the disk works
 * while the next blocks are compressed (writes leave at every
 * MSA_SEG_FLUSH bytes, not at commit).
 *
 * Crash safety: a commit first writes out and fdatasyncs the segment's
 * bytes, then commits LMDB, which names them. A crash in between leaves
 * bytes that nothing names. Each segment has one writer, ever: the store
 * handle that created it (O_EXCL, a random 64-bit id); after an aborted
 * transaction that writer rewinds to its last committed end, and when it
 * closes it cuts the file there. A segment left by a crashed writer is
 * never appended to again; `compact` deletes segments that no pointer
 * names. Readers map a segment read-only and only touch what a committed
 * pointer names, after checking that the file is long enough.
 *
 * Segment file: a 4096-byte header (magic "MSASEG01", u64 id, u32 crc32c
 * of those 16 bytes, zeros), then values at 4096-aligned write positions
 * (a value itself may start anywhere after the header).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "persist/internal.h"

#define SEG_MAGIC "MSASEG01"
enum { SEG_ALIGN = 4096, SEG_HDR = 4096 };

/* ---- pointers -------------------------------------------------------------- */

size_t msa_segptr_encode(const msa_segptr *p, uint8_t out[MSA_SEGPTR_LEN]) {
    msa_put_le32(out, MSA_SEGPTR_MAGIC);
    msa_put_le64(out + 8, p->seg);
    msa_put_le64(out + 16, p->off);
    msa_put_le32(out + 24, p->len);
    msa_put_le32(out + 28, p->vcrc);
    msa_put_le32(out + 4, msa_crc32c(0, out + 8, MSA_SEGPTR_LEN - 8));
    return MSA_SEGPTR_LEN;
}

int msa_segptr_is(const void *v, size_t len) {
    return len == MSA_SEGPTR_LEN && msa_get_le32(v) == MSA_SEGPTR_MAGIC;
}

int msa_segptr_decode(const void *v, size_t len, msa_segptr *p) {
    const uint8_t *b = v;
    if (!msa_segptr_is(v, len)) return msa_error(MSA_ECORRUPT, "not a segment pointer");
    if (msa_crc32c(0, b + 8, MSA_SEGPTR_LEN - 8) != msa_get_le32(b + 4))
        return msa_error(MSA_ECORRUPT, "segment pointer checksum mismatch");
    p->seg = msa_get_le64(b + 8);
    p->off = msa_get_le64(b + 16);
    p->len = msa_get_le32(b + 24);
    p->vcrc = msa_get_le32(b + 28);
    if (!p->seg || p->off < SEG_HDR || p->len < MSA_BLOCK_HDR || p->off > MSA_SEG_MAX - p->len)
        return msa_error(MSA_ECORRUPT, "segment pointer out of range (segment %016llx, %llu + %u bytes)",
                         (unsigned long long)p->seg, (unsigned long long)p->off, p->len);
    return MSA_OK;
}

uint64_t msa_value_stored_len(const void *v, size_t len) {
    return msa_segptr_is(v, len) ? msa_get_le32((const uint8_t *)v + 24) : len;
}

static void seg_path(char *buf, size_t n, const char *dir, uint64_t id) {
    snprintf(buf, n, "%s/segments/%016llx.seg", dir, (unsigned long long)id);
}

static void seg_header(uint8_t *b, uint64_t id) {
    memset(b, 0, SEG_HDR);
    memcpy(b, SEG_MAGIC, 8);
    msa_put_le64(b + 8, id);
    msa_put_le32(b + 16, msa_crc32c(0, b, 16));
}

static int seg_header_ok(const uint8_t *b, uint64_t id) {
    return !memcmp(b, SEG_MAGIC, 8) && msa_get_le64(b + 8) == id && msa_crc32c(0, b, 16) == msa_get_le32(b + 16);
}

static int fsync_dir(const char *path);

/* ---- reading ------------------------------------------------------------------ */

typedef struct seg_map {
    uint64_t id;
    const uint8_t *base;    /* MSA_SEG_MAX bytes reserved, the file's length readable */
    uint64_t size;          /* file length last seen */
    int fd;
} seg_map;

struct msa_segs {
    char *dir;
    pthread_mutex_t mu;
    seg_map *m;             /* sorted by id */
    size_t n, cap;
};

int msa_segs_new(const char *store_dir, msa_segs **out) {
    msa_segs *s = calloc(1, sizeof *s);
    if (!s || !(s->dir = strdup(store_dir))) {
        free(s);
        return msa_error(MSA_ENOMEM, "%s: segment table", store_dir);
    }
    pthread_mutex_init(&s->mu, NULL);
    *out = s;
    return MSA_OK;
}

void msa_segs_forget(msa_segs *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->n; i++) {
        munmap((void *)s->m[i].base, MSA_SEG_MAX);
        close(s->m[i].fd);
    }
    s->n = 0;
    pthread_mutex_unlock(&s->mu);
}

void msa_segs_free(msa_segs *s) {
    if (!s) return;
    msa_segs_forget(s);
    pthread_mutex_destroy(&s->mu);
    free(s->m);
    free(s->dir);
    free(s);
}

/* The mapping of segment `id` (caller holds s->mu), mapped on first use. */
static int seg_find(msa_segs *s, uint64_t id, seg_map **out) {
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->m[mid].id < id) lo = mid + 1;
        else hi = mid;
    }
    if (lo < s->n && s->m[lo].id == id) {
        *out = &s->m[lo];
        return MSA_OK;
    }
    char path[4200];
    seg_path(path, sizeof path, s->dir, id);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? msa_error(MSA_ECORRUPT, "segment file %s is missing", path)
                               : msa_error_errno(errno, "opening segment file %s", path);
    struct stat sb;
    void *base = MAP_FAILED;
    if (fstat(fd, &sb) == 0 && sb.st_size >= SEG_HDR)
        base = mmap(NULL, MSA_SEG_MAX, PROT_READ, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;
        close(fd);
        return sb.st_size < SEG_HDR ? msa_error(MSA_ECORRUPT, "segment file %s is truncated (%lld bytes)", path,
                                                (long long)sb.st_size)
                                    : msa_error_errno(e, "mapping segment file %s", path);
    }
    madvise(base, MSA_SEG_MAX, MADV_RANDOM); /* a read of index keys must not pull K and V in */
    if (!seg_header_ok(base, id)) {
        munmap(base, MSA_SEG_MAX);
        close(fd);
        return msa_error(MSA_ECORRUPT, "segment file %s: damaged header", path);
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        void *p = realloc(s->m, cap * sizeof *s->m);
        if (!p) {
            munmap(base, MSA_SEG_MAX);
            close(fd);
            return msa_error(MSA_ENOMEM, "segment table");
        }
        s->m = p;
        s->cap = cap;
    }
    memmove(s->m + lo + 1, s->m + lo, (s->n - lo) * sizeof *s->m);
    s->m[lo] = (seg_map){id, base, (uint64_t)sb.st_size, fd};
    s->n++;
    *out = &s->m[lo];
    return MSA_OK;
}

int msa_segs_resolve(msa_segs *s, MDB_val *v) {
    if (!msa_segptr_is(v->mv_data, v->mv_size)) return MSA_OK;
    msa_segptr p;
    int rc = msa_segptr_decode(v->mv_data, v->mv_size, &p);
    if (rc) return rc;
    pthread_mutex_lock(&s->mu);
    seg_map *m;
    if (!(rc = seg_find(s, p.seg, &m)) && p.off + p.len > m->size) {
        struct stat sb; /* the file may have grown since it was mapped */
        if (fstat(m->fd, &sb) == 0) m->size = (uint64_t)sb.st_size;
        if (p.off + p.len > m->size)
            rc = msa_error(MSA_ECORRUPT, "segment %016llx ends at %llu bytes, the block needs %llu (truncated)",
                           (unsigned long long)p.seg, (unsigned long long)m->size,
                           (unsigned long long)(p.off + p.len));
    }
    const uint8_t *val = rc ? NULL : m->base + p.off;
    pthread_mutex_unlock(&s->mu);
    if (rc) return rc;
    if (msa_get_le32(val) != MSA_BLOCK_MAGIC || msa_get_le32(val + 4) != p.vcrc)
        return msa_error(MSA_ECORRUPT, "segment %016llx at %llu: not the block its pointer names",
                         (unsigned long long)p.seg, (unsigned long long)p.off);
    v->mv_data = (void *)val;
    v->mv_size = p.len;
    return MSA_OK;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int msa_segs_list(const char *store_dir, uint64_t **ids, uint64_t **sizes, size_t *n) {
    *ids = NULL;
    if (sizes) *sizes = NULL;
    *n = 0;
    char path[4200];
    snprintf(path, sizeof path, "%s/segments", store_dir);
    DIR *d = opendir(path);
    if (!d) return errno == ENOENT ? MSA_OK : msa_error_errno(errno, "listing %s", path);
    size_t cap = 0;
    int rc = MSA_OK;
    for (struct dirent *e; (e = readdir(d));) {
        char *end;
        unsigned long long id = strtoull(e->d_name, &end, 16);
        if (end != e->d_name + 16 || strcmp(end, ".seg") || !id) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            void *p = realloc(*ids, cap * sizeof **ids);
            if (!p) { rc = msa_error(MSA_ENOMEM, "listing %s", path); break; }
            *ids = p;
        }
        (*ids)[(*n)++] = id;
    }
    closedir(d);
    if (!rc) qsort(*ids, *n, sizeof **ids, cmp_u64);
    if (!rc && sizes && *n && !(*sizes = malloc(*n * sizeof **sizes)))
        rc = msa_error(MSA_ENOMEM, "listing %s", path);
    for (size_t i = 0; !rc && sizes && i < *n; i++) {
        char f[4300];
        struct stat sb;
        seg_path(f, sizeof f, store_dir, (*ids)[i]);
        (*sizes)[i] = stat(f, &sb) == 0 ? (uint64_t)sb.st_size : 0;
    }
    if (rc) { free(*ids); *ids = NULL; *n = 0; }
    return rc;
}

int msa_segs_sync(const char *store_dir) {
    uint64_t *ids;
    size_t n;
    int rc = msa_segs_list(store_dir, &ids, NULL, &n);
    char path[4200];
    for (size_t i = 0; !rc && i < n; i++) {
        seg_path(path, sizeof path, store_dir, ids[i]);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT) continue; /* compacted away meanwhile */
        if (fd < 0 || fdatasync(fd)) rc = msa_error_errno(errno, "syncing %s", path);
        if (fd >= 0) close(fd);
    }
    free(ids);
    if (!rc && n) {
        snprintf(path, sizeof path, "%s/segments", store_dir);
        int e = fsync_dir(path);
        if (e) rc = msa_error_errno(e, "syncing %s", path);
    }
    return rc;
}

int msa_segs_remove(const char *store_dir, uint64_t id, uint64_t *bytes) {
    char path[4200];
    seg_path(path, sizeof path, store_dir, id);
    struct stat sb;
    if (bytes) *bytes = stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
    if (unlink(path) && errno != ENOENT) return msa_error_errno(errno, "removing %s", path);
    return MSA_OK;
}

/* ---- writing ------------------------------------------------------------------- */

/* Appends fill `buf`; every MSA_SEG_FLUSH bytes its whole pages go to a
 * writer thread (the buffers swap), so the disk writes them while the
 * caller compresses the next blocks. One write is in flight at a time. The
 * thread only calls pwrite: fault points are passed, and errors turned
 * into messages, on the caller's thread. */
struct msa_segw {
    char *dir;
    int fd, sync, direct;
    uint64_t id;
    uint64_t committed;     /* end of what committed pointers name (aligned) */
    uint64_t pos;           /* file offset of buf[0] (aligned): what is written or in flight before it */
    uint8_t *buf, *back;    /* SEG_ALIGN-aligned staging; back: in flight or idle */
    size_t cap, used;
    pthread_t th;
    int th_on;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int job, quit;          /* a write of back[0, job_n) at job_off is queued or running */
    size_t job_n;
    uint64_t job_off;
    int job_fault;          /* errno the job fails with (fault injection) */
    int err;                /* errno of the first failed write since the last rewind */
    uint64_t err_off;
    pid_t pid;              /* the process that owns it (a fork's child does not) */
};

/* 0 or the errno of opening or syncing directory `path` */
static int fsync_dir(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return errno;
    int e = msa_fault_point();
    if (!e && fsync(fd)) e = errno;
    close(fd);
    return e;
}

/* pwrite of the whole range, retrying short writes: 0 or an errno. A
 * file system that opens with O_DIRECT but refuses our alignment (a
 * logical block above 4 KiB) gets buffered writes from then on. */
static int pwrite_all(int fd, const uint8_t *b, size_t n, uint64_t off) {
    while (n) {
        ssize_t k = pwrite(fd, b, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && errno == EINVAL) {
            int fl = fcntl(fd, F_GETFL);
            if (fl >= 0 && (fl & O_DIRECT) && fcntl(fd, F_SETFL, fl & ~O_DIRECT) == 0) continue;
            errno = EINVAL;
        }
        if (k <= 0) return k < 0 ? errno : EIO;
        b += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

static void *writer_main(void *arg) {
    msa_segw *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->job && !w->quit) pthread_cond_wait(&w->cv, &w->mu);
        if (!w->job) break;
        const uint8_t *b = w->back;
        size_t n = w->job_n;
        uint64_t off = w->job_off;
        int fault = w->job_fault;
        pthread_mutex_unlock(&w->mu);
        int e = fault ? fault : pwrite_all(w->fd, b, n, off);
        pthread_mutex_lock(&w->mu);
        if (e && !w->err) {
            w->err = e;
            w->err_off = off;
        }
        w->job = 0;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Waits for the write in flight; with `clear`, forgets a failure. 0 or
 * the errno of the first failure since the last rewind (*off: where). */
static int wait_job(msa_segw *w, int clear, uint64_t *off) {
    pthread_mutex_lock(&w->mu);
    while (w->job) pthread_cond_wait(&w->cv, &w->mu);
    int e = w->err;
    if (off) *off = w->err_off;
    if (clear) w->err = 0;
    pthread_mutex_unlock(&w->mu);
    return e;
}

/* wait_job as a status with its message */
static int wait_idle(msa_segw *w) {
    uint64_t off = 0;
    int e = wait_job(w, 0, &off);
    return e ? msa_error_errno(e, "writing segment %016llx at %llu", (unsigned long long)w->id,
                               (unsigned long long)off)
             : MSA_OK;
}

/* Queues the first n bytes of buf (whole pages) for writing at pos and
 * swaps the buffers; the rest of buf moves to the front of the new one. */
static int submit(msa_segw *w, size_t n) {
    int rc = wait_idle(w);
    if (rc) return rc;
    uint8_t *full = w->buf;
    w->buf = w->back;
    memcpy(w->buf, full + n, w->used - n);
    pthread_mutex_lock(&w->mu);
    w->back = full;
    w->job_n = n;
    w->job_off = w->pos;
    w->job_fault = msa_fault_point();
    w->job = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    w->pos += n;
    w->used -= n;
    return MSA_OK;
}

static void writer_free(msa_segw *w) {
    /* in a forked child the writer thread does not exist, and the condition
     * variable still counts it as a waiter (destroying it would wait for it
     * forever): both are left alone there */
    int mine = !w->th_on || w->pid == getpid();
    if (w->th_on && mine) {
        pthread_mutex_lock(&w->mu);
        w->quit = 1;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->th, NULL);
    }
    if (mine) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
    }
    free(w->buf);
    free(w->back);
    free(w->dir);
    free(w);
}

int msa_segw_open(const char *store_dir, int sync, msa_segw **out) {
    *out = NULL;
    char dir[4200], path[4300];
    snprintf(dir, sizeof dir, "%s/segments", store_dir);
    if (mkdir(dir, 0755) == 0) {
        int e = sync ? fsync_dir(store_dir) : 0;
        if (e) return msa_error_errno(e, "syncing %s", store_dir);
    } else if (errno != EEXIST) {
        return msa_error_errno(errno, "creating %s", dir);
    }
    msa_segw *w = calloc(1, sizeof *w);
    if (!w) return msa_error(MSA_ENOMEM, "%s: segment writer", store_dir);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->fd = -1;
    w->cap = MSA_SEG_FLUSH + SEG_ALIGN;
    if (msa_fault_point() == ENOMEM || !(w->dir = strdup(store_dir)) ||
        posix_memalign((void **)&w->buf, SEG_ALIGN, w->cap) ||
        posix_memalign((void **)&w->back, SEG_ALIGN, w->cap)) {
        writer_free(w);
        return msa_error(MSA_ENOMEM, "%s: segment writer", store_dir);
    }
    w->sync = sync;
    int e = 0;
    for (int tries = 0; w->fd < 0 && tries < 8; tries++) {
        if (getrandom(&w->id, sizeof w->id, 0) != sizeof w->id) w->id = (uint64_t)rand() << 32 ^ (uint64_t)getpid();
        if (!w->id) continue;
        seg_path(path, sizeof path, store_dir, w->id);
        if ((e = msa_fault_point())) break;
        /* O_DIRECT where the file system has it (tmpfs does not) */
        w->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_DIRECT, 0644);
        w->direct = w->fd >= 0;
        if (w->fd < 0 && errno == EINVAL) w->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        e = w->fd < 0 ? errno : 0;
        if (e && e != EEXIST) break;
    }
    if (w->fd < 0) {
        int rc = msa_error_errno(e ? e : EEXIST, "creating a segment file in %s", dir);
        writer_free(w);
        return rc;
    }
    seg_header(w->buf, w->id);
    int f = msa_fault_point();
    e = f ? f : pwrite_all(w->fd, w->buf, SEG_HDR, 0);
    int rc = e ? msa_error_errno(e, "writing the header of %s", path) : MSA_OK;
    if (!rc && sync && (e = fsync_dir(dir))) rc = msa_error_errno(e, "syncing %s", dir);
    if (!rc && pthread_create(&w->th, NULL, writer_main, w)) rc = msa_error(MSA_ENOMEM, "%s: writer thread", path);
    if (rc) {
        close(w->fd);
        unlink(path);
        writer_free(w);
        return rc;
    }
    w->th_on = 1;
    w->pid = getpid();
    w->committed = w->pos = SEG_HDR;
    *out = w;
    return MSA_OK;
}

int msa_segw_mine(const msa_segw *w) { return w->pid == getpid(); }

/* Room left in this segment for another value of len bytes. */
int msa_segw_fits(const msa_segw *w, size_t len) {
    return w->pos + w->used + len + SEG_ALIGN <= MSA_SEG_MAX;
}

int msa_segw_append(msa_segw *w, const void *val, size_t len, msa_segptr *p) {
    if (!msa_segw_fits(w, len))
        return msa_error(MSA_ENOSPC, "segment %016llx is full", (unsigned long long)w->id);
    p->seg = w->id;
    p->off = w->pos + w->used;
    p->len = (uint32_t)len;
    p->vcrc = msa_get_le32((const uint8_t *)val + 4);
    const uint8_t *src = val;
    while (len) {
        size_t take = w->cap - w->used < len ? w->cap - w->used : len;
        memcpy(w->buf + w->used, src, take);
        w->used += take;
        src += take;
        len -= take;
        if (w->used >= MSA_SEG_FLUSH) {
            int rc = submit(w, w->used & ~(size_t)(SEG_ALIGN - 1));
            if (rc) return rc;
        }
    }
    return MSA_OK;
}

int msa_segw_seal(msa_segw *w) {
    if (w->used) {
        size_t padded = (w->used + SEG_ALIGN - 1) & ~(size_t)(SEG_ALIGN - 1);
        memset(w->buf + w->used, 0, padded - w->used);
        w->used = padded;
        int rc = submit(w, padded);
        if (rc) return rc;
    }
    int rc = wait_idle(w);
    if (rc) return rc;
    if (w->sync) {
        int f = msa_fault_point();
        if (f || fdatasync(w->fd))
            return msa_error_errno(f ? f : errno, "syncing segment %016llx", (unsigned long long)w->id);
    }
    return MSA_OK;
}

void msa_segw_commit(msa_segw *w) {
    w->committed = w->pos;
}

void msa_segw_rewind(msa_segw *w) {
    wait_job(w, 1, NULL);
    w->pos = w->committed;
    w->used = 0;
}

void msa_segw_close(msa_segw *w) {
    if (!w) return;
    if (!msa_segw_mine(w)) { /* the parent's segment, inherited by fork: leave it be */
        close(w->fd);
        writer_free(w);
        return;
    }
    wait_job(w, 1, NULL);
    /* what follows the last commit is named by nothing */
    if (ftruncate(w->fd, (off_t)w->committed) == 0 && w->sync) fdatasync(w->fd);
    close(w->fd);
    if (w->committed == SEG_HDR) { /* nothing committed: the file is not needed */
        char path[4300];
        seg_path(path, sizeof path, w->dir, w->id);
        unlink(path);
    }
    writer_free(w);
}
