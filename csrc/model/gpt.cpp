#include "model/gpt.h"

#include <cmath>
#include <stdexcept>

#include "dropout_hash.h"
#include "model/linear.h"
#include "model/step_graph.h"

namespace fastlm {

void validate(const GPTConfig& c) {
  check_positive({{"vocab_size", c.vocab_size}, {"block_size", c.block_size}, {"n_layer", c.n_layer},
                  {"n_head", c.n_head}, {"n_embd", c.n_embd}});
  if (c.n_embd % c.n_head != 0)
    throw std::invalid_argument("n_embd (" + std::to_string(c.n_embd) +
                                ") must be divisible by n_head (" + std::to_string(c.n_head) +
                                ")");
  if (!(c.layer_norm_epsilon > 0) || !std::isfinite(c.layer_norm_epsilon))
    throw std::invalid_argument("layer_norm_epsilon must be finite and > 0, got " +
                                std::to_string(c.layer_norm_epsilon));
}

GPT::GPT(const GPTConfig& config, const Kernels& kernels)
    : ModelBase(config, kernels),
      packed_(kernels),
      ln_zero_(kernels),
      ln_dscratch_(kernels),
      cache_(kernels) {
  const int64_t V = cfg_.vocab_size, C = cfg_.n_embd;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) { store.add(name, shape); };
  auto add_bias = [&](const std::string& name, int64_t n) {
    if (cfg_.bias) store.add(name, {n});
  };
  add("transformer.wte.weight", {V, C});
  add("transformer.wpe.weight", {cfg_.block_size, C});
  for (int64_t l = 0; l < cfg_.n_layer; ++l) {
    const std::string p = "transformer.h." + std::to_string(l) + ".";
    add(p + "ln_1.weight", {C});
    add_bias(p + "ln_1.bias", C);
    add(p + "attn.c_attn.weight", {3 * C, C});
    add_bias(p + "attn.c_attn.bias", 3 * C);
    add(p + "attn.c_proj.weight", {C, C});
    add_bias(p + "attn.c_proj.bias", C);
    add(p + "ln_2.weight", {C});
    add_bias(p + "ln_2.bias", C);
    add(p + "mlp.c_fc.weight", {4 * C, C});
    add_bias(p + "mlp.c_fc.bias", 4 * C);
    add(p + "mlp.c_proj.weight", {C, 4 * C});
    add_bias(p + "mlp.c_proj.bias", C);
  }
  add("transformer.ln_f.weight", {C});
  add_bias("transformer.ln_f.bias", C);
  if (!cfg_.tie_word_embeddings) add("lm_head.weight", {V, C});
  store.allocate();
  if (!cfg_.bias) {
    ln_zero_.assign_zeros(C, "LayerNorm's zero bias");
    ln_dscratch_.assign_zeros(C, "LayerNorm's unused bias gradient");
  }
  w_ = view(store.params());
  g_ = view(store.grads());
}

GPT::Weights GPT::view(float* base) const {
  Weights w;
  ParamStore::Walk next = store.walk(base);
  auto bias = [&]() { return cfg_.bias ? next() : nullptr; };
  w.wte = next();
  w.wpe = next();
  for (int64_t l = 0; l < cfg_.n_layer; ++l) {
    Layer L;
    L.ln1_w = next(), L.ln1_b = bias(), L.attn_w = next(), L.attn_b = bias();
    L.proj_w = next(), L.proj_b = bias(), L.ln2_w = next(), L.ln2_b = bias();
    L.fc_w = next(), L.fc_b = bias(), L.fcproj_w = next(), L.fcproj_b = bias();
    w.layers.push_back(L);
  }
  w.lnf_w = next();
  w.lnf_b = bias();
  w.lm_head = cfg_.tie_word_embeddings ? w.wte : next();
  return w;
}

void GPT::ensure_acts(int64_t b, int64_t t) {
  if (b == acts_b_ && t == acts_t_) return;
  // Every extent is a multiple of b * t, so prefill and decode, which
  // alternate, re-carve the buffer of the larger one.
  const int64_t BT = b * t, C = cfg_.n_embd, V = cfg_.vocab_size, H = cfg_.n_head;
  acts_b_ = acts_t_ = 0;  // re-carved below only once the memory is there
  layer_acts_.resize(cfg_.n_layer);
  carve_acts([&](Carve<float>& take) {
    encoded_ = take(BT * C);
    for (LayerActs& a : layer_acts_) {
      a.ln1 = take(BT * C), a.ln1_mean = take(BT), a.ln1_rstd = take(BT);
      a.qkv = take(3 * BT * C), a.atty = take(BT * C), a.lse = take(BT * H);
      a.res2 = take(BT * C), a.ln2 = take(BT * C), a.ln2_mean = take(BT), a.ln2_rstd = take(BT);
      a.fch = take(4 * BT * C), a.fch_gelu = take(4 * BT * C), a.res3 = take(BT * C);
    }
    lnf_ = take(BT * C), lnf_mean_ = take(BT), lnf_rstd_ = take(BT);
    logits_ = take(BT * V);
    dresidual_ = take(BT * C), scratch_ = take(BT * C);
    dwide1_ = take(4 * BT * C), dwide2_ = take(4 * BT * C);
  });
  acts_b_ = b;
  acts_t_ = t;
}

// Streams: 0 the embedding output; per layer l, 3l + 1 the attention
// probabilities, 3l + 2 and 3l + 3 the attention and MLP residual branches.
uint64_t GPT::drop_key(uint64_t stream) const { return dropout::key(drop_seed_, stream); }

const float* GPT::run_blocks(int64_t b, int64_t t, int64_t pos, bool cache,
                             const int64_t* row_pos) {
  const int64_t C = cfg_.n_embd, H = cfg_.n_head, D = C / H, BT = b * t, S = cfg_.block_size;
  const float eps = cfg_.layer_norm_epsilon;
  const float* residual = encoded_;
  for (int64_t l = 0; l < cfg_.n_layer; ++l) {
    const Layer& L = w_.layers[l];
    LayerActs& a = layer_acts_[l];
    k_.layernorm_forward(residual, L.ln1_w, ln_bias(L.ln1_b), a.ln1, a.ln1_mean, a.ln1_rstd, BT, C,
                         eps);
    // q, k and v are read in place from rows of 3C: the activations' qkv,
    // or the KV cache, which keeps the qkv rows of every past position.
    const float* qkv = a.qkv;
    int64_t row0 = 0, batch_stride = t * 3 * C;
    if (!cache) {
      linear_forward(k_, a.ln1, L.attn_w, L.attn_b, a.qkv, BT, C, 3 * C);
    } else {
      float* layer_cache = cache_.data() + l * b * S * 3 * C;
      GemmArgs g;
      g.b = L.attn_w, g.b_packed = packed_layers_[l].attn, g.bias = L.attn_b, g.n = 3 * C, g.k = C;
      g.lda = C, g.ldb = C, g.trans_b = true;
      if (row_pos) {  // one GEMM for all rows, then each row to its own position
        g.a = a.ln1, g.c = a.qkv, g.m = b, g.ldc = 3 * C;
        k_.matmul(g);
        for (int64_t i = 0; i < b; ++i)
          k_.copy(layer_cache + (i * S + row_pos[i]) * 3 * C, a.qkv + i * 3 * C, 3 * C);
      } else if (t == 1) {  // one row per sequence: a single GEMM strided over the cache
        g.a = a.ln1, g.c = layer_cache + pos * 3 * C, g.m = b, g.ldc = S * 3 * C;
        k_.matmul(g);
      } else {
        for (int64_t i = 0; i < b; ++i) {
          g.a = a.ln1 + i * t * C, g.c = layer_cache + (i * S + pos) * 3 * C;
          g.m = t, g.ldc = 3 * C;
          k_.matmul(g);
        }
      }
      qkv = layer_cache, row0 = pos, batch_stride = S * 3 * C;
    }
    AttentionArgs att;
    att.q = qkv + row0 * 3 * C;
    att.k = qkv + C;
    att.v = qkv + 2 * C;
    att.sq = {batch_stride, D, 3 * C};
    att.seq_k = row0 + t;
    att.sk = att.sv = att.sq;
    att.out = a.atty;
    att.so = {t * C, D, C};
    att.lse = a.lse;
    att.batch = b, att.heads = H, att.seq_q = t, att.head_dim = D, att.causal = true;
    att.dropout_p = drop_p_, att.dropout_seed = drop_key(3 * l + 1);
    if (!row_pos) {
      k_.attention_forward(att);
    } else {  // each row over its own cache length
      for (int64_t i = 0; i < b; ++i) {
        AttentionArgs r = att;
        r.q = qkv + (i * S + row_pos[i]) * 3 * C;
        r.k = att.k + i * S * 3 * C, r.v = att.v + i * S * 3 * C;
        r.out = a.atty + i * C, r.lse = a.lse + i * H;
        r.batch = 1, r.seq_k = row_pos[i] + 1;
        k_.attention_forward(r);
      }
    }
    const Packed p = cache ? packed_layers_[l] : Packed{};
    linear_forward(k_, a.atty, L.proj_w, L.proj_b, scratch_, BT, C, C, p.proj);
    if (drop_p_ > 0.f) k_.dropout(scratch_, scratch_, BT * C, drop_p_, drop_key(3 * l + 2));
    k_.residual_forward(residual, scratch_, a.res2, BT * C);
    k_.layernorm_forward(a.res2, L.ln2_w, ln_bias(L.ln2_b), a.ln2, a.ln2_mean, a.ln2_rstd, BT, C,
                         eps);
    linear_forward(k_, a.ln2, L.fc_w, L.fc_b, a.fch, BT, C, 4 * C, p.fc);
    gelu_forward(a.fch, a.fch_gelu, BT * 4 * C);
    linear_forward(k_, a.fch_gelu, L.fcproj_w, L.fcproj_b, scratch_, BT, 4 * C, C, p.fcproj);
    if (drop_p_ > 0.f) k_.dropout(scratch_, scratch_, BT * C, drop_p_, drop_key(3 * l + 3));
    k_.residual_forward(a.res2, scratch_, a.res3, BT * C);
    residual = a.res3;
  }
  return residual;
}

void GPT::gelu_forward(const float* x, float* y, int64_t n) const {
  (cfg_.activation == Activation::kGeluErf ? k_.gelu_erf_forward : k_.gelu_forward)(x, y, n);
}

void GPT::gelu_backward(const float* dy, const float* x, float* dx, int64_t n) const {
  (cfg_.activation == Activation::kGeluErf ? k_.gelu_erf_backward : k_.gelu_backward)(dy, x, dx,
                                                                                      n);
}

void GPT::forward(const int64_t* idx, int64_t b, int64_t t, float* logits) {
  upload_ids(ids_, idx, b * t);
  run_forward(b, t);
  if (logits) k_.download(logits, logits_, b * t * cfg_.vocab_size * (int64_t)sizeof(float));
}

void GPT::run_forward(int64_t b, int64_t t, bool head) {
  const int64_t C = cfg_.n_embd, BT = b * t;
  ensure_acts(b, t);
  k_.embedding_forward(ids_.data(), w_.wte, w_.wpe, encoded_, b, t, C, 0);
  if (drop_p_ > 0.f) k_.dropout(encoded_, encoded_, BT * C, drop_p_, drop_key(0));
  const float* residual = run_blocks(b, t, 0, false);
  k_.layernorm_forward(residual, w_.lnf_w, ln_bias(w_.lnf_b), lnf_, lnf_mean_, lnf_rstd_, BT, C,
                       cfg_.layer_norm_epsilon);
  if (head) linear_forward(k_, lnf_, w_.lm_head, nullptr, logits_, BT, C, cfg_.vocab_size);
}

// The head and the loss through classifier_loss: a backend may fuse them
// (the CUDA bf16 table keeps the logits in bfloat16); dlnf null for the loss only.
float GPT::head_loss(const int64_t* targets, int64_t rows, float dloss, float* dlnf) {
  ClassifierArgs a;
  a.inp = lnf_, a.weight = w_.lm_head, a.targets = targets, a.logits = logits_;
  a.dinp = dlnf, a.dweight = dlnf ? g_.lm_head : nullptr;
  a.rows = rows, a.channels = cfg_.n_embd, a.vocab = cfg_.vocab_size;
  a.ignore_index = -100, a.dloss = dloss;
  return classifier_loss(k_, a);
}

float GPT::loss(const int64_t* idx, const int64_t* targets, int64_t b, int64_t t) {
  upload_ids(ids_, idx, b * t);
  const int64_t* tg = upload_ids(targets_, targets, b * t);
  run_forward(b, t, false);
  return head_loss(tg, b * t, 1.f, nullptr);
}

float GPT::forward_backward(const int64_t* idx, const int64_t* targets, int64_t b, int64_t t,
                            float grad_scale, float dropout_p, uint64_t dropout_seed) {
  const DropoutScope dropout = dropout_for_call(dropout_p, dropout_seed);
  const int64_t C = cfg_.n_embd, H = cfg_.n_head, D = C / H, BT = b * t;
  const bool drop = dropout_p > 0.f;
  const int64_t* ids = upload_ids(ids_, idx, BT);
  const int64_t* tg = upload_ids(targets_, targets, BT);
  run_forward(b, t, false);
  const float loss = head_loss(tg, BT, grad_scale, scratch_);

  const float* residual = cfg_.n_layer ? layer_acts_.back().res3 : encoded_;
  k_.zero(dresidual_, BT * C);
  if (!cfg_.bias) k_.zero(ln_dscratch_.data(), C);  // sums of unused gradients stay small
  k_.layernorm_backward(scratch_, residual, w_.lnf_w, lnf_mean_, lnf_rstd_, dresidual_, g_.lnf_w,
                        ln_dbias(g_.lnf_b), BT, C);
  for (int64_t l = cfg_.n_layer - 1; l >= 0; --l) {
    const Layer& L = w_.layers[l];
    Layer& G = g_.layers[l];
    LayerActs& a = layer_acts_[l];
    const float* res_in = l ? layer_acts_[l - 1].res3 : encoded_;
    // res3 = res2 + c_proj(gelu(c_fc(ln_2(res2)))); dres holds d res3.
    // Through a dropped branch: its mask applied to dres, into d2 (free here).
    if (drop) k_.dropout(dresidual_, dwide2_, BT * C, dropout_p, drop_key(3 * l + 3));
    linear_backward(k_, drop ? dwide2_ : dresidual_, a.fch_gelu, L.fcproj_w, dwide1_, G.fcproj_w, G.fcproj_b,
                    BT, 4 * C, C, false);
    gelu_backward(dwide1_, a.fch, dwide2_, BT * 4 * C);
    linear_backward(k_, dwide2_, a.ln2, L.fc_w, scratch_, G.fc_w, G.fc_b, BT, C, 4 * C, false);
    k_.layernorm_backward(scratch_, a.res2, L.ln2_w, a.ln2_mean, a.ln2_rstd, dresidual_, G.ln2_w,
                          ln_dbias(G.ln2_b), BT, C);
    // res2 = res_in + c_proj(attention(c_attn(ln_1(res_in)))); dres holds d res2.
    if (drop) k_.dropout(dresidual_, dwide2_, BT * C, dropout_p, drop_key(3 * l + 2));
    linear_backward(k_, drop ? dwide2_ : dresidual_, a.atty, L.proj_w, scratch_, G.proj_w, G.proj_b, BT, C, C,
                    false);
    k_.zero(dwide1_, BT * 3 * C);
    AttentionGradArgs ag;
    ag.fwd.q = a.qkv, ag.fwd.k = a.qkv + C, ag.fwd.v = a.qkv + 2 * C;
    ag.fwd.sq = ag.fwd.sk = ag.fwd.sv = {t * 3 * C, D, 3 * C};
    ag.fwd.out = a.atty, ag.fwd.so = {t * C, D, C}, ag.fwd.lse = a.lse;
    ag.fwd.batch = b, ag.fwd.heads = H, ag.fwd.seq_q = t, ag.fwd.seq_k = t, ag.fwd.head_dim = D;
    ag.fwd.causal = true;
    ag.fwd.dropout_p = dropout_p, ag.fwd.dropout_seed = drop_key(3 * l + 1);
    ag.dout = scratch_, ag.dq = dwide1_, ag.dk = dwide1_ + C, ag.dv = dwide1_ + 2 * C;
    k_.attention_backward(ag);
    linear_backward(k_, dwide1_, a.ln1, L.attn_w, scratch_, G.attn_w, G.attn_b, BT, C, 3 * C, false);
    k_.layernorm_backward(scratch_, res_in, L.ln1_w, a.ln1_mean, a.ln1_rstd, dresidual_, G.ln1_w,
                          ln_dbias(G.ln1_b), BT, C);
  }
  if (drop) k_.dropout(dresidual_, dresidual_, BT * C, dropout_p, drop_key(0));
  k_.embedding_backward(dresidual_, ids, g_.wte, g_.wpe, b, t, C, 0);
  return loss;
}

void GPT::decode(const int64_t* tokens, int64_t b, int64_t tn, int64_t pos, float* logits,
                 const int64_t* last) {
  const int64_t C = cfg_.n_embd, S = cfg_.block_size;
  if (pos < 0 || tn < 1 || pos + tn > S)
    throw std::invalid_argument("decode: positions [" + std::to_string(pos) + ", " +
                                std::to_string(pos + tn) + ") exceed block_size " +
                                std::to_string(S));
  for (int64_t i = 0; last && i < b; ++i)
    if (last[i] < 0 || last[i] >= tn)
      throw std::invalid_argument("decode: last[" + std::to_string(i) + "] = " +
                                  std::to_string(last[i]) + " is outside [0, " +
                                  std::to_string(tn) + ")");
  if (b != cache_b_) {
    if (pos != 0) throw std::invalid_argument("decode: a new batch size must start at pos 0");
    cache_b_ = 0;  // until the new cache is there
    cache_.assign_zeros(cfg_.n_layer * b * S * 3 * C, "the KV cache");
    cache_b_ = b;
  }
  if (pos == 0 && packed_version_ != store.version) pack_for_decode();
  ensure_acts(b, tn);
  const int64_t* ids = upload_ids(ids_, tokens, b * tn);
  // A step of one token per row (not a prefill) replays the step's graph.
  StepGraph step(k_, tn == 1 && pos > 0 ? &step_graph_ : nullptr);
  k_.embedding_forward(ids, w_.wte, w_.wpe, encoded_, b, tn, C, pos);
  decode_head(run_blocks(b, tn, pos, true), b, tn, last);
  step.end();
  k_.download(logits, logits_, b * cfg_.vocab_size * (int64_t)sizeof(float));
}

void GPT::decode_rows(const int64_t* tokens, int64_t b, const int64_t* pos, float* logits) {
  const int64_t C = cfg_.n_embd, S = cfg_.block_size;
  if (b != cache_b_)
    throw std::invalid_argument("decode_rows: needs a prefill (decode at pos 0) of the same " +
                                std::to_string(b) + " rows first");
  for (int64_t i = 0; i < b; ++i)
    if (pos[i] < 0 || pos[i] >= S)
      throw std::invalid_argument("decode_rows: pos[" + std::to_string(i) + "] = " +
                                  std::to_string(pos[i]) + " is outside [0, block_size " +
                                  std::to_string(S) + ")");
  ensure_acts(b, 1);
  const int64_t* ids = upload_ids(ids_, tokens, b);
  StepGraph step(k_, &step_graph_);
  for (int64_t i = 0; i < b; ++i)
    k_.embedding_forward(ids + i, w_.wte, w_.wpe, encoded_ + i * C, 1, 1, C, pos[i]);
  decode_head(run_blocks(b, 1, 0, true, pos), b, 1, nullptr);
  step.end();
  k_.download(logits, logits_, b * cfg_.vocab_size * (int64_t)sizeof(float));
}

void GPT::decode_head(const float* residual, int64_t b, int64_t tn, const int64_t* last) {
  const int64_t C = cfg_.n_embd;
  // Only one position per row is needed for the next token.
  for (int64_t i = 0; i < b; ++i) {
    const int64_t r = i * tn + (last ? last[i] : tn - 1);
    k_.layernorm_forward(residual + r * C, w_.lnf_w, ln_bias(w_.lnf_b), lnf_ + i * C,
                         lnf_mean_ + i, lnf_rstd_ + i, 1, C, cfg_.layer_norm_epsilon);
  }
  const int64_t V = cfg_.vocab_size;
  linear_forward(k_, lnf_, w_.lm_head, nullptr, logits_, b, C, V, packed_wte_);
}

void GPT::pack_for_decode() {
  const int64_t C = cfg_.n_embd, V = cfg_.vocab_size;
  const int64_t per_layer = packed_b_size(k_, 3 * C, C) + packed_b_size(k_, C, C) +
                            packed_b_size(k_, 4 * C, C) + packed_b_size(k_, C, 4 * C);
  packed_version_ = -1;  // until packed again below
  packed_.reserve(cfg_.n_layer * per_layer + packed_b_size(k_, V, C), "decoding's packed weights");
  float* p = packed_.data();
  auto pack = [&](const float* w, int64_t n_out, int64_t n_in) {
    const float* r = pack_b(k_, w, n_out, n_in, /*trans_b=*/true, p);
    p += packed_b_size(k_, n_out, n_in);
    return r;
  };
  packed_layers_.resize(cfg_.n_layer);
  for (int64_t l = 0; l < cfg_.n_layer; ++l) {
    const Layer& L = w_.layers[l];
    Packed& P = packed_layers_[l];
    P.attn = pack(L.attn_w, 3 * C, C);
    P.proj = pack(L.proj_w, C, C);
    P.fc = pack(L.fc_w, 4 * C, C);
    P.fcproj = pack(L.fcproj_w, C, 4 * C);
  }
  packed_wte_ = pack(w_.lm_head, V, C);
  packed_version_ = store.version;
}

}  // namespace fastlm
