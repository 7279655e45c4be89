// CPU kernels of the sparsifying ops (top-k with error feedback, random-k)
// and of their scatter-add decode, calling the core (core/cpu_ops.h).
#include "core/cpu_ops.h"
#include "kernel_utils.h"

namespace hvdkit::tf {
namespace {

absl::Status check_k(int64_t k, int64_t n) {
  if (k < 0 || k > n) return absl::InvalidArgumentError(absl::StrCat("hvdkit: k must be in [0, ", n, "], got ", k));
  return absl::OkStatus();
}

class TopkEfOp : public OpKernel {
 public:
  explicit TopkEfOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("k", &k_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("approx", &approx_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    OP_REQUIRES_OK(ctx, check_size(x, "x"));
    const int64_t n = x.NumElements();
    OP_REQUIRES_OK(ctx, check_numel(ctx->input(1), n, "residual", "the elements of x"));
    OP_REQUIRES_OK(ctx, check_k(k_, n));
    Tensor* residual = nullptr;
    OP_REQUIRES_OK(ctx, output_from_input(ctx, 1, 2, &residual));
    // Both modes write exactly k pairs, padded with (0, -0.0) where fewer are
    // selected (see core/cpu_ops.h).
    Tensor* indices = nullptr;
    Tensor* values = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({k_}), &indices));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({k_}), &values));
    cpu::topk_ef(x.flat<float>().data(), residual->flat<float>().data(), n, k_, approx_,
                 indices->flat<int32_t>().data(), values->flat<float>().data(), cpu_threads(ctx));
  }

 private:
  int64_t k_ = 0;
  bool approx_ = false;
};

class RandomkOp : public OpKernel {
 public:
  explicit RandomkOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("k", &k_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& seed = ctx->input(1);
    OP_REQUIRES_OK(ctx, check_size(x, "x"));
    OP_REQUIRES_OK(ctx, check_scalar(seed, "seed"));
    const int64_t n = x.NumElements();
    OP_REQUIRES_OK(ctx, check_k(k_, n));
    Tensor* indices = nullptr;
    Tensor* values = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({k_}), &indices));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({k_}), &values));
    cpu::randomk(x.data(), to_dtype(x.dtype()), n, k_, static_cast<uint64_t>(seed.scalar<int64_t>()()),
                 indices->flat<int32_t>().data(), values->data(), cpu_threads(ctx));
  }

 private:
  int64_t k_ = 0;
};

class ScatterAddOp : public OpKernel {
 public:
  explicit ScatterAddOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("poison", &poison_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& indices = ctx->input(0);
    const Tensor& values = ctx->input(1);
    OP_REQUIRES_OK(ctx, check_size(indices, "indices"));
    OP_REQUIRES_OK(ctx, check_size(ctx->input(2), "out"));
    OP_REQUIRES_OK(ctx, check_numel(values, indices.NumElements(), "values", "one per index"));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, output_from_input(ctx, 2, 0, &out));
    const bool ok = cpu::scatter_add(indices.flat<int32_t>().data(), values.flat<float>().data(),
                                     indices.NumElements(), out->flat<float>().data(), out->NumElements(),
                                     poison_, cpu_threads(ctx));
    // With poison a bad index only sets out[0] to NaN (done by the kernel).
    OP_REQUIRES(ctx, ok || poison_,
                absl::InvalidArgumentError(absl::StrCat("hvdkit: indices must lie in [0, ", out->NumElements(),
                                                        ") (the size of out); some do not")));
  }

 private:
  bool poison_ = false;
};

using ::tensorflow::DEVICE_CPU;
REGISTER_KERNEL_BUILDER(Name("HvdkitTopkEf").Device(DEVICE_CPU), TopkEfOp);
REGISTER_KERNEL_BUILDER(Name("HvdkitRandomk").Device(DEVICE_CPU), RandomkOp);
REGISTER_KERNEL_BUILDER(Name("HvdkitScatterAdd").Device(DEVICE_CPU), ScatterAddOp);

}  // namespace
}  // namespace hvdkit::tf
