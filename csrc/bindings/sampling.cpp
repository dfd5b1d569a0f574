// fastlm._C.Sampler (one sampling step on logits) and fastlm._C.DecodeLoop
// (generate's token loop, sampling and model steps in C++ with the GIL
// released): what python/fastlm/sampling.py runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>

#include "bindings/arrays.h"
#include "bindings/exclusive.h"
#include "model/decode_loop.h"
#include "model/gpt.h"
#include "model/rnn.h"
#include "model/sampler.h"
#if defined(FASTLM_WITH_CUDA) && FASTLM_WITH_CUDA
#include "cuda/runtime.h"
#endif

namespace fastlm {
namespace bindings {

namespace {

SamplingOptions sampling_options(const char* op, double temperature, int64_t top_k, double top_p,
                                 bool do_sample, double repetition_penalty) {
  if (do_sample && !(temperature > 0 && std::isfinite(temperature)))
    value_error(op, "temperature must be > 0 when sampling");
  if (top_k < 0) value_error(op, "top_k must be >= 0 (0 turns it off)");
  if (!(top_p > 0 && top_p <= 1)) value_error(op, "top_p must be in (0, 1]");
  if (!(repetition_penalty > 0 && std::isfinite(repetition_penalty)))
    value_error(op, "repetition_penalty must be finite and > 0");
  return SamplingOptions{(float)temperature, top_k, (float)top_p, do_sample,
                         (float)repetition_penalty};
}

// Ids in [0, vocab) (None: none) that must leave at least one id of the vocab.
std::vector<int64_t> checked_ids(py::handle obj, const char* op, const char* name, int64_t vocab,
                                 bool leave_one) {
  std::vector<int64_t> ids;
  if (obj.is_none()) return ids;
  ids = index_array(obj, op, name, 1);
  std::vector<bool> hit(vocab, false);
  int64_t distinct = 0;
  for (int64_t v : ids) {
    if (v < 0 || v >= vocab)
      value_error(op, std::string(name) + " holds " + std::to_string(v) + ", outside [0, " +
                          std::to_string(vocab) + ")");
    distinct += !hit[v], hit[v] = true;
  }
  if (leave_one && distinct == vocab) value_error(op, std::string(name) + " must leave at least one id");
  return ids;
}

// A DecodeLoop and the lock that keeps two threads from running it at once.
struct Loop {
  std::unique_ptr<DecodeLoop> loop;
  DecodeSettings settings;
  std::mutex busy;
};

template <class T>
py::array_t<T> transposed(const std::vector<T>& steps_by_rows, int64_t steps, int64_t rows) {
  py::array_t<T> out(std::vector<py::ssize_t>{rows, steps});
  T* o = out.mutable_data();
  for (int64_t s = 0; s < steps; ++s)
    for (int64_t r = 0; r < rows; ++r) o[r * steps + s] = steps_by_rows[s * rows + r];
  return out;
}

// (tokens, logprobs, live, pushed, nonfinite) of a chunk, each array (rows, steps).
py::tuple chunk_result(const DecodeLoop::Chunk& c, int64_t rows) {
  py::array_t<bool> live(std::vector<py::ssize_t>{rows, c.steps});
  bool* l = live.mutable_data();
  for (int64_t s = 0; s < c.steps; ++s)
    for (int64_t r = 0; r < rows; ++r) l[r * c.steps + s] = c.live[s * rows + r] != 0;
  return py::make_tuple(transposed(c.tokens, c.steps, rows), transposed(c.logprobs, c.steps, rows),
                        live, transposed(c.pushed, c.pushes, rows), c.nonfinite);
}

void check_run(Loop& l, int64_t n, int64_t vocab, const char* op) {
  if (n < 1) value_error(op, "n must be >= 1, got " + std::to_string(n));
  if (vocab != l.settings.vocab)
    value_error(op, "the model's vocab_size " + std::to_string(vocab) +
                        " differs from the loop's logits width " + std::to_string(l.settings.vocab));
}

// Up to n steps of the loop on a model, both held (the model's mutex is
// model_busy) and the GIL released while it runs; chunk_result's tuple.
py::tuple run_chunk(Loop& l, std::mutex& model_busy, int64_t n, const PushFn& push) {
  DecodeLoop::Chunk c;
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> own(l.busy);
    std::lock_guard<std::mutex> model(model_busy);
    c = l.loop->run(n, push);
  }
  return chunk_result(c, l.settings.rows);
}

}  // namespace

void bind_sampling(py::module_& m) {
  m.def(
      "_cuda_graph_counts",
      []() -> py::object {
#if defined(FASTLM_WITH_CUDA) && FASTLM_WITH_CUDA
        if (!cuda::graphs_enabled()) return py::none();
        const cuda::GraphCounts c = cuda::graph_counts();
        py::dict d;
        d["captures"] = c.captures, d["instantiations"] = c.instantiations, d["updates"] = c.updates;
        return d;
#else
        return py::none();
#endif
      },
      "With FASTLM_CUDA_GRAPHS=1 on a GPU, how many decode steps ran as CUDA graphs "
      "(captures), and how many of those instantiated a graph or updated one in place; "
      "None when graphs are off.");
  py::class_<Sampler>(m, "Sampler")
      .def(py::init([](uint64_t seed) { return new Sampler(seed); }), py::arg("seed"))
      .def("sample",
           [](Sampler& s, py::handle logits_obj, double temperature, int64_t top_k, double top_p,
              bool do_sample, double repetition_penalty, py::handle seen_obj,
              py::handle suppress_obj, py::handle logprobs_obj) {
             const char* op = "sample";
             py::array logits = float_array(logits_obj, op, "logits", 2);
             if (logits.shape(1) < 1) value_error(op, "logits must have at least one column");
             SamplingOptions o =
                 sampling_options(op, temperature, top_k, top_p, do_sample, repetition_penalty);
             const int64_t rows = logits.shape(0), vocab = logits.shape(1);
             SamplingExtras extra;
             py::array seen, lp;
             if (!seen_obj.is_none()) {
               seen = float_array(seen_obj, op, "seen", 2);
               require_shape(seen, {rows, vocab}, op, "seen");
               extra.seen = cptr(seen);
             }
             std::vector<int64_t> suppress = checked_ids(suppress_obj, op, "suppress", vocab, true);
             if (!suppress_obj.is_none())
               extra.suppress = suppress.data(), extra.n_suppress = suppress.size();
             if (!logprobs_obj.is_none()) {
               lp = float_array(logprobs_obj, op, "logprobs", 1, /*writable=*/true);
               require_shape(lp, {rows}, op, "logprobs");
               extra.logprobs = mptr(lp);
             }
             py::array_t<int64_t> out(std::vector<py::ssize_t>{rows});
             const float* x = cptr(logits);
             int64_t* y = out.mutable_data();
             py::gil_scoped_release nogil;
             s.sample(x, rows, vocab, o, y, extra);
             return out;
           },
           py::arg("logits"), py::arg("temperature") = 1.0, py::arg("top_k") = 0,
           py::arg("top_p") = 1.0, py::arg("do_sample") = true,
           py::arg("repetition_penalty") = 1.0, py::arg("seen") = py::none(),
           py::arg("suppress") = py::none(), py::arg("logprobs") = py::none(),
           "Next ids (rows,) from logits (rows, vocab) float32. seen (rows, vocab) float32 marks "
           "the ids repetition_penalty applies to; suppress lists ids never drawn; logprobs "
           "(rows,) float32, when given, receives each chosen id's log-probability.")
      .def("get_state",
           [](const Sampler& s) {
             return py::bytes(reinterpret_cast<const char*>(s.state.data()), sizeof(s.state));
           })
      .def("set_state", [](Sampler& s, py::bytes b) {
        std::string str = b;
        if (str.size() != sizeof(s.state))
          value_error("Sampler.set_state", "state must be " + std::to_string(sizeof(s.state)) +
                                               " bytes, got " + std::to_string(str.size()));
        std::memcpy(s.state.data(), str.data(), sizeof(s.state));
      });

  py::class_<Loop>(m, "DecodeLoop",
                   "generate's token loop in C++ (csrc/model/decode_loop.h): run_gpt / run_rnn "
                   "take up to n steps of sampling and model calls with the GIL released.")
      .def(py::init([](uint64_t seed, py::handle logits_obj, int64_t n_ids, int64_t max_new_tokens,
                       double temperature, int64_t top_k, double top_p, bool do_sample,
                       double repetition_penalty, py::handle seen_obj, py::handle eos_obj,
                       int64_t pad, py::handle suppress_obj, int64_t min_new_tokens,
                       bool logprobs) {
             const char* op = "DecodeLoop";
             py::array logits = float_array(logits_obj, op, "logits", 2);
             const int64_t rows = logits.shape(0), vocab = logits.shape(1);
             if (rows < 1 || vocab < 1) value_error(op, "logits must hold at least one row and column");
             if (n_ids < 1 || n_ids > vocab)
               value_error(op, "n_ids must be in [1, " + std::to_string(vocab) + "], got " +
                                   std::to_string(n_ids));
             if (max_new_tokens < 0) value_error(op, "max_new_tokens must be >= 0");
             if (min_new_tokens < 0) value_error(op, "min_new_tokens must be >= 0");
             if (pad < -1 || pad >= vocab)
               value_error(op, "pad must be -1 (none) or in [0, " + std::to_string(vocab) + ")");
             auto l = std::make_unique<Loop>();
             DecodeSettings& s = l->settings;
             s.opt = sampling_options(op, temperature, top_k, top_p, do_sample, repetition_penalty);
             s.rows = rows, s.vocab = vocab, s.n_ids = n_ids, s.max_new_tokens = max_new_tokens;
             s.eos = checked_ids(eos_obj, op, "eos", vocab, false);
             s.suppress = checked_ids(suppress_obj, op, "suppress", n_ids, true);
             s.pad = pad, s.min_new_tokens = min_new_tokens, s.logprobs = logprobs;
             py::array seen;
             if (!seen_obj.is_none()) {
               seen = float_array(seen_obj, op, "seen", 2);
               require_shape(seen, {rows, n_ids}, op, "seen");
             }
             const bool penalise = repetition_penalty != 1.0 && !seen_obj.is_none();
             l->loop = std::make_unique<DecodeLoop>(s, seed, cptr(logits),
                                                    penalise ? cptr(seen) : nullptr);
             return l.release();
           }),
           py::arg("seed"), py::arg("logits"), py::arg("n_ids"), py::arg("max_new_tokens"),
           py::arg("temperature") = 1.0, py::arg("top_k") = 0, py::arg("top_p") = 1.0,
           py::arg("do_sample") = true, py::arg("repetition_penalty") = 1.0,
           py::arg("seen") = py::none(), py::arg("eos") = py::none(), py::arg("pad") = -1,
           py::arg("suppress") = py::none(), py::arg("min_new_tokens") = 0,
           py::arg("logprobs") = false,
           "logits (rows, vocab) float32: the prefill's; ids drawn from [0, n_ids); seen "
           "(rows, n_ids) float32 marks the ids repetition_penalty applies to; eos ids finish "
           "a row, shown as pad after (-1: none); suppress ids are never drawn before "
           "min_new_tokens new tokens.")
      .def_property_readonly("done", [](Loop& l) { return l.loop->done(); })
      .def_property_readonly("step", [](Loop& l) { return l.loop->step(); })
      .def_property_readonly(
          "pending",
          [](Loop& l) -> py::object {
            if (!l.loop->has_pending()) return py::none();
            const std::vector<int64_t>& p = l.loop->pending();
            py::array_t<int64_t> out(std::vector<py::ssize_t>{(py::ssize_t)p.size()});
            std::copy(p.begin(), p.end(), out.mutable_data());
            return out;
          },
          "The tokens (rows,) int64 to feed the model before the next step, or None.")
      .def("set_logits",
           [](Loop& l, py::handle logits_obj) {
             const char* op = "DecodeLoop.set_logits";
             py::array logits = float_array(logits_obj, op, "logits", 2);
             require_shape(logits, {l.settings.rows, l.settings.vocab}, op, "logits");
             if (!l.loop->has_pending()) value_error(op, "no tokens were pending");
             std::lock_guard<std::mutex> lock(l.busy);
             l.loop->set_logits(cptr(logits));
           },
           py::arg("logits"), "The logits after the caller fed `pending` to the model itself.")
      .def("run_gpt",
           [](Loop& l, GPT& g, int64_t n, py::handle pos_obj, bool rows_mode, bool may_push) {
             const char* op = "DecodeLoop.run_gpt";
             check_run(l, n, g.config().vocab_size, op);
             const int64_t B = l.settings.rows, S = g.config().block_size;
             std::vector<int64_t> pos = index_array(pos_obj, op, "pos", 1);
             if ((int64_t)pos.size() != B)
               value_error(op, "pos must hold one position per row (" + std::to_string(B) + ")");
             for (int64_t p : pos)
               if (p < 1 || p > S)
                 value_error(op, "pos holds " + std::to_string(p) + ", outside [1, " +
                                     std::to_string(S) + "]");
             if (!rows_mode && std::count(pos.begin(), pos.end(), pos[0]) != B)
               value_error(op, "pos must be one position for all rows unless rows=True");
             // Each row's next position, while its window has room.
             PushFn push = [&](const int64_t* tok, float* logits) {
               if (!may_push || *std::max_element(pos.begin(), pos.end()) >= S) return false;
               if (rows_mode) g.decode_rows(tok, B, pos.data(), logits);
               else g.decode(tok, B, 1, pos[0], logits);
               for (int64_t& p : pos) ++p;
               return true;
             };
             return run_chunk(l, g.store.busy, n, push);
           },
           py::arg("model"), py::arg("n"), py::arg("pos"), py::arg("rows"), py::arg("may_push"),
           "Up to n steps on a Transformer whose KV cache holds this batch: row i's next token "
           "goes at pos[i] (decode_rows when rows, else decode at the common position); pushes "
           "stop at block_size, or at once unless may_push. Returns (tokens, logprobs, live) "
           "(rows, steps) int64 / float32 / bool, pushed (rows, pushes) int64 and whether it "
           "stopped at non-finite logits.")
      .def("run_rnn",
           [](Loop& l, RNNLM& r, int64_t n, bool may_push) {
             const char* op = "DecodeLoop.run_rnn";
             check_run(l, n, r.config().vocab_size, op);
             const int64_t B = l.settings.rows;
             if (may_push && r.state_batch() != B)
               value_error(op, "the model's carried state holds " +
                                   std::to_string(r.state_batch()) + " rows, not the loop's " +
                                   std::to_string(B));
             PushFn push = [&](const int64_t* tok, float* logits) {
               if (!may_push) return false;
               r.forward(tok, 1, B, /*carry=*/true, logits);  // (1, B) time-major is (B,)
               return true;
             };
             return run_chunk(l, r.store.busy, n, push);
           },
           py::arg("model"), py::arg("n"), py::arg("may_push"),
           "Up to n steps on a recurrent model carrying this batch's state; as run_gpt.");
}

}  // namespace bindings
}  // namespace fastlm
