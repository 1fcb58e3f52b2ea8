# Debian packages from the install rules: `cpack -G DEB` in a build tree.
#
#   libattn0     component "runtime": lib/libattn.so.0 and libattn.so.0.x
#   libattn-dev  component "dev":     headers, libattn.so link, libattn.a,
#                                     attn.pc, the CMake package
#   attn-tools   component "tools":   the attn command and attn-bench
#
# Configure with -DCMAKE_INSTALL_PREFIX=/usr so GNUInstallDirs picks Debian's
# multiarch libdir (lib/x86_64-linux-gnu); the packages always install under
# /usr.
# tests/bindings/deb_test.sh builds, installs and removes them.

set(CPACK_PACKAGE_NAME "libattn")
set(CPACK_PACKAGE_VENDOR "libattn")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_PACKAGE_HOMEPAGE_URL "${PROJECT_HOMEPAGE_URL}")
set(CPACK_PACKAGE_CONTACT "libattn maintainers <libattn@example.invalid>")
set(CPACK_PACKAGING_INSTALL_PREFIX "/usr")
set(CPACK_GENERATOR "DEB")
set(CPACK_OUTPUT_FILE_PREFIX "${PROJECT_BINARY_DIR}/packages")

set(CPACK_COMPONENTS_ALL runtime dev tools)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT) # libattn0_0.1.0_amd64.deb
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_PACKAGE_SECTION "libs")
set(CPACK_DEBIAN_PACKAGE_PRIORITY "optional")

set(_attn_debver "${PROJECT_VERSION}-${CPACK_DEBIAN_PACKAGE_RELEASE}")

set(CPACK_DEBIAN_RUNTIME_DESCRIPTION
    "libattn computes exact and long-sequence attention as GEMM calls into\nOpenBLAS behind a stable C ABI. This package holds the shared library.")
set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME "libattn${ATTN_SOVERSION}")
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SECTION "libs")
# libattn.so.0 links libopenblas.so.0 (any of Debian's pthread/openmp/serial
# builds, which libopenblas0 pulls in) and glibc.
set(CPACK_DEBIAN_RUNTIME_PACKAGE_DEPENDS "libc6 (>= 2.34), libopenblas0")
# shlibs file, and postinst/postrm that run ldconfig for libattn.so.0 (CPack
# needs the `file` and `readelf` tools for this: apt packages file, binutils).
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY ">=")

set(CPACK_DEBIAN_DEV_DESCRIPTION
    "Headers, the libattn.so link, the static library, attn.pc for pkg-config and\nthe attn CMake package (find_package(attn CONFIG), target attn::attn).")
set(CPACK_DEBIAN_DEV_PACKAGE_NAME "libattn-dev")
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION "libdevel")
# attn.pc has Requires.private: openblas, so pkg-config needs openblas.pc.
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS
    "libattn${ATTN_SOVERSION} (= ${_attn_debver}), libopenblas-dev")

set(CPACK_DEBIAN_TOOLS_DESCRIPTION
    "The attn command (a demo of every variant with pictures, benchmark sweeps\nwith plots, attention on .npy files) and attn-bench.")
set(CPACK_DEBIAN_TOOLS_PACKAGE_NAME "attn-tools")
set(CPACK_DEBIAN_TOOLS_PACKAGE_SECTION "science")
# attn links libattn, libpng and zlib (.npz); attn-bench also links OpenBLAS directly.
# gnuplot is used at run time for plots when present.
set(CPACK_DEBIAN_TOOLS_PACKAGE_DEPENDS
    "libattn${ATTN_SOVERSION} (= ${_attn_debver}), libpng16-16, zlib1g, libopenblas0, libc6 (>= 2.34)")
set(CPACK_DEBIAN_TOOLS_PACKAGE_SUGGESTS "gnuplot-nox")

include(CPack)
