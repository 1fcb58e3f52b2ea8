# libFuzzer targets: every tests/fuzz/fuzz_<name>.c becomes the executable
# fuzz_<name> (clang -fsanitize=fuzzer with the library built under
# -DATTN_SANITIZE=address,undefined and coverage-instrumented). Optional per
# target, all picked up by name:
#   tests/fuzz/fuzz_<name>.cmake   extra sources/libraries (included after the
#                                  target exists; the target is ${ATTN_FUZZ_TARGET})
#   tests/fuzz/corpus/<name>/      seed corpus (committed, small)
#   tests/fuzz/<name>.dict         libFuzzer dictionary
# With seeds, ctest replays them once (test fuzz_<name>_seeds, label "fuzz").
# tools/ci/fuzz.sh builds this and fuzzes each target for a while.
option(ATTN_FUZZ "Build the libFuzzer targets in tests/fuzz (clang + ATTN_SANITIZE)" OFF)

if(ATTN_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "ATTN_FUZZ needs clang (-DCMAKE_C_COMPILER=clang)")
  endif()
  if(NOT ATTN_SANITIZE MATCHES "address")
    message(FATAL_ERROR "ATTN_FUZZ needs -DATTN_SANITIZE=address,undefined (tools/ci/fuzz.sh sets it)")
  endif()
  # Coverage feedback from the library and the test helpers, not just the targets.
  target_compile_options(attn_objects PRIVATE -fsanitize=fuzzer-no-link)
  target_compile_options(attn_testutil PRIVATE -fsanitize=fuzzer-no-link)

  file(GLOB ATTN_FUZZ_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/fuzz_*.c)
  foreach(src ${ATTN_FUZZ_SOURCES})
    get_filename_component(ATTN_FUZZ_TARGET ${src} NAME_WE)
    string(REGEX REPLACE "^fuzz_" "" short ${ATTN_FUZZ_TARGET})
    add_executable(${ATTN_FUZZ_TARGET} ${src})
    target_link_libraries(${ATTN_FUZZ_TARGET} PRIVATE attn_testutil)
    target_compile_options(${ATTN_FUZZ_TARGET} PRIVATE ${ATTN_WARN} -Wno-missing-prototypes
                                                        -fsanitize=fuzzer)
    target_link_options(${ATTN_FUZZ_TARGET} PRIVATE -fsanitize=fuzzer)
    if(EXISTS ${CMAKE_CURRENT_LIST_DIR}/${ATTN_FUZZ_TARGET}.cmake)
      include(${CMAKE_CURRENT_LIST_DIR}/${ATTN_FUZZ_TARGET}.cmake)
    endif()
    set(corpus ${CMAKE_CURRENT_LIST_DIR}/corpus/${short})
    if(IS_DIRECTORY ${corpus})
      # -runs=0: execute every seed once, no fuzzing, nothing written.
      add_test(NAME ${ATTN_FUZZ_TARGET}_seeds COMMAND ${ATTN_FUZZ_TARGET} -runs=0 ${corpus})
      set_tests_properties(${ATTN_FUZZ_TARGET}_seeds PROPERTIES LABELS "fuzz"
        ENVIRONMENT "ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1")
    endif()
  endforeach()
endif()
