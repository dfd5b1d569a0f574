// GPT-2 in C++ over the backend interface: forward, backward, AdamW and a
// KV-cache decode. One buffer each (on the backend's device, csrc/model/
// buffer.h) for parameters, gradients, the two AdamW moments and activations;
// token ids and targets go up to the device and logits come back down inside
// each call, so every pointer argument below is host memory; the layout of the parameter buffer follows
// nanoGPT's state_dict (PyTorch Linear layout, weight (out, in)).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels.h"
#include "model/buffer.h"
#include "model/model_base.h"

namespace fastlm {

// GPT-2's two GELUs: the tanh approximation (GPT-2's "gelu_new", nanoGPT's)
// and the exact erf form ("gelu", PyTorch's default).
enum class Activation { kGeluTanh, kGeluErf };

struct GPTConfig {
  int64_t vocab_size = 0, block_size = 0, n_layer = 0, n_head = 0, n_embd = 0;
  // What Hugging Face GPT-2 checkpoints vary; the defaults are GPT-2's.
  bool bias = true;                 // biases in Linear and LayerNorm (nanoGPT's bias=False drops them)
  bool tie_word_embeddings = true;  // false: a separate lm_head.weight (vocab, n_embd)
  Activation activation = Activation::kGeluTanh;
  float layer_norm_epsilon = 1e-5f;
};

void validate(const GPTConfig& c);

class GPT : public ModelBase<GPTConfig> {
 public:
  // Parameters start at zero (the Python layer initialises them).
  // std::invalid_argument on a bad configuration.
  GPT(const GPTConfig& config, const Kernels& kernels);

  // idx (b, t) with 1 <= t <= block_size and ids in range (the caller checks).
  // logits (b, t, vocab) is written when not null.
  void forward(const int64_t* idx, int64_t b, int64_t t, float* logits);
  // Mean cross-entropy over targets != -100 (NaN when none); forward only.
  float loss(const int64_t* idx, const int64_t* targets, int64_t b, int64_t t);
  // Same loss; adds grad_scale * d loss / d params into the gradients.
  // dropout_p in [0, 1) drops, as nanoGPT, the embedding output, the attention
  // probabilities and both residual branches; the masks are functions of
  // dropout_seed (csrc/dropout_hash.h), so one seed per micro-batch makes a
  // run reproducible. p = 0 runs exactly the dropout-free code.
  float forward_backward(const int64_t* idx, const int64_t* targets, int64_t b, int64_t t,
                         float grad_scale, float dropout_p = 0.f, uint64_t dropout_seed = 0);

  // Runs tokens (b, tn) at positions [pos, pos + tn) against the KV cache
  // (reset when b changes or pos == 0) and writes the logits of each row's
  // last position to logits (b, vocab). Requires pos + tn <= block_size.
  // `last` (b) picks the position (in [0, tn)) whose logits row i returns
  // (null: tn - 1): a right-padded prefill of prompts of different lengths.
  void decode(const int64_t* tokens, int64_t b, int64_t tn, int64_t pos, float* logits,
              const int64_t* last = nullptr);
  // One token per row at its own position pos[i] in [0, block_size), after a
  // prefill of the same b rows: row i attends over cache positions
  // [0, pos[i]], so whatever a padded prefill left beyond is overwritten
  // before it is read. Ragged batches decode this way.
  void decode_rows(const int64_t* tokens, int64_t b, const int64_t* pos, float* logits);

 private:
  struct Layer {
    float *ln1_w, *ln1_b, *attn_w, *attn_b, *proj_w, *proj_b, *ln2_w, *ln2_b, *fc_w, *fc_b,
        *fcproj_w, *fcproj_b;
  };
  // Biases are null without config.bias; lm_head is wte when tied.
  struct Weights {
    float *wte, *wpe, *lnf_w, *lnf_b, *lm_head;
    std::vector<Layer> layers;
  };
  struct LayerActs {
    float *ln1, *ln1_mean, *ln1_rstd, *qkv, *atty, *lse, *res2, *ln2, *ln2_mean, *ln2_rstd, *fch,
        *fch_gelu, *res3;
  };

  // Decoding's weights packed for the GEMM (null where the backend does not
  // pre-pack); a prefill (decode at pos 0) packs them again when the
  // parameters changed since (store.version).
  struct Packed {
    const float *attn = nullptr, *proj = nullptr, *fc = nullptr, *fcproj = nullptr;
  };

  Weights view(float* base) const;
  // The forward on ids already on the device (ids_), into lnf_ and, with
  // head, on into logits_.
  void run_forward(int64_t b, int64_t t, bool head = true);
  // The lm_head and the loss over lnf_ (classifier_loss); with dlnf, the
  // backward too: dlnf written, the lm_head gradient accumulated.
  float head_loss(const int64_t* targets, int64_t rows, float dloss, float* dlnf);
  void pack_for_decode();
  void ensure_acts(int64_t b, int64_t t);
  // Runs the blocks over acts_ for (b, t) tokens at positions [pos, pos + t);
  // when `cache` is set, q/k/v live in the KV cache instead of acts' qkv.
  // `row_pos` (b, with t == 1 and cache): each row's own position instead.
  const float* run_blocks(int64_t b, int64_t t, int64_t pos, bool cache,
                          const int64_t* row_pos = nullptr);
  // The final LayerNorm and head on row i's position last[i] (tn - 1 when
  // null), into logits_ (b, vocab) on the device.
  void decode_head(const float* residual, int64_t b, int64_t tn, const int64_t* last);
  void gelu_forward(const float* x, float* y, int64_t n) const;
  void gelu_backward(const float* dy, const float* x, float* dx, int64_t n) const;
  // LayerNorm kernels always take a bias: a bias-free model passes zeros and
  // collects the (unused) bias gradient in scratch.
  const float* ln_bias(const float* b) const { return b ? b : ln_zero_.data(); }
  float* ln_dbias(float* db) { return db ? db : ln_dscratch_.data(); }

  // The key of dropout stream s: dropout::key(drop_seed_, s).
  uint64_t drop_key(uint64_t stream) const;

  Weights w_, g_;

  int64_t acts_b_ = 0, acts_t_ = 0;
  // encoded_ (B*T, C): embeddings; lnf_* the final LayerNorm's output and
  // statistics; logits_ (B*T, V), the head's workspace (classifier_loss); dresidual_
  // (B*T, C): the residual stream's gradient; scratch_ (B*T, C): a branch's
  // output (forward) or the gradient of a LayerNorm's output (backward);
  // dwide1_, dwide2_ (B*T, 4C): the backward's wide gradients (MLP hidden,
  // qkv) and dropped copies.
  float *encoded_, *lnf_, *lnf_mean_, *lnf_rstd_, *logits_, *dresidual_, *scratch_, *dwide1_,
      *dwide2_;
  std::vector<LayerActs> layer_acts_;

  std::vector<Packed> packed_layers_;
  const float* packed_wte_ = nullptr;
  int64_t packed_version_ = -1;
  Buffer<float> packed_;

  Buffer<float> ln_zero_, ln_dscratch_;  // (n_embd) each, without biases only

  int64_t cache_b_ = 0;
  Buffer<float> cache_;  // per layer (b, block_size, 3C): the qkv rows of past positions
  // step_graph_ is re-recorded every token (the position is an argument of
  // its kernels) and replayed as one launch.
};

}  // namespace fastlm
