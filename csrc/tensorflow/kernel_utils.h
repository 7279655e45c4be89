// Checks and conversions shared by the TensorFlow CPU kernels. The Python
// wrappers (hvdkit/tensorflow/ops.py) check first with friendlier errors;
// these keep graphs with shapes unknown at trace time, and direct calls of the
// generated ops, from writing out of bounds: every failure is an
// InvalidArgument status, never an abort.
#pragma once

#include <cstring>

#include "core/dtype.h"
#include "core/layout.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace hvdkit::tf {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

// The op schemas restrict float inputs to these three types.
inline DType to_dtype(::tensorflow::DataType t) {
  return t == ::tensorflow::DT_FLOAT ? DType::kFloat32
                                     : (t == ::tensorflow::DT_HALF ? DType::kFloat16 : DType::kBFloat16);
}

// TensorFlow's intra-op parallelism, as the torch binding uses torch's.
inline int cpu_threads(OpKernelContext* ctx) {
  return ctx->device()->tensorflow_cpu_worker_threads()->num_threads;
}

inline absl::Status check_size(const Tensor& t, const char* name) {
  if (t.NumElements() > kMaxElements) {
    return absl::InvalidArgumentError(
        absl::StrCat("hvdkit: ", name, " has ", t.NumElements(), " elements; at most 2^31 - 1 are supported"));
  }
  return absl::OkStatus();
}

inline absl::Status check_numel(const Tensor& t, int64_t expected, const char* name, const char* what) {
  if (t.NumElements() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("hvdkit: ", name, " has ", t.NumElements(), " elements, expected ", expected, " (", what, ")"));
  }
  return absl::OkStatus();
}

inline absl::Status check_block(int64_t block, bool multiple_of_8) {
  if (block <= 0 || (multiple_of_8 && block % 8 != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hvdkit: block must be ", multiple_of_8 ? "a positive multiple of 8" : "positive", ", got ", block));
  }
  return absl::OkStatus();
}

inline absl::Status check_scalar(const Tensor& t, const char* name) {
  if (t.dims() != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("hvdkit: ", name, " must be a scalar, got shape ", t.shape().DebugString()));
  }
  return absl::OkStatus();
}

// Payload rows: [ranks, row_length], or 1-D: one rank's payload or the
// concatenation of several (what allgather returns). Checked here rather than
// reshaped in Python, so graphs whose lengths are unknown until run time get
// an error that names the argument.
inline absl::Status payload_rows(const Tensor& t, int64_t row_length, const char* name, int64_t* rows) {
  if (t.dims() == 2) {
    if (t.dim_size(1) != row_length) {
      return absl::InvalidArgumentError(
          absl::StrCat("hvdkit: ", name, " rows must have ", row_length, " entries, got ", t.dim_size(1)));
    }
    *rows = t.dim_size(0);
    return absl::OkStatus();
  }
  if (t.dims() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("hvdkit: ", name, " must be 1-D or 2-D [ranks, ",
                                                   row_length, "], got shape ", t.shape().DebugString()));
  }
  const int64_t length = t.dim_size(0);
  if (row_length == 0 ? length != 0 : (length == 0 || length % row_length != 0)) {
    return absl::InvalidArgumentError(absl::StrCat("hvdkit: ", name, " has ", length,
                                                   " entries, not a whole number of ", row_length,
                                                   "-entry payloads"));
  }
  *rows = row_length == 0 ? 1 : length / row_length;
  return absl::OkStatus();
}

// Output `output` holding a copy of input `input` (same shape and type), to be
// updated in place: TensorFlow hands over the input's buffer when nothing else
// references it, so the copy happens only when it must.
inline absl::Status output_from_input(OpKernelContext* ctx, int input, int output, Tensor** out) {
  const Tensor& source = ctx->input(input);
  TF_RETURN_IF_ERROR(ctx->forward_input_or_allocate_output({input}, output, source.shape(), out));
  if ((*out)->data() != source.data() && source.TotalBytes() > 0) {
    std::memcpy((*out)->data(), source.data(), source.TotalBytes());
  }
  return absl::OkStatus();
}

}  // namespace hvdkit::tf
