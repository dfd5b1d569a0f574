// Next-token sampling from logits: greedy, temperature, top-k, top-p, with a
// seeded xoshiro256** generator whose state can be saved and restored.
#pragma once
#include <array>
#include <cstdint>

namespace fastlm {

struct SamplingOptions {
  float temperature = 1.f;
  int64_t top_k = 0;   // 0: off
  float top_p = 1.f;   // 1: off
  bool do_sample = true;
};

class Sampler {
 public:
  explicit Sampler(uint64_t seed);
  // logits (rows, vocab) -> out (rows): argmax when !do_sample (first maximum).
  void sample(const float* logits, int64_t rows, int64_t vocab, const SamplingOptions& opt,
              int64_t* out);
  std::array<uint64_t, 4> state;

 private:
  double uniform();  // [0, 1)
};

}  // namespace fastlm
