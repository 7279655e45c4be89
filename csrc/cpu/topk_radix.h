// Exact top-k by magnitude that never fails: radix select of the k-th largest
// magnitude key, then one selection pass. Used for small inputs and as the
// fix-up when the sampled fast path (topk_cpu.cpp) misjudges the threshold.
#pragma once

#include <cstdint>

namespace hvdkit::cpu {

// Selects the k (1 <= k <= n) largest |c| where c = x + residual (x non-null;
// residual receives c) or c = residual (x null), never an entry where c is
// zero. Writes the selected pairs in ascending index order, ties at the
// threshold taken in index order, then pads (see pad_topk) up to k pairs, and
// zeroes the residual where selected. Returns how many were selected: k, or
// the number of non-zero entries of c when that is smaller.
int64_t topk_radix(const float* x, float* residual, int64_t n, int64_t k, int32_t* indices,
                   float* values, int threads);

// Fills output slots [from, k) with the padding pair (index 0, value -0.0):
// adding -0.0 leaves any float unchanged, bit for bit, so a decoder adds pads
// like any other pair; the residual is not touched.
inline void pad_topk(int32_t* indices, float* values, int64_t from, int64_t k) {
  for (int64_t j = from; j < k; ++j) {
    indices[j] = 0;
    values[j] = -0.0f;
  }
}

}  // namespace hvdkit::cpu
