#include "model/params.h"

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
  m_.assign_zeros(n, "the optimizer's first moments");
  v_.assign_zeros(n, "the optimizer's second moments");
}

void ParamStore::zero_grad() { k_.zero(grads_.data(), size()); }

double ParamStore::grad_norm() const { return std::sqrt(k_.sum_squares(grads_.data(), size())); }

void ParamStore::adamw(double lr, double beta1, double beta2, double eps, double weight_decay,
                       float grad_scale) {
  ++step_count;
  mark_changed();
  for (const ParamInfo& p : info_) {
    AdamWArgs a;
    a.lr = lr, a.beta1 = beta1, a.beta2 = beta2, a.eps = eps;
    a.weight_decay = p.shape.size() >= 2 ? weight_decay : 0.f;
    a.step = step_count;
    a.grad_scale = grad_scale;
    k_.adamw(params_.data() + p.offset, grads_.data() + p.offset, m_.data() + p.offset,
             v_.data() + p.offset, p.numel, a);
  }
}

void ParamStore::sgd(float lr, float momentum, float weight_decay, float grad_scale) {
  ++step_count;
  mark_changed();
  for (const ParamInfo& p : info_) {
    SgdArgs a;
    a.lr = lr, a.momentum = momentum, a.grad_scale = grad_scale;
    a.weight_decay = p.shape.size() >= 2 ? weight_decay : 0.f;
    a.first_step = step_count == 1;
    k_.sgd(params_.data() + p.offset, grads_.data() + p.offset, m_.data() + p.offset, p.numel,
           a);
  }
}

}  // namespace fastlm
