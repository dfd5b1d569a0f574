// The next Hopper GEMM (opt-in: FASTLM_CUDA_GEMM=wgmma-next): bfloat16 in
// every layout a training step needs, and TF32 (float32 operands) for
// a @ b^T, the one layout TF32 wgmma reads (it has no transpose bits):
//   c (m, n) = op(a) @ op(b) [+ bias] [+ c], op(a) (m, k), op(b) (k, n),
// where an operand whose rows run along k (a (m, k), b^T as W (n, k)) is
// K-major and one whose rows run along m or n (a^T given as (k, m), b given as
// (k, n)) is MN-major: wgmma reads the latter with its transpose bit, from
// 64-wide TMA boxes (see smem_desc_mn in gemm_sm90.cuh).
//
// It keeps gemm_sm90.cu's block (a producer warpgroup, two consumer
// warpgroups of 64 rows each over a 128 x 128 tile, a ring of TMA stages
// with full/empty mbarriers) and changes what that kernel leaves on the table:
//   - one wgmma group stays in flight: a consumer issues stage kt's wgmmas,
//     then waits until only those are pending (wait_group 1) and releases
//     stage kt - 1, instead of draining the tensor cores every k-block;
//   - a persistent grid (one block per SM) walks the tiles, so the producer
//     loads the next tile's first stages while the consumers store this one,
//     and no block pays for starting up more than once;
//   - tiles go in groups of kGroupM tile rows, column by column within a
//     group, so the blocks running at once share their a rows and b columns in L2;
//   - the epilogue stores column pairs (store_tile<T, true>) where c allows it.
// A stage holds 128 bytes of k per row either way (64 bfloat16 or 32 float32
// elements), so tiles, swizzle and descriptors are the same for both types.
#include <mutex>
#include <type_traits>

#include "cuda/gemm_sm90.cuh"

namespace fastlm {
namespace cuda {

namespace {

using namespace sm90;

constexpr int kThreads = 384;

// A block's shared memory with tiles kBM x kN: 192 KB of stages (6 of 32 KB for
// kN = 128, 4 of 48 KB for 256), the barriers, 1 KB to align.
template <int kN>
struct Ring {
  static constexpr int kTileBytesB = kN * kBK * 2;
  static constexpr int kStages = 192 * 1024 / (kTileBytesA + kTileBytesB);
  static constexpr int kSmemBytes = kStages * (kTileBytesA + kTileBytesB) + 2 * kStages * 8 + 1024;
};

// The origin of tile t (kBM x kN): groups of kGroupM tile rows, within a group
// column after column (the last group may have fewer rows).
template <int kN>
__device__ __forceinline__ void tile_origin(int t, int tiles_m, int tiles_n, int* m0, int* n0) {
  constexpr int kGroupM = 8;
  const int per_group = kGroupM * tiles_n;
  const int first = t / per_group * kGroupM;
  const int rows = min(tiles_m - first, kGroupM);
  const int r = t % per_group;
  *m0 = (first + r % rows) * kBM;
  *n0 = r / rows * kN;
}

#ifdef FASTLM_SM90A_DEVICE
// One operand's 128-byte-deep slice of a tile (kRows rows of M or N) into a
// stage: a K-major operand is one kRows-row box; an MN-major one kRows / 64
// boxes 64 wide (the swizzle spans 128 bytes), kMnBoxBytes apart.
template <bool kMn, int kRows>
__device__ __forceinline__ void load_slice(uint8_t* dst, const CUtensorMap* map, int k0, int mn0,
                                           uint64_t* bar) {
  if constexpr (kMn) {
#pragma unroll
    for (int j = 0; j < kRows / 64; ++j)
      tma_load(dst + j * kMnBoxBytes, map, mn0 + 64 * j, k0, bar);
  } else {
    tma_load(dst, map, k0, mn0, bar);
  }
}

// Descriptor of the slice's k step kk (32 bytes of k): 32 bytes along a
// K-major row, or 16 of the 128-byte k-rows of an MN-major (bfloat16) box.
template <bool kMn>
__device__ __forceinline__ uint64_t slice_desc(const uint8_t* tile, int kk) {
  return kMn ? smem_desc_mn(tile + kk * 16 * 128) : smem_desc(tile + kk * 32);
}
#endif

// T: bf16, or float for TF32 (then kMnA = kMnB = false); kN: the tile's
// columns, 128 or 256 (each consumer then runs two m64n128 accumulators).
template <typename T, bool kMnA, bool kMnB, int kN>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_sm90_next_kernel(const __grid_constant__ CUtensorMap map_a,
                          const __grid_constant__ CUtensorMap map_b, Sm90Params p, int tiles_m,
                          int tiles_n) {
#ifdef FASTLM_SM90A_DEVICE
  constexpr int kStages = Ring<kN>::kStages, kTileBytesB = Ring<kN>::kTileBytesB;
  constexpr int kHalves = kN / 128;  // m64n128 accumulators per consumer
  extern __shared__ uint8_t smem_raw[];
  uint8_t *tiles_a, *tiles_b;
  uint64_t *full, *empty;
  setup_ring<kStages, kTileBytesA, kTileBytesB>(smem_raw, &tiles_a, &tiles_b, &full, &empty);
  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
  const int ntiles = tiles_m * tiles_n;
  constexpr int kSlice = 128 / sizeof(T);  // k elements per stage
  const int nk = (int)((p.k + kSlice - 1) / kSlice);

  // `it` counts k-blocks over all of this block's tiles: the ring's stage and
  // the barriers' phase run on across tiles.
  if (wg == 0) {
    if (tid == 0) {
      uint32_t it = 0;
      for (int t = blockIdx.x; t < ntiles; t += gridDim.x) {
        int m0, n0;
        tile_origin<kN>(t, tiles_m, tiles_n, &m0, &n0);
        for (int kt = 0; kt < nk; ++kt, ++it) {
          const int s = it % kStages;
          if (it >= kStages) mbar_wait(&empty[s], ((it / kStages) + 1) & 1);
          mbar_expect_tx(&full[s], kTileBytesA + kTileBytesB);
          load_slice<kMnA, kBM>(tiles_a + s * kTileBytesA, &map_a, kt * kSlice, m0, &full[s]);
          load_slice<kMnB, kN>(tiles_b + s * kTileBytesB, &map_b, kt * kSlice, n0, &full[s]);
        }
      }
    }
    return;
  }

  const int half = wg - 1;  // which 64 rows of the tile this warpgroup owns
  uint32_t it = 0;
  for (int t = blockIdx.x; t < ntiles; t += gridDim.x) {
    int m0, n0;
    tile_origin<kN>(t, tiles_m, tiles_n, &m0, &n0);
    float d[kHalves][64];
#pragma unroll
    for (int h = 0; h < kHalves; ++h)
#pragma unroll
      for (int i = 0; i < 64; ++i) d[h][i] = 0.f;
    for (int kt = 0; kt < nk; ++kt, ++it) {
      const int s = it % kStages;
      mbar_wait(&full[s], (it / kStages) & 1);
      // This warpgroup's 64 rows: the second half of a K-major A tile, or the
      // second box of an MN-major one; both start 8 KB in.
      const uint8_t* a = tiles_a + s * kTileBytesA + half * kMnBoxBytes;
      const uint8_t* b = tiles_b + s * kTileBytesB;
      asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)  // 32 bytes of k each: 16 bfloat16 or 8 TF32
#pragma unroll
        for (int h = 0; h < kHalves; ++h) {
          // Columns 128 h..: 128 rows of a K-major tile or two boxes of an
          // MN-major one further in, 16 KB either way.
          const uint8_t* bh = b + h * 128 * 128;
          if constexpr (std::is_same<T, float>::value)
            wgmma_m64n128k8_tf32(d[h], slice_desc<false>(a, kk), slice_desc<false>(bh, kk));
          else
            wgmma_m64n128k16<kMnA, kMnB>(d[h], slice_desc<kMnA>(a, kk), slice_desc<kMnB>(bh, kk));
        }
      asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
      // Stage kt's wgmmas stay in flight; kt - 1's are done, so its stage is free.
      asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
      if (kt > 0) mbar_arrive(&empty[(it + kStages - 1) % kStages]);
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    mbar_arrive(&empty[(it + kStages - 1) % kStages]);

    const int64_t r0 = (int64_t)m0 + half * 64;
#pragma unroll
    for (int h = 0; h < kHalves; ++h) {
      const int64_t c0 = (int64_t)n0 + 128 * h;
      if (p.c_float)
        p.pairs ? store_tile<float, true>(d[h], p, r0, c0, tid)
                : store_tile<float>(d[h], p, r0, c0, tid);
      else
        p.pairs ? store_tile<bf16, true>(d[h], p, r0, c0, tid)
                : store_tile<bf16>(d[h], p, r0, c0, tid);
    }
  }
#else
  __trap();  // never launched: the host checks that this build has sm_90a code
#endif
}

template <typename T, bool kMnA, bool kMnB, int kN>
void launch_tiles(const CUtensorMap& map_a, const CUtensorMap& map_b, const Sm90Params& p,
                  int tiles_m, int tiles_n, int blocks) {
  constexpr int kSmemBytes = Ring<kN>::kSmemBytes;
  static std::once_flag once;
  std::call_once(
      once, [] { allow_shared_bytes(gemm_sm90_next_kernel<T, kMnA, kMnB, kN>, kSmemBytes); });
  gemm_sm90_next_kernel<T, kMnA, kMnB, kN>
      <<<blocks, kThreads, kSmemBytes, launch_stream()>>>(map_a, map_b, p, tiles_m, tiles_n);
  FASTLM_CHECK_LAUNCH("gemm_sm90_next_kernel");
}

// Tiles of 128 x 256 read a and b 25% less per flop than 128 x 128 ones, but
// there are half as many: they are taken where they fill the SMs as evenly
// (the same fraction of the last round of tiles busy, to 1%).
template <typename T, bool kMnA, bool kMnB>
bool launch(const GemmArgs& d, const Sm90Params& p) {
  static const int sms = multiprocessor_count();
  auto busy = [&](int64_t bn) {  // mean fraction of the SMs busy over the rounds of tiles
    const int64_t tiles = cdiv(d.m, kBM) * cdiv(d.n, bn);
    return double(tiles) / double(cdiv(tiles, sms) * sms);
  };
  const bool wide = d.n > 128 && busy(256) >= busy(128) - 0.01;
  const int bn = wide ? 256 : 128;
  const int64_t tiles_m = cdiv(d.m, kBM), tiles_n = cdiv(d.n, bn);
  if (tiles_m * tiles_n > INT32_MAX) return false;
  const int es = std::is_same<T, float>::value ? 4 : 2;
  CUtensorMap map_a, map_b;
  const bool mapped = (kMnA ? make_map(&map_a, d.a, d.k, d.m, d.lda, kBK)
                            : make_map(&map_a, d.a, d.m, d.k, d.lda, kBM, es)) &&
                      (kMnB ? make_map(&map_b, d.b, d.k, d.n, d.ldb, kBK)
                            : make_map(&map_b, d.b, d.n, d.k, d.ldb, bn, es));
  if (!mapped) return false;
  const int ntiles = (int)(tiles_m * tiles_n), blocks = ntiles < sms ? ntiles : sms;
  if (wide)
    launch_tiles<T, kMnA, kMnB, 256>(map_a, map_b, p, (int)tiles_m, (int)tiles_n, blocks);
  else
    launch_tiles<T, kMnA, kMnB, 128>(map_a, map_b, p, (int)tiles_m, (int)tiles_n, blocks);
  return true;
}

}  // namespace

namespace sm90 {

bool gemm_sm90_next(const GemmArgs& d) {
  // a^T arrives as a (k, m) matrix, b (not b^T) as (k, n): those are MN-major.
  const bool mn_a = d.trans_a, mn_b = !d.trans_b;
  const bool tf32 = d.precision == GemmPrecision::kTF32;
  if (tf32 && (mn_a || mn_b)) return false;
  const Sm90Params p = params_of(d);
  if (tf32) return launch<float, false, false>(d, p);
  if (mn_a && mn_b) return launch<bf16, true, true>(d, p);
  if (mn_a) return launch<bf16, true, false>(d, p);
  if (mn_b) return launch<bf16, false, true>(d, p);
  return launch<bf16, false, false>(d, p);
}

}  // namespace sm90

}  // namespace cuda
}  // namespace fastlm
