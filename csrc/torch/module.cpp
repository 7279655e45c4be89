// The Python module hvdkit._C. Importing it registers the operators
// (torch.ops.hvdkit.*); the functions here only report how it was built and
// let tests and benchmarks choose the CPU instruction set.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "core/cpu_ops.h"

namespace {

bool built_with_cuda() {
#if defined(HVDKIT_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "hvdkit C++/CUDA kernels; the operators are torch.ops.hvdkit.*";
  m.def("built_with_cuda", &built_with_cuda, "Whether the CUDA kernels were compiled in.");
  m.def("cpu_isas", &hvdkit::cpu::available_isas,
        "CPU instruction sets built in and supported here, best first.");
  m.def("cpu_isa", &hvdkit::cpu::active_isa, "The CPU instruction set in use.");
  m.def("set_cpu_isa", &hvdkit::cpu::set_active_isa, pybind11::arg("name"),
        "Switch the CPU instruction set; returns False if it is not available.");
}
