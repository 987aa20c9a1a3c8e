# The GPU forward pass's own kernels (kernels/forward.cu, kernels/gemv.cu)
# against their C references (kernels/forward_ref.c). Label gpu: skipped
# (exit 77) without CUDA or a GPU.
msa_test(test-forward-kernels-cuda SOURCES test-forward-kernels-cuda.c LABELS gpu TIMEOUT 600)
