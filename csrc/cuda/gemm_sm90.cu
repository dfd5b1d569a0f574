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
// kernel runs. It is opt-in (FASTLM_CUDA_GEMM=wgmma): its first version passed
// the tests and memcheck on an H200 at 0.49-0.96 of cuBLAS, but the shared
// epilogue (c_float) and gemm_sm90.cuh came after that run, and no unchecked
// kernel is a default.
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>

#include "cuda/gemm_sm90.cuh"

namespace fastlm {
namespace cuda {

namespace {

using namespace sm90;

constexpr int kStages = 4, kThreads = 384;
constexpr int kSmemBytes = kStages * (kTileBytesA + kTileBytesB) + 2 * kStages * 8 + 1024;

__global__ void __launch_bounds__(kThreads, 1)
    gemm_sm90_kernel(const __grid_constant__ CUtensorMap map_a,
                     const __grid_constant__ CUtensorMap map_b, Sm90Params p) {
#ifdef FASTLM_SM90A_DEVICE
  extern __shared__ uint8_t smem_raw[];
  uint8_t *tiles_a, *tiles_b;
  uint64_t *full, *empty;
  setup_ring<kStages, kTileBytesA, kTileBytesB>(smem_raw, &tiles_a, &tiles_b, &full, &empty);
  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  const int nk = (int)((p.k + kBK - 1) / kBK);

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

enum class GemmPath { kWgmma, kWgmmaNext, kMma };

// FASTLM_CUDA_GEMM, read once per process: unset or "mma" (matmul.cu's
// kernel always), "wgmma" (this kernel where it applies) or "wgmma-next"
// (gemm_sm90_next.cu's kernel first: not yet run on a GPU).
GemmPath gemm_path() {
  static const GemmPath path = [] {
    const char* v = std::getenv("FASTLM_CUDA_GEMM");
    if (!v || !*v || std::strcmp(v, "mma") == 0) return GemmPath::kMma;
    if (std::strcmp(v, "wgmma") == 0) return GemmPath::kWgmma;
    if (std::strcmp(v, "wgmma-next") == 0) return GemmPath::kWgmmaNext;
    throw std::invalid_argument(
        std::string("FASTLM_CUDA_GEMM must be 'wgmma', 'wgmma-next' or 'mma', got '") + v + "'");
  }();
  return path;
}

// This build has sm_90a code and the device is compute capability 9.0.
bool usable() {
#if defined(FASTLM_CUDA_SM90A) && FASTLM_CUDA_SM90A
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

namespace sm90 {

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

bool make_map(CUtensorMap* map, const void* base, int64_t rows, int64_t cols, int64_t ld,
              int box_rows, int elem_bytes) {
  const cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows};
  const cuuint64_t strides[1] = {(cuuint64_t)(ld * elem_bytes)};
  const cuuint32_t box[2] = {(cuuint32_t)(kBK * 2 / elem_bytes), (cuuint32_t)box_rows};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUtensorMapDataType type =
      elem_bytes == 4 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  return encode_fn()(map, type, 2, const_cast<void*>(base), dims,
                     strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                     CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                     CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace sm90

bool gemm_sm90(const GemmArgs& d) {
  if (d.precision == GemmPrecision::kExact || d.k < 1 || !tma_operands_ok(d)) return false;
  const GemmPath path = gemm_path();
  if (path == GemmPath::kMma || !usable()) return false;
  if (path == GemmPath::kWgmmaNext && gemm_sm90_next(d)) return true;
  if (d.precision != GemmPrecision::kBF16 || d.trans_a || !d.trans_b || cdiv(d.m, kBM) > 65535)
    return false;
  CUtensorMap map_a, map_b;
  if (!make_map(&map_a, d.a, d.m, d.k, d.lda, kBM) || !make_map(&map_b, d.b, d.n, d.k, d.ldb, kBN))
    return false;
  static std::once_flag once;
  std::call_once(once, [] { allow_shared_bytes(gemm_sm90_kernel, kSmemBytes); });
  const Sm90Params p = params_of(d);
  const dim3 grid((unsigned)cdiv(d.n, kBN), (unsigned)cdiv(d.m, kBM));
  gemm_sm90_kernel<<<grid, kThreads, kSmemBytes, launch_stream()>>>(map_a, map_b, p);
  FASTLM_CHECK_LAUNCH("gemm_sm90_kernel");
  return true;
}

}  // namespace cuda
}  // namespace fastlm
