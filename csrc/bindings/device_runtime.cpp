// fastlm._C's device functions: DeviceArray (device_array.cpp, every build),
// whether a GPU is there and what it is, its memory use, synchronisation.
// Built without CUDA (FASTLM_WITH_CUDA unset), the stub: cuda_available() is
// False, and DeviceArrays exist only on the emulated device. Ops on device
// arrays are the ops of csrc/bindings/ops.cpp, which run any device's table.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bindings/device_array.h"
#include "bindings/device_shape.h"

#if defined(FASTLM_WITH_CUDA) && FASTLM_WITH_CUDA
#include "cuda/runtime.h"
#endif

#ifndef FASTLM_CUDA_ARCHS
#define FASTLM_CUDA_ARCHS ""
#endif

namespace fastlm {
namespace bindings {

namespace {

// build_info() as module.cpp defines it, plus what this file knows: whether
// CUDA is compiled in, and for which architectures (CMake's list).
void extend_build_info(py::module_& m, bool with_cuda) {
  py::object base = m.attr("build_info");
  m.attr("build_info") = py::cpp_function(
      [base, with_cuda]() {
        py::dict d = base();
        d["cuda"] = with_cuda;
        std::vector<std::string> archs;
        std::string s = FASTLM_CUDA_ARCHS;
        size_t start = 0;
        while (with_cuda && start < s.size()) {
          const size_t comma = s.find(',', start);
          const size_t end = comma == std::string::npos ? s.size() : comma;
          if (end > start) archs.push_back(s.substr(start, end - start));
          start = end + 1;
        }
        d["cuda_archs"] = archs;
        return d;
      },
      py::name("build_info"), py::doc("How this build was made (a dict)."));
}

}  // namespace

#if defined(FASTLM_WITH_CUDA) && FASTLM_WITH_CUDA

void bind_device(py::module_& m) {
  using py::arg;
  bind_device_array(m);
  m.def("cuda_available", &cuda::available);
  m.def("cuda_unavailable_reason", &cuda::unavailable_reason);
  m.def("cuda_device_name", [] { return cuda::device_name(); });
  m.def("cuda_memory_usage", [](bool reset_peak) {
    const cuda::MemoryUsage u = cuda::memory_usage(reset_peak);
    return py::make_tuple(u.now, u.peak);
  }, arg("reset_peak") = false,
        "(bytes held now, most bytes held since start or the last reset_peak=True) of GPU memory.");
  m.def("cuda_compute_capability", [] { return cuda::compute_capability(); });
  m.def("cuda_synchronize", [] {
    py::gil_scoped_release nogil;
    cuda::synchronize();
  });
  m.def("_cuda_wait_stream", [](uintptr_t s) {
    py::gil_scoped_release nogil;
    cuda::wait_stream(s);
  });
  bind_device_shape(m);
  extend_build_info(m, true);
}

#else  // no CUDA in this build

void bind_device(py::module_& m) {
  bind_device_array(m);
  m.def("cuda_available", [] { return false; });
  m.def("cuda_unavailable_reason", [] {
    return std::string("fastlm was built without CUDA (FASTLM_CUDA=OFF, or no nvcc when it was "
                       "built)");
  });
  bind_device_shape(m);
  extend_build_info(m, false);
}

#endif

}  // namespace bindings
}  // namespace fastlm
