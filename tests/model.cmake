# Tests of the model area: GGUF reading/writing (with truncation and
# mutation replay), the llama2.c converter, loading, and the forward pass
# against llama2.c's reference outputs.
msa_test(test-gguf SOURCES test-gguf.c LABELS unit)
msa_test(test-model SOURCES test-model.c LABELS unit)

# The libFuzzer target fuzz-gguf is in tests/fuzz.cmake.

# Real models as people download them (tools/fetch-models.sh fills the user
# cache): logits and greedy ids of the library against a numpy forward pass
# over gguf-py's dequantized weights. Skips when no model is cached.
add_executable(model-logits ${CMAKE_CURRENT_LIST_DIR}/model_logits.c)
target_link_libraries(model-logits PRIVATE msa_static)
set_target_properties(model-logits PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})
add_test(NAME test_real_models
         COMMAND python3 -m pytest -q -rs -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR}/test_real_models.py)
set_tests_properties(test_real_models PROPERTIES LABELS unit TIMEOUT 1800
  SKIP_REGULAR_EXPRESSION "(^|\n)[0-9]+ skipped in"
  ENVIRONMENT "MSA_BUILD_DIR=${PROJECT_BINARY_DIR}")

# Model files as users and attackers hand them over (no assets needed):
# outputs never overwrite inputs, the fingerprint cache notices changed
# weights, FIFOs and nonsense hyperparameters are refused, errno mapping.
msa_test(test-model-files SOURCES test-model-files.c LABELS unit)

# The command line against wrong files: outputs over inputs, --force, a FIFO
# as --model, a missing path and a full disk (a tmpfs in a private mount
# namespace) during ingest. Needs the stories260K assets.
add_test(NAME test_cli_files
         COMMAND python3 -m pytest -q -rs -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR}/test_cli_files.py)
set_tests_properties(test_cli_files PROPERTIES LABELS unit TIMEOUT 600
  SKIP_REGULAR_EXPRESSION "(^|\n)[0-9]+ skipped in"
  ENVIRONMENT "MSA_DEFAULT_ASSETS=${MSA_DEFAULT_ASSETS};MSA_BUILD_DIR=${PROJECT_BINARY_DIR}")
