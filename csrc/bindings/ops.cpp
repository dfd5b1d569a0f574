// fastlm._C op bindings: check every array, allocate outputs, release the GIL,
// call the active CPU kernel table. python/fastlm/ops.py documents each op.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <limits>
#include <vector>

#include "bindings/arrays.h"
#include "cpu/dispatch.h"
#include "model/rnn_cell.h"

namespace fastlm {
namespace bindings {

namespace {

// A checked GEMM of Python operands; the arrays keep the pointers in g alive.
struct GemmCall {
  py::array a, b, bias;
  GemmArgs g;
};

// The table whose attention runs `precision` ("fp32", or "bf16": the mixed
// table, which only the avx512bf16 CPU ISA has).
const Kernels& attention_table(const char* op, const std::string& precision) {
  if (precision == "fp32") return cpu::kernels();
  if (precision != "bf16")
    value_error(op, "precision must be 'fp32' or 'bf16', got '" + precision + "'");
  const std::string isa = cpu::kernels().name;
  if (isa != "avx512bf16")
    value_error(op, "precision 'bf16' needs the avx512bf16 CPU ISA (AVX512_BF16); the active "
                    "CPU ISA is '" + isa + "'");
  return cpu::kernels_for(GemmPrecision::kBF16);
}

GemmCall gemm_call(const char* op, py::handle a_obj, py::handle b_obj, bool trans_a, bool trans_b,
                   py::handle bias_obj, const std::string& precision) {
  GemmCall call;
  GemmArgs& g = call.g;
  // "highest" and "tf32" are float32 on the CPU; "bf16" rounds a and b.
  if (precision == "bf16") {
    const std::string isa = cpu::kernels().name;
    if (isa != "avx512bf16")
      value_error(op, "precision 'bf16' needs the avx512bf16 CPU ISA (AVX512_BF16); the active "
                      "CPU ISA is '" + isa + "'");
    g.precision = GemmPrecision::kBF16;
  } else if (precision != "highest" && precision != "tf32") {
    value_error(op, "precision must be 'highest', 'tf32' or 'bf16', got '" + precision + "'");
  }
  call.a = float_array(a_obj, op, "a", 2);
  call.b = float_array(b_obj, op, "b", 2);
  const py::array &a = call.a, &b = call.b;
  const int64_t m = trans_a ? a.shape(1) : a.shape(0), ka = trans_a ? a.shape(0) : a.shape(1);
  const int64_t kb = trans_b ? b.shape(1) : b.shape(0), n = trans_b ? b.shape(0) : b.shape(1);
  if (ka != kb)
    value_error(op, "inner dimensions differ: op(a) is " + shape_str({m, ka}) + ", op(b) is " +
                        shape_str({kb, n}));
  if (!bias_obj.is_none()) {
    call.bias = float_array(bias_obj, op, "bias", 1);  // held by call: it may be an aligned copy
    require_shape(call.bias, {n}, op, "bias");
    g.bias = cptr(call.bias);
  }
  g.a = cptr(a);
  g.b = cptr(b);
  g.m = m;
  g.n = n;
  g.k = ka;
  g.lda = a.shape(1);
  g.ldb = b.shape(1);
  g.ldc = n;
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  return call;
}

py::array_t<float> matmul(py::handle a_obj, py::handle b_obj, bool trans_a, bool trans_b,
                          py::handle bias_obj, const std::string& precision) {
  GemmCall call = gemm_call("matmul", a_obj, b_obj, trans_a, trans_b, bias_obj, precision);
  py::array_t<float> c = new_array({call.g.m, call.g.n});
  call.g.c = c.mutable_data();
  if (call.g.m && call.g.n) {
    py::gil_scoped_release nogil;
    cpu::kernels().matmul(call.g);
  }
  return c;
}

// For the tests: c (m, n) [+]= op(a) @ op(b) [+ bias], optionally with op(b)
// packed first by matmul_pack_b (the paths ops.matmul does not reach).
void matmul_into(py::handle c_obj, py::handle a_obj, py::handle b_obj, bool trans_a, bool trans_b,
                 py::handle bias_obj, const std::string& precision, bool accumulate, bool prepack) {
  const char* op = "_matmul_into";
  GemmCall call = gemm_call(op, a_obj, b_obj, trans_a, trans_b, bias_obj, precision);
  GemmArgs& g = call.g;
  py::array c = float_array(c_obj, op, "c", 2, true);
  require_shape(c, {g.m, g.n}, op, "c");
  g.c = mptr(c);
  g.accumulate = accumulate;
  const Kernels& kt = cpu::kernels();
  std::vector<float> packed(prepack ? (size_t)kt.matmul_packed_size(g.n, g.k) : 0);
  py::gil_scoped_release nogil;
  if (prepack) {
    kt.matmul_pack_b(g, packed.data());
    g.b_packed = packed.data();
  }
  if (g.m && g.n) kt.matmul(g);
}

// rows x cols view of an array whose last axis is the one reduced over.
void rows_cols(const py::array& x, const char* op, const char* name, int64_t* rows,
               int64_t* cols) {
  if (x.ndim() < 1) value_error(op, std::string(name) + " must have at least 1 dimension");
  *cols = x.shape(x.ndim() - 1);
  *rows = *cols ? x.size() / *cols : 0;
}

py::array_t<float> softmax(py::handle x_obj) {
  py::array x = float_array(x_obj, "softmax", "x");
  int64_t rows, cols;
  rows_cols(x, "softmax", "x", &rows, &cols);
  py::array_t<float> y = new_array(shape_of(x));
  {
    py::gil_scoped_release nogil;
    cpu::kernels().softmax_forward(cptr(x), y.mutable_data(), rows, cols);
  }
  return y;
}

py::array_t<float> softmax_backward(py::handle dy_obj, py::handle y_obj) {
  const char* op = "softmax_backward";
  py::array y = float_array(y_obj, op, "y");
  py::array dy = float_array(dy_obj, op, "dy");
  require_shape(dy, shape_of(y), op, "dy");
  int64_t rows, cols;
  rows_cols(y, op, "y", &rows, &cols);
  py::array_t<float> dx = new_array(shape_of(y), true);
  {
    py::gil_scoped_release nogil;
    cpu::kernels().softmax_backward(cptr(dy), cptr(y), dx.mutable_data(), rows, cols);
  }
  return dx;
}

py::tuple layernorm(py::handle x_obj, py::handle w_obj, py::handle b_obj, double eps) {
  const char* op = "layernorm";
  py::array x = float_array(x_obj, op, "x");
  int64_t rows, cols;
  rows_cols(x, op, "x", &rows, &cols);
  py::array w = float_array(w_obj, op, "weight", 1);
  py::array b = float_array(b_obj, op, "bias", 1);
  require_shape(w, {cols}, op, "weight");
  require_shape(b, {cols}, op, "bias");
  if (!(eps >= 0) || !std::isfinite(eps)) value_error(op, "eps must be finite and >= 0");
  Shape stat_shape = shape_of(x);
  stat_shape.pop_back();
  py::array_t<float> y = new_array(shape_of(x)), mean = new_array(stat_shape),
                     rstd = new_array(stat_shape);
  {
    py::gil_scoped_release nogil;
    cpu::kernels().layernorm_forward(cptr(x), cptr(w), cptr(b), y.mutable_data(),
                                     mean.mutable_data(), rstd.mutable_data(), rows, cols,
                                     (float)eps);
  }
  return py::make_tuple(y, mean, rstd);
}

py::tuple layernorm_backward(py::handle dy_obj, py::handle x_obj, py::handle w_obj,
                             py::handle mean_obj, py::handle rstd_obj) {
  const char* op = "layernorm_backward";
  py::array x = float_array(x_obj, op, "x");
  int64_t rows, cols;
  rows_cols(x, op, "x", &rows, &cols);
  py::array dy = float_array(dy_obj, op, "dy");
  require_shape(dy, shape_of(x), op, "dy");
  py::array w = float_array(w_obj, op, "weight", 1);
  require_shape(w, {cols}, op, "weight");
  Shape stat_shape = shape_of(x);
  stat_shape.pop_back();
  py::array mean = float_array(mean_obj, op, "mean");
  py::array rstd = float_array(rstd_obj, op, "rstd");
  require_shape(mean, stat_shape, op, "mean");
  require_shape(rstd, stat_shape, op, "rstd");
  py::array_t<float> dx = new_array(shape_of(x), true), dw = new_array({cols}, true),
                     db = new_array({cols}, true);
  {
    py::gil_scoped_release nogil;
    cpu::kernels().layernorm_backward(cptr(dy), cptr(x), cptr(w), cptr(mean), cptr(rstd),
                                      dx.mutable_data(), dw.mutable_data(), db.mutable_data(),
                                      rows, cols);
  }
  return py::make_tuple(dx, dw, db);
}

// exact: the erf GELU instead of the tanh approximation.
py::array_t<float> gelu(py::handle x_obj, bool exact) {
  py::array x = float_array(x_obj, "gelu", "x");
  py::array_t<float> y = new_array(shape_of(x));
  {
    py::gil_scoped_release nogil;
    const Kernels& k = cpu::kernels();
    (exact ? k.gelu_erf_forward : k.gelu_forward)(cptr(x), y.mutable_data(), x.size());
  }
  return y;
}

py::array_t<float> gelu_backward(py::handle dy_obj, py::handle x_obj, bool exact) {
  const char* op = "gelu_backward";
  py::array x = float_array(x_obj, op, "x");
  py::array dy = float_array(dy_obj, op, "dy");
  require_shape(dy, shape_of(x), op, "dy");
  py::array_t<float> dx = new_array(shape_of(x));
  {
    py::gil_scoped_release nogil;
    const Kernels& k = cpu::kernels();
    (exact ? k.gelu_erf_backward : k.gelu_backward)(cptr(dy), cptr(x), dx.mutable_data(),
                                                     x.size());
  }
  return dx;
}

// p in [0, 1) for the dropout of `op`, else ValueError naming the argument.
float dropout_p(double p, const char* op, const char* name) {
  if (!(p >= 0.0 && p < 1.0))
    value_error(op, std::string(name) + " must be in [0, 1), got " + std::to_string(p));
  return (float)p;
}

// The forward and the backward are one kernel (the mask is regenerated);
// op and name say which was called, for the errors.
py::array_t<float> dropout(py::handle x_obj, double p, uint64_t seed, const char* op,
                           const char* name) {
  py::array x = float_array(x_obj, op, name);
  const float pf = dropout_p(p, op, "p");
  py::array_t<float> y = new_array(shape_of(x));
  {
    py::gil_scoped_release nogil;
    cpu::kernels().dropout(cptr(x), y.mutable_data(), x.size(), pf, seed);
  }
  return y;
}

Strides contiguous_bhtd(const Shape& s) { return {s[1] * s[2] * s[3], s[2] * s[3], s[3]}; }

AttentionArgs attention_args(const char* op, const py::array& q, const py::array& k,
                             const py::array& v, bool causal) {
  const Shape sq = shape_of(q), sk = shape_of(k);
  require_shape(v, sk, op, "v");
  if (sk[0] != sq[0] || sk[1] != sq[1] || sk[3] != sq[3])
    value_error(op, "k " + shape_str(sk) + " does not match q " + shape_str(sq) +
                        " in batch, heads or head dim");
  if (sq[3] < 1) value_error(op, "head dim must be >= 1");
  AttentionArgs a;
  a.q = cptr(q);
  a.k = cptr(k);
  a.v = cptr(v);
  a.sq = a.so = contiguous_bhtd(sq);
  a.sk = a.sv = contiguous_bhtd(sk);
  a.batch = sq[0];
  a.heads = sq[1];
  a.seq_q = sq[2];
  a.seq_k = sk[2];
  a.head_dim = sq[3];
  a.causal = causal;
  return a;
}

py::tuple attention(py::handle q_obj, py::handle k_obj, py::handle v_obj, bool causal,
                    double dropout, uint64_t dropout_seed, const std::string& precision) {
  const char* op = "attention";
  const Kernels& kt = attention_table(op, precision);
  py::array q = float_array(q_obj, op, "q", 4);
  py::array k = float_array(k_obj, op, "k", 4);
  py::array v = float_array(v_obj, op, "v", 4);
  AttentionArgs a = attention_args(op, q, k, v, causal);
  a.dropout_p = dropout_p(dropout, op, "dropout");
  a.dropout_seed = dropout_seed;
  if (a.seq_k < 1 && a.seq_q > 0) value_error(op, "k and v must hold at least one position");
  py::array_t<float> out = new_array(shape_of(q)), lse = new_array({a.batch, a.heads, a.seq_q});
  a.out = out.mutable_data();
  a.lse = lse.mutable_data();
  if (q.size()) {
    py::gil_scoped_release nogil;
    kt.attention_forward(a);
  }
  return py::make_tuple(out, lse);
}

py::tuple attention_backward(py::handle dout_obj, py::handle q_obj, py::handle k_obj,
                             py::handle v_obj, py::handle out_obj, py::handle lse_obj,
                             bool causal, double dropout, uint64_t dropout_seed,
                             const std::string& precision) {
  const char* op = "attention_backward";
  const Kernels& kt = attention_table(op, precision);
  py::array q = float_array(q_obj, op, "q", 4);
  py::array k = float_array(k_obj, op, "k", 4);
  py::array v = float_array(v_obj, op, "v", 4);
  require_shape(k, shape_of(q), op, "k");
  AttentionGradArgs g;
  g.fwd = attention_args(op, q, k, v, causal);
  g.fwd.dropout_p = dropout_p(dropout, op, "dropout");
  g.fwd.dropout_seed = dropout_seed;
  py::array out = float_array(out_obj, op, "out", 4);
  py::array dout = float_array(dout_obj, op, "dout", 4);
  py::array lse = float_array(lse_obj, op, "lse", 3);
  require_shape(out, shape_of(q), op, "out");
  require_shape(dout, shape_of(q), op, "dout");
  require_shape(lse, {g.fwd.batch, g.fwd.heads, g.fwd.seq_q}, op, "lse");
  g.fwd.out = const_cast<float*>(cptr(out));  // read only in the backward
  g.fwd.lse = const_cast<float*>(cptr(lse));
  g.dout = cptr(dout);
  py::array_t<float> dq = new_array(shape_of(q), true), dk = new_array(shape_of(q), true),
                     dv = new_array(shape_of(q), true);
  g.dq = dq.mutable_data();
  g.dk = dk.mutable_data();
  g.dv = dv.mutable_data();
  if (q.size()) {
    py::gil_scoped_release nogil;
    kt.attention_backward(g);
  }
  return py::make_tuple(dq, dk, dv);
}

py::tuple cross_entropy(py::handle logits_obj, py::handle targets_obj, int64_t ignore_index,
                        py::handle out_obj, bool compute_grad) {
  const char* op = "cross_entropy";
  py::array logits = float_array(logits_obj, op, "logits", 2);
  const int64_t rows = logits.shape(0), vocab = logits.shape(1);
  std::vector<int64_t> targets = index_array(targets_obj, op, "targets", 1);
  if ((int64_t)targets.size() != rows)
    value_error(op, "targets must have shape (" + std::to_string(rows) + ",) to match logits " +
                        shape_str(shape_of(logits)) + ", got (" +
                        std::to_string(targets.size()) + ",)");
  if (vocab < 1 && rows > 0) value_error(op, "logits must have at least one column");
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t t = targets[i];
    if (t != ignore_index && (t < 0 || t >= vocab))
      value_error(op, "targets[" + std::to_string(i) + "] = " + std::to_string(t) +
                          " is out of range [0, " + std::to_string(vocab) +
                          ") and is not ignore_index (" + std::to_string(ignore_index) + ")");
  }
  py::object grad = py::none();
  float* dlogits = nullptr;
  if (compute_grad) {
    py::array out;
    if (out_obj.is_none()) {
      out = new_array({rows, vocab});
    } else {
      out = float_array(out_obj, op, "out", 2, true);
      require_shape(out, {rows, vocab}, op, "out");
      // Both C-contiguous of one shape: the same start is the same memory
      // (logits itself, or a full view such as logits[:]), which the kernel
      // may overwrite in place; any other overlap would mix inputs and outputs.
      if (out.data() != logits.data() &&
          py::module_::import("numpy").attr("shares_memory")(out, logits).cast<bool>())
        value_error(op, "out overlaps logits partially; pass logits itself (or a full view of "
                        "it) or a separate array");
    }
    dlogits = mptr(out);
    grad = out;
  }
  float loss;
  {
    py::gil_scoped_release nogil;
    loss = cpu::kernels().cross_entropy(cptr(logits), targets.data(), dlogits, rows, vocab,
                                        ignore_index, 1.f);
  }
  return py::make_tuple(loss, grad);
}

struct CellArrays {
  py::array x, h, c, w_ih, w_hh;
  CellSizes s;
};

// x (n, in), h (n, hidden), w_ih (G*hidden, in), w_hh (G*hidden, hidden), and
// for the LSTM (gates == 4) its cell state c (n, hidden); the GRU has none.
CellArrays cell_arrays(const char* op, int64_t gates, py::handle x_obj, py::handle h_obj,
                       py::handle c_obj, py::handle w_ih_obj, py::handle w_hh_obj) {
  CellArrays a;
  a.x = float_array(x_obj, op, "x", 2);
  a.h = float_array(h_obj, op, "h", 2);
  a.w_ih = float_array(w_ih_obj, op, "w_ih", 2);
  a.w_hh = float_array(w_hh_obj, op, "w_hh", 2);
  a.s = {a.x.shape(0), a.x.shape(1), a.h.shape(1)};
  require_shape(a.h, {a.s.n, a.s.hidden}, op, "h");
  if (gates == 4) {
    a.c = float_array(c_obj, op, "c", 2);
    require_shape(a.c, {a.s.n, a.s.hidden}, op, "c");
  }
  require_shape(a.w_ih, {gates * a.s.hidden, a.s.input}, op, "w_ih");
  require_shape(a.w_hh, {gates * a.s.hidden, a.s.hidden}, op, "w_hh");
  return a;
}

py::array bias_array(py::handle obj, const char* op, const char* name, int64_t n) {
  py::array b = float_array(obj, op, name, 1);
  require_shape(b, {n}, op, name);
  return b;
}

py::tuple lstm_cell(py::handle x_obj, py::handle h_obj, py::handle c_obj, py::handle w_ih_obj,
                    py::handle w_hh_obj, py::handle b_ih_obj, py::handle b_hh_obj) {
  const char* op = "lstm_cell";
  CellArrays a = cell_arrays(op, 4, x_obj, h_obj, c_obj, w_ih_obj, w_hh_obj);
  const CellSizes s = a.s;
  py::array b_ih = bias_array(b_ih_obj, op, "b_ih", 4 * s.hidden);
  py::array b_hh = bias_array(b_hh_obj, op, "b_hh", 4 * s.hidden);
  py::array_t<float> h_next = new_array({s.n, s.hidden}), c_next = new_array({s.n, s.hidden}),
                     gates = new_array({s.n, 4 * s.hidden}), preact = new_array({s.n, 4 * s.hidden});
  {
    py::gil_scoped_release nogil;
    lstm_cell_step_forward(cpu::kernels(), s, cptr(a.x), cptr(a.h), cptr(a.c), cptr(a.w_ih),
                           cptr(a.w_hh), cptr(b_ih), cptr(b_hh), preact.mutable_data(),
                           gates.mutable_data(), c_next.mutable_data(), h_next.mutable_data());
  }
  return py::make_tuple(h_next, c_next, gates);
}

py::tuple lstm_cell_backward(py::handle dh_obj, py::handle dc_obj, py::handle x_obj,
                             py::handle h_obj, py::handle c_obj, py::handle c_next_obj,
                             py::handle gates_obj, py::handle w_ih_obj, py::handle w_hh_obj) {
  const char* op = "lstm_cell_backward";
  CellArrays a = cell_arrays(op, 4, x_obj, h_obj, c_obj, w_ih_obj, w_hh_obj);
  const CellSizes s = a.s;
  py::array dh_next = float_array(dh_obj, op, "dh_next", 2);
  py::array dc_next = float_array(dc_obj, op, "dc_next", 2);
  py::array c_next = float_array(c_next_obj, op, "c_next", 2);
  py::array gates = float_array(gates_obj, op, "gates", 2);
  require_shape(dh_next, {s.n, s.hidden}, op, "dh_next");
  require_shape(dc_next, {s.n, s.hidden}, op, "dc_next");
  require_shape(c_next, {s.n, s.hidden}, op, "c_next");
  require_shape(gates, {s.n, 4 * s.hidden}, op, "gates");
  py::array_t<float> dx = new_array({s.n, s.input}, true), dh = new_array({s.n, s.hidden}, true),
                     dc = new_array({s.n, s.hidden}, true),
                     dw_ih = new_array({4 * s.hidden, s.input}, true),
                     dw_hh = new_array({4 * s.hidden, s.hidden}, true),
                     db = new_array({4 * s.hidden}, true),
                     dpreact = new_array({s.n, 4 * s.hidden}, true);
  {
    py::gil_scoped_release nogil;
    lstm_cell_step_backward(cpu::kernels(), s, cptr(dh_next), cptr(dc_next), cptr(a.x),
                            cptr(a.h), cptr(a.c), cptr(c_next), cptr(gates), cptr(a.w_ih),
                            cptr(a.w_hh), dpreact.mutable_data(), dx.mutable_data(),
                            dh.mutable_data(), dc.mutable_data(), dw_ih.mutable_data(),
                            dw_hh.mutable_data(), db.mutable_data());
  }
  return py::make_tuple(dx, dh, dc, dw_ih, dw_hh, db);
}

py::tuple gru_cell(py::handle x_obj, py::handle h_obj, py::handle w_ih_obj, py::handle w_hh_obj,
                   py::handle b_ih_obj, py::handle b_hh_obj) {
  const char* op = "gru_cell";
  CellArrays a = cell_arrays(op, 3, x_obj, h_obj, py::none(), w_ih_obj, w_hh_obj);
  const CellSizes s = a.s;
  py::array b_ih = bias_array(b_ih_obj, op, "b_ih", 3 * s.hidden);
  py::array b_hh = bias_array(b_hh_obj, op, "b_hh", 3 * s.hidden);
  py::array_t<float> h_next = new_array({s.n, s.hidden}), gates = new_array({s.n, 4 * s.hidden}),
                     gi = new_array({s.n, 3 * s.hidden}), gh = new_array({s.n, 3 * s.hidden});
  {
    py::gil_scoped_release nogil;
    gru_cell_step_forward(cpu::kernels(), s, cptr(a.x), cptr(a.h), cptr(a.w_ih), cptr(a.w_hh),
                          cptr(b_ih), cptr(b_hh), gi.mutable_data(), gh.mutable_data(),
                          gates.mutable_data(), h_next.mutable_data());
  }
  return py::make_tuple(h_next, gates);
}

py::tuple gru_cell_backward(py::handle dh_obj, py::handle x_obj, py::handle h_obj,
                            py::handle gates_obj, py::handle w_ih_obj, py::handle w_hh_obj) {
  const char* op = "gru_cell_backward";
  CellArrays a = cell_arrays(op, 3, x_obj, h_obj, py::none(), w_ih_obj, w_hh_obj);
  const CellSizes s = a.s;
  py::array dh_next = float_array(dh_obj, op, "dh_next", 2);
  py::array gates = float_array(gates_obj, op, "gates", 2);
  require_shape(dh_next, {s.n, s.hidden}, op, "dh_next");
  require_shape(gates, {s.n, 4 * s.hidden}, op, "gates");
  py::array_t<float> dx = new_array({s.n, s.input}, true), dh = new_array({s.n, s.hidden}, true),
                     dw_ih = new_array({3 * s.hidden, s.input}, true),
                     dw_hh = new_array({3 * s.hidden, s.hidden}, true),
                     db_ih = new_array({3 * s.hidden}, true), db_hh = new_array({3 * s.hidden}, true),
                     dgi = new_array({s.n, 3 * s.hidden}, true),
                     dgh = new_array({s.n, 3 * s.hidden}, true);
  {
    py::gil_scoped_release nogil;
    gru_cell_step_backward(cpu::kernels(), s, cptr(dh_next), cptr(a.x), cptr(a.h), cptr(gates),
                           cptr(a.w_ih), cptr(a.w_hh), dgi.mutable_data(), dgh.mutable_data(),
                           dx.mutable_data(), dh.mutable_data(), dw_ih.mutable_data(),
                           dw_hh.mutable_data(), db_ih.mutable_data(), db_hh.mutable_data());
  }
  return py::make_tuple(dx, dh, dw_ih, dw_hh, db_ih, db_hh);
}

void adamw_step(py::handle p_obj, py::handle g_obj, py::handle m_obj, py::handle v_obj, double lr,
                double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  const char* op = "adamw_step";
  py::array p = float_array(p_obj, op, "param", -1, true);
  py::array g = float_array(g_obj, op, "grad");
  py::array m = float_array(m_obj, op, "m", -1, true);
  py::array v = float_array(v_obj, op, "v", -1, true);
  require_shape(g, shape_of(p), op, "grad");
  require_shape(m, shape_of(p), op, "m");
  require_shape(v, shape_of(p), op, "v");
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
  cpu::kernels().adamw(mptr(p), cptr(g), mptr(m), mptr(v), p.size(), args);
}

double sum_squares(py::handle x_obj) {
  py::array x = float_array(x_obj, "sum_squares", "x");
  py::gil_scoped_release nogil;
  return cpu::kernels().sum_squares(cptr(x), x.size());
}

}  // namespace

void bind_ops(py::module_& m) {
  using py::arg;
  // The GEMM's bias gradient, for the tests: dbias (cols) += column sums of dout (rows, cols).
  m.def("_bias_backward", [](py::handle dout_obj, py::handle dbias_obj) {
    const char* op = "_bias_backward";
    py::array dout = float_array(dout_obj, op, "dout", 2);
    py::array db = float_array(dbias_obj, op, "dbias", 1, true);
    require_shape(db, {dout.shape(1)}, op, "dbias");
    py::gil_scoped_release nogil;
    cpu::kernels().bias_backward(cptr(dout), mptr(db), dout.shape(0), dout.shape(1));
  }, arg("dout"), arg("dbias"));
  m.def("matmul", &matmul, arg("a"), arg("b"), arg("trans_a"), arg("trans_b"), arg("bias"),
        arg("precision") = "highest");
  m.def("_matmul_into", &matmul_into, arg("c"), arg("a"), arg("b"), arg("trans_a"), arg("trans_b"),
        arg("bias"), arg("precision"), arg("accumulate"), arg("prepack"));
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
}

}  // namespace bindings
}  // namespace fastlm
