# The store's tests (persist/): see each program's header.
msa_test(test-store SOURCES test-store.c LABELS unit TIMEOUT 300 FAULTS)
msa_test(test-store-crash SOURCES test-store-crash.c LABELS slow TIMEOUT 900)
msa_test(test-store-concurrency SOURCES test-store-concurrency.c LABELS unit TIMEOUT 300)
# tools/bench-resume (what opening a stored session costs) is defined in
# tools/CMakeLists.txt.
msa_test(test-store-damage SOURCES test-store-damage.c LABELS unit TIMEOUT 120)
# The same programs with every full block in a segment file
# (MSA_TEST_SEGMENT_MIN=1, tests/test-store-util.h) instead of only blocks of
# 32 KiB and more, which the small shapes of these tests never reach.
foreach(t test-store test-store-crash test-store-concurrency)
  add_test(NAME ${t}-segments COMMAND ${t})
  get_test_property(${t} LABELS _labels)
  get_test_property(${t} TIMEOUT _timeout)
  set_tests_properties(${t}-segments PROPERTIES LABELS "${_labels}" SKIP_RETURN_CODE 77 TIMEOUT ${_timeout}
                       ENVIRONMENT "MSA_TEST_SEGMENT_MIN=1;MSA_DEFAULT_ASSETS=${MSA_DEFAULT_ASSETS};MSA_BUILD_DIR=${PROJECT_BINARY_DIR};MSA_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
endforeach()
