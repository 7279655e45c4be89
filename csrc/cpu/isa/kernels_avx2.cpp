// The CPU inner loops compiled for AVX2 + F16C (x86-64-v3). Only this file is
// compiled for that instruction set; dispatch.cpp calls it only on CPUs that
// have it, so the installed library still runs on any x86-64.
//
// Every header is included before the target pragma, so inline library code is
// compiled for the baseline and shared safely; the vector interface and the
// generic kernels are then included textually, inside a namespace of their own.
#if defined(__x86_64__)

#include <immintrin.h>
#include <cstdint>

#include "core/dtype.h"
#include "core/counter_hash.h"
#include "core/float_bits.h"
#include "cpu/isa/kernel_table.h"

#pragma GCC target("avx2,fma,f16c,bmi,bmi2,popcnt")

namespace hvdkit::cpu::avx2 {

#include "cpu/isa/simd_scalar.inc"
#include "cpu/isa/simd_avx2.inc"

using S = Avx2Simd;

#include "cpu/isa/kernels_generic.inc"

}  // namespace hvdkit::cpu::avx2

namespace hvdkit::cpu {
const KernelTable kAvx2Kernels = avx2::make_table("avx2");
}  // namespace hvdkit::cpu

#endif  // defined(__x86_64__)
