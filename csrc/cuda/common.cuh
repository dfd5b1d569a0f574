// Device-side helpers shared by the kernels: element types, deterministic warp
// and block reductions, and the PTX wrappers (cp.async, ldmatrix, mma.sync)
// the tiled kernels are built from.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/cuda_kernels.h"
#include "cuda/runtime.h"

namespace fastlm {
namespace cuda {

using bf16 = __nv_bfloat16;

// The stream every launch passes (runtime.h, current_stream): the legacy
// default stream, or while a decode step is captured, the capture stream.
inline cudaStream_t launch_stream() { return static_cast<cudaStream_t>(current_stream()); }

// Every launch goes through this: the kernel's name reaches the error message.
#define FASTLM_CHECK_LAUNCH(name) ::fastlm::cuda::check_launch(name)

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over n items: enough to fill the GPU, never
// more than there is work for.
inline unsigned grid_for(int64_t n, int threads) {
  const int64_t want = cdiv(n, threads);
  static const int sms = multiprocessor_count();
  const int64_t cap = int64_t(sms) * 32;
  return (unsigned)(want < 1 ? 1 : (want < cap ? want : cap));
}

// One block per row: grid.x is limited to 2^31 - 1.
inline unsigned row_grid(int64_t rows, const char* op) {
  if (rows > 0x7fffffffLL) throw std::invalid_argument(std::string(op) + ": more than 2^31 - 1 rows");
  return (unsigned)rows;
}

// Kernels that need more than the 48 KB of static shared memory opt in.
template <typename Kernel>
void allow_shared_bytes(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes),
          "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
}

// ---- element types -------------------------------------------------------
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float x) {
  return __float2bfloat16_rn(x);
}

// Two floats as a bfloat16x2 register: `lo` in the low half, which is where
// mma.sync expects the element of lower column index.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// The recurrent cells' gate activation (the CPU's formula).
__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// ---- elementwise maps --------------------------------------------------------
// W consecutive elements in float32 registers: what an elementwise op sees.
template <int W>
struct Pack {
  float v[W];
  __device__ __forceinline__ float& operator[](int k) { return v[k]; }
  __device__ __forceinline__ float operator[](int k) const { return v[k]; }
};

// Elements i .. i + W - 1 of p (i a multiple of W), as float32: W = 4 is one
// 16-byte load of float (8 bytes of bfloat16), W = 1 a scalar load.
template <int W>
__device__ __forceinline__ Pack<W> load_pack(const float* p, int64_t i) {
  Pack<W> r;
  if constexpr (W == 4) {
    const float4 f = *reinterpret_cast<const float4*>(p + i);
    r[0] = f.x, r[1] = f.y, r[2] = f.z, r[3] = f.w;
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k) r[k] = p[i + k];
  }
  return r;
}
template <int W>
__device__ __forceinline__ Pack<W> load_pack(const bf16* p, int64_t i) {
  Pack<W> r;
  if constexpr (W == 4) {
    const uint2 u = *reinterpret_cast<const uint2*>(p + i);
    const __nv_bfloat162 lo = *reinterpret_cast<const __nv_bfloat162*>(&u.x);
    const __nv_bfloat162 hi = *reinterpret_cast<const __nv_bfloat162*>(&u.y);
    r[0] = __low2float(lo), r[1] = __high2float(lo), r[2] = __low2float(hi), r[3] = __high2float(hi);
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k) r[k] = __bfloat162float(p[i + k]);
  }
  return r;
}
template <int W>
__device__ __forceinline__ void store_pack(float* p, int64_t i, const Pack<W>& r) {
  if constexpr (W == 4) {
    *reinterpret_cast<float4*>(p + i) = make_float4(r[0], r[1], r[2], r[3]);
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k) p[i + k] = r[k];
  }
}
template <int W>
__device__ __forceinline__ void store_pack(bf16* p, int64_t i, const Pack<W>& r) {
  if constexpr (W == 4) {
    uint2 u;
    u.x = pack_bf16(r[0], r[1]);
    u.y = pack_bf16(r[2], r[3]);
    *reinterpret_cast<uint2*>(p + i) = u;
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k) p[i + k] = __float2bfloat16_rn(r[k]);
  }
}

// The grid-stride loop of every elementwise kernel: op.template at<4>(i) for
// i = 0, 4, ... while a whole pack fits (when `vec`), then op.template at<1>(i)
// for the tail (everything when not `vec`). An op reads and writes its
// elements through load_pack / store_pack, so one body serves both widths;
// each element is read before it is written by the same thread, so outputs
// may alias inputs.
template <class Op>
__global__ void elementwise_kernel(Op op, int64_t n, bool vec) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t i0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  int64_t tail = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = i0; i < n4; i += stride) op.template at<4>(4 * i);
    tail = n4 * 4;
  }
  for (int64_t i = tail + i0; i < n; i += stride) op.template at<1>(i);
}

// The grid-stride loop of the kernels with one thread per (row, unit) of a
// rows x units map (the RNN cells): f(e, row, unit) for each element
// e = row * units + unit.
template <class F>
__device__ __forceinline__ void for_each_row_unit(int64_t rows, int64_t units, F f) {
  const int64_t total = rows * units, stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride)
    f(e, e / units, e % units);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Whether every pointer allows 4-wide packs: 16 bytes of float, 8 of bfloat16.
inline bool packs_aligned() { return true; }
template <typename T, typename... Rest>
bool packs_aligned(const T* p, const Rest*... rest) {
  return (reinterpret_cast<uintptr_t>(p) % (4 * sizeof(T))) == 0 && packs_aligned(rest...);
}

constexpr int kElementwiseThreads = 256;

// The op of a binary map out = F::f(a, b), element by element in float32
// (F a struct with a static __device__ f(float, float)); out may alias a or b.
template <class F>
struct Map2 {
  const float* a;
  const float* b;
  float* out;
  template <int W>
  __device__ void at(int64_t i) const {
    Pack<W> x = load_pack<W>(a, i);
    const Pack<W> y = load_pack<W>(b, i);
#pragma unroll
    for (int k = 0; k < W; ++k) x[k] = F::f(x[k], y[k]);
    store_pack<W>(out, i, x);
  }
};

// Runs op over n elements (nothing for n <= 0); `vec` when every pointer
// passes packs_aligned. `name` reaches launch errors.
template <class Op>
void elementwise(const Op& op, int64_t n, bool vec, const char* name) {
  if (n <= 0) return;
  elementwise_kernel<Op><<<grid_for(vec ? cdiv(n, 4) : n, kElementwiseThreads),
                           kElementwiseThreads, 0, launch_stream()>>>(op, n, vec);
  FASTLM_CHECK_LAUNCH(name);
}

// ---- reductions (fixed shuffle trees: results are identical run to run) ----
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024), returned to
// every thread. `red` is shared scratch of at least 33 elements; every thread
// of the block must call this (it holds __syncthreads).
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // a previous call's readers of red[32] are done
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < nwarps ? red[lane] : T(0);
    w = warp_sum(w);
    if (lane == 0) red[32] = w;
  }
  __syncthreads();
  return red[32];
}

__device__ __forceinline__ float block_max(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < nwarps ? red[lane] : -INFINITY;
    w = warp_max(w);
    if (lane == 0) red[32] = w;
  }
  __syncthreads();
  return red[32];
}

// Threads for a one-block-per-row kernel: a multiple of 32, at most `cap`.
inline int row_threads(int64_t cols, int cap) {
  int64_t t = cdiv(cols < 1 ? 1 : cols, 32) * 32;
  return (int)(t < cap ? t : cap);
}

// ---- PTX wrappers (sm_80+) -------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte asynchronous global -> shared copy; bytes past src_bytes (0..16) are
// zero-filled and not read. Both addresses must be 16-byte aligned.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices from shared memory: lanes 8i..8i+7 give the row
// addresses (16 bytes each, 16-byte aligned) of matrix i, which lands in r[i].
// Lane l receives row l/4, elements 2(l%4) and 2(l%4)+1 of each matrix; with
// .trans, of each matrix transposed (column l/4, rows 2(l%4), 2(l%4)+1).
#define FASTLM_LDMATRIX_X4(trans)                                                   \
  asm volatile("ldmatrix.sync.aligned.m8n8.x4" trans ".shared.b16 {%0, %1, %2, %3}, [%4];\n" \
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])                     \
               : "r"(smem_u32(smem))                                                \
               : "memory")
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  FASTLM_LDMATRIX_X4("");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  FASTLM_LDMATRIX_X4(".trans");
}
#undef FASTLM_LDMATRIX_X4

// D = A B + D on tensor cores, one warp. Fragment layouts (g = lane / 4,
// t = lane % 4), from the PTX ISA:
//   m16n8k16 bf16: A regs {(g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..)}
//                  B regs {(k 2t..2t+1, n g), (k 2t+8..2t+9, n g)}
//   m16n8k8 tf32:  A regs {(g, t), (g+8, t), (g, t+4), (g+8, t+4)}
//                  B regs {(k t, n g), (k t+4, n g)}
//   C/D (both):    {(g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)}
// Both bind the same registers: 4 of A, 2 of B, 4 of C = D.
#define FASTLM_MMA_SYNC(shape_and_types)                                                       \
  asm volatile("mma.sync.aligned." shape_and_types                                             \
               " {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"            \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  FASTLM_MMA_SYNC("m16n8k16.row.col.f32.bf16.bf16.f32");
}
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  FASTLM_MMA_SYNC("m16n8k8.row.col.f32.tf32.tf32.f32");
}
#undef FASTLM_MMA_SYNC
// float32 -> TF32, rounded to nearest (ties away), as the tensor cores want it.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// ---- tile loads ------------------------------------------------------------
// Copies the ROWS x COLS tile at (r0, c0) of a row-major global matrix (row
// stride ldg, valid extent nrows x ncols) into shared memory with row stride
// LDS, zero-filling everything outside the matrix. THREADS threads share the
// work in 16-byte chunks. With `vec` (g and ldg 16-byte aligned) each chunk is
// one cp.async, to be completed by cp_async_commit/wait + __syncthreads;
// without it, plain loads and stores (complete after __syncthreads).
template <typename T, int ROWS, int COLS, int LDS, int THREADS>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t ldg, int64_t r0, int64_t c0,
                                          int64_t nrows, int64_t ncols, bool vec) {
  constexpr int kChunk = 16 / (int)sizeof(T);  // elements per 16 bytes
  static_assert(COLS % kChunk == 0, "tile width must be whole 16-byte chunks");
  static_assert(LDS % kChunk == 0, "shared rows must stay 16-byte aligned");
  constexpr int kPerRow = COLS / kChunk;
  constexpr int kTotal = ROWS * kPerRow;
  static_assert(kTotal % THREADS == 0, "chunks must divide evenly among the threads");
#pragma unroll
  for (int it = 0; it < kTotal / THREADS; ++it) {
    const int idx = (int)threadIdx.x + it * THREADS;
    const int r = idx / kPerRow, c = (idx % kPerRow) * kChunk;
    const int64_t gr = r0 + r, gc = c0 + c;
    T* dst = s + r * LDS + c;
    if (vec) {
      int valid = 0;
      if (gr < nrows && gc < ncols) valid = (int)(ncols - gc < kChunk ? ncols - gc : kChunk);
      const T* src = valid > 0 ? g + gr * ldg + gc : g;
      cp_async16(dst, src, valid * (int)sizeof(T));
    } else {
#pragma unroll
      for (int e = 0; e < kChunk; ++e)
        dst[e] = (gr < nrows && gc + e < ncols) ? g[gr * ldg + gc + e] : from_f32<T>(0.f);
    }
  }
}

}  // namespace cuda
}  // namespace fastlm
