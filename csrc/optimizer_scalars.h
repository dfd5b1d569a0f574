// The scalar prologue of the optimizers, shared by the CPU and CUDA kernels so
// that both form the same float coefficients from AdamWArgs / SgdArgs (and
// the two backends cannot drift apart in how they round them).
//
// Everything here has internal linkage (static): each per-ISA object keeps its
// own copy, and no weak symbol compiled for one ISA can be picked for another.
#pragma once
#include <cmath>

#include "kernels.h"

namespace fastlm {

// AdamW's per-step floats, torch.optim.AdamW's: Python floats (double) for lr,
// betas and the bias corrections, rounded to float when they meet the float
// tensors. The update they feed is, per element,
//   param *= decay; m = lerp(m, g, 1 - b1); v = v b2 + (1 - b2) g g;
//   param += neg_step m / (sqrt(v) / bc2_sqrt + eps).
// The lerp is torch's: m + w1 (g - m) for a weight 1 - b1 < 0.5, else
// g + (w - 1) (g - m) (lerp_from_g; w1 holds w - 1 then), which gives m = g
// exactly at beta1 = 0.
struct AdamWScalars {
  float decay, w1, b2, w2, bc2_sqrt, eps, neg_step, grad_scale;
  bool scaled;       // grad_scale != 1: the gradient is multiplied first
  bool lerp_from_g;  // the lerp's second form (see above)
};

static inline AdamWScalars adamw_scalars(const AdamWArgs& a) {
  const double lr = a.lr, b1 = a.beta1, b2 = a.beta2, wd = a.weight_decay;
  const double step = (double)a.step;
  const double bc1 = 1.0 - std::pow(b1, step), bc2 = 1.0 - std::pow(b2, step);
  AdamWScalars k;
  k.decay = (float)(1.0 - lr * wd);
  const float w1 = (float)(1.0 - b1);
  k.lerp_from_g = w1 >= 0.5f;
  k.w1 = k.lerp_from_g ? w1 - 1.f : w1;
  k.b2 = (float)b2;
  k.w2 = (float)(1.0 - b2);
  k.bc2_sqrt = (float)std::sqrt(bc2);  // divided by, as torch does
  k.eps = (float)a.eps;
  k.neg_step = (float)(-lr / bc1);
  k.grad_scale = a.grad_scale;
  k.scaled = a.grad_scale != 1.f;
  return k;
}

// SGD's: buf = g' on the first step (or without momentum, where the buffer
// carries nothing), momentum buf + g' after; g' = grad_scale g + wd p.
struct SgdScalars {
  float lr, momentum, weight_decay, grad_scale;
  bool first;
};

static inline SgdScalars sgd_scalars(const SgdArgs& a) {
  SgdScalars k;
  k.lr = a.lr, k.momentum = a.momentum, k.weight_decay = a.weight_decay;
  k.grad_scale = a.grad_scale;
  k.first = a.first_step || a.momentum == 0.f;
  return k;
}

}  // namespace fastlm
