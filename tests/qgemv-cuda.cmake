# The kernels over ggml-quantized weights (kernels/qgemv.cu)
# against the C dequantization and exact dots. Label gpu: skipped
# (exit 77) without CUDA or a GPU.
msa_test(test-qgemv-cuda SOURCES test-qgemv-cuda.c LABELS gpu TIMEOUT 300)
