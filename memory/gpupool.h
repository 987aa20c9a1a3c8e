/*
 * gpupool.h: the CUDA side of the pager, behind plain C functions so that
 * pager.c compiles without CUDA headers. Implemented in gpupool.cu, which is
 * only built when CUDA is on; pager.c calls these under MSA_HAVE_CUDA.
 *
 * The pager queues block copies on its own copy stream and orders them
 * against the caller's compute stream with two rings of events, one entry
 * per step (step % MSA_GPU_RING):
 *   compute[w]  recorded on the compute stream when step w begins: once it
 *               has fired, all attention queued before step w has run, so
 *               GPU slots last read by steps < w may be overwritten.
 *   copy[w]     recorded on the copy stream when step w's copies are
 *               queued: once it has fired, host slots read by step w's
 *               copies may be overwritten.
 * A later event of the same stream implies an earlier one, so a step older
 * than the ring waits on the oldest entry still there. Folder-local.
 */
#ifndef MSA_MEMORY_GPUPOOL_H
#define MSA_MEMORY_GPUPOOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { MSA_GPU_RING = 8 };

typedef struct msa_gpu msa_gpu;

/* Number of visible CUDA devices, 0 when none or on error. */
int msa_gpu_count(void);

/* Creates the copy stream and the event rings (every entry recorded once,
 * so all are valid) for compute stream `stream` (NULL: default stream).
 * MSA_OK, MSA_ENODEV, MSA_ECUDA. */
int msa_gpu_init(msa_gpu **out, void *stream);
/* Waits for the copy stream and releases it; NULL accepted. */
void msa_gpu_free(msa_gpu *g);

/* Device memory (cudaMalloc). MSA_ENOMEM names the size. */
int msa_gpu_malloc(void **p, size_t bytes, const char *what);
void msa_gpu_dfree(void *p);
/* Pinned host memory, mapped into the device's address space
 * (cudaHostAlloc with cudaHostAllocMapped); falls back to malloc, *pinned
 * says which. NULL on exhaustion. */
void *msa_gpu_host_alloc(size_t bytes, int *pinned);
void msa_gpu_host_free(void *p, int pinned);

/* Step w begins: records compute[w]. */
int msa_gpu_begin_step(msa_gpu *g, int64_t w);
/* The copy stream waits until compute[w] has fired (w clamped to the
 * ring; w < 0 does nothing). */
int msa_gpu_copy_wait_compute(msa_gpu *g, int64_t w);
/* The host waits until copy[w] has fired (clamped; w < 0 does nothing). */
int msa_gpu_host_wait_copy(msa_gpu *g, int64_t w);
/* Queues a host-to-device copy on the copy stream. */
int msa_gpu_copy(msa_gpu *g, void *dst, const void *src, size_t bytes);

/* How msa_gpu_copy_blocks moves blocks (docs/bench-pager.md has the
 * figures of each):
 *   MEMCPY  one cudaMemcpyAsync per K and per V of each block;
 *   RUNS    blocks sorted by host slot, runs of consecutive host and GPU
 *           slots merged, one cudaMemcpyAsync per K and per V of each run;
 *   BATCH   the runs of RUNS in one cudaMemcpyBatchAsync (CUDA 12.8+;
 *           RUNS on older runtimes);
 *   GATHER  one kernel per step on the copy stream that reads the mapped
 *           pinned host slots over the bus with 16-byte loads and writes
 *           the GPU slots (RUNS where the host arenas are not mapped pinned
 *           memory or a half block is not a multiple of 16 bytes).
 * The default is GATHER; the environment variable MSA_PAGER_H2D (memcpy,
 * runs, batch, gather), read by msa_gpu_init, overrides it. */
typedef enum msa_gpu_h2d {
    MSA_GPU_H2D_MEMCPY = 0,
    MSA_GPU_H2D_RUNS = 1,
    MSA_GPU_H2D_BATCH = 2,
    MSA_GPU_H2D_GATHER = 3,
} msa_gpu_h2d;
void msa_gpu_set_h2d(msa_gpu *g, msa_gpu_h2d method);
msa_gpu_h2d msa_gpu_get_h2d(const msa_gpu *g);
const char *msa_gpu_h2d_name(msa_gpu_h2d method);

/* Queues the host-to-device copies of n blocks on the copy stream: K and V
 * of host slot hs[i] (half_bytes each, arenas host_k and host_v) into GPU
 * slot ds[i] (arenas dev_k and dev_v). The GPU slots must be distinct; the
 * lists are read before the call returns. Ordered like msa_gpu_copy: after
 * the copy stream's earlier waits, before the next msa_gpu_end_step. */
int msa_gpu_copy_blocks(msa_gpu *g, char *dev_k, char *dev_v, const char *host_k,
                        const char *host_v, size_t half_bytes, const int32_t *hs,
                        const int32_t *ds, int n);
/* Queues `height` rows of `width` bytes with pitches on the copy stream. */
int msa_gpu_copy2d(msa_gpu *g, void *dst, size_t dpitch, const void *src,
                   size_t spitch, size_t width, size_t height);
/* Step w's copies are queued: records copy[w] and makes the compute
 * stream wait for it. */
int msa_gpu_end_step(msa_gpu *g, int64_t w);
/* Queues a copy (host-to-device or device-to-device) on the compute stream,
 * ordered with the attention that reads it. A pageable `src` is staged by
 * the driver before the call returns, so it may be reused at once. */
int msa_gpu_upload(msa_gpu *g, void *dst, const void *src, size_t bytes);
/* 1 when p is device memory. */
int msa_gpu_is_device_ptr(const void *p);
/* Copies device memory back after the compute stream's queued work. */
int msa_gpu_download(msa_gpu *g, void *dst, const void *src, size_t bytes);
/* Waits for both streams. */
int msa_gpu_sync(msa_gpu *g);

#ifdef __cplusplus
}
#endif

#endif /* MSA_MEMORY_GPUPOOL_H */
