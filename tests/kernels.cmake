# kernels/: the CPU MSA attention core against a naive reference in the test
# (tests/test-kernels.c). Its benchmark, bench-cpu, is defined in
# tools/CMakeLists.txt.
msa_test(test-kernels SOURCES ${CMAKE_CURRENT_LIST_DIR}/test-kernels.c LABELS unit TIMEOUT 300)
