/*
 * libattn — multi-head attention: split/merge views, the attn_mha layer (GQA/MQA).
 * Included by attn/attn.h; may also be included on its own.
 */
#ifndef ATTN_HEADS_H
#define ATTN_HEADS_H

#include "attn/attn.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifdef __cplusplus
}
#endif

#endif /* ATTN_HEADS_H */
