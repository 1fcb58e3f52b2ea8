# fuzz_npz: npz.c is included by the target; npy.c parses the members and
# zlib inflates deflated ones (as in the attn command).
target_sources(${ATTN_FUZZ_TARGET} PRIVATE ${PROJECT_SOURCE_DIR}/tools/npy.c)
target_include_directories(${ATTN_FUZZ_TARGET} PRIVATE ${PROJECT_SOURCE_DIR}/tools)
find_package(PkgConfig REQUIRED)
pkg_check_modules(ATTN_FUZZ_ZLIB REQUIRED IMPORTED_TARGET zlib)
target_link_libraries(${ATTN_FUZZ_TARGET} PRIVATE PkgConfig::ATTN_FUZZ_ZLIB)
