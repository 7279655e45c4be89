// Reports and switches the CPU instruction set of this library's copy of the
// kernels (tests and benchmarks). The torch extension has its own copy and its
// own setting: the two libraries share source, not state.
#include <string>
#include <vector>

#include "core/cpu_ops.h"
#include "kernel_utils.h"

namespace hvdkit::tf {
namespace {

using ::tensorflow::tstring;

class CpuIsasOp : public OpKernel {
 public:
  explicit CpuIsasOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const std::vector<std::string> names = cpu::available_isas();
    Tensor* available = nullptr;
    Tensor* active = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({static_cast<int64_t>(names.size())}), &available));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &active));
    for (size_t i = 0; i < names.size(); ++i) available->flat<tstring>()(i) = names[i];
    active->scalar<tstring>()() = cpu::active_isa();
  }
};

class SetCpuIsaOp : public OpKernel {
 public:
  explicit SetCpuIsaOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& isa = ctx->input(0);
    OP_REQUIRES_OK(ctx, check_scalar(isa, "isa"));
    const std::string requested(isa.scalar<tstring>()());
    const std::string previous = cpu::active_isa();
    OP_REQUIRES(ctx, cpu::set_active_isa(requested),
                absl::InvalidArgumentError(absl::StrCat("hvdkit: isa must be an available CPU instruction set, got '",
                                                        requested, "'")));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    out->scalar<tstring>()() = previous;
  }
};

REGISTER_KERNEL_BUILDER(Name("HvdkitCpuIsas").Device(::tensorflow::DEVICE_CPU), CpuIsasOp);
REGISTER_KERNEL_BUILDER(Name("HvdkitSetCpuIsa").Device(::tensorflow::DEVICE_CPU), SetCpuIsaOp);

}  // namespace
}  // namespace hvdkit::tf
