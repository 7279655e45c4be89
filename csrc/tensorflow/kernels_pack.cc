// CPU kernels of HvdkitPack / HvdkitUnpack: build TensorRefs from the
// TensorFlow tensors and call the multi-tensor core (core/cpu_ops.h), the same
// functions the torch binding calls.
#include <cmath>
#include <vector>

#include "core/cpu_ops.h"
#include "kernel_utils.h"

namespace hvdkit::tf {
namespace {

// The float32 scalar input `scale` (input `index`, after the tensor list);
// a tensor scale is only known here, so finiteness is checked here too.
absl::Status read_scale(OpKernelContext* ctx, int index, float* scale) {
  const Tensor& t = ctx->input(index);
  TF_RETURN_IF_ERROR(check_scalar(t, "scale"));
  *scale = t.scalar<float>()();
  if (!std::isfinite(*scale)) {
    return absl::InvalidArgumentError(absl::StrCat("hvdkit: scale must be finite, got ", *scale));
  }
  return absl::OkStatus();
}

int64_t total_numel(const std::vector<TensorRef>& refs) {
  int64_t total = 0;
  for (const TensorRef& r : refs) total += r.numel;
  return total;
}

class PackOp : public OpKernel {
 public:
  explicit PackOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const int count = ctx->num_inputs() - 1;
    std::vector<TensorRef> refs;
    refs.reserve(count);
    for (int i = 0; i < count; ++i) {
      const Tensor& t = ctx->input(i);
      refs.push_back({const_cast<void*>(t.data()), t.NumElements(), to_dtype(t.dtype())});
    }
    float scale = 1.0f;
    OP_REQUIRES_OK(ctx, read_scale(ctx, count, &scale));
    const int64_t total = total_numel(refs);
    OP_REQUIRES(ctx, total <= kMaxElements,
                absl::InvalidArgumentError(absl::StrCat("hvdkit: tensors hold ", total,
                                                        " elements; at most 2^31 - 1 are supported")));
    Tensor* flat = nullptr;
    Tensor* nonfinite = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({total}), &flat));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &nonfinite));
    bool flag = false;
    if (total > 0) {
      flag = cpu::pack(refs.data(), count, flat->data(), to_dtype(flat->dtype()), scale, cpu_threads(ctx));
    }
    nonfinite->scalar<bool>()() = flag;
  }
};

class UnpackOp : public OpKernel {
 public:
  explicit UnpackOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("accumulate", &accumulate_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& flat = ctx->input(0);
    const int count = ctx->num_inputs() - 2;
    float scale = 1.0f;
    OP_REQUIRES_OK(ctx, read_scale(ctx, count + 1, &scale));
    std::vector<TensorRef> refs;
    refs.reserve(count);
    for (int i = 0; i < count; ++i) {
      const Tensor& like = ctx->input(1 + i);
      Tensor* out = nullptr;
      if (accumulate_) {
        OP_REQUIRES_OK(ctx, output_from_input(ctx, 1 + i, i, &out));
      } else {
        OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({1 + i}, i, like.shape(), &out));
      }
      refs.push_back({out->data(), out->NumElements(), to_dtype(out->dtype())});
    }
    const int64_t total = total_numel(refs);
    OP_REQUIRES(ctx, flat.NumElements() == total,
                absl::InvalidArgumentError(absl::StrCat("hvdkit: flat has ", flat.NumElements(),
                                                        " elements, tensors need ", total)));
    if (total > 0) {
      cpu::unpack(flat.data(), to_dtype(flat.dtype()), refs.data(), count, scale, accumulate_,
                  cpu_threads(ctx));
    }
  }

 private:
  bool accumulate_ = false;
};

REGISTER_KERNEL_BUILDER(Name("HvdkitPack").Device(::tensorflow::DEVICE_CPU), PackOp);
REGISTER_KERNEL_BUILDER(Name("HvdkitUnpack").Device(::tensorflow::DEVICE_CPU), UnpackOp);

}  // namespace
}  // namespace hvdkit::tf
