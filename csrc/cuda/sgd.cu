// SGD with momentum, in place (see SgdArgs in kernels.h), the CPU's formulas.
#include "cuda/common.cuh"
#include "optimizer_scalars.h"

namespace fastlm {
namespace cuda {

namespace {

struct Step {
  float* param;
  const float* grad;
  float* buf;
  SgdScalars k;
  template <int W>
  __device__ void at(int64_t i) const {
    Pack<W> p = load_pack<W>(param, i), b;
    const Pack<W> g = load_pack<W>(grad, i);
    if (!k.first) b = load_pack<W>(buf, i);
#pragma unroll
    for (int e = 0; e < W; ++e) {
      const float gw = fmaf(k.weight_decay, p[e], g[e] * k.grad_scale);
      b[e] = k.first ? gw : fmaf(k.momentum, b[e], gw);
      p[e] = fmaf(-k.lr, b[e], p[e]);
    }
    store_pack<W>(buf, i, b);
    store_pack<W>(param, i, p);
  }
};

}  // namespace

void sgd(float* param, const float* grad, float* momentum_buf, int64_t n, const SgdArgs& a) {
  elementwise(Step{param, grad, momentum_buf, sgd_scalars(a)}, n,
              packs_aligned(param, grad, momentum_buf), "sgd_kernel");
}

}  // namespace cuda
}  // namespace fastlm
