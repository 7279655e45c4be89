// CPU implementations of the hvdkit operators: check, allocate, call the core
// with torch's intra-op thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "core/cpu_ops.h"
#include "tensor_checks.h"

namespace hvdkit::binding {
namespace {

const at::Device kCpu(at::kCPU);

int threads() { return at::get_num_threads(); }

at::Tensor pack(at::TensorList tensors, const at::Tensor& flat, double scale) {
  check_float(flat, "flat", kCpu);
  const std::vector<TensorRef> refs = tensor_refs(tensors, "tensors", kCpu);
  TORCH_CHECK(flat.numel() == total_numel(refs), "hvdkit: flat has ", flat.numel(), " elements, tensors hold ",
              total_numel(refs));
  const bool nonfinite = cpu::pack(refs.data(), static_cast<int64_t>(refs.size()), flat.data_ptr(),
                                   to_dtype(flat.scalar_type()), static_cast<float>(scale), threads());
  return at::scalar_tensor(nonfinite, at::TensorOptions().dtype(at::kBool));
}

void unpack(const at::Tensor& flat, at::TensorList tensors, double scale, bool accumulate) {
  check_float(flat, "flat", kCpu);
  const std::vector<TensorRef> refs = tensor_refs(tensors, "tensors", kCpu);
  TORCH_CHECK(flat.numel() == total_numel(refs), "hvdkit: flat has ", flat.numel(),
              " elements, tensors need ", total_numel(refs));
  cpu::unpack(flat.data_ptr(), to_dtype(flat.scalar_type()), refs.data(),
              static_cast<int64_t>(refs.size()), static_cast<float>(scale), accumulate, threads());
}

std::tuple<at::Tensor, at::Tensor> quantize_int8(const at::Tensor& x, int64_t block, bool stochastic,
                                                 int64_t seed) {
  check_typed(x, "x", kCpu, at::kFloat);
  check_block(block, false);
  const int64_t n = x.numel();
  at::Tensor q = at::empty({n}, at::TensorOptions().dtype(at::kChar));
  at::Tensor scales = at::empty({num_blocks(n, block)}, at::TensorOptions().dtype(at::kFloat));
  cpu::quantize_int8(x.data_ptr<float>(), n, block, stochastic, static_cast<uint64_t>(seed),
                     q.data_ptr<int8_t>(), scales.data_ptr<float>(), threads());
  return {q, scales};
}

void dequantize_int8(const at::Tensor& q, const at::Tensor& scales, int64_t block, const at::Tensor& out,
                     bool accumulate) {
  check_typed(q, "q", kCpu, at::kChar);
  check_typed(scales, "scales", kCpu, at::kFloat);
  check_typed(out, "out", kCpu, at::kFloat);
  check_block(block, false);
  TORCH_CHECK(out.numel() == q.numel(), "hvdkit: out has ", out.numel(), " elements, q has ", q.numel());
  TORCH_CHECK(scales.numel() == num_blocks(q.numel(), block), "hvdkit: scales has ", scales.numel(),
              " entries, expected ", num_blocks(q.numel(), block));
  cpu::dequantize_int8(q.data_ptr<int8_t>(), scales.data_ptr<float>(), q.numel(), block,
                       out.data_ptr<float>(), accumulate, threads());
}

std::tuple<at::Tensor, at::Tensor> sign_ef(const at::Tensor& x, const at::Tensor& residual, int64_t block) {
  check_typed(x, "x", kCpu, at::kFloat);
  check_typed(residual, "residual", kCpu, at::kFloat);
  check_block(block, true);
  const int64_t n = x.numel();
  TORCH_CHECK(residual.numel() == n, "hvdkit: residual has ", residual.numel(), " elements, x has ", n);
  at::Tensor bits = at::empty({sign_bytes(n)}, at::TensorOptions().dtype(at::kByte));
  at::Tensor scales = at::empty({num_blocks(n, block)}, at::TensorOptions().dtype(at::kFloat));
  cpu::sign_ef(x.data_ptr<float>(), residual.data_ptr<float>(), n, block, bits.data_ptr<uint8_t>(),
               scales.data_ptr<float>(), threads());
  return {bits, scales};
}

void sign_decode(const at::Tensor& bits, const at::Tensor& scales, int64_t n, int64_t block,
                 const at::Tensor& out, bool accumulate) {
  check_typed(bits, "bits", kCpu, at::kByte);
  check_typed(scales, "scales", kCpu, at::kFloat);
  check_typed(out, "out", kCpu, at::kFloat);
  check_block(block, true);
  TORCH_CHECK(n >= 0 && out.numel() == n, "hvdkit: out has ", out.numel(), " elements, n is ", n);
  const int64_t ranks = payload_rows(bits, sign_bytes(n), "bits");
  TORCH_CHECK(payload_rows(scales, num_blocks(n, block), "scales") == ranks,
              "hvdkit: bits and scales must hold the same number of ranks");
  cpu::sign_decode(bits.data_ptr<uint8_t>(), scales.data_ptr<float>(), ranks, n, block,
                   out.data_ptr<float>(), accumulate, threads());
}

std::tuple<at::Tensor, at::Tensor> topk_ef(const at::Tensor& x, const at::Tensor& residual, int64_t k,
                                           bool approx) {
  check_typed(x, "x", kCpu, at::kFloat);
  check_typed(residual, "residual", kCpu, at::kFloat);
  const int64_t n = x.numel();
  TORCH_CHECK(residual.numel() == n, "hvdkit: residual has ", residual.numel(), " elements, x has ", n);
  TORCH_CHECK(k >= 0 && k <= n, "hvdkit: k must be in [0, ", n, "], got ", k);
  at::Tensor indices = at::empty({k}, at::TensorOptions().dtype(at::kInt));
  at::Tensor values = at::empty({k}, at::TensorOptions().dtype(at::kFloat));
  // Exactly k pairs in both modes, padded with (0, -0.0) where fewer are selected.
  cpu::topk_ef(x.data_ptr<float>(), residual.data_ptr<float>(), n, k, approx, indices.data_ptr<int32_t>(),
               values.data_ptr<float>(), threads());
  return {indices, values};
}

std::tuple<at::Tensor, at::Tensor> randomk(const at::Tensor& x, int64_t k, int64_t seed) {
  check_float(x, "x", kCpu);
  const int64_t n = x.numel();
  TORCH_CHECK(k >= 0 && k <= n, "hvdkit: k must be in [0, ", n, "], got ", k);
  at::Tensor indices = at::empty({k}, at::TensorOptions().dtype(at::kInt));
  at::Tensor values = at::empty({k}, x.options());
  cpu::randomk(x.data_ptr(), to_dtype(x.scalar_type()), n, k, static_cast<uint64_t>(seed),
               indices.data_ptr<int32_t>(), values.data_ptr(), threads());
  return {indices, values};
}

at::Tensor scatter_add(const at::Tensor& indices, const at::Tensor& values, const at::Tensor& out, bool poison) {
  check_typed(indices, "indices", kCpu, at::kInt);
  check_typed(values, "values", kCpu, at::kFloat);
  check_typed(out, "out", kCpu, at::kFloat);
  TORCH_CHECK(indices.numel() == values.numel(), "hvdkit: indices has ", indices.numel(),
              " entries, values has ", values.numel());
  const bool ok = cpu::scatter_add(indices.data_ptr<int32_t>(), values.data_ptr<float>(), indices.numel(),
                                   out.data_ptr<float>(), out.numel(), poison, threads());
  return at::scalar_tensor(!ok, at::TensorOptions().dtype(at::kBool));
}

}  // namespace
}  // namespace hvdkit::binding

TORCH_LIBRARY_IMPL(hvdkit, CPU, m) {
  namespace b = hvdkit::binding;
  m.impl("pack", &b::pack);
  m.impl("unpack", &b::unpack);
  m.impl("quantize_int8", &b::quantize_int8);
  m.impl("dequantize_int8", &b::dequantize_int8);
  m.impl("sign_ef", &b::sign_ef);
  m.impl("sign_decode", &b::sign_decode);
  m.impl("topk_ef", &b::topk_ef);
  m.impl("randomk", &b::randomk);
  m.impl("scatter_add", &b::scatter_add);
}
