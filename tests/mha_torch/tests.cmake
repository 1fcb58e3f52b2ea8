# attn_mha against PyTorch's nn.MultiheadAttention (Debian python3-torch for
# /usr/bin/python3). The script exits 77 when torch is missing: CTest SKIP.
find_program(ATTN_MHA_TORCH_PYTHON NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
if(ATTN_MHA_TORCH_PYTHON)
  set(_mha_torch_env "OMP_NUM_THREADS=1")
  list(APPEND _mha_torch_env ${ATTN_TEST_PRELOAD_ENV}) # sanitized builds: see tests/CMakeLists.txt
  add_test(NAME mha_torch
           COMMAND ${ATTN_MHA_TORCH_PYTHON} ${PROJECT_SOURCE_DIR}/tests/python/test_mha_torch.py
                   $<TARGET_FILE:attn>)
  set_tests_properties(mha_torch PROPERTIES SKIP_RETURN_CODE 77 LABELS "python;torch"
                       ENVIRONMENT "${_mha_torch_env}")
endif()
