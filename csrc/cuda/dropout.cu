// Dropout with the CPU kernel's mask (csrc/dropout_hash.h): the same key and
// index give the same kept elements on either backend.
#include "cuda/common.cuh"
#include "dropout_hash.h"

namespace fastlm {
namespace cuda {

namespace {

constexpr int kThreads = 256;

__global__ void dropout_kernel(const float* x, float* y, int64_t n, uint32_t thr, float scale,
                               uint64_t key) {
  // No __restrict__: y may alias x (each element is read before it is written).
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = dropout::bits(key, (uint64_t)i) >= thr ? x[i] * scale : 0.f;
}

}  // namespace

void dropout(const float* x, float* y, int64_t n, float p, uint64_t key) {
  if (n <= 0) return;
  dropout_kernel<<<grid_for(n, kThreads), kThreads, 0, launch_stream()>>>(x, y, n, dropout::threshold(p),
                                                      1.f / (1.f - p), key);
  FASTLM_CHECK_LAUNCH("dropout_kernel");
}

}  // namespace cuda
}  // namespace fastlm
