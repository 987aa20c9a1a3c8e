/*
 * gpupool.cu: CUDA streams, events and copies for the pager (gpupool.h).
 *
 * The GPU pool is plain device memory filled from pinned host slots, either
 * by the copy engines (cudaMemcpyAsync, cudaMemcpyBatchAsync) or by one
 * gather kernel per step that reads the mapped host slots itself
 * (msa_gpu_copy_blocks). Every CUDA status is mapped to an msa status here,
 * keeping CUDA's own text in the message.
 */
#include "memory/gpupool.h"

#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"

struct msa_gpu {
    cudaStream_t compute;   /* the caller's */
    cudaStream_t copy;      /* ours */
    cudaEvent_t compute_ev[MSA_GPU_RING];
    cudaEvent_t copy_ev[MSA_GPU_RING];
    int64_t compute_last;   /* latest step recorded in each ring */
    int64_t copy_last;
    msa_gpu_h2d h2d;        /* how msa_gpu_copy_blocks moves blocks */
    /* host arena -> its device address (mapped pinned memory), the last
     * few looked up; dev NULL: not mapped */
    struct {
        const void *host;
        const void *dev;
    } map[4];
    int map_next;
    /* scratch of the run and batch paths */
    int32_t *order;         /* [cap] block indices sorted by host slot */
    void **dsts;            /* [2 cap] */
    const void **srcs;      /* [2 cap] */
    size_t *sizes;          /* [2 cap] */
    int cap;
    struct gather_args *gather; /* the gather kernel's parameters */
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
    free(g->order);
    free(g->dsts);
    free(g->srcs);
    free(g->sizes);
    free(g->gather);
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
    g->h2d = MSA_GPU_H2D_GATHER;
    const char *env = getenv("MSA_PAGER_H2D");
    if (env)
        for (int m = MSA_GPU_H2D_MEMCPY; m <= MSA_GPU_H2D_GATHER; m++)
            if (!strcmp(env, msa_gpu_h2d_name((msa_gpu_h2d)m))) g->h2d = (msa_gpu_h2d)m;
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
    if (cudaHostAlloc(&p, bytes, cudaHostAllocMapped) == cudaSuccess) {
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

/* ---- block copies -------------------------------------------------------------- */

extern "C" void msa_gpu_set_h2d(msa_gpu *g, msa_gpu_h2d method) { g->h2d = method; }
extern "C" msa_gpu_h2d msa_gpu_get_h2d(const msa_gpu *g) { return g->h2d; }

extern "C" const char *msa_gpu_h2d_name(msa_gpu_h2d method) {
    switch (method) {
    case MSA_GPU_H2D_MEMCPY: return "memcpy";
    case MSA_GPU_H2D_RUNS: return "runs";
    case MSA_GPU_H2D_BATCH: return "batch";
    case MSA_GPU_H2D_GATHER: return "gather";
    }
    return "?";
}

/* The device address of a mapped pinned host arena, NULL when it is not
 * one (malloc fallback). Looked up once per arena. */
static const void *mapped(msa_gpu *g, const void *host) {
    for (int i = 0; i < 4; i++)
        if (g->map[i].host == host) return g->map[i].dev;
    void *dev = NULL;
    if (cudaHostGetDevicePointer(&dev, (void *)host, 0) != cudaSuccess) {
        cudaGetLastError();
        dev = NULL;
    }
    g->map[g->map_next].host = host;
    g->map[g->map_next].dev = dev;
    g->map_next = (g->map_next + 1) % 4;
    return dev;
}

static int grow_scratch(msa_gpu *g, int n) {
    if (n <= g->cap) return MSA_OK;
    int cap = g->cap ? g->cap : 64;
    while (cap < n) cap *= 2;
    int32_t *o = (int32_t *)realloc(g->order, (size_t)cap * sizeof *o);
    if (o) g->order = o;
    void **d = (void **)realloc(g->dsts, 2 * (size_t)cap * sizeof *d);
    if (d) g->dsts = d;
    const void **s = (const void **)realloc(g->srcs, 2 * (size_t)cap * sizeof *s);
    if (s) g->srcs = s;
    size_t *z = (size_t *)realloc(g->sizes, 2 * (size_t)cap * sizeof *z);
    if (z) g->sizes = z;
    if (!o || !d || !s || !z) return msa_error(MSA_ENOMEM, "pager: copy lists of %d blocks", n);
    g->cap = cap;
    return MSA_OK;
}

/* The copies of RUNS: blocks in host-slot order, runs of consecutive host
 * and GPU slots merged; K then V of each run. Returns the number of copies
 * listed in g->dsts/srcs/sizes. */
static int list_runs(msa_gpu *g, char *dk, char *dv, const char *hk, const char *hv,
                     size_t half, const int32_t *hs, const int32_t *ds, int n) {
    int32_t *o = g->order;
    for (int i = 0; i < n; i++) { /* insertion sort: n is a step's misses */
        int j = i;
        while (j > 0 && hs[o[j - 1]] > hs[i]) {
            o[j] = o[j - 1];
            j--;
        }
        o[j] = i;
    }
    int c = 0;
    for (int i = 0; i < n;) {
        int j = i + 1;
        while (j < n && hs[o[j]] == hs[o[j - 1]] + 1 && ds[o[j]] == ds[o[j - 1]] + 1) j++;
        size_t so = (size_t)hs[o[i]] * half, dof = (size_t)ds[o[i]] * half;
        size_t bytes = (size_t)(j - i) * half;
        g->dsts[c] = dk + dof, g->srcs[c] = hk + so, g->sizes[c++] = bytes;
        g->dsts[c] = dv + dof, g->srcs[c] = hv + so, g->sizes[c++] = bytes;
        i = j;
    }
    return c;
}

enum { GATHER_MAX = 1024, GATHER_THREADS = 256, GATHER_UNROLL = 8 };

/* One launch's blocks: slot lists by value (up to 8 KiB of parameters). */
struct gather_args {
    const uint4 *hk, *hv; /* device addresses of the mapped host arenas */
    uint4 *dk, *dv;
    size_t half_vecs;     /* 16-byte words per half block */
    int32_t hs[GATHER_MAX], ds[GATHER_MAX];
};

/* blockIdx.y: block y/2, K (even) or V (odd); blockIdx.x: a chunk of
 * GATHER_THREADS * GATHER_UNROLL words of it. Every thread issues its
 * GATHER_UNROLL loads before the first store, so that many reads are in
 * flight over the bus at once. */
__global__ void __launch_bounds__(GATHER_THREADS)
    gather_blocks(const __grid_constant__ gather_args a) {
    int b = blockIdx.y >> 1, v = blockIdx.y & 1;
    const uint4 *src = (v ? a.hv : a.hk) + (size_t)a.hs[b] * a.half_vecs;
    uint4 *dst = (v ? a.dv : a.dk) + (size_t)a.ds[b] * a.half_vecs;
    size_t base = (size_t)blockIdx.x * (GATHER_THREADS * GATHER_UNROLL) + threadIdx.x;
    uint4 r[GATHER_UNROLL];
#pragma unroll
    for (int u = 0; u < GATHER_UNROLL; u++) {
        size_t i = base + (size_t)u * GATHER_THREADS;
        if (i < a.half_vecs) r[u] = __ldcs(src + i);
    }
#pragma unroll
    for (int u = 0; u < GATHER_UNROLL; u++) {
        size_t i = base + (size_t)u * GATHER_THREADS;
        if (i < a.half_vecs) __stcg(dst + i, r[u]);
    }
}

static int copy_gather(msa_gpu *g, char *dk, char *dv, const void *mk, const void *mv,
                       size_t half, const int32_t *hs, const int32_t *ds, int n) {
    if (!g->gather && !(g->gather = (gather_args *)malloc(sizeof *g->gather)))
        return msa_error(MSA_ENOMEM, "pager: gather lists");
    gather_args &a = *g->gather; /* 8 KiB: off the stack */
    a.hk = (const uint4 *)mk;
    a.hv = (const uint4 *)mv;
    a.dk = (uint4 *)dk;
    a.dv = (uint4 *)dv;
    a.half_vecs = half / 16;
    size_t chunk = (size_t)GATHER_THREADS * GATHER_UNROLL;
    unsigned gx = (unsigned)((a.half_vecs + chunk - 1) / chunk);
    for (int i0 = 0; i0 < n; i0 += GATHER_MAX) {
        int m = n - i0 < GATHER_MAX ? n - i0 : GATHER_MAX;
        memcpy(a.hs, hs + i0, (size_t)m * sizeof *hs);
        memcpy(a.ds, ds + i0, (size_t)m * sizeof *ds);
        gather_blocks<<<dim3(gx, 2 * (unsigned)m), GATHER_THREADS, 0, g->copy>>>(a);
        int rc = cuda_status(cudaGetLastError(), "gather kernel");
        if (rc != MSA_OK) return rc;
    }
    return MSA_OK;
}

extern "C" int msa_gpu_copy_blocks(msa_gpu *g, char *dev_k, char *dev_v, const char *host_k,
                                   const char *host_v, size_t half_bytes, const int32_t *hs,
                                   const int32_t *ds, int n) {
    if (n <= 0) return MSA_OK;
    msa_gpu_h2d m = g->h2d;
    if (m == MSA_GPU_H2D_GATHER) {
        const void *mk = mapped(g, host_k), *mv = mapped(g, host_v);
        if (mk && mv && half_bytes % 16 == 0 && (uintptr_t)mk % 16 == 0 &&
            (uintptr_t)mv % 16 == 0 && (uintptr_t)dev_k % 16 == 0 && (uintptr_t)dev_v % 16 == 0)
            return copy_gather(g, dev_k, dev_v, mk, mv, half_bytes, hs, ds, n);
        m = MSA_GPU_H2D_RUNS;
    }
    if (m == MSA_GPU_H2D_MEMCPY) {
        int rc = MSA_OK;
        for (int i = 0; i < n && rc == MSA_OK; i++) {
            size_t so = (size_t)hs[i] * half_bytes, dof = (size_t)ds[i] * half_bytes;
            rc = msa_gpu_copy(g, dev_k + dof, host_k + so, half_bytes);
            if (rc == MSA_OK) rc = msa_gpu_copy(g, dev_v + dof, host_v + so, half_bytes);
        }
        return rc;
    }
    int rc = grow_scratch(g, n);
    if (rc != MSA_OK) return rc;
    int c = list_runs(g, dev_k, dev_v, host_k, host_v, half_bytes, hs, ds, n);
#if CUDART_VERSION >= 12080
    if (m == MSA_GPU_H2D_BATCH) {
        cudaMemcpyAttributes at;
        memset(&at, 0, sizeof at);
        at.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
        size_t idx = 0;
#if CUDART_VERSION >= 13000
        return cuda_status(cudaMemcpyBatchAsync(g->dsts, (const void *const *)g->srcs, g->sizes,
                                                (size_t)c, &at, &idx, 1, g->copy),
                           "batched block copies");
#else
        size_t fail = 0;
        return cuda_status(cudaMemcpyBatchAsync(g->dsts, (void **)g->srcs, g->sizes, (size_t)c,
                                                &at, &idx, 1, &fail, g->copy),
                           "batched block copies");
#endif
    }
#endif
    for (int i = 0; i < c && rc == MSA_OK; i++)
        rc = msa_gpu_copy(g, g->dsts[i], g->srcs[i], g->sizes[i]);
    return rc;
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
