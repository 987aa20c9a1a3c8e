# `msa-mem serve` end to end on stories260K with the openai package and raw
# HTTP (tests/test_server.py): skipped where ../shared/assets is absent or
# msa-mem was built without libmicrohttpd; the openai-package cases skip
# where the package is not installed. The load test is tools/bench-serve.py.
add_test(NAME test_server
         COMMAND python3 -m pytest -q -rs -p no:cacheprovider ${CMAKE_CURRENT_SOURCE_DIR}/test_server.py)
set_tests_properties(test_server PROPERTIES LABELS unit TIMEOUT 300
  SKIP_REGULAR_EXPRESSION "(^|\n)[0-9]+ skipped in"
  ENVIRONMENT "MSA_DEFAULT_ASSETS=${MSA_DEFAULT_ASSETS};MSA_BUILD_DIR=${PROJECT_BINARY_DIR}")
