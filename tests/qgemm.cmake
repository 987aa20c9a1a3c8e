# kernels/qgemm.h: the quantized products (portable and AVX2 paths) against
# dequantize + dot, every weight type (tests/test-qgemm.c). Its benchmark,
# bench-qgemm, is defined in tools/CMakeLists.txt.
msa_test(test-qgemm SOURCES ${CMAKE_CURRENT_LIST_DIR}/test-qgemm.c LABELS unit TIMEOUT 300)
