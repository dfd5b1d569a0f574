// GPT-2's tanh GELU and its derivative, elementwise. Each element is
// independent, so splitting the range across threads cannot change results.
#include "cpu/cpu_kernels.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

namespace {

constexpr float kS = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kC = 0.044715f;
// Below this gelu and gelu' are under 1e-40 (float32 zero or denormal); taking
// them as 0 also gives gelu(-inf) = 0 rather than -inf / exp's clamped maximum.
constexpr float kZeroBelow = -11.f;
// Threads only pay off on large arrays; blocks are a multiple of every kW so
// only the final block has a tail.
constexpr int64_t kParallelMin = 1 << 15;
constexpr int64_t kBlock = 1 << 13;

// u = sqrt(2/pi) (x + 0.044715 x^3), written as s x (1 + c x^2): for |x| up
// to ~1e12 no intermediate overflows.
FASTLM_INLINE V gelu_arg(V x) { return vset(kS) * x * vfma(vset(kC) * x, x, vset(1.f)); }

// 0.5 (1 + tanh(u)) = sigmoid(2u) = 1 / (1 + e), e = exp(-2u): one exp and one
// division instead of vtanh's exp, division and polynomial, and no 1 + tanh
// cancellation for negative x. vexp clamps, so e stays finite and large x
// gives exactly x, never NaN.
FASTLM_INLINE V gelu_v(V x) {
  const V e = vexp(vset(-2.f) * gelu_arg(x));
  return vblend_lt(x, vset(kZeroBelow), vzero(), x / (vset(1.f) + e));
}

// gelu'(x) = sg + x sg (1 - sg) 2 du with sg = sigmoid(2u), du = s (1 + 3 c x^2);
// 1 - sg is formed as e sg, accurate where sg rounds to 1.
FASTLM_INLINE V gelu_grad_v(V x) {
  const V e = vexp(vset(-2.f) * gelu_arg(x));
  const V sg = vset(1.f) / (vset(1.f) + e);
  const V du2 = vset(2.f * kS) * vfma(vset(3.f * kC) * x, x, vset(1.f));
  const V d = sg * vfma(x * (e * sg), du2, vset(1.f));
  // Above -kZeroBelow, e = 0 and d is exactly 1, but x = inf would give inf * 0.
  return vblend_lt(x, vset(kZeroBelow), vzero(), vblend_lt(vset(-kZeroBelow), x, vset(1.f), d));
}

void forward_range(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + kW <= n; i += kW) vstore(y + i, gelu_v(vload(x + i)));
  if (i < n) vstore_part(y + i, gelu_v(vload_part(x + i, n - i)), n - i);
}

void backward_range(const float* dy, const float* x, float* dx, int64_t n) {
  int64_t i = 0;
  for (; i + kW <= n; i += kW) vstore(dx + i, vload(dy + i) * gelu_grad_v(vload(x + i)));
  if (i < n) {
    const int64_t r = n - i;
    vstore_part(dx + i, vload_part(dy + i, r) * gelu_grad_v(vload_part(x + i, r)), r);
  }
}

}  // namespace

void gelu_forward(const float* x, float* y, int64_t n) {
  if (n <= 0) return;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  parallel_for(blocks, n >= kParallelMin, [&](int64_t b) {
    const int64_t i = b * kBlock;
    forward_range(x + i, y + i, imin(kBlock, n - i));
  });
}

void gelu_backward(const float* dy, const float* x, float* dx, int64_t n) {
  if (n <= 0) return;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  parallel_for(blocks, n >= kParallelMin, [&](int64_t b) {
    const int64_t i = b * kBlock;
    backward_range(dy + i, x + i, dx + i, imin(kBlock, n - i));
  });
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
