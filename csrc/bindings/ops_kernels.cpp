// Table kernels without an op of their own, bound for the tests (the names
// say _cuda_ for where they began; they run on any device's arrays): the
// embedding, residual add, sum of squares, bias gradient, SGD, zero, copy.
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "bindings/op_args.h"

namespace fastlm {
namespace bindings {

namespace {

// Range checks of ids on the host: these entry points are for tests.
void check_ids(const OpCall& c, const Tensor& idx, int64_t vocab) {
  std::vector<int64_t> host((size_t)idx.size());
  c.kernels().download(host.data(), idx.data, (int64_t)idx.nbytes());
  for (int64_t v : host)
    if (v < 0 || v >= vocab) value_error(c.op(), "idx out of range");
}

py::object embedding_forward(py::handle idx_obj, py::handle wte_obj, py::handle wpe_obj,
                             int64_t b, int64_t t, int64_t pos0) {
  OpCall c("_cuda_embedding_forward", {{"idx", idx_obj}, {"wte", wte_obj}, {"wpe", wpe_obj}});
  const char* op = c.op();
  const Kernels& k = c.kernels();
  const Tensor idx = c.indices("idx", -1, true);
  require_shape(idx, {b, t}, op, "idx");
  const Tensor wte = c.floats("wte", 2);
  const int64_t ch = wte.shape[1];
  check_ids(c, idx, wte.shape[0]);
  Tensor wpe;
  if (c.has("wpe")) {
    wpe = c.floats("wpe", 2);
    if (wpe.shape[1] != ch || pos0 < 0 || pos0 + t > wpe.shape[0]) value_error(op, "bad wpe");
  }
  Tensor out;
  py::object out_obj = c.output({b, t, ch}, &out);
  {
    py::gil_scoped_release nogil;
    k.embedding_forward(static_cast<const int64_t*>(idx.data), wte.f(), wpe.f(), out.mf(), b, t,
                        ch, pos0);
  }
  return out_obj;
}

void embedding_backward(py::handle dout_obj, py::handle idx_obj, py::handle dwte_obj,
                        py::handle dwpe_obj, int64_t pos0) {
  OpCall c("_cuda_embedding_backward",
           {{"dout", dout_obj}, {"idx", idx_obj}, {"dwte", dwte_obj}, {"dwpe", dwpe_obj}});
  const char* op = c.op();
  const Kernels& k = c.kernels();
  const Tensor dout = c.floats("dout", 3);
  const int64_t b = dout.shape[0], t = dout.shape[1], ch = dout.shape[2];
  const Tensor idx = c.indices("idx", -1, true);
  require_shape(idx, {b, t}, op, "idx");
  const Tensor dwte = c.floats("dwte", 2, true);
  if (dwte.shape[1] != ch) value_error(op, "bad dwte");
  check_ids(c, idx, dwte.shape[0]);
  Tensor dwpe;
  if (c.has("dwpe")) {
    dwpe = c.floats("dwpe", 2, true);
    if (dwpe.shape[1] != ch || pos0 < 0 || pos0 + t > dwpe.shape[0]) value_error(op, "bad dwpe");
  }
  py::gil_scoped_release nogil;
  k.embedding_backward(dout.f(), static_cast<const int64_t*>(idx.data), dwte.mf(), dwpe.mf(), b,
                       t, ch, pos0);
}

}  // namespace

void bind_table_kernel_ops(py::module_& m) {
  using py::arg;
  m.def("_cuda_embedding_forward", &embedding_forward, arg("idx"), arg("wte"), arg("wpe"),
        arg("b"), arg("t"), arg("pos0"));
  m.def("_cuda_embedding_backward", &embedding_backward, arg("dout"), arg("idx"), arg("dwte"),
        arg("dwpe"), arg("pos0"));
  m.def("_cuda_residual", [](py::handle a_obj, py::handle b_obj) {
    OpCall c("_cuda_residual", {{"a", a_obj}, {"b", b_obj}});
    const Kernels& k = c.kernels();
    const Tensor a = c.floats("a"), b = c.floats("b");
    require_shape(b, a.shape, c.op(), "b");
    Tensor out;
    py::object out_obj = c.output(a.shape, &out);
    k.residual_forward(a.f(), b.f(), out.mf(), a.size());
    return out_obj;
  });
  m.def("_cuda_sum_squares", [](py::handle x_obj) {
    OpCall c("_cuda_sum_squares", {{"x", x_obj}});
    const Kernels& k = c.kernels();
    const Tensor x = c.floats("x");
    py::gil_scoped_release nogil;
    return k.sum_squares(x.f(), x.size());
  });
  // The GEMM's bias gradient: dbias (cols) += column sums of dout (rows, cols).
  auto bias_backward = [](const char* op, bool release_gil) {
    return [op, release_gil](py::handle dout_obj, py::handle dbias_obj) {
      OpCall c(op, {{"dout", dout_obj}, {"dbias", dbias_obj}});
      const Kernels& k = c.kernels();
      const Tensor dout = c.floats("dout", 2), db = c.floats("dbias", 1, true);
      require_shape(db, {dout.shape[1]}, op, "dbias");
      if (!release_gil) return k.bias_backward(dout.f(), db.mf(), dout.shape[0], dout.shape[1]);
      py::gil_scoped_release nogil;
      k.bias_backward(dout.f(), db.mf(), dout.shape[0], dout.shape[1]);
    };
  };
  m.def("_bias_backward", bias_backward("_bias_backward", true), arg("dout"), arg("dbias"));
  m.def("_cuda_bias_backward", bias_backward("_cuda_bias_backward", false));
  m.def("_cuda_sgd", [](py::handle p_obj, py::handle g_obj, py::handle buf_obj, float lr,
                        float momentum, float weight_decay, float grad_scale, bool first_step) {
    OpCall c("_cuda_sgd", {{"param", p_obj}, {"grad", g_obj}, {"buf", buf_obj}});
    const Kernels& k = c.kernels();
    const Tensor p = c.floats("param", -1, true), g = c.floats("grad"),
                 buf = c.floats("buf", -1, true);
    require_shape(g, p.shape, c.op(), "grad");
    require_shape(buf, p.shape, c.op(), "buf");
    const SgdArgs a{lr, momentum, weight_decay, grad_scale, first_step};
    k.sgd(p.mf(), g.f(), buf.mf(), p.size(), a);
  });
  m.def("_cuda_zero", [](py::handle x_obj) {
    OpCall c("_cuda_zero", {{"x", x_obj}});
    const Kernels& k = c.kernels();
    const Tensor x = c.floats("x", -1, true);
    k.zero(x.mf(), x.size());
  });
  m.def("_cuda_copy", [](py::handle dst_obj, py::handle src_obj) {
    OpCall c("_cuda_copy", {{"dst", dst_obj}, {"src", src_obj}});
    const Kernels& k = c.kernels();
    const Tensor dst = c.floats("dst", -1, true), src = c.floats("src");
    require_shape(src, dst.shape, c.op(), "src");
    k.copy(dst.mf(), src.f(), dst.size());
  });
}

}  // namespace bindings
}  // namespace fastlm
