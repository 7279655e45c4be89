// Run-time choice of instruction set: the installed library is built for the
// baseline and picks AVX2 or AVX-512 loops on CPUs that have them (images are
// built on one machine and run on others, so no -march=native).
#include "cpu/dispatch.h"

#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/cpu_ops.h"

namespace hvdkit::cpu {
namespace {

#if defined(__x86_64__)
bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2") &&
         __builtin_cpu_supports("popcnt");
}

bool cpu_has_avx512() {
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#endif

// Best first.
const std::vector<const KernelTable*>& available_tables() {
  static const std::vector<const KernelTable*> tables = [] {
    std::vector<const KernelTable*> found;
#if defined(__x86_64__)
    if (cpu_has_avx512()) found.push_back(&kAvx512Kernels);
    if (cpu_has_avx2()) found.push_back(&kAvx2Kernels);
#endif
    found.push_back(&kScalarKernels);
    return found;
  }();
  return tables;
}

const KernelTable* find_table(const std::string& name) {
  for (const KernelTable* table : available_tables()) {
    if (name == table->name) return table;
  }
  return nullptr;
}

const KernelTable* initial_table() {
  const char* requested = std::getenv("HVDKIT_CPU_ISA");
  if (requested != nullptr) {
    if (const KernelTable* table = find_table(requested)) return table;
  }
  return available_tables().front();
}

std::atomic<const KernelTable*>& active_table() {
  static std::atomic<const KernelTable*> table{initial_table()};
  return table;
}

}  // namespace

const KernelTable& active_kernels() { return *active_table().load(std::memory_order_relaxed); }

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (const KernelTable* table : available_tables()) names.emplace_back(table->name);
  return names;
}

std::string active_isa() { return active_kernels().name; }

bool set_active_isa(const std::string& name) {
  const KernelTable* table = find_table(name);
  if (table == nullptr) return false;
  active_table().store(table, std::memory_order_relaxed);
  return true;
}

}  // namespace hvdkit::cpu
