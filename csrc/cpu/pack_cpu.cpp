// Fused pack / unpack: one pass over many tensors with scale and cast, via the
// multi-tensor engine and the per-ISA convert loop.
#include "core/cpu_ops.h"
#include "cpu/dispatch.h"
#include "cpu/multi_tensor.h"

namespace hvdkit::cpu {
namespace {

const char* at(const void* base, int64_t element, DType dtype) {
  return static_cast<const char*>(base) + element * element_size(dtype);
}

char* at(void* base, int64_t element, DType dtype) {
  return static_cast<char*>(base) + element * element_size(dtype);
}

}  // namespace

bool pack(const TensorRef* tensors, int64_t count, void* flat, DType flat_dtype, float scale,
          int threads) {
  const KernelTable& kernels = active_kernels();
  return for_each_segment(tensors, count, threads,
                          [&](int64_t i, int64_t first, int64_t len, int64_t flat_offset) {
                            const TensorRef& t = tensors[i];
                            return kernels.convert(at(t.data, first, t.dtype), t.dtype,
                                                   at(flat, flat_offset, flat_dtype), flat_dtype,
                                                   len, scale, false);
                          });
}

void unpack(const void* flat, DType flat_dtype, const TensorRef* tensors, int64_t count,
            float scale, bool accumulate, int threads) {
  const KernelTable& kernels = active_kernels();
  for_each_segment(tensors, count, threads,
                   [&](int64_t i, int64_t first, int64_t len, int64_t flat_offset) {
                     const TensorRef& t = tensors[i];
                     return kernels.convert(at(flat, flat_offset, flat_dtype), flat_dtype,
                                            at(t.data, first, t.dtype), t.dtype, len, scale,
                                            accumulate);
                   });
}

}  // namespace hvdkit::cpu
