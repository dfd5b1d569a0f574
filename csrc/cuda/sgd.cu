// SGD with momentum, in place (see SgdArgs in kernels.h), the CPU's formulas.
#include "cuda/common.cuh"

namespace fastlm {
namespace cuda {

namespace {

constexpr int kThreads = 256;

__global__ void sgd_kernel(float* __restrict__ param, const float* __restrict__ grad,
                           float* __restrict__ buf, int64_t n, SgdArgs a, bool first) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float p = param[i];
    const float g = fmaf(a.weight_decay, p, grad[i] * a.grad_scale);
    const float b = first ? g : fmaf(a.momentum, buf[i], g);
    buf[i] = b;
    param[i] = fmaf(-a.lr, b, p);
  }
}

}  // namespace

void sgd(float* param, const float* grad, float* momentum_buf, int64_t n, const SgdArgs& a) {
  if (n <= 0) return;
  const bool first = a.first_step || a.momentum == 0.f;
  sgd_kernel<<<grid_for(n, kThreads), kThreads, 0, launch_stream()>>>(param, grad, momentum_buf, n, a, first);
  FASTLM_CHECK_LAUNCH("sgd_kernel");
}

}  // namespace cuda
}  // namespace fastlm
