// One-bit scaled sign with error feedback on the GPU. Encode: one thread block
// per scale block, each thread owning 8 consecutive elements (one output
// byte) per step; pass 1 writes c = x + residual and reduces sum |c|, pass 2
// packs the bits and writes the new residual (from registers when the block
// fits one step). Decode: one thread per output byte, all ranks summed in
// order in registers.
#include "core/cuda_ops.h"
#include "core/layout.h"
#include "cuda/device_utils.cuh"
#include "cuda/launch.cuh"

namespace hvdkit::cuda {
namespace {

constexpr int kSignThreads = 128;
constexpr int64_t kStep = 8 * kSignThreads;  // elements per step of a thread block

__device__ __forceinline__ void load8(const float* p, int count, bool vector, float (&v)[8]) {
  if (vector && count == 8) {
    const float4 a = reinterpret_cast<const float4*>(p)[0];
    const float4 b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = j < count ? p[j] : 0.0f;
  }
}

__device__ __forceinline__ void store8(float* p, int count, bool vector, const float (&v)[8]) {
  if (vector && count == 8) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (j < count) p[j] = v[j];  // fixed trip count keeps v in registers
    }
  }
}

__global__ void __launch_bounds__(kSignThreads) sign_ef_kernel(const float* x, float* residual, int64_t n,
                                                               int64_t block, int64_t blocks, uint8_t* bits,
                                                               float* scales, bool vector) {
  __shared__ float shared[32];
  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
    const int64_t begin = b * block;
    const int64_t end = begin + block < n ? begin + block : n;
    const bool one_step = end - begin <= kStep;
    float kept[8];

    float sum = 0.0f;
    for (int64_t i = begin + 8 * threadIdx.x; i < end; i += kStep) {
      const int count = end - i < 8 ? static_cast<int>(end - i) : 8;
      float xs[8];
      float c[8];
      load8(x + i, count, vector, xs);
      load8(residual + i, count, vector, c);
      for (int j = 0; j < 8; ++j) {
        c[j] = xs[j] + c[j];
        sum += fabsf(c[j]);  // padding lanes are 0
        kept[j] = c[j];
      }
      store8(residual + i, count, vector, c);
    }
    const float scale = block_reduce(sum, SumOp{}, 0.0f, shared) / static_cast<float>(end - begin);
    if (threadIdx.x == 0) scales[b] = scale;

    for (int64_t i = begin + 8 * threadIdx.x; i < end; i += kStep) {
      const int count = end - i < 8 ? static_cast<int>(end - i) : 8;
      float c[8];
      if (one_step) {
        for (int j = 0; j < 8; ++j) c[j] = kept[j];
      } else {
        load8(residual + i, count, vector, c);  // this thread's own writes
      }
      uint32_t byte = 0;
      for (int j = 0; j < 8; ++j) {
        const bool positive = c[j] >= 0.0f;
        if (j < count) byte |= static_cast<uint32_t>(positive) << j;
        c[j] = c[j] - (positive ? scale : -scale);
      }
      store8(residual + i, count, vector, c);
      bits[i / 8] = static_cast<uint8_t>(byte);
    }
  }
}

__global__ void sign_decode_kernel(const uint8_t* bits, const float* scales, int64_t ranks, int64_t n,
                                   int64_t block, float* out, bool accumulate, bool vector) {
  const int64_t row_bytes = (n + 7) / 8;
  const int64_t row_scales = (n + block - 1) / block;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t byte = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; byte < row_bytes; byte += stride) {
    const int64_t first = byte * 8;
    const int count = n - first < 8 ? static_cast<int>(n - first) : 8;
    const int64_t b = first / block;  // block is a multiple of 8: one scale per byte
    float sum[8];
    if (accumulate) {
      load8(out + first, count, vector, sum);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) sum[j] = 0.0f;
    }
    for (int64_t r = 0; r < ranks; ++r) {
      const float scale = scales[r * row_scales + b];
      const uint32_t mask = bits[r * row_bytes + byte];
#pragma unroll
      for (int j = 0; j < 8; ++j) sum[j] = sum[j] + (((mask >> j) & 1u) ? scale : -scale);
    }
    store8(out + first, count, vector, sum);
  }
}

}  // namespace

void sign_ef(const float* x, float* residual, int64_t n, int64_t block, uint8_t* bits, float* scales,
             cudaStream_t stream) {
  const int64_t blocks = num_blocks(n, block);
  if (blocks == 0) return;
  const bool vector = aligned_to(x, 16) && aligned_to(residual, 16);  // block % 8 == 0 keeps steps aligned
  sign_ef_kernel<<<grid_for(blocks * kSignThreads, kSignThreads), kSignThreads, 0, stream>>>(
      x, residual, n, block, blocks, bits, scales, vector);
  check_launch("sign_ef_kernel");
}

void sign_decode(const uint8_t* bits, const float* scales, int64_t ranks, int64_t n, int64_t block, float* out,
                 bool accumulate, cudaStream_t stream) {
  if (n == 0) return;
  sign_decode_kernel<<<grid_for(sign_bytes(n)), kThreads, 0, stream>>>(bits, scales, ranks, n, block, out,
                                                                       accumulate, aligned_to(out, 16));
  check_launch("sign_decode_kernel");
}

}  // namespace hvdkit::cuda
