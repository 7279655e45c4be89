// Stratified sampling: [0, n) is cut into equal strata and a short contiguous
// run (cheap to read) is taken at a pseudo-random place in each, so layers of
// very different scale in a fused gradient are all represented.
#include "cpu/topk_sampling.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "core/counter_hash.h"
#include "core/float_bits.h"

namespace hvdkit::cpu {
namespace {

constexpr int64_t kRun = 64;          // contiguous entries per stratum
constexpr int64_t kMaxStrata = 1024;  // 65536 samples at most
constexpr uint32_t kSampleSalt = 0x5eed7a11u;

std::vector<uint32_t> sample_keys(const float* x, const float* residual, int64_t n) {
  const int64_t strata = std::min(kMaxStrata, n / (4 * kRun));
  std::vector<uint32_t> keys(strata * kRun);
  for (int64_t s = 0; s < strata; ++s) {
    const int64_t begin = s * n / strata;
    const int64_t room = (s + 1) * n / strata - begin - kRun + 1;
    const int64_t start = begin + static_cast<int64_t>(mix32(static_cast<uint32_t>(s) ^ kSampleSalt) % room);
    for (int64_t j = 0; j < kRun; ++j) {
      keys[s * kRun + j] = magnitude_key(x[start + j] + residual[start + j]);
    }
  }
  return keys;
}

// The rank-th largest key (1-based).
int32_t key_of_rank(std::vector<uint32_t>& keys, int64_t rank) {
  std::nth_element(keys.begin(), keys.begin() + (rank - 1), keys.end(), std::greater<uint32_t>());
  return static_cast<int32_t>(keys[rank - 1]);
}

}  // namespace

TopkThresholds sample_thresholds(const float* x, const float* residual, int64_t n, int64_t k,
                                 bool approx) {
  std::vector<uint32_t> keys = sample_keys(x, residual, n);
  const int64_t m = static_cast<int64_t>(keys.size());
  const double fraction = static_cast<double>(k) / static_cast<double>(n);
  const double expected = fraction * static_cast<double>(m);  // sample entries above the k-th
  const double per_sample = static_cast<double>(n) / static_cast<double>(m);

  if (approx) {
    const int64_t rank = std::clamp<int64_t>(std::llround(expected), 1, m);
    const int32_t sure_above = key_of_rank(keys, rank) - 1;  // key >= the rank-th sample key
    return {sure_above, sure_above, 0};
  }
  const double slack = 4.0 * std::sqrt(expected * (1.0 - fraction)) + 8.0;
  const int64_t high_rank = static_cast<int64_t>(std::floor(expected - slack));
  const int64_t low_rank = static_cast<int64_t>(std::ceil(expected + slack));
  const int32_t cand_above = low_rank <= m ? key_of_rank(keys, low_rank) - 1 : -1;
  const int32_t sure_above = high_rank >= 1 ? key_of_rank(keys, high_rank) : INT32_MAX;
  const int64_t band = std::min(m, low_rank) - std::max<int64_t>(0, high_rank);
  return {sure_above, cand_above, static_cast<int64_t>(static_cast<double>(band) * per_sample)};
}

}  // namespace hvdkit::cpu
