# cmocka unit tests: one executable per tests/unit/test_*.c, linked with
# attn_testutil (tests/common/: the naive f64 reference and helpers, plus the
# library's objects, so tests reach internals). ctest name = file name, label
# "unit". Included by tests/CMakeLists.txt.
file(GLOB ATTN_TEST_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/test_*.c)
foreach(src ${ATTN_TEST_SOURCES})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_link_libraries(${name} PRIVATE attn_testutil)
  target_compile_options(${name} PRIVATE ${ATTN_WARN} -Wno-missing-prototypes)
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES ENVIRONMENT "CMOCKA_MESSAGE_OUTPUT=stdout" LABELS "unit")
endforeach()

# test_npy tests the attn command's .npy reader/writer (tools/npy.c).
target_sources(test_npy PRIVATE ${PROJECT_SOURCE_DIR}/tools/npy.c)
target_include_directories(test_npy PRIVATE ${PROJECT_SOURCE_DIR}/tools)
# test_npz: the .npz reader/writer (tools/npz.c, over npy.c; zlib as the attn command).
find_package(PkgConfig REQUIRED)
pkg_check_modules(ATTN_TEST_ZLIB REQUIRED IMPORTED_TARGET zlib)
target_sources(test_npz PRIVATE ${PROJECT_SOURCE_DIR}/tools/npy.c ${PROJECT_SOURCE_DIR}/tools/npz.c)
target_include_directories(test_npz PRIVATE ${PROJECT_SOURCE_DIR}/tools)
target_link_libraries(test_npz PRIVATE PkgConfig::ATTN_TEST_ZLIB)

# The KV-cache tests again with the vector-math dispatch lowered to AVX2, so
# the f32 decode path goes through GEMM instead of the AVX-512 loops (both
# paths then meet the reference on machines that have AVX-512).
add_test(NAME test_kvcache_avx2 COMMAND test_kvcache)
set_tests_properties(test_kvcache_avx2 PROPERTIES
  ENVIRONMENT "CMOCKA_MESSAGE_OUTPUT=stdout;ATTN_CPU=avx2" LABELS "unit")

# The quantized-storage tests on every decode path: the AVX-512 loops
# (default on such machines), the AVX2 loops, and the portable fallback
# (each tile dequantized into scratch, then GEMM).
# test_paged_quant likewise: the paged cache reads those storages through
# the same loops, on views of its block runs.
foreach(isa avx2 generic)
  foreach(t test_kvquant test_paged_quant)
    add_test(NAME ${t}_${isa} COMMAND ${t})
    set_tests_properties(${t}_${isa} PROPERTIES
      ENVIRONMENT "CMOCKA_MESSAGE_OUTPUT=stdout;ATTN_CPU=${isa}" LABELS "unit")
  endforeach()
endforeach()

# The 16-bit tests again on the convert engines (no AVX-512: widen to f32,
# then OpenBLAS), and the exact tests with f32 kept on OpenBLAS instead of
# the AVX-512 tile engine: every engine meets the same bounds.
add_test(NAME test_half_avx2 COMMAND test_half)
set_tests_properties(test_half_avx2 PROPERTIES
  ENVIRONMENT "CMOCKA_MESSAGE_OUTPUT=stdout;ATTN_CPU=avx2" LABELS "unit")
# On AMX CPUs test_half runs the AMX engine; this one keeps bf16 on the
# AVX512_BF16 (vdpbf16ps) engine.
add_test(NAME test_half_avx512 COMMAND test_half)
set_tests_properties(test_half_avx512 PROPERTIES
  ENVIRONMENT "CMOCKA_MESSAGE_OUTPUT=stdout;ATTN_TILE=avx512" LABELS "unit")
add_test(NAME test_backward_blas COMMAND test_backward)
set_tests_properties(test_backward_blas PROPERTIES
  ENVIRONMENT "CMOCKA_MESSAGE_OUTPUT=stdout;ATTN_TILE=blas" LABELS "unit")
add_test(NAME test_exact_blas COMMAND test_exact)
set_tests_properties(test_exact_blas PROPERTIES
  ENVIRONMENT "CMOCKA_MESSAGE_OUTPUT=stdout;ATTN_TILE=blas" LABELS "unit")
# The paged-cache tests on the GEMM path too (AVX-512 lowered to AVX2).
add_test(NAME test_paged_avx2 COMMAND test_paged)
set_tests_properties(test_paged_avx2 PROPERTIES
  ENVIRONMENT "CMOCKA_MESSAGE_OUTPUT=stdout;ATTN_CPU=avx2" LABELS "unit")
