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
/* Pinned host memory (cudaHostAlloc); falls back to malloc, *pinned says
 * which. NULL on exhaustion. */
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
