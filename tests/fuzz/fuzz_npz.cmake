# fuzz_npz inflates deflated members with zlib (as the attn command does).
find_package(PkgConfig REQUIRED)
pkg_check_modules(ATTN_FUZZ_ZLIB REQUIRED IMPORTED_TARGET zlib)
target_link_libraries(${ATTN_FUZZ_TARGET} PRIVATE PkgConfig::ATTN_FUZZ_ZLIB)
