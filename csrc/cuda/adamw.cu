// AdamW in place over a flat buffer, the CPU's operation order (itself
// torch.optim.AdamW's): scalars formed in double on the host, then rounded to
// float; each tensor-level step rounded on its own (__fmul_rn & co. keep the
// compiler from fusing them into FMAs where torch does not).
#include <cmath>

#include "cuda/common.cuh"

namespace fastlm {
namespace cuda {

namespace {

constexpr int kThreads = 256;

struct Coeffs {
  float decay, w1, b2, w2, bc2_sqrt, eps, neg_step, grad_scale;
  bool scaled, lerp_from_g;
};

// param *= decay; m = lerp(m, g, 1 - b1); v = v b2 + (1 - b2) g g;
// param += -step_size m / (sqrt(v) / sqrt(bc2) + eps).
__device__ __forceinline__ void update(float& p, float g, float& m, float& v, const Coeffs& k) {
  if (k.scaled) g = __fmul_rn(g, k.grad_scale);
  p = __fmul_rn(p, k.decay);
  m = fmaf(k.w1, g - m, k.lerp_from_g ? g : m);  // torch's lerp, as the CPU's
  v = __fadd_rn(__fmul_rn(v, k.b2), __fmul_rn(__fmul_rn(k.w2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), k.bc2_sqrt), k.eps);
  p = __fadd_rn(p, __fdiv_rn(__fmul_rn(k.neg_step, m), denom));
}

__global__ void adamw_kernel(float* __restrict__ param, const float* __restrict__ grad,
                             float* __restrict__ m, float* __restrict__ v, int64_t n, Coeffs k,
                             bool vec) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t i0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  int64_t tail = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = i0; i < n4; i += stride) {
      float4 p = reinterpret_cast<float4*>(param)[i];
      const float4 g = reinterpret_cast<const float4*>(grad)[i];
      float4 mm = reinterpret_cast<float4*>(m)[i];
      float4 vv = reinterpret_cast<float4*>(v)[i];
      update(p.x, g.x, mm.x, vv.x, k);
      update(p.y, g.y, mm.y, vv.y, k);
      update(p.z, g.z, mm.z, vv.z, k);
      update(p.w, g.w, mm.w, vv.w, k);
      reinterpret_cast<float4*>(param)[i] = p;
      reinterpret_cast<float4*>(m)[i] = mm;
      reinterpret_cast<float4*>(v)[i] = vv;
    }
    tail = n4 * 4;
  }
  for (int64_t i = tail + i0; i < n; i += stride) update(param[i], grad[i], m[i], v[i], k);
}

}  // namespace

void adamw(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWArgs& a) {
  if (n <= 0) return;
  const double lr = a.lr, b1 = a.beta1, b2 = a.beta2, wd = a.weight_decay;
  const double step = (double)a.step;
  const double bc1 = 1.0 - std::pow(b1, step), bc2 = 1.0 - std::pow(b2, step);
  Coeffs k;
  k.decay = (float)(1.0 - lr * wd);
  const float w1 = (float)(1.0 - b1);
  k.lerp_from_g = w1 >= 0.5f;
  k.w1 = k.lerp_from_g ? w1 - 1.f : w1;
  k.b2 = (float)b2;
  k.w2 = (float)(1.0 - b2);
  k.bc2_sqrt = (float)std::sqrt(bc2);
  k.eps = (float)a.eps;
  k.neg_step = (float)(-lr / bc1);
  k.grad_scale = a.grad_scale;
  k.scaled = a.grad_scale != 1.f;
  const bool vec = aligned16(param) && aligned16(grad) && aligned16(m) && aligned16(v);
  adamw_kernel<<<grid_for(vec ? cdiv(n, 4) : n, kThreads), kThreads, 0, launch_stream()>>>(param, grad, m, v, n, k,
                                                                      vec);
  FASTLM_CHECK_LAUNCH("adamw_kernel");
}

}  // namespace cuda
}  // namespace fastlm
