// DeviceArray (device_array.h): allocation through the device's kernel table,
// copies to and from NumPy, dtype conversion, views of foreign memory and
// __cuda_array_interface__. The few memory operations the table has no
// entry for (zero fill, device copy, bfloat16 conversion, pointer checks) are
// CUDA runtime calls on the GPU and plain host code on the emulated device.
#include "bindings/device_array.h"

#include <pybind11/stl.h>

#include <cstring>
#include <stdexcept>
#include <vector>

#include "bindings/device_shape.h"

#if defined(FASTLM_WITH_CUDA) && FASTLM_WITH_CUDA
#include "cuda/cuda_kernels.h"
#include "cuda/runtime.h"
#endif

namespace fastlm {
namespace bindings {

const char* type_name(ElemType t) {
  switch (t) {
    case ElemType::kFloat32: return "float32";
    case ElemType::kBFloat16: return "bfloat16";
    case ElemType::kInt32: return "int32";
    case ElemType::kInt64: return "int64";
  }
  return "?";
}

size_t type_size(ElemType t) {
  return t == ElemType::kBFloat16 ? 2 : (t == ElemType::kInt64 ? 8 : 4);
}

namespace {

const char* kNoCuda =
    "fastlm was built without CUDA (FASTLM_CUDA=OFF, or no nvcc when it was built)";

ElemType parse_type(const std::string& s) {
  if (s == "float32") return ElemType::kFloat32;
  if (s == "bfloat16") return ElemType::kBFloat16;
  if (s == "int32") return ElemType::kInt32;
  if (s == "int64") return ElemType::kInt64;
  throw py::type_error("DeviceArray dtype must be float32, bfloat16, int32 or int64, got " + s);
}

// Round to nearest even, as __float2bfloat16_rn; NaN stays NaN.
uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

float bf16_bits_to_float(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

const Kernels& table(Device d) { return backend_for("DeviceArray", d); }

// ---- memory operations beyond the table's --------------------------------

void zero_bytes(Device d, void* p, size_t bytes) {
#if defined(FASTLM_WITH_CUDA) && FASTLM_WITH_CUDA
  if (d == Device::kCuda) return cuda::zero_device(p, bytes);
#endif
  if (bytes) std::memset(p, 0, bytes);
}

void copy_bytes(Device d, void* dst, const void* src, size_t bytes) {
#if defined(FASTLM_WITH_CUDA) && FASTLM_WITH_CUDA
  if (d == Device::kCuda) return cuda::copy_device(dst, src, bytes);
#endif
  if (bytes) std::memcpy(dst, src, bytes);
}

void to_bf16(Device d, const float* src, void* dst, int64_t n) {
#if defined(FASTLM_WITH_CUDA) && FASTLM_WITH_CUDA
  if (d == Device::kCuda) return cuda::float_to_bf16(src, dst, n);
#endif
  for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = float_to_bf16_bits(src[i]);
}

void from_bf16(Device d, const void* src, float* dst, int64_t n) {
#if defined(FASTLM_WITH_CUDA) && FASTLM_WITH_CUDA
  if (d == Device::kCuda) return cuda::bf16_to_float(src, dst, n);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_bits_to_float(static_cast<const uint16_t*>(src)[i]);
}

// Why ptr (bytes long) is not memory of `d` this process may use; "" when it is.
std::string foreign_memory_problem(Device d, const void* ptr, size_t bytes) {
  if (d == Device::kEmulated)
    return emulated_owns(ptr, (int64_t)bytes)
               ? ""
               : "is not memory of the emulated CUDA device (FASTLM_EMULATE_CUDA=1)";
#if defined(FASTLM_WITH_CUDA) && FASTLM_WITH_CUDA
  const int dev = cuda::pointer_device(ptr);
  if (dev < 0) return "is not GPU memory (its __cuda_array_interface__ pointer is not device memory)";
  if (dev != cuda::current_device())
    return "lives on CUDA device " + std::to_string(dev) + ", but fastlm runs on device " +
           std::to_string(cuda::current_device());
  return "";
#else
  (void)bytes;
  return "is not usable: this fastlm build has no CUDA";
#endif
}

py::tuple shape_tuple(const Shape& s) {
  py::tuple t(s.size());
  for (size_t i = 0; i < s.size(); ++i) t[i] = s[i];
  return t;
}

// "float32" etc. from a name or anything numpy.dtype takes (np.float32, ...).
std::string dtype_name(py::handle dtype) {
  if (py::isinstance<py::str>(dtype)) return dtype.cast<std::string>();
  try {
    return py::str(py::module_::import("numpy").attr("dtype")(dtype).attr("name")).cast<std::string>();
  } catch (py::error_already_set&) {
    throw py::type_error("DeviceArray dtype must be float32, bfloat16, int32 or int64, got " +
                         py::repr(dtype).cast<std::string>());
  }
}

// arr: C-contiguous float32, int32 or int64 ndarray (cuda.py converts);
// bfloat16 is made from float32 on the host.
DevPtr from_numpy(const py::array& arr, const std::string& dtype) {
  const Device d = array_device();
  const ElemType t = parse_type(dtype);
  if (!(arr.flags() & py::array::c_style))
    throw py::value_error("to_device: the array must be C-contiguous");
  const bool f32 = arr.dtype().equal(py::dtype::of<float>());
  const bool want_src = t == ElemType::kBFloat16 || t == ElemType::kFloat32
                            ? f32
                            : arr.dtype().equal(t == ElemType::kInt32 ? py::dtype::of<int32_t>()
                                                                      : py::dtype::of<int64_t>());
  if (!want_src)
    throw py::type_error("to_device: cannot make a " + dtype + " array from dtype " +
                         std::string(py::str(arr.dtype())));
  DevPtr a = new_device(shape_of(arr), t, d);
  const Kernels& k = table(d);
  if (t == ElemType::kBFloat16) {
    std::vector<uint16_t> bits((size_t)a->size());
    // memcpy per value: the host array may start at an address not aligned to 4.
    const char* src = static_cast<const char*>(arr.data());
    for (size_t i = 0; i < bits.size(); ++i) {
      float x;
      std::memcpy(&x, src + i * sizeof(float), sizeof(float));
      bits[i] = float_to_bf16_bits(x);
    }
    py::gil_scoped_release nogil;
    k.upload(a->data, bits.data(), (int64_t)a->nbytes());
  } else {
    const void* src = arr.data();
    py::gil_scoped_release nogil;
    k.upload(a->data, src, (int64_t)a->nbytes());
  }
  return a;
}

// A view of foreign device memory (cuda.py has parsed the interface).
DevPtr borrow(uintptr_t ptr, py::handle shape_obj, const std::string& dtype, py::object owner,
              bool readonly, const std::string& name) {
  const Device d = array_device();
  auto a = std::make_shared<DeviceArray>();
  a->shape = shape_from(shape_obj);
  a->dtype = parse_type(dtype);
  a->device = d;
  a->data = reinterpret_cast<void*>(ptr);
  a->owner = std::move(owner);
  a->readonly = readonly;
  // Kernels load whole elements (and vectors of them): a pointer that is not
  // a multiple of the element size is a misaligned-address fault on the GPU.
  if (a->size() > 0 && ptr % type_size(a->dtype) != 0)
    throw py::value_error(name + " is not aligned to its " + std::to_string(type_size(a->dtype)) +
                          "-byte elements (its __cuda_array_interface__ pointer is " +
                          std::to_string(ptr) + ")");
  if (a->size() > 0) {
    const std::string problem = foreign_memory_problem(d, a->data, a->nbytes());
    if (!problem.empty()) throw py::value_error(name + " " + problem);
  }
  return a;
}

DevPtr astype(const DeviceArray& a, const std::string& dtype) {
  const ElemType t = parse_type(dtype);
  DevPtr out = new_device(a.shape, t, a.device);
  if (t == a.dtype)
    copy_bytes(a.device, out->data, a.data, a.nbytes());
  else if (a.dtype == ElemType::kFloat32 && t == ElemType::kBFloat16)
    to_bf16(a.device, static_cast<const float*>(a.data), out->data, a.size());
  else if (a.dtype == ElemType::kBFloat16 && t == ElemType::kFloat32)
    from_bf16(a.device, a.data, static_cast<float*>(out->data), a.size());
  else
    throw py::type_error(std::string("DeviceArray.astype: cannot convert ") + type_name(a.dtype) +
                         " to " + dtype + " on the device");
  return out;
}

py::dict cuda_array_interface(const DeviceArray& a) {
  // Emulated arrays are host memory: handing their pointer to a CUDA library
  // as device memory would fault. AttributeError keeps hasattr() truthful.
  if (a.device == Device::kEmulated)
    throw py::attribute_error(
        "DeviceArrays of the emulated CUDA device (FASTLM_EMULATE_CUDA=1) are host memory and "
        "export no __cuda_array_interface__");
  const char* typestr = nullptr;
  switch (a.dtype) {
    case ElemType::kFloat32: typestr = "<f4"; break;
    case ElemType::kInt32: typestr = "<i4"; break;
    case ElemType::kInt64: typestr = "<i8"; break;
    case ElemType::kBFloat16:
      // The interface has no bfloat16 type string.
      throw py::attribute_error(
          "bfloat16 DeviceArrays do not export __cuda_array_interface__ (no bfloat16 type "
          "string exists); use .astype('float32') first");
  }
  py::dict d;
  d["shape"] = shape_tuple(a.shape);
  d["typestr"] = typestr;
  d["data"] = py::make_tuple(reinterpret_cast<uintptr_t>(a.data), a.readonly);
  d["strides"] = py::none();
  d["version"] = 3;
  d["stream"] = 1;  // the legacy default stream, where fastlm queues its work
  return d;
}

}  // namespace

DeviceStorage::DeviceStorage(Device d, size_t bytes)
    : kernels(&table(d)), ptr(kernels->alloc((int64_t)bytes)) {}

DeviceStorage::~DeviceStorage() { kernels->release(ptr); }

Device array_device() {
  if (cuda_emulated()) return Device::kEmulated;
#if defined(FASTLM_WITH_CUDA) && FASTLM_WITH_CUDA
  cuda::require();  // even for 0 bytes: no DeviceArray exists without a GPU
  return Device::kCuda;
#else
  throw std::runtime_error(kNoCuda);
#endif
}

DevPtr new_device(const Shape& shape, ElemType t, Device device, bool zeroed) {
  for (int64_t d : shape)
    if (d < 0) throw py::value_error("DeviceArray: negative dimension in " + shape_str(shape));
  auto a = std::make_shared<DeviceArray>();
  a->shape = shape;
  a->dtype = t;
  a->device = device;
  a->storage = std::make_shared<DeviceStorage>(device, a->nbytes());
  a->data = a->storage->ptr;
  if (zeroed) zero_bytes(device, a->data, a->nbytes());
  return a;
}

// The copies run without the GIL; the arrays are returned (a Python reference
// copied) only once it is held again.
py::array to_numpy(const DeviceArray& a) {
  const Kernels& k = table(a.device);
  std::vector<py::ssize_t> shape(a.shape.begin(), a.shape.end());
  auto copied = [&](auto out) -> py::array {
    void* dst = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      k.download(dst, a.data, (int64_t)a.nbytes());
    }
    return out;
  };
  switch (a.dtype) {
    case ElemType::kFloat32: return copied(py::array_t<float>(shape));
    case ElemType::kInt32: return copied(py::array_t<int32_t>(shape));
    case ElemType::kInt64: return copied(py::array_t<int64_t>(shape));
    case ElemType::kBFloat16: {
      // NumPy has no bfloat16: values come back as (exactly representable) float32.
      py::array_t<float> out(shape);
      float* dst = out.mutable_data();
      {
        std::vector<uint16_t> bits((size_t)a.size());
        py::gil_scoped_release nogil;
        k.download(bits.data(), a.data, (int64_t)a.nbytes());
        for (size_t i = 0; i < bits.size(); ++i) dst[i] = bf16_bits_to_float(bits[i]);
      }
      return out;
    }
  }
  throw std::logic_error("unreachable");
}

DeviceArray* as_device(py::handle obj) {
  if (!py::isinstance<DeviceArray>(obj)) return nullptr;
  return obj.cast<DeviceArray*>();
}

void bind_device_array(py::module_& m) {
  py::class_<DeviceArray, DevPtr>(m, "DeviceArray", R"doc(
An array in GPU memory: C-contiguous, dtype float32, bfloat16, int32 or int64.

Make one with fastlm.to_device(numpy_array); fastlm.ops return them for GPU
inputs. It exports __cuda_array_interface__ (except bfloat16, which has no
type string there, and arrays of the emulated device), so
torch.as_tensor(x, device="cuda") and cupy.asarray(x) view it without a copy.
.numpy() copies it back (bfloat16 as float32). With FASTLM_EMULATE_CUDA=1 it
lives on the emulated device: host memory, ops through the CPU kernels.
)doc")
      .def(py::init([](py::handle shape, py::handle dtype) {
             // Shape and dtype are checked before the device is asked for.
             const Shape s = shape_from(shape);
             const ElemType t = parse_type(dtype_name(dtype));
             return new_device(s, t, array_device(), true);
           }),
           py::arg("shape"), py::arg("dtype") = "float32",
           "A zero-filled array of `shape` and `dtype` on the GPU.")
      .def_static("empty",
                  [](py::handle shape, py::handle dtype) {
                    const Shape s = shape_from(shape);
                    const ElemType t = parse_type(dtype_name(dtype));
                    return new_device(s, t, array_device());
                  },
                  py::arg("shape"), py::arg("dtype") = "float32")
      .def_static("_from_numpy", &from_numpy, py::arg("array"), py::arg("dtype"))
      .def_static("_borrow", &borrow, py::arg("ptr"), py::arg("shape"), py::arg("dtype"),
                  py::arg("owner"), py::arg("readonly"), py::arg("name"))
      .def_property_readonly("shape", [](const DeviceArray& a) { return shape_tuple(a.shape); })
      .def_property_readonly("dtype", [](const DeviceArray& a) { return type_name(a.dtype); })
      .def_property_readonly("ndim", [](const DeviceArray& a) { return a.shape.size(); })
      .def_property_readonly("size", &DeviceArray::size)
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def_property_readonly("readonly", [](const DeviceArray& a) { return a.readonly; })
      .def_property_readonly("emulated",
                             [](const DeviceArray& a) { return a.device == Device::kEmulated; },
                             "Whether the array lives on the emulated device (host memory).")
      .def_property_readonly("ptr",
                             [](const DeviceArray& a) { return reinterpret_cast<uintptr_t>(a.data); })
      .def_property_readonly("__cuda_array_interface__", &cuda_array_interface)
      .def("numpy", &to_numpy, "Copy to a new NumPy array (bfloat16 comes back as float32).")
      .def("astype", &astype, py::arg("dtype"),
           "A converted copy on the GPU (float32 <-> bfloat16, or a plain copy).")
      .def("copy", [](const DeviceArray& a) { return astype(a, type_name(a.dtype)); })
      .def("reshape",
           [](const DevPtr& a, py::args args) {
             // A view, as numpy's reshape of a contiguous array: one dimension may be -1.
             const Shape s = args.size() == 1 ? shape_from(args[0], a->size())
                                              : shape_from(args, a->size());
             auto v = std::make_shared<DeviceArray>(*a);  // shares storage and owner
             v->shape = s;
             return v;
           })
      .def("__len__",
           [](const DeviceArray& a) {
             if (a.shape.empty()) throw py::type_error("len() of a 0-d DeviceArray");
             return a.shape[0];
           })
      .def("__array__",
           [](const DeviceArray&, py::args, py::kwargs) -> py::object {
             throw py::type_error(
                 "fastlm.DeviceArray lives on the GPU: call .numpy() to copy it to the host");
           })
      .def("__repr__", [](const DeviceArray& a) {
        return "fastlm.DeviceArray(shape=" + shape_str(a.shape) + ", dtype=" + type_name(a.dtype) +
               (a.device == Device::kEmulated ? ", emulated" : "") +
               (!a.owner || a.owner.is_none() ? "" : ", borrowed") + ")";
      });
}

}  // namespace bindings
}  // namespace fastlm
