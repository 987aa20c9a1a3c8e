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
                   ${PROJECT_SOURCE_DIR}/engine/model/ggml_quant.c
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

# Real models as people download them (tools/fetch-models.sh fills the user
# cache): logits and greedy ids of the library against a numpy forward pass
# over gguf-py's dequantized weights. Skips when no model is cached.
add_executable(model-logits ${CMAKE_CURRENT_LIST_DIR}/model_logits.c)
target_link_libraries(model-logits PRIVATE msa_static)
set_target_properties(model-logits PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})
add_test(NAME test_real_models
         COMMAND python3 -m pytest -q -rs -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR}/test_real_models.py)
set_tests_properties(test_real_models PROPERTIES LABELS unit TIMEOUT 900
  SKIP_REGULAR_EXPRESSION "(^|\n)[0-9]+ skipped in"
  ENVIRONMENT "MSA_BUILD_DIR=${PROJECT_BINARY_DIR}")
