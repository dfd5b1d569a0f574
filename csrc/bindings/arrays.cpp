#include "bindings/arrays.h"

#include <cstdint>
#include <cstring>

namespace fastlm {
namespace bindings {

std::string shape_str(const Shape& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) {
    out += std::to_string(s[i]);
    if (i + 1 < s.size() || s.size() == 1) out += ",";
    if (i + 1 < s.size()) out += " ";
  }
  return out + ")";
}

Shape shape_of(const py::array& a) { return Shape(a.shape(), a.shape() + a.ndim()); }

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

[[noreturn]] void value_error(const char* op, const std::string& what) {
  throw py::value_error(std::string(op) + ": " + what);
}

static py::array ndarray(py::handle obj, const char* op, const char* name) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(op) + ": " + name + " must be a numpy.ndarray, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  return py::reinterpret_borrow<py::array>(obj);
}

static void check_layout(const py::array& a, const char* op, const char* name, int ndim,
                         bool writable) {
  if (ndim >= 0 && a.ndim() != ndim)
    value_error(op, std::string(name) + " must be " + std::to_string(ndim) + "-D, got shape " +
                        shape_str(shape_of(a)));
  if (!(a.flags() & py::array::c_style))
    value_error(op, std::string(name) + " must be C-contiguous (use numpy.ascontiguousarray)");
  if (writable && !a.writeable()) value_error(op, std::string(name) + " must be writable");
}

static bool misaligned(const py::array& a, size_t align) {
  return a.size() > 0 && reinterpret_cast<uintptr_t>(a.data()) % align != 0;
}

py::array float_array(py::handle obj, const char* op, const char* name, int ndim, bool writable) {
  py::array a = ndarray(obj, op, name);
  if (!a.dtype().is(py::dtype::of<float>()) && !a.dtype().equal(py::dtype::of<float>()))
    throw py::type_error(std::string(op) + ": " + name + " must have dtype float32, got " +
                         std::string(py::str(a.dtype())));
  check_layout(a, op, name, ndim, writable);
  // A float at an address that is not a multiple of 4 (np.frombuffer at an
  // odd offset) is undefined behaviour to load: inputs are copied to aligned
  // memory; an output written in place cannot be, so it is refused.
  if (misaligned(a, alignof(float))) {
    if (writable)
      value_error(op, std::string(name) + " must be aligned to 4 bytes (its data starts at an "
                                          "address that is not a multiple of 4); pass a copy, "
                                          "numpy.array(" + name + ")");
    py::array_t<float> copy = new_array(shape_of(a));
    std::memcpy(copy.mutable_data(), a.data(), a.size() * sizeof(float));
    return std::move(copy);
  }
  return a;
}

std::vector<int64_t> index_array(py::handle obj, const char* op, const char* name, int ndim) {
  py::array a = ndarray(obj, op, name);
  const bool i32 = a.dtype().equal(py::dtype::of<int32_t>());
  const bool i64 = a.dtype().equal(py::dtype::of<int64_t>());
  if (!i32 && !i64)
    throw py::type_error(std::string(op) + ": " + name + " must have dtype int32 or int64, got " +
                         std::string(py::str(a.dtype())));
  check_layout(a, op, name, ndim, false);
  const int64_t n = a.size();
  std::vector<int64_t> out(n);
  if (i64) {
    if (n) std::memcpy(out.data(), a.data(), n * sizeof(int64_t));
  } else {
    // memcpy per value: the array may start at an address not aligned to 4.
    const char* p = static_cast<const char*>(a.data());
    for (int64_t i = 0; i < n; ++i) {
      int32_t v;
      std::memcpy(&v, p + i * sizeof(int32_t), sizeof(v));
      out[i] = v;
    }
  }
  return out;
}

py::array int_array(py::handle obj, const char* op, const char* name, int ndim, bool int64_only) {
  py::array a = ndarray(obj, op, name);
  const bool i32 = a.dtype().equal(py::dtype::of<int32_t>());
  const bool i64 = a.dtype().equal(py::dtype::of<int64_t>());
  if (!i64 && (int64_only || !i32))
    throw py::type_error(std::string(op) + ": " + name + " must have dtype " +
                         (int64_only ? "int64" : "int32 or int64") + ", got " +
                         std::string(py::str(a.dtype())));
  check_layout(a, op, name, ndim, false);
  if (misaligned(a, a.itemsize())) {
    py::array copy(a.dtype(), std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()));
    std::memcpy(copy.mutable_data(), a.data(), a.nbytes());
    return copy;
  }
  return a;
}

void require_shape(const py::array& a, const Shape& want, const char* op, const char* name) {
  const Shape got = shape_of(a);
  if (got != want)
    value_error(op, std::string(name) + " must have shape " + shape_str(want) + ", got " +
                        shape_str(got));
}

py::array_t<float> new_array(const Shape& shape, bool zeroed) {
  std::vector<py::ssize_t> s(shape.begin(), shape.end());
  py::array_t<float> a(s);
  if (zeroed && a.size()) std::memset(a.mutable_data(), 0, a.size() * sizeof(float));
  return a;
}

}  // namespace bindings
}  // namespace fastlm
