// The TensorFlow op definitions (schemas and shape functions), declared once
// for every device; kernels_*.cc register the CPU implementations. Python
// wrappers with argument checks and documentation: hvdkit/tensorflow/ops.py.
//
// TensorFlow tensors are immutable, so the ops are functional where the torch
// operators write in place: error-feedback ops take the residual and return
// the new one, and "accumulate into out" ops return out + decoded. The kernels
// reuse an input's buffer for that output when TensorFlow holds the only
// reference to it, so the functional form costs no extra pass then. Every op
// is a pure function of its inputs (seeds are inputs), hence stateless; only
// the instruction-set ops, which read and write process state, are stateful.
#include "kernel_utils.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace hvdkit::tf {
namespace {

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// ceil(n / divisor), unknown when n is.
DimensionHandle ceil_div_dim(InferenceContext* c, DimensionHandle n, int64_t divisor) {
  if (!InferenceContext::ValueKnown(n)) return c->UnknownDim();
  return c->MakeDim((InferenceContext::Value(n) + divisor - 1) / divisor);
}

absl::Status block_attr(InferenceContext* c, bool multiple_of_8, int64_t* block) {
  TF_RETURN_IF_ERROR(c->GetAttr("block", block));
  return check_block(*block, multiple_of_8);
}

// Output `output` has the shape of input `input`.
absl::Status same_shape(InferenceContext* c, int input, int output) {
  c->set_output(output, c->input(input));
  return absl::OkStatus();
}

absl::Status pack_shape(InferenceContext* c) {
  int64_t total = 0;
  bool known = true;
  for (int i = 0; i + 1 < c->num_inputs(); ++i) {
    const DimensionHandle n = c->NumElements(c->input(i));
    known = known && InferenceContext::ValueKnown(n);
    if (known) total += InferenceContext::Value(n);
  }
  c->set_output(0, c->Vector(known ? c->MakeDim(total) : c->UnknownDim()));
  c->set_output(1, c->Scalar());
  return absl::OkStatus();
}

absl::Status unpack_shape(InferenceContext* c) {
  for (int i = 0; i < c->num_outputs(); ++i) c->set_output(i, c->input(1 + i));
  return absl::OkStatus();
}

absl::Status quantize_shape(InferenceContext* c) {
  int64_t block = 0;
  TF_RETURN_IF_ERROR(block_attr(c, false, &block));
  const DimensionHandle n = c->NumElements(c->input(0));
  c->set_output(0, c->Vector(n));
  c->set_output(1, c->Vector(ceil_div_dim(c, n, block)));
  return absl::OkStatus();
}

absl::Status dequantize_shape(InferenceContext* c) {
  int64_t block = 0;
  TF_RETURN_IF_ERROR(block_attr(c, false, &block));
  c->set_output(0, c->Vector(c->NumElements(c->input(0))));
  return absl::OkStatus();
}

absl::Status sign_ef_shape(InferenceContext* c) {
  int64_t block = 0;
  TF_RETURN_IF_ERROR(block_attr(c, true, &block));
  const DimensionHandle n = c->NumElements(c->input(0));
  c->set_output(0, c->Vector(ceil_div_dim(c, n, 8)));
  c->set_output(1, c->Vector(ceil_div_dim(c, n, block)));
  return same_shape(c, 1, 2);
}

absl::Status sign_decode_shape(InferenceContext* c) {
  int64_t block = 0;
  int64_t n = 0;
  TF_RETURN_IF_ERROR(block_attr(c, true, &block));
  TF_RETURN_IF_ERROR(c->GetAttr("n", &n));
  c->set_output(0, c->Vector(n));
  return absl::OkStatus();
}

// The "...Accumulate" ops: the result has the shape of input 2 (out).
template <bool kMultipleOf8>
absl::Status accumulate_shape(InferenceContext* c) {
  int64_t block = 0;
  TF_RETURN_IF_ERROR(block_attr(c, kMultipleOf8, &block));
  return same_shape(c, 2, 0);
}

absl::Status topk_shape(InferenceContext* c) {
  int64_t k = 0;
  TF_RETURN_IF_ERROR(c->GetAttr("k", &k));
  // Both modes return exactly k pairs (padded with (0, -0.0) where fewer are selected).
  c->set_output(0, c->Vector(k));
  c->set_output(1, c->Vector(k));
  return same_shape(c, 1, 2);
}

absl::Status randomk_shape(InferenceContext* c) {
  int64_t k = 0;
  TF_RETURN_IF_ERROR(c->GetAttr("k", &k));
  c->set_output(0, c->Vector(k));
  c->set_output(1, c->Vector(k));
  return absl::OkStatus();
}

}  // namespace
}  // namespace hvdkit::tf

namespace b = ::hvdkit::tf;

REGISTER_OP("HvdkitPack")
    .Input("tensors: T")
    .Input("scale: float")
    .Output("flat: out_type")
    .Output("nonfinite: bool")
    .Attr("T: list({float, half, bfloat16}) >= 0")
    .Attr("out_type: {float, half, bfloat16}")
    .SetShapeFn(b::pack_shape)
    .Doc("Flattened tensors * scale laid end to end, cast to out_type; nonfinite flags NaN/Inf.");

REGISTER_OP("HvdkitUnpack")
    .Input("flat: F")
    .Input("tensors: T")
    .Input("scale: float")
    .Output("unpacked: T")
    .Attr("F: {float, half, bfloat16}")
    .Attr("T: list({float, half, bfloat16}) >= 0")
    .Attr("accumulate: bool = false")
    .SetShapeFn(b::unpack_shape)
    .Doc("Slices of flat * scale shaped and typed like tensors (added to them with accumulate).");

REGISTER_OP("HvdkitQuantizeInt8")
    .Input("x: float")
    .Input("seed: int64")
    .Output("q: int8")
    .Output("scales: float")
    .Attr("block: int")
    .Attr("stochastic: bool = false")
    .SetShapeFn(b::quantize_shape)
    .Doc("Blockwise absmax int8 codes and per-block scales of flattened x.");

REGISTER_OP("HvdkitDequantizeInt8")
    .Input("q: int8")
    .Input("scales: float")
    .Output("out: float")
    .Attr("block: int")
    .SetShapeFn(b::dequantize_shape)
    .Doc("q * scales[i / block].");

REGISTER_OP("HvdkitDequantizeInt8Accumulate")
    .Input("q: int8")
    .Input("scales: float")
    .Input("out: float")
    .Output("result: float")
    .Attr("block: int")
    .SetShapeFn(b::accumulate_shape<false>)
    .Doc("out + q * scales[i / block], shaped like out.");

REGISTER_OP("HvdkitSignEf")
    .Input("x: float")
    .Input("residual: float")
    .Output("bits: uint8")
    .Output("scales: float")
    .Output("new_residual: float")
    .Attr("block: int")
    .SetShapeFn(b::sign_ef_shape)
    .Doc("One-bit scaled sign of x + residual, and the residual left after sending it.");

REGISTER_OP("HvdkitSignDecode")
    .Input("bits: uint8")
    .Input("scales: float")
    .Output("out: float")
    .Attr("n: int >= 0")
    .Attr("block: int")
    .SetShapeFn(b::sign_decode_shape)
    .Doc("Sum over ranks (rows) of the decoded one-bit payloads.");

REGISTER_OP("HvdkitSignDecodeAccumulate")
    .Input("bits: uint8")
    .Input("scales: float")
    .Input("out: float")
    .Output("result: float")
    .Attr("block: int")
    .SetShapeFn(b::accumulate_shape<true>)
    .Doc("out + the sum over ranks of the decoded one-bit payloads, shaped like out.");

REGISTER_OP("HvdkitTopkEf")
    .Input("x: float")
    .Input("residual: float")
    .Output("indices: int32")
    .Output("values: float")
    .Output("new_residual: float")
    .Attr("k: int >= 0")
    .Attr("approx: bool = false")
    .SetShapeFn(b::topk_shape)
    .Doc("Top-k by magnitude of x + residual (exactly k pairs, padded with (0, -0.0) where fewer non-zero "
         "entries are selected), and the residual with the selected entries zeroed.");

REGISTER_OP("HvdkitRandomk")
    .Input("x: T")
    .Input("seed: int64")
    .Output("indices: int32")
    .Output("values: T")
    .Attr("T: {float, half, bfloat16}")
    .Attr("k: int >= 0")
    .SetShapeFn(b::randomk_shape)
    .Doc("k stratified random indices drawn from seed alone, and x there.");

REGISTER_OP("HvdkitScatterAdd")
    .Input("indices: int32")
    .Input("values: float")
    .Input("out: float")
    .Output("result: float")
    .Attr("poison: bool = false")
    .SetShapeFn([](b::InferenceContext* c) { return b::same_shape(c, 2, 0); })
    .Doc("out with values[i] added at flat index indices[i], in order; with poison, an out-of-range index "
         "makes the result out with its first element NaN instead of an error.");

REGISTER_OP("HvdkitCpuIsas")
    .Output("available: string")
    .Output("active: string")
    .SetIsStateful()
    .SetShapeFn([](b::InferenceContext* c) {
      c->set_output(0, c->Vector(c->UnknownDim()));
      c->set_output(1, c->Scalar());
      return absl::OkStatus();
    })
    .Doc("CPU instruction sets built in and supported here (best first), and the one in use.");

REGISTER_OP("HvdkitSetCpuIsa")
    .Input("isa: string")
    .Output("previous: string")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::ScalarShape)
    .Doc("Switches this library's CPU instruction set; returns the previous one.");
