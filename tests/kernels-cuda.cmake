# The CUDA backend of the MSA attention core against a host reference
# (kernels/*.cu), the older kernel versions of the lab (kernels/lab/) included.
# Label gpu: skipped (exit 77) without CUDA or a GPU.
msa_test(test-kernels-cuda SOURCES test-kernels-cuda.c LABELS gpu)
if(TARGET msa_kernels_lab)
  target_link_libraries(test-kernels-cuda PRIVATE msa_kernels_lab)
endif()
