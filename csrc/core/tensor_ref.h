// A framework-neutral view of one contiguous tensor: what the multi-tensor
// engines (pack/unpack) walk. Bindings build these from their own tensors.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace hvdkit {

struct TensorRef {
  void* data;      // first element; contiguous
  int64_t numel;   // number of elements
  DType dtype;     // element type
};

}  // namespace hvdkit
