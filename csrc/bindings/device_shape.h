// DeviceArray's shape logic, apart from the CUDA code so every build has it.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings/arrays.h"

namespace fastlm {
namespace bindings {

// A shape from an int or an iterable of ints (anything with __index__ but a
// bool), every dimension >= 0 and the byte count within int64: TypeError or
// ValueError otherwise. With reshape_size >= 0 the shape is a reshape target
// for that many elements, as numpy.reshape takes it: one dimension may be -1
// and is then inferred; a size mismatch is a ValueError.
Shape shape_from(py::handle obj, int64_t reshape_size = -1);

// _C._device_shape(shape, size=-1): shape_from for tests without a GPU.
void bind_device_shape(py::module_& m);

}  // namespace bindings
}  // namespace fastlm
