# The install tree as users get it (tests/test_install.sh): `cmake --install`
# into a temporary prefix, then examples/embed.c built against that prefix
# with pkg-config (shared and static) and with find_package(msa), and run on
# stories260K. Needs bash; pkg-config for half of it (skipped, exit 77,
# with a message when absent).
add_test(NAME install
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/test_install.sh ${PROJECT_BINARY_DIR}
                 ${PROJECT_SOURCE_DIR} ${CMAKE_COMMAND} ${CMAKE_C_COMPILER} ${CMAKE_GENERATOR})
set_tests_properties(install PROPERTIES LABELS unit TIMEOUT 600 SKIP_RETURN_CODE 77
                     ENVIRONMENT "MSA_DEFAULT_ASSETS=${MSA_DEFAULT_ASSETS}")
