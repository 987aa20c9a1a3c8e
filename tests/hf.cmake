# Tests of engine/model/safetensors.c and engine/model/model_hf.c (Hugging Face model
# directories): parser checks, truncation/byte-flip mutation, config.json
# reading, and the stories260K model converted by tools/llama2c_to_hf.py.
msa_test(test-hf SOURCES test-hf.c LABELS unit TIMEOUT 300)

# libFuzzer target over msa_safetensors_open_memory (clang only):
#   cmake -B build-fuzz -G Ninja -DMSA_CUDA=OFF -DMSA_FUZZ=ON -DCMAKE_C_COMPILER=clang
#   ./build-fuzz/tests/fuzz-safetensors -max_total_time=60
# (MSA_FUZZ is declared once, in tests/CMakeLists.txt.)
if(MSA_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "MSA_FUZZ needs clang (-DCMAKE_C_COMPILER=clang)")
  endif()
  add_executable(fuzz-safetensors fuzz-safetensors.c)
  target_compile_options(fuzz-safetensors PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(fuzz-safetensors PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(fuzz-safetensors PRIVATE msa_static)
endif()
