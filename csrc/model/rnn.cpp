#include "model/rnn.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

#include "dropout_hash.h"
#include "model/linear.h"
#include "model/step_graph.h"

namespace fastlm {

void validate(const RNNConfig& c) {
  check_positive({{"vocab_size", c.vocab_size}, {"embed_dim", c.embed_dim},
                  {"hidden_size", c.hidden_size}, {"num_layers", c.num_layers}});
}

RNNLM::RNNLM(const RNNConfig& config, const Kernels& kernels)
    : ModelBase(config, kernels), wpack_(kernels), state_h_(kernels), state_c_(kernels) {
  const int64_t V = cfg_.vocab_size, E = cfg_.embed_dim, H = cfg_.hidden_size;
  const int64_t GH = gate_count() * H;
  store.add("embedding.weight", {V, E});
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    const std::string s = std::to_string(l);
    store.add("rnn.weight_ih_l" + s, {GH, l ? H : E});
    store.add("rnn.weight_hh_l" + s, {GH, H});
    store.add("rnn.bias_ih_l" + s, {GH});
    store.add("rnn.bias_hh_l" + s, {GH});
  }
  store.add("fc.weight", {V, H});
  store.add("fc.bias", {V});
  store.allocate();
  w_ = view(store.params());
  g_ = view(store.grads());
}

RNNLM::Weights RNNLM::view(float* base) const {
  Weights w;
  ParamStore::Walk next = store.walk(base);
  w.emb = next();
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    Layer L;
    L.w_ih = next(), L.w_hh = next(), L.b_ih = next(), L.b_hh = next();
    w.layers.push_back(L);
  }
  w.fc_w = next();
  w.fc_b = next();
  return w;
}

void RNNLM::ensure_acts(int64_t t, int64_t b) {
  const bool drop = drop_p_ > 0.f && cfg_.num_layers > 1;
  if (t == acts_t_ && b == acts_b_ && drop == acts_drop_) return;
  const int64_t TB = t * b, H = cfg_.hidden_size, E = cfg_.embed_dim, V = cfg_.vocab_size;
  const int64_t GH = gate_count() * H, wide = E > H ? E : H;
  const bool lstm = cfg_.kind == CellKind::kLSTM;
  const int64_t table = token_table(t, b) ? V * GH : 0;
  acts_t_ = acts_b_ = 0;  // re-carved below only once the memory is there
  la_.resize(cfg_.num_layers);
  const int64_t total = carve_acts([&](Carve<float>& take) {
    emb_ = take(TB * E);
    for (LayerActs& a : la_) {
      a.pre = take(TB * GH), a.gates = take(TB * 4 * H), a.h = take((t + 1) * b * H);
      a.c = lstm ? take((t + 1) * b * H) : nullptr;
      a.drop = drop ? take(TB * H) : nullptr;
    }
    logits_ = take(TB * V);
    gh_ = take(b * 3 * H), dpre_ = take(TB * GH), dgh_ = take(TB * 3 * H);
    dh_sink_ = take(b * H), dc_a_ = take(b * H), dc_b_ = take(b * H);
    dseq_a_ = take(TB * wide), dseq_b_ = take(TB * wide);
    table_ = take(table), dbias_ = take(GH);
  });
  k_.zero(acts_.data(), total);  // every shape starts from zeros
  acts_t_ = t, acts_b_ = b, acts_drop_ = drop;
  wpack_.reserve(std::max(packed_b_size(k_, GH, H), packed_b_size(k_, H, GH)),
                 "the packed recurrent weights");
}

const float* RNNLM::run(const int64_t* idx, int64_t t, int64_t b, bool carry) {
  const int64_t H = cfg_.hidden_size, E = cfg_.embed_dim, GH = gate_count() * H, BH = b * H;
  const bool lstm = cfg_.kind == CellKind::kLSTM;
  ensure_acts(t, b);
  carry = carry && state_b_ == b;
  const bool table = token_table(t, b);
  if (!table) k_.embedding_forward(idx, w_.emb, nullptr, emb_, t, b, E, 0);
  const float* x = emb_;
  int64_t in = E;
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    const Layer& L = w_.layers[l];
    LayerActs& a = la_[l];
    if (carry) {
      k_.copy(a.h, state_h_.data() + l * BH, BH);
      if (lstm) k_.copy(a.c, state_c_.data() + l * BH, BH);
    } else {
      k_.zero(a.h, BH);
      if (lstm) k_.zero(a.c, BH);
    }
    // The input projection of the whole sequence is one GEMM; each step adds
    // the recurrent GEMM of its b rows, then the fused cell kernel.
    if (l == 0 && table) {
      // The first layer's input projection depends on the token alone: with
      // fewer vocabulary entries than tokens, project the vocabulary and
      // gather a row per token.
      linear_forward(k_, w_.emb, L.w_ih, L.b_ih, table_, cfg_.vocab_size, E, GH);
      k_.embedding_forward(idx, table_, nullptr, a.pre, t, b, GH, 0);
    } else {
      linear_forward(k_, x, L.w_ih, L.b_ih, a.pre, t * b, in, GH);
    }
    const float* whh = pack_b(k_, L.w_hh, GH, H, /*trans_b=*/true, wpack_.data());
    for (int64_t s = 0; s < t; ++s) {
      float* pre = a.pre + s * b * GH;
      const float* h = a.h + s * BH;
      if (lstm) {
        gemm(k_, h, L.w_hh, L.b_hh, pre, b, GH, H, false, true, /*accumulate=*/true, whh);
        k_.lstm_cell_forward(pre, a.c + s * BH, a.gates + s * b * 4 * H, a.c + (s + 1) * BH,
                             a.h + (s + 1) * BH, b, H);
      } else {
        gemm(k_, h, L.w_hh, L.b_hh, gh_, b, GH, H, false, true, false, whh);
        k_.gru_cell_forward(pre, gh_, h, a.gates + s * b * 4 * H, a.h + (s + 1) * BH, b, H);
      }
    }
    x = a.h + BH;
    in = H;
    if (a.drop && l + 1 < cfg_.num_layers) {
      k_.dropout(x, a.drop, t * BH, drop_p_, dropout::key(drop_seed_, l));
      x = a.drop;
    }
  }
  state_b_ = 0;  // until the new state is complete
  state_h_.reserve(cfg_.num_layers * BH, "the recurrent state");
  if (lstm) state_c_.reserve(cfg_.num_layers * BH, "the recurrent state");
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    k_.copy(state_h_.data() + l * BH, la_[l].h + t * BH, BH);
    if (lstm) k_.copy(state_c_.data() + l * BH, la_[l].c + t * BH, BH);
  }
  state_b_ = b;
  return x;
}

void RNNLM::set_state(const float* h, const float* c, int64_t b) {
  const int64_t n = cfg_.num_layers * b * cfg_.hidden_size;
  state_b_ = 0;
  state_h_.reserve(n, "the recurrent state");
  state_h_.upload(h, n);
  if (cfg_.kind == CellKind::kLSTM) {
    state_c_.reserve(n, "the recurrent state");
    state_c_.upload(c, n);
  }
  state_b_ = b;
}

void RNNLM::get_state(float* h, float* c) const {
  const int64_t n = cfg_.num_layers * state_b_ * cfg_.hidden_size;
  state_h_.download(h, n);
  if (c && cfg_.kind == CellKind::kLSTM) state_c_.download(c, n);
}

void RNNLM::forward(const int64_t* idx, int64_t t, int64_t b, bool carry, float* logits) {
  const int64_t* ids = upload_ids(ids_, idx, t * b);
  // A decode step (one token per row on the carried state) replays the
  // step's graph; its buffers are sized first, so none is allocated inside.
  const bool step = t == 1 && carry && state_b_ == b && logits && drop_p_ == 0.f;
  if (step) ensure_acts(1, b);
  StepGraph graph(k_, step ? &step_graph_ : nullptr);
  const float* x = run(ids, t, b, carry);
  linear_forward(k_, x, w_.fc_w, w_.fc_b, logits_, t * b, cfg_.hidden_size, cfg_.vocab_size);
  graph.end();
  if (logits) k_.download(logits, logits_, t * b * cfg_.vocab_size * (int64_t)sizeof(float));
}

float RNNLM::loss(const int64_t* idx, const int64_t* targets, int64_t t, int64_t b, bool carry) {
  // Evaluation between training windows must not disturb the carried state.
  const int64_t saved_b = state_b_, n = cfg_.num_layers * saved_b * cfg_.hidden_size;
  const bool lstm = cfg_.kind == CellKind::kLSTM;
  Buffer<float> saved_h(k_), saved_c(k_);
  saved_h.reserve(n, "the saved recurrent state");
  k_.copy(saved_h.data(), state_h_.data(), n);
  if (lstm) {
    saved_c.reserve(n, "the saved recurrent state");
    k_.copy(saved_c.data(), state_c_.data(), n);
  }
  forward(idx, t, b, carry, nullptr);
  const float loss = k_.cross_entropy(logits_, upload_ids(targets_, targets, t * b), nullptr, t * b,
                                      cfg_.vocab_size, -100, 1.f);
  state_b_ = saved_b;
  std::swap(state_h_, saved_h);
  if (lstm) std::swap(state_c_, saved_c);
  return loss;
}

float RNNLM::forward_backward(const int64_t* idx, const int64_t* targets, int64_t t, int64_t b,
                              bool carry, float grad_scale, float dropout_p,
                              uint64_t dropout_seed) {
  const DropoutScope dropout = dropout_for_call(dropout_p, dropout_seed);
  const int64_t TB = t * b, H = cfg_.hidden_size, E = cfg_.embed_dim, V = cfg_.vocab_size;
  forward(idx, t, b, carry, nullptr);
  const int64_t* ids = ids_.data();
  const float loss = k_.cross_entropy(logits_, upload_ids(targets_, targets, TB), logits_, TB, V,
                                      -100, grad_scale);
  const float* top = cfg_.num_layers ? la_.back().h + b * H : emb_;
  float *dout = dseq_a_, *dx = dseq_b_;
  linear_backward(k_, logits_, top, w_.fc_w, dout, g_.fc_w, g_.fc_b, TB, H, V, false);
  for (int64_t l = cfg_.num_layers - 1; l >= 0; --l) {
    layer_backward(l, ids, t, b, dout, dx);
    // dx is the gradient of layer l - 1's dropped outputs: back through the mask.
    if (l > 0 && la_[l - 1].drop)
      k_.dropout(dx, dx, TB * H, dropout_p, dropout::key(dropout_seed, l - 1));
    std::swap(dout, dx);
  }
  if (!token_table(t, b)) k_.embedding_backward(dout, ids, g_.emb, nullptr, t, b, E, 0);
  return loss;
}

// dout_h (t, b, h): gradient of the layer's outputs, which the recurrent
// gradients are added to in place (so it is overwritten); writes the gradient of
// its inputs to dx (for layer 0 on the token-table path, adds the embedding's
// gradient to g_.emb instead).
void RNNLM::layer_backward(int64_t l, const int64_t* idx, int64_t t, int64_t b, float* dout_h,
                           float* dx) {
  const int64_t H = cfg_.hidden_size, GH = gate_count() * H, BH = b * H, TB = t * b;
  const int64_t V = cfg_.vocab_size, E = cfg_.embed_dim;
  const bool lstm = cfg_.kind == CellKind::kLSTM;
  const Layer& L = w_.layers[l];
  Layer& G = g_.layers[l];
  const LayerActs& a = la_[l];
  k_.zero(dpre_, TB * GH);
  if (!lstm) k_.zero(dgh_, TB * GH);
  float *dc = dc_a_, *dc_prev = dc_b_;
  const float* whh = pack_b(k_, L.w_hh, H, GH, /*trans_b=*/false, wpack_.data());
  k_.zero(dc, BH);
  for (int64_t s = t - 1; s >= 0; --s) {
    // The gradient reaching h[s+1]: the output's own, to which step s+1 added
    // the recurrent one in place. Step s adds its own to row s-1 in turn; the
    // one reaching the initial state (s = 0) is not wanted (the carried state
    // is a constant), so the GRU's direct part goes to a scratch row and the
    // GEMM is skipped.
    const float* dh = dout_h + s * BH;
    float* dh_prev = s ? dout_h + (s - 1) * BH : dh_sink_;
    float* dpre = dpre_ + s * b * GH;
    const float* gates = a.gates + s * b * 4 * H;
    if (lstm) {
      k_.zero(dc_prev, BH);
      k_.lstm_cell_backward(dh, dc, a.c + s * BH, a.c + (s + 1) * BH, gates, dpre, dc_prev, b, H);
      if (s) gemm(k_, dpre, L.w_hh, nullptr, dh_prev, b, H, GH, false, false, true, whh);
      std::swap(dc, dc_prev);
    } else {
      float* dgh = dgh_ + s * b * GH;
      if (!s) k_.zero(dh_sink_, BH);
      k_.gru_cell_backward(dh, a.h + s * BH, gates, dpre, dgh, dh_prev, b, H);
      if (s) gemm(k_, dgh, L.w_hh, nullptr, dh_prev, b, H, GH, false, false, true, whh);
    }
  }
  // An LSTM's two biases add to the same pre-activations, so their gradients
  // are one column sum, taken once and added to both.
  float* db_ih = lstm ? dbias_ : G.b_ih;
  if (lstm) k_.zero(dbias_, GH);
  // Weight gradients of all steps at once: the h rows 0..t-1 are the inputs
  // of the recurrent GEMMs.
  linear_backward(k_, lstm ? dpre_ : dgh_, a.h, L.w_hh, nullptr, G.w_hh, lstm ? nullptr : G.b_hh,
                  TB, H, GH);
  if (l == 0 && token_table(t, b)) {
    // Inputs are embedding rows: sum dpre per token, then the products
    // (vocab, ...) stand for the (t*b, ...) ones, and d emb comes out directly.
    k_.zero(table_, V * GH);
    k_.embedding_backward(dpre_, idx, table_, nullptr, t, b, GH, 0);
    linear_backward(k_, table_, w_.emb, L.w_ih, g_.emb, G.w_ih, db_ih, V, E, GH);
  } else {
    const float* x = !l ? emb_ : la_[l - 1].drop ? la_[l - 1].drop : la_[l - 1].h + b * H;
    linear_backward(k_, dpre_, x, L.w_ih, dx, G.w_ih, db_ih, TB, l ? H : E, GH, false);
  }
  if (lstm) {
    k_.residual_forward(G.b_ih, dbias_, G.b_ih, GH);
    k_.residual_forward(G.b_hh, dbias_, G.b_hh, GH);
  }
}

}  // namespace fastlm
