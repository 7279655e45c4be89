// The portable build of the CPU inner loops: plain C++ that the compiler may
// vectorise for the baseline instruction set (SSE2 on x86-64, NEON on arm64).
//
// Every header is included before the target pragma, so inline library code is
// compiled for the baseline and shared safely; the vector interface and the
// generic kernels are then included textually, inside a namespace of their own.
#include <cstdint>

#include "core/dtype.h"
#include "core/counter_hash.h"
#include "core/float_bits.h"
#include "cpu/isa/kernel_table.h"

namespace hvdkit::cpu::scalar {

#include "cpu/isa/simd_scalar.inc"

using S = ScalarSimd;

#include "cpu/isa/kernels_generic.inc"

}  // namespace hvdkit::cpu::scalar

namespace hvdkit::cpu {
const KernelTable kScalarKernels = scalar::make_table("scalar");
}  // namespace hvdkit::cpu
