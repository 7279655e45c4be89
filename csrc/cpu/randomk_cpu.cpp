// Random-k: the indices depend only on (n, k, seed), so every rank given the
// same seed picks the same ones and their values can be allreduced.
#include <cstring>

#include "core/counter_hash.h"
#include "core/cpu_ops.h"
#include "cpu/parallel.h"

namespace hvdkit::cpu {

constexpr int64_t kPrefetchDistance = 32;

void randomk(const void* x, DType dtype, int64_t n, int64_t k, uint64_t seed, int32_t* indices,
             void* values, int threads) {
  const uint32_t key = stream_key(seed, RandomStream::kRandomK);
  const int64_t size = element_size(dtype);
  const char* source = static_cast<const char*>(x);
  char* target = static_cast<char*>(values);
  parallel_ranges(k, 64, range_count(k, kMinElementsPerThread / 4, threads),
                  [&](int, int64_t begin, int64_t end) {
                    for (int64_t j = begin; j < end; ++j) {
                      indices[j] = static_cast<int32_t>(randomk_index(key, j, n, k));
                    }
                    // The gathers are cache misses about n / k elements apart:
                    // prefetch ahead so many are in flight at once.
                    for (int64_t j = begin; j < end; ++j) {
                      if (j + kPrefetchDistance < end) {
                        __builtin_prefetch(source + indices[j + kPrefetchDistance] * size);
                      }
                      std::memcpy(target + j * size, source + indices[j] * size, size);
                    }
                  });
}

}  // namespace hvdkit::cpu
