// Launch bookkeeping shared by the CUDA kernels: error checks after every
// launch, grid sizes for grid-stride loops, alignment tests for vector loads.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace hvdkit::cuda {

constexpr int kThreads = 256;

inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("hvdkit: ") + what + " failed: " + cudaGetErrorString(status));
  }
}

// Call right after a <<<...>>> launch.
inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

// Blocks for a grid-stride loop over `items` work items: enough to fill every
// SM several times, no more than the work needs.
inline int grid_for(int64_t items, int threads = kThreads) {
  int device = 0;
  int sms = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  const int64_t needed = (items + threads - 1) / threads;
  const int64_t most = static_cast<int64_t>(sms) * 8;
  return static_cast<int>(needed < 1 ? 1 : (needed < most ? needed : most));
}

inline bool aligned_to(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

}  // namespace hvdkit::cuda
