// LayerNorm over rows (llm.c formulas). Rows are independent, so the forward
// and dx are parallel over rows; dweight/dbias are column sums over rows,
// reduced through per-thread buffers in a fixed order so results do not depend
// on scheduling.
#include <omp.h>

#include <cmath>
#include <cstring>

#include "cpu/cpu_kernels.h"
#include "cpu/memory.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

namespace {

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;

float row_sum(const float* x, int64_t n) {
  V a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
  int64_t j = 0;
  for (; j + 4 * kW <= n; j += 4 * kW) {
    a0 = a0 + vload(x + j);
    a1 = a1 + vload(x + j + kW);
    a2 = a2 + vload(x + j + 2 * kW);
    a3 = a3 + vload(x + j + 3 * kW);
  }
  for (; j + kW <= n; j += kW) a0 = a0 + vload(x + j);
  if (j < n) a1 = a1 + vload_part(x + j, n - j);
  return vsum((a0 + a1) + (a2 + a3));
}

// Corrected two-pass statistics: the second pass sums both d = x - mean and d^2
// so the rounding error of the first-pass mean is removed from mean and var
// (Chan, Golub & LeVeque); stays accurate when |mean| >> std.
void row_stats(const float* x, int64_t n, float* mean_out, float* var_out) {
  const float mean0 = row_sum(x, n) / (float)n;
  const V vm = vset(mean0);
  V s0 = vzero(), s1 = vzero(), q0 = vzero(), q1 = vzero();
  int64_t j = 0;
  for (; j + 2 * kW <= n; j += 2 * kW) {
    V d0 = vload(x + j) - vm, d1 = vload(x + j + kW) - vm;
    s0 = s0 + d0;
    s1 = s1 + d1;
    q0 = vfma(d0, d0, q0);
    q1 = vfma(d1, d1, q1);
  }
  for (; j < n; j += kW) {
    V d = vload_part(x + j, imin(kW, n - j), mean0) - vm;  // padding lanes give d = 0
    s0 = s0 + d;
    q0 = vfma(d, d, q0);
  }
  const float sd = vsum(s0 + s1) / (float)n;
  const float msq = vsum(q0 + q1) / (float)n;
  // Squares past float's range make msq inf, and sd * sd may follow (inf - inf):
  // the variance is then inf (rstd 0), never NaN clamped to 0, which would
  // scale the row by 1/sqrt(eps). NaN from a NaN input passes through.
  const float var = std::isinf(msq) ? msq : msq - sd * sd;
  *mean_out = mean0 + sd;
  *var_out = var < 0.f ? 0.f : var;
}

void forward_row(const float* x, const float* w, const float* b, float* y, int64_t n, float eps,
                 float* mean_out, float* rstd_out) {
  float mean, var;
  row_stats(x, n, &mean, &var);
  const float rstd = 1.f / sqrtf(var + eps);
  *mean_out = mean;
  *rstd_out = rstd;
  const V vm = vset(mean), vr = vset(rstd);
  int64_t j = 0;
  for (; j + kW <= n; j += kW)
    vstore(y + j, vfma((vload(x + j) - vm) * vr, vload(w + j), vload(b + j)));
  if (j < n) {
    const int64_t r = n - j;
    vstore_part(y + j, vfma((vload_part(x + j, r) - vm) * vr, vload_part(w + j, r),
                            vload_part(b + j, r)),
                r);
  }
}

// The build allows FMA contraction; an opaque copy forces the product to be
// rounded so both passes see the same dnorm and dnorm - mean(dnorm) cancels
// exactly where it should (cols = 1 gives dx = 0, not a contraction residue).
FASTLM_INLINE V rounded(V a) {
  __asm__("" : "+v"(a.r));
  return a;
}

// dx += (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd with
// dnorm = w * dy; dw_part += norm * dy, db_part += dy.
void backward_row(const float* dy, const float* x, const float* w, float mean, float rstd,
                  float* dx, float* dw_part, float* db_part, int64_t n) {
  const V vm = vset(mean), vr = vset(rstd);
  V a0 = vzero(), a1 = vzero();
  int64_t j = 0;
  for (; j + kW <= n; j += kW) {
    const V g = vload(dy + j), norm = (vload(x + j) - vm) * vr, dnorm = rounded(vload(w + j) * g);
    a0 = a0 + dnorm;
    a1 = vfma(dnorm, norm, a1);
    vstore(dw_part + j, vfma(norm, g, vload(dw_part + j)));
    vstore(db_part + j, vload(db_part + j) + g);
  }
  if (j < n) {
    // Padding lanes: dy = 0, w = 0 and x = mean (norm = 0), so they add nothing
    // (a padding x of 0 would give norm = -mean * rstd, inf for a mean past
    // FLT_MAX / rstd, and 0 * inf = NaN in the sums).
    const int64_t r = n - j;
    const V g = vload_part(dy + j, r), norm = (vload_part(x + j, r, mean) - vm) * vr,
            dnorm = rounded(vload_part(w + j, r) * g);
    a0 = a0 + dnorm;
    a1 = vfma(dnorm, norm, a1);
    vstore_part(dw_part + j, vfma(norm, g, vload_part(dw_part + j, r)), r);
    vstore_part(db_part + j, vload_part(db_part + j, r) + g, r);
  }
  const V m1 = vset(vsum(a0) / (float)n), m2 = vset(vsum(a1) / (float)n);
  for (j = 0; j + kW <= n; j += kW) {
    const V norm = (vload(x + j) - vm) * vr, dnorm = rounded(vload(w + j) * vload(dy + j));
    const V t = vfnma(norm, m2, dnorm - m1);
    vstore(dx + j, vfma(t, vr, vload(dx + j)));
  }
  if (j < n) {
    const int64_t r = n - j;
    const V norm = (vload_part(x + j, r, mean) - vm) * vr,
            dnorm = rounded(vload_part(w + j, r) * vload_part(dy + j, r));
    const V t = vfnma(norm, m2, dnorm - m1);
    vstore_part(dx + j, vfma(t, vr, vload_part(dx + j, r)), r);
  }
}

}  // namespace

void layernorm_forward(const float* x, const float* weight, const float* bias, float* y,
                       float* mean, float* rstd, int64_t rows, int64_t cols, float eps) {
  if (rows <= 0 || cols <= 0) return;
  parallel_for(rows, rows * cols >= kParallelMin, [&](int64_t r) {
    forward_row(x + r * cols, weight, bias, y + r * cols, cols, eps, mean + r, rstd + r);
  });
}

void layernorm_backward(const float* dy, const float* x, const float* weight, const float* mean,
                        const float* rstd, float* dx, float* dweight, float* dbias, int64_t rows,
                        int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  const bool par = rows * cols >= kParallelMin && rows > 1;
  // One contiguous row block per thread, each with its dweight and dbias
  // partials (cols each), added in block order: the result depends only on
  // the thread count.
  const int64_t nb = par ? imin(num_threads(), rows) : 1;
  ScratchFloats partials(nb * 2 * cols, "layernorm_backward: per-thread dweight and dbias partials");
  float* partial = partials.data;
  parallel_for(nb, par, [&](int64_t t) {
    float* dw_part = partial + (size_t)t * 2 * cols;
    float* db_part = dw_part + cols;
    for (int64_t j = 0; j < 2 * cols; ++j) dw_part[j] = 0.f;
    for (int64_t r = rows * t / nb; r < rows * (t + 1) / nb; ++r)
      backward_row(dy + r * cols, x + r * cols, weight, mean[r], rstd[r], dx + r * cols, dw_part,
                   db_part, cols);
  });
  for (int64_t j = 0; j < cols; ++j) {
    float sw = partial[j], sb = partial[cols + j];
    for (int64_t u = 1; u < nb; ++u) {
      sw += partial[(size_t)u * 2 * cols + j];
      sb += partial[(size_t)u * 2 * cols + cols + j];
    }
    dweight[j] += sw;
    dbias[j] += sb;
  }
}

void layernorm_backward_write(const float* dy, const float* x, const float* weight,
                              const float* mean, const float* rstd, float* dx, float* dweight,
                              float* dbias, int64_t rows, int64_t cols) {
  if (rows > 0 && cols > 0) memset(dx, 0, (size_t)(rows * cols) * sizeof(float));
  layernorm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias, rows, cols);
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
