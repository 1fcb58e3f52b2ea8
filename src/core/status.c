/* Status strings and the library version. */
#include "core/internal.h"

const char *attn_status_string(attn_status status) {
  switch (status) {
#define ATTN_STATUS_CASE_(name, value, text) \
  case name:                                 \
    return text;
    ATTN_STATUS_LIST(ATTN_STATUS_CASE_)
#undef ATTN_STATUS_CASE_
  }
  return "unknown status";
}

uint32_t attn_version_number(void) { return ATTN_VERSION_NUMBER; }

const char *attn_version_string(void) { return ATTN_VERSION_STRING; }
