# The CUDA backend of the MSA attention core against a host reference
# (kernels/*.cu). Label gpu: skipped (exit 77) without CUDA or a GPU.
msa_test(test-kernels-cuda SOURCES test-kernels-cuda.c LABELS gpu)
