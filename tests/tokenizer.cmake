# Tokenizers (engine/tokenizer*): llama.cpp's and llama2.c's test vectors for
# SentencePiece (GGUF), GPT-2 (GGUF), Llama-3 (tokenizer.json), stories260K
# (llama2.c .bin), plus streaming decode and flags.
msa_test(test-tokenizer SOURCES test-tokenizer.c LABELS unit TIMEOUT 300)

# The pre-tokenizer of every named variant against Hugging Face's tokenizers
# (skipped where the tokenizers package is not installed).
add_executable(pretok-dump ${CMAKE_CURRENT_LIST_DIR}/pretok_dump.c)
target_link_libraries(pretok-dump PRIVATE msa_static)
set_target_properties(pretok-dump PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})
add_test(NAME test_pretokenizers
         COMMAND python3 -m pytest -q -rs -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR}/test_pretokenizers.py)
set_tests_properties(test_pretokenizers PROPERTIES LABELS unit TIMEOUT 300
  SKIP_REGULAR_EXPRESSION "(^|\n)[0-9]+ skipped in"
  ENVIRONMENT "MSA_DEFAULT_ASSETS=${MSA_DEFAULT_ASSETS};MSA_BUILD_DIR=${PROJECT_BINARY_DIR}")
