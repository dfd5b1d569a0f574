// Row softmax and its backward. One row at a time per thread: a row (even a
// 50k vocabulary, 200 KB) stays in L2 across the passes, so the only DRAM
// traffic is one read of x and one write of y.
#include <cmath>

#include "cpu/cpu_kernels.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

namespace {

// Rows are independent, so threading never changes results; tiny problems
// stay serial because waking the team costs more than the work.
constexpr int64_t kParallelMinElems = 1 << 14;

// Elements per partial sum (a multiple of every 4 * kW).
constexpr int64_t kSumBlock = 1024;

// -inf is the identity of max; an all -inf row yields -inf and then NaN below
// (exp(-inf - -inf)), which is what torch returns for such a row.
float row_max(const float* x, int64_t n) {
  const float ninf = -INFINITY;
  V m0 = vset(ninf), m1 = m0, m2 = m0, m3 = m0;
  int64_t j = 0;
  for (; j + 4 * kW <= n; j += 4 * kW) {
    m0 = vmax(m0, vload(x + j));
    m1 = vmax(m1, vload(x + j + kW));
    m2 = vmax(m2, vload(x + j + 2 * kW));
    m3 = vmax(m3, vload(x + j + 3 * kW));
  }
  for (; j + kW <= n; j += kW) m0 = vmax(m0, vload(x + j));
  if (j < n) m1 = vmax(m1, vload_part(x + j, n - j, ninf));
  return vhmax(vmax(vmax(m0, m1), vmax(m2, m3)));
}

// y = exp(x - m); returns the sum of y. Four independent exp chains keep the
// FMA pipes busy; this pass is compute bound.
float exp_store_sum_block(const float* x, float* y, float m, int64_t n) {
  const V vm = vset(m);
  V s0 = vzero(), s1 = s0, s2 = s0, s3 = s0;
  int64_t j = 0;
  for (; j + 4 * kW <= n; j += 4 * kW) {
    V e0 = vexp(vload(x + j) - vm), e1 = vexp(vload(x + j + kW) - vm);
    V e2 = vexp(vload(x + j + 2 * kW) - vm), e3 = vexp(vload(x + j + 3 * kW) - vm);
    vstore(y + j, e0);
    vstore(y + j + kW, e1);
    vstore(y + j + 2 * kW, e2);
    vstore(y + j + 3 * kW, e3);
    s0 = s0 + e0;
    s1 = s1 + e1;
    s2 = s2 + e2;
    s3 = s3 + e3;
  }
  for (; j + kW <= n; j += kW) {
    V e = vexp(vload(x + j) - vm);
    vstore(y + j, e);
    s0 = s0 + e;
  }
  if (j < n) {
    // The fill must give exp(...) = 0, or the padding lanes would enter the sum.
    V e = vexp(vload_part(x + j, n - j, -INFINITY) - vm);
    vstore_part(y + j, e, n - j);
    s1 = s1 + e;
  }
  return vsum((s0 + s1) + (s2 + s3));
}

// Summed in blocks folded into a double: one float accumulator per lane over
// a whole 50k row drifts by ~1e-6 relative, more than a pairwise float sum.
float exp_store_sum(const float* x, float* y, float m, int64_t n) {
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kSumBlock)
    total += exp_store_sum_block(x + b, y + b, m, imin(kSumBlock, n - b));
  return (float)total;
}

void scale_row(float* y, float c, int64_t n) {
  const V vc = vset(c);
  int64_t j = 0;
  for (; j + kW <= n; j += kW) vstore(y + j, vload(y + j) * vc);
  if (j < n) vstore_part(y + j, vload_part(y + j, n - j) * vc, n - j);
}

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
#pragma omp parallel for schedule(static) if (rows > 1 && rows * cols >= kParallelMinElems)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    const float m = row_max(xr, cols);
    const float s = exp_store_sum(xr, yr, m, cols);
    scale_row(yr, 1.f / s, cols);
  }
}

void softmax_backward(const float* dy, const float* y, float* dx, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows > 1 && rows * cols >= kParallelMinElems)
  for (int64_t r = 0; r < rows; ++r) {
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
  }
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
