# Fuzzing every parser of untrusted bytes with libFuzzer, on instrumented
# library code.
#
# With -DMSA_FUZZ=ON (clang only; tools/fuzz.sh configures such a build),
# the library's C sources are compiled a second time into msa_fuzz, a
# static library built with -fsanitize=fuzzer-no-link,address,undefined:
# coverage feedback, AddressSanitizer and UBSan reach the parsers
# themselves, not just the fuzz entry points (the first fuzz-safetensors
# linked the plain libmsa.a and saw 10 coverage points in 19M runs). Each
# fuzz-* target links it with -fsanitize=fuzzer:
#
#   fuzz-gguf             GGUF header, metadata, tensor table, every block
#                         format, the GGUF tokenizer and model.c's checks
#   fuzz-safetensors      safetensors header and tensors
#   fuzz-tokenizer-json   Hugging Face tokenizer.json
#   fuzz-llama2c          llama2.c checkpoint + tokenizer.bin (convert)
#   fuzz-export           export files (msa_store_import)
#   fuzz-store-records    session records, block entries, block codec
#
# tests/fuzz/<name>/ holds project-written seed inputs and every input that
# once crashed a target (regression cases, named crash-*). Tests:
#   fuzz-replay-<name>  (unit, every build) the target's code with a plain
#                       main() (fuzz_replay.c) replays its folder
#   fuzz-parsers        (slow) tools/fuzz.sh: a clang fuzz build and a
#                       bounded run of every target from its folder.
# The long runs and their figures: docs/reliability.md.
set(MSA_FUZZ_TARGETS fuzz-gguf fuzz-safetensors fuzz-tokenizer-json fuzz-llama2c
    fuzz-export fuzz-store-records)

if(MSA_FUZZ)
  file(GLOB _fz_src CONFIGURE_DEPENDS
       ${PROJECT_SOURCE_DIR}/base/*.c ${PROJECT_SOURCE_DIR}/kernels/*.c
       ${PROJECT_SOURCE_DIR}/persist/*.c ${PROJECT_SOURCE_DIR}/memory/*.c)
  file(GLOB_RECURSE _fz_engine CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/engine/*.c)
  add_library(msa_fuzz STATIC ${_fz_src} ${_fz_engine})
  target_include_directories(msa_fuzz PUBLIC ${PROJECT_SOURCE_DIR} ${MSA_PUBLIC_INCLUDE})
  target_compile_definitions(msa_fuzz PUBLIC _GNU_SOURCE MSA_BUILD_SHARED)
  target_compile_options(msa_fuzz PUBLIC -fsanitize=fuzzer-no-link,address,undefined
                         -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g)
  target_link_libraries(msa_fuzz PUBLIC ${MSA_DEPS})
  foreach(t ${MSA_FUZZ_TARGETS})
    add_executable(${t} ${t}.c)
    target_link_libraries(${t} PRIVATE msa_fuzz)
    target_link_options(${t} PRIVATE -fsanitize=fuzzer,address,undefined)
  endforeach()
endif()

# Every build: each target with fuzz_replay.c's main() instead of libFuzzer,
# replaying tests/fuzz/<target>/ (seeds and former crashes) in the default
# label.
foreach(t ${MSA_FUZZ_TARGETS})
  string(REPLACE "fuzz-" "" _name ${t})
  msa_test(fuzz-replay-${_name} SOURCES ${t}.c fuzz_replay.c LABELS unit
           ARGS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/${_name})
endforeach()
add_test(NAME fuzz-parsers
         COMMAND ${PROJECT_SOURCE_DIR}/tools/fuzz.sh ${PROJECT_BINARY_DIR}/fuzz 10)
set_tests_properties(fuzz-parsers PROPERTIES LABELS slow SKIP_RETURN_CODE 77 TIMEOUT 900
                     ENVIRONMENT "MSA_DEFAULT_ASSETS=${MSA_DEFAULT_ASSETS}")
