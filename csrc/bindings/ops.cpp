// fastlm._C op bindings, one per op for every device: wrap and check the
// arrays once (op_args.h), allocate outputs on their device, release the GIL,
// call that device's kernel table. python/fastlm/ops.py documents each op.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <string>

#include "bindings/op_args.h"
#include "cpu/dispatch.h"
#include "model/rnn_cell.h"

namespace fastlm {
namespace bindings {

void bind_gemm_ops(py::module_& m);          // ops_gemm.cpp: matmul and the GEMM test entries
void bind_table_kernel_ops(py::module_& m);  // ops_kernels.cpp: table kernels without an op

namespace {

py::object softmax(py::handle x_obj) {
  OpCall c("softmax", {{"x", x_obj}});
  const Tensor x = c.floats("x");
  int64_t rows, cols;
  rows_cols(x, c.op(), "x", &rows, &cols);
  const Kernels& k = c.kernels();
  Tensor y;
  py::object out = c.output(x.shape, &y);
  {
    py::gil_scoped_release nogil;
    k.softmax_forward(x.f(), y.mf(), rows, cols);
  }
  return out;
}

py::object softmax_backward(py::handle dy_obj, py::handle y_obj) {
  OpCall c("softmax_backward", {{"dy", dy_obj}, {"y", y_obj}});
  const Tensor y = c.floats("y");
  const Tensor dy = c.floats("dy");
  require_shape(dy, y.shape, c.op(), "dy");
  int64_t rows, cols;
  rows_cols(y, c.op(), "y", &rows, &cols);
  const Kernels& k = c.kernels();
  Tensor dx;
  py::object out = c.output(y.shape, &dx, true);
  {
    py::gil_scoped_release nogil;
    k.softmax_backward(dy.f(), y.f(), dx.mf(), rows, cols);
  }
  return out;
}

// LayerNorm normalises x's last axis: it must hold at least one element
// whenever there is a row to normalise (else mean and rstd are undefined).
void check_norm_axis(const char* op, const Tensor& x) {
  if (x.shape.empty() || x.shape.back() != 0) return;
  Shape lead = x.shape;
  lead.pop_back();
  if (numel(lead) > 0)
    value_error(op, "x's last axis (the one normalised over) must have size >= 1, got x of "
                    "shape " + shape_str(x.shape));
}

py::tuple layernorm(py::handle x_obj, py::handle w_obj, py::handle b_obj, double eps) {
  OpCall c("layernorm", {{"x", x_obj}, {"weight", w_obj}, {"bias", b_obj}});
  const char* op = c.op();
  const Tensor x = c.floats("x");
  check_norm_axis(op, x);
  int64_t rows, cols;
  rows_cols(x, op, "x", &rows, &cols);
  const Tensor w = c.floats("weight", 1), b = c.floats("bias", 1);
  require_shape(w, {cols}, op, "weight");
  require_shape(b, {cols}, op, "bias");
  if (!(eps >= 0) || !std::isfinite(eps)) value_error(op, "eps must be finite and >= 0");
  Shape stat = x.shape;
  stat.pop_back();
  const Kernels& k = c.kernels();
  Tensor y, mean, rstd;
  py::object y_out = c.output(x.shape, &y), mean_out = c.output(stat, &mean),
             rstd_out = c.output(stat, &rstd);
  {
    py::gil_scoped_release nogil;
    k.layernorm_forward(x.f(), w.f(), b.f(), y.mf(), mean.mf(), rstd.mf(), rows, cols,
                        (float)eps);
  }
  return py::make_tuple(y_out, mean_out, rstd_out);
}

py::tuple layernorm_backward(py::handle dy_obj, py::handle x_obj, py::handle w_obj,
                             py::handle mean_obj, py::handle rstd_obj) {
  OpCall c("layernorm_backward", {{"dy", dy_obj}, {"x", x_obj}, {"weight", w_obj},
                                  {"mean", mean_obj}, {"rstd", rstd_obj}});
  const char* op = c.op();
  const Tensor x = c.floats("x");
  check_norm_axis(op, x);
  int64_t rows, cols;
  rows_cols(x, op, "x", &rows, &cols);
  const Tensor dy = c.floats("dy");
  require_shape(dy, x.shape, op, "dy");
  const Tensor w = c.floats("weight", 1);
  require_shape(w, {cols}, op, "weight");
  Shape stat = x.shape;
  stat.pop_back();
  const Tensor mean = c.floats("mean"), rstd = c.floats("rstd");
  require_shape(mean, stat, op, "mean");
  require_shape(rstd, stat, op, "rstd");
  const Kernels& k = c.kernels();
  // dx is written, not accumulated: no zero fill needed.
  Tensor dx, dw, db;
  py::object dx_out = c.output(x.shape, &dx), dw_out = c.output({cols}, &dw, true),
             db_out = c.output({cols}, &db, true);
  {
    py::gil_scoped_release nogil;
    k.layernorm_backward_write(dy.f(), x.f(), w.f(), mean.f(), rstd.f(), dx.mf(), dw.mf(),
                               db.mf(), rows, cols);
  }
  return py::make_tuple(dx_out, dw_out, db_out);
}

// exact: the erf GELU instead of the tanh approximation.
py::object gelu(py::handle x_obj, bool exact) {
  OpCall c("gelu", {{"x", x_obj}});
  const Tensor x = c.floats("x");
  const Kernels& k = c.kernels();
  Tensor y;
  py::object out = c.output(x.shape, &y);
  {
    py::gil_scoped_release nogil;
    (exact ? k.gelu_erf_forward : k.gelu_forward)(x.f(), y.mf(), x.size());
  }
  return out;
}

py::object gelu_backward(py::handle dy_obj, py::handle x_obj, bool exact) {
  OpCall c("gelu_backward", {{"dy", dy_obj}, {"x", x_obj}});
  const Tensor x = c.floats("x");
  const Tensor dy = c.floats("dy");
  require_shape(dy, x.shape, c.op(), "dy");
  const Kernels& k = c.kernels();
  Tensor dx;
  py::object out = c.output(x.shape, &dx);
  {
    py::gil_scoped_release nogil;
    (exact ? k.gelu_erf_backward : k.gelu_backward)(dy.f(), x.f(), dx.mf(), x.size());
  }
  return out;
}

// p in [0, 1) for the dropout of `op`, else ValueError naming the argument.
float dropout_p(double p, const char* op, const char* name) {
  if (!(p >= 0.0 && p < 1.0))
    value_error(op, std::string(name) + " must be in [0, 1), got " + std::to_string(p));
  return (float)p;
}

// The forward and the backward are one kernel (the mask is regenerated);
// op and name say which was called, for the errors.
py::object dropout(py::handle x_obj, double p, uint64_t seed, const char* op, const char* name) {
  OpCall c(op, {{name, x_obj}});
  const Tensor x = c.floats(name);
  const float pf = dropout_p(p, op, "p");
  const Kernels& k = c.kernels();
  Tensor y;
  py::object out = c.output(x.shape, &y);
  {
    py::gil_scoped_release nogil;
    k.dropout(x.f(), y.mf(), x.size(), pf, seed);
  }
  return out;
}

Strides contiguous_bhtd(const Shape& s) { return {s[1] * s[2] * s[3], s[2] * s[3], s[3]}; }

// head_dim on CUDA (the emulated device included, which stands for a GPU).
constexpr int64_t kMaxCudaHeadDim = 128;

AttentionArgs attention_args(const OpCall& c, const Tensor& q, const Tensor& k, const Tensor& v,
                             bool causal, double dropout, uint64_t dropout_seed) {
  const char* op = c.op();
  require_same_type(k, q, op, "k", "q");
  require_same_type(v, q, op, "v", "q");
  const Shape &sq = q.shape, &sk = k.shape;
  require_shape(v, sk, op, "v");
  if (sk[0] != sq[0] || sk[1] != sq[1] || sk[3] != sq[3])
    value_error(op, "k " + shape_str(sk) + " does not match q " + shape_str(sq) +
                        " in batch, heads or head dim");
  if (sq[3] < 1) value_error(op, "head dim must be >= 1");
  if (c.device() != Device::kCpu && sq[3] > kMaxCudaHeadDim)
    value_error(op, "head dim must be <= " + std::to_string(kMaxCudaHeadDim) + " on CUDA, got " +
                        std::to_string(sq[3]));
  AttentionArgs a;
  a.dtype = q.dtype == ElemType::kBFloat16 ? DType::kBFloat16 : DType::kFloat32;
  a.q = q.f();
  a.k = k.f();
  a.v = v.f();
  a.sq = a.so = contiguous_bhtd(sq);
  a.sk = a.sv = contiguous_bhtd(sk);
  a.batch = sq[0];
  a.heads = sq[1];
  a.seq_q = sq[2];
  a.seq_k = sk[2];
  a.head_dim = sq[3];
  a.causal = causal;
  a.dropout_p = dropout_p(dropout, op, "dropout");
  a.dropout_seed = dropout_seed;
  return a;
}

// The table whose attention runs `precision`: "fp32", the call's device's;
// "bf16" (float32 CPU arrays only), a mixed table of the avx512bf16 CPU ISA
// whose QK and PV products take bfloat16 operands.
const Kernels& attention_table(const OpCall& c, const std::string& precision) {
  if (precision == "fp32") return c.kernels();
  if (precision != "bf16")
    value_error(c.op(), "precision must be 'fp32' or 'bf16', got '" + precision + "'");
  if (c.device() != Device::kCpu)
    value_error(c.op(), "precision 'bf16' is for float32 CPU arrays; on a GPU pass bfloat16 arrays");
  const std::string isa = cpu::kernels().name;
  if (isa != "avx512bf16")
    value_error(c.op(), "precision 'bf16' needs the avx512bf16 CPU ISA (AVX512_BF16); the active "
                        "CPU ISA is '" + isa + "'");
  return cpu::kernels_for(GemmPrecision::kBF16, /*bf16_attention=*/true);
}

py::tuple attention(py::handle q_obj, py::handle k_obj, py::handle v_obj, bool causal,
                    double dropout, uint64_t dropout_seed, const std::string& precision) {
  OpCall c("attention", {{"q", q_obj}, {"k", k_obj}, {"v", v_obj}});
  const Kernels& kt = attention_table(c, precision);
  const Tensor q = c.floats("q", 4, false, true), k = c.floats("k", 4, false, true),
               v = c.floats("v", 4, false, true);
  AttentionArgs a = attention_args(c, q, k, v, causal, dropout, dropout_seed);
  if (a.seq_k < 1 && a.seq_q > 0) value_error(c.op(), "k and v must hold at least one position");
  Tensor out, lse;
  py::object out_obj = c.output(q.shape, &out, false, q.dtype),
             lse_obj = c.output({a.batch, a.heads, a.seq_q}, &lse);
  a.out = out.mf();
  a.lse = lse.mf();
  if (q.size()) {
    py::gil_scoped_release nogil;
    kt.attention_forward(a);
  }
  return py::make_tuple(out_obj, lse_obj);
}

py::tuple attention_backward(py::handle dout_obj, py::handle q_obj, py::handle k_obj,
                             py::handle v_obj, py::handle out_obj, py::handle lse_obj,
                             bool causal, double dropout, uint64_t dropout_seed,
                             const std::string& precision) {
  OpCall c("attention_backward", {{"dout", dout_obj}, {"q", q_obj}, {"k", k_obj}, {"v", v_obj},
                                  {"out", out_obj}, {"lse", lse_obj}});
  const char* op = c.op();
  const Kernels& kt = attention_table(c, precision);
  const Tensor q = c.floats("q", 4, false, true), k = c.floats("k", 4, false, true),
               v = c.floats("v", 4, false, true);
  require_shape(k, q.shape, op, "k");
  AttentionGradArgs g;
  g.fwd = attention_args(c, q, k, v, causal, dropout, dropout_seed);
  const Tensor out = c.floats("out", 4, false, true), dout = c.floats("dout", 4, false, true),
               lse = c.floats("lse", 3);
  require_same_type(out, q, op, "out", "q");
  require_same_type(dout, q, op, "dout", "q");
  require_shape(out, q.shape, op, "out");
  require_shape(dout, q.shape, op, "dout");
  require_shape(lse, {g.fwd.batch, g.fwd.heads, g.fwd.seq_q}, op, "lse");
  g.fwd.out = out.mf();  // read only in the backward
  g.fwd.lse = lse.mf();
  g.dout = dout.f();
  Tensor dq, dk, dv;
  py::object dq_obj = c.output(q.shape, &dq, true, q.dtype),
             dk_obj = c.output(q.shape, &dk, true, q.dtype),
             dv_obj = c.output(q.shape, &dv, true, q.dtype);
  g.dq = dq.mf();
  g.dk = dk.mf();
  g.dv = dv.mf();
  if (q.size()) {
    py::gil_scoped_release nogil;
    kt.attention_backward(g);
  }
  return py::make_tuple(dq_obj, dk_obj, dv_obj);
}

py::tuple cross_entropy(py::handle logits_obj, py::handle targets_obj, int64_t ignore_index,
                        py::handle out_obj, bool compute_grad) {
  OpCall c("cross_entropy", {{"logits", logits_obj}, {"targets", targets_obj},
                             {"out", out_obj}});
  const char* op = c.op();
  const Tensor logits = c.floats("logits", 2, false, true);
  const int64_t rows = logits.shape[0], vocab = logits.shape[1];
  const Tensor targets = c.indices("targets", 1);
  if (targets.shape[0] != rows)
    value_error(op, "targets must have shape (" + std::to_string(rows) + ",) to match logits " +
                        shape_str(logits.shape) + ", got " + shape_str(targets.shape));
  if (vocab < 1 && rows > 0) value_error(op, "logits must have at least one column");
  const Kernels& k = c.kernels();
  py::object grad = py::none();
  Tensor dlogits;
  if (compute_grad) {
    if (out_obj.is_none()) {
      grad = c.output({rows, vocab}, &dlogits, false, logits.dtype);
    } else {
      dlogits = c.floats("out", 2, true, true);
      require_same_type(dlogits, logits, op, "out", "logits");
      require_shape(dlogits, {rows, vocab}, op, "out");
      check_no_overlap(op, {"out"}, {{"out", &dlogits}, {"targets", &targets}});
      // Both C-contiguous of one shape: the same start is the same memory
      // (logits itself, or a full view such as logits[:]), which the kernel
      // may overwrite in place; any other overlap would mix inputs and outputs.
      if (dlogits.data != logits.data && overlaps(dlogits, logits))
        value_error(op, "out overlaps logits partially; pass logits itself (or a full view of "
                        "it) or a separate array");
      grad = py::reinterpret_borrow<py::object>(out_obj);  // the caller's own object comes back
    }
  }
  float loss;
  int64_t bad = -1;
  {
    py::gil_scoped_release nogil;
    const DType dtype = logits.dtype == ElemType::kBFloat16 ? DType::kBFloat16 : DType::kFloat32;
    loss = k.cross_entropy_checked(logits.data, dtype, targets.data,
                                   targets.dtype == ElemType::kInt32, dlogits.data, rows, vocab,
                                   ignore_index, 1.f, &bad);
  }
  if (bad >= 0)
    value_error(op, "targets[" + std::to_string(bad) + "] = " +
                        std::to_string(c.index_at(targets, bad)) + " is out of range [0, " +
                        std::to_string(vocab) + ") and is not ignore_index (" +
                        std::to_string(ignore_index) + ")");
  return py::make_tuple(loss, grad);
}

struct CellArrays {
  Tensor x, h, c, w_ih, w_hh;
  CellSizes s;
};

// x (n, in), h (n, hidden), w_ih (G*hidden, in), w_hh (G*hidden, hidden), and
// for the LSTM (gates == 4) its cell state c (n, hidden); the GRU has none.
CellArrays cell_arrays(const OpCall& call, int64_t gates) {
  const char* op = call.op();
  CellArrays a;
  a.x = call.floats("x", 2);
  a.h = call.floats("h", 2);
  a.w_ih = call.floats("w_ih", 2);
  a.w_hh = call.floats("w_hh", 2);
  a.s = {a.x.shape[0], a.x.shape[1], a.h.shape[1]};
  require_shape(a.h, {a.s.n, a.s.hidden}, op, "h");
  if (gates == 4) {
    a.c = call.floats("c", 2);
    require_shape(a.c, {a.s.n, a.s.hidden}, op, "c");
  }
  require_shape(a.w_ih, {gates * a.s.hidden, a.s.input}, op, "w_ih");
  require_shape(a.w_hh, {gates * a.s.hidden, a.s.hidden}, op, "w_hh");
  return a;
}

// An array of `name` with shape `want`.
Tensor shaped(const OpCall& c, const char* name, const Shape& want) {
  Tensor t = c.floats(name, (int)want.size());
  require_shape(t, want, c.op(), name);
  return t;
}

py::tuple lstm_cell(py::handle x_obj, py::handle h_obj, py::handle c_obj, py::handle w_ih_obj,
                    py::handle w_hh_obj, py::handle b_ih_obj, py::handle b_hh_obj) {
  OpCall c("lstm_cell", {{"x", x_obj}, {"h", h_obj}, {"c", c_obj}, {"w_ih", w_ih_obj},
                         {"w_hh", w_hh_obj}, {"b_ih", b_ih_obj}, {"b_hh", b_hh_obj}});
  const CellArrays a = cell_arrays(c, 4);
  const CellSizes s = a.s;
  const Tensor b_ih = shaped(c, "b_ih", {4 * s.hidden}), b_hh = shaped(c, "b_hh", {4 * s.hidden});
  const Kernels& k = c.kernels();
  Tensor h_next, c_next, gates, preact;
  py::object h_out = c.output({s.n, s.hidden}, &h_next), c_out = c.output({s.n, s.hidden}, &c_next),
             g_out = c.output({s.n, 4 * s.hidden}, &gates);
  c.output({s.n, 4 * s.hidden}, &preact);  // scratch
  {
    py::gil_scoped_release nogil;
    lstm_cell_step_forward(k, s, a.x.f(), a.h.f(), a.c.f(), a.w_ih.f(), a.w_hh.f(), b_ih.f(),
                           b_hh.f(), preact.mf(), gates.mf(), c_next.mf(), h_next.mf());
  }
  return py::make_tuple(h_out, c_out, g_out);
}

py::tuple lstm_cell_backward(py::handle dh_obj, py::handle dc_obj, py::handle x_obj,
                             py::handle h_obj, py::handle c_obj, py::handle c_next_obj,
                             py::handle gates_obj, py::handle w_ih_obj, py::handle w_hh_obj) {
  OpCall c("lstm_cell_backward",
           {{"dh_next", dh_obj}, {"dc_next", dc_obj}, {"x", x_obj}, {"h", h_obj}, {"c", c_obj},
            {"c_next", c_next_obj}, {"gates", gates_obj}, {"w_ih", w_ih_obj}, {"w_hh", w_hh_obj}});
  const CellArrays a = cell_arrays(c, 4);
  const CellSizes s = a.s;
  const Tensor dh_next = shaped(c, "dh_next", {s.n, s.hidden}),
               dc_next = shaped(c, "dc_next", {s.n, s.hidden}),
               c_next = shaped(c, "c_next", {s.n, s.hidden}),
               gates = shaped(c, "gates", {s.n, 4 * s.hidden});
  const Kernels& k = c.kernels();
  Tensor dx, dh, dc, dw_ih, dw_hh, db, dpreact;
  py::tuple out = py::make_tuple(
      c.output({s.n, s.input}, &dx, true), c.output({s.n, s.hidden}, &dh, true),
      c.output({s.n, s.hidden}, &dc, true), c.output({4 * s.hidden, s.input}, &dw_ih, true),
      c.output({4 * s.hidden, s.hidden}, &dw_hh, true), c.output({4 * s.hidden}, &db, true));
  c.output({s.n, 4 * s.hidden}, &dpreact, true);  // scratch
  {
    py::gil_scoped_release nogil;
    lstm_cell_step_backward(k, s, dh_next.f(), dc_next.f(), a.x.f(), a.h.f(), a.c.f(),
                            c_next.f(), gates.f(), a.w_ih.f(), a.w_hh.f(), dpreact.mf(), dx.mf(),
                            dh.mf(), dc.mf(), dw_ih.mf(), dw_hh.mf(), db.mf());
  }
  return out;
}

py::tuple gru_cell(py::handle x_obj, py::handle h_obj, py::handle w_ih_obj, py::handle w_hh_obj,
                   py::handle b_ih_obj, py::handle b_hh_obj) {
  OpCall c("gru_cell", {{"x", x_obj}, {"h", h_obj}, {"w_ih", w_ih_obj}, {"w_hh", w_hh_obj},
                        {"b_ih", b_ih_obj}, {"b_hh", b_hh_obj}});
  const CellArrays a = cell_arrays(c, 3);
  const CellSizes s = a.s;
  const Tensor b_ih = shaped(c, "b_ih", {3 * s.hidden}), b_hh = shaped(c, "b_hh", {3 * s.hidden});
  const Kernels& k = c.kernels();
  Tensor h_next, gates, gi, gh;
  py::object h_out = c.output({s.n, s.hidden}, &h_next),
             g_out = c.output({s.n, 4 * s.hidden}, &gates);
  c.output({s.n, 3 * s.hidden}, &gi);  // scratch
  c.output({s.n, 3 * s.hidden}, &gh);
  {
    py::gil_scoped_release nogil;
    gru_cell_step_forward(k, s, a.x.f(), a.h.f(), a.w_ih.f(), a.w_hh.f(), b_ih.f(), b_hh.f(),
                          gi.mf(), gh.mf(), gates.mf(), h_next.mf());
  }
  return py::make_tuple(h_out, g_out);
}

py::tuple gru_cell_backward(py::handle dh_obj, py::handle x_obj, py::handle h_obj,
                            py::handle gates_obj, py::handle w_ih_obj, py::handle w_hh_obj) {
  OpCall c("gru_cell_backward", {{"dh_next", dh_obj}, {"x", x_obj}, {"h", h_obj},
                                 {"gates", gates_obj}, {"w_ih", w_ih_obj}, {"w_hh", w_hh_obj}});
  const CellArrays a = cell_arrays(c, 3);
  const CellSizes s = a.s;
  const Tensor dh_next = shaped(c, "dh_next", {s.n, s.hidden}),
               gates = shaped(c, "gates", {s.n, 4 * s.hidden});
  const Kernels& k = c.kernels();
  Tensor dx, dh, dw_ih, dw_hh, db_ih, db_hh, dgi, dgh;
  py::tuple out = py::make_tuple(
      c.output({s.n, s.input}, &dx, true), c.output({s.n, s.hidden}, &dh, true),
      c.output({3 * s.hidden, s.input}, &dw_ih, true),
      c.output({3 * s.hidden, s.hidden}, &dw_hh, true), c.output({3 * s.hidden}, &db_ih, true),
      c.output({3 * s.hidden}, &db_hh, true));
  c.output({s.n, 3 * s.hidden}, &dgi, true);  // scratch
  c.output({s.n, 3 * s.hidden}, &dgh, true);
  {
    py::gil_scoped_release nogil;
    gru_cell_step_backward(k, s, dh_next.f(), a.x.f(), a.h.f(), gates.f(), a.w_ih.f(),
                           a.w_hh.f(), dgi.mf(), dgh.mf(), dx.mf(), dh.mf(), dw_ih.mf(),
                           dw_hh.mf(), db_ih.mf(), db_hh.mf());
  }
  return out;
}

void adamw_step(py::handle p_obj, py::handle g_obj, py::handle m_obj, py::handle v_obj, double lr,
                double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  OpCall c("adamw_step", {{"param", p_obj}, {"grad", g_obj}, {"m", m_obj}, {"v", v_obj}});
  const char* op = c.op();
  const Tensor p = c.floats("param", -1, true), g = c.floats("grad"),
               m = c.floats("m", -1, true), v = c.floats("v", -1, true);
  require_shape(g, p.shape, op, "grad");
  require_shape(m, p.shape, op, "m");
  require_shape(v, p.shape, op, "v");
  check_no_overlap(op, {"param", "m", "v"}, {{"param", &p}, {"grad", &g}, {"m", &m}, {"v", &v}});
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
  const AdamWArgs args{lr, beta1, beta2, eps, weight_decay, step, 1.0f};
  const Kernels& k = c.kernels();
  py::gil_scoped_release nogil;
  k.adamw(p.mf(), g.f(), m.mf(), v.mf(), p.size(), args);
}

double sum_squares(py::handle x_obj) {
  OpCall c("sum_squares", {{"x", x_obj}});
  const Tensor x = c.floats("x");
  const Kernels& k = c.kernels();
  py::gil_scoped_release nogil;
  return k.sum_squares(x.f(), x.size());
}

}  // namespace

void bind_ops(py::module_& m) {
  using py::arg;
  bind_gemm_ops(m);
  m.def("softmax", &softmax, arg("x"));
  m.def("softmax_backward", &softmax_backward, arg("dy"), arg("y"));
  m.def("layernorm", &layernorm, arg("x"), arg("weight"), arg("bias"), arg("eps"));
  m.def("layernorm_backward", &layernorm_backward, arg("dy"), arg("x"), arg("weight"),
        arg("mean"), arg("rstd"));
  m.def("gelu", &gelu, arg("x"), arg("exact") = false);
  m.def("gelu_backward", &gelu_backward, arg("dy"), arg("x"), arg("exact") = false);
  m.def("attention", &attention, arg("q"), arg("k"), arg("v"), arg("causal"),
        arg("dropout") = 0.0, arg("dropout_seed") = 0, arg("precision") = "fp32");
  m.def("attention_backward", &attention_backward, arg("dout"), arg("q"), arg("k"), arg("v"),
        arg("out"), arg("lse"), arg("causal"), arg("dropout") = 0.0, arg("dropout_seed") = 0,
        arg("precision") = "fp32");
  m.def("dropout", [](py::handle x, double p, uint64_t seed) {
    return dropout(x, p, seed, "dropout", "x");
  }, arg("x"), arg("p"), arg("seed"));
  m.def("dropout_backward", [](py::handle dy, double p, uint64_t seed) {
    return dropout(dy, p, seed, "dropout_backward", "dy");
  }, arg("dy"), arg("p"), arg("seed"));
  m.def("cross_entropy", &cross_entropy, arg("logits"), arg("targets"), arg("ignore_index"),
        arg("out"), arg("compute_grad"));
  m.def("lstm_cell", &lstm_cell, arg("x"), arg("h"), arg("c"), arg("w_ih"), arg("w_hh"),
        arg("b_ih"), arg("b_hh"));
  m.def("lstm_cell_backward", &lstm_cell_backward, arg("dh_next"), arg("dc_next"), arg("x"),
        arg("h"), arg("c"), arg("c_next"), arg("gates"), arg("w_ih"), arg("w_hh"));
  m.def("gru_cell", &gru_cell, arg("x"), arg("h"), arg("w_ih"), arg("w_hh"), arg("b_ih"),
        arg("b_hh"));
  m.def("gru_cell_backward", &gru_cell_backward, arg("dh_next"), arg("x"), arg("h"),
        arg("gates"), arg("w_ih"), arg("w_hh"));
  m.def("adamw_step", &adamw_step, arg("param"), arg("grad"), arg("m"), arg("v"), arg("lr"),
        arg("beta1"), arg("beta2"), arg("eps"), arg("weight_decay"), arg("step"));
  m.def("sum_squares", &sum_squares, arg("x"));
  bind_table_kernel_ops(m);
  // The names the CUDA tests have always called (they take any device's arrays now).
  for (const char* name : {"matmul", "softmax", "softmax_backward", "layernorm",
                           "layernorm_backward", "gelu", "gelu_backward", "attention",
                           "attention_backward", "cross_entropy", "lstm_cell",
                           "lstm_cell_backward", "gru_cell", "gru_cell_backward", "adamw_step"})
    m.attr(("cuda_" + std::string(name)).c_str()) = m.attr(name);
}

}  // namespace bindings
}  // namespace fastlm
