# The KV-cache tests again with the vector-math dispatch lowered to AVX2, so
# the f32 decode path goes through GEMM instead of the AVX-512 loops (both
# paths then meet the reference on machines that have AVX-512).
if(TARGET test_kvcache)
  add_test(NAME test_kvcache_avx2 COMMAND test_kvcache)
  set_tests_properties(test_kvcache_avx2 PROPERTIES
    ENVIRONMENT "CMOCKA_MESSAGE_OUTPUT=stdout;ATTN_CPU=avx2" LABELS "unit")
endif()
