// AdamW in place over a flat buffer, the CPU's operation order (itself
// torch.optim.AdamW's): the CPU's scalars (csrc/optimizer_scalars.h), then
// each tensor-level step rounded on its own (__fmul_rn & co. keep the
// compiler from fusing them into FMAs where torch does not).
#include "cuda/common.cuh"
#include "optimizer_scalars.h"

namespace fastlm {
namespace cuda {

namespace {

// The update of AdamWScalars (csrc/optimizer_scalars.h) on one element.
__device__ __forceinline__ void update(float& p, float g, float& m, float& v,
                                       const AdamWScalars& k) {
  if (k.scaled) g = __fmul_rn(g, k.grad_scale);
  p = __fmul_rn(p, k.decay);
  m = fmaf(k.w1, g - m, k.lerp_from_g ? g : m);  // torch's lerp, as the CPU's
  v = __fadd_rn(__fmul_rn(v, k.b2), __fmul_rn(__fmul_rn(k.w2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), k.bc2_sqrt), k.eps);
  p = __fadd_rn(p, __fdiv_rn(__fmul_rn(k.neg_step, m), denom));
}

struct Step {
  float* param;
  const float* grad;
  float* m;
  float* v;
  AdamWScalars k;
  template <int W>
  __device__ void at(int64_t i) const {
    Pack<W> p = load_pack<W>(param, i), mm = load_pack<W>(m, i), vv = load_pack<W>(v, i);
    const Pack<W> g = load_pack<W>(grad, i);
#pragma unroll
    for (int e = 0; e < W; ++e) update(p[e], g[e], mm[e], vv[e], k);
    store_pack<W>(param, i, p);
    store_pack<W>(m, i, mm);
    store_pack<W>(v, i, vv);
  }
};

}  // namespace

void adamw(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWArgs& a) {
  elementwise(Step{param, grad, m, v, adamw_scalars(a)}, n, packs_aligned(param, grad, m, v),
              "adamw_kernel");
}

}  // namespace cuda
}  // namespace fastlm
