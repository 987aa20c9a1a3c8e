# Store damage through the command line (tests/test_store_damage.py): flipped
# bits in LMDB branch and leaf pages, one block's index keys, a token chunk;
# exit 4 with what to do, no crash, damaged blocks left out, export refusing
# damaged sessions, salvage copying every intact session, read-only stores.
# Real stories260K model; skips where ../shared/assets is absent.
add_test(NAME test_store_damage
         COMMAND python3 -m pytest -q -rs -p no:cacheprovider ${CMAKE_CURRENT_SOURCE_DIR}/test_store_damage.py)
set_tests_properties(test_store_damage PROPERTIES LABELS unit TIMEOUT 300
  SKIP_REGULAR_EXPRESSION "(^|\n)[0-9]+ skipped in"
  ENVIRONMENT "MSA_DEFAULT_ASSETS=${MSA_DEFAULT_ASSETS};MSA_BUILD_DIR=${PROJECT_BINARY_DIR}")
