// CPU kernels of the int8 and one-bit ops: check, allocate, call the core
// (core/cpu_ops.h) with TensorFlow's intra-op thread count.
#include "core/cpu_ops.h"
#include "kernel_utils.h"

namespace hvdkit::tf {
namespace {

class QuantizeInt8Op : public OpKernel {
 public:
  explicit QuantizeInt8Op(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("block", &block_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("stochastic", &stochastic_));
    OP_REQUIRES_OK(ctx, check_block(block_, false));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& seed = ctx->input(1);
    OP_REQUIRES_OK(ctx, check_size(x, "x"));
    OP_REQUIRES_OK(ctx, check_scalar(seed, "seed"));
    const int64_t n = x.NumElements();
    Tensor* q = nullptr;
    Tensor* scales = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n}), &q));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({num_blocks(n, block_)}), &scales));
    cpu::quantize_int8(x.flat<float>().data(), n, block_, stochastic_,
                       static_cast<uint64_t>(seed.scalar<int64_t>()()), q->flat<int8_t>().data(),
                       scales->flat<float>().data(), cpu_threads(ctx));
  }

 private:
  int64_t block_ = 0;
  bool stochastic_ = false;
};

// HvdkitDequantizeInt8 and, with kAccumulate, HvdkitDequantizeInt8Accumulate.
template <bool kAccumulate>
class DequantizeInt8Op : public OpKernel {
 public:
  explicit DequantizeInt8Op(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("block", &block_));
    OP_REQUIRES_OK(ctx, check_block(block_, false));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& q = ctx->input(0);
    const Tensor& scales = ctx->input(1);
    OP_REQUIRES_OK(ctx, check_size(q, "q"));
    const int64_t n = q.NumElements();
    OP_REQUIRES_OK(ctx, check_numel(scales, num_blocks(n, block_), "scales", "ceil(q elements / block)"));
    Tensor* out = nullptr;
    if (kAccumulate) {
      OP_REQUIRES_OK(ctx, check_numel(ctx->input(2), n, "out", "the elements of q"));
      OP_REQUIRES_OK(ctx, output_from_input(ctx, 2, 0, &out));
    } else {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n}), &out));
    }
    cpu::dequantize_int8(q.flat<int8_t>().data(), scales.flat<float>().data(), n, block_,
                         out->flat<float>().data(), kAccumulate, cpu_threads(ctx));
  }

 private:
  int64_t block_ = 0;
};

class SignEfOp : public OpKernel {
 public:
  explicit SignEfOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("block", &block_));
    OP_REQUIRES_OK(ctx, check_block(block_, true));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    OP_REQUIRES_OK(ctx, check_size(x, "x"));
    const int64_t n = x.NumElements();
    OP_REQUIRES_OK(ctx, check_numel(ctx->input(1), n, "residual", "the elements of x"));
    Tensor* bits = nullptr;
    Tensor* scales = nullptr;
    Tensor* residual = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({sign_bytes(n)}), &bits));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({num_blocks(n, block_)}), &scales));
    OP_REQUIRES_OK(ctx, output_from_input(ctx, 1, 2, &residual));
    cpu::sign_ef(x.flat<float>().data(), residual->flat<float>().data(), n, block_,
                 bits->flat<uint8_t>().data(), scales->flat<float>().data(), cpu_threads(ctx));
  }

 private:
  int64_t block_ = 0;
};

// HvdkitSignDecode (n from its attribute) and, with kAccumulate,
// HvdkitSignDecodeAccumulate (n = the elements of out).
template <bool kAccumulate>
class SignDecodeOp : public OpKernel {
 public:
  explicit SignDecodeOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("block", &block_));
    OP_REQUIRES_OK(ctx, check_block(block_, true));
    if (!kAccumulate) {
      OP_REQUIRES_OK(ctx, ctx->GetAttr("n", &n_));
      OP_REQUIRES(ctx, n_ <= kMaxElements,
                  absl::InvalidArgumentError(absl::StrCat("hvdkit: n must be at most 2^31 - 1, got ", n_)));
    }
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& bits = ctx->input(0);
    const Tensor& scales = ctx->input(1);
    int64_t n = n_;
    if (kAccumulate) {
      OP_REQUIRES_OK(ctx, check_size(ctx->input(2), "out"));
      n = ctx->input(2).NumElements();
    }
    int64_t ranks = 0;
    int64_t scale_ranks = 0;
    OP_REQUIRES_OK(ctx, payload_rows(bits, sign_bytes(n), "bits", &ranks));
    OP_REQUIRES_OK(ctx, payload_rows(scales, num_blocks(n, block_), "scales", &scale_ranks));
    OP_REQUIRES(ctx, ranks == scale_ranks,
                absl::InvalidArgumentError(absl::StrCat("hvdkit: bits hold ", ranks,
                                                        " ranks' payloads but scales hold ", scale_ranks)));
    Tensor* out = nullptr;
    if (kAccumulate) {
      OP_REQUIRES_OK(ctx, output_from_input(ctx, 2, 0, &out));
    } else {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n}), &out));
    }
    cpu::sign_decode(bits.flat<uint8_t>().data(), scales.flat<float>().data(), ranks, n, block_,
                     out->flat<float>().data(), kAccumulate, cpu_threads(ctx));
  }

 private:
  int64_t block_ = 0;
  int64_t n_ = 0;
};

using ::tensorflow::DEVICE_CPU;
REGISTER_KERNEL_BUILDER(Name("HvdkitQuantizeInt8").Device(DEVICE_CPU), QuantizeInt8Op);
REGISTER_KERNEL_BUILDER(Name("HvdkitDequantizeInt8").Device(DEVICE_CPU), DequantizeInt8Op<false>);
REGISTER_KERNEL_BUILDER(Name("HvdkitDequantizeInt8Accumulate").Device(DEVICE_CPU), DequantizeInt8Op<true>);
REGISTER_KERNEL_BUILDER(Name("HvdkitSignEf").Device(DEVICE_CPU), SignEfOp);
REGISTER_KERNEL_BUILDER(Name("HvdkitSignDecode").Device(DEVICE_CPU), SignDecodeOp<false>);
REGISTER_KERNEL_BUILDER(Name("HvdkitSignDecodeAccumulate").Device(DEVICE_CPU), SignDecodeOp<true>);

}  // namespace
}  // namespace hvdkit::tf
