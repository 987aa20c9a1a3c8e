# Sessions on a CUDA engine (engine/session/session.c with the pager in CUDA mode and
# msa_cuda_model_forward_mem) against CPU sessions, resume across processes
# and a tiny GPU pool. Label gpu: skipped (exit 77) without CUDA or a GPU.
msa_test(test-session-cuda SOURCES test-session-cuda.c LABELS gpu TIMEOUT 600)
