// Fused softmax cross-entropy, forward and backward, one thread block per row.
//
// A row is read twice: an online max / sum-of-exp pass (each thread keeps its
// own running max and rescales its sum when the max grows, so every element
// costs one exp), then, with a gradient, a pass writing
// (exp(x - max) / sum - onehot) * dloss / count. The target logit is read
// before the first barrier, so the gradient may overwrite the logits in place.
//
// The loss is deterministic: each row's loss goes to its own slot (double),
// then one block sums the slots in a fixed order. The count of rows that are
// not ignored is computed on the device first, so nothing waits for the host
// until the single loss value is copied back.
#include <cfloat>

#include "cuda/common.cuh"

namespace fastlm {
namespace cuda {

namespace {

constexpr int kRowThreads = 512;
constexpr int kReduceThreads = 1024;

struct CeResult {
  int64_t count;
  unsigned long long bad_row;  // first out-of-range target (ULLONG_MAX: none)
  float loss;
};

template <typename Idx>
__global__ void ce_count_kernel(const Idx* __restrict__ targets, int64_t rows, int64_t vocab,
                                int64_t ignore_index, CeResult* res) {
  __shared__ double red[33];
  double c = 0.0;  // exact for any realistic count (< 2^53)
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    const int64_t t = (int64_t)targets[r];
    if (t == ignore_index) continue;
    if (t < 0 || t >= vocab)
      atomicMin(&res->bad_row, (unsigned long long)r);
    else
      c += 1.0;
  }
  c = block_sum(c, red);
  if (threadIdx.x == 0) res->count = (int64_t)c;
}

// Merges (m2, s2) into the running (m, s): s sums exp(x - m).
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  const float mx = fmaxf(m, m2);
  s = s * expf(m - mx) + s2 * expf(m2 - mx);
  m = mx;
}

// No __restrict__ on logits / dlogits: they may be the same array. T is float
// or bfloat16 (the fused classifier's logits); the statistics are float32
// either way and the gradient is rounded once, when it is stored.
template <typename Idx, typename T>
__global__ void __launch_bounds__(kRowThreads)
    ce_row_kernel(const T* logits, const Idx* __restrict__ targets, T* dlogits,
                  int64_t vocab, int64_t ignore_index, float dloss, const CeResult* res,
                  double* __restrict__ losses) {
  __shared__ float part_m[32], part_s[32];
  __shared__ float row_m, row_s;
  const int64_t row = blockIdx.x;
  const T* x = logits + row * vocab;
  T* g = dlogits ? dlogits + row * vocab : nullptr;
  const int64_t t = (int64_t)targets[row];
  if (t == ignore_index || t < 0 || t >= vocab) {  // the same for the whole block
    if (threadIdx.x == 0) losses[row] = 0.0;
    if (g)
      for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) g[j] = from_f32<T>(0.f);
    return;
  }
  const float xt = to_f32(x[t]);  // before any thread overwrites it (they first pass a barrier)

  // The max starts at -FLT_MAX, not -inf: -inf logits then add exp(-inf) = 0
  // rather than exp(-inf - -inf) = NaN.
  float m = -FLT_MAX, s = 0.f;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float v = to_f32(x[j]);
    if (v > m) {
      s = s * expf(m - v) + 1.f;
      m = v;
    } else {
      s += expf(v - m);
    }
  }
  // Butterfly merges give every lane the same (m, s): a + b == b + a.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(kFullMask, m, o), s2 = __shfl_xor_sync(kFullMask, s, o);
    merge(m, s, m2, s2);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  if (lane == 0) {
    part_m[warp] = m;
    part_s[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < nwarps ? part_m[lane] : -FLT_MAX;
    s = lane < nwarps ? part_s[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(kFullMask, m, o), s2 = __shfl_xor_sync(kFullMask, s, o);
      merge(m, s, m2, s2);
    }
    if (lane == 0) {
      row_m = m;
      row_s = s;
    }
  }
  __syncthreads();
  const float mx = row_m, sum = row_s;
  if (threadIdx.x == 0) losses[row] = ((double)mx - (double)xt) + log((double)sum);
  if (!g) return;
  // exp(x - max) scaled by 1/sum rather than exp(x - lse): x - max is exact
  // near the max, lse is not.
  const float scale = dloss / (float)res->count;
  const float c = scale / sum;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    float v = expf(to_f32(x[j]) - mx) * c;
    if (j == t) v -= scale;
    g[j] = from_f32<T>(v);
  }
}

__global__ void ce_reduce_kernel(const double* __restrict__ losses, int64_t rows, CeResult* res) {
  __shared__ double red[33];
  double s = 0.0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) s += losses[r];
  s = block_sum(s, red);
  if (threadIdx.x == 0) res->loss = res->count ? (float)(s / (double)res->count) : NAN;
}

template <typename Idx, typename T>
float run(const T* logits, const Idx* targets, T* dlogits, int64_t rows, int64_t vocab,
          int64_t ignore_index, float dloss, int64_t* bad_row) {
  Scratch scratch(sizeof(CeResult) + sizeof(double) * rows);
  CeResult* res = scratch.as<CeResult>();
  double* losses = reinterpret_cast<double*>(scratch.as<char>() + sizeof(CeResult));
  // The whole struct, padding included, so that the copy back below reads no
  // uninitialised bytes (compute-sanitizer's initcheck); bad_row needs all ones.
  check(cudaMemsetAsync(res, 0xff, sizeof(CeResult), launch_stream()), "cudaMemsetAsync");
  ce_count_kernel<Idx><<<1, kReduceThreads, 0, launch_stream()>>>(targets, rows, vocab, ignore_index, res);
  FASTLM_CHECK_LAUNCH("ce_count_kernel");
  ce_row_kernel<Idx, T><<<row_grid(rows, "cross_entropy"), row_threads(vocab, kRowThreads), 0, launch_stream()>>>(
      logits, targets, dlogits, vocab, ignore_index, dloss, res, losses);
  FASTLM_CHECK_LAUNCH("ce_row_kernel");
  ce_reduce_kernel<<<1, kReduceThreads, 0, launch_stream()>>>(losses, rows, res);
  FASTLM_CHECK_LAUNCH("ce_reduce_kernel");
  CeResult host;
  copy_to_host(&host, res, sizeof(host));
  *bad_row = host.bad_row == ~0ull ? -1 : (int64_t)host.bad_row;
  return host.loss;
}

template <typename T>
float run_any(const T* logits, const void* targets, bool targets_are_int32, T* dlogits,
              int64_t rows, int64_t vocab, int64_t ignore_index, float dloss, int64_t* bad_row) {
  *bad_row = -1;
  if (rows <= 0) return NAN;
  if (vocab <= 0) throw std::invalid_argument("cross_entropy: vocab must be >= 1");
  if (targets_are_int32)
    return run(logits, static_cast<const int32_t*>(targets), dlogits, rows, vocab, ignore_index,
               dloss, bad_row);
  return run(logits, static_cast<const int64_t*>(targets), dlogits, rows, vocab, ignore_index,
             dloss, bad_row);
}

}  // namespace

float cross_entropy_checked(const void* logits, DType dtype, const void* targets,
                            bool targets_are_int32, void* dlogits, int64_t rows, int64_t vocab,
                            int64_t ignore_index, float dloss, int64_t* bad_row) {
  if (dtype == DType::kBFloat16)
    return run_any(static_cast<const bf16*>(logits), targets, targets_are_int32,
                   static_cast<bf16*>(dlogits), rows, vocab, ignore_index, dloss, bad_row);
  return run_any(static_cast<const float*>(logits), targets, targets_are_int32,
                 static_cast<float*>(dlogits), rows, vocab, ignore_index, dloss, bad_row);
}

float cross_entropy(const float* logits, const int64_t* targets, float* dlogits, int64_t rows,
                    int64_t vocab, int64_t ignore_index, float dloss) {
  int64_t bad = -1;
  const float loss = cross_entropy_checked(logits, DType::kFloat32, targets, false, dlogits, rows,
                                           vocab, ignore_index, dloss, &bad);
  if (bad >= 0)
    throw std::invalid_argument("cross_entropy: targets[" + std::to_string(bad) +
                                "] is out of range [0, " + std::to_string(vocab) +
                                ") and is not ignore_index");
  return loss;
}

}  // namespace cuda
}  // namespace fastlm
