// Scatter-add of many ranks' (index, value) pairs into one dense buffer.
// Each thread owns a slice of the output and applies, in input order, the
// pairs that land in it: no atomics, and the sum order is the input order, so
// the result is deterministic and matches a sequential loop bit for bit.
// Indices are checked first: a payload with any out-of-range index adds
// nothing (and, when asked, poisons out[0] with NaN instead of failing).
#include <algorithm>
#include <limits>
#include <vector>

#include "core/cpu_ops.h"
#include "cpu/parallel.h"

namespace hvdkit::cpu {

constexpr int64_t kPrefetchDistance = 32;

bool scatter_add(const int32_t* indices, const float* values, int64_t count, float* out,
                 int64_t n, bool poison, int threads) {
  const int check_ranges = range_count(count, kMinElementsPerThread, threads);
  std::vector<char> bad(check_ranges, 0);
  parallel_ranges(count, 64, check_ranges, [&](int r, int64_t begin, int64_t end) {
    bool any = false;
    for (int64_t i = begin; i < end; ++i) any = any || indices[i] < 0 || indices[i] >= n;
    bad[r] = any;
  });
  if (std::any_of(bad.begin(), bad.end(), [](char b) { return b != 0; })) {
    if (poison && n > 0) out[0] = std::numeric_limits<float>::quiet_NaN();
    return false;
  }

  // Every thread reads all pairs and applies its share: the random-access adds
  // are what gets split, so split by the number of pairs.
  const int ranges = range_count(count, kMinElementsPerThread, threads);
  parallel_ranges(n, 16, ranges, [&](int, int64_t begin, int64_t end) {
    const bool whole = begin == 0 && end == n;
    for (int64_t i = 0; i < count; ++i) {
      // Random read-modify-writes: prefetch ahead so many misses overlap.
      if (i + kPrefetchDistance < count) __builtin_prefetch(out + indices[i + kPrefetchDistance], 1);
      const int64_t index = indices[i];
      if (whole || (index >= begin && index < end)) out[index] += values[i];
    }
  });
  return true;
}

}  // namespace hvdkit::cpu
