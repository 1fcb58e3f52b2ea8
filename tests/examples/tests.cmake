# The examples are programs users copy from: each must run and pass its own check.
if(ATTN_BUILD_EXAMPLES)
  foreach(ex causal_self_attention decoder_layer)
    if(TARGET example_${ex})
      add_test(NAME example_${ex} COMMAND example_${ex})
      set_tests_properties(example_${ex} PROPERTIES LABELS "example")
    endif()
  endforeach()
endif()
