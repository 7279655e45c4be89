// Radix select over 31-bit magnitude keys in two histogram passes (high 15
// bits, then low 16 bits within the winning bin), then a selection pass. The
// per-range histograms double as per-range counts, so each range knows where
// its output goes without another pass.
#include "cpu/topk_radix.h"

#include <algorithm>
#include <vector>

#include "core/float_bits.h"
#include "cpu/parallel.h"

namespace hvdkit::cpu {
namespace {

constexpr int kHighBits = 15;
constexpr int kLowBits = 16;
constexpr uint32_t kLowMask = (1u << kLowBits) - 1;

using Histogram = std::vector<uint32_t>;

// The bin holding the rank-th largest key (rank is 1-based) and how many keys
// lie in higher bins.
int bin_of_rank(const std::vector<int64_t>& counts, int64_t rank, int64_t* above) {
  int64_t seen = 0;
  for (int b = static_cast<int>(counts.size()) - 1; b >= 0; --b) {
    if (seen + counts[b] >= rank) {
      *above = seen;
      return b;
    }
    seen += counts[b];
  }
  *above = seen;
  return 0;
}

std::vector<int64_t> merge(const std::vector<Histogram>& per_range) {
  std::vector<int64_t> total(per_range.front().size(), 0);
  for (const Histogram& h : per_range) {
    for (size_t b = 0; b < h.size(); ++b) total[b] += h[b];
  }
  return total;
}

}  // namespace

int64_t topk_radix(const float* x, float* residual, int64_t n, int64_t k, int32_t* indices,
                   float* values, int threads) {
  const int ranges = range_count(n, kMinElementsPerThread, threads);
  constexpr int64_t kAlign = 64;

  // Pass 1: c (+ error feedback) and the histogram of the high key bits.
  std::vector<Histogram> high(ranges, Histogram(1u << kHighBits, 0));
  parallel_ranges(n, kAlign, ranges, [&](int r, int64_t begin, int64_t end) {
    uint32_t* h = high[r].data();
    if (x != nullptr) {
      for (int64_t i = begin; i < end; ++i) residual[i] = x[i] + residual[i];
    }
    for (int64_t i = begin; i < end; ++i) ++h[magnitude_key(residual[i]) >> kLowBits];
  });
  int64_t above_high = 0;
  const uint32_t high_bin = static_cast<uint32_t>(bin_of_rank(merge(high), k, &above_high));

  // Pass 2: the low key bits of the entries in the winning high bin.
  std::vector<Histogram> low(ranges, Histogram(1u << kLowBits, 0));
  parallel_ranges(n, kAlign, ranges, [&](int r, int64_t begin, int64_t end) {
    uint32_t* h = low[r].data();
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t key = magnitude_key(residual[i]);
      if ((key >> kLowBits) == high_bin) ++h[key & kLowMask];
    }
  });
  int64_t above_low = 0;
  const uint32_t low_bin = static_cast<uint32_t>(bin_of_rank(merge(low), k - above_high, &above_low));
  const uint32_t threshold = (high_bin << kLowBits) | low_bin;
  // A zero threshold means c has fewer than k non-zero entries: those are all
  // taken and no zero is (the free slots become padding).
  const int64_t ties = threshold == 0 ? 0 : k - above_high - above_low;

  // Where each range's output starts, and how many ties it takes (in order).
  std::vector<int64_t> offset(ranges + 1, 0);
  std::vector<int64_t> tie_budget(ranges, 0);
  int64_t ties_left = ties;
  for (int r = 0; r < ranges; ++r) {
    int64_t greater = 0;
    for (uint32_t b = high_bin + 1; b < (1u << kHighBits); ++b) greater += high[r][b];
    for (uint32_t b = low_bin + 1; b < (1u << kLowBits); ++b) greater += low[r][b];
    tie_budget[r] = std::min<int64_t>(ties_left, low[r][low_bin]);
    ties_left -= tie_budget[r];
    offset[r + 1] = offset[r] + greater + tie_budget[r];
  }

  // Pass 3: select.
  parallel_ranges(n, kAlign, ranges, [&](int r, int64_t begin, int64_t end) {
    int64_t out = offset[r];
    int64_t budget = tie_budget[r];
    for (int64_t i = begin; i < end; ++i) {
      const float c = residual[i];
      const uint32_t key = magnitude_key(c);
      if (key > threshold || (key == threshold && budget > 0)) {
        if (key == threshold) --budget;
        indices[out] = static_cast<int32_t>(i);
        values[out] = c;
        ++out;
        residual[i] = 0.0f;
      }
    }
  });
  const int64_t selected = offset[ranges];
  pad_topk(indices, values, selected, k);
  return selected;
}

}  // namespace hvdkit::cpu
