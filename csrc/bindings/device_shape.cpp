// DeviceArray's shape logic: parsing a shape and resolving a reshape. Plain
// pybind11, compiled in every build (with CUDA or not), so that CPU-only
// builds test it through _C._device_shape.
#include "bindings/device_shape.h"

#include <cstdint>
#include <string>

namespace fastlm {
namespace bindings {

namespace {

std::string type_name_of(py::handle obj) {
  return py::str(py::type::handle_of(obj).attr("__name__")).cast<std::string>();
}

}  // namespace

Shape shape_from(py::handle obj, int64_t reshape_size) {
  auto is_int = [](py::handle d) {
    return PyIndex_Check(d.ptr()) && !py::isinstance<py::bool_>(d) &&
           !py::isinstance(d, py::module_::import("numpy").attr("bool_"));
  };
  const bool reshape = reshape_size >= 0;
  auto dim = [&](py::handle d) -> int64_t {
    if (!is_int(d)) throw py::type_error("DeviceArray shape must hold ints, got " + type_name_of(d));
    const py::int_ i = py::reinterpret_steal<py::int_>(PyNumber_Index(d.ptr()));
    if (!i) throw py::error_already_set();
    const long long v = PyLong_AsLongLong(i.ptr());
    if (v == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      throw py::value_error("DeviceArray shape: dimension " + py::str(i).cast<std::string>() +
                            " does not fit int64");
    }
    if (v < 0 && !(reshape && v == -1))
      throw py::value_error(std::string("DeviceArray shape: dimensions must be >= 0") +
                            (reshape ? " (or one -1)" : "") + ", got " + std::to_string(v));
    return v;
  };
  Shape s;
  if (is_int(obj)) {
    s.push_back(dim(obj));
  } else if (py::isinstance<py::iterable>(obj) && !py::isinstance<py::str>(obj) &&
             !py::isinstance<py::bytes>(obj)) {
    for (py::handle d : obj) s.push_back(dim(d));
  } else {
    throw py::type_error("DeviceArray shape must be an int or a tuple of ints, got " + type_name_of(obj));
  }
  int64_t infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != -1) continue;
    if (infer >= 0) throw py::value_error("DeviceArray.reshape: can only specify one unknown dimension (-1)");
    infer = (int64_t)i;
  }
  int64_t n = 8;  // bytes of the widest element
  for (int64_t d : s) {
    if (d == -1) continue;
    if (d != 0 && n > INT64_MAX / d) throw py::value_error("DeviceArray shape: too many elements");
    n *= d;
  }
  if (!reshape) return s;
  const int64_t known = n / 8;
  auto refuse = [&] {
    std::string want = "(";
    for (size_t i = 0; i < s.size(); ++i)
      want += (i ? ", " : "") + std::to_string(s[i]);
    want += s.size() == 1 ? ",)" : ")";
    throw py::value_error("DeviceArray.reshape: cannot reshape an array of size " +
                          std::to_string(reshape_size) + " into shape " + want);
  };
  if (infer >= 0) {
    // As numpy: -1 next to a 0 dimension is ambiguous, so refused.
    if (known == 0 || reshape_size % known != 0) refuse();
    s[infer] = reshape_size / known;
  } else if (known != reshape_size) {
    refuse();
  }
  return s;
}

void bind_device_shape(py::module_& m) {
  m.def("_device_shape",
        [](py::handle shape, int64_t size) {
          const Shape s = shape_from(shape, size < 0 ? -1 : size);
          py::tuple t(s.size());
          for (size_t i = 0; i < s.size(); ++i) t[i] = s[i];
          return t;
        },
        py::arg("shape"), py::arg("size") = -1);
}

}  // namespace bindings
}  // namespace fastlm
