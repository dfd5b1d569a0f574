// Fused softmax cross-entropy, forward and backward, one row per thread at a
// time so that a row (200 KB at a 50k vocabulary) stays in L2 between passes
// and DRAM sees one read of the logits and one write of the gradient.
//
// With a gradient the row is walked three times: max (no exp), exp(x - max)
// stored into the gradient while summing, then a rescale. exp is what bounds
// this kernel, and this order computes it once per element; an online
// max/sum pass followed by a pass writing exp(x - lse) computes it twice and
// measured 15-40% slower (AVX2/AVX-512, 2 threads). Without a gradient the
// online pass alone is best: one exp and one read per element.
#include <cmath>
#include <stdexcept>
#include <cstring>

#include "cpu/memory.h"
#include "cpu/softmax_rows.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

namespace {

#if defined(FASTLM_ISA_AVX512)
FASTLM_INLINE bool any_gt(V a, V b) { return _mm512_cmp_ps_mask(a.r, b.r, _CMP_GT_OQ) != 0; }
#elif defined(FASTLM_ISA_AVX2)
FASTLM_INLINE bool any_gt(V a, V b) {
  return _mm256_movemask_ps(_mm256_cmp_ps(a.r, b.r, _CMP_GT_OQ)) != 0;
}
#else
FASTLM_INLINE bool any_gt(V a, V b) { return _mm_movemask_ps(_mm_cmpgt_ps(a.r, b.r)) != 0; }
#endif

struct MaxSum {
  float max;  // row max
  float sum;  // sum of exp(x - max)
};

// Per-lane running max and sum of exp, rescaled only when some lane's max
// grows (rare after the first few blocks): one exp per element, one read.
// The max starts at -FLT_MAX, not -inf, so -inf logits give exp(-inf) = 0
// rather than exp(-inf - -inf) = NaN. The sum is kept in two levels (this
// block's, then the total) for the accuracy reason given at exp_store_sum.
MaxSum online_max_sum(const float* x, int64_t n) {
  V m = vset(-3.402823466e38f), total = vzero();
  for (int64_t b = 0; b < n; b += kSumBlock) {
    const int64_t end = imin(n, b + kSumBlock);
    V s = vzero();
    int64_t j = b;
    for (; j + 4 * kW <= end; j += 4 * kW) {
      V x0 = vload(x + j), x1 = vload(x + j + kW), x2 = vload(x + j + 2 * kW),
        x3 = vload(x + j + 3 * kW);
      V mn = vmax(m, vmax(vmax(x0, x1), vmax(x2, x3)));
      if (any_gt(mn, m)) {
        const V f = vexp(m - mn);
        s = s * f;
        total = total * f;
        m = mn;
      }
      s = s + ((vexp(x0 - m) + vexp(x1 - m)) + (vexp(x2 - m) + vexp(x3 - m)));
    }
    for (; j < end; j += kW) {
      V xv = j + kW <= end ? vload(x + j) : vload_part(x + j, end - j, -INFINITY);
      V mn = vmax(m, xv);
      if (any_gt(mn, m)) {
        const V f = vexp(m - mn);
        s = s * f;
        total = total * f;
        m = mn;
      }
      s = s + vexp(xv - m);
    }
    total = total + s;
  }
  const float mx = vhmax(m);
  return {mx, vsum(total * vexp(m - vset(mx)))};
}

}  // namespace

float cross_entropy(const float* logits, const int64_t* targets, float* dlogits, int64_t rows,
                    int64_t vocab, int64_t ignore_index, float dloss) {
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) count += targets[r] != ignore_index;
  const float scale = count ? dloss / (float)count : 0.f;
  // Per-row losses summed serially afterwards: the result does not depend on
  // the thread count or schedule.
  double* losses = new double[rows > 0 ? rows : 1];
  parallel_for(rows, rows * vocab >= kRowsParallelMinElems, [&](int64_t r) {
    const float* x = logits + r * vocab;
    float* g = dlogits ? dlogits + r * vocab : nullptr;
    const int64_t t = targets[r];
    if (t == ignore_index) {
      losses[r] = 0.0;
      if (g) memset(g, 0, vocab * sizeof(float));
      return;
    }
    const float xt = x[t];  // before g (possibly x itself) is overwritten
    float m, s;
    if (g) {
      m = row_max(x, vocab, -3.402823466e38f);
      s = exp_store_sum(x, g, m, vocab);
      // exp(x - max) scaled by 1/sum rather than exp(x - lse): x - max is
      // exact near the max, lse is not (it is rounded at the logits' scale).
      scale_row(g, scale / s, vocab);
      g[t] -= scale;
    } else {
      const MaxSum ms = online_max_sum(x, vocab);
      m = ms.max;
      s = ms.sum;
    }
    losses[r] = ((double)m - (double)xt) + log((double)s);
  });
  double total = 0.0;
  for (int64_t r = 0; r < rows; ++r) total += losses[r];
  delete[] losses;
  return count ? (float)(total / (double)count) : NAN;
}

// Every target is checked before any row is computed; int32 targets are
// widened into scratch first.
float cross_entropy_checked(const void* logits, DType dtype, const void* targets,
                            bool targets_int32, void* dlogits, int64_t rows, int64_t vocab,
                            int64_t ignore_index, float dloss, int64_t* bad_row) {
  if (dtype != DType::kFloat32)
    throw std::invalid_argument("cross_entropy: bfloat16 logits need a GPU; pass float32 on the CPU");
  ScratchFloats wide(targets_int32 ? 2 * rows : 0, "cross_entropy: int64 targets");
  const int64_t* t = static_cast<const int64_t*>(targets);
  if (targets_int32) {
    int64_t* w = reinterpret_cast<int64_t*>(wide.data);
    for (int64_t r = 0; r < rows; ++r) w[r] = static_cast<const int32_t*>(targets)[r];
    t = w;
  }
  *bad_row = -1;
  for (int64_t r = 0; r < rows; ++r)
    if (t[r] != ignore_index && (t[r] < 0 || t[r] >= vocab)) {
      *bad_row = r;
      return NAN;
    }
  return cross_entropy(static_cast<const float*>(logits), t, static_cast<float*>(dlogits), rows,
                       vocab, ignore_index, dloss);
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
