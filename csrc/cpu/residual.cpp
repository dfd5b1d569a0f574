// Zero fill, copy, residual add and a deterministic sum of squares (for gradient norms).
#include "cpu/cpu_kernels.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

void zero(float* x, int64_t n) {
  constexpr int64_t kChunk = 1 << 16;
  parallel_for((n + kChunk - 1) / kChunk, n > (1 << 18), [&](int64_t c) {
    std::memset(x + c * kChunk, 0, imin(kChunk, n - c * kChunk) * 4);
  });
}

void copy(float* dst, const float* src, int64_t n) {
  constexpr int64_t kChunk = 1 << 16;
  parallel_for((n + kChunk - 1) / kChunk, n > (1 << 18), [&](int64_t c) {
    std::memcpy(dst + c * kChunk, src + c * kChunk, imin(kChunk, n - c * kChunk) * 4);
  });
}

void residual_forward(const float* a, const float* b, float* out, int64_t n) {
  const int64_t nv = n / kW * kW;
  parallel_for(nv / kW, n > (1 << 16), [&](int64_t v) {
    vstore(out + v * kW, vload(a + v * kW) + vload(b + v * kW));
  });
  for (int64_t i = nv; i < n; ++i) out[i] = a[i] + b[i];
}

double sum_squares(const float* x, int64_t n) {
  // Fixed-size blocks summed in block order: the result depends on n only.
  constexpr int64_t kBlock = 1 << 14;
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  double* partial = new double[nblocks > 0 ? nblocks : 1];
  parallel_for(nblocks, nblocks > 4, [&](int64_t blk) {
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
  });
  double total = 0;
  for (int64_t blk = 0; blk < nblocks; ++blk) total += partial[blk];
  delete[] partial;
  return total;
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
