// One-bit scaled sign with error feedback and its many-rank decode; threads
// over whole blocks (encode) or byte-aligned element ranges (decode).
#include <algorithm>

#include "core/cpu_ops.h"
#include "core/layout.h"
#include "cpu/dispatch.h"
#include "cpu/parallel.h"

namespace hvdkit::cpu {

void sign_ef(const float* x, float* residual, int64_t n, int64_t block, uint8_t* bits,
             float* scales, int threads) {
  const KernelTable& kernels = active_kernels();
  const int64_t blocks = num_blocks(n, block);
  const int64_t min_blocks = std::max<int64_t>(1, kMinElementsPerThread / block);
  parallel_ranges(blocks, 1, range_count(blocks, min_blocks, threads),
                  [&](int, int64_t first, int64_t end) {
                    kernels.sign_ef(x, residual, n, block, first, end, bits, scales);
                  });
}

void sign_decode(const uint8_t* bits, const float* scales, int64_t ranks, int64_t n,
                 int64_t block, float* out, bool accumulate, int threads) {
  const KernelTable& kernels = active_kernels();
  const int64_t min_size = std::max<int64_t>(64, kMinElementsPerThread / std::max<int64_t>(1, ranks));
  parallel_ranges(n, 64, range_count(n, min_size, threads), [&](int, int64_t begin, int64_t end) {
    kernels.sign_decode(bits, scales, ranks, n, block, begin, end, out, accumulate);
  });
}

}  // namespace hvdkit::cpu
