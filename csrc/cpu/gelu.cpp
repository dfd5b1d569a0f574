// GELU and its derivative, elementwise: GPT-2's tanh approximation and the
// exact erf form. Each element is
// independent, so splitting the range across threads cannot change results.
#include "cpu/cpu_kernels.h"
#include "gelu_constants.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

namespace {

using namespace gelu_constants;  // kS, kC, kZeroBelow, ...

// Threads only pay off on large arrays; blocks are a multiple of every kW so
// only the final block has a tail.
constexpr int64_t kParallelMin = 1 << 15;
constexpr int64_t kBlock = 1 << 13;

// u = sqrt(2/pi) (x + 0.044715 x^3), written as s x (1 + c x^2): for |x| up
// to ~1e12 no intermediate overflows.
FASTLM_INLINE V gelu_arg(V x) { return vset(kS) * x * vfma(vset(kC) * x, x, vset(1.f)); }

// The two forms, each f (the GELU) and grad (its derivative).
struct GeluTanh {
  // 0.5 (1 + tanh(u)) = sigmoid(2u) = 1 / (1 + e), e = exp(-2u): one exp and
  // one division instead of vtanh's exp, division and polynomial, and no
  // 1 + tanh cancellation for negative x. vexp clamps, so e stays finite and
  // large x gives exactly x, never NaN.
  static FASTLM_INLINE V f(V x) {
    const V e = vexp(vset(-2.f) * gelu_arg(x));
    return vblend_lt(x, vset(kZeroBelow), vzero(), x / (vset(1.f) + e));
  }
  // gelu'(x) = sg + x sg (1 - sg) 2 du with sg = sigmoid(2u), du = s (1 + 3 c
  // x^2); 1 - sg is formed as e sg, accurate where sg rounds to 1.
  static FASTLM_INLINE V grad(V x) {
    const V e = vexp(vset(-2.f) * gelu_arg(x));
    const V sg = vset(1.f) / (vset(1.f) + e);
    const V du2 = vset(2.f * kS) * vfma(vset(3.f * kC) * x, x, vset(1.f));
    const V d = sg * vfma(x * (e * sg), du2, vset(1.f));
    // Above -kZeroBelow, e = 0 and d is exactly 1, but x = inf would give inf * 0.
    return vblend_lt(x, vset(kZeroBelow), vzero(), vblend_lt(vset(-kZeroBelow), x, vset(1.f), d));
  }
};

// The erf GELU: x Phi(x) with Phi(x) = 1 - erfc(x / sqrt 2) / 2. erfc(a), a >= 0,
// is t exp(-a^2 + P(t)), t = 1 / (1 + a / 2) (Numerical Recipes' erfcc: relative
// error below 1.2e-7 for every a), so Phi is accurate in relative terms on
// both tails: 1 + erf(x / sqrt 2) would cancel for negative x. a^2 is taken
// as x^2 / 2 so that the rounding of x / sqrt 2 does not enter exp.

FASTLM_INLINE V phi_cdf(V x) {
  const V a = vmax(x, vzero() - x) * vset(kInvSqrt2);
  const V t = vset(1.f) / vfma(vset(0.5f), a, vset(1.f));
  V p = vset(0.17087277f);
  p = vfma(p, t, vset(-0.82215223f));
  p = vfma(p, t, vset(1.48851587f));
  p = vfma(p, t, vset(-1.13520398f));
  p = vfma(p, t, vset(0.27886807f));
  p = vfma(p, t, vset(-0.18628806f));
  p = vfma(p, t, vset(0.09678418f));
  p = vfma(p, t, vset(0.37409196f));
  p = vfma(p, t, vset(1.00002368f));
  p = vfma(p, t, vset(-1.26551223f));
  const V half_erfc = vset(0.5f) * t * vexp(vfma(vset(-0.5f) * x, x, p));
  return vblend_lt(x, vzero(), half_erfc, vset(1.f) - half_erfc);
}

struct GeluErf {
  static FASTLM_INLINE V f(V x) {
    return vblend_lt(x, vset(kErfZeroBelow), vzero(), x * phi_cdf(x));
  }
  // gelu'(x) = Phi(x) + x phi(x), phi the normal density (no cancellation: on
  // the left tail x phi dominates).
  static FASTLM_INLINE V grad(V x) {
    const V density = vset(kInvSqrt2Pi) * vexp(vset(-0.5f) * x * x);
    const V d = vfma(x, density, phi_cdf(x));
    // Past -kErfZeroBelow d is exactly 1, but x = inf would give inf * 0.
    return vblend_lt(x, vset(kErfZeroBelow), vzero(),
                     vblend_lt(vset(-kErfZeroBelow), x, vset(1.f), d));
  }
};

template <class G>
void forward_range(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + kW <= n; i += kW) vstore(y + i, G::f(vload(x + i)));
  if (i < n) vstore_part(y + i, G::f(vload_part(x + i, n - i)), n - i);
}

template <class G>
void backward_range(const float* dy, const float* x, float* dx, int64_t n) {
  int64_t i = 0;
  for (; i + kW <= n; i += kW) vstore(dx + i, vload(dy + i) * G::grad(vload(x + i)));
  if (i < n) {
    const int64_t r = n - i;
    vstore_part(dx + i, vload_part(dy + i, r) * G::grad(vload_part(x + i, r)), r);
  }
}

template <class G>
void forward(const float* x, float* y, int64_t n) {
  if (n <= 0) return;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  parallel_for(blocks, n >= kParallelMin, [&](int64_t b) {
    const int64_t i = b * kBlock;
    forward_range<G>(x + i, y + i, imin(kBlock, n - i));
  });
}

template <class G>
void backward(const float* dy, const float* x, float* dx, int64_t n) {
  if (n <= 0) return;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  parallel_for(blocks, n >= kParallelMin, [&](int64_t b) {
    const int64_t i = b * kBlock;
    backward_range<G>(dy + i, x + i, dx + i, imin(kBlock, n - i));
  });
}

}  // namespace

FASTLM_GELU_ENTRIES

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
