// fastlm._C: the compiled core. Only csrc/bindings/ includes pybind11.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cpu/amx.h"
#include "cpu/dispatch.h"

#ifndef FASTLM_VERSION
#define FASTLM_VERSION "0.0.0"
#endif
#ifndef FASTLM_COMPILER
#define FASTLM_COMPILER "unknown"
#endif

namespace py = pybind11;

namespace fastlm {
namespace bindings {
void bind_ops(py::module_& m);
void bind_model(py::module_& m);
void bind_sampling(py::module_& m);  // sampling.cpp: Sampler, DecodeLoop
void bind_device(py::module_& m);  // device_runtime.cpp: DeviceArray, the GPU's state (or a stub)
}
}  // namespace fastlm

PYBIND11_MODULE(_C, m) {
  using namespace fastlm;
  m.doc() = "fastlm compiled core: CPU kernels (generic/AVX2/AVX-512/AVX512-BF16) and models";
  // Choose the table now so a bad FASTLM_CPU_ISA fails the import with a clear message.
  cpu::kernels();

  m.def("cpu_isa", [] { return std::string(cpu::kernels().name); });
  m.def("available_cpu_isas", &cpu::available_isas);
  m.def("_set_cpu_isa", &cpu::set_isa, py::arg("name"));
  m.def("cpu_amx", &cpu::amx_enabled);
  m.def("cpu_amx_available", &cpu::amx_available);
  m.def("_set_cpu_amx", &cpu::set_amx, py::arg("on"));
  m.def("get_num_threads", &cpu::num_threads);
  m.attr("MAX_THREADS") = cpu::kMaxThreads;
  m.def("set_num_threads", &cpu::set_num_threads, py::arg("n"));
  m.def("build_info", [] {
    py::dict d;
    d["version"] = FASTLM_VERSION;
    d["compiler"] = FASTLM_COMPILER;
    d["cpu_isas"] = std::vector<std::string>{"generic", "avx2", "avx512", "avx512bf16"};
    d["cuda"] = false;
    d["openmp"] = true;
    return d;
  });
  bindings::bind_ops(m);
  bindings::bind_model(m);
  bindings::bind_sampling(m);
  bindings::bind_device(m);
}
