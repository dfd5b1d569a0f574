#include "model/decode_loop.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace fastlm {

DecodeLoop::DecodeLoop(const DecodeSettings& s, uint64_t seed, const float* logits,
                       const float* seen)
    : s_(s),
      sampler_(seed),
      logits_(logits, logits + s.rows * s.vocab),
      ids_logits_(s.n_ids < s.vocab ? s.rows * s.n_ids : 0),
      lp_(s.rows, 0.f),
      next_(s.rows),
      pending_(s.rows),
      finished_(s.rows, 0),
      live_(s.rows, 1) {
  if (seen) seen_.assign(seen, seen + s.rows * s.n_ids);
  done_ = s.max_new_tokens == 0;
}

void DecodeLoop::set_logits(const float* logits) {
  std::memcpy(logits_.data(), logits, logits_.size() * sizeof(float));
  has_pending_ = false;
}

void DecodeLoop::sample_step(Chunk& c) {
  const int64_t B = s_.rows, n = s_.n_ids;
  const float* x = logits_.data();
  if (!ids_logits_.empty()) {  // the ids the tokenizer can decode: the first n columns
    for (int64_t r = 0; r < B; ++r)
      std::memcpy(ids_logits_.data() + r * n, logits_.data() + r * s_.vocab, n * sizeof(float));
    x = ids_logits_.data();
  }
  SamplingExtras extra;
  if (!seen_.empty()) extra.seen = seen_.data();
  if (step_ < s_.min_new_tokens && !s_.suppress.empty())
    extra.suppress = s_.suppress.data(), extra.n_suppress = (int64_t)s_.suppress.size();
  if (s_.logprobs) extra.logprobs = lp_.data();
  sampler_.sample(x, B, n, s_.opt, next_.data(), extra);

  const bool can_finish = !s_.eos.empty();
  if (can_finish)
    for (int64_t r = 0; r < B; ++r) live_[r] = !finished_[r];
  if (!seen_.empty())
    for (int64_t r = 0; r < B; ++r)
      if (live_[r]) seen_[r * n + next_[r]] = 1.f;
  bool all_done = false, any_finished = false;
  if (can_finish) {
    all_done = true;
    for (int64_t r = 0; r < B; ++r) {
      if (finished_[r]) next_[r] = s_.pad, lp_[r] = 0.f;
      else finished_[r] = std::find(s_.eos.begin(), s_.eos.end(), next_[r]) != s_.eos.end();
      all_done &= finished_[r] != 0;
      any_finished |= finished_[r] != 0;
    }
  }
  c.tokens.insert(c.tokens.end(), next_.begin(), next_.end());
  c.logprobs.insert(c.logprobs.end(), lp_.begin(), lp_.end());
  c.live.insert(c.live.end(), live_.begin(), live_.end());
  ++c.steps, ++step_;
  if (step_ == s_.max_new_tokens || all_done) {
    done_ = true;
    return;
  }
  // Finished rows still step (the batch keeps its shape); what they emit is
  // never shown. Without a pad they feed 0.
  for (int64_t r = 0; r < B; ++r)
    pending_[r] = (s_.pad < 0 && any_finished && finished_[r]) ? 0 : next_[r];
  has_pending_ = true;
}

DecodeLoop::Chunk DecodeLoop::run(int64_t n, const PushFn& push) {
  Chunk c;
  const int64_t B = s_.rows;
  for (int64_t i = 0; i < n && !done_; ++i) {
    if (has_pending_) {
      if (!push(pending_.data(), logits_.data())) break;
      c.pushed.insert(c.pushed.end(), pending_.begin(), pending_.end());
      ++c.pushes;
      has_pending_ = false;
    }
    for (int64_t j = 0; j < B * s_.vocab; ++j)
      if (!std::isfinite(logits_[j])) {
        c.nonfinite = true;
        return c;
      }
    sample_step(c);
  }
  return c;
}

}  // namespace fastlm
