// AdamW in place, following torch.optim.AdamW's single-tensor CPU path step
// by step (same operation order, scalars formed in double then rounded to
// float) so results track PyTorch to within a few ulps.
#include <cmath>

#include "cpu/cpu_kernels.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

namespace {

constexpr int64_t kParallelMin = 1 << 15;
constexpr int64_t kBlock = 1 << 13;

struct Coeffs {
  V decay, w1, b2, w2, bc2_sqrt, eps, neg_step, grad_scale;
  bool scaled, lerp_from_g;  // lerp_from_g picks update<true>
};

// Torch runs each line as its own kernel, so each result is rounded; the
// build allows FMA contraction, which an opaque register copy prevents.
FASTLM_INLINE V rounded(V a) {
  __asm__("" : "+v"(a.r));
  return a;
}

// param *= decay; m = lerp(m, g, 1 - b1); v = v b2 + (1 - b2) g g;
// param += -step_size m / (sqrt(v) / sqrt(bc2) + eps).
// The lerp is torch's: m + w (g - m) for a weight w < 0.5, else g + (w - 1) (g - m)
// (FromG; k.w1 holds w - 1 then), which gives m = g exactly at beta1 = 0.
template <bool FromG>
FASTLM_INLINE void update(V& p, V g, V& m, V& v, const Coeffs& k) {
  if (k.scaled) g = rounded(g * k.grad_scale);
  p = rounded(p * k.decay);
  m = vfma(k.w1, g - m, FromG ? g : m);
  v = v * k.b2 + (k.w2 * g) * g;
  const V denom = vsqrt(v) / k.bc2_sqrt + k.eps;
  p = p + (k.neg_step * m) / denom;
}

template <bool FromG>
void range(float* param, const float* grad, float* m, float* v, int64_t n, const Coeffs& k) {
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    V p = vload(param + i), mm = vload(m + i), vv = vload(v + i);
    update<FromG>(p, vload(grad + i), mm, vv, k);
    vstore(param + i, p);
    vstore(m + i, mm);
    vstore(v + i, vv);
  }
  if (i < n) {
    const int64_t r = n - i;
    V p = vload_part(param + i, r), mm = vload_part(m + i, r), vv = vload_part(v + i, r);
    update<FromG>(p, vload_part(grad + i, r), mm, vv, k);
    vstore_part(param + i, p, r);
    vstore_part(m + i, mm, r);
    vstore_part(v + i, vv, r);
  }
}

}  // namespace

void adamw(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWArgs& a) {
  if (n <= 0) return;
  // As PyTorch: Python floats (double) for lr, betas and the bias corrections,
  // rounded to float when they meet the float tensors.
  const double lr = a.lr, b1 = a.beta1, b2 = a.beta2, wd = a.weight_decay;
  const double step = (double)a.step;
  const double bc1 = 1.0 - std::pow(b1, step), bc2 = 1.0 - std::pow(b2, step);
  Coeffs k;
  k.decay = vset((float)(1.0 - lr * wd));
  const float w1 = (float)(1.0 - b1);
  k.lerp_from_g = w1 >= 0.5f;
  k.w1 = vset(k.lerp_from_g ? w1 - 1.f : w1);
  k.b2 = vset((float)b2);
  k.w2 = vset((float)(1.0 - b2));
  k.bc2_sqrt = vset((float)std::sqrt(bc2));  // divided by, as torch does
  k.eps = vset((float)a.eps);
  k.neg_step = vset((float)(-lr / bc1));
  k.grad_scale = vset(a.grad_scale);
  k.scaled = a.grad_scale != 1.f;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  parallel_for(blocks, n >= kParallelMin, [&](int64_t b) {
    const int64_t i = b * kBlock;
    const int64_t len = imin(kBlock, n - i);
    if (k.lerp_from_g) range<true>(param + i, grad + i, m + i, v + i, len, k);
    else range<false>(param + i, grad + i, m + i, v + i, len, k);
  });
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
