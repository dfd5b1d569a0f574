// Recurrent language models: Embedding -> num_layers LSTM or GRU layers ->
// Linear head, with PyTorch's parameter names and layouts (nn.Embedding
// `embedding`, nn.LSTM / nn.GRU `rnn`, nn.Linear `fc`).
//
// Every buffer lives on the backend's device (csrc/model/buffer.h); ids,
// targets, logits and states cross the host boundary inside each call, so
// every pointer argument below is host memory.
//
// Sequences are processed time-major, (t, b, ...), so each step's rows are
// contiguous for the step GEMM and the fused cell kernel; the bindings
// transpose ids and logits from and to the batch-first layout users see.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels.h"
#include "model/buffer.h"
#include "model/model_base.h"

namespace fastlm {

enum class CellKind { kLSTM, kGRU };

struct RNNConfig {
  CellKind kind = CellKind::kLSTM;
  int64_t vocab_size = 0, embed_dim = 0, hidden_size = 0, num_layers = 0;
};

void validate(const RNNConfig& c);

class RNNLM : public ModelBase<RNNConfig> {
 public:
  RNNLM(const RNNConfig& config, const Kernels& kernels);

  // idx (t, b) time-major ids in range (the caller checks). The recurrence
  // starts from the state the previous call left when `carry` is set and the
  // batch size is unchanged, from zeros otherwise; the final state is kept.
  // logits (t, b, vocab) written when not null.
  void forward(const int64_t* idx, int64_t t, int64_t b, bool carry, float* logits);
  // Forward only; leaves the carried state as it was.
  float loss(const int64_t* idx, const int64_t* targets, int64_t t, int64_t b, bool carry);
  // Backpropagation through the whole window (the carried-in state is a
  // constant: truncated BPTT); adds grad_scale * d loss / d params.
  // dropout_p in [0, 1) drops the outputs of every layer but the last, as
  // PyTorch's nn.LSTM(dropout=p), with masks keyed by dropout_seed
  // (csrc/dropout_hash.h; stream l for layer l's outputs, time-major index).
  float forward_backward(const int64_t* idx, const int64_t* targets, int64_t t, int64_t b,
                         bool carry, float grad_scale, float dropout_p = 0.f,
                         uint64_t dropout_seed = 0);
  void reset_state() { state_b_ = 0; }
  // Sets the carried state: h, c (num_layers, b, hidden); c is ignored for a GRU.
  void set_state(const float* h, const float* c, int64_t b);
  int64_t state_batch() const { return state_b_; }
  // Copies the last final state out: h, c (num_layers, state_batch(), hidden);
  // c is LSTM only (may be null for a GRU).
  void get_state(float* h, float* c) const;

 private:
  struct Layer {
    float *w_ih, *w_hh, *b_ih, *b_hh;
  };
  struct Weights {
    float *emb, *fc_w, *fc_b;
    std::vector<Layer> layers;
  };
  struct LayerActs {
    float *pre;    // (t, b, G*h): input projections (+ recurrent part for LSTM)
    float *gates;  // (t, b, 4h)
    float *h;      // (t + 1, b, h): h[0] the initial state
    float *c;      // (t + 1, b, h), LSTM only
    float *drop;   // (t, b, h): the outputs as the next layer sees them, when dropped
  };

  Weights view(float* base) const;
  int64_t gate_count() const { return cfg_.kind == CellKind::kLSTM ? 4 : 3; }
  void ensure_acts(int64_t t, int64_t b);
  // ids: on the device (ids_).
  const float* run(const int64_t* ids, int64_t t, int64_t b, bool carry);
  void layer_backward(int64_t l, const int64_t* idx, int64_t t, int64_t b, float* dout_h,
                      float* dx);
  // Whether layer 0's input projection goes through a (vocab, G*h) table of
  // projected embeddings: when the vocabulary is smaller than the batch.
  bool token_table(int64_t t, int64_t b) const { return cfg_.vocab_size < t * b; }

  Weights w_, g_;

  int64_t acts_t_ = 0, acts_b_ = 0;
  bool acts_drop_ = false;  // whether acts_ holds the dropped outputs
  float *emb_, *logits_, *gh_, *dpre_, *dgh_, *dh_sink_, *dc_a_, *dc_b_, *dseq_a_, *dseq_b_;
  float *table_;  // (vocab, G*h): projected embeddings, then their gradient
  float *dbias_;  // (G*h): an LSTM layer's bias gradient
  std::vector<LayerActs> la_;
  Buffer<float> wpack_;  // W_hh packed once per sequence for the step GEMMs

  int64_t state_b_ = 0;
  Buffer<float> state_h_, state_c_;
  // step_graph_ is a forward of one token per row on the carried state,
  // recorded every call.
};

}  // namespace fastlm
