// SGD with momentum, in place (see SgdArgs in kernels.h).
#include "cpu/cpu_kernels.h"
#include "optimizer_scalars.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

void sgd(float* param, const float* grad, float* buf, int64_t n, const SgdArgs& a) {
  const SgdScalars s = sgd_scalars(a);
  const V lr = vset(s.lr), mom = vset(s.momentum), wd = vset(s.weight_decay),
          scale = vset(s.grad_scale);
  const bool first = s.first;
  parallel_for((n + kW - 1) / kW, n > (1 << 16), [&](int64_t v) {
    const int64_t i = v * kW, w = imin(kW, n - i);
    const V p = vload_part(param + i, w);
    const V g = vfma(wd, p, vload_part(grad + i, w) * scale);
    const V b = first ? g : vfma(mom, vload_part(buf + i, w), g);
    vstore_part(buf + i, b, w);
    vstore_part(param + i, vfnma(lr, b, p), w);
  });
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
