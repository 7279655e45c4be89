// Device-side building blocks: typed element access with the saturation rule
// of core/float_bits.h, block reductions. (Output slots are reserved once per
// tile of a block, never per warp: see reserve_tile_slots in topk.cu.)
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"
#include "core/float_bits.h"

namespace hvdkit::cuda {

template <DType D>
struct Storage {
  using T = uint16_t;
};
template <>
struct Storage<DType::kFloat32> {
  using T = float;
};

template <DType D>
__device__ __forceinline__ float load_element(const typename Storage<D>::T* p) {
  if constexpr (D == DType::kFloat32) {
    return *p;
  } else if constexpr (D == DType::kFloat16) {
    return half_bits_to_float(*p);
  } else {
    return bf16_bits_to_float(*p);
  }
}

// Finite values beyond the target range saturate; NaN and Inf pass through.
template <DType D>
__device__ __forceinline__ void store_element(typename Storage<D>::T* p, float v) {
  if constexpr (D == DType::kFloat32) {
    *p = v;
  } else if constexpr (D == DType::kFloat16) {
    *p = float_to_half_bits(saturate(v, kHalfMax));
  } else {
    *p = float_to_bf16_bits(saturate(v, kBFloat16Max));
  }
}

// Four consecutive elements (16 bytes of float32, 8 of 16-bit types); the
// pointer must be aligned to that size.
template <DType D>
__device__ __forceinline__ void load4(const typename Storage<D>::T* p, float (&v)[4]) {
  if constexpr (D == DType::kFloat32) {
    const float4 f = *reinterpret_cast<const float4*>(p);
    v[0] = f.x;
    v[1] = f.y;
    v[2] = f.z;
    v[3] = f.w;
  } else {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    const uint16_t h[4] = {static_cast<uint16_t>(u.x), static_cast<uint16_t>(u.x >> 16),
                           static_cast<uint16_t>(u.y), static_cast<uint16_t>(u.y >> 16)};
    for (int j = 0; j < 4; ++j) v[j] = load_element<D>(&h[j]);
  }
}

template <DType D>
__device__ __forceinline__ void store4(typename Storage<D>::T* p, const float (&v)[4]) {
  if constexpr (D == DType::kFloat32) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
    uint16_t h[4];
    for (int j = 0; j < 4; ++j) store_element<D>(&h[j], v[j]);
    *reinterpret_cast<uint2*>(p) = make_uint2(h[0] | (static_cast<uint32_t>(h[1]) << 16),
                                              h[2] | (static_cast<uint32_t>(h[3]) << 16));
  }
}

__device__ __forceinline__ bool is_finite_value(float v) { return is_finite_bits(__float_as_uint(v)); }

struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Reduces over the block; every thread gets the result. All threads of the
// block must call it (blockDim.x a multiple of 32); `shared` holds 32 floats;
// `identity` is the neutral element of op.
template <class Op>
__device__ float block_reduce(float v, Op op, float identity, float* shared) {
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int warps = blockDim.x / 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? shared[lane] : identity;
    for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  const float result = shared[0];
  __syncthreads();  // shared may be reused right after
  return result;
}

}  // namespace hvdkit::cuda
