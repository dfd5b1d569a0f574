// Zero fill, copy, residual add and a deterministic sum of squares (for gradient norms).
#include "cpu/cpu_kernels.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

void zero(float* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > (1 << 18))
  for (int64_t i = 0; i < n; i += (1 << 16)) std::memset(x + i, 0, imin(1 << 16, n - i) * 4);
}

void copy(float* dst, const float* src, int64_t n) {
#pragma omp parallel for schedule(static) if (n > (1 << 18))
  for (int64_t i = 0; i < n; i += (1 << 16)) std::memcpy(dst + i, src + i, imin(1 << 16, n - i) * 4);
}

void residual_forward(const float* a, const float* b, float* out, int64_t n) {
  const int64_t nv = n / kW * kW;
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < nv; i += kW) vstore(out + i, vload(a + i) + vload(b + i));
  for (int64_t i = nv; i < n; ++i) out[i] = a[i] + b[i];
}

double sum_squares(const float* x, int64_t n) {
  // Fixed-size blocks summed in block order: the result depends on n only.
  constexpr int64_t kBlock = 1 << 14;
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  double* partial = new double[nblocks > 0 ? nblocks : 1];
#pragma omp parallel for schedule(static) if (nblocks > 4)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t i0 = blk * kBlock, i1 = imin(n, i0 + kBlock);
    V acc = vzero();
    int64_t i = i0;
    for (; i + kW <= i1; i += kW) {
      const V v = vload(x + i);
      acc = vfma(v, v, acc);
    }
    double s = vsum(acc);
    for (; i < i1; ++i) s += (double)x[i] * x[i];
    partial[blk] = s;
  }
  double total = 0;
  for (int64_t blk = 0; blk < nblocks; ++blk) total += partial[blk];
  delete[] partial;
  return total;
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
