// AdamW in place, following torch.optim.AdamW's single-tensor CPU path step
// by step (same operation order, scalars formed in double then rounded to
// float) so results track PyTorch to within a few ulps.
#include "cpu/cpu_kernels.h"
#include "optimizer_scalars.h"

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

// The update of AdamWScalars (csrc/optimizer_scalars.h), vectorised; FromG is
// its lerp_from_g.
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
  const AdamWScalars s = adamw_scalars(a);
  Coeffs k;
  k.decay = vset(s.decay), k.w1 = vset(s.w1), k.b2 = vset(s.b2), k.w2 = vset(s.w2);
  k.bc2_sqrt = vset(s.bc2_sqrt), k.eps = vset(s.eps), k.neg_step = vset(s.neg_step);
  k.grad_scale = vset(s.grad_scale);
  k.scaled = s.scaled, k.lerp_from_g = s.lerp_from_g;
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
