# The seed sweep (tools/seed-sweep.sh): every randomized test program over many
# seeds, naming each seed that fails. Labels slow and sweep: the default test
# run (tools/quickstart.sh test) leaves it out; run it with
#   ctest --test-dir build -L sweep          (CPU programs, about 10 minutes on 2 cores)
# and on a GPU machine the CUDA programs with -L gpu-sweep (it skips without a GPU).
add_test(NAME seed-sweep
         COMMAND ${PROJECT_SOURCE_DIR}/tools/seed-sweep.sh --build ${PROJECT_BINARY_DIR})
add_test(NAME seed-sweep-gpu
         COMMAND ${PROJECT_SOURCE_DIR}/tools/seed-sweep.sh --build ${PROJECT_BINARY_DIR} --gpu)
set_tests_properties(seed-sweep PROPERTIES LABELS "slow;sweep" TIMEOUT 3600 SKIP_RETURN_CODE 77
                     RUN_SERIAL ON ENVIRONMENT "MSA_DEFAULT_ASSETS=${MSA_DEFAULT_ASSETS}")
set_tests_properties(seed-sweep-gpu PROPERTIES LABELS "slow;sweep;gpu-sweep" TIMEOUT 3600
                     SKIP_RETURN_CODE 77 RUN_SERIAL ON
                     ENVIRONMENT "MSA_DEFAULT_ASSETS=${MSA_DEFAULT_ASSETS}")
