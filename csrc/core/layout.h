// Sizes of the compressed payloads, shared by kernels, bindings and docs.
#pragma once

#include <cstdint>

#include "core/hd.h"

namespace hvdkit {

// Largest element count any op accepts: indices are int32 on the wire.
constexpr int64_t kMaxElements = INT32_MAX;

HVDKIT_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One scale per block of `block` elements; the last block may be short.
HVDKIT_HD int64_t num_blocks(int64_t n, int64_t block) { return ceil_div(n, block); }

// Sign bits are packed 8 per byte, element 8*i+j in bit j of byte i.
HVDKIT_HD int64_t sign_bytes(int64_t n) { return ceil_div(n, 8); }

// Approximate top-k returns at most k and (given enough non-zero entries)
// at least this many values.
HVDKIT_HD int64_t topk_approx_floor(int64_t k) { return (k + 1) / 2; }

}  // namespace hvdkit
