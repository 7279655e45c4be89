// Deterministic scatter-add of many ranks' (index, value) pairs on the GPU.
//
// Atomics would add the pairs of an index chosen by several ranks in whatever
// order the hardware serves them, so replicas that decode the same payloads
// would drift apart by rounding. Instead:
//   1. one pass checks every index and makes the sort keys: the index, or a
//      sentinel (n, sorted last and skipped) for -0.0 values, whose addition
//      changes nothing (top-k pads its payload with them);
//   2. a stable radix sort of (key, value) pairs (cub::DeviceRadixSort is
//      stable) puts each index's values together, in input order;
//   3. one thread per run of equal keys adds the run's values to out[key] one
//      after the other, in that order.
// The result is the sequential loop's (and the CPU kernel's), bit for bit, on
// every run and every rank. The cost of step 3 grows with the longest run,
// which is the number of ranks that chose an index in a top-k decode.
// An out-of-range index sets *bad; then nothing is added (step 3 checks the
// flag on the device) and, when asked, out[0] becomes NaN. Nothing here
// synchronizes with the host.
#include <cub/device/device_radix_sort.cuh>

#include <cstddef>
#include <cstdint>

#include "core/cuda_ops.h"
#include "core/float_bits.h"
#include "cuda/launch.cuh"

namespace hvdkit::cuda {
namespace {

constexpr uint32_t kNegativeZeroBits = 0x80000000u;
constexpr size_t kAlign = 256;

size_t align_up(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// Key bits the sort looks at: enough for the sentinel n (indices are below it).
int key_bits(int64_t n) {
  int bits = 0;
  while (bits < 32 && (static_cast<uint64_t>(n) >> bits) != 0) ++bits;
  return bits;
}

struct Layout {
  uint32_t* keys_in;
  uint32_t* keys_out;
  float* values_out;
  void* sort_temp;
  size_t sort_bytes;
};

size_t sort_temp_bytes(int64_t count, int64_t n) {
  size_t bytes = 0;
  check_cuda(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const uint32_t*>(nullptr),
                                             static_cast<uint32_t*>(nullptr), static_cast<const float*>(nullptr),
                                             static_cast<float*>(nullptr), static_cast<int>(count), 0, key_bits(n)),
             "cub::DeviceRadixSort::SortPairs (size query)");
  return bytes;
}

Layout layout_of(void* workspace, int64_t count, int64_t n) {
  auto* base = static_cast<char*>(workspace);
  const size_t keys = align_up(static_cast<size_t>(count) * sizeof(uint32_t));
  const size_t values = align_up(static_cast<size_t>(count) * sizeof(float));
  Layout l{};
  l.keys_in = reinterpret_cast<uint32_t*>(base);
  l.keys_out = reinterpret_cast<uint32_t*>(base + keys);
  l.values_out = reinterpret_cast<float*>(base + 2 * keys);
  l.sort_temp = base + 2 * keys + values;
  l.sort_bytes = sort_temp_bytes(count, n);
  return l;
}

// Flags out-of-range indices; keys (when non-null) get the index, or the
// sentinel n for a -0.0 value or a bad index.
__global__ void prepare_keys_kernel(const int32_t* indices, const float* values, int64_t count, int64_t n,
                                    uint32_t* keys, int32_t* bad) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    const int32_t index = indices[i];
    const bool valid = index >= 0 && index < n;
    if (!valid) *bad = 1;  // every writer stores the same value
    if (keys != nullptr) {
      const bool no_op = float_to_bits(values[i]) == kNegativeZeroBits;
      keys[i] = valid && !no_op ? static_cast<uint32_t>(index) : static_cast<uint32_t>(n);
    }
  }
}

// One thread per run of equal keys (the run's first position) adds the run's
// values to out[key] in order.
__global__ void sum_runs_kernel(const uint32_t* keys, const float* values, int64_t count, int64_t n, float* out,
                                const int32_t* bad, bool poison) {
  if (*bad != 0) {
    if (poison && blockIdx.x == 0 && threadIdx.x == 0) out[0] = __int_as_float(0x7fc00000);  // quiet NaN
    return;
  }
  const uint32_t sentinel = static_cast<uint32_t>(n);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    const uint32_t key = keys[i];
    if (key == sentinel || (i > 0 && keys[i - 1] == key)) continue;
    float sum = out[key];
    for (int64_t j = i; j < count && keys[j] == key; ++j) sum += values[j];
    out[key] = sum;
  }
}

}  // namespace

size_t scatter_add_workspace_bytes(int64_t count, int64_t n) {
  if (count == 0 || n == 0) return 0;
  return 2 * align_up(static_cast<size_t>(count) * sizeof(uint32_t)) +
         align_up(static_cast<size_t>(count) * sizeof(float)) + sort_temp_bytes(count, n);
}

void scatter_add(const int32_t* indices, const float* values, int64_t count, float* out, int64_t n, bool poison,
                 int32_t* bad, void* workspace, cudaStream_t stream) {
  check_cuda(cudaMemsetAsync(bad, 0, sizeof(int32_t), stream), "cudaMemsetAsync");
  if (count == 0) return;
  if (n == 0) {  // every index is out of range, and there is no out[0] to poison
    prepare_keys_kernel<<<grid_for(count), kThreads, 0, stream>>>(indices, values, count, n, nullptr, bad);
    check_launch("prepare_keys_kernel");
    return;
  }
  Layout l = layout_of(workspace, count, n);
  prepare_keys_kernel<<<grid_for(count), kThreads, 0, stream>>>(indices, values, count, n, l.keys_in, bad);
  check_launch("prepare_keys_kernel");
  check_cuda(cub::DeviceRadixSort::SortPairs(l.sort_temp, l.sort_bytes, static_cast<const uint32_t*>(l.keys_in),
                                             l.keys_out, values, l.values_out, static_cast<int>(count), 0, key_bits(n),
                                             stream),
             "cub::DeviceRadixSort::SortPairs");
  sum_runs_kernel<<<grid_for(count), kThreads, 0, stream>>>(l.keys_out, l.values_out, count, n, out, bad, poison);
  check_launch("sum_runs_kernel");
}

}  // namespace hvdkit::cuda
