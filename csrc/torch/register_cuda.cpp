// CUDA implementations of the hvdkit operators (CUDA builds of torch only):
// check, allocate (scratch from torch's caching allocator), launch on the
// current stream of the tensors' device.
#if defined(HVDKIT_WITH_CUDA)

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "core/cuda_ops.h"
#include "tensor_checks.h"

namespace hvdkit::binding {
namespace {

cudaStream_t stream_of(const at::Device& device) { return c10::cuda::getCurrentCUDAStream(device.index()).stream(); }

at::Tensor pack(at::TensorList tensors, const at::Tensor& flat, double scale) {
  const at::Device device = flat.device();
  const c10::cuda::CUDAGuard guard(device);
  check_float(flat, "flat", device);
  const std::vector<TensorRef> refs = tensor_refs(tensors, "tensors", device);
  TORCH_CHECK(flat.numel() == total_numel(refs), "hvdkit: flat has ", flat.numel(), " elements, tensors hold ",
              total_numel(refs));
  at::Tensor nonfinite = at::zeros({}, flat.options().dtype(at::kBool));
  cuda::pack(refs.data(), static_cast<int64_t>(refs.size()), flat.data_ptr(), to_dtype(flat.scalar_type()),
             static_cast<float>(scale), nonfinite.data_ptr<bool>(), stream_of(device));
  return nonfinite;
}

void unpack(const at::Tensor& flat, at::TensorList tensors, double scale, bool accumulate) {
  const at::Device device = flat.device();
  const c10::cuda::CUDAGuard guard(device);
  check_float(flat, "flat", device);
  const std::vector<TensorRef> refs = tensor_refs(tensors, "tensors", device);
  TORCH_CHECK(flat.numel() == total_numel(refs), "hvdkit: flat has ", flat.numel(), " elements, tensors need ",
              total_numel(refs));
  cuda::unpack(flat.data_ptr(), to_dtype(flat.scalar_type()), refs.data(), static_cast<int64_t>(refs.size()),
               static_cast<float>(scale), accumulate, stream_of(device));
}

std::tuple<at::Tensor, at::Tensor> quantize_int8(const at::Tensor& x, int64_t block, bool stochastic, int64_t seed) {
  const at::Device device = x.device();
  const c10::cuda::CUDAGuard guard(device);
  check_typed(x, "x", device, at::kFloat);
  check_block(block, false);
  const int64_t n = x.numel();
  at::Tensor q = at::empty({n}, x.options().dtype(at::kChar));
  at::Tensor scales = at::empty({num_blocks(n, block)}, x.options());
  cuda::quantize_int8(x.data_ptr<float>(), n, block, stochastic, static_cast<uint64_t>(seed), q.data_ptr<int8_t>(),
                      scales.data_ptr<float>(), stream_of(device));
  return {q, scales};
}

void dequantize_int8(const at::Tensor& q, const at::Tensor& scales, int64_t block, const at::Tensor& out,
                     bool accumulate) {
  const at::Device device = q.device();
  const c10::cuda::CUDAGuard guard(device);
  check_typed(q, "q", device, at::kChar);
  check_typed(scales, "scales", device, at::kFloat);
  check_typed(out, "out", device, at::kFloat);
  check_block(block, false);
  TORCH_CHECK(out.numel() == q.numel(), "hvdkit: out has ", out.numel(), " elements, q has ", q.numel());
  TORCH_CHECK(scales.numel() == num_blocks(q.numel(), block), "hvdkit: scales has ", scales.numel(),
              " entries, expected ", num_blocks(q.numel(), block));
  cuda::dequantize_int8(q.data_ptr<int8_t>(), scales.data_ptr<float>(), q.numel(), block, out.data_ptr<float>(),
                        accumulate, stream_of(device));
}

std::tuple<at::Tensor, at::Tensor> sign_ef(const at::Tensor& x, const at::Tensor& residual, int64_t block) {
  const at::Device device = x.device();
  const c10::cuda::CUDAGuard guard(device);
  check_typed(x, "x", device, at::kFloat);
  check_typed(residual, "residual", device, at::kFloat);
  check_block(block, true);
  const int64_t n = x.numel();
  TORCH_CHECK(residual.numel() == n, "hvdkit: residual has ", residual.numel(), " elements, x has ", n);
  at::Tensor bits = at::empty({sign_bytes(n)}, x.options().dtype(at::kByte));
  at::Tensor scales = at::empty({num_blocks(n, block)}, x.options());
  cuda::sign_ef(x.data_ptr<float>(), residual.data_ptr<float>(), n, block, bits.data_ptr<uint8_t>(),
                scales.data_ptr<float>(), stream_of(device));
  return {bits, scales};
}

void sign_decode(const at::Tensor& bits, const at::Tensor& scales, int64_t n, int64_t block, const at::Tensor& out,
                 bool accumulate) {
  const at::Device device = bits.device();
  const c10::cuda::CUDAGuard guard(device);
  check_typed(bits, "bits", device, at::kByte);
  check_typed(scales, "scales", device, at::kFloat);
  check_typed(out, "out", device, at::kFloat);
  check_block(block, true);
  TORCH_CHECK(n >= 0 && out.numel() == n, "hvdkit: out has ", out.numel(), " elements, n is ", n);
  const int64_t ranks = payload_rows(bits, sign_bytes(n), "bits");
  TORCH_CHECK(payload_rows(scales, num_blocks(n, block), "scales") == ranks,
              "hvdkit: bits and scales must hold the same number of ranks");
  cuda::sign_decode(bits.data_ptr<uint8_t>(), scales.data_ptr<float>(), ranks, n, block, out.data_ptr<float>(),
                    accumulate, stream_of(device));
}

std::tuple<at::Tensor, at::Tensor> topk_ef(const at::Tensor& x, const at::Tensor& residual, int64_t k, bool approx) {
  const at::Device device = x.device();
  const c10::cuda::CUDAGuard guard(device);
  check_typed(x, "x", device, at::kFloat);
  check_typed(residual, "residual", device, at::kFloat);
  const int64_t n = x.numel();
  TORCH_CHECK(residual.numel() == n, "hvdkit: residual has ", residual.numel(), " elements, x has ", n);
  TORCH_CHECK(k >= 0 && k <= n, "hvdkit: k must be in [0, ", n, "], got ", k);
  // Both modes write exactly k pairs (padded with (0, -0.0) where fewer are
  // selected): the output size is known up front, nothing is read back.
  at::Tensor indices = at::empty({k}, x.options().dtype(at::kInt));
  at::Tensor values = at::empty({k}, x.options());
  at::Tensor workspace = at::empty({static_cast<int64_t>(cuda::topk_workspace_bytes())}, x.options().dtype(at::kByte));
  cuda::topk_ef(x.data_ptr<float>(), residual.data_ptr<float>(), n, k, approx, indices.data_ptr<int32_t>(),
                values.data_ptr<float>(), nullptr, workspace.data_ptr(), stream_of(device));
  return {indices, values};
}

std::tuple<at::Tensor, at::Tensor> randomk(const at::Tensor& x, int64_t k, int64_t seed) {
  const at::Device device = x.device();
  const c10::cuda::CUDAGuard guard(device);
  check_float(x, "x", device);
  const int64_t n = x.numel();
  TORCH_CHECK(k >= 0 && k <= n, "hvdkit: k must be in [0, ", n, "], got ", k);
  at::Tensor indices = at::empty({k}, x.options().dtype(at::kInt));
  at::Tensor values = at::empty({k}, x.options());
  cuda::randomk(x.data_ptr(), to_dtype(x.scalar_type()), n, k, static_cast<uint64_t>(seed),
                indices.data_ptr<int32_t>(), values.data_ptr(), stream_of(device));
  return {indices, values};
}

at::Tensor scatter_add(const at::Tensor& indices, const at::Tensor& values, const at::Tensor& out, bool poison) {
  const at::Device device = out.device();
  const c10::cuda::CUDAGuard guard(device);
  check_typed(indices, "indices", device, at::kInt);
  check_typed(values, "values", device, at::kFloat);
  check_typed(out, "out", device, at::kFloat);
  const int64_t count = indices.numel();
  TORCH_CHECK(count == values.numel(), "hvdkit: indices has ", count, " entries, values has ", values.numel());
  at::Tensor bad = at::empty({}, out.options().dtype(at::kInt));
  at::Tensor workspace = at::empty({static_cast<int64_t>(cuda::scatter_add_workspace_bytes(count, out.numel()))},
                                   out.options().dtype(at::kByte));
  cuda::scatter_add(indices.data_ptr<int32_t>(), values.data_ptr<float>(), count, out.data_ptr<float>(), out.numel(),
                    poison, bad.data_ptr<int32_t>(), workspace.data_ptr(), stream_of(device));
  return bad.to(at::kBool);
}

}  // namespace
}  // namespace hvdkit::binding

TORCH_LIBRARY_IMPL(hvdkit, CUDA, m) {
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

#endif  // defined(HVDKIT_WITH_CUDA)
