/*
 * gpupool.cu: CUDA streams, events and copies for the pager (gpupool.h).
 *
 * No kernels: the GPU pool is plain device memory that cudaMemcpyAsync
 * fills from pinned host slots. Every CUDA status is mapped to an msa status
 * here, keeping CUDA's own text in the message.
 */
#include "memory/gpupool.h"

#include <cuda_runtime.h>
#include <stdlib.h>

#include "kernels/base.h"

struct msa_gpu {
    cudaStream_t compute;   /* the caller's */
    cudaStream_t copy;      /* ours */
    cudaEvent_t compute_ev[MSA_GPU_RING];
    cudaEvent_t copy_ev[MSA_GPU_RING];
    int64_t compute_last;   /* latest step recorded in each ring */
    int64_t copy_last;
};

static int cuda_status(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return MSA_OK;
    cudaGetLastError(); /* clear the sticky non-fatal state */
    return msa_error(e == cudaErrorMemoryAllocation ? MSA_ENOMEM : MSA_ECUDA,
                     "pager: %s: %s", what, cudaGetErrorString(e));
}

extern "C" int msa_gpu_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" void msa_gpu_free(msa_gpu *g) {
    if (!g) return;
    if (g->copy) cudaStreamSynchronize(g->copy);
    for (int i = 0; i < MSA_GPU_RING; i++) {
        if (g->compute_ev[i]) cudaEventDestroy(g->compute_ev[i]);
        if (g->copy_ev[i]) cudaEventDestroy(g->copy_ev[i]);
    }
    if (g->copy) cudaStreamDestroy(g->copy);
    free(g);
}

extern "C" int msa_gpu_init(msa_gpu **out, void *stream) {
    *out = NULL;
    if (msa_gpu_count() < 1) return msa_error(MSA_ENODEV, "pager: no CUDA device");
    msa_gpu *g = (msa_gpu *)calloc(1, sizeof *g);
    if (!g) return msa_error(MSA_ENOMEM, "pager: CUDA state");
    g->compute = (cudaStream_t)stream;
    int rc = cuda_status(cudaStreamCreateWithFlags(&g->copy, cudaStreamNonBlocking),
                         "copy stream");
    for (int i = 0; rc == MSA_OK && i < MSA_GPU_RING; i++) {
        rc = cuda_status(cudaEventCreateWithFlags(&g->compute_ev[i], cudaEventDisableTiming),
                         "event");
        if (rc == MSA_OK)
            rc = cuda_status(cudaEventCreateWithFlags(&g->copy_ev[i], cudaEventDisableTiming),
                             "event");
        if (rc == MSA_OK) rc = cuda_status(cudaEventRecord(g->compute_ev[i], g->compute), "record");
        if (rc == MSA_OK) rc = cuda_status(cudaEventRecord(g->copy_ev[i], g->copy), "record");
    }
    if (rc != MSA_OK) {
        msa_gpu_free(g);
        return rc;
    }
    g->compute_last = g->copy_last = MSA_GPU_RING - 1;
    *out = g;
    return MSA_OK;
}

extern "C" int msa_gpu_malloc(void **p, size_t bytes, const char *what) {
    *p = NULL;
    if (bytes == 0) return MSA_OK;
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        *p = NULL;
        return msa_error(e == cudaErrorMemoryAllocation ? MSA_ENOMEM : MSA_ECUDA,
                         "pager: cudaMalloc of %zu bytes for %s: %s", bytes, what,
                         cudaGetErrorString(e));
    }
    return MSA_OK;
}

extern "C" void msa_gpu_dfree(void *p) {
    if (p) cudaFree(p);
}

extern "C" void *msa_gpu_host_alloc(size_t bytes, int *pinned) {
    void *p = NULL;
    *pinned = 0;
    if (bytes == 0) return NULL;
    if (cudaHostAlloc(&p, bytes, cudaHostAllocDefault) == cudaSuccess) {
        *pinned = 1;
        return p;
    }
    cudaGetLastError();
    return malloc(bytes);
}

extern "C" void msa_gpu_host_free(void *p, int pinned) {
    if (!p) return;
    if (pinned)
        cudaFreeHost(p);
    else
        free(p);
}

/* The ring entry to wait on for step w, given the latest recorded step. */
static int ring_index(int64_t w, int64_t last) {
    if (w > last) w = last;
    if (w < last - MSA_GPU_RING + 1) w = last - MSA_GPU_RING + 1;
    return (int)(w % MSA_GPU_RING);
}

extern "C" int msa_gpu_begin_step(msa_gpu *g, int64_t w) {
    g->compute_last = w;
    return cuda_status(cudaEventRecord(g->compute_ev[w % MSA_GPU_RING], g->compute),
                       "record step");
}

extern "C" int msa_gpu_copy_wait_compute(msa_gpu *g, int64_t w) {
    if (w < 0) return MSA_OK;
    return cuda_status(
        cudaStreamWaitEvent(g->copy, g->compute_ev[ring_index(w, g->compute_last)], 0),
        "copy stream waits for compute");
}

extern "C" int msa_gpu_host_wait_copy(msa_gpu *g, int64_t w) {
    if (w < 0) return MSA_OK;
    return cuda_status(cudaEventSynchronize(g->copy_ev[ring_index(w, g->copy_last)]),
                       "wait for copies");
}

extern "C" int msa_gpu_copy(msa_gpu *g, void *dst, const void *src, size_t bytes) {
    return cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g->copy),
                       "block copy");
}

extern "C" int msa_gpu_copy2d(msa_gpu *g, void *dst, size_t dpitch, const void *src,
                              size_t spitch, size_t width, size_t height) {
    return cuda_status(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height,
                                         cudaMemcpyHostToDevice, g->copy),
                       "tail copy");
}

extern "C" int msa_gpu_end_step(msa_gpu *g, int64_t w) {
    g->copy_last = w;
    cudaEvent_t ev = g->copy_ev[w % MSA_GPU_RING];
    int rc = cuda_status(cudaEventRecord(ev, g->copy), "record copies");
    if (rc == MSA_OK)
        rc = cuda_status(cudaStreamWaitEvent(g->compute, ev, 0), "compute waits for copies");
    return rc;
}

extern "C" int msa_gpu_upload(msa_gpu *g, void *dst, const void *src, size_t bytes) {
    return cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, g->compute),
                       "upload on the compute stream");
}

extern "C" int msa_gpu_is_device_ptr(const void *p) {
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

extern "C" int msa_gpu_download(msa_gpu *g, void *dst, const void *src, size_t bytes) {
    int rc = cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g->compute),
                         "selection download");
    if (rc == MSA_OK) rc = cuda_status(cudaStreamSynchronize(g->compute), "selection download");
    return rc;
}

extern "C" int msa_gpu_sync(msa_gpu *g) {
    int rc = cuda_status(cudaStreamSynchronize(g->copy), "copy stream");
    if (rc == MSA_OK) rc = cuda_status(cudaStreamSynchronize(g->compute), "compute stream");
    return rc;
}
