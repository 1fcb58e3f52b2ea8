# PyTorch oracles: libattn compared with PyTorch on the same inputs. Included
# by tests/CMakeLists.txt.
#   torch_masks  every mask kind and their combinations against attention
#                written with torch ops in float64 (test_torch_masks.py)
#   mha_torch    attn_mha against torch.nn.MultiheadAttention with the same
#                weights (test_mha_torch.py)
#
# Our side is the shipped Python package (bindings/python/attn, put on
# PYTHONPATH here) loading the built libattn.so (argv[1], which the scripts
# pass on as $ATTN_LIBRARY). They run on Debian's /usr/bin/python3 with
# python3-numpy and python3-torch (not a pyenv/venv python on PATH) and exit
# 77 -> SKIPPED when numpy or torch is missing.
set(_oracle_env "PYTHONDONTWRITEBYTECODE=1" "OMP_NUM_THREADS=1"
                "PYTHONPATH=${PROJECT_SOURCE_DIR}/bindings/python")
list(APPEND _oracle_env ${ATTN_TEST_PRELOAD_ENV}) # sanitized builds: see tests/CMakeLists.txt
set(ATTN_TEST_PYTHON /usr/bin/python3 CACHE FILEPATH
    "Python interpreter with numpy and torch for the oracle tests")
if(EXISTS ${ATTN_TEST_PYTHON})
  add_test(NAME torch_masks
           COMMAND ${ATTN_TEST_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_torch_masks.py
                   $<TARGET_FILE:attn>)
  set_tests_properties(torch_masks PROPERTIES
    SKIP_RETURN_CODE 77
    LABELS "python;oracle"
    ENVIRONMENT "${_oracle_env}")
else()
  message(STATUS "torch_masks: ${ATTN_TEST_PYTHON} not found, PyTorch oracle test not registered")
endif()

find_program(ATTN_MHA_TORCH_PYTHON NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
if(ATTN_MHA_TORCH_PYTHON)
  add_test(NAME mha_torch
           COMMAND ${ATTN_MHA_TORCH_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_mha_torch.py
                   $<TARGET_FILE:attn>)
  set_tests_properties(mha_torch PROPERTIES SKIP_RETURN_CODE 77 LABELS "python;torch"
                       ENVIRONMENT "${_oracle_env}")
endif()

# backward_torch: libattn's backward pass (attn/backward.h) through attn.torch
# against PyTorch autograd of the naive computation (f32, every mask kind),
# torch.autograd.gradcheck in f64, and attn.torch.MultiheadAttention's
# gradients against nn.MultiheadAttention's (test_backward_torch.py).
if(ATTN_MHA_TORCH_PYTHON)
  add_test(NAME backward_torch
           COMMAND ${ATTN_MHA_TORCH_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_backward_torch.py
                   $<TARGET_FILE:attn>)
  set_tests_properties(backward_torch PROPERTIES SKIP_RETURN_CODE 77 LABELS "python;torch;oracle"
                       ENVIRONMENT "${_oracle_env}")
endif()
