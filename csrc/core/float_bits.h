// Scalar float32 <-> float16 / bfloat16 conversion and the saturation rule
// every kernel follows (CPU scalar paths, SIMD tails and CUDA alike):
//   v = float(x) * scale, computed in float32;
//   finite v beyond the target range saturates to +-max finite;
//   NaN and +-Inf pass through unchanged (and the caller raises a flag);
//   rounding is IEEE round-to-nearest-even, subnormals included.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/hd.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace hvdkit {

constexpr float kHalfMax = 65504.0f;
constexpr float kBFloat16Max = 3.38953139e38f;  // 0x7F7F in bfloat16

HVDKIT_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

HVDKIT_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

HVDKIT_HD bool is_finite_bits(uint32_t u) { return (u & 0x7f800000u) != 0x7f800000u; }

// Magnitude as an unsigned key whose order is the order of |x|; NaN sorts
// above +Inf, as it does in torch.topk.
HVDKIT_HD uint32_t magnitude_key(float f) { return float_to_bits(f) & 0x7fffffffu; }

HVDKIT_HD float saturate(float v, float limit) {
  if (!is_finite_bits(float_to_bits(v))) return v;
  return v > limit ? limit : (v < -limit ? -limit : v);
}

// IEEE float16 -> float32 (after Maratyszcza's FP16 library, exact for all
// inputs including subnormals, Inf and NaN).
HVDKIT_HD float half_bits_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = bits_to_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = bits_to_float((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t result =
      sign | (two_w < (1u << 27) ? float_to_bits(denormalized) : float_to_bits(normalized));
  return bits_to_float(result);
#endif
}

// float32 -> IEEE float16, round to nearest even; out-of-range values become
// Inf here, so callers saturate first.
HVDKIT_HD uint16_t float_to_half_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __half_as_ushort(__float2half_rn(f));
#else
  const uint32_t w = float_to_bits(f);
  const float abs_f = bits_to_float(w & 0x7fffffffu);
  float base = (abs_f * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = bits_to_float((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = float_to_bits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
#endif
}

HVDKIT_HD float bf16_bits_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

// float32 -> bfloat16, round to nearest even; NaN stays a (quiet) NaN.
// Branch-free (selects only), so loops over it vectorise.
HVDKIT_HD uint16_t float_to_bf16_bits(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x0040u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

}  // namespace hvdkit
