// Marks helpers usable from both host code and CUDA device code, so the CPU
// kernels, the CUDA kernels and the tests agree on every bit they compute.
#pragma once

#if defined(__CUDACC__)
#define HVDKIT_HD __host__ __device__ __forceinline__
#else
#define HVDKIT_HD inline
#endif
