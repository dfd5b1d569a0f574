// Row helpers shared by softmax.cpp and cross_entropy.cpp (compiled per ISA,
// inside the ISA namespace like every kernel). Internal linkage (static):
// where the compiler does not inline them (-O1, sanitizer builds) each object
// keeps its own copy instead of exporting a weak symbol.
#pragma once
#include <cmath>

#include "cpu/cpu_kernels.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

// Rows are independent, so threading never changes results; tiny problems
// stay serial because waking the team costs more than the work.
constexpr int64_t kRowsParallelMinElems = 1 << 14;

// Elements per partial sum (a multiple of every 4 * kW).
constexpr int64_t kSumBlock = 1024;

// Row maximum, starting from `init`: softmax starts at -inf (an all -inf row
// then yields NaN, as torch); cross-entropy at -FLT_MAX so that -inf logits
// give exp(-inf) = 0.
static inline float row_max(const float* x, int64_t n, float init) {
  const float ninf = -INFINITY;
  V m0 = vset(init), m1 = m0, m2 = m0, m3 = m0;
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
static inline float exp_store_sum_block(const float* x, float* y, float m, int64_t n) {
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
static inline float exp_store_sum(const float* x, float* y, float m, int64_t n) {
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kSumBlock)
    total += exp_store_sum_block(x + b, y + b, m, imin(kSumBlock, n - b));
  return (float)total;
}

static inline void scale_row(float* y, float c, int64_t n) {
  const V vc = vset(c);
  int64_t j = 0;
  for (; j + kW <= n; j += kW) vstore(y + j, vload(y + j) * vc);
  if (j < n) vstore_part(y + j, vload_part(y + j, n - j) * vc, n - j);
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
