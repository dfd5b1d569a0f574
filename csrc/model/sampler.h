// Next-token sampling from logits: greedy, temperature, top-k, top-p, with a
// seeded xoshiro256** generator whose state can be saved and restored; and
// Hugging Face's logits processors that generate needs per token (repetition
// penalty, suppressed ids), so no token costs a pass over the logits in Python.
#pragma once
#include <array>
#include <cstdint>

namespace fastlm {

struct SamplingOptions {
  float temperature = 1.f;
  int64_t top_k = 0;   // 0: off
  float top_p = 1.f;   // 1: off
  bool do_sample = true;
  // Hugging Face's RepetitionPenaltyLogitsProcessor: the logit of a token
  // marked in `seen` is divided by the penalty when positive, multiplied
  // when negative. 1: off.
  float repetition_penalty = 1.f;
};

// Optional per-call inputs and outputs of Sampler::sample (null: none).
struct SamplingExtras {
  const float* seen = nullptr;        // (rows, vocab): nonzero where the penalty applies
  const int64_t* suppress = nullptr;  // ids whose logits become -inf (min_new_tokens' eos)
  int64_t n_suppress = 0;
  // (rows): log-probability of each chosen token under the distribution it
  // was drawn from (the processed logits, log-softmaxed: Hugging Face's
  // compute_transition_scores(..., normalize_logits=True)).
  float* logprobs = nullptr;
};

class Sampler {
 public:
  explicit Sampler(uint64_t seed);
  // logits (rows, vocab) -> out (rows): argmax when !do_sample (first maximum).
  // Ids in `extra.suppress` must lie in [0, vocab) and leave one id
  // (the caller checks).
  void sample(const float* logits, int64_t rows, int64_t vocab, const SamplingOptions& opt,
              int64_t* out, const SamplingExtras& extra = SamplingExtras());
  std::array<uint64_t, 4> state;

 private:
  double uniform();  // [0, 1)
};

}  // namespace fastlm
