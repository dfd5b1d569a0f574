// Row softmax and its backward, one thread block per row. Rows up to a few
// hundred KB stay in L1/L2 between the passes (max, sum of exp, write), so
// DRAM sees one read of x and one write of y. Reductions are fixed shuffle
// trees: results do not change from run to run.
#include "cuda/common.cuh"

namespace fastlm {
namespace cuda {

namespace {

constexpr int kMaxThreads = 256;

__global__ void softmax_forward_kernel(const float* __restrict__ x, float* __restrict__ y,
                                       int64_t cols) {
  __shared__ float red[33];
  const float* xr = x + (int64_t)blockIdx.x * cols;
  float* yr = y + (int64_t)blockIdx.x * cols;
  // -inf is the identity of max; an all -inf row gives NaN, as torch does.
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, xr[j]);
  m = block_max(m, red);
  float s = 0.f;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += expf(xr[j] - m);
  s = block_sum(s, red);
  const float inv = 1.f / s;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = expf(xr[j] - m) * inv;
}

// dx += y * (dy - sum(dy * y))
__global__ void softmax_backward_kernel(const float* __restrict__ dy, const float* __restrict__ y,
                                        float* __restrict__ dx, int64_t cols) {
  __shared__ float red[33];
  const int64_t off = (int64_t)blockIdx.x * cols;
  float d = 0.f;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) d = fmaf(dy[off + j], y[off + j], d);
  d = block_sum(d, red);
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
    dx[off + j] = fmaf(y[off + j], dy[off + j] - d, dx[off + j]);
}

}  // namespace

void softmax_forward(const float* x, float* y, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  softmax_forward_kernel<<<row_grid(rows, "softmax"), row_threads(cols, kMaxThreads), 0, launch_stream()>>>(x, y, cols);
  FASTLM_CHECK_LAUNCH("softmax_forward_kernel");
}

void softmax_backward(const float* dy, const float* y, float* dx, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  softmax_backward_kernel<<<row_grid(rows, "softmax_backward"), row_threads(cols, kMaxThreads), 0, launch_stream()>>>(dy, y, dx, cols);
  FASTLM_CHECK_LAUNCH("softmax_backward_kernel");
}

}  // namespace cuda
}  // namespace fastlm
