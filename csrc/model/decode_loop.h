// generate's token loop in C++: sample from the logits, apply Hugging Face's
// per-token processors and stopping rules, feed the new tokens back to the
// model, for as many steps as asked, with no Python in between. The model is
// any callable that runs one token per row and writes the next logits (host
// memory), so the loop is as device-blind as the models: gpt.cpp's KV-cache
// decode and rnn.cpp's carried state run it on every backend.
//
// It computes what python/fastlm/sampling.py's per-token loop computes, draw
// for draw (the same Sampler, called on the same logits in the same order):
// finished rows still step and still consume their draws, their tokens shown
// as `pad` and their log-probabilities as 0.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "model/sampler.h"

namespace fastlm {

struct DecodeSettings {
  SamplingOptions opt;           // temperature 1 when greedy
  int64_t rows = 0, vocab = 0;   // the model's logits are (rows, vocab)
  int64_t n_ids = 0;             // ids are drawn from [0, n_ids), 1 <= n_ids <= vocab
  int64_t max_new_tokens = 0;
  std::vector<int64_t> eos;      // ids that finish a row (empty: rows never finish)
  int64_t pad = -1;              // shown for finished rows (-1: none; pushed as 0)
  std::vector<int64_t> suppress; // ids in [0, n_ids) never drawn before min_new_tokens
  int64_t min_new_tokens = 0;
  bool logprobs = false;         // report each token's log-probability
};

// Runs the model on tokens (rows) and writes the next logits (rows, vocab);
// returns false, having done nothing, when it cannot (a full KV-cache window,
// a cache another call owns): the caller then feeds pending() itself.
using PushFn = std::function<bool(const int64_t* tokens, float* logits)>;

class DecodeLoop {
 public:
  // logits (rows, vocab): the prefill's; seen (rows, n_ids) float32, nonzero
  // where the repetition penalty applies (null: no penalty). Settings are
  // checked by the caller.
  DecodeLoop(const DecodeSettings& s, uint64_t seed, const float* logits, const float* seen);

  // What one run() produced, each (steps, rows), step-major: the tokens shown
  // (pad for finished rows), their log-probabilities (0 when not asked for or
  // padded), whether the row was live (unfinished) at the step; pushed
  // (pushes, rows): the tokens fed to the model, in order.
  struct Chunk {
    int64_t steps = 0, pushes = 0;
    std::vector<int64_t> tokens, pushed;
    std::vector<float> logprobs;
    std::vector<uint8_t> live;
    bool nonfinite = false;  // the next step's logits hold NaN or inf: stopped before it
  };
  // Up to n steps: feeds the pending tokens first, then samples, feeding each
  // step's tokens before the next. Stops early when the loop is done, when
  // push declines (pending() then holds the tokens) or on non-finite logits.
  Chunk run(int64_t n, const PushFn& push);

  bool done() const { return done_; }
  int64_t step() const { return step_; }  // steps taken so far
  bool has_pending() const { return has_pending_; }
  const std::vector<int64_t>& pending() const { return pending_; }
  // The logits after the caller fed pending() to the model itself.
  void set_logits(const float* logits);

 private:
  void sample_step(Chunk& c);

  DecodeSettings s_;
  Sampler sampler_;
  std::vector<float> logits_, ids_logits_, seen_, lp_;
  std::vector<int64_t> next_, pending_;
  std::vector<uint8_t> finished_, live_;
  int64_t step_ = 0;
  bool done_ = false, has_pending_ = false;
};

}  // namespace fastlm
