/* PLACEHOLDER until the module lands: reports ATTN_ERR_UNSUPPORTED. */
#include "core/internal.h"

attn_status attn_lowrank_plan_init(struct attn_plan *plan) {
  return attn_fail(plan->ctx, ATTN_ERR_UNSUPPORTED, "variant: Linformer is not built yet");
}
