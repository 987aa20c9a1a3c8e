# The model's forward pass on CUDA (engine/forward/forward_cuda.cu) against the CPU
# forward pass. Label gpu: skipped (exit 77) without CUDA or a GPU.
# Its benchmark, bench-model, is defined in tools/CMakeLists.txt.
msa_test(test-model-cuda SOURCES test-model-cuda.c LABELS gpu TIMEOUT 900)
