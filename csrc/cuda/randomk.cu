// Random-k on the GPU: one thread per drawn index; same indices as the CPU
// kernel and the reference, since they depend only on (n, k, seed).
#include "core/counter_hash.h"
#include "core/cuda_ops.h"
#include "cuda/launch.cuh"

namespace hvdkit::cuda {
namespace {

template <class T>
__global__ void randomk_kernel(const T* x, int64_t n, int64_t k, uint32_t key, int32_t* indices, T* values) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < k; j += stride) {
    const int64_t index = randomk_index(key, j, n, k);
    indices[j] = static_cast<int32_t>(index);
    values[j] = x[index];
  }
}

}  // namespace

void randomk(const void* x, DType dtype, int64_t n, int64_t k, uint64_t seed, int32_t* indices, void* values,
             cudaStream_t stream) {
  if (k == 0) return;
  const uint32_t key = stream_key(seed, RandomStream::kRandomK);
  if (element_size(dtype) == 4) {
    randomk_kernel<<<grid_for(k), kThreads, 0, stream>>>(static_cast<const float*>(x), n, k, key, indices,
                                                         static_cast<float*>(values));
  } else {
    randomk_kernel<<<grid_for(k), kThreads, 0, stream>>>(static_cast<const uint16_t*>(x), n, k, key, indices,
                                                         static_cast<uint16_t*>(values));
  }
  check_launch("randomk_kernel");
}

}  // namespace hvdkit::cuda
