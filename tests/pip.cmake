# The Python bindings installed with pip into a fresh virtual environment
# (tests/test_pip_install.py): offline, run from outside the checkout, they
# find libmsa (the recorded build tree, then an installed prefix through
# pkg-config) and run README.md's Python snippet on stories260K. Skips
# (77) without the assets or without a working `python3 -m venv`.
add_test(NAME pip-install
         COMMAND python3 ${CMAKE_CURRENT_SOURCE_DIR}/test_pip_install.py ${PROJECT_BINARY_DIR}
                 ${PROJECT_SOURCE_DIR} ${CMAKE_COMMAND})
set_tests_properties(pip-install PROPERTIES LABELS unit TIMEOUT 600 SKIP_RETURN_CODE 77
                     ENVIRONMENT "MSA_DEFAULT_ASSETS=${MSA_DEFAULT_ASSETS}")
