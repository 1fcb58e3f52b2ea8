/*
 * libattn — KV cache for step-by-step decoding.
 * Included by attn/attn.h; may also be included on its own.
 */
#ifndef ATTN_KVCACHE_H
#define ATTN_KVCACHE_H

#include "attn/attn.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifdef __cplusplus
}
#endif

#endif /* ATTN_KVCACHE_H */
