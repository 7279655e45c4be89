// Stateless counter-based random numbers: value i of a stream depends only on
// (seed, stream, i). CPU, CUDA and the pure-torch references compute the same
// numbers, and every rank given the same seed draws the same ones.
#pragma once

#include <cstdint>

#include "core/hd.h"

namespace hvdkit {

// Which op draws the numbers, so two ops given the same seed do not correlate.
enum class RandomStream : uint32_t { kStochasticRounding = 1, kRandomK = 2 };

// "lowbias32" (Chris Wellons): a bijective 32-bit mixer with low bias.
HVDKIT_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

HVDKIT_HD uint32_t stream_key(uint64_t seed, RandomStream stream) {
  const uint32_t high = mix32(static_cast<uint32_t>(seed >> 32) ^ static_cast<uint32_t>(stream));
  return mix32(static_cast<uint32_t>(seed) ^ high);
}

HVDKIT_HD uint32_t counter_bits(uint32_t key, uint32_t index) { return mix32(index ^ key); }

// Uniform in [0, 1) with 24 random bits (exact in float32).
HVDKIT_HD float uniform01(uint32_t key, uint32_t index) {
  return static_cast<float>(counter_bits(key, index) >> 8) * 0x1.0p-24f;
}

// Random-k index j of k over n elements (0 < k <= n < 2^31): [0, n) is cut into
// k nearly equal strata and one index is drawn uniformly from stratum j, so the
// k indices are distinct, sorted, and each element is picked with probability
// about k/n.
HVDKIT_HD int64_t randomk_index(uint32_t key, int64_t j, int64_t n, int64_t k) {
  const int64_t begin = j * n / k;
  const int64_t end = (j + 1) * n / k;
  const uint64_t draw = counter_bits(key, static_cast<uint32_t>(j));
  return begin + static_cast<int64_t>((draw * static_cast<uint64_t>(end - begin)) >> 32);
}

}  // namespace hvdkit
