# Python tests against the built libattn.so through ctypes (no bindings
# package needed). Included by tests/CMakeLists.txt.
#
# The PyTorch oracle runs on Debian's /usr/bin/python3 with python3-numpy and
# python3-torch (not a pyenv/venv python on PATH); it exits 77 -> SKIPPED
# when numpy or torch is missing.
set(ATTN_TEST_PYTHON /usr/bin/python3 CACHE FILEPATH
    "Python interpreter with numpy and torch for the oracle tests")
if(EXISTS ${ATTN_TEST_PYTHON})
  add_test(NAME torch_masks
           COMMAND ${ATTN_TEST_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_torch_masks.py
                   $<TARGET_FILE:attn>)
  set_tests_properties(torch_masks PROPERTIES
    SKIP_RETURN_CODE 77
    LABELS "python;oracle"
    ENVIRONMENT "PYTHONDONTWRITEBYTECODE=1;OMP_NUM_THREADS=1;${ATTN_TEST_PRELOAD_ENV}")
else()
  message(STATUS "torch_masks: ${ATTN_TEST_PYTHON} not found, PyTorch oracle test not registered")
endif()
