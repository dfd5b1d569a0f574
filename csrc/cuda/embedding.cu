// Token + position embedding, forward and backward.
//
// The backward is deterministic without atomics: dwpe is parallel over
// (position, channel), each thread adding the batch rows in order; dwte, whose
// rows repeated tokens hit, is parallel over channels only, each thread
// walking the tokens in order (as the CPU's threads do). That leaves the
// dwte pass with c threads; it is a small part of a training step.
#include "cuda/common.cuh"

namespace fastlm {
namespace cuda {

namespace {

constexpr int kThreads = 256;

__global__ void embedding_forward_kernel(const int64_t* __restrict__ idx,
                                         const float* __restrict__ wte,
                                         const float* __restrict__ wpe, float* __restrict__ out,
                                         int64_t rows, int64_t t, int64_t c, int64_t pos0) {
  const int64_t total = rows * c, stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t r = e / c, j = e % c;
    float v = wte[idx[r] * c + j];
    if (wpe) v += wpe[(pos0 + r % t) * c + j];
    out[e] = v;
  }
}

__global__ void embedding_backward_wte_kernel(const float* __restrict__ dout,
                                              const int64_t* __restrict__ idx,
                                              float* __restrict__ dwte, int64_t rows, int64_t c) {
  const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= c) return;
  for (int64_t r = 0; r < rows; ++r) dwte[idx[r] * c + j] += dout[r * c + j];
}

__global__ void embedding_backward_wpe_kernel(const float* __restrict__ dout,
                                              float* __restrict__ dwpe, int64_t b, int64_t t,
                                              int64_t c, int64_t pos0) {
  const int64_t total = t * c, stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t p = e / c, j = e % c;
    float s = 0.f;
    for (int64_t bi = 0; bi < b; ++bi) s += dout[(bi * t + p) * c + j];
    dwpe[(pos0 + p) * c + j] += s;
  }
}

}  // namespace

void embedding_forward(const int64_t* idx, const float* wte, const float* wpe, float* out,
                       int64_t b, int64_t t, int64_t c, int64_t pos0) {
  if (b <= 0 || t <= 0 || c <= 0) return;
  embedding_forward_kernel<<<grid_for(b * t * c, kThreads), kThreads, 0, launch_stream()>>>(idx, wte, wpe, out, b * t,
                                                                       t, c, pos0);
  FASTLM_CHECK_LAUNCH("embedding_forward_kernel");
}

void embedding_backward(const float* dout, const int64_t* idx, float* dwte, float* dwpe,
                        int64_t b, int64_t t, int64_t c, int64_t pos0) {
  if (b <= 0 || t <= 0 || c <= 0) return;
  embedding_backward_wte_kernel<<<(unsigned)cdiv(c, kThreads), kThreads, 0, launch_stream()>>>(dout, idx, dwte, b * t,
                                                                           c);
  FASTLM_CHECK_LAUNCH("embedding_backward_wte_kernel");
  if (dwpe) {
    embedding_backward_wpe_kernel<<<grid_for(t * c, kThreads), kThreads, 0, launch_stream()>>>(dout, dwpe, b, t, c,
                                                                          pos0);
    FASTLM_CHECK_LAUNCH("embedding_backward_wpe_kernel");
  }
}

}  // namespace cuda
}  // namespace fastlm
