# libattn_mpi under mpirun (label "mpi"), when the component is built:
# test_mpi (tests/mpi/test_mpi.c) on 1, 2, 3 and 4 ranks — the cases
# against the naive reference and the fault cases — the Python entry point
# (mpi4py) on 2 ranks, and examples/ring_attention.c on 4 (examples/).
# Everything runs on one machine (--oversubscribe; shared memory and
# loopback only) and can never hang: `timeout` kills mpirun, and ctest's
# TIMEOUT backs it up. As root, Open MPI needs OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM).
find_program(ATTN_MPIEXEC NAMES mpirun mpiexec HINTS ${MPIEXEC_EXECUTABLE})
find_program(ATTN_TIMEOUT timeout)
if(TARGET attn_mpi AND NOT (ATTN_MPIEXEC AND ATTN_TIMEOUT))
  message(WARNING "libattn_mpi is built but mpirun or timeout is missing: no MPI tests")
endif()
if(TARGET attn_mpi AND ATTN_MPIEXEC AND ATTN_TIMEOUT)
  set(ATTN_MPI_TEST_ENV
    "OMPI_ALLOW_RUN_AS_ROOT=1" "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
    "OMPI_MCA_btl=self,vader" "OMPI_MCA_btl_vader_single_copy_mechanism=none"
    "OMPI_MCA_rmaps_base_oversubscribe=1" "OMPI_MCA_hwloc_base_binding_policy=none"
    "ATTN_NUM_THREADS=1")
  # Sanitized builds: Open MPI keeps (and dlcloses) allocations LeakSanitizer
  # reports; test_mpi checks its own allocations with a counting allocator.
  set(ATTN_MPI_SAN_ENV "")
  if(ATTN_SANITIZE MATCHES "address")
    set(ATTN_MPI_SAN_ENV "ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1")
  endif()
  # mpirun command prefix for N ranks, killed after `secs` seconds.
  function(attn_mpirun out np secs)
    set(${out} ${ATTN_TIMEOUT} --kill-after=10 ${secs} ${ATTN_MPIEXEC} --oversubscribe -np ${np}
        PARENT_SCOPE)
  endfunction()

  add_executable(test_mpi ${CMAKE_CURRENT_LIST_DIR}/test_mpi.c
                          ${CMAKE_CURRENT_SOURCE_DIR}/common/reference.c)
  target_link_libraries(test_mpi PRIVATE attn_mpi m)
  target_include_directories(test_mpi PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/common ${PROJECT_SOURCE_DIR}/src)
  target_compile_options(test_mpi PRIVATE ${ATTN_WARN} -Wno-missing-prototypes)
  foreach(np 1 2 3 4)
    attn_mpirun(cmd ${np} 240)
    add_test(NAME mpi_np${np} COMMAND ${cmd} $<TARGET_FILE:test_mpi>)
    set_tests_properties(mpi_np${np} PROPERTIES LABELS "mpi" TIMEOUT 300 PROCESSORS 2
                         ENVIRONMENT "${ATTN_MPI_TEST_ENV};${ATTN_MPI_SAN_ENV}")
  endforeach()

  # The Python entry point (attn.mpi over mpi4py), 2 ranks.
  find_program(ATTN_SYS_PYTHON NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
  if(ATTN_SYS_PYTHON)
    attn_mpirun(cmd 2 240)
    add_test(NAME mpi_python_np2
             COMMAND ${CMAKE_CURRENT_LIST_DIR}/run_python_mpi.sh ${ATTN_SYS_PYTHON}
                     ${PROJECT_SOURCE_DIR}/bindings/python ${PROJECT_BINARY_DIR} ${cmd})
    set_tests_properties(mpi_python_np2 PROPERTIES LABELS "mpi;python" TIMEOUT 300 SKIP_RETURN_CODE 77
                         ENVIRONMENT "${ATTN_MPI_TEST_ENV};${ATTN_TEST_PRELOAD_ENV}")
  endif()
endif()
