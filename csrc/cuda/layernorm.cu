// LayerNorm over rows (the CPU's formulas). The forward and dx run one thread
// block per row. dweight and dbias are column sums over rows, made
// deterministic in two passes: each block of the backward sums its rows into
// its own partial row (one thread per column, rows in order), then one thread
// per column adds the partial rows in order. The row blocking depends on the
// shape only, so results repeat exactly.
#include "cuda/common.cuh"

namespace fastlm {
namespace cuda {

namespace {

constexpr int kMaxThreads = 256;
// Partials of up to this many columns (dweight and dbias) live in shared memory.
constexpr int64_t kSharedPartialCols = 6000;  // 48 KB less the reduction scratch

// Corrected two-pass statistics (Chan, Golub & LeVeque), as the CPU: the
// second pass sums both d = x - mean0 and d^2, removing the first mean's
// rounding error from mean and var.
__global__ void layernorm_forward_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                         const float* __restrict__ b, float* __restrict__ y,
                                         float* __restrict__ mean, float* __restrict__ rstd,
                                         int64_t cols, float eps) {
  __shared__ float red[33];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * cols;
  float* yr = y + row * cols;
  float s = 0.f;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += xr[j];
  const float mean0 = block_sum(s, red) / (float)cols;
  float sd = 0.f, q = 0.f;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const float d = xr[j] - mean0;
    sd += d;
    q = fmaf(d, d, q);
  }
  const float dm = block_sum(sd, red) / (float)cols;
  const float msq = block_sum(q, red) / (float)cols;
  const float v = isinf(msq) ? msq : msq - dm * dm;  // as the CPU's row_stats
  const float var = v < 0.f ? 0.f : v;
  const float mu = mean0 + dm;
  const float r = 1.f / sqrtf(var + eps);
  if (threadIdx.x == 0) {
    mean[row] = mu;
    rstd[row] = r;
  }
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
    yr[j] = fmaf((xr[j] - mu) * r, w[j], b[j]);
}

// dx (+)= (dnorm - mean(dnorm) - norm mean(dnorm norm)) rstd, dnorm = w dy;
// partial[block] = (sum of norm dy, sum of dy) over the block's rows.
// Thread t owns columns t, t + blockDim, ... of the partials throughout, so
// no synchronisation is needed around them.
__global__ void layernorm_backward_kernel(const float* __restrict__ dy, const float* __restrict__ x,
                                          const float* __restrict__ w,
                                          const float* __restrict__ mean,
                                          const float* __restrict__ rstd, float* __restrict__ dx,
                                          float* __restrict__ partial, int64_t rows, int64_t cols,
                                          int64_t rows_per_block, bool shared_partials,
                                          bool accumulate) {
  extern __shared__ float acc_shared[];
  __shared__ float red[33];
  float* mine = partial + (int64_t)blockIdx.x * 2 * cols;
  float* acc = shared_partials ? acc_shared : mine;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    acc[j] = 0.f;
    acc[cols + j] = 0.f;
  }
  const int64_t r0 = (int64_t)blockIdx.x * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
  for (int64_t r = r0; r < r1; ++r) {
    const float* dyr = dy + r * cols;
    const float* xr = x + r * cols;
    float* dxr = dx + r * cols;
    const float mu = mean[r], rs = rstd[r];
    float a0 = 0.f, a1 = 0.f;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float norm = (xr[j] - mu) * rs;
      // Rounded product (no FMA contraction) as on the CPU: both passes see the
      // same dnorm, so dnorm - mean(dnorm) cancels exactly where it should.
      const float dnorm = __fmul_rn(w[j], dyr[j]);
      a0 += dnorm;
      a1 = fmaf(dnorm, norm, a1);
    }
    const float m1 = block_sum(a0, red) / (float)cols;
    const float m2 = block_sum(a1, red) / (float)cols;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float g = dyr[j];
      const float norm = (xr[j] - mu) * rs;
      const float dnorm = __fmul_rn(w[j], g);
      const float t = fmaf(-norm, m2, dnorm - m1);
      dxr[j] = fmaf(t, rs, accumulate ? dxr[j] : 0.f);
      acc[j] = fmaf(norm, g, acc[j]);
      acc[cols + j] += g;
    }
  }
  if (shared_partials)
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      mine[j] = acc[j];
      mine[cols + j] = acc[cols + j];
    }
}

__global__ void layernorm_finish_kernel(const float* __restrict__ partial, float* __restrict__ dw,
                                        float* __restrict__ db, int64_t nblocks, int64_t cols) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float sw = 0.f, sb = 0.f;
  for (int64_t b = 0; b < nblocks; ++b) {
    sw += partial[b * 2 * cols + c];
    sb += partial[b * 2 * cols + cols + c];
  }
  dw[c] += sw;
  db[c] += sb;
}

}  // namespace

void layernorm_forward(const float* x, const float* weight, const float* bias, float* y,
                       float* mean, float* rstd, int64_t rows, int64_t cols, float eps) {
  if (rows <= 0 || cols <= 0) return;
  layernorm_forward_kernel<<<row_grid(rows, "layernorm"), row_threads(cols, kMaxThreads)>>>(
      x, weight, bias, y, mean, rstd, cols, eps);
  FASTLM_CHECK_LAUNCH("layernorm_forward_kernel");
}

void layernorm_backward_ex(const float* dy, const float* x, const float* weight,
                           const float* mean, const float* rstd, float* dx, float* dweight,
                           float* dbias, int64_t rows, int64_t cols, bool accumulate) {
  if (rows <= 0 || cols <= 0) return;
  // At most 512 row blocks: enough to fill the GPU, and few partial rows to add.
  const int64_t rpb = cdiv(rows, 512);
  const int64_t nb = cdiv(rows, rpb);
  Scratch partial(sizeof(float) * 2 * nb * cols);
  const bool shared = cols <= kSharedPartialCols;
  const size_t smem = shared ? sizeof(float) * 2 * cols : 0;
  layernorm_backward_kernel<<<(unsigned)nb, row_threads(cols, kMaxThreads), smem>>>(
      dy, x, weight, mean, rstd, dx, partial.as<float>(), rows, cols, rpb, shared, accumulate);
  FASTLM_CHECK_LAUNCH("layernorm_backward_kernel");
  layernorm_finish_kernel<<<(unsigned)cdiv(cols, 256), 256>>>(partial.as<float>(), dweight, dbias,
                                                               nb, cols);
  FASTLM_CHECK_LAUNCH("layernorm_finish_kernel");
}

void layernorm_backward(const float* dy, const float* x, const float* weight, const float* mean,
                        const float* rstd, float* dx, float* dweight, float* dbias, int64_t rows,
                        int64_t cols) {
  layernorm_backward_ex(dy, x, weight, mean, rstd, dx, dweight, dbias, rows, cols, true);
}

void layernorm_backward_write(const float* dy, const float* x, const float* weight,
                              const float* mean, const float* rstd, float* dx, float* dweight,
                              float* dbias, int64_t rows, int64_t cols) {
  layernorm_backward_ex(dy, x, weight, mean, rstd, dx, dweight, dbias, rows, cols, false);
}

}  // namespace cuda
}  // namespace fastlm
