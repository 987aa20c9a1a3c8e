# The model's forward pass on CUDA (engine/forward/forward_cuda.cu) against the CPU
# forward pass. Label gpu: skipped (exit 77) without CUDA or a GPU.
# Also builds tools/bench-model (CUDA only): prefill and decode of a
# Llama-3.2-1B-shaped model with random weights (docs/bench-model.md).
msa_test(test-model-cuda SOURCES test-model-cuda.c LABELS gpu TIMEOUT 900)
if(MSA_HAVE_CUDA)
  add_executable(bench-model ${PROJECT_SOURCE_DIR}/tools/bench-model.c)
  target_link_libraries(bench-model PRIVATE msa_static)
endif()
