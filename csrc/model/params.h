// The parameter store a model owns: one buffer each (on the backend's device)
// for parameters, gradients and the two optimizer moments, a named (nanoGPT / PyTorch state_dict) view of
// each tensor, and the optimizer steps over them.
#pragma once
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "kernels.h"
#include "model/buffer.h"

namespace fastlm {

struct ParamInfo {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0, numel = 0;
};

class ParamStore {
 public:
  explicit ParamStore(const Kernels& k) : k_(k), params_(k), grads_(k), m_(k), v_(k) {}
  // Declares the next tensor; call allocate() once all are declared.
  void add(const std::string& name, std::vector<int64_t> shape);
  void allocate();

  const std::vector<ParamInfo>& info() const { return info_; }
  int64_t size() const { return params_.size(); }
  const Kernels& kernels() const { return k_; }
  float* params() { return params_.data(); }
  float* grads() { return grads_.data(); }
  float* moment1() { return m_.data(); }
  float* moment2() { return v_.data(); }
  int64_t step_count = 0;
  // Bumped whenever the parameters change (optimizer steps; writers of the
  // params() buffer call mark_changed), so derived data (decode's packed
  // weights) knows when to rebuild.
  int64_t version = 0;
  void mark_changed() { ++version; }
  // Held by every call into the model from Python (the bindings release the
  // GIL): a model used from two threads at once runs the calls one by one
  // instead of corrupting its buffers.
  std::mutex busy;

  void zero_grad();
  double grad_norm() const;
  // AdamW with weight decay on tensors of 2 or more dimensions only (nanoGPT's
  // groups); gradients multiplied by grad_scale first.
  void adamw(double lr, double beta1, double beta2, double eps, double weight_decay,
             float grad_scale);
  // SGD with momentum (PyTorch's: buf = momentum buf + g; p -= lr buf), the
  // momentum buffer kept in moment1; weight decay on 2-D tensors, as adamw.
  void sgd(float lr, float momentum, float weight_decay, float grad_scale);

 private:
  const Kernels& k_;
  std::vector<ParamInfo> info_;
  Buffer<float> params_, grads_, m_, v_;
};

}  // namespace fastlm
