// Argument checks and conversions shared by the CPU and CUDA bindings. The
// Python wrappers (hvdkit/ops.py) check first with friendlier errors; these
// keep direct torch.ops.hvdkit calls from crashing or writing out of bounds.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "core/dtype.h"
#include "core/layout.h"
#include "core/tensor_ref.h"

namespace hvdkit::binding {

inline bool is_float_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

inline DType to_dtype(at::ScalarType t) {
  TORCH_CHECK(is_float_type(t), "hvdkit: unsupported dtype ", t, " (float32, float16 or bfloat16)");
  return t == at::kFloat ? DType::kFloat32 : (t == at::kHalf ? DType::kFloat16 : DType::kBFloat16);
}

inline void check_tensor(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK(t.defined(), "hvdkit: ", name, " is undefined");
  TORCH_CHECK(t.is_contiguous(), "hvdkit: ", name, " must be contiguous");
  TORCH_CHECK(t.device() == device, "hvdkit: ", name, " is on ", t.device(), ", expected ", device);
  TORCH_CHECK(t.numel() <= kMaxElements, "hvdkit: ", name, " has more than 2^31 - 1 elements");
}

inline void check_typed(const at::Tensor& t, const char* name, const at::Device& device,
                        at::ScalarType dtype) {
  check_tensor(t, name, device);
  TORCH_CHECK(t.scalar_type() == dtype, "hvdkit: ", name, " must be ", dtype, ", got ", t.scalar_type());
}

inline void check_float(const at::Tensor& t, const char* name, const at::Device& device) {
  check_tensor(t, name, device);
  TORCH_CHECK(is_float_type(t.scalar_type()), "hvdkit: ", name,
              " must be float32, float16 or bfloat16, got ", t.scalar_type());
}

inline std::vector<TensorRef> tensor_refs(const at::TensorList& tensors, const char* name,
                                          const at::Device& device) {
  std::vector<TensorRef> refs;
  refs.reserve(tensors.size());
  for (const at::Tensor& t : tensors) {
    check_float(t, name, device);
    refs.push_back({t.data_ptr(), t.numel(), to_dtype(t.scalar_type())});
  }
  return refs;
}

inline int64_t total_numel(const std::vector<TensorRef>& refs) {
  int64_t total = 0;
  for (const TensorRef& r : refs) total += r.numel;
  return total;
}

inline void check_block(int64_t block, bool multiple_of_8) {
  TORCH_CHECK(block > 0, "hvdkit: block must be positive, got ", block);
  TORCH_CHECK(!multiple_of_8 || block % 8 == 0, "hvdkit: block must be a multiple of 8, got ", block);
}

// Payload rows: [n] for one rank or [ranks, n] for a gathered stack.
inline int64_t payload_rows(const at::Tensor& t, int64_t row_length, const char* name) {
  TORCH_CHECK(t.dim() == 1 || t.dim() == 2, "hvdkit: ", name, " must be 1-D or 2-D [ranks, ...]");
  const int64_t rows = t.dim() == 2 ? t.size(0) : 1;
  const int64_t length = t.dim() == 2 ? t.size(1) : t.size(0);
  TORCH_CHECK(length == row_length, "hvdkit: ", name, " rows must have ", row_length,
              " entries, got ", length);
  return rows;
}

}  // namespace hvdkit::binding
