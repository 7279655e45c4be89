// The generic multi-tensor engine on the GPU (after apex multi_tensor_apply):
// many (source, destination, length) segments are cut into fixed-size chunks,
// and one launch covers up to kMaxChunks chunks of up to kMaxSegments
// segments, described in the kernel arguments (no device-side metadata, no
// host-device copy). The per-op work is a functor called once per chunk.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "cuda/launch.cuh"

namespace hvdkit::cuda {

// How much one launch covers is bounded by the kernel-argument size. CUDA
// 12.1+ takes 32 KB of arguments: 1800 chunks (29 M elements) fill an H100
// with blocks, and pack / cast / unpack run at 97-99 % of a device copy
// (measured on an H100; 320 chunks, the most 4 KB holds, gave 64-77 %).
#if defined(CUDART_VERSION) && CUDART_VERSION >= 12010
constexpr int kMaxSegments = 200;
constexpr int kMaxChunks = 1800;
#else
constexpr int kMaxSegments = 48;
constexpr int kMaxChunks = 320;
#endif
constexpr int64_t kChunkElements = 16384;
constexpr int kChunkThreads = 512;
static_assert(kMaxSegments <= 255, "segment_of_chunk is a uint8_t");

struct Segment {
  const void* src;
  void* dst;
  int64_t numel;
};

// Kernel argument: 13.8 KB (2.8 KB before CUDA 12.1), under the limit.
struct SegmentBatch {
  const void* src[kMaxSegments];
  void* dst[kMaxSegments];
  int64_t numel[kMaxSegments];
  uint8_t segment_of_chunk[kMaxChunks];
  int32_t chunk_of_chunk[kMaxChunks];  // chunk index within its segment
};

template <class Functor>
__global__ void __launch_bounds__(kChunkThreads) multi_tensor_kernel(SegmentBatch batch, Functor functor) {
  const int segment = batch.segment_of_chunk[blockIdx.x];
  const int64_t start = static_cast<int64_t>(batch.chunk_of_chunk[blockIdx.x]) * kChunkElements;
  const int64_t remaining = batch.numel[segment] - start;
  const int64_t length = remaining < kChunkElements ? remaining : kChunkElements;
  functor(batch.src[segment], batch.dst[segment], start, length);
}

// Runs functor(src, dst, first_element, length) over every chunk of every
// segment, on `stream`.
template <class Functor>
void multi_tensor_apply(const std::vector<Segment>& segments, Functor functor, cudaStream_t stream) {
  SegmentBatch batch{};
  int segments_used = 0;
  int chunks_used = 0;
  auto launch = [&]() {
    multi_tensor_kernel<<<chunks_used, kChunkThreads, 0, stream>>>(batch, functor);
    check_launch("multi_tensor_kernel");
    chunks_used = 0;
  };
  for (const Segment& s : segments) {
    if (s.numel == 0) continue;
    if (segments_used == kMaxSegments) {
      if (chunks_used > 0) launch();
      segments_used = 0;
    }
    int slot = segments_used++;
    batch.src[slot] = s.src;
    batch.dst[slot] = s.dst;
    batch.numel[slot] = s.numel;
    const int64_t chunks = (s.numel + kChunkElements - 1) / kChunkElements;
    for (int64_t c = 0; c < chunks; ++c) {
      batch.segment_of_chunk[chunks_used] = static_cast<uint8_t>(slot);
      batch.chunk_of_chunk[chunks_used] = static_cast<int32_t>(c);
      ++chunks_used;
      if (chunks_used == kMaxChunks) {
        launch();
        // The rest of this segment's chunks go in the next launch, in slot 0.
        batch.src[0] = s.src;
        batch.dst[0] = s.dst;
        batch.numel[0] = s.numel;
        slot = 0;
        segments_used = 1;
      }
    }
  }
  if (chunks_used > 0) launch();
}

}  // namespace hvdkit::cuda
