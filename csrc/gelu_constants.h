// GELU's constants and its four table entries, shared by csrc/cpu/gelu.cpp and
// csrc/cuda/gelu.cu so that the two backends compute the same formulas with
// the same cut-offs. The constants have internal linkage (each per-ISA object
// and the CUDA object keep their own) and serve host and device code alike.
#pragma once

namespace fastlm {
namespace gelu_constants {

// The tanh GELU: u = sqrt(2/pi) (x + 0.044715 x^3), written s x (1 + c x^2).
constexpr float kS = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kC = 0.044715f;
// Below this gelu and gelu' are under 1e-40 (float32 zero or denormal); taking
// them as 0 also gives gelu(-inf) = 0 rather than -inf / exp's clamped maximum.
constexpr float kZeroBelow = -11.f;

// The erf GELU, x Phi(x).
constexpr float kErfZeroBelow = -14.f;  // |gelu|, |gelu'| < 1e-42 below; gelu(-inf) = 0
constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;  // 1 / sqrt(2 pi)

}  // namespace gelu_constants
}  // namespace fastlm

// The table's entries gelu_forward, gelu_backward (GPT-2's tanh form) and
// gelu_erf_forward, gelu_erf_backward (the erf form), defined where the
// backend's templates forward<Form>(x, y, n) and backward<Form>(dy, x, dx, n)
// and its forms GeluTanh and GeluErf are visible.
#define FASTLM_GELU_ENTRIES                                                 \
  void gelu_forward(const float* x, float* y, int64_t n) {                  \
    forward<GeluTanh>(x, y, n);                                             \
  }                                                                         \
  void gelu_backward(const float* dy, const float* x, float* dx, int64_t n) { \
    backward<GeluTanh>(dy, x, dx, n);                                       \
  }                                                                         \
  void gelu_erf_forward(const float* x, float* y, int64_t n) {              \
    forward<GeluErf>(x, y, n);                                              \
  }                                                                         \
  void gelu_erf_backward(const float* dy, const float* x, float* dx,        \
                         int64_t n) {                                       \
    backward<GeluErf>(dy, x, dx, n);                                        \
  }
