// GEMM on the GPU: c (m, n) = op(a) @ op(b) [+ bias] [+ c], row-major.
//
// One thread block computes a 128 x 128 tile of c. The K loop is tiled by BK
// and double buffered: while the tensor cores (or FMA units) work on one
// shared-memory stage, cp.async fills the other. Shared tiles keep the global
// layout (see Tiles), so every cp.async moves 16 contiguous bytes and the
// transposes are absorbed when fragments are read from shared memory.
//
// Three inner products share that skeleton:
//   exact float32 (the Kernels table's matmul): 16 x 16 threads, 8 x 8 FMA
//     accumulators each, summed over k in order, as a float32 loop would be;
//   TF32: float32 tiles rounded to TF32 as they enter mma.m16n8k8;
//   bfloat16: mma.m16n8k16 fed by ldmatrix (.trans where the tile is stored
//     the other way round).
// Tensor-core blocks are 8 warps in a 2 x 4 grid, each owning 64 x 32 of c
// (4 x 4 mma tiles of 16 x 8).
#include <type_traits>

#include "cuda/common.cuh"

namespace fastlm {
namespace cuda {

namespace {

constexpr int BM = 128, BN = 128, kThreads = 256;

struct GemmParams {
  const void* a;
  const void* b;
  const void* bias;
  void* c;
  int64_t m, n, k, lda, ldb, ldc;
  bool accumulate;
  bool c_float;       // bfloat16 operands with float32 c and bias (GemmArgs::c_float)
  bool vec_a, vec_b;  // operand base and row stride 16-byte aligned: cp.async usable
};

// Shared-memory tiles in the global operand's own layout:
//   A (m, k), !TA -> [BM][BK + kPadK] (k contiguous)
//   A (k, m),  TA -> [BK][BM + kPadMN] (m contiguous)
//   B (k, n), !TB -> [BK][BN + kPadMN]
//   B (n, k),  TB -> [BN][BK + kPadK]
// The pads keep rows 16-byte aligned and shift consecutive rows by 4 or 8
// banks, so the fragment reads below are free of bank conflicts.
template <typename T, int BK, bool TA, bool TB>
struct Tiles {
  static constexpr int kPadK = 16 / (int)sizeof(T);
  static constexpr int kPadMN = 8;
  static constexpr int kLdA = TA ? BM + kPadMN : BK + kPadK;
  static constexpr int kLdB = TB ? BK + kPadK : BN + kPadMN;
  static constexpr int kElemsA = TA ? BK * kLdA : BM * kLdA;
  static constexpr int kElemsB = TB ? BN * kLdB : BK * kLdB;

  // Element (m, k) of the A tile, (k, n) of the B tile.
  __device__ __forceinline__ static T a(const T* s, int m, int k) {
    return TA ? s[k * kLdA + m] : s[m * kLdA + k];
  }
  __device__ __forceinline__ static T b(const T* s, int k, int n) {
    return TB ? s[n * kLdB + k] : s[k * kLdB + n];
  }

  // Stage the A tile (rows m0.., k0..) and B tile (k0.., cols n0..).
  __device__ __forceinline__ static void load(T* as, T* bs, const GemmParams& p, int64_t m0,
                                              int64_t n0, int64_t k0) {
    const T* A = static_cast<const T*>(p.a);
    const T* B = static_cast<const T*>(p.b);
    if constexpr (TA)
      load_tile<T, BK, BM, kLdA, kThreads>(as, A, p.lda, k0, m0, p.k, p.m, p.vec_a);
    else
      load_tile<T, BM, BK, kLdA, kThreads>(as, A, p.lda, m0, k0, p.m, p.k, p.vec_a);
    if constexpr (TB)
      load_tile<T, BN, BK, kLdB, kThreads>(bs, B, p.ldb, n0, k0, p.n, p.k, p.vec_b);
    else
      load_tile<T, BK, BN, kLdB, kThreads>(bs, B, p.ldb, k0, n0, p.k, p.n, p.vec_b);
  }
};

// c[r, col] = v (+ bias[col]) (+ c[r, col]) when inside the matrix; c and
// bias of type T, or float32 where bfloat16 operands ask for it (c_float).
template <typename T>
__device__ __forceinline__ void store_c(const GemmParams& p, int64_t r, int64_t col, float v) {
  if (r >= p.m || col >= p.n) return;
  if constexpr (std::is_same<T, bf16>::value) {
    if (p.c_float) {
      store_c<float>(p, r, col, v);
      return;
    }
  }
  T* C = static_cast<T*>(p.c);
  if (p.bias) v += to_f32(static_cast<const T*>(p.bias)[col]);
  if (p.accumulate) v += to_f32(C[r * p.ldc + col]);
  C[r * p.ldc + col] = from_f32<T>(v);
}

// The double-buffered K loop: stage kt + 1 is in flight while stage kt is
// consumed by compute(as, bs).
template <typename L, typename T, typename Compute>
__device__ __forceinline__ void k_loop(T (*As)[L::kElemsA], T (*Bs)[L::kElemsB],
                                       const GemmParams& p, int64_t m0, int64_t n0, int bk,
                                       Compute compute) {
  const int64_t nk = (p.k + bk - 1) / bk;
  if (nk > 0) L::load(As[0], Bs[0], p, m0, n0, 0);
  cp_async_commit();
  for (int64_t kt = 0; kt < nk; ++kt) {
    const int cur = (int)(kt & 1);
    if (kt + 1 < nk) L::load(As[cur ^ 1], Bs[cur ^ 1], p, m0, n0, (kt + 1) * bk);
    cp_async_commit();     // (possibly empty) group for stage kt + 1
    cp_async_wait<1>();    // stage kt has landed (this thread's copies) ...
    __syncthreads();       // ... and everyone's, including plain stores
    compute(As[cur], Bs[cur]);
    __syncthreads();       // stage kt is free to be refilled at kt + 2
  }
}

template <bool TA, bool TB>
__global__ void __launch_bounds__(kThreads, 2) gemm_f32_kernel(const GemmParams p) {
  constexpr int BK = 16;
  using L = Tiles<float, BK, TA, TB>;
  __shared__ __align__(16) float As[2][L::kElemsA];
  __shared__ __align__(16) float Bs[2][L::kElemsB];
  const int64_t m0 = (int64_t)blockIdx.y * BM, n0 = (int64_t)blockIdx.x * BN;
  // Thread (ty, tx) owns rows ty + 16 i and columns tx + 16 j of the tile:
  // a warp reads 2 A values (broadcast) and 16 consecutive B values per k.
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

  k_loop<L>(As, Bs, p, m0, n0, BK, [&](const float* as, const float* bs) {
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float av[8], bv[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) av[i] = L::a(as, ty + 16 * i, kk);
#pragma unroll
      for (int j = 0; j < 8; ++j) bv[j] = L::b(bs, kk, tx + 16 * j);
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
  });

#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) store_c<float>(p, m0 + ty + 16 * i, n0 + tx + 16 * j, acc[i][j]);
}

// Fragments of one k step for the warp's 4 x 4 mma tiles: af[i] for rows
// wm + 16 i, bfr[j] for columns wn + 8 j.
template <typename L, bool TA, bool TB>
__device__ __forceinline__ void load_frags(const bf16* as, const bf16* bs, int wm, int wn, int kk,
                                           int lane, uint32_t (&af)[4][4],
                                           uint32_t (&bfr)[4][2]) {
  // ldmatrix.x4: lanes 8q..8q+7 address the rows of 8x8 matrix q.
  const int q = lane >> 3, r8 = lane & 7;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    // Matrix q covers rows m + 8 (q & 1), k + 8 (q >> 1): a0..a3 in mma order.
    const int m = wm + 16 * i + (q & 1) * 8, k = kk + (q >> 1) * 8;
    if constexpr (!TA)
      ldmatrix_x4(af[i], as + (m + r8) * L::kLdA + k);  // rows are m
    else
      ldmatrix_x4_trans(af[i], as + (k + r8) * L::kLdA + m);  // rows are k
  }
#pragma unroll
  for (int pr = 0; pr < 2; ++pr) {
    // Matrix q covers k + 8 (q & 1), n + 8 (q >> 1): b0, b1 of two n tiles.
    const int n = wn + 16 * pr + (q >> 1) * 8, k = kk + (q & 1) * 8;
    uint32_t r[4];
    if constexpr (!TB)
      ldmatrix_x4_trans(r, bs + (k + r8) * L::kLdB + n);  // rows are k
    else
      ldmatrix_x4(r, bs + (n + r8) * L::kLdB + k);  // rows are n
    bfr[2 * pr][0] = r[0];
    bfr[2 * pr][1] = r[1];
    bfr[2 * pr + 1][0] = r[2];
    bfr[2 * pr + 1][1] = r[3];
  }
}

template <typename L, bool TA, bool TB>
__device__ __forceinline__ void load_frags(const float* as, const float* bs, int wm, int wn,
                                           int kk, int lane, uint32_t (&af)[4][4],
                                           uint32_t (&bfr)[4][2]) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = wm + 16 * i + g;
    af[i][0] = to_tf32(L::a(as, m, kk + t));
    af[i][1] = to_tf32(L::a(as, m + 8, kk + t));
    af[i][2] = to_tf32(L::a(as, m, kk + t + 4));
    af[i][3] = to_tf32(L::a(as, m + 8, kk + t + 4));
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int n = wn + 8 * j + g;
    bfr[j][0] = to_tf32(L::b(bs, kk + t, n));
    bfr[j][1] = to_tf32(L::b(bs, kk + t + 4, n));
  }
}

template <typename T, bool TA, bool TB>
__global__ void __launch_bounds__(kThreads, 2) gemm_tc_kernel(const GemmParams p) {
  constexpr bool kBf16 = std::is_same<T, bf16>::value;
  constexpr int BK = kBf16 ? 32 : 16;
  constexpr int KS = kBf16 ? 16 : 8;  // k of one mma
  using L = Tiles<T, BK, TA, TB>;
  __shared__ __align__(16) T As[2][L::kElemsA];
  __shared__ __align__(16) T Bs[2][L::kElemsB];
  const int64_t m0 = (int64_t)blockIdx.y * BM, n0 = (int64_t)blockIdx.x * BN;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;  // warp's corner in the tile
  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  k_loop<L>(As, Bs, p, m0, n0, BK, [&](const T* as, const T* bs) {
#pragma unroll
    for (int kk = 0; kk < BK; kk += KS) {
      uint32_t af[4][4], bfr[4][2];
      load_frags<L, TA, TB>(as, bs, wm, wn, kk, lane, af, bfr);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if constexpr (kBf16)
            mma_bf16(acc[i][j], af[i], bfr[j][0], bfr[j][1]);
          else
            mma_tf32(acc[i][j], af[i], bfr[j][0], bfr[j][1]);
        }
    }
  });

  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        store_c<T>(p, m0 + wm + 16 * i + g + 8 * (e >> 1), n0 + wn + 8 * j + 2 * t + (e & 1),
                   acc[i][j][e]);
}

template <bool TA, bool TB>
void launch_gemm(GemmPrecision prec, const GemmParams& p, dim3 grid) {
  switch (prec) {
    case GemmPrecision::kExact:
      gemm_f32_kernel<TA, TB><<<grid, kThreads, 0, launch_stream()>>>(p);
      FASTLM_CHECK_LAUNCH("gemm_f32_kernel");
      break;
    case GemmPrecision::kTF32:
      gemm_tc_kernel<float, TA, TB><<<grid, kThreads, 0, launch_stream()>>>(p);
      FASTLM_CHECK_LAUNCH("gemm_tc_kernel<tf32>");
      break;
    case GemmPrecision::kBF16:
      gemm_tc_kernel<bf16, TA, TB><<<grid, kThreads, 0, launch_stream()>>>(p);
      FASTLM_CHECK_LAUNCH("gemm_tc_kernel<bf16>");
      break;
  }
}

// ---- bias_backward: column sums in a fixed order ----------------------------
// Pass 1: block (x, y) sums rows [y R, (y + 1) R) of 32 columns, 8 rows at a
// time per thread then across the 8 in order. Pass 2: one thread per column
// adds the row-block partials in order. R depends on `rows` only.
constexpr int kColRowThreads = 8;

__global__ void column_partials_kernel(const float* __restrict__ x, float* __restrict__ partial,
                                       int64_t rows, int64_t cols, int64_t rows_per_block) {
  __shared__ float sh[kColRowThreads][33];
  const int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x;
  const int64_t r0 = (int64_t)blockIdx.y * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
  float s = 0.f;
  if (c < cols)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kColRowThreads) s += x[r * cols + c];
  sh[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float tot = 0.f;
#pragma unroll
    for (int y = 0; y < kColRowThreads; ++y) tot += sh[y][threadIdx.x];
    partial[(int64_t)blockIdx.y * cols + c] = tot;
  }
}

__global__ void column_finish_kernel(const float* __restrict__ partial, float* __restrict__ out,
                                     int64_t nblocks, int64_t cols) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float s = 0.f;
  for (int64_t b = 0; b < nblocks; ++b) s += partial[b * cols + c];
  out[c] += s;
}

}  // namespace

// gemm_sm90.cu: the Hopper kernel, when it takes the call (false: it does not).
bool gemm_sm90(const GemmArgs& d);

void gemm(const GemmArgs& d) {
  if (d.m < 0 || d.n < 0 || d.k < 0)
    throw std::invalid_argument("gemm: negative size");
  if (d.c_float && d.precision != GemmPrecision::kBF16)
    throw std::invalid_argument("gemm: c_float is for bfloat16 operands only");
  if ((d.precision == GemmPrecision::kBF16) != (d.dtype == DType::kBFloat16))
    throw std::invalid_argument("gemm: bfloat16 arithmetic takes bfloat16 operands (dtype), and "
                                "bfloat16 operands bfloat16 arithmetic");
  if (d.m == 0 || d.n == 0) return;
  if (gemm_sm90(d)) return;
  const int64_t grid_y = cdiv(d.m, BM), grid_x = cdiv(d.n, BN);
  if (grid_y > 65535) throw std::invalid_argument("gemm: m > 8388480 rows is not supported");
  const int64_t es = d.precision == GemmPrecision::kBF16 ? 2 : 4;
  GemmParams p;
  p.a = d.a;
  p.b = d.b;
  p.bias = d.bias;
  p.c = d.c;
  p.m = d.m;
  p.n = d.n;
  p.k = d.k;
  p.lda = d.lda;
  p.ldb = d.ldb;
  p.ldc = d.ldc;
  p.accumulate = d.accumulate;
  p.c_float = d.c_float;
  p.vec_a = aligned16(d.a) && (d.lda * es) % 16 == 0;
  p.vec_b = aligned16(d.b) && (d.ldb * es) % 16 == 0;
  const dim3 grid((unsigned)grid_x, (unsigned)grid_y);
  if (!d.trans_a && !d.trans_b)
    launch_gemm<false, false>(d.precision, p, grid);
  else if (!d.trans_a && d.trans_b)
    launch_gemm<false, true>(d.precision, p, grid);
  else if (d.trans_a && !d.trans_b)
    launch_gemm<true, false>(d.precision, p, grid);
  else
    launch_gemm<true, true>(d.precision, p, grid);
}

void matmul(const GemmArgs& g) {
  GemmArgs d = g;
  d.b_packed = nullptr;
  d.precision = GemmPrecision::kExact;
  d.dtype = DType::kFloat32;
  d.c_float = false;
  gemm(d);
}

void bias_backward(const float* dout, float* dbias, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  const int64_t rpb = rows / 4096 + 256;  // <= 4096 row blocks
  const int64_t nb = cdiv(rows, rpb);
  Scratch partial(sizeof(float) * nb * cols);
  column_partials_kernel<<<dim3((unsigned)cdiv(cols, 32), (unsigned)nb),
                           dim3(32, kColRowThreads), 0, launch_stream()>>>(dout, partial.as<float>(), rows, cols, rpb);
  FASTLM_CHECK_LAUNCH("column_partials_kernel");
  column_finish_kernel<<<(unsigned)cdiv(cols, 256), 256, 0, launch_stream()>>>(partial.as<float>(), dbias, nb, cols);
  FASTLM_CHECK_LAUNCH("column_finish_kernel");
}

}  // namespace cuda
}  // namespace fastlm
