// Which instruction set's inner loops the CPU kernels use.
#pragma once

#include "cpu/isa/kernel_table.h"

namespace hvdkit::cpu {

// The table in use: the best this CPU runs unless HVDKIT_CPU_ISA names another
// available one, or set_active_isa() switched it.
const KernelTable& active_kernels();

}  // namespace hvdkit::cpu
