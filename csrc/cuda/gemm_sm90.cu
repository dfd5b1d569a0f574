// bfloat16 GEMM for Hopper (sm_90a): wgmma fed by the bulk tensor copy engine.
//
// c (m, n) = a (m, k) @ b (n, k)^T [+ bias] [+ c], both operands K-major (the
// Linear layer's x @ W^T), bfloat16 in, float32 accumulators, c and bias
// bfloat16 or (c_float) float32: one kernel, the epilogue picks the type.
//
// One thread block computes a 128 x 128 tile of c with three warpgroups:
//   warpgroup 0, the producer: one thread issues TMA loads of 128 x 64 tiles
//     of a and b into a ring of kStages shared-memory stages, each stage's
//     arrival counted by a "full" mbarrier (expect_tx bytes);
//   warpgroups 1 and 2, the consumers: each waits for a stage, runs four
//     wgmma.m64n128k16 on its 64 rows of the tile (operands read straight
//     from shared memory through matrix descriptors) and releases the stage on
//     its "empty" mbarrier, which the producer waits on before refilling it.
// TMA writes the tiles with the 128-byte swizzle and the descriptors name the
// same swizzle, so the tensor cores read them without bank conflicts. Edges
// need no special code: TMA fills out-of-range elements with zeros, and the
// epilogue writes only the elements inside c.
//
// Only the sm_90a build has a body; the host side uses it only on a device
// of compute capability 9.0 and returns false otherwise, so that matmul.cu's
// kernel runs. It is the default there (it passed the tests and memcheck on an
// H200); FASTLM_CUDA_GEMM=mma forces matmul.cu's kernel, for comparison.
#include <cuda.h>
#include <cudaTypedefs.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>

#include "cuda/common.cuh"

namespace fastlm {
namespace cuda {

namespace {

constexpr int kBM = 128, kBN = 128, kBK = 64, kStages = 4, kThreads = 384;
constexpr int kTileBytesA = kBM * kBK * 2, kTileBytesB = kBN * kBK * 2;
constexpr int kSmemBytes = kStages * (kTileBytesA + kTileBytesB) + 2 * kStages * 8 + 1024;

struct Sm90Params {
  void* c;           // bfloat16, or float32 with c_float
  const void* bias;  // of c's type
  int64_t m, n, k, ldc;
  bool accumulate, c_float;
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

// d (64 x 128 per warpgroup, 64 floats per thread) += a-tile @ b-tile^T, k = 16.
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"  // scale-d = true: d += a b
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
        "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),
        "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]),
        "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]),
        "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),
        "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]),
        "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b));
}

// c[r0 + 64 rows, n0 + 128 columns] = d (+ bias) (+ c), of type T, inside c.
// Accumulator layout of wgmma m64nNk16 (per warp 16 rows, as mma.m16n8's C
// fragment repeated over N / 8 column groups): d[4j + 2h + e] is row
// 16 w + lane / 4 + 8 h, column 8 j + 2 (lane % 4) + e.
template <typename T>
__device__ __forceinline__ void store_tile(const float (&d)[64], const Sm90Params& p, int64_t r0,
                                           int64_t n0, int tid) {
  const int warp = tid / 32, lane = tid % 32;
  const int64_t row0 = r0 + warp * 16 + lane / 4;
  T* c = static_cast<T*>(p.c);
  const T* bias = static_cast<const T*>(p.bias);
#pragma unroll
  for (int j = 0; j < kBN / 8; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int64_t r = row0 + 8 * h, col = n0 + 8 * j + 2 * (lane % 4) + e;
        if (r >= p.m || col >= p.n) continue;
        float v = d[4 * j + 2 * h + e];
        if (bias) v += to_f32(bias[col]);
        T* out = c + r * p.ldc + col;
        if (p.accumulate) v += to_f32(*out);
        *out = from_f32<T>(v);
      }
}
#endif

__global__ void __launch_bounds__(kThreads, 1)
    gemm_sm90_kernel(const __grid_constant__ CUtensorMap map_a,
                     const __grid_constant__ CUtensorMap map_b, Sm90Params p) {
#ifdef FASTLM_SM90A_DEVICE
  extern __shared__ uint8_t smem_raw[];
  // The 128-byte swizzle repeats every 1024 bytes: stages start on that grid.
  uint8_t* smem = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint8_t* tiles_a = smem;
  uint8_t* tiles_b = smem + kStages * kTileBytesA;
  uint64_t* full = reinterpret_cast<uint64_t*>(tiles_b + kStages * kTileBytesB);
  uint64_t* empty = full + kStages;

  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  const int nk = (int)((p.k + kBK - 1) / kBK);
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 2 * 128);  // every consumer thread releases the stage
    }
    // Make the initialised barriers visible to the copy engine.
    asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;" ::
                     : "memory");
  }
  __syncthreads();

  if (wg == 0) {
    if (tid == 0) {
      for (int kt = 0; kt < nk; ++kt) {
        const int s = kt % kStages;
        if (kt >= kStages) mbar_wait(&empty[s], ((kt / kStages) + 1) & 1);
        mbar_expect_tx(&full[s], kTileBytesA + kTileBytesB);
        tma_load(tiles_a + s * kTileBytesA, &map_a, kt * kBK, m0, &full[s]);
        tma_load(tiles_b + s * kTileBytesB, &map_b, kt * kBK, n0, &full[s]);
      }
    }
    return;
  }

  const int half = wg - 1;  // which 64 rows of the tile this warpgroup owns
  float d[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) d[i] = 0.f;
  for (int kt = 0; kt < nk; ++kt) {
    const int s = kt % kStages;
    mbar_wait(&full[s], (kt / kStages) & 1);
    const uint8_t* a = tiles_a + s * kTileBytesA + half * 64 * kBK * 2;
    const uint8_t* b = tiles_b + s * kTileBytesB;
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk)  // 16 bfloat16 = 32 bytes along k per step
      wgmma_m64n128k16(d, smem_desc(a + kk * 32), smem_desc(b + kk * 32));
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    mbar_arrive(&empty[s]);
  }

  if (p.c_float)
    store_tile<float>(d, p, m0 + half * 64, n0, tid);
  else
    store_tile<bf16>(d, p, m0 + half * 64, n0, tid);
#else
  __trap();  // never launched: the host checks that this build has sm_90a code
#endif
}

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      f = nullptr;
    (void)cudaGetLastError();
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// A (rows, cols) row-major bfloat16 matrix with row stride ld, read in
// kBK-wide boxes of box_rows rows with the 128-byte swizzle.
bool make_map(CUtensorMap* map, const void* base, int64_t rows, int64_t cols, int64_t ld,
              int box_rows) {
  const cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows};
  const cuuint64_t strides[1] = {(cuuint64_t)ld * 2};
  const cuuint32_t box[2] = {kBK, (cuuint32_t)box_rows};
  const cuuint32_t elem_strides[2] = {1, 1};
  return encode_fn()(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims,
                     strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                     CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                     CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// FASTLM_CUDA_GEMM, read once per process: unset or "wgmma" (this kernel
// where it applies), or "mma" (matmul.cu's kernel always).
bool wanted() {
  static const bool want = [] {
    const char* v = std::getenv("FASTLM_CUDA_GEMM");
    if (!v || !*v || std::strcmp(v, "wgmma") == 0) return true;
    if (std::strcmp(v, "mma") == 0) return false;
    throw std::invalid_argument(std::string("FASTLM_CUDA_GEMM must be 'wgmma' or 'mma', got '") +
                                v + "'");
  }();
  return want;
}

// This build has sm_90a code, the device is compute capability 9.0, and
// FASTLM_CUDA_GEMM does not turn the kernel off.
bool usable() {
#if defined(FASTLM_CUDA_SM90A) && FASTLM_CUDA_SM90A
  if (!wanted()) return false;
  static const bool ok = [] {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    return major == 9 && minor == 0 && encode_fn() != nullptr;
  }();
  return ok;
#else
  return false;
#endif
}

}  // namespace

bool gemm_sm90(const GemmDesc& d) {
  if (d.precision != GemmPrecision::kBF16 || d.trans_a || !d.trans_b || d.k < 1) return false;
  // TMA: 16-byte aligned bases and row strides; coordinates are int32.
  if (!aligned16(d.a) || !aligned16(d.b) || (d.lda * 2) % 16 || (d.ldb * 2) % 16) return false;
  if (d.m > INT32_MAX || d.n > INT32_MAX || d.k > INT32_MAX || cdiv(d.m, kBM) > 65535)
    return false;
  if (!usable()) return false;
  CUtensorMap map_a, map_b;
  if (!make_map(&map_a, d.a, d.m, d.k, d.lda, kBM) || !make_map(&map_b, d.b, d.n, d.k, d.ldb, kBN))
    return false;
  static std::once_flag once;
  std::call_once(once, [] { allow_shared_bytes(gemm_sm90_kernel, kSmemBytes); });
  Sm90Params p;
  p.c = d.c;
  p.bias = d.bias;
  p.m = d.m;
  p.n = d.n;
  p.k = d.k;
  p.ldc = d.ldc;
  p.accumulate = d.accumulate;
  p.c_float = d.c_float;
  const dim3 grid((unsigned)cdiv(d.n, kBN), (unsigned)cdiv(d.m, kBM));
  gemm_sm90_kernel<<<grid, kThreads, kSmemBytes>>>(map_a, map_b, p);
  FASTLM_CHECK_LAUNCH("gemm_sm90_kernel");
  return true;
}

}  // namespace cuda
}  // namespace fastlm
