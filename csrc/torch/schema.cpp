// The operator schemas, declared once for every backend (cpu_ops.cpp and
// cuda_ops.cpp register the implementations). Python wrappers with argument
// checks and documentation live in hvdkit/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(hvdkit, m) {
  m.def("pack(Tensor[] tensors, Tensor(a!) flat, float scale) -> Tensor nonfinite");
  m.def("unpack(Tensor flat, Tensor(a!)[] tensors, float scale, bool accumulate) -> ()");
  m.def("quantize_int8(Tensor x, int block, bool stochastic, int seed) -> (Tensor q, Tensor scales)");
  m.def("dequantize_int8(Tensor q, Tensor scales, int block, Tensor(a!) out, bool accumulate) -> ()");
  m.def("sign_ef(Tensor x, Tensor(a!) residual, int block) -> (Tensor bits, Tensor scales)");
  m.def("sign_decode(Tensor bits, Tensor scales, int n, int block, Tensor(a!) out, bool accumulate) -> ()");
  m.def("topk_ef(Tensor x, Tensor(a!) residual, int k, bool approx) -> (Tensor indices, Tensor values)");
  m.def("randomk(Tensor x, int k, int seed) -> (Tensor indices, Tensor values)");
  m.def("scatter_add(Tensor indices, Tensor values, Tensor(a!) out, bool poison=False) -> Tensor bad");
}
