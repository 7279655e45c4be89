// The generic multi-tensor engine (in the spirit of apex multi_tensor_apply):
// the tensors of a list, laid end to end, form one flat index space that is cut
// evenly over threads; each thread calls the op for the piece of every tensor
// that falls in its share. Pack and unpack are small ops on top of it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/tensor_ref.h"
#include "cpu/parallel.h"

namespace hvdkit::cpu {

// op(tensor_index, first_element, count, flat_offset) -> bool (a flag to OR).
// Returns the OR of all calls.
template <class Op>
bool for_each_segment(const TensorRef* tensors, int64_t count, int threads, Op&& op) {
  std::vector<int64_t> offsets(count + 1, 0);
  for (int64_t i = 0; i < count; ++i) offsets[i + 1] = offsets[i] + tensors[i].numel;
  const int64_t total = offsets[count];
  const int ranges = range_count(total, kMinElementsPerThread, threads);
  std::vector<char> flags(ranges, 0);
  parallel_ranges(total, 64, ranges, [&](int r, int64_t begin, int64_t end) {
    int64_t i = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
    bool flag = false;
    for (; i < count && offsets[i] < end; ++i) {
      const int64_t lo = std::max(begin, offsets[i]);
      const int64_t hi = std::min(end, offsets[i + 1]);
      if (hi > lo) flag = op(i, lo - offsets[i], hi - lo, lo) || flag;
    }
    flags[r] = flag;
  });
  return std::any_of(flags.begin(), flags.end(), [](char f) { return f != 0; });
}

}  // namespace hvdkit::cpu
