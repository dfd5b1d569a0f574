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

// out = a + b (Map2<Add>).
struct Add {
  __device__ static float f(float a, float b) { return a + b; }
};

// dst = src, converted through float32 (bfloat16 rounded to nearest even).
template <typename S, typename D>
struct Convert {
  const S* src;
  D* dst;
  template <int W>
  __device__ void at(int64_t i) const {
    store_pack<W>(dst, i, load_pack<W>(src, i));
  }
};

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

}  // namespace

void zero(float* x, int64_t n) {
  if (n > 0) zero_device(x, sizeof(float) * n);
}

void copy(float* dst, const float* src, int64_t n) {
  if (n > 0 && dst != src) copy_device(dst, src, sizeof(float) * n);
}

void residual_forward(const float* a, const float* b, float* out, int64_t n) {
  elementwise(Map2<Add>{a, b, out}, n, packs_aligned(a, b, out), "residual_kernel");
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
  const bf16* s = static_cast<const bf16*>(src);
  elementwise(Convert<bf16, float>{s, dst}, n, packs_aligned(s, dst), "bf16_to_float_kernel");
}

void float_to_bf16(const float* src, void* dst, int64_t n) {
  bf16* d = static_cast<bf16*>(dst);
  elementwise(Convert<float, bf16>{src, d}, n, packs_aligned(src, d), "float_to_bf16_kernel");
}

}  // namespace cuda
}  // namespace fastlm
