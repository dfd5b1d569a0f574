// The GEMM ops: ops.matmul, and for the tests the paths it does not reach
// (_matmul_into: accumulate and pre-packed B; _cuda_gemm: every GemmArgs
// field; _cuda_table_matmul: a model table's matmul). Every device, one table.
#include <pybind11/pybind11.h>

#include <string>

#include "bindings/op_args.h"
#include "cpu/dispatch.h"

namespace fastlm {
namespace bindings {

namespace {

// Memory of a table for the length of a call (packed operands).
struct TableBuffer {
  const Kernels& k;
  void* p;
  TableBuffer(const Kernels& kt, int64_t bytes) : k(kt), p(kt.alloc(bytes)) {}
  ~TableBuffer() { k.release(p); }
  TableBuffer(const TableBuffer&) = delete;
  TableBuffer& operator=(const TableBuffer&) = delete;
};

// The arithmetic `precision` asks of a GEMM on the call's device.
GemmPrecision gemm_precision(const OpCall& c, const std::string& precision, bool bf16_data) {
  const char* op = c.op();
  if (c.device() == Device::kCpu) {
    // "highest" and "tf32" are float32 on the CPU; "bf16" rounds a and b.
    if (precision == "bf16") {
      const std::string isa = cpu::kernels().name;
      if (isa != "avx512bf16")
        value_error(op, "precision 'bf16' needs the avx512bf16 CPU ISA (AVX512_BF16); the "
                        "active CPU ISA is '" + isa + "'");
      return GemmPrecision::kBF16;
    }
    if (precision != "highest" && precision != "tf32")
      value_error(op, "precision must be 'highest', 'tf32' or 'bf16', got '" + precision + "'");
    return GemmPrecision::kExact;
  }
  if (precision == "bf16")
    value_error(op, "precision 'bf16' is for float32 CPU arrays; on a GPU pass bfloat16 arrays");
  if (precision != "highest" && precision != "tf32" && precision != "bfloat16")
    value_error(op, "precision must be 'highest' or 'tf32', got '" + precision + "'");
  if (bf16_data) return GemmPrecision::kBF16;
  return precision == "tf32" ? GemmPrecision::kTF32 : GemmPrecision::kExact;
}

// A checked GEMM of a and b (and bias), arguments of c; the tensors keep the
// pointers in g alive.
struct GemmCall {
  Tensor a, b, bias;
  GemmArgs g;
};

GemmCall gemm_call(const OpCall& c, bool trans_a, bool trans_b, const std::string& precision) {
  const char* op = c.op();
  GemmCall call;
  GemmArgs& g = call.g;
  if (c.device() == Device::kCpu) g.precision = gemm_precision(c, precision, false);
  call.a = c.floats("a", 2, false, true);
  call.b = c.floats("b", 2, false, true);
  const Tensor &a = call.a, &b = call.b;
  require_same_type(b, a, op, "b", "a");
  const int64_t m = trans_a ? a.shape[1] : a.shape[0], ka = trans_a ? a.shape[0] : a.shape[1];
  const int64_t kb = trans_b ? b.shape[1] : b.shape[0], n = trans_b ? b.shape[0] : b.shape[1];
  if (ka != kb)
    value_error(op, "inner dimensions differ: op(a) is " + shape_str({m, ka}) + ", op(b) is " +
                        shape_str({kb, n}));
  if (c.has("bias")) {
    call.bias = c.floats("bias", 1, false, true);
    require_same_type(call.bias, a, op, "bias", "a");
    require_shape(call.bias, {n}, op, "bias");
    g.bias = call.bias.f();
  }
  const bool bf16 = a.dtype == ElemType::kBFloat16;
  if (c.device() != Device::kCpu) g.precision = gemm_precision(c, precision, bf16);
  g.dtype = bf16 ? DType::kBFloat16 : DType::kFloat32;
  g.a = a.f();
  g.b = b.f();
  g.m = m;
  g.n = n;
  g.k = ka;
  g.lda = a.shape[1];
  g.ldb = b.shape[1];
  g.ldc = n;
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  return call;
}

py::object matmul(py::handle a_obj, py::handle b_obj, bool trans_a, bool trans_b,
                  py::handle bias_obj, const std::string& precision) {
  OpCall c("matmul", {{"a", a_obj}, {"b", b_obj}, {"bias", bias_obj}});
  GemmCall call = gemm_call(c, trans_a, trans_b, precision);
  const Kernels& k = c.kernels();
  Tensor out;
  py::object c_obj = c.output({call.g.m, call.g.n}, &out, false, call.a.dtype);
  call.g.c = out.mf();
  if (call.g.m && call.g.n) {
    py::gil_scoped_release nogil;
    k.gemm(call.g);
  }
  return c_obj;
}

// For the tests: c (m, n) [+]= op(a) @ op(b) [+ bias] through the table's
// matmul, optionally with op(b) packed first by matmul_pack_b.
void matmul_into(py::handle c_obj, py::handle a_obj, py::handle b_obj, bool trans_a, bool trans_b,
                 py::handle bias_obj, const std::string& precision, bool accumulate, bool prepack) {
  OpCall c("_matmul_into", {{"c", c_obj}, {"a", a_obj}, {"b", b_obj}, {"bias", bias_obj}});
  GemmCall call = gemm_call(c, trans_a, trans_b, precision);
  GemmArgs& g = call.g;
  const Tensor out = c.floats("c", 2, true);
  require_shape(out, {g.m, g.n}, c.op(), "c");
  g.c = out.mf();
  g.accumulate = accumulate;
  const Kernels& kt = c.kernels();
  TableBuffer packed(kt, prepack ? (int64_t)sizeof(float) * kt.matmul_packed_size(g.n, g.k) : 0);
  py::gil_scoped_release nogil;
  if (prepack) {
    kt.matmul_pack_b(g, static_cast<float*>(packed.p));
    g.b_packed = static_cast<float*>(packed.p);
  }
  if (g.m && g.n) kt.matmul(g);
}

// Every GemmArgs field, for the tests: row strides, base offsets (in
// elements), accumulate, and float32 c over bfloat16 operands (c_float, when
// a is bfloat16 and c float32). Each matrix must lie inside its array.
void gemm_raw(py::handle a_obj, py::handle b_obj, py::handle c_obj, py::handle bias_obj,
              int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
              bool trans_a, bool trans_b, bool accumulate, bool tf32, int64_t offset_a,
              int64_t offset_b, int64_t offset_c) {
  OpCall call("_cuda_gemm", {{"a", a_obj}, {"b", b_obj}, {"c", c_obj}, {"bias", bias_obj}});
  const char* op = call.op();
  const Tensor a = call.floats("a", -1, false, true), b = call.floats("b", -1, false, true),
               c = call.floats("c", -1, true, true);
  require_same_type(b, a, op, "b", "a");
  const bool c_float = a.dtype == ElemType::kBFloat16 && c.dtype == ElemType::kFloat32;
  if (!c_float) require_same_type(c, a, op, "c", "a");
  if (m < 0 || n < 0 || k < 0) value_error(op, "m, n and k must be >= 0");
  // Stored (rows, cols) of each matrix, its row stride and offset.
  auto inside = [&](const Tensor& x, const char* name, int64_t rows, int64_t cols, int64_t ld,
                    int64_t offset) {
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
  GemmArgs g;
  if (call.has("bias")) {
    const Tensor bias = call.floats("bias", 1, false, true);
    require_same_type(bias, c, op, "bias", "c");
    require_shape(bias, {n}, op, "bias");
    g.bias = bias.f();
  }
  const bool bf16 = a.dtype == ElemType::kBFloat16;
  g.precision = bf16 ? GemmPrecision::kBF16 : tf32 ? GemmPrecision::kTF32 : GemmPrecision::kExact;
  g.dtype = bf16 ? DType::kBFloat16 : DType::kFloat32;
  g.c_float = c_float;
  const int64_t es = type_size(a.dtype), ces = type_size(c.dtype);
  g.a = reinterpret_cast<const float*>(static_cast<const char*>(a.data) + offset_a * es);
  g.b = reinterpret_cast<const float*>(static_cast<const char*>(b.data) + offset_b * es);
  g.c = reinterpret_cast<float*>(static_cast<char*>(c.data) + offset_c * ces);
  g.m = m, g.n = n, g.k = k, g.lda = lda, g.ldb = ldb, g.ldc = ldc;
  g.trans_a = trans_a, g.trans_b = trans_b, g.accumulate = accumulate;
  const Kernels& kt = call.kernels();
  py::gil_scoped_release nogil;
  kt.gemm(g);
}

// c (m, n) += a (m, k) @ op(b) [+ bias] through a model table's matmul (the
// precision's: "fp32", "tf32", "bf16"), b pre-packed first when `packed`
// and the table packs; the model paths (decoding's few-row products, packed
// bfloat16 weights) are tested through this. The arrays must be on the
// device models get for device="cuda" (the emulated one under
// FASTLM_EMULATE_CUDA=1).
void table_matmul(py::handle a_obj, py::handle b_obj, py::handle bias_obj, py::handle c_obj,
                  const std::string& precision, bool trans_b, bool packed) {
  OpCall call("_cuda_table_matmul", {{"a", a_obj}, {"b", b_obj}, {"bias", bias_obj}, {"c", c_obj}});
  const char* op = call.op();
  const Kernels& k = model_backend(op, "cuda", precision);
  if (call.device() != (cuda_emulated() ? Device::kEmulated : Device::kCuda))
    value_error(op, "a, b, bias and c must be device arrays of the device the models of "
                    "device='cuda' run on");
  const Tensor a = call.floats("a", 2), b = call.floats("b", 2), c = call.floats("c", 2, true);
  GemmArgs g;
  g.m = a.shape[0], g.k = a.shape[1], g.n = trans_b ? b.shape[0] : b.shape[1];
  require_shape(b, trans_b ? Shape{g.n, g.k} : Shape{g.k, g.n}, op, "b");
  require_shape(c, {g.m, g.n}, op, "c");
  Tensor bias;
  if (call.has("bias")) {
    bias = call.floats("bias", 1);
    require_shape(bias, {g.n}, op, "bias");
    g.bias = bias.f();
  }
  g.a = a.f(), g.b = b.f(), g.c = c.mf();
  g.lda = g.k, g.ldb = trans_b ? g.k : g.n, g.ldc = g.n;
  g.trans_b = trans_b, g.accumulate = true;
  py::gil_scoped_release nogil;
  TableBuffer pack(k, (int64_t)sizeof(float) * (packed ? k.matmul_packed_size(g.n, g.k) : 0));
  if (packed && k.matmul_packed_size(g.n, g.k)) {
    k.matmul_pack_b(g, static_cast<float*>(pack.p));
    g.b_packed = static_cast<float*>(pack.p);
  }
  k.matmul(g);
}

}  // namespace

void bind_gemm_ops(py::module_& m) {
  using py::arg;
  m.def("matmul", &matmul, arg("a"), arg("b"), arg("trans_a"), arg("trans_b"), arg("bias"),
        arg("precision") = "highest");
  m.def("_matmul_into", &matmul_into, arg("c"), arg("a"), arg("b"), arg("trans_a"), arg("trans_b"),
        arg("bias"), arg("precision"), arg("accumulate"), arg("prepack"));
  m.def("_cuda_gemm", &gemm_raw, arg("a"), arg("b"), arg("c"), arg("bias"), arg("m"), arg("n"),
        arg("k"), arg("lda"), arg("ldb"), arg("ldc"), arg("trans_a"), arg("trans_b"),
        arg("accumulate"), arg("tf32"), arg("offset_a"), arg("offset_b"), arg("offset_c"));
  m.def("_cuda_table_matmul", &table_matmul, arg("a"), arg("b"), arg("bias"), arg("c"),
        arg("precision"), arg("trans_b"), arg("packed"));
}

}  // namespace bindings
}  // namespace fastlm
