// GELU and its derivative, elementwise: GPT-2's tanh approximation and the
// exact erf form (the CPU's formulas).
// Bandwidth bound: float4 accesses when every pointer is 16-byte aligned.
#include "cuda/common.cuh"

namespace fastlm {
namespace cuda {

namespace {

constexpr float kS = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kC = 0.044715f;
// Below this gelu and gelu' are under 1e-40; taking them as 0 also gives
// gelu(-inf) = 0.
constexpr float kZeroBelow = -11.f;
constexpr int kThreads = 256;

// e = exp(-2u), u = sqrt(2/pi) (x + 0.044715 x^3) written as s x (1 + c x^2);
// the exponent is capped so e stays finite (no inf * 0 below).
__device__ __forceinline__ float exp_m2u(float x) {
  const float u = kS * x * fmaf(kC * x, x, 1.f);
  return expf(fminf(-2.f * u, 88.f));
}

// 0.5 x (1 + tanh(u)) = x sigmoid(2u) = x / (1 + e).
__device__ __forceinline__ float gelu(float x) {
  return x < kZeroBelow ? 0.f : x / (1.f + exp_m2u(x));
}

// gelu'(x) = sg + x sg (1 - sg) 2 du, sg = sigmoid(2u), du = s (1 + 3 c x^2);
// 1 - sg formed as e sg.
__device__ __forceinline__ float gelu_grad(float x) {
  if (x < kZeroBelow) return 0.f;
  if (x > -kZeroBelow) return 1.f;
  const float e = exp_m2u(x);
  const float sg = 1.f / (1.f + e);
  const float du2 = 2.f * kS * fmaf(3.f * kC * x, x, 1.f);
  return sg * fmaf(x * (e * sg), du2, 1.f);
}

// The erf GELU, x Phi(x). Phi(x) = 1 - erfc(x / sqrt 2) / 2 through erfcf on
// |x|, accurate in relative terms on both tails (1 + erf cancels for x < 0).
constexpr float kErfZeroBelow = -14.f;
constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

__device__ __forceinline__ float phi_cdf(float x) {
  const float half_erfc = 0.5f * erfcf(fabsf(x) * kInvSqrt2);
  return x < 0.f ? half_erfc : 1.f - half_erfc;
}

__device__ __forceinline__ float gelu_erf(float x) {
  return x < kErfZeroBelow ? 0.f : x * phi_cdf(x);
}

// gelu'(x) = Phi(x) + x phi(x), phi the normal density.
__device__ __forceinline__ float gelu_erf_grad(float x) {
  if (x < kErfZeroBelow) return 0.f;
  if (x > -kErfZeroBelow) return 1.f;
  return fmaf(x, kInvSqrt2Pi * expf(-0.5f * x * x), phi_cdf(x));
}

struct GeluTanh {
  __device__ static float f(float x) { return gelu(x); }
  __device__ static float grad(float x) { return gelu_grad(x); }
};
struct GeluErf {
  __device__ static float f(float x) { return gelu_erf(x); }
  __device__ static float grad(float x) { return gelu_erf_grad(x); }
};

template <class G>
__global__ void gelu_forward_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t n,
                                    bool vec) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t i0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  int64_t tail = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = i0; i < n4; i += stride) {
      const float4 v = reinterpret_cast<const float4*>(x)[i];
      reinterpret_cast<float4*>(y)[i] = make_float4(G::f(v.x), G::f(v.y), G::f(v.z), G::f(v.w));
    }
    tail = n4 * 4;
  }
  for (int64_t i = tail + i0; i < n; i += stride) y[i] = G::f(x[i]);
}

// dx = dy * gelu'(x)
template <class G>
__global__ void gelu_backward_kernel(const float* __restrict__ dy, const float* __restrict__ x,
                                     float* __restrict__ dx, int64_t n, bool vec) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t i0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  int64_t tail = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = i0; i < n4; i += stride) {
      const float4 g = reinterpret_cast<const float4*>(dy)[i];
      const float4 v = reinterpret_cast<const float4*>(x)[i];
      reinterpret_cast<float4*>(dx)[i] = make_float4(g.x * G::grad(v.x), g.y * G::grad(v.y),
                                                     g.z * G::grad(v.z), g.w * G::grad(v.w));
    }
    tail = n4 * 4;
  }
  for (int64_t i = tail + i0; i < n; i += stride)
    dx[i] = dy[i] * G::grad(x[i]);
}

template <class G>
void forward(const float* x, float* y, int64_t n) {
  if (n <= 0) return;
  const bool vec = aligned16(x) && aligned16(y);
  gelu_forward_kernel<G><<<grid_for(vec ? cdiv(n, 4) : n, kThreads), kThreads, 0, launch_stream()>>>(x, y, n, vec);
  FASTLM_CHECK_LAUNCH("gelu_forward_kernel");
}

template <class G>
void backward(const float* dy, const float* x, float* dx, int64_t n) {
  if (n <= 0) return;
  const bool vec = aligned16(dy) && aligned16(x) && aligned16(dx);
  gelu_backward_kernel<G>
      <<<grid_for(vec ? cdiv(n, 4) : n, kThreads), kThreads, 0, launch_stream()>>>(dy, x, dx, n, vec);
  FASTLM_CHECK_LAUNCH("gelu_backward_kernel");
}

}  // namespace

void gelu_forward(const float* x, float* y, int64_t n) { forward<GeluTanh>(x, y, n); }

void gelu_backward(const float* dy, const float* x, float* dx, int64_t n) {
  backward<GeluTanh>(dy, x, dx, n);
}

void gelu_erf_forward(const float* x, float* y, int64_t n) { forward<GeluErf>(x, y, n); }

void gelu_erf_backward(const float* dy, const float* x, float* dx, int64_t n) {
  backward<GeluErf>(dy, x, dx, n);
}

}  // namespace cuda
}  // namespace fastlm
