// Dropout over a contiguous tensor, its mask a function of (key, index)
// (csrc/dropout_hash.h): the backward is the same call on the gradient.
#include "cpu/cpu_kernels.h"
#include "dropout_hash.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

void dropout(const float* x, float* y, int64_t n, float p, uint64_t key) {
  const uint32_t thr = dropout::threshold(p);
  const float scale = 1.f / (1.f - p);
  constexpr int64_t kChunk = 1 << 14;
  parallel_for((n + kChunk - 1) / kChunk, n > (1 << 16), [&](int64_t c) {
    const int64_t i1 = imin(n, (c + 1) * kChunk);
    // Index arithmetic stays 64-bit; the compiler vectorizes the 32-bit mixing.
#pragma omp simd
    for (int64_t i = c * kChunk; i < i1; ++i)
      y[i] = dropout::bits(key, (uint64_t)i) >= thr ? x[i] * scale : 0.f;
  });
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
