// GELU and its derivative, elementwise: GPT-2's tanh approximation and the
// exact erf form (the CPU's formulas).
// Bandwidth bound: common.cuh's elementwise map (float4 packs where aligned);
// FASTLM_CUDA_POINTWISE=next runs the forward through gelu_forward_next_kernel.
#include "cuda/common.cuh"
#include "gelu_constants.h"

namespace fastlm {
namespace cuda {

namespace {

using namespace gelu_constants;  // kS, kC, kZeroBelow, ...

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

// The opt-in forward (FASTLM_CUDA_POINTWISE=next): each thread issues kUnroll
// float4 loads before computing on any, so more bytes are in flight per SM
// than one load per grid-stride step allows; one block per kUnroll * 256
// float4s, no grid-stride loop. The formulas are the ones above.
constexpr int kNextThreads = 256, kUnroll = 4;

template <class G>
__global__ void __launch_bounds__(kNextThreads)
    gelu_forward_next_kernel(const float4* __restrict__ x, float4* __restrict__ y, int64_t n4,
                             const float* __restrict__ xt, float* __restrict__ yt, int tail) {
  const int64_t base = (int64_t)blockIdx.x * kNextThreads * kUnroll + threadIdx.x;
  float4 v[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t i = base + (int64_t)u * kNextThreads;
    if (i < n4) v[u] = x[i];
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t i = base + (int64_t)u * kNextThreads;
    if (i < n4) y[i] = make_float4(G::f(v[u].x), G::f(v[u].y), G::f(v[u].z), G::f(v[u].w));
  }
  if (blockIdx.x == 0 && (int)threadIdx.x < tail) yt[threadIdx.x] = G::f(xt[threadIdx.x]);
}

// False (nothing launched) where the float4 path does not apply.
template <class G>
bool forward_next(const float* x, float* y, int64_t n) {
  if (n <= 0) return true;
  if (!aligned16(x) || !aligned16(y)) return false;
  const int64_t n4 = n / 4;
  const int64_t blocks = cdiv(n4 > 0 ? n4 : 1, (int64_t)kNextThreads * kUnroll);
  if (blocks > 0x7fffffffLL) return false;
  gelu_forward_next_kernel<G><<<(unsigned)blocks, kNextThreads, 0, launch_stream()>>>(
      reinterpret_cast<const float4*>(x), reinterpret_cast<float4*>(y), n4, x + 4 * n4, y + 4 * n4,
      (int)(n - 4 * n4));
  FASTLM_CHECK_LAUNCH("gelu_forward_next_kernel");
  return true;
}

template <class G>
struct Forward {
  const float* x;
  float* y;
  template <int W>
  __device__ void at(int64_t i) const {
    Pack<W> v = load_pack<W>(x, i);
#pragma unroll
    for (int k = 0; k < W; ++k) v[k] = G::f(v[k]);
    store_pack<W>(y, i, v);
  }
};

// dx = dy * gelu'(x) (Map2<Backward<G>> over dy, x).
template <class G>
struct Backward {
  __device__ static float f(float dy, float x) { return dy * G::grad(x); }
};

template <class G>
void forward(const float* x, float* y, int64_t n) {
  if (pointwise_next() && forward_next<G>(x, y, n)) return;
  elementwise(Forward<G>{x, y}, n, packs_aligned(x, y), "gelu_forward_kernel");
}

template <class G>
void backward(const float* dy, const float* x, float* dx, int64_t n) {
  elementwise(Map2<Backward<G>>{dy, x, dx}, n, packs_aligned(dy, x, dx), "gelu_backward_kernel");
}

}  // namespace

FASTLM_GELU_ENTRIES

}  // namespace cuda
}  // namespace fastlm
