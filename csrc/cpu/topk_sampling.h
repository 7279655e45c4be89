// Thresholds for the fast top-k path, estimated from a sample (as Deep
// Gradient Compression does) instead of a full sort.
#pragma once

#include <cstdint>

namespace hvdkit::cpu {

// Inputs smaller than this skip sampling and use the radix select directly.
constexpr int64_t kMinSampledElements = 1 << 16;

// Magnitude keys (see core/float_bits.h) of c = x + residual: entries with
// key > sure_above are taken outright, sure_above >= key > cand_above are
// candidates decided afterwards (none when approximate).
struct TopkThresholds {
  int32_t sure_above;
  int32_t cand_above;
  int64_t expected_candidates;  // sizes the candidate lists
};

// Exact: a bracket that holds the k-th largest key with overwhelming
// probability (4 sigma of the sample count, plus slack). Approximate: one
// threshold expected to pass about k entries.
TopkThresholds sample_thresholds(const float* x, const float* residual, int64_t n, int64_t k,
                                 bool approx);

}  // namespace hvdkit::cpu
