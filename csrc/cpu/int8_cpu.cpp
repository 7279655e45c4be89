// Blockwise absmax int8 quantize / dequantize, threads over whole blocks.
#include <algorithm>

#include "core/counter_hash.h"
#include "core/cpu_ops.h"
#include "core/layout.h"
#include "cpu/dispatch.h"
#include "cpu/parallel.h"

namespace hvdkit::cpu {

void quantize_int8(const float* x, int64_t n, int64_t block, bool stochastic, uint64_t seed,
                   int8_t* q, float* scales, int threads) {
  const KernelTable& kernels = active_kernels();
  const int64_t blocks = num_blocks(n, block);
  const uint32_t key = stream_key(seed, RandomStream::kStochasticRounding);
  const int64_t min_blocks = std::max<int64_t>(1, kMinElementsPerThread / block);
  parallel_ranges(blocks, 1, range_count(blocks, min_blocks, threads),
                  [&](int, int64_t first, int64_t end) {
                    kernels.quantize_int8(x, n, block, first, end, stochastic, key, q, scales);
                  });
}

void dequantize_int8(const int8_t* q, const float* scales, int64_t n, int64_t block, float* out,
                     bool accumulate, int threads) {
  const KernelTable& kernels = active_kernels();
  parallel_ranges(n, 64, range_count(n, kMinElementsPerThread, threads),
                  [&](int, int64_t begin, int64_t end) {
                    kernels.dequantize_int8(q, scales, block, begin, end, out, accumulate);
                  });
}

}  // namespace hvdkit::cpu
