// Scatter-add of many ranks' (index, value) pairs on the GPU: a first pass
// counts out-of-range indices, the second adds with atomics only when there
// were none (so a bad payload leaves out untouched).
#include "core/cuda_ops.h"
#include "cuda/launch.cuh"

namespace hvdkit::cuda {
namespace {

__global__ void count_bad_indices_kernel(const int32_t* indices, int64_t count, int64_t n, int32_t* bad) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    if (indices[i] < 0 || indices[i] >= n) atomicAdd(bad, 1);
  }
}

__global__ void scatter_add_kernel(const int32_t* indices, const float* values, int64_t count, float* out,
                                   const int32_t* bad) {
  if (*bad != 0) return;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    atomicAdd(out + indices[i], values[i]);
  }
}

}  // namespace

void scatter_add(const int32_t* indices, const float* values, int64_t count, float* out, int64_t n, int32_t* bad,
                 cudaStream_t stream) {
  check_cuda(cudaMemsetAsync(bad, 0, sizeof(int32_t), stream), "cudaMemsetAsync");
  if (count == 0) return;
  count_bad_indices_kernel<<<grid_for(count), kThreads, 0, stream>>>(indices, count, n, bad);
  check_launch("count_bad_indices_kernel");
  scatter_add_kernel<<<grid_for(count), kThreads, 0, stream>>>(indices, values, count, out, bad);
  check_launch("scatter_add_kernel");
}

}  // namespace hvdkit::cuda
