// fastlm._C.GPT and fastlm._C.RNNLM: the C++ models behind fastlm.Transformer, LSTMLM and GRULM.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>

#include "bindings/arrays.h"
#include "bindings/backend.h"
#include "bindings/exclusive.h"
#include "model/gpt.h"
#include "model/rnn.h"

namespace fastlm {
namespace bindings {

namespace {

struct Tokens {
  std::vector<int64_t> ids;
  int64_t b, t;
};

// (b, t) integer ids in [0, vocab) (or == ignore, when allowed).
Tokens token_array(py::handle obj, const char* op, const char* name, int64_t vocab,
                   bool allow_ignore = false) {
  Tokens tk;
  tk.ids = index_array(obj, op, name, 2);  // checks obj is a 2-D integer ndarray
  py::array a = py::reinterpret_borrow<py::array>(obj);
  tk.b = a.shape(0), tk.t = a.shape(1);
  for (size_t i = 0; i < tk.ids.size(); ++i) {
    const int64_t v = tk.ids[i];
    if ((v < 0 || v >= vocab) && !(allow_ignore && v == -100))
      value_error(op, std::string(name) + " holds " + std::to_string(v) + " at flat index " +
                          std::to_string(i) + ", outside [0, " + std::to_string(vocab) + ")" +
                          (allow_ignore ? " and not -100" : ""));
  }
  return tk;
}

// idx (b, t) with b, t >= 1 and t <= max_t (0: no limit).
Tokens checked_batch(int64_t vocab, int64_t max_t, py::handle idx_obj, const char* op) {
  Tokens tk = token_array(idx_obj, op, "idx", vocab);
  if (tk.b < 1 || tk.t < 1) value_error(op, "idx must hold at least one token per row");
  if (max_t && tk.t > max_t)
    value_error(op, "sequence length " + std::to_string(tk.t) + " exceeds block_size " +
                        std::to_string(max_t));
  return tk;
}

Tokens checked_batch(GPT& g, py::handle idx_obj, const char* op) {
  return checked_batch(g.config().vocab_size, g.config().block_size, idx_obj, op);
}

Tokens checked_targets(int64_t vocab, py::handle t_obj, const Tokens& idx, const char* op) {
  Tokens tg = token_array(t_obj, op, "targets", vocab, true);
  if (tg.b != idx.b || tg.t != idx.t)
    value_error(op, "targets must have the shape of idx " + shape_str({idx.b, idx.t}) + ", got " +
                        shape_str({tg.b, tg.t}));
  return tg;
}

py::array view(py::object owner, float* data, const std::vector<int64_t>& shape) {
  std::vector<py::ssize_t> s(shape.begin(), shape.end());
  return py::array_t<float>(s, data, owner);
}

// Views exist only of host memory: a model on another device is read and
// written through copies (read / write below).
ParamStore& host_store(ParamStore& s, const char* op) {
  if (std::strcmp(s.kernels().device, "cpu") != 0)
    throw std::runtime_error(std::string(op) + ": NumPy views exist only of a CPU model's memory; "
                             "a model on '" + s.kernels().device + "' is read with read() and "
                             "written with write()");
  return s;
}

template <class Model>
py::dict tensor_views(py::object self, bool grads) {
  ParamStore& s = host_store(self.cast<Model&>().store, grads ? "grad_tensors" : "tensors");
  float* base = grads ? s.grads() : s.params();
  py::dict d;
  for (const ParamInfo& p : s.info()) d[py::str(p.name)] = view(self, base + p.offset, p.shape);
  return d;
}

template <class Model>
py::array flat_view(py::object self, float* (ParamStore::*which)()) {
  ParamStore& s = host_store(self.cast<Model&>().store, "flat views");
  return view(self, (s.*which)(), {s.size()});
}

// A view of moment i (1 or 2), allocated now if need be, that keeps its buffer
// alive: released moments leave the view holding the old values, never freed
// memory.
template <class Model>
py::array moment_view(py::object self, int i) {
  ParamStore& s = host_store(self.cast<Model&>().store, "flat views");
  if (s.moment_lo() != 0 || s.moment_hi() != s.size())
    throw std::invalid_argument("adam_" + std::string(i == 1 ? "m" : "v") +
                                ": the optimizer moments hold elements [" +
                                std::to_string(s.moment_lo()) + ", " + std::to_string(s.moment_hi()) +
                                ") only (a ZeRO-1 shard); read them with read(which, offset, count)");
  std::shared_ptr<Buffer<float>> buf;
  {
    Exclusive exclusive(s.busy);  // the allocation changes the store
    buf = s.moment(i);
  }
  auto* keep = new std::shared_ptr<Buffer<float>>(std::move(buf));
  py::capsule owner(keep, [](void* p) { delete static_cast<std::shared_ptr<Buffer<float>>*>(p); });
  return py::array_t<float>({(py::ssize_t)s.size()}, (*keep)->data(), owner);
}

// One of the store's four flat buffers by name: its data (element lo first)
// and the elements [lo, hi) of the flat vector it holds (the moments may hold
// a ZeRO-1 shard only).
struct Span {
  float* data;
  int64_t lo, hi;
};

Span store_buffer(ParamStore& s, const std::string& which, const char* op) {
  if (which == "params") return {s.params(), 0, s.size()};
  if (which == "grads") return {s.grads(), 0, s.size()};
  if (which == "adam_m") return {s.moment1(), s.moment_lo(), s.moment_hi()};
  if (which == "adam_v") return {s.moment2(), s.moment_lo(), s.moment_hi()};
  value_error(op, "which must be 'params', 'grads', 'adam_m' or 'adam_v', got '" + which + "'");
}

void check_which(const std::string& which, const char* op) {
  if (which != "params" && which != "grads" && which != "adam_m" && which != "adam_v")
    value_error(op, "which must be 'params', 'grads', 'adam_m' or 'adam_v', got '" + which + "'");
}

// Checks that which holds the n elements at offset.
void check_range(ParamStore& s, const std::string& which, int64_t offset, int64_t n,
                 const char* op) {
  check_which(which, op);
  const bool moment = which == "adam_m" || which == "adam_v";
  const int64_t lo = moment ? s.moment_lo() : 0, hi = moment ? s.moment_hi() : s.size();
  if (offset < lo || offset > hi || n < 0 || n > hi - offset)
    value_error(op, std::to_string(n) + " values at offset " + std::to_string(offset) +
                        " do not fit the elements [" + std::to_string(lo) + ", " +
                        std::to_string(hi) + ") that '" + which + "' holds" +
                        (moment && hi - lo != s.size() ? " (a ZeRO-1 shard)" : ""));
}

// The element at offset of which (checked by check_range; the moments are
// allocated if need be, so the caller holds the model's lock).
float* store_at(ParamStore& s, const std::string& which, int64_t offset) {
  Span b = store_buffer(s, which, "store_at");
  return b.data + (offset - b.lo);
}

void check_finite(double x, const char* op, const char* name, bool positive) {
  if (!std::isfinite(x) || x < 0 || (positive && x == 0))
    value_error(op, std::string(name) + " must be finite and " + (positive ? "> 0" : ">= 0") +
                        ", got " + std::to_string(x));
}

void check_betas(const char* op, double beta1, double beta2) {
  if (!(beta1 >= 0 && beta1 < 1)) value_error(op, "beta1 must be in [0, 1)");
  if (!(beta2 >= 0 && beta2 < 1)) value_error(op, "beta2 must be in [0, 1)");
}

// A training step's loss scale (finite) and dropout probability (in [0, 1)).
void check_training(double grad_scale, double dropout, const char* op) {
  if (!std::isfinite(grad_scale)) value_error(op, "grad_scale must be finite");
  if (!(dropout >= 0.0 && dropout < 1.0))
    value_error(op, "dropout must be in [0, 1), got " + std::to_string(dropout));
}

// What every model shares: its ParamStore (views of parameters, gradients and
// optimizer state; optimizer steps).
template <class Model>
void bind_store(py::class_<Model>& c) {
  c.def("num_parameters", [](Model& m) { return m.store.size(); })
      .def_property_readonly("device", [](Model& m) { return std::string(m.store.kernels().device); })
      .def_property_readonly("backend", [](Model& m) { return std::string(m.store.kernels().name); })
      .def("layout",
           [](Model& m) {
             py::list out;
             for (const ParamInfo& p : m.store.info())
               out.append(py::make_tuple(p.name, py::tuple(py::cast(p.shape)), p.offset));
             return out;
           },
           "[(name, shape, offset)] of every tensor in the flat buffers (offsets in floats).")
      .def("read",
           [](Model& m, const std::string& which, int64_t offset, int64_t count) {
             if (count < 0) count = m.store.size() - offset;
             check_range(m.store, which, offset, count, "read");
             py::array_t<float> out = new_array({count});
             float* dst = out.mutable_data();
             Exclusive exclusive(m.store.busy);
             m.store.kernels().download(dst, store_at(m.store, which, offset),
                                        count * (int64_t)sizeof(float));
             return out;
           },
           py::arg("which"), py::arg("offset") = 0, py::arg("count") = -1,
           "A float32 copy (count,) of elements [offset, offset + count) of 'params', 'grads', "
           "'adam_m' or 'adam_v' (count -1: to the end), which must hold them (sharded moments "
           "hold moment_range() only).")
      .def("write",
           [](Model& m, const std::string& which, py::handle values, int64_t offset) {
             const char* op = "write";
             py::array a = float_array(values, op, "values", 1);
             const int64_t n = a.shape(0);
             check_range(m.store, which, offset, n, op);
             const float* src = cptr(a);
             Exclusive exclusive(m.store.busy);
             m.store.kernels().upload(store_at(m.store, which, offset), src,
                                      n * (int64_t)sizeof(float));
             if (which == "params") m.store.mark_changed();
           },
           py::arg("which"), py::arg("values"), py::arg("offset") = 0,
           "Copy float32 values (n,) into 'params', 'grads', 'adam_m' or 'adam_v' at offset.")
      .def("tensors", [](py::object self) { return tensor_views<Model>(self, false); })
      .def("grad_tensors", [](py::object self) { return tensor_views<Model>(self, true); })
      .def("flat_params", [](py::object self) { return flat_view<Model>(self, &ParamStore::params); })
      .def("flat_grads", [](py::object self) { return flat_view<Model>(self, &ParamStore::grads); })
      .def("adam_m", [](py::object self) { return moment_view<Model>(self, 1); })
      .def("adam_v", [](py::object self) { return moment_view<Model>(self, 2); })
      .def("moment_bytes", [](Model& m) { return m.store.moment_bytes(); },
           "Bytes of optimizer moments the model holds now (allocated on first use).")
      .def("moment_range", [](Model& m) { return py::make_tuple(m.store.moment_lo(), m.store.moment_hi()); },
           "(lo, hi): the elements of the flat vector the moments cover.")
      .def("release_moments",
           [](Model& m) {
             Exclusive exclusive(m.store.busy);
             m.store.release_moments();
           },
           "Free both moments; they are zeros when next used.")
      .def("set_moment_range",
           [](Model& m, int64_t lo, int64_t hi) {
             if (lo < 0 || hi < lo || hi > m.store.size())
               value_error("set_moment_range", "[" + std::to_string(lo) + ", " + std::to_string(hi) +
                                                   ") is not a range of the " +
                                                   std::to_string(m.store.size()) + " parameters");
             Exclusive exclusive(m.store.busy);
             m.store.set_moment_range(lo, hi);
           },
           py::arg("lo"), py::arg("hi"),
           "Release the moments and make them cover elements [lo, hi) from now on (ZeRO-1's "
           "shard; (0, num_parameters()) for all).")
      .def_property(
          "step_count", [](Model& m) { return m.store.step_count; },
          [](Model& m, int64_t v) {
            if (v < 0) value_error("step_count", "must be >= 0");
            m.store.step_count = v;
          })
      .def("weights_changed", [](Model& m) { m.store.mark_changed(); },
           "Call after writing parameters through tensors() or flat_params() views.")
      .def("zero_grad", [](Model& m) {
        Exclusive exclusive(m.store.busy);
        m.store.zero_grad();
      })
      .def("grad_norm", [](Model& m) {
        Exclusive exclusive(m.store.busy);
        return m.store.grad_norm();
      })
      .def("step",
           [](Model& m, double lr, double beta1, double beta2, double eps, double wd,
              double grad_scale, int64_t lo, int64_t hi) {
             const char* op = "step";
             if (hi < 0) hi = m.store.size();
             if (lo < 0 || hi < lo || hi > m.store.size())
               value_error(op, "[lo, hi) = [" + std::to_string(lo) + ", " + std::to_string(hi) +
                                   ") is not a range of the " + std::to_string(m.store.size()) +
                                   " parameters");
             check_finite(lr, op, "lr", false);
             check_finite(eps, op, "eps", true);
             check_finite(wd, op, "weight_decay", false);
             check_finite(grad_scale, op, "grad_scale", false);
             check_betas(op, beta1, beta2);
             Exclusive exclusive(m.store.busy);
             m.store.adamw(lr, beta1, beta2, eps, wd, (float)grad_scale, lo, hi);
           },
           py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
           py::arg("weight_decay"), py::arg("grad_scale") = 1.0, py::arg("lo") = 0,
           py::arg("hi") = -1,
           "AdamW on elements [lo, hi) (hi -1: to the end), which the moments must cover.")
      .def("sgd_step",
           [](Model& m, double lr, double momentum, double wd, double grad_scale) {
             const char* op = "sgd_step";
             check_finite(lr, op, "lr", false);
             check_finite(wd, op, "weight_decay", false);
             check_finite(grad_scale, op, "grad_scale", false);
             if (!(momentum >= 0 && momentum < 1)) value_error(op, "momentum must be in [0, 1)");
             Exclusive exclusive(m.store.busy);
             m.store.sgd((float)lr, (float)momentum, (float)wd, (float)grad_scale);
           },
           py::arg("lr"), py::arg("momentum"), py::arg("weight_decay"),
           py::arg("grad_scale") = 1.0);
}

// (b, t) batch-first ids -> (t, b) time-major, as RNNLM runs.
std::vector<int64_t> time_major(const Tokens& tk) {
  std::vector<int64_t> out(tk.ids.size());
  for (int64_t i = 0; i < tk.b; ++i)
    for (int64_t s = 0; s < tk.t; ++s) out[s * tk.b + i] = tk.ids[i * tk.t + s];
  return out;
}

Tokens checked_rnn_batch(RNNLM& r, py::handle idx_obj, const char* op) {
  return checked_batch(r.config().vocab_size, 0, idx_obj, op);
}

// logits (b, t, vocab) batch-first from the model's time-major run.
py::array_t<float> rnn_logits(RNNLM& r, const Tokens& tk, bool carry) {
  const int64_t V = r.config().vocab_size;
  std::vector<int64_t> ids = time_major(tk);
  std::vector<float> tm(tk.t * tk.b * V);
  py::array_t<float> out = new_array({tk.b, tk.t, V});
  float* o = out.mutable_data();
  Exclusive exclusive(r.store.busy);
  r.forward(ids.data(), tk.t, tk.b, carry, tm.data());
  for (int64_t s = 0; s < tk.t; ++s)
    for (int64_t i = 0; i < tk.b; ++i)
      std::memcpy(o + (i * tk.t + s) * V, tm.data() + (s * tk.b + i) * V, V * sizeof(float));
  return out;
}

}  // namespace

void bind_model(py::module_& m) {
  m.def("cuda_emulated", &cuda_emulated,
        "Whether FASTLM_EMULATE_CUDA=1 makes device='cuda' the emulated device (checked now).");
  py::class_<GPT> gpt(m, "GPT");
  bind_store(gpt);
  gpt
      .def(py::init([](int64_t vocab, int64_t block, int64_t n_layer, int64_t n_head,
                       int64_t n_embd, bool bias, bool tie_word_embeddings,
                       const std::string& activation, double layer_norm_epsilon,
                       const std::string& precision, const std::string& device) {
             GPTConfig c{vocab, block, n_layer, n_head, n_embd};
             c.bias = bias, c.tie_word_embeddings = tie_word_embeddings;
             // Hugging Face's names: "gelu_new" is the tanh approximation.
             if (activation == "gelu_new") c.activation = Activation::kGeluTanh;
             else if (activation == "gelu") c.activation = Activation::kGeluErf;
             else value_error("GPT", "activation must be 'gelu_new' or 'gelu', got '" +
                                         activation + "'");
             if (!(layer_norm_epsilon > 0 && layer_norm_epsilon < 1e30))
               value_error("GPT", "layer_norm_epsilon must be finite and > 0");
             c.layer_norm_epsilon = (float)layer_norm_epsilon;
             return new GPT(c, model_backend("GPT", device, precision));
           }),
           py::arg("vocab_size"), py::arg("block_size"), py::arg("n_layer"), py::arg("n_head"),
           py::arg("n_embd"), py::arg("bias") = true, py::arg("tie_word_embeddings") = true,
           py::arg("activation") = "gelu_new", py::arg("layer_norm_epsilon") = 1e-5,
           py::arg("precision") = "fp32", py::arg("device") = "cpu")
      .def("forward",
           [](GPT& g, py::handle idx_obj) {
             Tokens tk = checked_batch(g, idx_obj, "forward");
             py::array_t<float> logits = new_array({tk.b, tk.t, g.config().vocab_size});
             float* out = logits.mutable_data();
             Exclusive exclusive(g.store.busy);
             g.forward(tk.ids.data(), tk.b, tk.t, out);
             return logits;
           },
           py::arg("idx"))
      .def("loss",
           [](GPT& g, py::handle idx_obj, py::handle t_obj) {
             Tokens tk = checked_batch(g, idx_obj, "loss");
             Tokens tg = checked_targets(g.config().vocab_size, t_obj, tk, "loss");
             Exclusive exclusive(g.store.busy);
             return g.loss(tk.ids.data(), tg.ids.data(), tk.b, tk.t);
           },
           py::arg("idx"), py::arg("targets"))
      .def("forward_backward",
           [](GPT& g, py::handle idx_obj, py::handle t_obj, double grad_scale, double dropout,
              uint64_t dropout_seed) {
             Tokens tk = checked_batch(g, idx_obj, "forward_backward");
             Tokens tg = checked_targets(g.config().vocab_size, t_obj, tk, "forward_backward");
             check_training(grad_scale, dropout, "forward_backward");
             Exclusive exclusive(g.store.busy);
             return g.forward_backward(tk.ids.data(), tg.ids.data(), tk.b, tk.t,
                                       (float)grad_scale, (float)dropout, dropout_seed);
           },
           py::arg("idx"), py::arg("targets"), py::arg("grad_scale") = 1.0,
           py::arg("dropout") = 0.0, py::arg("dropout_seed") = 0)
      .def("decode",
           [](GPT& g, py::handle tok_obj, int64_t pos, py::handle last_obj) {
             Tokens tk = checked_batch(g, tok_obj, "decode");
             if (pos < 0 || pos + tk.t > g.config().block_size)
               value_error("decode", "positions [" + std::to_string(pos) + ", " +
                                         std::to_string(pos + tk.t) + ") exceed block_size " +
                                         std::to_string(g.config().block_size));
             std::vector<int64_t> last;
             if (!last_obj.is_none()) {
               last = index_array(last_obj, "decode", "last", 1);
               if ((int64_t)last.size() != tk.b)
                 value_error("decode", "last must hold one position per row (" +
                                           std::to_string(tk.b) + "), got " +
                                           std::to_string(last.size()));
               for (int64_t v : last)
                 if (v < 0 || v >= tk.t)
                   value_error("decode", "last holds " + std::to_string(v) + ", outside [0, " +
                                             std::to_string(tk.t) + ")");
             }
             py::array_t<float> logits = new_array({tk.b, g.config().vocab_size});
             float* out = logits.mutable_data();
             Exclusive exclusive(g.store.busy);
             g.decode(tk.ids.data(), tk.b, tk.t, pos, out, last.empty() ? nullptr : last.data());
             return logits;
           },
           py::arg("tokens"), py::arg("pos"), py::arg("last") = py::none(),
           "Prefill (pos 0) or continue the KV cache; logits (b, vocab) of each row's position "
           "last[i] (default: the last).")
      .def("decode_rows",
           [](GPT& g, py::handle tok_obj, py::handle pos_obj) {
             const char* op = "decode_rows";
             std::vector<int64_t> tok = index_array(tok_obj, op, "tokens", 1);
             std::vector<int64_t> pos = index_array(pos_obj, op, "pos", 1);
             const int64_t b = tok.size(), V = g.config().vocab_size, S = g.config().block_size;
             if (b < 1) value_error(op, "tokens must hold at least one row");
             if ((int64_t)pos.size() != b)
               value_error(op, "pos must hold one position per token (" + std::to_string(b) +
                                   "), got " + std::to_string(pos.size()));
             for (int64_t i = 0; i < b; ++i) {
               if (tok[i] < 0 || tok[i] >= V)
                 value_error(op, "tokens holds " + std::to_string(tok[i]) + ", outside [0, " +
                                     std::to_string(V) + ")");
               if (pos[i] < 0 || pos[i] >= S)
                 value_error(op, "pos holds " + std::to_string(pos[i]) + ", outside [0, " +
                                     std::to_string(S) + ")");
             }
             py::array_t<float> logits = new_array({b, V});
             float* out = logits.mutable_data();
             Exclusive exclusive(g.store.busy);
             g.decode_rows(tok.data(), b, pos.data(), out);
             return logits;
           },
           py::arg("tokens"), py::arg("pos"),
           "One token per row at its own position (a ragged batch after decode's prefill); "
           "logits (b, vocab).");

  py::class_<RNNLM> rnn(m, "RNNLM");
  bind_store(rnn);
  rnn.def(py::init([](const std::string& kind, int64_t vocab, int64_t embed, int64_t hidden,
                      int64_t layers, const std::string& precision, const std::string& device) {
             RNNConfig c;
             if (kind == "lstm") c.kind = CellKind::kLSTM;
             else if (kind == "gru") c.kind = CellKind::kGRU;
             else value_error("RNNLM", "kind must be 'lstm' or 'gru', got '" + kind + "'");
             c.vocab_size = vocab, c.embed_dim = embed, c.hidden_size = hidden;
             c.num_layers = layers;
             return new RNNLM(c, model_backend("RNNLM", device, precision));
           }),
           py::arg("kind"), py::arg("vocab_size"), py::arg("embed_dim"), py::arg("hidden_size"),
           py::arg("num_layers"), py::arg("precision") = "fp32", py::arg("device") = "cpu")
      .def("forward",
           [](RNNLM& r, py::handle idx_obj, bool carry) {
             return rnn_logits(r, checked_rnn_batch(r, idx_obj, "forward"), carry);
           },
           py::arg("idx"), py::arg("carry") = false)
      .def("decode",
           [](RNNLM& r, py::handle idx_obj, bool carry) {
             Tokens tk = checked_rnn_batch(r, idx_obj, "decode");
             py::array_t<float> all = rnn_logits(r, tk, carry);
             const int64_t V = r.config().vocab_size;
             py::array_t<float> last = new_array({tk.b, V});
             for (int64_t i = 0; i < tk.b; ++i)
               std::memcpy(last.mutable_data() + i * V, all.data() + (i * tk.t + tk.t - 1) * V,
                           V * sizeof(float));
             return last;
           },
           py::arg("tokens"), py::arg("carry"))
      .def("loss",
           [](RNNLM& r, py::handle idx_obj, py::handle t_obj, bool carry) {
             Tokens tk = checked_rnn_batch(r, idx_obj, "loss");
             Tokens tg = checked_targets(r.config().vocab_size, t_obj, tk, "loss");
             std::vector<int64_t> ids = time_major(tk), tgt = time_major(tg);
             Exclusive exclusive(r.store.busy);
             return r.loss(ids.data(), tgt.data(), tk.t, tk.b, carry);
           },
           py::arg("idx"), py::arg("targets"), py::arg("carry") = false)
      .def("forward_backward",
           [](RNNLM& r, py::handle idx_obj, py::handle t_obj, bool carry, double grad_scale,
              double dropout, uint64_t dropout_seed) {
             Tokens tk = checked_rnn_batch(r, idx_obj, "forward_backward");
             Tokens tg = checked_targets(r.config().vocab_size, t_obj, tk, "forward_backward");
             check_training(grad_scale, dropout, "forward_backward");
             std::vector<int64_t> ids = time_major(tk), tgt = time_major(tg);
             Exclusive exclusive(r.store.busy);
             return r.forward_backward(ids.data(), tgt.data(), tk.t, tk.b, carry,
                                       (float)grad_scale, (float)dropout, dropout_seed);
           },
           py::arg("idx"), py::arg("targets"), py::arg("carry") = false,
           py::arg("grad_scale") = 1.0, py::arg("dropout") = 0.0, py::arg("dropout_seed") = 0)
      .def("reset_state", [](RNNLM& r) {
        Exclusive exclusive(r.store.busy);
        r.reset_state();
      })
      .def("set_state",
           [](RNNLM& r, py::handle h_obj, py::handle c_obj) {
             const char* op = "set_state";
             py::array h = float_array(h_obj, op, "h", 3);
             const int64_t L = r.config().num_layers, H = r.config().hidden_size, b = h.shape(1);
             require_shape(h, {L, b, H}, op, "h");
             if (b < 1) value_error(op, "h must hold at least one sequence");
             const bool lstm = r.config().kind == CellKind::kLSTM;
             py::array c;
             if (lstm) {
               c = float_array(c_obj, op, "c", 3);
               require_shape(c, {L, b, H}, op, "c");
             } else if (!c_obj.is_none()) {
               value_error(op, "a GRU has no cell state: c must be None");
             }
             Exclusive exclusive(r.store.busy);
             r.set_state(cptr(h), lstm ? cptr(c) : nullptr, b);
           },
           py::arg("h"), py::arg("c") = py::none())
      .def("state", [](RNNLM& r) -> py::tuple {
        // Copies of the final (h, c) of the last call, (num_layers, b, hidden); c is None for GRU.
        std::lock_guard<std::mutex> lock(r.store.busy);  // the GIL is kept: arrays are made here
        const int64_t L = r.config().num_layers, b = r.state_batch(), H = r.config().hidden_size;
        if (b == 0) return py::make_tuple(py::none(), py::none());
        const bool lstm = r.config().kind == CellKind::kLSTM;
        py::array_t<float> h = new_array({L, b, H});
        py::array_t<float> c = new_array({lstm ? L : 0, b, H});
        r.get_state(h.mutable_data(), lstm ? c.mutable_data() : nullptr);
        if (!lstm) return py::make_tuple(h, py::none());
        return py::make_tuple(h, c);
      });
}

}  // namespace bindings
}  // namespace fastlm
