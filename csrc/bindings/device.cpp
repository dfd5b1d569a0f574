// fastlm._C on the GPU: DeviceArray (device memory with a shape and a dtype,
// exporting __cuda_array_interface__), and the CUDA entry point of every op in
// python/fastlm/ops.py. python/fastlm/cuda.py turns foreign device arrays
// (PyTorch, CuPy) into borrowed DeviceArrays before calling in here, so these
// functions see DeviceArrays only; they check each one as csrc/bindings/ops.cpp
// checks NumPy arrays (TypeError / ValueError naming the argument), allocate
// device outputs, and queue the kernels of the CUDA table with the GIL
// released.
//
// Built without CUDA (FASTLM_WITH_CUDA unset) this file binds a stub:
// cuda_available() is False and DeviceArray cannot be constructed.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bindings/arrays.h"
#include "bindings/device_shape.h"

#if defined(FASTLM_WITH_CUDA) && FASTLM_WITH_CUDA
#include "cuda/cuda_kernels.h"
#include "cuda/runtime.h"
#include "model/rnn_cell.h"
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

namespace {

enum class ElemType { kFloat32, kBFloat16, kInt32, kInt64 };

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

struct Storage {
  void* ptr = nullptr;
  explicit Storage(size_t bytes) : ptr(cuda::malloc_device(bytes)) {}
  ~Storage() { cuda::free_device(ptr); }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

// Device memory with a row-major (C-contiguous) shape. Either owns its
// storage or borrows another object's (`owner` keeps it alive).
struct DeviceArray {
  std::shared_ptr<Storage> storage;
  py::object owner;
  void* data = nullptr;
  Shape shape;
  ElemType dtype = ElemType::kFloat32;
  bool readonly = false;

  int64_t size() const { return numel(shape); }
  size_t nbytes() const { return (size_t)size() * type_size(dtype); }
  float* f32() const { return static_cast<float*>(data); }
};

using DevPtr = std::shared_ptr<DeviceArray>;

DevPtr new_device(const Shape& shape, ElemType t, bool zeroed = false) {
  cuda::require();  // even for 0 bytes: no DeviceArray exists without a GPU
  for (int64_t d : shape)
    if (d < 0) throw py::value_error("DeviceArray: negative dimension in " + shape_str(shape));
  auto a = std::make_shared<DeviceArray>();
  a->shape = shape;
  a->dtype = t;
  a->storage = std::make_shared<Storage>(a->nbytes());
  a->data = a->storage->ptr;
  if (zeroed) cuda::zero_device(a->data, a->nbytes());
  return a;
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

// The copies run without the GIL; the arrays are returned (a Python reference
// copied) only once it is held again.
py::array to_numpy(const DeviceArray& a) {
  std::vector<py::ssize_t> shape(a.shape.begin(), a.shape.end());
  auto copied = [&](auto out) -> py::array {
    void* dst = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      cuda::copy_to_host(dst, a.data, a.nbytes());
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
        cuda::copy_to_host(bits.data(), a.data, a.nbytes());
        for (size_t i = 0; i < bits.size(); ++i) dst[i] = bf16_bits_to_float(bits[i]);
      }
      return out;
    }
  }
  throw std::logic_error("unreachable");
}

// arr: C-contiguous float32, int32 or int64 ndarray (cuda.py converts);
// bfloat16 is made from float32 on the host.
DevPtr from_numpy(const py::array& arr, const std::string& dtype) {
  cuda::require();
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
  DevPtr a = new_device(shape_of(arr), t);
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
    cuda::copy_to_device(a->data, bits.data(), a->nbytes());
  } else {
    const void* src = arr.data();
    py::gil_scoped_release nogil;
    cuda::copy_to_device(a->data, src, a->nbytes());
  }
  return a;
}

// A view of foreign device memory (cuda.py has parsed the interface).
DevPtr borrow(uintptr_t ptr, py::handle shape_obj, const std::string& dtype, py::object owner,
              bool readonly, const std::string& name) {
  cuda::require();
  auto a = std::make_shared<DeviceArray>();
  a->shape = shape_from(shape_obj);
  a->dtype = parse_type(dtype);
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
    const int dev = cuda::pointer_device(a->data);
    if (dev < 0)
      throw py::value_error(name + " is not GPU memory (its __cuda_array_interface__ pointer is "
                                   "not device memory)");
    if (dev != cuda::current_device())
      throw py::value_error(name + " lives on CUDA device " + std::to_string(dev) +
                            ", but fastlm runs on device " +
                            std::to_string(cuda::current_device()));
  }
  return a;
}

DevPtr astype(const DeviceArray& a, const std::string& dtype) {
  const ElemType t = parse_type(dtype);
  if (t == a.dtype) {
    DevPtr out = new_device(a.shape, t);
    cuda::copy_device(out->data, a.data, a.nbytes());
    return out;
  }
  DevPtr out = new_device(a.shape, t);
  if (a.dtype == ElemType::kFloat32 && t == ElemType::kBFloat16)
    cuda::float_to_bf16(a.f32(), out->data, a.size());
  else if (a.dtype == ElemType::kBFloat16 && t == ElemType::kFloat32)
    cuda::bf16_to_float(a.data, out->f32(), a.size());
  else
    throw py::type_error(std::string("DeviceArray.astype: cannot convert ") + type_name(a.dtype) +
                         " to " + dtype + " on the device");
  return out;
}

py::dict cuda_array_interface(const DeviceArray& a) {
  const char* typestr = nullptr;
  switch (a.dtype) {
    case ElemType::kFloat32: typestr = "<f4"; break;
    case ElemType::kInt32: typestr = "<i4"; break;
    case ElemType::kInt64: typestr = "<i8"; break;
    case ElemType::kBFloat16:
      // The interface has no bfloat16 type string; AttributeError keeps
      // hasattr() truthful.
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

// ---- argument checks --------------------------------------------------------

const DeviceArray& dev(py::handle obj, const char* op, const char* name) {
  if (!py::isinstance<DeviceArray>(obj))
    throw py::type_error(std::string(op) + ": " + name +
                         " must be a fastlm.DeviceArray (or export __cuda_array_interface__), got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  return *obj.cast<DeviceArray*>();
}

void check_rank(const DeviceArray& a, const char* op, const char* name, int ndim) {
  if (ndim >= 0 && (int)a.shape.size() != ndim)
    value_error(op, std::string(name) + " must be " + std::to_string(ndim) + "-D, got shape " +
                        shape_str(a.shape));
}

// A float32 device array (bfloat16 too when allow_bf16), of rank ndim when >= 0.
const DeviceArray& fdev(py::handle obj, const char* op, const char* name, int ndim = -1,
                        bool writable = false, bool allow_bf16 = false) {
  const DeviceArray& a = dev(obj, op, name);
  if (a.dtype != ElemType::kFloat32 && !(allow_bf16 && a.dtype == ElemType::kBFloat16))
    throw py::type_error(std::string(op) + ": " + name + " must have dtype float32" +
                         (allow_bf16 ? " or bfloat16" : "") + ", got " + type_name(a.dtype));
  check_rank(a, op, name, ndim);
  if (writable && a.readonly) value_error(op, std::string(name) + " must be writable");
  return a;
}

void require_shape(const DeviceArray& a, const Shape& want, const char* op, const char* name) {
  if (a.shape != want)
    value_error(op, std::string(name) + " must have shape " + shape_str(want) + ", got " +
                        shape_str(a.shape));
}

void require_same_type(const DeviceArray& a, const DeviceArray& ref, const char* op,
                       const char* name, const char* ref_name) {
  if (a.dtype != ref.dtype)
    throw py::type_error(std::string(op) + ": " + name + " must have the dtype of " + ref_name +
                         " (" + type_name(ref.dtype) + "), got " + type_name(a.dtype));
}

void rows_cols(const DeviceArray& x, const char* op, const char* name, int64_t* rows,
               int64_t* cols) {
  if (x.shape.empty()) value_error(op, std::string(name) + " must have at least 1 dimension");
  *cols = x.shape.back();
  *rows = *cols ? x.size() / *cols : 0;
}

py::object wrap(DevPtr a) { return py::cast(std::move(a)); }

// ---- ops ------------------------------------------------------------------

py::object matmul(py::handle a_obj, py::handle b_obj, bool trans_a, bool trans_b,
                  py::handle bias_obj, const std::string& precision) {
  const char* op = "matmul";
  cuda::require();
  const DeviceArray& a = fdev(a_obj, op, "a", 2, false, true);
  const DeviceArray& b = fdev(b_obj, op, "b", 2, false, true);
  require_same_type(b, a, op, "b", "a");
  const int64_t m = trans_a ? a.shape[1] : a.shape[0], ka = trans_a ? a.shape[0] : a.shape[1];
  const int64_t kb = trans_b ? b.shape[1] : b.shape[0], n = trans_b ? b.shape[0] : b.shape[1];
  if (ka != kb)
    value_error(op, "inner dimensions differ: op(a) is " + shape_str({m, ka}) + ", op(b) is " +
                        shape_str({kb, n}));
  const void* bias = nullptr;
  if (!bias_obj.is_none()) {
    const DeviceArray& bs = fdev(bias_obj, op, "bias", 1, false, true);
    require_same_type(bs, a, op, "bias", "a");
    require_shape(bs, {n}, op, "bias");
    bias = bs.data;
  }
  const bool bf16 = a.dtype == ElemType::kBFloat16;
  cuda::GemmPrecision prec;
  if (precision == "highest" || precision == "bfloat16")
    prec = bf16 ? cuda::GemmPrecision::kBF16 : cuda::GemmPrecision::kExact;
  else if (precision == "tf32")
    prec = bf16 ? cuda::GemmPrecision::kBF16 : cuda::GemmPrecision::kTF32;
  else
    value_error(op, "precision must be 'highest' or 'tf32', got '" + precision + "'");
  DevPtr c = new_device({m, n}, a.dtype);
  cuda::GemmDesc g;
  g.precision = prec;
  g.a = a.data;
  g.b = b.data;
  g.bias = bias;
  g.c = c->data;
  g.m = m;
  g.n = n;
  g.k = ka;
  g.lda = a.shape[1];
  g.ldb = b.shape[1];
  g.ldc = n;
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  {
    py::gil_scoped_release nogil;
    cuda::gemm(g);
  }
  return wrap(c);
}

// Every GemmDesc field, for the tests: row strides, base offsets (in
// elements), accumulate, and float32 c over bfloat16 operands (c_float, when
// a is bfloat16 and c float32). Each matrix must lie inside its array.
void gemm_raw(py::handle a_obj, py::handle b_obj, py::handle c_obj, py::handle bias_obj,
              int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
              bool trans_a, bool trans_b, bool accumulate, bool tf32, int64_t offset_a,
              int64_t offset_b, int64_t offset_c) {
  const char* op = "_cuda_gemm";
  cuda::require();
  const DeviceArray& a = fdev(a_obj, op, "a", -1, false, true);
  const DeviceArray& b = fdev(b_obj, op, "b", -1, false, true);
  const DeviceArray& c = fdev(c_obj, op, "c", -1, true, true);
  require_same_type(b, a, op, "b", "a");
  const bool c_float = a.dtype == ElemType::kBFloat16 && c.dtype == ElemType::kFloat32;
  if (!c_float) require_same_type(c, a, op, "c", "a");
  if (m < 0 || n < 0 || k < 0) value_error(op, "m, n and k must be >= 0");
  // Stored (rows, cols) of each matrix, its row stride and offset.
  auto inside = [&](const DeviceArray& x, const char* name, int64_t rows, int64_t cols,
                    int64_t ld, int64_t offset) {
    if (ld < cols || ld < 1 || offset < 0)
      value_error(op, std::string(name) + ": the row stride must be >= max(1, columns) and the "
                      "offset >= 0");
    if (rows > 0 && cols > 0 && offset + (rows - 1) * ld + cols > x.size())
      value_error(op, std::string(name) + " does not hold a " + shape_str({rows, cols}) +
                      " matrix with row stride " + std::to_string(ld) + " at offset " +
                      std::to_string(offset));
  };
  inside(a, "a", trans_a ? k : m, trans_a ? m : k, lda, offset_a);
  inside(b, "b", trans_b ? n : k, trans_b ? k : n, ldb, offset_b);
  inside(c, "c", m, n, ldc, offset_c);
  const void* bias = nullptr;
  if (!bias_obj.is_none()) {
    const DeviceArray& bs = fdev(bias_obj, op, "bias", 1, false, true);
    require_same_type(bs, c, op, "bias", "c");
    require_shape(bs, {n}, op, "bias");
    bias = bs.data;
  }
  const cuda::GemmPrecision prec = a.dtype == ElemType::kBFloat16 ? cuda::GemmPrecision::kBF16
                                   : tf32 ? cuda::GemmPrecision::kTF32
                                          : cuda::GemmPrecision::kExact;
  const char* a_base = static_cast<const char*>(a.data);
  const char* b_base = static_cast<const char*>(b.data);
  char* c_base = static_cast<char*>(c.data);
  const int64_t es = type_size(a.dtype), ces = type_size(c.dtype);
  const cuda::GemmDesc g{prec,   a_base + offset_a * es, b_base + offset_b * es, bias,
                         c_base + offset_c * ces, m, n, k, lda, ldb, ldc, trans_a, trans_b,
                         accumulate, c_float};
  py::gil_scoped_release nogil;
  cuda::gemm(g);
}

py::object softmax(py::handle x_obj) {
  const char* op = "softmax";
  cuda::require();
  const DeviceArray& x = fdev(x_obj, op, "x");
  int64_t rows, cols;
  rows_cols(x, op, "x", &rows, &cols);
  DevPtr y = new_device(x.shape, ElemType::kFloat32);
  {
    py::gil_scoped_release nogil;
    cuda::softmax_forward(x.f32(), y->f32(), rows, cols);
  }
  return wrap(y);
}

py::object softmax_backward(py::handle dy_obj, py::handle y_obj) {
  const char* op = "softmax_backward";
  cuda::require();
  const DeviceArray& y = fdev(y_obj, op, "y");
  const DeviceArray& dy = fdev(dy_obj, op, "dy");
  require_shape(dy, y.shape, op, "dy");
  int64_t rows, cols;
  rows_cols(y, op, "y", &rows, &cols);
  DevPtr dx = new_device(y.shape, ElemType::kFloat32, true);
  {
    py::gil_scoped_release nogil;
    cuda::softmax_backward(dy.f32(), y.f32(), dx->f32(), rows, cols);
  }
  return wrap(dx);
}

py::tuple layernorm(py::handle x_obj, py::handle w_obj, py::handle b_obj, double eps) {
  const char* op = "layernorm";
  cuda::require();
  const DeviceArray& x = fdev(x_obj, op, "x");
  int64_t rows, cols;
  rows_cols(x, op, "x", &rows, &cols);
  const DeviceArray& w = fdev(w_obj, op, "weight", 1);
  const DeviceArray& b = fdev(b_obj, op, "bias", 1);
  require_shape(w, {cols}, op, "weight");
  require_shape(b, {cols}, op, "bias");
  if (!(eps >= 0) || !std::isfinite(eps)) value_error(op, "eps must be finite and >= 0");
  Shape stat = x.shape;
  stat.pop_back();
  DevPtr y = new_device(x.shape, ElemType::kFloat32), mean = new_device(stat, ElemType::kFloat32),
         rstd = new_device(stat, ElemType::kFloat32);
  {
    py::gil_scoped_release nogil;
    cuda::layernorm_forward(x.f32(), w.f32(), b.f32(), y->f32(), mean->f32(), rstd->f32(), rows,
                            cols, (float)eps);
  }
  return py::make_tuple(wrap(y), wrap(mean), wrap(rstd));
}

py::tuple layernorm_backward(py::handle dy_obj, py::handle x_obj, py::handle w_obj,
                             py::handle mean_obj, py::handle rstd_obj) {
  const char* op = "layernorm_backward";
  cuda::require();
  const DeviceArray& x = fdev(x_obj, op, "x");
  int64_t rows, cols;
  rows_cols(x, op, "x", &rows, &cols);
  const DeviceArray& dy = fdev(dy_obj, op, "dy");
  require_shape(dy, x.shape, op, "dy");
  const DeviceArray& w = fdev(w_obj, op, "weight", 1);
  require_shape(w, {cols}, op, "weight");
  Shape stat = x.shape;
  stat.pop_back();
  const DeviceArray& mean = fdev(mean_obj, op, "mean");
  const DeviceArray& rstd = fdev(rstd_obj, op, "rstd");
  require_shape(mean, stat, op, "mean");
  require_shape(rstd, stat, op, "rstd");
  // dx is written, not accumulated: no zero fill needed.
  DevPtr dx = new_device(x.shape, ElemType::kFloat32),
         dw = new_device({cols}, ElemType::kFloat32, true),
         db = new_device({cols}, ElemType::kFloat32, true);
  {
    py::gil_scoped_release nogil;
    cuda::layernorm_backward_ex(dy.f32(), x.f32(), w.f32(), mean.f32(), rstd.f32(), dx->f32(),
                                dw->f32(), db->f32(), rows, cols, false);
  }
  return py::make_tuple(wrap(dx), wrap(dw), wrap(db));
}

py::object gelu(py::handle x_obj, bool exact) {
  cuda::require();
  const DeviceArray& x = fdev(x_obj, "gelu", "x");
  DevPtr y = new_device(x.shape, ElemType::kFloat32);
  {
    py::gil_scoped_release nogil;
    (exact ? cuda::gelu_erf_forward : cuda::gelu_forward)(x.f32(), y->f32(), x.size());
  }
  return wrap(y);
}

py::object gelu_backward(py::handle dy_obj, py::handle x_obj, bool exact) {
  const char* op = "gelu_backward";
  cuda::require();
  const DeviceArray& x = fdev(x_obj, op, "x");
  const DeviceArray& dy = fdev(dy_obj, op, "dy");
  require_shape(dy, x.shape, op, "dy");
  DevPtr dx = new_device(x.shape, ElemType::kFloat32);
  {
    py::gil_scoped_release nogil;
    (exact ? cuda::gelu_erf_backward : cuda::gelu_backward)(dy.f32(), x.f32(), dx->f32(),
                                                             x.size());
  }
  return wrap(dx);
}

Strides contiguous_bhtd(const Shape& s) { return {s[1] * s[2] * s[3], s[2] * s[3], s[3]}; }

cuda::AttentionDesc attention_desc(const char* op, const DeviceArray& q, const DeviceArray& k,
                                   const DeviceArray& v, bool causal, float dropout,
                                   uint64_t dropout_seed) {
  require_same_type(k, q, op, "k", "q");
  require_same_type(v, q, op, "v", "q");
  const Shape& sq = q.shape;
  const Shape& sk = k.shape;
  require_shape(v, sk, op, "v");
  if (sk[0] != sq[0] || sk[1] != sq[1] || sk[3] != sq[3])
    value_error(op, "k " + shape_str(sk) + " does not match q " + shape_str(sq) +
                        " in batch, heads or head dim");
  if (sq[3] < 1) value_error(op, "head dim must be >= 1");
  if (sq[3] > cuda::kMaxHeadDim)
    value_error(op, "head dim must be <= " + std::to_string(cuda::kMaxHeadDim) +
                        " on CUDA, got " + std::to_string(sq[3]));
  cuda::AttentionDesc d;
  d.dtype = q.dtype == ElemType::kBFloat16 ? cuda::DType::kBFloat16 : cuda::DType::kFloat32;
  d.q = q.data;
  d.k = k.data;
  d.v = v.data;
  d.sq = d.so = contiguous_bhtd(sq);
  d.sk = d.sv = contiguous_bhtd(sk);
  d.batch = sq[0];
  d.heads = sq[1];
  d.seq_q = sq[2];
  d.seq_k = sk[2];
  d.head_dim = sq[3];
  d.causal = causal;
  if (!(dropout >= 0.f && dropout < 1.f))
    value_error(op, "dropout must be in [0, 1), got " + std::to_string(dropout));
  d.dropout_p = dropout;
  d.dropout_seed = dropout_seed;
  return d;
}

py::tuple attention(py::handle q_obj, py::handle k_obj, py::handle v_obj, bool causal,
                    float dropout, uint64_t dropout_seed) {
  const char* op = "attention";
  cuda::require();
  const DeviceArray& q = fdev(q_obj, op, "q", 4, false, true);
  const DeviceArray& k = fdev(k_obj, op, "k", 4, false, true);
  const DeviceArray& v = fdev(v_obj, op, "v", 4, false, true);
  cuda::AttentionDesc d = attention_desc(op, q, k, v, causal, dropout, dropout_seed);
  if (d.seq_k < 1 && d.seq_q > 0) value_error(op, "k and v must hold at least one position");
  DevPtr out = new_device(q.shape, q.dtype),
         lse = new_device({d.batch, d.heads, d.seq_q}, ElemType::kFloat32);
  d.out = out->data;
  d.lse = lse->f32();
  if (q.size()) {
    py::gil_scoped_release nogil;
    cuda::attention_forward_ex(d);
  }
  return py::make_tuple(wrap(out), wrap(lse));
}

py::tuple attention_backward(py::handle dout_obj, py::handle q_obj, py::handle k_obj,
                             py::handle v_obj, py::handle out_obj, py::handle lse_obj,
                             bool causal, float dropout, uint64_t dropout_seed) {
  const char* op = "attention_backward";
  cuda::require();
  const DeviceArray& q = fdev(q_obj, op, "q", 4, false, true);
  const DeviceArray& k = fdev(k_obj, op, "k", 4, false, true);
  const DeviceArray& v = fdev(v_obj, op, "v", 4, false, true);
  require_shape(k, q.shape, op, "k");
  cuda::AttentionGradDesc g;
  g.fwd = attention_desc(op, q, k, v, causal, dropout, dropout_seed);
  const DeviceArray& out = fdev(out_obj, op, "out", 4, false, true);
  const DeviceArray& dout = fdev(dout_obj, op, "dout", 4, false, true);
  const DeviceArray& lse = fdev(lse_obj, op, "lse", 3);
  require_same_type(out, q, op, "out", "q");
  require_same_type(dout, q, op, "dout", "q");
  require_shape(out, q.shape, op, "out");
  require_shape(dout, q.shape, op, "dout");
  require_shape(lse, {g.fwd.batch, g.fwd.heads, g.fwd.seq_q}, op, "lse");
  g.fwd.out = out.data;
  g.fwd.lse = lse.f32();
  g.dout = dout.data;
  DevPtr dq = new_device(q.shape, q.dtype, true), dk = new_device(q.shape, q.dtype, true),
         dv = new_device(q.shape, q.dtype, true);
  g.dq = dq->data;
  g.dk = dk->data;
  g.dv = dv->data;
  if (q.size()) {
    py::gil_scoped_release nogil;
    cuda::attention_backward_ex(g);
  }
  return py::make_tuple(wrap(dq), wrap(dk), wrap(dv));
}

bool overlaps(const DeviceArray& a, const DeviceArray& b) {
  const char* pa = static_cast<const char*>(a.data);
  const char* pb = static_cast<const char*>(b.data);
  return a.nbytes() && b.nbytes() && pa < pb + b.nbytes() && pb < pa + a.nbytes();
}

py::tuple cross_entropy(py::handle logits_obj, py::handle targets_obj, int64_t ignore_index,
                        py::handle out_obj, bool compute_grad) {
  const char* op = "cross_entropy";
  cuda::require();
  const DeviceArray& logits = fdev(logits_obj, op, "logits", 2, false, true);
  const bool bf16 = logits.dtype == ElemType::kBFloat16;
  const int64_t rows = logits.shape[0], vocab = logits.shape[1];
  const DeviceArray& targets = dev(targets_obj, op, "targets");
  if (targets.dtype != ElemType::kInt32 && targets.dtype != ElemType::kInt64)
    throw py::type_error(std::string(op) + ": targets must have dtype int32 or int64, got " +
                         type_name(targets.dtype));
  check_rank(targets, op, "targets", 1);
  if (targets.shape[0] != rows)
    value_error(op, "targets must have shape (" + std::to_string(rows) + ",) to match logits " +
                        shape_str(logits.shape) + ", got " + shape_str(targets.shape));
  if (vocab < 1 && rows > 0) value_error(op, "logits must have at least one column");
  py::object grad = py::none();
  void* dlogits = nullptr;
  if (compute_grad) {
    if (out_obj.is_none()) {
      DevPtr g = new_device({rows, vocab}, logits.dtype);
      dlogits = g->data;
      grad = wrap(g);
    } else {
      const DeviceArray& out = fdev(out_obj, op, "out", 2, true, true);
      require_same_type(out, logits, op, "out", "logits");
      require_shape(out, {rows, vocab}, op, "out");
      if (out.data != logits.data && overlaps(out, logits))
        value_error(op, "out overlaps logits partially; pass logits itself or a separate array");
      dlogits = out.data;
      grad = py::reinterpret_borrow<py::object>(out_obj);
    }
  }
  float loss;
  int64_t bad = -1;
  {
    py::gil_scoped_release nogil;
    const bool i32 = targets.dtype == ElemType::kInt32;
    loss = bf16 ? cuda::cross_entropy_bf16_ex(logits.data, targets.data, i32, dlogits, rows,
                                              vocab, ignore_index, 1.f, &bad)
                : cuda::cross_entropy_ex(logits.f32(), targets.data, i32,
                                         static_cast<float*>(dlogits), rows, vocab, ignore_index,
                                         1.f, &bad);
  }
  if (bad >= 0)
    value_error(op, "targets[" + std::to_string(bad) + "] is out of range [0, " +
                        std::to_string(vocab) + ") and is not ignore_index (" +
                        std::to_string(ignore_index) + ")");
  return py::make_tuple(loss, grad);
}

struct CellArrays {
  const DeviceArray *x, *h, *c, *w_ih, *w_hh;
  CellSizes s;
};

// c is the LSTM's cell state (gates == 4); the GRU has none.
CellArrays cell_arrays(const char* op, int64_t gates, py::handle x_obj, py::handle h_obj,
                       py::handle c_obj, py::handle w_ih_obj, py::handle w_hh_obj) {
  CellArrays a;
  a.x = &fdev(x_obj, op, "x", 2);
  a.h = &fdev(h_obj, op, "h", 2);
  a.w_ih = &fdev(w_ih_obj, op, "w_ih", 2);
  a.w_hh = &fdev(w_hh_obj, op, "w_hh", 2);
  a.c = nullptr;
  a.s = {a.x->shape[0], a.x->shape[1], a.h->shape[1]};
  require_shape(*a.h, {a.s.n, a.s.hidden}, op, "h");
  if (gates == 4) {
    a.c = &fdev(c_obj, op, "c", 2);
    require_shape(*a.c, {a.s.n, a.s.hidden}, op, "c");
  }
  require_shape(*a.w_ih, {gates * a.s.hidden, a.s.input}, op, "w_ih");
  require_shape(*a.w_hh, {gates * a.s.hidden, a.s.hidden}, op, "w_hh");
  return a;
}

const DeviceArray& vec_arg(py::handle obj, const char* op, const char* name, int64_t n) {
  const DeviceArray& b = fdev(obj, op, name, 1);
  require_shape(b, {n}, op, name);
  return b;
}

const DeviceArray& mat_arg(py::handle obj, const char* op, const char* name, int64_t r,
                           int64_t c) {
  const DeviceArray& a = fdev(obj, op, name, 2);
  require_shape(a, {r, c}, op, name);
  return a;
}

py::tuple lstm_cell(py::handle x_obj, py::handle h_obj, py::handle c_obj, py::handle w_ih_obj,
                    py::handle w_hh_obj, py::handle b_ih_obj, py::handle b_hh_obj) {
  const char* op = "lstm_cell";
  cuda::require();
  CellArrays a = cell_arrays(op, 4, x_obj, h_obj, c_obj, w_ih_obj, w_hh_obj);
  const CellSizes s = a.s;
  const DeviceArray& b_ih = vec_arg(b_ih_obj, op, "b_ih", 4 * s.hidden);
  const DeviceArray& b_hh = vec_arg(b_hh_obj, op, "b_hh", 4 * s.hidden);
  DevPtr h_next = new_device({s.n, s.hidden}, ElemType::kFloat32),
         c_next = new_device({s.n, s.hidden}, ElemType::kFloat32),
         gates = new_device({s.n, 4 * s.hidden}, ElemType::kFloat32),
         preact = new_device({s.n, 4 * s.hidden}, ElemType::kFloat32);
  {
    py::gil_scoped_release nogil;
    lstm_cell_step_forward(*cuda::kernel_table(), s, a.x->f32(), a.h->f32(), a.c->f32(),
                           a.w_ih->f32(), a.w_hh->f32(), b_ih.f32(), b_hh.f32(), preact->f32(),
                           gates->f32(), c_next->f32(), h_next->f32());
  }
  return py::make_tuple(wrap(h_next), wrap(c_next), wrap(gates));
}

py::tuple lstm_cell_backward(py::handle dh_obj, py::handle dc_obj, py::handle x_obj,
                             py::handle h_obj, py::handle c_obj, py::handle c_next_obj,
                             py::handle gates_obj, py::handle w_ih_obj, py::handle w_hh_obj) {
  const char* op = "lstm_cell_backward";
  cuda::require();
  CellArrays a = cell_arrays(op, 4, x_obj, h_obj, c_obj, w_ih_obj, w_hh_obj);
  const CellSizes s = a.s;
  const DeviceArray& dh_next = mat_arg(dh_obj, op, "dh_next", s.n, s.hidden);
  const DeviceArray& dc_next = mat_arg(dc_obj, op, "dc_next", s.n, s.hidden);
  const DeviceArray& c_next = mat_arg(c_next_obj, op, "c_next", s.n, s.hidden);
  const DeviceArray& gates = mat_arg(gates_obj, op, "gates", s.n, 4 * s.hidden);
  const ElemType f = ElemType::kFloat32;
  DevPtr dx = new_device({s.n, s.input}, f, true), dh = new_device({s.n, s.hidden}, f, true),
         dc = new_device({s.n, s.hidden}, f, true),
         dw_ih = new_device({4 * s.hidden, s.input}, f, true),
         dw_hh = new_device({4 * s.hidden, s.hidden}, f, true),
         db = new_device({4 * s.hidden}, f, true),
         dpreact = new_device({s.n, 4 * s.hidden}, f, true);
  {
    py::gil_scoped_release nogil;
    lstm_cell_step_backward(*cuda::kernel_table(), s, dh_next.f32(), dc_next.f32(), a.x->f32(),
                            a.h->f32(), a.c->f32(), c_next.f32(), gates.f32(), a.w_ih->f32(),
                            a.w_hh->f32(), dpreact->f32(), dx->f32(), dh->f32(), dc->f32(),
                            dw_ih->f32(), dw_hh->f32(), db->f32());
  }
  return py::make_tuple(wrap(dx), wrap(dh), wrap(dc), wrap(dw_ih), wrap(dw_hh), wrap(db));
}

py::tuple gru_cell(py::handle x_obj, py::handle h_obj, py::handle w_ih_obj, py::handle w_hh_obj,
                   py::handle b_ih_obj, py::handle b_hh_obj) {
  const char* op = "gru_cell";
  cuda::require();
  CellArrays a = cell_arrays(op, 3, x_obj, h_obj, py::none(), w_ih_obj, w_hh_obj);
  const CellSizes s = a.s;
  const DeviceArray& b_ih = vec_arg(b_ih_obj, op, "b_ih", 3 * s.hidden);
  const DeviceArray& b_hh = vec_arg(b_hh_obj, op, "b_hh", 3 * s.hidden);
  const ElemType f = ElemType::kFloat32;
  DevPtr h_next = new_device({s.n, s.hidden}, f), gates = new_device({s.n, 4 * s.hidden}, f),
         gi = new_device({s.n, 3 * s.hidden}, f), gh = new_device({s.n, 3 * s.hidden}, f);
  {
    py::gil_scoped_release nogil;
    gru_cell_step_forward(*cuda::kernel_table(), s, a.x->f32(), a.h->f32(), a.w_ih->f32(),
                          a.w_hh->f32(), b_ih.f32(), b_hh.f32(), gi->f32(), gh->f32(),
                          gates->f32(), h_next->f32());
  }
  return py::make_tuple(wrap(h_next), wrap(gates));
}

py::tuple gru_cell_backward(py::handle dh_obj, py::handle x_obj, py::handle h_obj,
                            py::handle gates_obj, py::handle w_ih_obj, py::handle w_hh_obj) {
  const char* op = "gru_cell_backward";
  cuda::require();
  CellArrays a = cell_arrays(op, 3, x_obj, h_obj, py::none(), w_ih_obj, w_hh_obj);
  const CellSizes s = a.s;
  const DeviceArray& dh_next = mat_arg(dh_obj, op, "dh_next", s.n, s.hidden);
  const DeviceArray& gates = mat_arg(gates_obj, op, "gates", s.n, 4 * s.hidden);
  const ElemType f = ElemType::kFloat32;
  DevPtr dx = new_device({s.n, s.input}, f, true), dh = new_device({s.n, s.hidden}, f, true),
         dw_ih = new_device({3 * s.hidden, s.input}, f, true),
         dw_hh = new_device({3 * s.hidden, s.hidden}, f, true),
         db_ih = new_device({3 * s.hidden}, f, true), db_hh = new_device({3 * s.hidden}, f, true),
         dgi = new_device({s.n, 3 * s.hidden}, f, true),
         dgh = new_device({s.n, 3 * s.hidden}, f, true);
  {
    py::gil_scoped_release nogil;
    gru_cell_step_backward(*cuda::kernel_table(), s, dh_next.f32(), a.x->f32(), a.h->f32(),
                           gates.f32(), a.w_ih->f32(), a.w_hh->f32(), dgi->f32(), dgh->f32(),
                           dx->f32(), dh->f32(), dw_ih->f32(), dw_hh->f32(), db_ih->f32(),
                           db_hh->f32());
  }
  return py::make_tuple(wrap(dx), wrap(dh), wrap(dw_ih), wrap(dw_hh), wrap(db_ih), wrap(db_hh));
}

void adamw_step(py::handle p_obj, py::handle g_obj, py::handle m_obj, py::handle v_obj, double lr,
                double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  const char* op = "adamw_step";
  cuda::require();
  const DeviceArray& p = fdev(p_obj, op, "param", -1, true);
  const DeviceArray& g = fdev(g_obj, op, "grad");
  const DeviceArray& m = fdev(m_obj, op, "m", -1, true);
  const DeviceArray& v = fdev(v_obj, op, "v", -1, true);
  require_shape(g, p.shape, op, "grad");
  require_shape(m, p.shape, op, "m");
  require_shape(v, p.shape, op, "v");
  auto check = [&](double x, const char* name, bool ok, const char* want) {
    if (!ok || !std::isfinite(x))
      value_error(op, std::string(name) + " must be " + want + ", got " + std::to_string(x));
  };
  check(lr, "lr", lr >= 0, "finite and >= 0");
  check(beta1, "beta1", beta1 >= 0 && beta1 < 1, "in [0, 1)");
  check(beta2, "beta2", beta2 >= 0 && beta2 < 1, "in [0, 1)");
  check(eps, "eps", eps > 0, "finite and > 0");
  check(weight_decay, "weight_decay", weight_decay >= 0, "finite and >= 0");
  if (step < 1) value_error(op, "step must be >= 1 (the count of updates including this one)");
  AdamWArgs args{lr, beta1, beta2, eps, weight_decay, step, 1.0f};
  py::gil_scoped_release nogil;
  cuda::adamw(p.f32(), g.f32(), m.f32(), v.f32(), p.size(), args);
}

// ---- table kernels without an op (tests reach them through these) ----------

py::object t_embedding_forward(py::handle idx_obj, py::handle wte_obj, py::handle wpe_obj,
                               int64_t b, int64_t t, int64_t pos0) {
  const char* op = "_cuda_embedding_forward";
  cuda::require();
  const DeviceArray& idx = dev(idx_obj, op, "idx");
  if (idx.dtype != ElemType::kInt64)
    throw py::type_error(std::string(op) + ": idx must have dtype int64, got " + type_name(idx.dtype));
  require_shape(idx, {b, t}, op, "idx");
  const DeviceArray& wte = fdev(wte_obj, op, "wte", 2);
  const int64_t c = wte.shape[1];
  // Range checks on the host: this entry point is for tests.
  py::array_t<int64_t> host = to_numpy(idx);
  for (int64_t i = 0; i < idx.size(); ++i)
    if (host.data()[i] < 0 || host.data()[i] >= wte.shape[0]) value_error(op, "idx out of range");
  const float* wpe = nullptr;
  if (!wpe_obj.is_none()) {
    const DeviceArray& pe = fdev(wpe_obj, op, "wpe", 2);
    if (pe.shape[1] != c || pos0 < 0 || pos0 + t > pe.shape[0]) value_error(op, "bad wpe");
    wpe = pe.f32();
  }
  DevPtr out = new_device({b, t, c}, ElemType::kFloat32);
  {
    // Scoped: wrap() below makes a Python object and needs the GIL back.
    py::gil_scoped_release nogil;
    cuda::embedding_forward(static_cast<const int64_t*>(idx.data), wte.f32(), wpe, out->f32(), b,
                            t, c, pos0);
  }
  return wrap(out);
}

void t_embedding_backward(py::handle dout_obj, py::handle idx_obj, py::handle dwte_obj,
                          py::handle dwpe_obj, int64_t pos0) {
  const char* op = "_cuda_embedding_backward";
  cuda::require();
  const DeviceArray& dout = fdev(dout_obj, op, "dout", 3);
  const int64_t b = dout.shape[0], t = dout.shape[1], c = dout.shape[2];
  const DeviceArray& idx = dev(idx_obj, op, "idx");
  if (idx.dtype != ElemType::kInt64)
    throw py::type_error(std::string(op) + ": idx must have dtype int64, got " + type_name(idx.dtype));
  require_shape(idx, {b, t}, op, "idx");
  const DeviceArray& dwte = fdev(dwte_obj, op, "dwte", 2, true);
  if (dwte.shape[1] != c) value_error(op, "bad dwte");
  py::array_t<int64_t> host = to_numpy(idx);
  for (int64_t i = 0; i < idx.size(); ++i)
    if (host.data()[i] < 0 || host.data()[i] >= dwte.shape[0]) value_error(op, "idx out of range");
  float* dwpe = nullptr;
  if (!dwpe_obj.is_none()) {
    const DeviceArray& pe = fdev(dwpe_obj, op, "dwpe", 2, true);
    if (pe.shape[1] != c || pos0 < 0 || pos0 + t > pe.shape[0]) value_error(op, "bad dwpe");
    dwpe = pe.f32();
  }
  {
    py::gil_scoped_release nogil;
    cuda::embedding_backward(dout.f32(), static_cast<const int64_t*>(idx.data), dwte.f32(), dwpe,
                             b, t, c, pos0);
  }
}

// c (m, n) += a (m, k) @ op(b) [+ bias] through a model table's matmul (the
// precision's: "fp32", "tf32", "bf16"), b pre-packed first when `packed`
// and the table packs; the model paths (decoding's few-row products, packed
// bfloat16 weights) are tested through this.
void t_table_matmul(py::handle a_obj, py::handle b_obj, py::handle bias_obj, py::handle c_obj,
                    const std::string& precision, bool trans_b, bool packed) {
  const char* op = "_cuda_table_matmul";
  cuda::require();
  const GemmPrecision p = precision == "fp32"   ? GemmPrecision::kExact
                          : precision == "tf32" ? GemmPrecision::kTF32
                          : precision == "bf16" ? GemmPrecision::kBF16
                                                : (value_error(op, "bad precision"), GemmPrecision::kExact);
  const Kernels& k = *cuda::kernel_table(p);
  const DeviceArray& a = fdev(a_obj, op, "a", 2);
  const DeviceArray& b = fdev(b_obj, op, "b", 2);
  const DeviceArray& c = fdev(c_obj, op, "c", 2, true);
  GemmArgs g;
  g.m = a.shape[0], g.k = a.shape[1], g.n = trans_b ? b.shape[0] : b.shape[1];
  require_shape(b, trans_b ? Shape{g.n, g.k} : Shape{g.k, g.n}, op, "b");
  require_shape(c, {g.m, g.n}, op, "c");
  if (!bias_obj.is_none()) {
    const DeviceArray& bias = fdev(bias_obj, op, "bias", 1);
    require_shape(bias, {g.n}, op, "bias");
    g.bias = bias.f32();
  }
  g.a = a.f32(), g.b = b.f32(), g.c = c.f32();
  g.lda = g.k, g.ldb = trans_b ? g.k : g.n, g.ldc = g.n;
  g.trans_b = trans_b, g.accumulate = true;
  py::gil_scoped_release nogil;
  cuda::Scratch pack(sizeof(float) * (packed ? k.matmul_packed_size(g.n, g.k) : 0));
  if (packed && k.matmul_packed_size(g.n, g.k)) {
    k.matmul_pack_b(g, pack.as<float>());
    g.b_packed = pack.as<float>();
  }
  k.matmul(g);
}

void bind_table_kernels(py::module_& m) {
  using py::arg;
  m.def("_cuda_table_matmul", &t_table_matmul, arg("a"), arg("b"), arg("bias"), arg("c"),
        arg("precision"), arg("trans_b"), arg("packed"));
  m.def("_cuda_embedding_forward", &t_embedding_forward, arg("idx"), arg("wte"), arg("wpe"),
        arg("b"), arg("t"), arg("pos0"));
  m.def("_cuda_embedding_backward", &t_embedding_backward, arg("dout"), arg("idx"), arg("dwte"),
        arg("dwpe"), arg("pos0"));
  m.def("_cuda_residual", [](py::handle a_obj, py::handle b_obj) {
    cuda::require();
    const DeviceArray& a = fdev(a_obj, "_cuda_residual", "a");
    const DeviceArray& b = fdev(b_obj, "_cuda_residual", "b");
    require_shape(b, a.shape, "_cuda_residual", "b");
    DevPtr out = new_device(a.shape, ElemType::kFloat32);
    cuda::residual_forward(a.f32(), b.f32(), out->f32(), a.size());
    return wrap(out);
  });
  m.def("_cuda_sum_squares", [](py::handle x_obj) {
    cuda::require();
    const DeviceArray& x = fdev(x_obj, "_cuda_sum_squares", "x");
    py::gil_scoped_release nogil;
    return cuda::sum_squares(x.f32(), x.size());
  });
  m.def("_cuda_bias_backward", [](py::handle dout_obj, py::handle dbias_obj) {
    cuda::require();
    const DeviceArray& dout = fdev(dout_obj, "_cuda_bias_backward", "dout", 2);
    const DeviceArray& db = fdev(dbias_obj, "_cuda_bias_backward", "dbias", 1, true);
    require_shape(db, {dout.shape[1]}, "_cuda_bias_backward", "dbias");
    cuda::bias_backward(dout.f32(), db.f32(), dout.shape[0], dout.shape[1]);
  });
  m.def("_cuda_sgd", [](py::handle p_obj, py::handle g_obj, py::handle buf_obj, float lr,
                        float momentum, float weight_decay, float grad_scale, bool first_step) {
    cuda::require();
    const DeviceArray& p = fdev(p_obj, "_cuda_sgd", "param", -1, true);
    const DeviceArray& g = fdev(g_obj, "_cuda_sgd", "grad");
    const DeviceArray& buf = fdev(buf_obj, "_cuda_sgd", "buf", -1, true);
    require_shape(g, p.shape, "_cuda_sgd", "grad");
    require_shape(buf, p.shape, "_cuda_sgd", "buf");
    SgdArgs a;
    a.lr = lr;
    a.momentum = momentum;
    a.weight_decay = weight_decay;
    a.grad_scale = grad_scale;
    a.first_step = first_step;
    cuda::sgd(p.f32(), g.f32(), buf.f32(), p.size(), a);
  });
  m.def("_cuda_zero", [](py::handle x_obj) {
    cuda::require();
    const DeviceArray& x = fdev(x_obj, "_cuda_zero", "x", -1, true);
    cuda::zero(x.f32(), x.size());
  });
  m.def("_cuda_copy", [](py::handle dst_obj, py::handle src_obj) {
    cuda::require();
    const DeviceArray& dst = fdev(dst_obj, "_cuda_copy", "dst", -1, true);
    const DeviceArray& src = fdev(src_obj, "_cuda_copy", "src");
    require_shape(src, dst.shape, "_cuda_copy", "src");
    cuda::copy(dst.f32(), src.f32(), dst.size());
  });
}

void bind_device_array(py::module_& m) {
  py::class_<DeviceArray, DevPtr>(m, "DeviceArray", R"doc(
An array in GPU memory: C-contiguous, dtype float32, bfloat16, int32 or int64.

Make one with fastlm.to_device(numpy_array); fastlm.ops return them for GPU
inputs. It exports __cuda_array_interface__ (except bfloat16, which has no
type string there), so torch.as_tensor(x, device="cuda") and cupy.asarray(x)
view it without a copy. .numpy() copies it back (bfloat16 as float32).
)doc")
      .def(py::init([](py::handle shape, py::handle dtype) {
             return new_device(shape_from(shape), parse_type(dtype_name(dtype)), true);
           }),
           py::arg("shape"), py::arg("dtype") = "float32",
           "A zero-filled array of `shape` and `dtype` on the GPU.")
      .def_static("empty",
                  [](py::handle shape, py::handle dtype) {
                    return new_device(shape_from(shape), parse_type(dtype_name(dtype)), false);
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
               (a.owner.is_none() ? "" : ", borrowed") + ")";
      });
}

}  // namespace

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
  m.def("cuda_matmul", &matmul, arg("a"), arg("b"), arg("trans_a"), arg("trans_b"), arg("bias"),
        arg("precision"));
  m.def("_cuda_gemm", &gemm_raw, arg("a"), arg("b"), arg("c"), arg("bias"), arg("m"), arg("n"),
        arg("k"), arg("lda"), arg("ldb"), arg("ldc"), arg("trans_a"), arg("trans_b"),
        arg("accumulate"), arg("tf32"), arg("offset_a"), arg("offset_b"), arg("offset_c"));
  m.def("cuda_softmax", &softmax, arg("x"));
  m.def("cuda_softmax_backward", &softmax_backward, arg("dy"), arg("y"));
  m.def("cuda_layernorm", &layernorm, arg("x"), arg("weight"), arg("bias"), arg("eps"));
  m.def("cuda_layernorm_backward", &layernorm_backward, arg("dy"), arg("x"), arg("weight"),
        arg("mean"), arg("rstd"));
  m.def("cuda_gelu", &gelu, arg("x"), arg("exact") = false);
  m.def("cuda_gelu_backward", &gelu_backward, arg("dy"), arg("x"), arg("exact") = false);
  m.def("cuda_attention", &attention, arg("q"), arg("k"), arg("v"), arg("causal"),
        arg("dropout") = 0.f, arg("dropout_seed") = 0);
  m.def("cuda_attention_backward", &attention_backward, arg("dout"), arg("q"), arg("k"), arg("v"),
        arg("out"), arg("lse"), arg("causal"), arg("dropout") = 0.f, arg("dropout_seed") = 0);
  m.def("cuda_cross_entropy", &cross_entropy, arg("logits"), arg("targets"), arg("ignore_index"),
        arg("out"), arg("compute_grad"));
  m.def("cuda_lstm_cell", &lstm_cell, arg("x"), arg("h"), arg("c"), arg("w_ih"), arg("w_hh"),
        arg("b_ih"), arg("b_hh"));
  m.def("cuda_lstm_cell_backward", &lstm_cell_backward, arg("dh_next"), arg("dc_next"), arg("x"),
        arg("h"), arg("c"), arg("c_next"), arg("gates"), arg("w_ih"), arg("w_hh"));
  m.def("cuda_gru_cell", &gru_cell, arg("x"), arg("h"), arg("w_ih"), arg("w_hh"), arg("b_ih"),
        arg("b_hh"));
  m.def("cuda_gru_cell_backward", &gru_cell_backward, arg("dh_next"), arg("x"), arg("h"),
        arg("gates"), arg("w_ih"), arg("w_hh"));
  m.def("cuda_adamw_step", &adamw_step, arg("param"), arg("grad"), arg("m"), arg("v"), arg("lr"),
        arg("beta1"), arg("beta2"), arg("eps"), arg("weight_decay"), arg("step"));
  bind_table_kernels(m);
  bind_device_shape(m);
  extend_build_info(m, true);
}

#else  // no CUDA in this build

namespace {
struct StubDeviceArray {};
const char* kNoCuda =
    "fastlm was built without CUDA (FASTLM_CUDA=OFF, or no nvcc when it was built)";
}  // namespace

void bind_device(py::module_& m) {
  py::class_<StubDeviceArray>(m, "DeviceArray",
                              "GPU arrays; this build has no CUDA, so none can be made.")
      .def(py::init([](py::args, py::kwargs) -> StubDeviceArray* {
        throw std::runtime_error(kNoCuda);
      }));
  m.def("cuda_available", [] { return false; });
  m.def("cuda_unavailable_reason", [] { return std::string(kNoCuda); });
  bind_device_shape(m);
  extend_build_info(m, false);
}

#endif

}  // namespace bindings
}  // namespace fastlm
