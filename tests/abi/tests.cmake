# ABI guard (tests/abi/): the shared library's exports equal src/attn.map,
# and, when abidiff is installed and the build has debug info, the ABI is a
# superset of the committed baseline abi/attn.abi. tools/ci/abi.sh runs both.
find_program(ATTN_NM nm)
if(ATTN_NM)
  add_test(NAME abi_exports_match_map
           COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/check_symbols.sh $<TARGET_FILE:attn>
                   ${PROJECT_SOURCE_DIR}/src/attn.map)
  set_tests_properties(abi_exports_match_map PROPERTIES LABELS "abi")
endif()
find_program(ATTN_ABIDIFF abidiff)
if(ATTN_ABIDIFF AND CMAKE_BUILD_TYPE MATCHES "Deb" AND NOT ATTN_SANITIZE AND NOT ATTN_COVERAGE)
  add_test(NAME abi_no_removed_or_changed_interfaces
           COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/check_abi.sh $<TARGET_FILE:attn>
                   ${PROJECT_SOURCE_DIR}/abi/attn.abi ${PROJECT_SOURCE_DIR}/include
                   ${PROJECT_BINARY_DIR}/include)
  set_tests_properties(abi_no_removed_or_changed_interfaces PROPERTIES LABELS "abi")
endif()
# libattn_mpi (when built) exports exactly src/mpi/attn_mpi.map.
if(ATTN_NM AND TARGET attn_mpi)
  add_test(NAME abi_mpi_exports_match_map
           COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/check_symbols.sh $<TARGET_FILE:attn_mpi>
                   ${PROJECT_SOURCE_DIR}/src/mpi/attn_mpi.map)
  set_tests_properties(abi_mpi_exports_match_map PROPERTIES LABELS "abi;mpi")
endif()
# A grown public struct stays safe for binaries built against the old header
# (versioned attn_kvcache_config_init): loads the built libattn.so with dlvsym.
if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
  add_executable(test_struct_growth ${CMAKE_CURRENT_LIST_DIR}/test_struct_growth.c)
  target_include_directories(test_struct_growth PRIVATE ${PROJECT_SOURCE_DIR}/include
                                                        ${PROJECT_BINARY_DIR}/include)
  target_compile_options(test_struct_growth PRIVATE ${ATTN_WARN})
  target_link_libraries(test_struct_growth PRIVATE ${CMAKE_DL_LIBS})
  add_dependencies(test_struct_growth attn)
  add_test(NAME abi_struct_growth COMMAND test_struct_growth $<TARGET_FILE:attn>)
  set_tests_properties(abi_struct_growth PROPERTIES LABELS "abi")
endif()
