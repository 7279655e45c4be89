// Blockwise absmax int8 on the GPU: one warp per quantization block for the
// common sizes (quantize_int8_warp_kernel), else one thread block per
// quantization block (grid-stride over blocks), absmax by block reduction,
// then quantize from registers (see kKept).
#include "core/counter_hash.h"
#include "core/cuda_ops.h"
#include "core/layout.h"
#include "cuda/device_utils.cuh"
#include "cuda/launch.cuh"

namespace hvdkit::cuda {
namespace {

__device__ __forceinline__ int8_t quantize_one(float x, float inverse, bool stochastic, uint32_t key, int64_t index) {
  const float v = x * inverse;
  const float rounded = stochastic ? floorf(v + uniform01(key, static_cast<uint32_t>(index))) : rintf(v);
  return static_cast<int8_t>(static_cast<int32_t>(fminf(fmaxf(rounded, -127.0f), 127.0f)));
}

// Elements a thread keeps in registers between the absmax and the quantize
// pass: the whole block for the default 1024 with 256 threads, loaded with
// independent reads in flight; elements past them are read again (from L2).
constexpr int kKept = 4;

__global__ void quantize_int8_kernel(const float* x, int64_t n, int64_t block, int64_t blocks, bool stochastic,
                                     uint32_t key, int8_t* q, float* scales) {
  __shared__ float shared[32];
  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
    const int64_t begin = b * block;
    const int64_t end = begin + block < n ? begin + block : n;
    const int64_t rest = begin + threadIdx.x + static_cast<int64_t>(kKept) * blockDim.x;
    float kept[kKept];
#pragma unroll
    for (int c = 0; c < kKept; ++c) {
      const int64_t i = begin + threadIdx.x + static_cast<int64_t>(c) * blockDim.x;
      kept[c] = i < end ? x[i] : 0.0f;
    }
    float magnitude = 0.0f;
    bool bad = false;
#pragma unroll
    for (int c = 0; c < kKept; ++c) {
      bad = bad || !is_finite_value(kept[c]);
      magnitude = fmaxf(magnitude, fabsf(kept[c]));
    }
    for (int64_t i = rest; i < end; i += blockDim.x) {
      const float v = x[i];
      bad = bad || !is_finite_value(v);
      magnitude = fmaxf(magnitude, fabsf(v));
    }
    bad = __syncthreads_or(bad);
    const float absmax = block_reduce(magnitude, MaxOp{}, 0.0f, shared);
    if (bad) {  // a NaN scale makes the whole block decode to NaN
      if (threadIdx.x == 0) scales[b] = __uint_as_float(0x7fc00000u);
      for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) q[i] = 0;
      continue;
    }
    if (threadIdx.x == 0) scales[b] = absmax / 127.0f;
    const float ratio = 127.0f / absmax;
    const float inverse = absmax > 0.0f && is_finite_value(ratio) ? ratio : 0.0f;
#pragma unroll
    for (int c = 0; c < kKept; ++c) {
      const int64_t i = begin + threadIdx.x + static_cast<int64_t>(c) * blockDim.x;
      if (i < end) q[i] = quantize_one(kept[c], inverse, stochastic, key, i);
    }
    for (int64_t i = rest; i < end; i += blockDim.x) {
      q[i] = quantize_one(x[i], inverse, stochastic, key, i);
    }
  }
}

// One warp per quantization block of 128 * kVectors elements or fewer (the
// last block may be short): each lane keeps kVectors float4 in registers, the
// absmax is a warp reduction (no block-wide barrier), and codes go out as
// char4. For the common block sizes; others use quantize_int8_kernel.
constexpr int kWarpThreads = 256;

template <int kVectors>
__global__ void __launch_bounds__(kWarpThreads) quantize_int8_warp_kernel(const float* x, int64_t n, int64_t block,
                                                                          int64_t blocks, bool stochastic,
                                                                          uint32_t key, int8_t* q, float* scales) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kWarpThreads / 32);
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * (kWarpThreads / 32) + threadIdx.x / 32; b < blocks;
       b += warps) {
    const int64_t begin = b * block;
    const int64_t end = begin + block < n ? begin + block : n;
    float v[kVectors][4];
    float magnitude = 0.0f;
    bool bad = false;
#pragma unroll
    for (int j = 0; j < kVectors; ++j) {
      const int64_t i = begin + 4 * (lane + 32 * j);
      if (i + 4 <= end) {
        const float4 f = *reinterpret_cast<const float4*>(x + i);
        v[j][0] = f.x, v[j][1] = f.y, v[j][2] = f.z, v[j][3] = f.w;
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) v[j][e] = i + e < end ? x[i + e] : 0.0f;
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        bad = bad || !is_finite_value(v[j][e]);
        magnitude = fmaxf(magnitude, fabsf(v[j][e]));
      }
    }
    for (int offset = 16; offset > 0; offset /= 2) magnitude = fmaxf(magnitude, __shfl_xor_sync(~0u, magnitude, offset));
    bad = __any_sync(~0u, bad);
    const float ratio = 127.0f / magnitude;
    const float inverse = bad ? 0.0f : (magnitude > 0.0f && is_finite_value(ratio) ? ratio : 0.0f);
    if (lane == 0) scales[b] = bad ? __uint_as_float(0x7fc00000u) : magnitude / 127.0f;
#pragma unroll
    for (int j = 0; j < kVectors; ++j) {
      const int64_t i = begin + 4 * (lane + 32 * j);
      int8_t c[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) c[e] = bad ? 0 : quantize_one(v[j][e], inverse, stochastic, key, i + e);
      if (i + 4 <= end) {
        *reinterpret_cast<char4*>(q + i) = make_char4(c[0], c[1], c[2], c[3]);
      } else {
        for (int e = 0; e < 4 && i + e < end; ++e) q[i + e] = c[e];
      }
    }
  }
}

template <int kVectors>
void launch_warp_quantize(const float* x, int64_t n, int64_t block, int64_t blocks, bool stochastic, uint32_t key,
                          int8_t* q, float* scales, cudaStream_t stream) {
  quantize_int8_warp_kernel<kVectors><<<grid_for(blocks * 32, kWarpThreads), kWarpThreads, 0, stream>>>(
      x, n, block, blocks, stochastic, key, q, scales);
  check_launch("quantize_int8_warp_kernel");
}

// Four elements per thread: one char4 load and one float4 store.
__global__ void dequantize_int8_kernel(const int8_t* q, const float* scales, int64_t n, int64_t block,
                                       float* out, bool accumulate, bool vector) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * 4;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 4; i < n; i += stride) {
    if (vector && i + 4 <= n) {
      const char4 codes = *reinterpret_cast<const char4*>(q + i);
      const float c[4] = {static_cast<float>(codes.x), static_cast<float>(codes.y), static_cast<float>(codes.z),
                          static_cast<float>(codes.w)};
      float4 v = accumulate ? *reinterpret_cast<const float4*>(out + i) : make_float4(0.f, 0.f, 0.f, 0.f);
      float r[4] = {v.x, v.y, v.z, v.w};
      for (int j = 0; j < 4; ++j) {
        const float decoded = c[j] * scales[static_cast<uint32_t>(i + j) / static_cast<uint32_t>(block)];
        r[j] = accumulate ? r[j] + decoded : decoded;
      }
      *reinterpret_cast<float4*>(out + i) = make_float4(r[0], r[1], r[2], r[3]);
    } else {
      for (int64_t j = i; j < i + 4 && j < n; ++j) {
        const float decoded = static_cast<float>(q[j]) * scales[static_cast<uint32_t>(j) / static_cast<uint32_t>(block)];
        out[j] = accumulate ? out[j] + decoded : decoded;
      }
    }
  }
}

}  // namespace

void quantize_int8(const float* x, int64_t n, int64_t block, bool stochastic, uint64_t seed, int8_t* q,
                   float* scales, cudaStream_t stream) {
  const int64_t blocks = num_blocks(n, block);
  if (blocks == 0) return;
  const uint32_t key = stream_key(seed, RandomStream::kStochasticRounding);
  if (aligned_to(x, 16) && aligned_to(q, 4) && block % 128 == 0 && block <= 2048) {
    switch (block / 128) {
      case 1: return launch_warp_quantize<1>(x, n, block, blocks, stochastic, key, q, scales, stream);
      case 2: return launch_warp_quantize<2>(x, n, block, blocks, stochastic, key, q, scales, stream);
      case 4: return launch_warp_quantize<4>(x, n, block, blocks, stochastic, key, q, scales, stream);
      case 8: return launch_warp_quantize<8>(x, n, block, blocks, stochastic, key, q, scales, stream);
      case 16: return launch_warp_quantize<16>(x, n, block, blocks, stochastic, key, q, scales, stream);
      default: break;  // 3, 5, 6, 7, 9, ... vectors a lane: the block-per-block kernel below
    }
  }
  const int threads = block >= 256 ? 256 : 64;
  quantize_int8_kernel<<<grid_for(blocks * threads, threads), threads, 0, stream>>>(x, n, block, blocks, stochastic,
                                                                                      key, q, scales);
  check_launch("quantize_int8_kernel");
}

void dequantize_int8(const int8_t* q, const float* scales, int64_t n, int64_t block, float* out, bool accumulate,
                     cudaStream_t stream) {
  if (n == 0) return;
  const bool vector = aligned_to(q, 4) && aligned_to(out, 16);
  const int64_t row = block < n ? block : n;  // same blocks; keeps the index maths in 32 bits
  dequantize_int8_kernel<<<grid_for((n + 3) / 4), kThreads, 0, stream>>>(q, scales, n, row, out, accumulate,
                                                                         vector);
  check_launch("dequantize_int8_kernel");
}

}  // namespace hvdkit::cuda
