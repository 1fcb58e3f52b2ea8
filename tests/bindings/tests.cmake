# Bindings and packaging tests (included by tests/CMakeLists.txt).
#   python_bindings   unittest suite of bindings/python (/usr/bin/python3 + numpy)
#   rust_bindings     cargo test --offline in bindings/rust (cargo on PATH)
#   go_bindings       go test in bindings/go (go on PATH)
#   install_consumers cmake --install to a temporary prefix + pkg-config and
#                     find_package consumers
#   deb_install       .deb build/install/purge; skipped unless root and ATTN_TEST_DEB=1
#   docs_doxygen      doxygen with WARN_AS_ERROR (doxygen on PATH)
# A tool that is missing makes its test skip (return code 77), never fail silently.
# Sanitizer builds are skipped: a sanitized libattn.so cannot be loaded into
# python/cargo/go test processes or unsanitized consumers (the ASan runtime
# must come first), and the plain build already covers these tests.
if(ATTN_SANITIZE)
  return()
endif()
set(_bind_dir ${PROJECT_SOURCE_DIR}/bindings)
set(_bind_tests ${CMAKE_CURRENT_LIST_DIR})

# A pkg-config file describing the *build tree* (library next to the build,
# headers in the source and build trees), for the Go and Rust builds. It is
# named attn-uninstalled.pc so pkg-config prefers it when its directory is on
# PKG_CONFIG_PATH, whatever attn.pc exists elsewhere.
file(GENERATE OUTPUT ${PROJECT_BINARY_DIR}/bindings-pkgconfig/attn-uninstalled.pc CONTENT
"libdir=$<TARGET_FILE_DIR:attn>
Name: attn
Description: libattn (build tree)
Version: ${PROJECT_VERSION}
Libs: -L\${libdir} -lattn
Cflags: -I${PROJECT_SOURCE_DIR}/include -I${PROJECT_BINARY_DIR}/include
")

# -- Python ----------------------------------------------------------------------
set(ATTN_PYTHON /usr/bin/python3 CACHE FILEPATH "Python with numpy for the Python binding tests")
add_test(NAME python_bindings
  COMMAND ${CMAKE_COMMAND} -E env ATTN_LIBRARY=$<TARGET_FILE:attn> ATTN_NUM_THREADS=2
          ${_bind_tests}/run_python.sh ${ATTN_PYTHON} ${_bind_dir}/python)
set_tests_properties(python_bindings PROPERTIES LABELS "bindings" SKIP_RETURN_CODE 77 TIMEOUT 300)

# -- install layout + consumers ---------------------------------------------------
add_test(NAME install_consumers
  COMMAND ${_bind_tests}/consumer_test.sh ${PROJECT_BINARY_DIR} ${CMAKE_C_COMPILER})
set_tests_properties(install_consumers PROPERTIES LABELS "packaging" TIMEOUT 300)

# -- .deb (modifies the system: root + ATTN_TEST_DEB=1 only) ----------------------
add_test(NAME deb_install
  COMMAND ${_bind_tests}/deb_test.sh ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR}/deb-test)
set_tests_properties(deb_install PROPERTIES LABELS "packaging" SKIP_RETURN_CODE 77 TIMEOUT 900
                     RUN_SERIAL TRUE)

# -- Rust (cargo from $CARGO or PATH; offline, no dependencies) --------------------
add_test(NAME rust_bindings
  COMMAND ${_bind_tests}/run_rust.sh $<TARGET_FILE_DIR:attn> ${_bind_dir}/rust
          ${PROJECT_BINARY_DIR}/cargo-target)
set_tests_properties(rust_bindings PROPERTIES LABELS "bindings" SKIP_RETURN_CODE 77 TIMEOUT 900)

# -- Go (go from $GO or PATH; cgo through the build tree's attn-uninstalled.pc) ----
add_test(NAME go_bindings
  COMMAND ${_bind_tests}/run_go.sh ${PROJECT_BINARY_DIR}/bindings-pkgconfig
          $<TARGET_FILE_DIR:attn> ${_bind_dir}/go ${PROJECT_BINARY_DIR}/go-work)
set_tests_properties(go_bindings PROPERTIES LABELS "bindings" SKIP_RETURN_CODE 77 TIMEOUT 900)

# -- Doxygen API reference (warnings are errors) -----------------------------------
find_program(ATTN_DOXYGEN doxygen)
if(ATTN_DOXYGEN)
  add_test(NAME docs_doxygen
    COMMAND ${PROJECT_SOURCE_DIR}/docs/build-docs.sh ${PROJECT_BINARY_DIR} ${PROJECT_BINARY_DIR}/docs)
  set_tests_properties(docs_doxygen PROPERTIES LABELS "docs" TIMEOUT 300)
endif()
