# kernels/: the CPU MSA attention core against a naive reference in the test
# (tests/test-kernels.c), and a CPU benchmark that is built, not run.
msa_test(test-kernels SOURCES ${CMAKE_CURRENT_LIST_DIR}/test-kernels.c LABELS unit TIMEOUT 300)

add_executable(bench-cpu ${PROJECT_SOURCE_DIR}/tools/bench-cpu.c)
target_link_libraries(bench-cpu PRIVATE msa_static)
