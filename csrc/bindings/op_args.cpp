#include "bindings/op_args.h"

#include <cstring>
#include <string>

namespace fastlm {
namespace bindings {

namespace {

enum class Place { kAbsent, kHost, kDevice };

Place place_of(py::handle obj) {
  if (obj.is_none()) return Place::kAbsent;
  if (py::isinstance<py::array>(obj)) return Place::kHost;
  if (as_device(obj)) return Place::kDevice;
  // CuPy arrays, PyTorch CUDA tensors, anything exporting __cuda_array_interface__.
  return py::module_::import("fastlm.cuda").attr("is_device_array")(obj).cast<bool>()
             ? Place::kDevice
             : Place::kHost;
}

std::string names(const std::vector<const char*>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::string(v[i]);
  return s;
}

const char* device_label(Device d) {
  return d == Device::kEmulated ? "the emulated CUDA device" : "the GPU";
}

}  // namespace

OpCall::OpCall(const char* op,
               std::initializer_list<std::pair<const char*, py::handle>> arrays)
    : op_(op) {
  std::vector<const char*> on_device, on_host;
  for (const auto& a : arrays) {
    const Place p = place_of(a.second);
    if (p == Place::kDevice) on_device.push_back(a.first);
    if (p == Place::kHost) on_host.push_back(a.first);
    args_.emplace_back(a.first, py::reinterpret_borrow<py::object>(a.second));
  }
  if (on_device.empty()) return;
  if (!on_host.empty())
    value_error(op, names(on_device) + (on_device.size() == 1 ? " is" : " are") +
                        " on the GPU but " + names(on_host) +
                        (on_host.size() == 1 ? " is" : " are") +
                        " on the host; move all arrays of one call to the same place "
                        "(fastlm.to_device or .numpy())");
  const char* first = nullptr;
  for (auto& a : args_) {
    if (a.second.is_none()) continue;
    if (!as_device(a.second))
      a.second = py::module_::import("fastlm.cuda").attr("as_device_array")(a.second, op, a.first);
    const Device d = as_device(a.second)->device;
    if (!first) {
      first = a.first;
      device_ = d;
    } else if (d != device_) {
      value_error(op, std::string(first) + " is on " + device_label(device_) + " but " + a.first +
                          " on " + device_label(d) + "; pass arrays of one device");
    }
  }
}

py::handle OpCall::arg(const char* name) const {
  for (const auto& a : args_)
    if (std::strcmp(a.first, name) == 0) return a.second;
  throw std::logic_error(std::string(op_) + ": no argument " + name);
}

static void check_rank(const Shape& s, const char* op, const char* name, int ndim) {
  if (ndim >= 0 && (int)s.size() != ndim)
    value_error(op, std::string(name) + " must be " + std::to_string(ndim) + "-D, got shape " +
                        shape_str(s));
}

static Tensor tensor(py::object keep, void* data, Shape shape, ElemType dtype) {
  Tensor t;
  t.keep = std::move(keep);
  t.data = data;
  t.shape = std::move(shape);
  t.dtype = dtype;
  return t;
}

// A checked ndarray (or its aligned copy) as a Tensor.
static Tensor host_tensor(py::array a, ElemType dtype) {
  void* data = const_cast<void*>(a.data());
  Shape shape = shape_of(a);
  return tensor(std::move(a), data, std::move(shape), dtype);
}

static Tensor device_tensor(py::handle obj, const DeviceArray& a) {
  return tensor(py::reinterpret_borrow<py::object>(obj), a.data, a.shape, a.dtype);
}

Tensor OpCall::floats(const char* name, int ndim, bool writable, bool allow_bf16) const {
  py::handle obj = arg(name);
  if (device_ == Device::kCpu)
    return host_tensor(float_array(obj, op_, name, ndim, writable), ElemType::kFloat32);
  const DeviceArray& a = *as_device(obj);
  if (a.dtype != ElemType::kFloat32 && !(allow_bf16 && a.dtype == ElemType::kBFloat16))
    throw py::type_error(std::string(op_) + ": " + name + " must have dtype float32" +
                         (allow_bf16 ? " or bfloat16" : "") + ", got " + type_name(a.dtype));
  if (a.dtype == ElemType::kBFloat16 && device_ == Device::kEmulated)
    throw py::type_error(std::string(op_) + ": " + name + " is bfloat16, which the emulated CUDA "
                         "device does not compute (it runs the CPU's float32 kernels)");
  check_rank(a.shape, op_, name, ndim);
  if (writable && a.readonly) value_error(op_, std::string(name) + " must be writable");
  return device_tensor(obj, a);
}

Tensor OpCall::indices(const char* name, int ndim, bool int64_only) const {
  py::handle obj = arg(name);
  if (device_ == Device::kCpu) {
    py::array a = int_array(obj, op_, name, ndim, int64_only);
    const ElemType t = a.itemsize() == 8 ? ElemType::kInt64 : ElemType::kInt32;
    return host_tensor(std::move(a), t);
  }
  const DeviceArray& a = *as_device(obj);
  if (a.dtype != ElemType::kInt64 && (int64_only || a.dtype != ElemType::kInt32))
    throw py::type_error(std::string(op_) + ": " + name + " must have dtype " +
                         (int64_only ? "int64" : "int32 or int64") + ", got " +
                         type_name(a.dtype));
  check_rank(a.shape, op_, name, ndim);
  return device_tensor(obj, a);
}

py::object OpCall::output(const Shape& shape, Tensor* t, bool zeroed, ElemType dtype) const {
  t->shape = shape;
  t->dtype = dtype;
  if (device_ == Device::kCpu) {
    py::array_t<float> a = new_array(shape, zeroed);
    t->data = a.mutable_data();
    t->keep = a;
    return a;
  }
  DevPtr a = new_device(shape, dtype, device_, zeroed);
  t->data = a->data;
  t->keep = py::cast(std::move(a));
  return t->keep;
}

int64_t OpCall::index_at(const Tensor& t, int64_t i) const {
  const size_t es = type_size(t.dtype);
  char buf[8] = {};
  kernels().download(buf, static_cast<const char*>(t.data) + i * es, (int64_t)es);
  if (t.dtype == ElemType::kInt32) {
    int32_t v;
    std::memcpy(&v, buf, 4);
    return v;
  }
  int64_t v;
  std::memcpy(&v, buf, 8);
  return v;
}

void require_shape(const Tensor& t, const Shape& want, const char* op, const char* name) {
  if (t.shape != want)
    value_error(op, std::string(name) + " must have shape " + shape_str(want) + ", got " +
                        shape_str(t.shape));
}

void require_same_type(const Tensor& t, const Tensor& ref, const char* op, const char* name,
                       const char* ref_name) {
  if (t.dtype != ref.dtype)
    throw py::type_error(std::string(op) + ": " + name + " must have the dtype of " + ref_name +
                         " (" + type_name(ref.dtype) + "), got " + type_name(t.dtype));
}

void rows_cols(const Tensor& x, const char* op, const char* name, int64_t* rows,
               int64_t* cols) {
  if (x.shape.empty()) value_error(op, std::string(name) + " must have at least 1 dimension");
  *cols = x.shape.back();
  *rows = *cols ? x.size() / *cols : 0;
}

bool overlaps(const Tensor& a, const Tensor& b) {
  const char* pa = static_cast<const char*>(a.data);
  const char* pb = static_cast<const char*>(b.data);
  return a.nbytes() && b.nbytes() && pa < pb + b.nbytes() && pb < pa + a.nbytes();
}

void check_no_overlap(const char* op, std::initializer_list<const char*> written,
                      std::initializer_list<std::pair<const char*, const Tensor*>> arrays) {
  auto is_written = [&](const char* n) {
    for (const char* w : written)
      if (std::strcmp(w, n) == 0) return true;
    return false;
  };
  std::vector<std::pair<const char*, const Tensor*>> v;
  for (const auto& a : arrays)
    if (a.second) v.push_back(a);
  for (size_t i = 0; i < v.size(); ++i)
    for (size_t j = i + 1; j < v.size(); ++j) {
      const bool wi = is_written(v[i].first), wj = is_written(v[j].first);
      if (!(wi || wj) || !overlaps(*v[i].second, *v[j].second)) continue;
      const std::string out = wi && wj ? std::string(v[i].first) + " and " + v[j].first
                                       : std::string(wi ? v[i].first : v[j].first);
      value_error(op, std::string(v[i].first) + " and " + v[j].first + " share memory, but " +
                          out + (wi && wj ? " are" : " is") +
                          " written in place; pass separate arrays");
    }
}

}  // namespace bindings
}  // namespace fastlm
