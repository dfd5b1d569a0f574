// DeviceArray: memory of a device with a row-major (C-contiguous) shape and an
// element type, made in every build. On the GPU it is CUDA memory; on the
// emulated device (FASTLM_EMULATE_CUDA=1, csrc/bindings/backend.h) host
// memory from the emulated allocator, so ops on device arrays run (through
// the CPU kernels) without a GPU. Built without CUDA and without emulation,
// none can be made (RuntimeError).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>

#include "bindings/arrays.h"
#include "bindings/backend.h"

namespace fastlm {
namespace bindings {

enum class ElemType { kFloat32, kBFloat16, kInt32, kInt64 };

const char* type_name(ElemType t);
size_t type_size(ElemType t);

// Device memory owned by a DeviceArray (and the views reshape makes of it).
struct DeviceStorage {
  const Kernels* kernels;  // whose alloc made ptr, and whose release frees it
  void* ptr = nullptr;
  DeviceStorage(Device device, size_t bytes);
  ~DeviceStorage();
  DeviceStorage(const DeviceStorage&) = delete;
  DeviceStorage& operator=(const DeviceStorage&) = delete;
};

// Either owns its storage or borrows another object's (`owner` keeps it alive).
struct DeviceArray {
  std::shared_ptr<DeviceStorage> storage;
  py::object owner;
  void* data = nullptr;
  Shape shape;
  ElemType dtype = ElemType::kFloat32;
  Device device = Device::kCuda;  // kCuda or kEmulated
  bool readonly = false;

  int64_t size() const { return numel(shape); }
  size_t nbytes() const { return (size_t)size() * type_size(dtype); }
};

using DevPtr = std::shared_ptr<DeviceArray>;

// The device new arrays go to: the emulated one when FASTLM_EMULATE_CUDA=1,
// else the GPU (RuntimeError without a usable one, or without CUDA compiled in).
Device array_device();

// A new array of `shape` on `device` (zero-filled when asked).
DevPtr new_device(const Shape& shape, ElemType t, Device device, bool zeroed = false);

// A copy on the host (bfloat16 comes back as float32), the copy made without the GIL.
py::array to_numpy(const DeviceArray& a);

// The DeviceArray behind obj, or nullptr when obj is not one.
DeviceArray* as_device(py::handle obj);

// The class DeviceArray (with its _from_numpy and _borrow constructors).
void bind_device_array(py::module_& m);

}  // namespace bindings
}  // namespace fastlm
