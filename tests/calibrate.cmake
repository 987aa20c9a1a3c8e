# The index calibration (tests/test-calibrate.c). test-calibrate (unit):
# gradient check on a tiny random layer and a short calibration of
# stories260K (a few seconds). test-calibrate-stories (slow, minutes): the
# same program with --stories, stories260K calibrated in full, reloaded and
# compared with the training-free index.
msa_test(test-calibrate SOURCES test-calibrate.c LABELS unit TIMEOUT 120)
add_test(NAME test-calibrate-stories COMMAND test-calibrate --stories)
set_tests_properties(test-calibrate-stories PROPERTIES LABELS slow SKIP_RETURN_CODE 77
                     TIMEOUT 900
                     ENVIRONMENT "MSA_DEFAULT_ASSETS=${MSA_DEFAULT_ASSETS};MSA_BUILD_DIR=${PROJECT_BINARY_DIR};MSA_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
