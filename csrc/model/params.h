// The parameter store a model owns: one buffer each (on the backend's device)
// for parameters, gradients and the two optimizer moments, a named (nanoGPT / PyTorch state_dict) view of
// each tensor, and the optimizer steps over them.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.h"
#include "model/buffer.h"

namespace fastlm {

// A model config's size fields, {name, value} each: std::invalid_argument
// naming the first that is not >= 1.
struct SizeField {
  const char* name;
  int64_t value;
};
inline void check_positive(std::initializer_list<SizeField> fields) {
  for (const SizeField& f : fields)
    if (f.value < 1)
      throw std::invalid_argument(std::string(f.name) + " must be >= 1, got " + std::to_string(f.value));
}

struct ParamInfo {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0, numel = 0;
};

class ParamStore {
 public:
  explicit ParamStore(const Kernels& k) : k_(k), params_(k), grads_(k) {}
  // Declares the next tensor; call allocate() once all are declared.
  void add(const std::string& name, std::vector<int64_t> shape);
  void allocate();

  const std::vector<ParamInfo>& info() const { return info_; }
  // The tensors' starts in base (params(), grads() or a buffer of the same
  // layout), one per call in the order they were added: a model's view of
  // its weights.
  class Walk {
   public:
    Walk(const std::vector<ParamInfo>& info, float* base) : info_(info), base_(base) {}
    float* operator()() { return base_ + info_.at(i_++).offset; }

   private:
    const std::vector<ParamInfo>& info_;
    float* base_;
    size_t i_ = 0;
  };
  Walk walk(float* base) const { return Walk(info_, base); }
  int64_t size() const { return params_.size(); }
  const Kernels& kernels() const { return k_; }
  float* params() { return params_.data(); }
  float* grads() { return grads_.data(); }
  // The optimizer moments cover the elements [moment_lo(), moment_hi()) of the
  // flat vector: all of it, unless set_moment_range chose a range (ZeRO-1
  // keeps its shard only). Each is allocated, as zeros, on first use (the
  // first optimizer step, a read or a write), so a model that never trains
  // holds none, and SGD allocates the first alone. moment(i) (1 or 2) is the
  // buffer, shared with whoever else holds it (NumPy views), so that
  // releasing it never leaves a view dangling; moment1/2 are its data,
  // element moment_lo() first.
  std::shared_ptr<Buffer<float>> moment(int i);
  float* moment1() { return moment(1)->data(); }
  float* moment2() { return moment(2)->data(); }
  int64_t moment_lo() const { return mlo_; }
  int64_t moment_hi() const { return mhi_; }
  // Bytes of moment memory held now (0, 4 or 8 per element of the range).
  int64_t moment_bytes() const;
  // Drops both moments: they are zeros again when next used.
  void release_moments();
  // Releases the moments and makes them cover [lo, hi) from now on
  // (std::out_of_range unless 0 <= lo <= hi <= size()).
  void set_moment_range(int64_t lo, int64_t hi);
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
  // groups); gradients multiplied by grad_scale first. Updates the elements
  // [lo, hi) (hi = -1: to the end), which the moments must cover
  // (std::invalid_argument otherwise): ZeRO-1 steps its shard alone, with the
  // kernel calls of the whole-vector step cut at lo and hi.
  void adamw(double lr, double beta1, double beta2, double eps, double weight_decay,
             float grad_scale, int64_t lo = 0, int64_t hi = -1);
  // SGD with momentum (PyTorch's: buf = momentum buf + g; p -= lr buf), the
  // momentum buffer kept in moment1; weight decay on 2-D tensors, as adamw.
  // Every element: the moments must cover all of them.
  void sgd(float lr, float momentum, float weight_decay, float grad_scale);

 private:
  const Kernels& k_;
  std::vector<ParamInfo> info_;
  Buffer<float> params_, grads_;
  std::shared_ptr<Buffer<float>> m_, v_;  // null until used
  int64_t mlo_ = 0, mhi_ = 0;
  // Throws std::invalid_argument unless the moments cover [lo, hi).
  void check_moments_cover(int64_t lo, int64_t hi, const char* op) const;
};

}  // namespace fastlm
