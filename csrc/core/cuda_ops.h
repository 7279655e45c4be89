// CUDA kernels on raw device pointers, launched on the given stream; the
// counterpart of core/cpu_ops.h with the same semantics. Every launch is
// checked and a failure throws std::runtime_error. Device-side results that the
// host must see (non-finite flags, counts) are written to device memory so
// that nothing here synchronizes.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "core/tensor_ref.h"

namespace hvdkit::cuda {

// `tensors` is a host array describing device tensors. *nonfinite (device
// bool) is set to true when a value of x * scale is NaN or +-Inf; it is not
// cleared here.
void pack(const TensorRef* tensors, int64_t count, void* flat, DType flat_dtype, float scale,
          bool* nonfinite, cudaStream_t stream);
void unpack(const void* flat, DType flat_dtype, const TensorRef* tensors, int64_t count,
            float scale, bool accumulate, cudaStream_t stream);

void quantize_int8(const float* x, int64_t n, int64_t block, bool stochastic, uint64_t seed,
                   int8_t* q, float* scales, cudaStream_t stream);
void dequantize_int8(const int8_t* q, const float* scales, int64_t n, int64_t block, float* out,
                     bool accumulate, cudaStream_t stream);

void sign_ef(const float* x, float* residual, int64_t n, int64_t block, uint8_t* bits,
             float* scales, cudaStream_t stream);
void sign_decode(const uint8_t* bits, const float* scales, int64_t ranks, int64_t n,
                 int64_t block, float* out, bool accumulate, cudaStream_t stream);

// Scratch memory topk_ef needs (device, any alignment from cudaMalloc).
size_t topk_workspace_bytes();
// Writes exactly k (index, value) pairs, as the CPU kernel does: the selected
// entries (never one where x + residual is zero), then padding pairs (index 0,
// value -0.0). *count (device int32; skipped when count is null) receives how
// many were selected: min(k, non-zero entries) when exact, at least
// min(topk_approx_floor(k), non-zero entries) for approx.
void topk_ef(const float* x, float* residual, int64_t n, int64_t k, bool approx,
             int32_t* indices, float* values, int32_t* count, void* workspace,
             cudaStream_t stream);

void randomk(const void* x, DType dtype, int64_t n, int64_t k, uint64_t seed, int32_t* indices,
             void* values, cudaStream_t stream);

// Scratch memory scatter_add needs for `count` pairs into n outputs (device,
// any alignment from cudaMalloc); count is at most INT32_MAX.
size_t scatter_add_workspace_bytes(int64_t count, int64_t n);
// out[indices[i]] += values[i], deterministically: the pairs of each index are
// added in input order, so the result equals the CPU kernel's bit for bit.
// *bad (device int32, cleared here) becomes non-zero when an index is outside
// [0, n); then nothing is added, and with `poison` out[0] is set to NaN (when
// n > 0). Nothing is read back to the host.
void scatter_add(const int32_t* indices, const float* values, int64_t count, float* out,
                 int64_t n, bool poison, int32_t* bad, void* workspace, cudaStream_t stream);

}  // namespace hvdkit::cuda
