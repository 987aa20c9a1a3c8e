# memory/: the block pager (tests/test-pager.c), its GPU run (same program
# with --gpu, skipped without a GPU). Its benchmark, bench-pager, is defined
# in tools/CMakeLists.txt.
msa_test(test-pager SOURCES ${CMAKE_CURRENT_LIST_DIR}/test-pager.c LABELS unit TIMEOUT 300)
add_test(NAME test-pager-gpu COMMAND test-pager --gpu)
set_tests_properties(test-pager-gpu PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 300)
