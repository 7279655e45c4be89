// Exact top-k by magnitude that never fails: radix select of the k-th largest
// magnitude key, then one selection pass. Used for small inputs and as the
// fix-up when the sampled fast path (topk_cpu.cpp) misjudges the threshold.
#pragma once

#include <cstdint>

namespace hvdkit::cpu {

// Selects the k (1 <= k <= n) largest |c| where c = x + residual (x non-null;
// residual receives c) or c = residual (x null). Writes exactly k pairs in
// ascending index order, ties at the threshold taken in index order, and
// zeroes the residual where selected. Returns k.
int64_t topk_radix(const float* x, float* residual, int64_t n, int64_t k, int32_t* indices,
                   float* values, int threads);

}  // namespace hvdkit::cpu
