# Tests of engine/pull/sha256.c and engine/pull/pull.c (model download).
msa_test(test-sha256 SOURCES test-sha256.c LABELS unit TIMEOUT 60)
msa_test(test-pull SOURCES test-pull.c LABELS unit TIMEOUT 60)

# `msa-mem pull` end to end against a local server (tests/pull_server.py).
find_program(MSA_PYTHON3 python3)
if(MSA_PYTHON3)
  add_test(NAME test-pull-http
           COMMAND ${MSA_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/test_pull.py $<TARGET_FILE:msa-mem>)
  set_tests_properties(test-pull-http PROPERTIES LABELS unit TIMEOUT 60
                       ENVIRONMENT "MSA_BUILD_DIR=${PROJECT_BINARY_DIR}")
else()
  message(STATUS "msa-mem: python3 not found, test-pull-http not registered")
endif()
