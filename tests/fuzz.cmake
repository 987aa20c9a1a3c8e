# Bounded fuzzing of the untrusted-file parsers (GGUF, safetensors) with
# libFuzzer; skipped where clang or its runtime is missing.
add_test(NAME fuzz-parsers
         COMMAND ${PROJECT_SOURCE_DIR}/tools/fuzz.sh ${PROJECT_BINARY_DIR}/fuzz 20)
set_tests_properties(fuzz-parsers PROPERTIES LABELS slow SKIP_RETURN_CODE 77 TIMEOUT 900
                     ENVIRONMENT "MSA_DEFAULT_ASSETS=${MSA_DEFAULT_ASSETS}")
