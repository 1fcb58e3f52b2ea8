# The examples are programs users copy from: each must run and pass its own check.
if(ATTN_BUILD_EXAMPLES)
  add_test(NAME example_causal_self_attention COMMAND example_causal_self_attention)
  set_tests_properties(example_causal_self_attention PROPERTIES LABELS "example")
endif()
