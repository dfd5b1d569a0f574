#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace fastlm {

namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Sampler::Sampler(uint64_t seed) {
  for (uint64_t& s : state) s = splitmix64(seed);
}

double Sampler::uniform() {
  uint64_t* s = state.data();
  const uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0], s[3] ^= s[1], s[1] ^= s[2], s[0] ^= s[3], s[2] ^= t, s[3] = rotl(s[3], 45);
  return (result >> 11) * 0x1.0p-53;
}

void Sampler::sample(const float* logits, int64_t rows, int64_t vocab,
                     const SamplingOptions& opt, int64_t* out, const SamplingExtras& extra) {
  std::vector<double> p(vocab);
  std::vector<int64_t> order(vocab);
  const bool penalise = opt.repetition_penalty != 1.f && extra.seen;
  // The processed logits of a row, when a processor changes them.
  std::vector<float> processed(penalise || extra.n_suppress ? vocab : 0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = logits + r * vocab;
    if (!processed.empty()) {
      std::copy(x, x + vocab, processed.begin());
      if (penalise) {
        const float* seen = extra.seen + r * vocab;
        const float pen = opt.repetition_penalty;
        for (int64_t j = 0; j < vocab; ++j)
          if (seen[j] != 0.f) processed[j] = processed[j] < 0 ? processed[j] * pen : processed[j] / pen;
      }
      for (int64_t i = 0; i < extra.n_suppress; ++i) processed[extra.suppress[i]] = -INFINITY;
      x = processed.data();
    }
    const int64_t argmax = std::max_element(x, x + vocab) - x;
    if (!opt.do_sample) {
      out[r] = argmax;
      if (extra.logprobs) {
        double total = 0;
        for (int64_t j = 0; j < vocab; ++j) total += std::exp((double)x[j] - x[argmax]);
        extra.logprobs[r] = (float)-std::log(total);
      }
      continue;
    }
    // Keep the k largest (ties with the k-th kept, as nanoGPT), then the
    // smallest prefix of the rest, by falling probability, whose mass reaches
    // top_p (the first token always kept, as Hugging Face).
    std::vector<bool> keep(vocab, true);
    if (opt.top_k > 0 && opt.top_k < vocab) {
      std::vector<float> sorted(x, x + vocab);
      std::nth_element(sorted.begin(), sorted.begin() + (opt.top_k - 1), sorted.end(),
                       std::greater<float>());
      const float kth = sorted[opt.top_k - 1];
      for (int64_t j = 0; j < vocab; ++j) keep[j] = x[j] >= kth;
    }
    const double mx = x[argmax];
    double total = 0;
    for (int64_t j = 0; j < vocab; ++j) {
      p[j] = keep[j] ? std::exp((x[j] - mx) / opt.temperature) : 0.0;
      total += p[j];
    }
    if (opt.top_p < 1.f) {
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return p[a] > p[b]; });
      double cum = 0;
      bool cut = false;
      for (int64_t i = 0; i < vocab; ++i) {
        const int64_t j = order[i];
        if (cut) {
          p[j] = 0;
          continue;
        }
        cum += p[j];
        if (cum >= opt.top_p * total) cut = true;
      }
      total = 0;
      for (int64_t j = 0; j < vocab; ++j) total += p[j];
    }
    const double u = uniform() * total;
    double cum = 0;
    int64_t pick = argmax;  // reached only through rounding at the very end
    for (int64_t j = 0; j < vocab; ++j) {
      if (p[j] <= 0) continue;
      cum += p[j];
      if (u < cum) {
        pick = j;
        break;
      }
    }
    out[r] = pick;
    if (extra.logprobs) extra.logprobs[r] = (float)(std::log(p[pick]) - std::log(total));
  }
}

}  // namespace fastlm
