// c (m, n) = a (m, k) @ b (n, k)^T [+ bias] [+ c] for m <= kGemvMaxRows: the
// Linear layers of decoding, one row per sequence.
//
// matmul.cu's 128 x 128 tiles would waste all but m of their rows and, with
// n / 128 blocks, leave most multiprocessors idle; here each warp streams one
// row of b (one output column) with 16-byte loads and keeps the m partial sums
// in registers, so the kernel moves b's bytes once, at memory bandwidth, which
// is its ceiling. b is float32 (exact) or bfloat16 (a model's mixed precision:
// the packed weights of its bf16 table, with a's values rounded to bfloat16 as
// they are read, as the tensor-core GEMM rounds its operands). Each column's
// sum has a fixed order: results do not depend on the launch.
#include "cuda/common.cuh"
#include "cuda/gemv.h"

namespace fastlm {
namespace cuda {

namespace {

constexpr int kWarpsPerBlock = 8;

template <bool kRoundA>
__device__ __forceinline__ float a_val(float x) {
  return kRoundA ? __bfloat162float(__float2bfloat16_rn(x)) : x;
}

// The 16 bytes of b at w as floats: 4 floats, or 8 bfloat16.
__device__ __forceinline__ void load_b(const float* w, float (&out)[4]) {
  const float4 v = *reinterpret_cast<const float4*>(w);
  out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
}
__device__ __forceinline__ void load_b(const bf16* w, float (&out)[8]) {
  const uint4 v = *reinterpret_cast<const uint4*>(w);
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(words[i] << 16);
    out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}

template <typename TB, int M>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarp)
    gemv_kernel(GemvParams p, const TB* __restrict__ b) {
  constexpr bool kRoundA = std::is_same<TB, bf16>::value;
  constexpr int V = 16 / sizeof(TB);  // elements of b per 16-byte load
  const int lane = threadIdx.x % kWarp;
  const int64_t col = (int64_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp;
  if (col >= p.n) return;
  const TB* w = b + col * p.ldb;
  float acc[M];
#pragma unroll
  for (int r = 0; r < M; ++r) acc[r] = 0.f;
  // 16-byte loads of b and a where both rows are 16-byte aligned.
  const bool vec = p.vec && (reinterpret_cast<uintptr_t>(w) % 16 == 0);
  const int64_t kv = vec ? p.k / V * V : 0;
  for (int64_t i = (int64_t)lane * V; i < kv; i += kWarp * V) {
    float wv[V];
    load_b(w + i, wv);
#pragma unroll
    for (int r = 0; r < M; ++r) {
      if (r < p.m) {
        const float* ar = p.a + r * p.lda + i;
#pragma unroll
        for (int j = 0; j < V; j += 4) {
          const float4 x = *reinterpret_cast<const float4*>(ar + j);
          acc[r] += a_val<kRoundA>(x.x) * wv[j] + a_val<kRoundA>(x.y) * wv[j + 1] +
                    a_val<kRoundA>(x.z) * wv[j + 2] + a_val<kRoundA>(x.w) * wv[j + 3];
        }
      }
    }
  }
  for (int64_t i = kv + lane; i < p.k; i += kWarp) {
    const float wv = to_f32(w[i]);
#pragma unroll
    for (int r = 0; r < M; ++r)
      if (r < p.m) acc[r] += a_val<kRoundA>(p.a[r * p.lda + i]) * wv;
  }
#pragma unroll
  for (int r = 0; r < M; ++r) {
#pragma unroll
    for (int off = kWarp / 2; off > 0; off /= 2) acc[r] += __shfl_xor_sync(kFullMask, acc[r], off);
  }
  if (lane == 0) {
    const float bias = p.bias ? p.bias[col] : 0.f;
#pragma unroll
    for (int r = 0; r < M; ++r) {
      if (r < p.m) {
        float* c = p.c + r * p.ldc + col;
        *c = (p.accumulate ? *c : 0.f) + acc[r] + bias;
      }
    }
  }
}

template <typename TB>
void launch(const GemvParams& p, const TB* b) {
  const unsigned grid = (unsigned)cdiv(p.n, kWarpsPerBlock);
  const unsigned threads = kWarpsPerBlock * kWarp;
  if (p.m <= 1) gemv_kernel<TB, 1><<<grid, threads, 0, launch_stream()>>>(p, b);
  else if (p.m <= 2) gemv_kernel<TB, 2><<<grid, threads, 0, launch_stream()>>>(p, b);
  else if (p.m <= 4) gemv_kernel<TB, 4><<<grid, threads, 0, launch_stream()>>>(p, b);
  else gemv_kernel<TB, kGemvMaxRows><<<grid, threads, 0, launch_stream()>>>(p, b);
  FASTLM_CHECK_LAUNCH("gemv_kernel");
}

}  // namespace

bool gemv_fits(const GemmArgs& g) {
  return g.m >= 1 && g.m <= kGemvMaxRows && !g.trans_a && g.trans_b && g.n > 0 &&
         g.n <= 0x7fffffffLL * kWarpsPerBlock;
}

void gemv(const GemmArgs& g, const void* b, bool b_bf16) {
  GemvParams p;
  p.a = g.a, p.bias = g.bias, p.c = g.c;
  p.m = g.m, p.n = g.n, p.k = g.k, p.lda = g.lda, p.ldb = g.ldb, p.ldc = g.ldc;
  p.accumulate = g.accumulate;
  const int64_t eb = b_bf16 ? 2 : 4;
  p.vec = reinterpret_cast<uintptr_t>(g.a) % 16 == 0 && (g.lda * 4) % 16 == 0 &&
          reinterpret_cast<uintptr_t>(b) % 16 == 0 && (g.ldb * eb) % 16 == 0;
  if (b_bf16) launch(p, static_cast<const bf16*>(b));
  else launch(p, static_cast<const float*>(b));
}

}  // namespace cuda
}  // namespace fastlm
