// The bfloat16 GEMM on AMX tiles (cpu/amx.h), built into the avx512bf16
// table only and run only where amx_enabled().
//
// Eight tiles of 16 rows x 64 bytes: C as a 32 x 32 block of four float32
// tiles (tmm0-3), two A tiles (16 rows x 32 k, tmm4-5) and two B tiles (16
// pairs of k x 16 columns, tmm6-7). op(A) and op(B) are packed, converted to
// bfloat16 (nearest even) on the way, into 1 KB tiles laid end to end (a
// tile load reads 1 KB contiguous), zero padded to whole tiles:
//
//   B: all of op(B), by all threads together; group g of 16 columns, k
//      step s: tile (g / 2 * ks + s) * 2 + g % 2,
//      word (q, j) = (B[32s + 2q][j], B[32s + 2q + 1][j])
//   A: per thread, a block of up to kMb rows; panel p of 16 rows, k step s:
//      tile (p / 2 * ks + s) * 2 + p % 2, word (i, q) = (A[i][32s + 2q], A[i][32s + 2q + 1])
//
// so each k step of a 32 x 32 block reads 2 KB of A and 2 KB of B, each contiguous.
//
//   for each (A block, slice of N) work unit     A block (<= kMb x K) in L2
//     for each 32-column B panel of the slice    B panel (K x 32) in L2
//       for each 32-row block: the C block over all of K, kept in the tiles
#include <immintrin.h>
#include <omp.h>

#include "cpu/amx.h"
#include "cpu/cpu_kernels.h"
#include "cpu/matmul_bf16.h"
#include "cpu/memory.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

namespace {

constexpr int kT = 16;                // tile rows and float32 columns
constexpr int kKStep = 2 * kT;        // k values per tile (16 words of pairs)
constexpr int kTileWords = kT * kT;   // 1 KB
constexpr int kBlk = 2 * kT;          // the C block, 2 x 2 tiles
// Rows of a packed A block, at most: each B panel that comes in from L3
// serves kMb / 32 blocks of C. More rows pay for that transfer better
// until the block (kMb x K, 1 MB at K = 2048) outgrows L2; measured on
// 2048^3 (one thread): 128 rows 0.84-0.91 TFLOP/s, 256 rows 0.92-1.1, 512 0.62-0.71.
constexpr int64_t kMb = 8 * kBlk;
static_assert(kW == kT, "a tile row is one 512-bit vector");

// Palette 1: eight tiles of 16 rows x 64 bytes. Per thread, before any tile
// instruction.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

void configure_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = kT;
  }
  _tile_loadconfig(&cfg);
}

// Rows [i0, i0 + 16) x k [p0, p0 + 32) of op(A) as one tile; rows from m and
// k from g.k on are zero.
void pack_a_tile(const GemmArgs& g, int64_t i0, int64_t p0, uint32_t* dst) {
  const int64_t mr = imax(0, imin(kT, g.m - i0)), nk = imin(kKStep, g.k - p0);
  if (!g.trans_a) {  // rows contiguous along k: converted in order
    const __mmask16 m0 = tail_mask(imin(nk, kW)), m1 = tail_mask(imax(0, nk - kW));
    for (int i = 0; i < kT; ++i) {
      __m512i w = _mm512_setzero_si512();
      if (i < mr) {
        const float* s = g.a + (i0 + i) * g.lda + p0;
        w = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, s + kW), _mm512_maskz_loadu_ps(m0, s));
      }
      _mm512_store_si512(dst + i * kT, w);
    }
    return;
  }
  // Stored (k, m): pairs of k rows make words along m, transposed in registers.
  const __mmask16 m = tail_mask(mr);
  V r[kW];
  for (int q = 0; q < kT; ++q) {
    const float* lo = g.a + (p0 + 2 * q) * g.lda + i0;
    const __m512 x0 = 2 * q < nk ? _mm512_maskz_loadu_ps(m, lo) : _mm512_setzero_ps();
    const __m512 x1 = 2 * q + 1 < nk ? _mm512_maskz_loadu_ps(m, lo + g.lda) : _mm512_setzero_ps();
    r[q].r = _mm512_castsi512_ps(pair_words(x0, x1));
  }
  vtranspose(r);
  for (int i = 0; i < kT; ++i) _mm512_store_ps(reinterpret_cast<float*>(dst + i * kT), r[i].r);
}

// Columns [j0, j0 + 16) x k [p0, p0 + 32) of op(B) as one tile, zero padded.
void pack_b_tile(const GemmArgs& g, int64_t j0, int64_t p0, uint32_t* dst) {
  const int64_t nc = imax(0, imin(kT, g.n - j0)), nk = imin(kKStep, g.k - p0);
  if (!g.trans_b) pair_rows(g.b + p0 * g.ldb + j0, g.ldb, nk, nc, dst, kT, kT);
  else transpose_pairs(g.b + j0 * g.ldb + p0, g.ldb, nc, nk, dst, kT, kT);
  for (int64_t q = (nk + 1) / 2; q < kT; ++q) _mm512_store_si512(dst + q * kT, _mm512_setzero_si512());
}

// Index of tile (panel or group t, k step s) in a packed operand.
FASTLM_INLINE int64_t tile_index(int64_t t, int64_t s, int64_t ks) { return (t / 2 * ks + s) * 2 + t % 2; }

// Tiles are packed in the order that reads op's source a line at a time:
// along k for a k-contiguous operand (tile t of `groups` x ks is group t / ks,
// step t % ks), across the groups for a k-major one (step t / groups, group
// t % groups), whose rows lie a page or more apart.
struct PackOrder {
  int64_t groups, ks;
  bool k_major;
  int64_t group(int64_t t) const { return k_major ? t % groups : t / ks; }
  int64_t step(int64_t t) const { return k_major ? t / groups : t % ks; }
};

void pack_b_at(const GemmArgs& g, const PackOrder& o, int64_t t, uint32_t* tiles) {
  const int64_t gr = o.group(t), s = o.step(t);
  pack_b_tile(g, gr * kT, s * kKStep, tiles + tile_index(gr, s, o.ks) * kTileWords);
}

// out (32 x 32, row stride 32) = the product of an A panel pair (rows 0-15,
// 16-31) and a B group pair (columns 0-15, 16-31) over ks tile steps.
FASTLM_INLINE void block_product(int64_t ks, const uint32_t* a, const uint32_t* b, float* out) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t s = 0; s < ks; ++s) {
    const uint32_t* as = a + 2 * s * kTileWords;
    const uint32_t* bs = b + 2 * s * kTileWords;
    _tile_loadd(4, as, 64);
    _tile_loadd(6, bs, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, bs + kTileWords, 64);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, as + kTileWords, 64);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  constexpr int kStride = kBlk * sizeof(float);
  _tile_stored(0, out, kStride);
  _tile_stored(1, out + kT, kStride);
  _tile_stored(2, out + kT * kBlk, kStride);
  _tile_stored(3, out + kT * kBlk + kT, kStride);
}

// C rows [i0, i0 + 32) x columns [j0, j0 + 32), clipped to m x n, = out [+ C] [+ bias].
void store_block(const GemmArgs& g, const float* out, int64_t i0, int64_t j0) {
  const int64_t mr = imin(kBlk, g.m - i0), nr = imin(kBlk, g.n - j0);
  for (int64_t i = 0; i < mr; ++i)
    for (int v = 0; v < kBlk / kW; ++v) {
      const int64_t cols = imin(kW, nr - v * kW);
      if (cols <= 0) break;
      float* p = g.c + (i0 + i) * g.ldc + j0 + v * kW;
      V r = vload(out + i * kBlk + v * kW);
      if (g.accumulate) r = r + vload_part(p, cols);
      if (g.bias) r = r + vload_part(g.bias + j0 + v * kW, cols);
      vstore_part(p, r, cols);
    }
}

}  // namespace

int64_t amx_packed_words(int64_t n, int64_t k) {
  return 2 * ceil_div(n, kBlk) * ceil_div(k, kKStep) * kTileWords;
}

void amx_pack_b(const GemmArgs& g, uint32_t* tiles) {
  const int64_t ks = ceil_div(g.k, kKStep), ntiles = 2 * ceil_div(g.n, kBlk) * ks;
  const PackOrder order{2 * ceil_div(g.n, kBlk), ks, !g.trans_b};
  parallel_for(ntiles, g.n * g.k > (1 << 16), [&](int64_t t) {
    pack_b_at(g, order, t, tiles);
  });
}

void matmul_amx(const GemmArgs& g, const uint32_t* b_tiles) {
  const int64_t ks = ceil_div(g.k, kKStep);
  const int64_t nblocks = ceil_div(g.n, kBlk), ngroups = 2 * nblocks;
  constexpr int64_t kMinParallelMacs = int64_t(1) << 20;
  const int nthreads = g.m * g.n * g.k < kMinParallelMacs ? 1 : num_threads();
  // A blocks of whole 32-row pairs, their pair counts differing by at most one
  // and, when M needs several, as many as a multiple of the threads (384 rows
  // on two threads: two blocks of 192, not 256 and 128).
  const int64_t pairs = ceil_div(g.m, kBlk);
  int64_t mchunks = ceil_div(g.m, kMb);
  if (mchunks > 1) mchunks = imin(pairs, ceil_div(mchunks, nthreads) * nthreads);
  const int64_t block_pairs = ceil_div(pairs, mchunks);
  auto block_row = [&](int64_t mc) { return imin(g.m, pairs * mc / mchunks * kBlk); };
  // Work units: A blocks, each with a slice of the B panels when there are
  // too few blocks to keep every thread busy.
  const int64_t nslices = imin(nblocks, imax(1, ceil_div(2 * nthreads, mchunks)));
  const int64_t per_slice = ceil_div(nblocks, nslices);

  ScratchFloats bpack_buf(b_tiles ? 0 : ngroups * ks * kTileWords, "matmul: b packed into AMX tiles");
  const uint32_t* bpack = b_tiles ? b_tiles : reinterpret_cast<const uint32_t*>(bpack_buf.data);
  const int64_t apack_floats = per_thread_floats(2 * block_pairs * ks * kTileWords);
  ScratchFloats apacks(apack_floats * nthreads, "matmul: blocks of a packed into AMX tiles");

  const PackOrder border{ngroups, ks, !g.trans_b};
  auto team_work = [&]() {
    configure_tiles();
    uint32_t* apack = reinterpret_cast<uint32_t*>(apacks.data + apack_floats * omp_get_thread_num());
    if (!b_tiles) {
      uint32_t* dst = reinterpret_cast<uint32_t*>(bpack_buf.data);
#pragma omp for schedule(static)
      for (int64_t t = 0; t < ngroups * ks; ++t)
        pack_b_at(g, border, t, dst);
    }

    alignas(64) float out[kBlk * kBlk];
    int64_t packed = -1;
#pragma omp for schedule(static)
    for (int64_t unit = 0; unit < mchunks * nslices; ++unit) {
      const int64_t mc = unit / nslices, slice = unit % nslices;
      const int64_t i0 = block_row(mc), rows = block_row(mc + 1) - i0, panels = 2 * ceil_div(rows, kBlk);
      if (rows <= 0) continue;
      if (packed != mc) {
        const PackOrder aorder{panels, ks, g.trans_a};
        for (int64_t t = 0; t < panels * ks; ++t)
          pack_a_tile(g, i0 + aorder.group(t) * kT, aorder.step(t) * kKStep,
                      apack + tile_index(aorder.group(t), aorder.step(t), ks) * kTileWords);
        packed = mc;
      }
      const int64_t jb_end = imin(nblocks, (slice + 1) * per_slice);
      for (int64_t jb = slice * per_slice; jb < jb_end; ++jb) {
        const uint32_t* b0 = bpack + 2 * jb * ks * kTileWords;
        for (int64_t p = 0; p < panels; p += 2) {
          block_product(ks, apack + p * ks * kTileWords, b0, out);
          store_block(g, out, i0 + p * kT, jb * kBlk);
        }
      }
    }
    _tile_release();
  };
  if (nthreads > 1) {
#pragma omp parallel num_threads(nthreads)
    team_work();
  } else {
    team_work();
  }
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
