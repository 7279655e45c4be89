// Fused pack / unpack (and so cast) on the GPU: one multi-tensor launch per
// batch of segments, a small convert functor per chunk with 16-byte vector
// loads where aligned.
#include <vector>

#include "core/cuda_ops.h"
#include "cuda/device_utils.cuh"
#include "cuda/launch.cuh"
#include "cuda/multi_tensor_apply.cuh"

namespace hvdkit::cuda {
namespace {

// dst = saturate(src * scale (+ dst)); sets *nonfinite when a result before
// saturation is NaN or Inf (nonfinite may be null).
template <DType In, DType Out, bool Accumulate>
struct ConvertFunctor {
  static constexpr int kUnroll = 4;
  float scale;
  bool* nonfinite;

  __device__ float apply(float x, const typename Storage<Out>::T* dst, bool& bad) const {
    float v = x * scale;
    if constexpr (Accumulate) v = load_element<Out>(dst) + v;
    bad = bad || !is_finite_value(v);
    return v;
  }

  __device__ void operator()(const void* src_base, void* dst_base, int64_t start, int64_t length) const {
    const auto* src = static_cast<const typename Storage<In>::T*>(src_base) + start;
    auto* dst = static_cast<typename Storage<Out>::T*>(dst_base) + start;
    bool bad = false;
    const bool vector = aligned4(src) && aligned4(dst);
    const int64_t vector_end = vector ? length / 4 * 4 : 0;
    // A launch holds a few hundred blocks, too few to hide memory latency
    // with one load per thread: each thread issues kUnroll vector loads before
    // it stores any (thread t covers 4t + m * sweep for every m, once).
    const int64_t sweep = 4 * static_cast<int64_t>(blockDim.x);
    for (int64_t base = 4 * threadIdx.x; base < vector_end; base += kUnroll * sweep) {
      float v[kUnroll][4];
      float old[kUnroll][4] = {};
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = base + u * sweep;
        if (i < vector_end) {
          load4<In>(src + i, v[u]);
          if constexpr (Accumulate) load4<Out>(dst + i, old[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = base + u * sweep;
        if (i >= vector_end) break;
        for (int j = 0; j < 4; ++j) {
          v[u][j] = v[u][j] * scale;
          if constexpr (Accumulate) v[u][j] = old[u][j] + v[u][j];
          bad = bad || !is_finite_value(v[u][j]);
        }
        store4<Out>(dst + i, v[u]);
      }
    }
    for (int64_t i = vector_end + threadIdx.x; i < length; i += blockDim.x) {
      store_element<Out>(dst + i, apply(load_element<In>(src + i), dst + i, bad));
    }
    if (__syncthreads_or(bad) && threadIdx.x == 0 && nonfinite != nullptr) *nonfinite = true;
  }

  template <class T>
  __device__ static bool aligned4(const T* p) {
    return reinterpret_cast<uintptr_t>(p) % (4 * sizeof(T)) == 0;
  }
};

template <DType In, DType Out>
void convert_typed(const std::vector<Segment>& segments, float scale, bool accumulate, bool* nonfinite,
                   cudaStream_t stream) {
  if (accumulate) {
    multi_tensor_apply(segments, ConvertFunctor<In, Out, true>{scale, nonfinite}, stream);
  } else {
    multi_tensor_apply(segments, ConvertFunctor<In, Out, false>{scale, nonfinite}, stream);
  }
}

template <DType In>
void convert_from(DType out, const std::vector<Segment>& segments, float scale, bool accumulate,
                  bool* nonfinite, cudaStream_t stream) {
  switch (out) {
    case DType::kFloat32: return convert_typed<In, DType::kFloat32>(segments, scale, accumulate, nonfinite, stream);
    case DType::kFloat16: return convert_typed<In, DType::kFloat16>(segments, scale, accumulate, nonfinite, stream);
    case DType::kBFloat16: return convert_typed<In, DType::kBFloat16>(segments, scale, accumulate, nonfinite, stream);
  }
}

// Segments all share one source dtype and one destination dtype, so group
// them by dtype pair and launch each group.
void convert_segments(const std::vector<Segment>& segments, const std::vector<DType>& src_dtypes,
                      const std::vector<DType>& dst_dtypes, float scale, bool accumulate, bool* nonfinite,
                      cudaStream_t stream) {
  const DType all[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
  for (DType in : all) {
    for (DType out : all) {
      std::vector<Segment> group;
      for (size_t i = 0; i < segments.size(); ++i) {
        if (src_dtypes[i] == in && dst_dtypes[i] == out) group.push_back(segments[i]);
      }
      if (group.empty()) continue;
      switch (in) {
        case DType::kFloat32: convert_from<DType::kFloat32>(out, group, scale, accumulate, nonfinite, stream); break;
        case DType::kFloat16: convert_from<DType::kFloat16>(out, group, scale, accumulate, nonfinite, stream); break;
        case DType::kBFloat16: convert_from<DType::kBFloat16>(out, group, scale, accumulate, nonfinite, stream); break;
      }
    }
  }
}

}  // namespace

void pack(const TensorRef* tensors, int64_t count, void* flat, DType flat_dtype, float scale,
          bool* nonfinite, cudaStream_t stream) {
  std::vector<Segment> segments;
  std::vector<DType> src_dtypes;
  std::vector<DType> dst_dtypes;
  int64_t offset = 0;
  for (int64_t i = 0; i < count; ++i) {
    char* target = static_cast<char*>(flat) + offset * element_size(flat_dtype);
    segments.push_back({tensors[i].data, target, tensors[i].numel});
    src_dtypes.push_back(tensors[i].dtype);
    dst_dtypes.push_back(flat_dtype);
    offset += tensors[i].numel;
  }
  convert_segments(segments, src_dtypes, dst_dtypes, scale, false, nonfinite, stream);
}

void unpack(const void* flat, DType flat_dtype, const TensorRef* tensors, int64_t count, float scale,
            bool accumulate, cudaStream_t stream) {
  std::vector<Segment> segments;
  std::vector<DType> src_dtypes;
  std::vector<DType> dst_dtypes;
  int64_t offset = 0;
  for (int64_t i = 0; i < count; ++i) {
    const char* source = static_cast<const char*>(flat) + offset * element_size(flat_dtype);
    segments.push_back({source, tensors[i].data, tensors[i].numel});
    src_dtypes.push_back(flat_dtype);
    dst_dtypes.push_back(tensors[i].dtype);
    offset += tensors[i].numel;
  }
  convert_segments(segments, src_dtypes, dst_dtypes, scale, accumulate, nullptr, stream);
}

}  // namespace hvdkit::cuda
