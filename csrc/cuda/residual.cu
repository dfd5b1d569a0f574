// Zero fill, copy, residual add, a deterministic sum of squares (gradient
// norms), and bfloat16 <-> float32 conversion.
#include "cuda/common.cuh"

namespace fastlm {
namespace cuda {

namespace {

constexpr int kThreads = 256;
// Sum of squares: fixed-size chunks, one block each, then one block adds the
// chunk sums in order; the result depends on n only.
constexpr int64_t kSumChunk = 1 << 14;
constexpr int kFinishThreads = 1024;

__global__ void residual_kernel(const float* a, const float* b, float* out, int64_t n, bool vec) {
  // No __restrict__: out may alias a or b (each element is read before it is written).
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t i0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  int64_t tail = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = i0; i < n4; i += stride) {
      const float4 x = reinterpret_cast<const float4*>(a)[i];
      const float4 y = reinterpret_cast<const float4*>(b)[i];
      reinterpret_cast<float4*>(out)[i] = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
    }
    tail = n4 * 4;
  }
  for (int64_t i = tail + i0; i < n; i += stride) out[i] = a[i] + b[i];
}

__global__ void sum_squares_chunks_kernel(const float* __restrict__ x, int64_t n,
                                          double* __restrict__ partial) {
  __shared__ double red[33];
  const int64_t i0 = (int64_t)blockIdx.x * kSumChunk;
  const int64_t i1 = i0 + kSumChunk < n ? i0 + kSumChunk : n;
  double s = 0.0;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
    const double v = x[i];
    s = fma(v, v, s);
  }
  s = block_sum(s, red);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sum_squares_finish_kernel(const double* __restrict__ partial, int64_t nchunks,
                                          double* __restrict__ out) {
  __shared__ double red[33];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < nchunks; i += blockDim.x) s += partial[i];
  s = block_sum(s, red);
  if (threadIdx.x == 0) *out = s;
}

__global__ void bf16_to_float_kernel(const bf16* __restrict__ src, float* __restrict__ dst,
                                     int64_t n) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = __bfloat162float(src[i]);
}

__global__ void float_to_bf16_kernel(const float* __restrict__ src, bf16* __restrict__ dst,
                                     int64_t n) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = __float2bfloat16_rn(src[i]);
}

}  // namespace

void zero(float* x, int64_t n) {
  if (n > 0) zero_device(x, sizeof(float) * n);
}

void copy(float* dst, const float* src, int64_t n) {
  if (n > 0 && dst != src) copy_device(dst, src, sizeof(float) * n);
}

void residual_forward(const float* a, const float* b, float* out, int64_t n) {
  if (n <= 0) return;
  const bool vec = aligned16(a) && aligned16(b) && aligned16(out);
  residual_kernel<<<grid_for(vec ? cdiv(n, 4) : n, kThreads), kThreads, 0, launch_stream()>>>(a, b, out, n, vec);
  FASTLM_CHECK_LAUNCH("residual_kernel");
}

double sum_squares(const float* x, int64_t n) {
  if (n <= 0) return 0.0;
  const int64_t nchunks = cdiv(n, kSumChunk);
  if (nchunks > 0x7fffffffLL) throw std::invalid_argument("sum_squares: n too large");
  Scratch scratch(sizeof(double) * (nchunks + 1));
  double* partial = scratch.as<double>();
  double* out = partial + nchunks;
  sum_squares_chunks_kernel<<<(unsigned)nchunks, kThreads, 0, launch_stream()>>>(x, n, partial);
  FASTLM_CHECK_LAUNCH("sum_squares_chunks_kernel");
  sum_squares_finish_kernel<<<1, kFinishThreads, 0, launch_stream()>>>(partial, nchunks, out);
  FASTLM_CHECK_LAUNCH("sum_squares_finish_kernel");
  double host = 0.0;
  copy_to_host(&host, out, sizeof(host));
  return host;
}

void bf16_to_float(const void* src, float* dst, int64_t n) {
  if (n <= 0) return;
  bf16_to_float_kernel<<<grid_for(n, kThreads), kThreads, 0, launch_stream()>>>(static_cast<const bf16*>(src), dst, n);
  FASTLM_CHECK_LAUNCH("bf16_to_float_kernel");
}

void float_to_bf16(const float* src, void* dst, int64_t n) {
  if (n <= 0) return;
  float_to_bf16_kernel<<<grid_for(n, kThreads), kThreads, 0, launch_stream()>>>(src, static_cast<bf16*>(dst), n);
  FASTLM_CHECK_LAUNCH("float_to_bf16_kernel");
}

}  // namespace cuda
}  // namespace fastlm
