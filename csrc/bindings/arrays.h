// Argument checks for arrays that come from Python. Each check raises
// TypeError or ValueError naming the op and the argument, so a bad call never
// reaches a kernel.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fastlm {
namespace bindings {

namespace py = pybind11;

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s);
Shape shape_of(const py::array& a);
int64_t numel(const Shape& s);

// A C-contiguous float32 ndarray (writable when asked), of rank ndim when ndim >= 0.
// An input whose data is not 4-byte aligned comes back as an aligned copy (keep
// the returned array alive while its data is used); a writable one is refused.
py::array float_array(py::handle obj, const char* op, const char* name, int ndim = -1,
                      bool writable = false);
// An integer ndarray (int32 or int64), C-contiguous, returned as int64 values.
std::vector<int64_t> index_array(py::handle obj, const char* op, const char* name, int ndim);

// An int32 or int64 ndarray (int64 only when int64_only), C-contiguous, kept
// as it is; an array not aligned to its element size comes back as a copy.
py::array int_array(py::handle obj, const char* op, const char* name, int ndim,
                    bool int64_only = false);

void require_shape(const py::array& a, const Shape& want, const char* op, const char* name);
[[noreturn]] void value_error(const char* op, const std::string& what);

inline const float* cptr(const py::array& a) { return static_cast<const float*>(a.data()); }
inline float* mptr(py::array& a) { return static_cast<float*>(a.mutable_data()); }
py::array_t<float> new_array(const Shape& shape, bool zeroed = false);

}  // namespace bindings
}  // namespace fastlm
