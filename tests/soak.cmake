# The SIGKILL soak (tools/soak.py): a writer killed at random moments of
# ingest, gen, fork and compact while eight readers run; afterwards no lost
# commit, fsck clean, every session continuing as a rebuilt one. soak-short
# (20 kills, under a minute) runs with the unit tests; soak (1000 kills,
# 20 to 45 minutes on 2 cores) is labelled long: `ctest -L long` runs it.
foreach(t soak-short soak)
  if(t STREQUAL "soak")
    set(_kills 1000)
    set(_labels "slow;long")
    set(_timeout 3600)
  else()
    set(_kills 20)
    set(_labels "unit")
    set(_timeout 300)
  endif()
  add_test(NAME ${t} COMMAND python3 ${PROJECT_SOURCE_DIR}/tools/soak.py --kills ${_kills}
                                     --build ${PROJECT_BINARY_DIR})
  set_tests_properties(${t} PROPERTIES LABELS "${_labels}" TIMEOUT ${_timeout} SKIP_RETURN_CODE 77
    ENVIRONMENT "MSA_DEFAULT_ASSETS=${MSA_DEFAULT_ASSETS};MSA_BUILD_DIR=${PROJECT_BINARY_DIR}")
endforeach()
