# The command line, the examples and the Python bindings, end to end on the
# real stories260K model (pytest; every test skips with a message where
# ../shared/assets is absent, MSA_ASSETS overrides). abi-sizes prints the
# public structs' layouts for the bindings' ABI check.
add_executable(abi-sizes abi_sizes.c)
target_link_libraries(abi-sizes PRIVATE msa_static)
set_target_properties(abi-sizes PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})

foreach(t test_cli test_python)
  add_test(NAME ${t}
           COMMAND python3 -m pytest -q -rs -p no:cacheprovider ${CMAKE_CURRENT_SOURCE_DIR}/${t}.py)
  set_tests_properties(${t} PROPERTIES LABELS unit TIMEOUT 600
    SKIP_REGULAR_EXPRESSION "(^|\n)[0-9]+ skipped in"
    ENVIRONMENT "MSA_DEFAULT_ASSETS=${MSA_DEFAULT_ASSETS};MSA_BUILD_DIR=${PROJECT_BINARY_DIR};MSA_SOURCE_DIR=${PROJECT_SOURCE_DIR};MSA_LIBRARY=${PROJECT_BINARY_DIR}/libmsa.so")
endforeach()

# Quantized GGUF tensors (Q8_0, F16, BF16) against gguf-py, llama.cpp's own
# GGUF library; skipped where gguf-py is not installed.
add_executable(gguf-dump gguf_dump.c)
target_link_libraries(gguf-dump PRIVATE msa_static)
set_target_properties(gguf-dump PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})
add_test(NAME test_gguf_quant
         COMMAND python3 -m pytest -q -rs -p no:cacheprovider ${CMAKE_CURRENT_SOURCE_DIR}/test_gguf_quant.py)
set_tests_properties(test_gguf_quant PROPERTIES LABELS unit TIMEOUT 300
  SKIP_REGULAR_EXPRESSION "(^|\n)[0-9]+ skipped in"
  ENVIRONMENT "MSA_DEFAULT_ASSETS=${MSA_DEFAULT_ASSETS};MSA_BUILD_DIR=${PROJECT_BINARY_DIR}")

# Every tensor format the engine reads (F16, BF16, Q4_0 .. Q8_0, Q2_K .. Q6_K)
# against gguf-py on random blocks, and on the model files in the user cache
# (tools/fetch-models.sh) where present. Needs no assets.
add_test(NAME test_ggml_quants
         COMMAND python3 -m pytest -q -rs -p no:cacheprovider ${CMAKE_CURRENT_SOURCE_DIR}/test_ggml_quants.py)
set_tests_properties(test_ggml_quants PROPERTIES LABELS unit TIMEOUT 600
  SKIP_REGULAR_EXPRESSION "(^|\n)[0-9]+ skipped in"
  ENVIRONMENT "MSA_BUILD_DIR=${PROJECT_BINARY_DIR}")
