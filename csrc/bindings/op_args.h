// The arguments of one op call, NumPy or device arrays alike: each array is
// wrapped once as a Tensor {data, shape, dtype} on the call's one device and
// checked once (TypeError / ValueError naming the op and the argument); the
// call runs on the kernel table of that device (backend_for), and its outputs
// are made there (NumPy arrays on the host, DeviceArrays on a device).
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

#include "bindings/arrays.h"
#include "bindings/backend.h"
#include "bindings/device_array.h"
#include "kernels.h"

namespace fastlm {
namespace bindings {

struct Tensor {
  py::object keep;  // holds the data: the ndarray (or its aligned copy) or the DeviceArray
  void* data = nullptr;
  Shape shape;
  ElemType dtype = ElemType::kFloat32;

  int64_t size() const { return numel(shape); }
  size_t nbytes() const { return (size_t)size() * type_size(dtype); }
  const float* f() const { return static_cast<const float*>(data); }
  float* mf() const { return static_cast<float*>(data); }
};

class OpCall {
 public:
  // The call's array arguments by name (None: absent). Checks that they all
  // live on the host or all on one device (ValueError naming both groups),
  // and views foreign device arrays (PyTorch, CuPy: fastlm.cuda) as
  // DeviceArrays.
  OpCall(const char* op, std::initializer_list<std::pair<const char*, py::handle>> arrays);

  const char* op() const { return op_; }
  Device device() const { return device_; }
  // The float32 table of the call's device (RuntimeError without a usable GPU).
  const Kernels& kernels() const { return backend_for(op_, device_); }
  bool has(const char* name) const { return !arg(name).is_none(); }
  py::handle arg(const char* name) const;

  // A float32 array (bfloat16 too on a device when allow_bf16), of rank ndim
  // when ndim >= 0, writable when asked.
  Tensor floats(const char* name, int ndim = -1, bool writable = false,
                bool allow_bf16 = false) const;
  // An int32 or int64 array (int64 only when int64_only) of rank ndim.
  Tensor indices(const char* name, int ndim, bool int64_only = false) const;
  // A new array on the call's device, described by *t (float32 or bfloat16).
  py::object output(const Shape& shape, Tensor* t, bool zeroed = false,
                    ElemType dtype = ElemType::kFloat32) const;
  // Element i of the integer array t, read from the device (for messages).
  int64_t index_at(const Tensor& t, int64_t i) const;

 private:
  const char* op_;
  Device device_ = Device::kCpu;
  std::vector<std::pair<const char*, py::object>> args_;
};

void require_shape(const Tensor& t, const Shape& want, const char* op, const char* name);
void require_same_type(const Tensor& t, const Tensor& ref, const char* op, const char* name,
                       const char* ref_name);
// rows x cols view of x, whose last axis is the one reduced over.
void rows_cols(const Tensor& x, const char* op, const char* name, int64_t* rows, int64_t* cols);
// Whether two arrays' memory overlaps (C-contiguous arrays: their byte ranges).
bool overlaps(const Tensor& a, const Tensor& b);
// ValueError when an array written in place (its name in `written`) shares
// memory with another of `arrays` (null pointers: absent).
void check_no_overlap(const char* op, std::initializer_list<const char*> written,
                      std::initializer_list<std::pair<const char*, const Tensor*>> arrays);

}  // namespace bindings
}  // namespace fastlm
