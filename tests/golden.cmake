# Golden files (tests/golden/, made by tests/golden/make-golden.sh): a store
# and an export file of today's format that every later version must still
# read, checked against tests/golden/MANIFEST by test-golden.
msa_test(test-golden SOURCES test-golden.c LABELS unit)
target_compile_definitions(test-golden PRIVATE MSA_GOLDEN_DIR="${CMAKE_CURRENT_SOURCE_DIR}/golden")
