/*
 * dispatch_lab.cu: the C launchers of kernels/lab/lab.h: the library's
 * pipeline (msa_cuda_run in kernels/cuda_dispatch.cu: the same checks,
 * workspace plan and top-k) over the lab's index scan and attention, which
 * run the older versions when the tuning asks for them.
 */
#include "kernels/lab/lab.h"

static const msa_cuda_impl lab_impl = {msa_cuda_lab_launch_index_scores,
                                       msa_cuda_lab_launch_block_attn};

extern "C" int msa_cuda_lab_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                                      const msa_attn_batch *b, const msa_exec *ex,
                                      const msa_cuda_tuning *tune) {
    return msa_cuda_run(MSA_CUDA_CALL_ATTN, &lab_impl, cfg, kv, b, ex, tune);
}
extern "C" int msa_cuda_lab_index_select(const msa_attn_config *cfg, const msa_paged_kv *kv,
                                         const msa_attn_batch *b, const msa_exec *ex,
                                         const msa_cuda_tuning *tune) {
    return msa_cuda_run(MSA_CUDA_CALL_SELECT, &lab_impl, cfg, kv, b, ex, tune);
}
extern "C" int msa_cuda_lab_sparse_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                                             const msa_attn_batch *b, const msa_exec *ex,
                                             const msa_cuda_tuning *tune) {
    return msa_cuda_run(MSA_CUDA_CALL_SPARSE, &lab_impl, cfg, kv, b, ex, tune);
}
extern "C" int msa_cuda_lab_dense_attention(const msa_attn_config *cfg, const msa_paged_kv *kv,
                                            const msa_attn_batch *b, const msa_exec *ex,
                                            const msa_cuda_tuning *tune) {
    return msa_cuda_run(MSA_CUDA_CALL_DENSE, &lab_impl, cfg, kv, b, ex, tune);
}
