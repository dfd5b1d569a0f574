// The pieces of the Hopper bfloat16 GEMMs (gemm_sm90.cu, gemm_sm90_next.cu):
// mbarrier and TMA wrappers, wgmma and its shared-memory descriptors, the
// epilogue, and the host's tensor maps. Device code only in sm_90a builds
// (FASTLM_SM90A_DEVICE).
#pragma once
#include <cuda.h>
#include <cudaTypedefs.h>

#include "cuda/common.cuh"

namespace fastlm {
namespace cuda {
namespace sm90 {

// Tiles of c are kBM x kBN; k advances kBK (128 bytes of bfloat16) per stage.
constexpr int kBM = 128, kBN = 128, kBK = 64;
constexpr int kTileBytesA = kBM * kBK * 2, kTileBytesB = kBN * kBK * 2;
// An MN-major operand arrives as boxes of 64 M (or N) x kBK k-rows: TMA's
// 128-byte swizzle spans at most 128 bytes of the inner dimension.
constexpr int kMnBoxBytes = 64 * kBK * 2;

struct Sm90Params {
  void* c;           // bfloat16, or float32 with c_float
  const void* bias;  // of c's type
  int64_t m, n, k, ldc;
  bool accumulate, c_float;
  bool pairs = false;  // c and ldc keep (even, even + 1) column pairs aligned: store_tile<T, true>
};

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FASTLM_SM90A_DEVICE 1

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count));
}

__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)),
               "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}

// Spins until the barrier's phase with parity `phase` has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t phase) {
  uint32_t done = 0;
  while (!done)
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(phase)
        : "memory");
}

// A 2-D tile of `map` at (inner, outer) into shared memory, counted on `bar`.
__device__ __forceinline__ void tma_load(void* dst, const CUtensorMap* map, int inner, int outer,
                                         uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
      "[%0], [%1, {%2, %3}], [%4];" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(inner), "r"(outer), "r"(smem_addr(bar))
      : "memory");
}

// Descriptor of a K-major operand tile in shared memory written by TMA with
// the 128-byte swizzle: rows of 64 bfloat16 (128 bytes), 8-row groups 1024
// bytes apart (stride byte offset); the leading byte offset is unused there.
__device__ __forceinline__ uint64_t smem_desc(const void* p) {
  const uint64_t addr = smem_addr(p);
  return ((addr & 0x3FFFF) >> 4) | (uint64_t(16 >> 4) << 16) | (uint64_t(1024 >> 4) << 32) |
         (uint64_t(1) << 62);
}

// Descriptor of an MN-major operand tile (the transposed wgmma operand)
// written by TMA as kMnBoxBytes boxes of kBK k-rows of 64 M (or N) elements,
// 128-byte swizzled: the 8-row groups along k are 1024 bytes apart (stride
// byte offset), the 64-element chunks along M (N) a box apart (leading byte
// offset), as CUTLASS's canonical MN-major SW128 layout ((8,n),(8,k)):((1,LBO),(8,SBO))
// in 16-byte units.
__device__ __forceinline__ uint64_t smem_desc_mn(const void* p) {
  const uint64_t addr = smem_addr(p);
  return ((addr & 0x3FFFF) >> 4) | (uint64_t(kMnBoxBytes >> 4) << 16) |
         (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}

// The 64 accumulators of an m64n128 wgmma, as asm operands %0..%63.
#define FASTLM_WGMMA_D_REGS                                                               \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "               \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "      \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "      \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
#define FASTLM_WGMMA_D_OPERANDS(d)                                                        \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),     \
      "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),          \
      "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),       \
      "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),       \
      "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]),       \
      "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),       \
      "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),       \
      "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),       \
      "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),       \
      "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]),       \
      "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// d (64 x 128 per warpgroup, 64 floats per thread) += a-tile @ b-tile^T, k = 16;
// kTransA / kTransB: the operand's tile is MN-major (see smem_desc_mn).
template <int kTransA = 0, int kTransB = 0>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"  // scale-d = true: d += a b
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " FASTLM_WGMMA_D_REGS
      "%64, %65, p, 1, 1, %66, %67;\n}\n"
      : FASTLM_WGMMA_D_OPERANDS(d)
      : "l"(desc_a), "l"(desc_b), "n"(kTransA), "n"(kTransB));
}

// The same for float32 operands read as TF32 (the low 13 mantissa bits
// ignored), k = 8; TF32 has no transpose: both tiles K-major.
__device__ __forceinline__ void wgmma_m64n128k8_tf32(float (&d)[64], uint64_t desc_a,
                                                     uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 " FASTLM_WGMMA_D_REGS
      "%64, %65, p, 1, 1;\n}\n"
      : FASTLM_WGMMA_D_OPERANDS(d)
      : "l"(desc_a), "l"(desc_b));
}

// Carves the dynamic shared memory into kStages stages of a tiles, then of b
// tiles (from a 1024-byte boundary: the 128-byte swizzle repeats every 1024
// bytes), then the barriers, and initialises those: full[s] completes when the
// copies into stage s have landed (one arrival, the producer's expect_tx),
// empty[s] when all 256 consumer threads have released it. Every thread calls it.
template <int kStages, int kBytesA, int kBytesB>
__device__ __forceinline__ void setup_ring(uint8_t* smem_raw, uint8_t** tiles_a,
                                           uint8_t** tiles_b, uint64_t** full,
                                           uint64_t** empty) {
  uint8_t* smem = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  *tiles_a = smem;
  *tiles_b = smem + kStages * kBytesA;
  *full = reinterpret_cast<uint64_t*>(*tiles_b + kStages * kBytesB);
  *empty = *full + kStages;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(*full + s, 1);
      mbar_init(*empty + s, 2 * 128);
    }
    // Make the initialised barriers visible to the copy engine.
    asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;" ::
                     : "memory");
  }
  __syncthreads();
}

template <typename T>
struct PairOf;
template <>
struct PairOf<float> {
  using type = float2;
};
template <>
struct PairOf<bf16> {
  using type = __nv_bfloat162;
};

// c[r0 + 64 rows, n0 + 128 columns] = d (+ bias) (+ c), of type T, inside c.
// Accumulator layout of wgmma m64nNk16 (per warp 16 rows, as mma.m16n8's C
// fragment repeated over N / 8 column groups): d[4j + 2h + e] is row
// 16 w + lane / 4 + 8 h, column 8 j + 2 (lane % 4) + e. kPairs: both columns
// of a thread's pair in one store (and one load to accumulate) where both are
// inside c, half the memory instructions; the host checks that c and ldc keep
// every pair aligned (Sm90Params::pairs).
template <typename T, bool kPairs = false>
__device__ __forceinline__ void store_tile(const float (&d)[64], const Sm90Params& p, int64_t r0,
                                           int64_t n0, int tid) {
  const int warp = tid / 32, lane = tid % 32;
  const int64_t row0 = r0 + warp * 16 + lane / 4;
  T* c = static_cast<T*>(p.c);
  const T* bias = static_cast<const T*>(p.bias);
#pragma unroll
  for (int j = 0; j < kBN / 8; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = row0 + 8 * h, col = n0 + 8 * j + 2 * (lane % 4);  // col is even
      if constexpr (kPairs) {
        if (r < p.m && col + 1 < p.n) {
          float v0 = d[4 * j + 2 * h], v1 = d[4 * j + 2 * h + 1];
          if (bias) v0 += to_f32(bias[col]), v1 += to_f32(bias[col + 1]);
          using P = typename PairOf<T>::type;
          P* o = reinterpret_cast<P*>(c + r * p.ldc + col);
          if (p.accumulate) {
            const P old = *o;
            v0 += to_f32(old.x), v1 += to_f32(old.y);
          }
          P w;
          w.x = from_f32<T>(v0);
          w.y = from_f32<T>(v1);
          *o = w;
          continue;
        }
      }
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        if (r >= p.m || col + e >= p.n) continue;
        float v = d[4 * j + 2 * h + e];
        if (bias) v += to_f32(bias[col + e]);
        T* out = c + r * p.ldc + col + e;
        if (p.accumulate) v += to_f32(*out);
        *out = from_f32<T>(v);
      }
    }
}
#endif

// cuTensorMapEncodeTiled from the driver (null where it has none).
PFN_cuTensorMapEncodeTiled_v12000 encode_fn();

// A (rows, cols) row-major bfloat16 matrix with row stride ld, read in
// kBK-wide boxes of box_rows rows with the 128-byte swizzle.
// elem_bytes 4: float32 elements, 128 bytes (32 of them) per box row.
bool make_map(CUtensorMap* map, const void* base, int64_t rows, int64_t cols, int64_t ld,
              int box_rows, int elem_bytes = 2);

// The epilogue's view of d. TF32's c is float32 as well (c_float).
inline Sm90Params params_of(const GemmArgs& d) {
  Sm90Params p;
  p.c = d.c;
  p.bias = d.bias;
  p.m = d.m;
  p.n = d.n;
  p.k = d.k;
  p.ldc = d.ldc;
  p.accumulate = d.accumulate;
  p.c_float = d.c_float || d.precision == GemmPrecision::kTF32;
  const uintptr_t pair_bytes = p.c_float ? 8 : 4;
  p.pairs = d.ldc % 2 == 0 && reinterpret_cast<uintptr_t>(d.c) % pair_bytes == 0;
  return p;
}

// Whether TMA can read the operands: 16-byte aligned bases and row strides,
// sizes whose tile coordinates fit in int32.
inline bool tma_operands_ok(const GemmArgs& d) {
  const int64_t es = d.precision == GemmPrecision::kBF16 ? 2 : 4;
  return aligned16(d.a) && aligned16(d.b) && (d.lda * es) % 16 == 0 && (d.ldb * es) % 16 == 0 &&
         d.m <= INT32_MAX - kBM && d.n <= INT32_MAX - kBN && d.k <= INT32_MAX - kBK;
}

// gemm_sm90_next.cu: the opt-in kernel (FASTLM_CUDA_GEMM=wgmma-next): bfloat16
// in every layout, TF32 for a @ b^T; false when it does not take the call. The
// caller has checked k >= 1, the device and tma_operands_ok.
bool gemm_sm90_next(const GemmArgs& d);

}  // namespace sm90
}  // namespace cuda
}  // namespace fastlm
