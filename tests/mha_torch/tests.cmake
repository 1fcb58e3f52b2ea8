# attn_mha against PyTorch's nn.MultiheadAttention (Debian python3-torch for
# /usr/bin/python3). The script exits 77 when torch is missing: CTest SKIP.
find_program(ATTN_MHA_TORCH_PYTHON NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
if(ATTN_MHA_TORCH_PYTHON)
  set(_mha_torch_env "OMP_NUM_THREADS=1")
  # A sanitized libattn loaded into python needs the ASan runtime preloaded.
  if(ATTN_SANITIZE MATCHES "address")
    if(CMAKE_C_COMPILER_ID STREQUAL "Clang")
      set(_asan_name libclang_rt.asan-${CMAKE_SYSTEM_PROCESSOR}.so)
    else()
      set(_asan_name libasan.so)
    endif()
    execute_process(COMMAND ${CMAKE_C_COMPILER} -print-file-name=${_asan_name}
                    OUTPUT_VARIABLE _asan_rt OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(IS_ABSOLUTE "${_asan_rt}" AND EXISTS "${_asan_rt}")
      list(APPEND _mha_torch_env "LD_PRELOAD=${_asan_rt}" "ASAN_OPTIONS=detect_leaks=0")
    else()
      list(APPEND _mha_torch_env "ATTN_MHA_TORCH_SKIP=ASan runtime not found for preloading")
    endif()
  endif()
  add_test(NAME mha_torch
           COMMAND ${ATTN_MHA_TORCH_PYTHON} ${PROJECT_SOURCE_DIR}/tests/python/test_mha_torch.py
                   $<TARGET_FILE:attn>)
  set_tests_properties(mha_torch PROPERTIES SKIP_RETURN_CODE 77 LABELS "python;torch"
                       ENVIRONMENT "${_mha_torch_env}")
endif()
