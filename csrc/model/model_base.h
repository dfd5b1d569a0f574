// What every language model in csrc/model/ holds besides its own weights and
// activations: its configuration (validated at construction), the kernel
// table it runs on, the parameter store, the activation buffer, the call's
// ids and targets on the device, the dropout of the forward_backward under
// way, and the decode step's CUDA graph. GPT and RNNLM derive from it.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels.h"
#include "model/buffer.h"
#include "model/params.h"
#include "model/step_graph.h"

namespace fastlm {

template <class Config>
class ModelBase {
 public:
  // std::invalid_argument on a bad configuration (validate(Config)).
  ModelBase(const Config& config, const Kernels& kernels)
      : store(kernels), cfg_(config), k_(kernels), acts_(kernels), ids_(kernels), targets_(kernels) {
    validate(cfg_);
  }
  ~ModelBase() { release_step_graph(k_, step_graph_); }
  ModelBase(const ModelBase&) = delete;
  ModelBase& operator=(const ModelBase&) = delete;

  const Config& config() const { return cfg_; }
  ParamStore store;  // parameters, gradients, optimizer state

 protected:
  // Sets the dropout of one forward_backward (p in [0, 1), else
  // std::invalid_argument); the returned guard turns it off again however
  // the call ends, so evaluation and decoding never drop.
  struct DropoutScope {
    float& p;
    ~DropoutScope() { p = 0.f; }
  };
  [[nodiscard]] DropoutScope dropout_for_call(float p, uint64_t seed) {
    if (!(p >= 0.f && p < 1.f))
      throw std::invalid_argument("dropout must be in [0, 1), got " + std::to_string(p));
    drop_p_ = p, drop_seed_ = seed;
    return DropoutScope{drop_p_};
  }

  // Lays the pieces lay(take) takes (Carve<float>) over acts_ and returns
  // their total: lay runs once to count and once over acts_, grown (and zeroed)
  // first when too small, so each size is stated once. A buffer big enough
  // for a larger call is re-carved, not reallocated.
  template <class Lay>
  int64_t carve_acts(Lay lay) {
    Carve<float> count(nullptr);
    lay(count);
    const int64_t total = count.taken();
    if (acts_.size() < total) {
      acts_.reserve(total, "the activations");
      k_.zero(acts_.data(), total);
    }
    Carve<float> take(acts_.data());
    lay(take);
    return total;
  }

  Config cfg_;
  const Kernels& k_;
  Buffer<float> acts_;             // the activations, carved per call shape
  Buffer<int64_t> ids_, targets_;  // the call's ids and targets, on the device
  // Dropout of the forward_backward under way (p 0 otherwise).
  float drop_p_ = 0.f;
  uint64_t drop_seed_ = 0;
  // The decode step's CUDA graph (Kernels::graph_begin, step_graph.h; null
  // until the first step, and on backends without graphs).
  void* step_graph_ = nullptr;
};

}  // namespace fastlm
