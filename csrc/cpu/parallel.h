// Static splitting of a range over OpenMP threads. Kernels get contiguous
// ranges (good for streaming and for per-thread output lists in index order).
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace hvdkit::cpu {

// Elements a thread should have before another thread pays off (~256 KiB of
// float32: below that, waking threads costs more than it saves).
constexpr int64_t kMinElementsPerThread = 1 << 16;

// How many ranges to cut [0, n) into: at most `threads`, each at least
// `min_size` long.
inline int range_count(int64_t n, int64_t min_size, int threads) {
  const int64_t by_size = std::max<int64_t>(1, n / std::max<int64_t>(1, min_size));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, by_size)));
}

// Runs fn(range_index, begin, end) for `ranges` contiguous ranges covering
// [0, n), with interior bounds multiples of `align`; in parallel when ranges > 1.
// fn must not throw.
template <class Fn>
void parallel_ranges(int64_t n, int64_t align, int ranges, Fn&& fn) {
  const int64_t units = (n + align - 1) / align;
  auto bound = [&](int r) { return std::min(n, units * r / ranges * align); };
  if (ranges <= 1) {
    fn(0, int64_t{0}, n);
    return;
  }
#pragma omp parallel for num_threads(ranges) schedule(static, 1)
  for (int r = 0; r < ranges; ++r) fn(r, bound(r), bound(r + 1));
}

}  // namespace hvdkit::cpu
