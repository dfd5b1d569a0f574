// Row softmax and its backward. One row at a time per thread: a row (even a
// 50k vocabulary, 200 KB) stays in L2 across the passes, so the only DRAM
// traffic is one read of x and one write of y.
#include <cmath>

#include "cpu/softmax_rows.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

namespace {

float row_dot(const float* a, const float* b, int64_t n) {
  V s0 = vzero(), s1 = s0, s2 = s0, s3 = s0;
  int64_t j = 0;
  for (; j + 4 * kW <= n; j += 4 * kW) {
    s0 = vfma(vload(a + j), vload(b + j), s0);
    s1 = vfma(vload(a + j + kW), vload(b + j + kW), s1);
    s2 = vfma(vload(a + j + 2 * kW), vload(b + j + 2 * kW), s2);
    s3 = vfma(vload(a + j + 3 * kW), vload(b + j + 3 * kW), s3);
  }
  for (; j + kW <= n; j += kW) s0 = vfma(vload(a + j), vload(b + j), s0);
  if (j < n) s1 = vfma(vload_part(a + j, n - j), vload_part(b + j, n - j), s1);
  return vsum((s0 + s1) + (s2 + s3));
}

}  // namespace

void softmax_forward(const float* x, float* y, int64_t rows, int64_t cols) {
  // Max first (cheap, no exp), then one exp per element: an online max/sum
  // would need a second exp in the normalizing pass, and exp is the bottleneck.
  parallel_for(rows, rows * cols >= kRowsParallelMinElems, [&](int64_t r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    const float m = row_max(xr, cols, -INFINITY);
    const float s = exp_store_sum(xr, yr, m, cols);
    scale_row(yr, 1.f / s, cols);
  });
}

void softmax_backward(const float* dy, const float* y, float* dx, int64_t rows, int64_t cols) {
  parallel_for(rows, rows * cols >= kRowsParallelMinElems, [&](int64_t r) {
    const float* dyr = dy + r * cols;
    const float* yr = y + r * cols;
    float* dxr = dx + r * cols;
    const V d = vset(row_dot(dyr, yr, cols));
    int64_t j = 0;
    for (; j + kW <= cols; j += kW)
      vstore(dxr + j, vfma(vload(yr + j), vload(dyr + j) - d, vload(dxr + j)));
    if (j < cols) {
      const int64_t k = cols - j;
      vstore_part(dxr + j,
                  vfma(vload_part(yr + j, k), vload_part(dyr + j, k) - d, vload_part(dxr + j, k)),
                  k);
    }
  });
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
