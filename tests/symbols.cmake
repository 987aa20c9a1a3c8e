# The library's surface (tests/check_symbols.py): libmsa.so exports exactly
# the functions msa.h declares MSA_API, in the CPU and the CUDA build; and
# cli/, examples/ and bindings/ include no internal header; inside the library
# every layer includes only the layers below it.
set(_sym_cuda)
if(MSA_HAVE_CUDA)
  set(_sym_cuda --cuda)   # CUDA-only declarations of msa.h count too
endif()
add_test(NAME exported-symbols
         COMMAND python3 ${CMAKE_CURRENT_SOURCE_DIR}/check_symbols.py symbols
                 --lib $<TARGET_FILE:msa> --header ${PROJECT_SOURCE_DIR}/engine/msa.h
                 --nm ${CMAKE_NM} --cc ${CMAKE_C_COMPILER}
                 ${_sym_cuda})
add_test(NAME public-includes
         COMMAND python3 ${CMAKE_CURRENT_SOURCE_DIR}/check_symbols.py includes
                 --source ${PROJECT_SOURCE_DIR})
add_test(NAME layer-includes
         COMMAND python3 ${CMAKE_CURRENT_SOURCE_DIR}/check_symbols.py layers
                 --source ${PROJECT_SOURCE_DIR})
set_tests_properties(exported-symbols public-includes layer-includes PROPERTIES LABELS unit
                     TIMEOUT 60)
