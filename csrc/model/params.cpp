#include "model/params.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace fastlm {

void ParamStore::add(const std::string& name, std::vector<int64_t> shape) {
  // Sizes come from user arguments: an overflow must be an error, not a
  // silently wrapped (small) buffer.
  int64_t n = 1, offset = info_.empty() ? 0 : info_.back().offset + info_.back().numel;
  bool overflow = false;
  for (int64_t d : shape) overflow |= __builtin_mul_overflow(n, d, &n);
  int64_t end;
  overflow |= __builtin_add_overflow(offset, n, &end);
  if (overflow) throw std::length_error("parameter tensor " + name + " is too large to address");
  info_.push_back({name, std::move(shape), offset, n});
}

void ParamStore::allocate() {
  const int64_t n = info_.empty() ? 0 : info_.back().offset + info_.back().numel;
  params_.assign_zeros(n, "the parameters");
  grads_.assign_zeros(n, "the gradients");
  release_moments();
  mlo_ = 0, mhi_ = n;
}

std::shared_ptr<Buffer<float>> ParamStore::moment(int i) {
  std::shared_ptr<Buffer<float>>& b = i == 1 ? m_ : v_;
  if (!b) {
    auto fresh = std::make_shared<Buffer<float>>(k_);
    fresh->assign_zeros(mhi_ - mlo_, i == 1 ? "the optimizer's first moments"
                                            : "the optimizer's second moments");
    b = std::move(fresh);
  }
  return b;
}

int64_t ParamStore::moment_bytes() const {
  return ((m_ ? m_->size() : 0) + (v_ ? v_->size() : 0)) * (int64_t)sizeof(float);
}

void ParamStore::release_moments() { m_.reset(), v_.reset(); }

void ParamStore::set_moment_range(int64_t lo, int64_t hi) {
  if (lo < 0 || hi < lo || hi > size())
    throw std::out_of_range("moment range [" + std::to_string(lo) + ", " + std::to_string(hi) +
                            ") is not inside the " + std::to_string(size()) + " parameters");
  release_moments();
  mlo_ = lo, mhi_ = hi;
}

void ParamStore::check_moments_cover(int64_t lo, int64_t hi, const char* op) const {
  if (lo < mlo_ || hi > mhi_)
    throw std::invalid_argument(std::string(op) + ": the optimizer moments hold elements [" +
                                std::to_string(mlo_) + ", " + std::to_string(mhi_) +
                                ") only (a ZeRO-1 shard), not [" + std::to_string(lo) + ", " +
                                std::to_string(hi) + ")");
}

void ParamStore::zero_grad() { k_.zero(grads_.data(), size()); }

double ParamStore::grad_norm() const { return std::sqrt(k_.sum_squares(grads_.data(), size())); }

void ParamStore::adamw(double lr, double beta1, double beta2, double eps, double weight_decay,
                       float grad_scale, int64_t lo, int64_t hi) {
  if (hi < 0) hi = size();
  if (lo < 0 || hi < lo || hi > size())
    throw std::out_of_range("adamw: range [" + std::to_string(lo) + ", " + std::to_string(hi) +
                            ") is not inside the " + std::to_string(size()) + " parameters");
  check_moments_cover(lo, hi, "adamw");
  float* m = moment1();  // element mlo_ first
  float* v = moment2();
  ++step_count;
  mark_changed();
  for (const ParamInfo& p : info_) {
    const int64_t a0 = std::max(p.offset, lo), a1 = std::min(p.offset + p.numel, hi);
    if (a0 >= a1) continue;
    AdamWArgs a;
    a.lr = lr, a.beta1 = beta1, a.beta2 = beta2, a.eps = eps;
    a.weight_decay = p.shape.size() >= 2 ? weight_decay : 0.f;
    a.step = step_count;
    a.grad_scale = grad_scale;
    k_.adamw(params_.data() + a0, grads_.data() + a0, m + (a0 - mlo_),
             v + (a0 - mlo_), a1 - a0, a);
  }
}

void ParamStore::sgd(float lr, float momentum, float weight_decay, float grad_scale) {
  check_moments_cover(0, size(), "sgd");
  float* m = moment1();
  ++step_count;
  mark_changed();
  for (const ParamInfo& p : info_) {
    SgdArgs a;
    a.lr = lr, a.momentum = momentum, a.grad_scale = grad_scale;
    a.weight_decay = p.shape.size() >= 2 ? weight_decay : 0.f;
    a.first_step = step_count == 1;
    k_.sgd(params_.data() + p.offset, grads_.data() + p.offset, m + p.offset, p.numel, a);
  }
}

}  // namespace fastlm
