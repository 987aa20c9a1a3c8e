# Tests of the model area: GGUF reading/writing (with truncation and
# mutation replay), the llama2.c converter, loading, and the forward pass
# against llama2.c's reference outputs.
msa_test(test-gguf SOURCES test-gguf.c LABELS unit)
msa_test(test-model SOURCES test-model.c LABELS unit)

# libFuzzer target over msa_gguf_open_memory(): needs clang.
#   CC=clang cmake -B build-fuzz -DMSA_FUZZ=ON && ninja -C build-fuzz fuzz-gguf
#   ./build-fuzz/tests/fuzz-gguf -max_total_time=60
# (MSA_FUZZ is declared once, in tests/CMakeLists.txt.)
if(MSA_FUZZ)
  if(CMAKE_C_COMPILER_ID MATCHES "Clang")
    add_executable(fuzz-gguf fuzz-gguf.c ${PROJECT_SOURCE_DIR}/engine/model/gguf.c
                   ${PROJECT_SOURCE_DIR}/base/base.c)
    target_include_directories(fuzz-gguf PRIVATE ${PROJECT_SOURCE_DIR})
    target_compile_definitions(fuzz-gguf PRIVATE _GNU_SOURCE)
    target_compile_options(fuzz-gguf PRIVATE -fsanitize=fuzzer,address,undefined -g)
    target_link_options(fuzz-gguf PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_libraries(fuzz-gguf PRIVATE Threads::Threads m)
  else()
    message(WARNING "MSA_FUZZ needs clang (configure with CC=clang); fuzz-gguf not built")
  endif()
endif()
