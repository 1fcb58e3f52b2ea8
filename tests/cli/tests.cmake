# Tests of the attn command (tools/). Included by tests/CMakeLists.txt.
# (The .npy parser's unit test is tests/unit/test_npy.c.)

if(TARGET attn_cli)
  set(_cli ${CMAKE_CURRENT_LIST_DIR})
  set(_work ${CMAKE_CURRENT_BINARY_DIR}/cli)
  add_test(NAME cli_basics
           COMMAND sh ${_cli}/cli_basics.sh $<TARGET_FILE:attn_cli> ${PROJECT_VERSION})
  add_test(NAME cli_demo
           COMMAND sh ${_cli}/demo_test.sh $<TARGET_FILE:attn_cli> ${_work}/demo)
  add_test(NAME cli_bad_npy
           COMMAND sh ${_cli}/bad_npy_test.sh $<TARGET_FILE:attn_cli> ${_cli}/bad_npy
                   ${_work}/bad_npy)
  add_test(NAME cli_bad_npz
           COMMAND sh ${_cli}/bad_npz_test.sh $<TARGET_FILE:attn_cli> ${_cli} ${_work}/bad_npz)
  add_test(NAME cli_bench
           COMMAND sh ${_cli}/bench_test.sh $<TARGET_FILE:attn_cli> ${_cli}/fake_attn_bench.sh
                   ${_work}/bench)
  if(TARGET attn-bench)
    add_test(NAME cli_bench_real
             COMMAND sh ${_cli}/bench_real_test.sh $<TARGET_FILE:attn_cli>
                     $<TARGET_FILE:attn-bench> ${_work}/bench_real)
    set_tests_properties(cli_bench_real PROPERTIES LABELS "cli" TIMEOUT 300)
  endif()
  # attn run against NumPy; Debian's python3-numpy (the pyenv python3 on PATH
  # may lack it). Exit 77 = numpy missing = skipped.
  find_program(ATTN_SYSTEM_PYTHON3 NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
  if(NOT ATTN_SYSTEM_PYTHON3)
    find_program(ATTN_SYSTEM_PYTHON3 NAMES python3)
  endif()
  if(ATTN_SYSTEM_PYTHON3)
    add_test(NAME cli_run_numpy
             COMMAND ${ATTN_SYSTEM_PYTHON3} ${_cli}/run_numpy.py $<TARGET_FILE:attn_cli>
                     ${_work}/run_numpy)
    set_tests_properties(cli_run_numpy PROPERTIES SKIP_RETURN_CODE 77)
  endif()
  add_test(NAME cli_man_completion
           COMMAND sh ${_cli}/man_completion_test.sh $<TARGET_FILE:attn_cli> ${PROJECT_SOURCE_DIR})
  set_tests_properties(cli_basics cli_demo cli_bad_npy cli_bad_npz cli_bench cli_man_completion
                       PROPERTIES LABELS "cli")
  if(ATTN_SYSTEM_PYTHON3)
    set_tests_properties(cli_run_numpy PROPERTIES LABELS "cli")
  endif()
  set_tests_properties(cli_demo PROPERTIES TIMEOUT 600)
endif()
