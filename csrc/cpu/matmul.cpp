// GEMM, BLIS style: op(A) and op(B) are packed into panels (which is where
// the transposes are absorbed), and a register-blocked microkernel computes
// one MR x NR tile of C from an MR-row panel of A and an NR-column panel of B.
//
//   for jc over N by NC                      B block (KC x NC) lives in L3
//     for pc over K by KC                    packed by all threads together
//       for each (ic over M by MC, N slice)  one work unit per thread at a time
//         pack A block (MC x KC)             lives in L2
//         for jr over the slice by NR        B micro-panel, from L2
//           for ir over MC by MR: microkernel
//
// The avx512bf16 build adds the bfloat16 GEMM: the same loops over panels of
// words of bfloat16 pairs (matmul_bf16.h), one microkernel step per two k.
#include <omp.h>

#include <stdexcept>

#include "cpu/cpu_kernels.h"
#include "cpu/memory.h"
#if defined(FASTLM_ISA_AVX512BF16)
#include "cpu/amx.h"
#include "cpu/matmul_bf16.h"
#endif

#define FASTLM_STR2(x) #x
#define FASTLM_STR(x) FASTLM_STR2(x)

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

namespace {

// Tile shapes (MR rows, the template parameter below, x NR columns):
// MR * NV accumulators plus NV B vectors and one broadcast must fit the
// register file (32 zmm, 16 ymm, 16 xmm). AVX-512 has a second, shorter tile
// for products of few rows that a multiple of 8 fits better than one of 12
// (an RNN step at batch 32: 32 rows computed, not 36).
#if defined(FASTLM_ISA_AVX512)
constexpr int kMrMain = 12, kMrShort = 8, NV = 2;
#elif defined(FASTLM_ISA_AVX2)
constexpr int kMrMain = 6, kMrShort = 6, NV = 2;
#else
constexpr int kMrMain = 4, kMrShort = 4, NV = 2;
#endif
constexpr int NR = NV * kW;
// K runs in blocks of equal depth, at most KC: every further block reads
// and writes all of C again (from L3 or memory once C outgrows L2), which
// costs more than a B micro-panel (KC x NR, 64 KB with AVX-512) streaming
// from L2 instead of sitting in L1. The A block (MC x KC, 384 KB) stays in L2.
constexpr int64_t KC = 512;
constexpr int64_t MC_MAX = 192;
constexpr int64_t NC = 4096;    // B block KC x NC fits L3


// Floats of op(B) (k, n) as NR-column float32 panels (pack_b_all; bfloat16
// pairs take about half).
FASTLM_INLINE int64_t panel_floats(int64_t n, int64_t k) { return round_up(n, NR) * k; }

// The microkernel's k step: Fp32 (simd.h) or Bf16 (matmul_bf16.h).

// K splits into blocks of equal depth, at most KC, a multiple of the k values
// per element (so only the last block holds a half-empty bfloat16 pair).
template <class S>
FASTLM_INLINE int64_t kc_block(int64_t k) {
  return round_up(ceil_div(k, ceil_div(k, KC)), S::kPer);
}

// Packed panels hold 4-byte elements (floats or words of bfloat16 pairs),
// carved from checked float scratch (cpu/memory.h).
template <class T>
FASTLM_INLINE T* as_elems(float* p) {
  static_assert(sizeof(T) == sizeof(float), "packed elements are 4 bytes");
  return reinterpret_cast<T*>(p);
}

// Packs rows [i0, i0+mc) x cols [p0, p0+kc) of op(A) as MR-row panels:
// panel p holds, for each k, MR consecutive values; short panels are zero padded.
static_assert(kMrMain <= kW, "an MR-row column of a panel is written as one vector");
template <int MR>
void pack_a(const GemmArgs& g, int64_t i0, int64_t mc, int64_t p0, int64_t kc, float* dst) {
  for (int64_t ib = 0; ib < mc; ib += MR) {
    const int64_t mr = imin(MR, mc - ib);
    float* panel = dst + ib * kc;
    if (!g.trans_a) {
      // A row-major (m, k): kW-long pieces of the MR rows, transposed in registers.
      const float* src = g.a + (i0 + ib) * g.lda + p0;
      for (int64_t k0 = 0; k0 < kc; k0 += kW)
        transpose_block(src + k0, g.lda, mr, imin(kW, kc - k0), panel + k0 * MR, MR, MR);
    } else {
      // A stored (k, m): each k gives MR contiguous values.
      const float* src = g.a + p0 * g.lda + i0 + ib;
      for (int64_t k = 0; k < kc; ++k) vstore_part(panel + k * MR, vload_part(src + k * g.lda, mr), MR);
    }
  }
}

// Packs one NR-column panel (cols [j0, j0+nr) x rows [p0, p0+kc) of op(B)).
void pack_b_panel(const GemmArgs& g, int64_t j0, int64_t nr, int64_t p0, int64_t kc,
                  float* panel) {
  if (!g.trans_b) {
    const float* src = g.b + p0 * g.ldb + j0;
    for (int64_t k = 0; k < kc; ++k) {
      const float* s = src + k * g.ldb;
      float* d = panel + k * NR;
      if (nr == NR) {
        for (int v = 0; v < NV; ++v) vstore(d + v * kW, vload(s + v * kW));
      } else {
        for (int v = 0; v < NV; ++v) {
          const int64_t left = nr - v * kW;
          vstore(d + v * kW, left <= 0 ? vzero() : vload_part(s + v * kW, imin(left, kW)));
        }
      }
    }
  } else {
    // B stored (n, k): column j of op(B) is the contiguous row j of b; kW x kW
    // blocks are transposed in registers.
    for (int v = 0; v < NV; ++v) {
      const float* src = g.b + (j0 + v * kW) * g.ldb + p0;
      const int64_t rows = imin(kW, nr - v * kW);
      for (int64_t k0 = 0; k0 < kc; k0 += kW)
        transpose_block(src + k0, g.ldb, rows, imin(kW, kc - k0), panel + k0 * NR + v * kW, NR,
                        kW);
    }
  }
}

void pack_b_block(const GemmArgs& g, int64_t j0, int64_t nr, int64_t p0, int64_t kc, float* panel) {
  pack_b_panel(g, j0, nr, p0, kc, panel);
}
template <int MR>
void pack_a_block(const GemmArgs& g, int64_t i0, int64_t mc, int64_t p0, int64_t kc, float* dst) {
  pack_a<MR>(g, i0, mc, p0, kc, dst);
}

#if defined(FASTLM_ISA_AVX512BF16)
// The bfloat16 packs convert and pair in one pass over op(A) and op(B): k
// pairs of rows of a k-major operand straight into words (pair_rows), the
// rows of a k-contiguous one converted and transposed in registers
// (transpose_pairs). kc is even but for the last block.
void pack_b_block(const GemmArgs& g, int64_t j0, int64_t nr, int64_t p0, int64_t kc,
                  uint32_t* panel) {
  if (!g.trans_b) return pair_rows(g.b + p0 * g.ldb + j0, g.ldb, kc, nr, panel, NR, NR);
  for (int v = 0; v < NV; ++v) {
    const float* src = g.b + (j0 + v * kW) * g.ldb + p0;
    const int64_t rows = imin(kW, nr - v * kW);
    for (int64_t k0 = 0; k0 < kc; k0 += 2 * kW)
      transpose_pairs(src + k0, g.ldb, rows, imin(2 * kW, kc - k0), panel + k0 / 2 * NR + v * kW,
                      NR, kW);
  }
}

template <int MR>
void pack_a_block(const GemmArgs& g, int64_t i0, int64_t mc, int64_t p0, int64_t kc,
                  uint32_t* dst) {
  const int64_t kp = ceil_div(kc, 2);
  if (g.trans_a) {
    // A stored (k, m): each pair of k rows, read whole, feeds every panel.
    const __mmask16 full = tail_mask(MR);
    for (int64_t q = 0; q < kp; ++q) {
      const float* lo = g.a + (p0 + 2 * q) * g.lda + i0;
      const bool has_hi = 2 * q + 1 < kc;
      for (int64_t ib = 0; ib < mc; ib += MR) {
        const __mmask16 m = tail_mask(imin(MR, mc - ib));
        const __m512 a = _mm512_maskz_loadu_ps(m, lo + ib);
        const __m512 b = has_hi ? _mm512_maskz_loadu_ps(m, lo + g.lda + ib) : _mm512_setzero_ps();
        _mm512_mask_storeu_epi32(dst + ib * kp + q * MR, full, pair_words(a, b));
      }
    }
    return;
  }
  for (int64_t ib = 0; ib < mc; ib += MR) {
    const float* src = g.a + (i0 + ib) * g.lda + p0;
    const int64_t mr = imin(MR, mc - ib);
    for (int64_t k0 = 0; k0 < kc; k0 += 2 * kW)
      transpose_pairs(src + k0, g.lda, mr, imin(2 * kW, kc - k0), dst + ib * kp + k0 / 2 * MR, MR,
                      MR);
  }
}
#endif

// C tile (mr x nr valid of MR x NR) = [C +] A_panel B_panel [+ bias] over ks
// steps of S; the first pf_lines cache lines from pf are prefetched into L2 on
// the way.
template <int MR, class S, class T = typename S::T>
FASTLM_INLINE void microkernel(int64_t ks, const T* __restrict__ a, const T* __restrict__ b,
                               float* c, int64_t ldc, int64_t mr, int64_t nr, bool load_c,
                               const float* bias, const T* pf, int64_t pf_lines) {
  // The C tile is read (when load_c) and written only after the k loop, by
  // which time its lines, often in L3 or memory, have arrived.
  for (int64_t i = 0; i < mr; ++i)
    for (int v = 0; v < NV; ++v) __builtin_prefetch(c + i * ldc + v * kW, 1, 3);
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = vzero();

  for (int64_t k = 0; k < ks; ++k) {
    if (k < pf_lines) __builtin_prefetch(pf + k * 16, 0, 2);
    V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = S::load(b + k * NR + v * kW);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V av = S::bcast(a + k * MR + i);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = S::madd(av, bv[v], acc[i][v]);
    }
  }

  if (mr == MR && nr == NR) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        float* p = c + i * ldc + v * kW;
        V r = acc[i][v];
        if (load_c) r = r + vload(p);
        if (bias) r = r + vload(bias + v * kW);
        vstore(p, r);
      }
    return;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if (i >= mr) break;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const int64_t cols = imin(kW, nr - v * kW);
      if (cols <= 0) break;
      float* p = c + i * ldc + v * kW;
      V r = acc[i][v];
      if (load_c) r = r + vload_part(p, cols);
      if (bias) r = r + vload_part(bias + v * kW, cols);
      vstore_part(p, r, cols);
    }
  }
}

// k == 0: C = bias or 0 (or unchanged, plus bias, when accumulating).
void fill_bias(const GemmArgs& g) {
  for (int64_t i = 0; i < g.m; ++i) {
    float* row = g.c + i * g.ldc;
    for (int64_t j = 0; j < g.n; ++j) {
      const float base = g.accumulate ? row[j] : 0.f;
      row[j] = base + (g.bias ? g.bias[j] : 0.f);
    }
  }
}

// A few rows (decoding one token per sequence): packing B would cost more
// than the product itself, so B is streamed once, in place; threads split N.
constexpr int64_t kSmallM = 4;

void matmul_small_m(const GemmArgs& g) {
  // op(A) rows gathered contiguous (a no-op copy unless trans_a).
  ScratchFloats arow_buf(g.m * g.k, "matmul: the rows of op(a)");
  float* arow = arow_buf.data;
  for (int64_t i = 0; i < g.m; ++i)
    for (int64_t p = 0; p < g.k; ++p)
      arow[i * g.k + p] = g.trans_a ? g.a[p * g.lda + i] : g.a[i * g.lda + p];
  const int64_t chunk = 4 * kW, nchunks = ceil_div(g.n, chunk);
  parallel_for(nchunks, g.m * g.n * g.k > (1 << 16), [&](int64_t cj) {
    const int64_t j0 = cj * chunk, j1 = imin(g.n, j0 + chunk);
    for (int64_t i = 0; i < g.m; ++i) {
      const float* a = arow + i * g.k;
      float* c = g.c + i * g.ldc;
      if (g.trans_b) {  // c[j] = a . b[j, :], rows of b contiguous
        for (int64_t j = j0; j < j1; ++j) {
          const float* b = g.b + j * g.ldb;
          V acc0 = vzero(), acc1 = vzero();
          int64_t p = 0;
          for (; p + 2 * kW <= g.k; p += 2 * kW) {
            acc0 = vfma(vload(a + p), vload(b + p), acc0);
            acc1 = vfma(vload(a + p + kW), vload(b + p + kW), acc1);
          }
          for (; p < g.k; p += kW) {
            const int64_t left = imin(kW, g.k - p);
            acc0 = vfma(vload_part(a + p, left), vload_part(b + p, left), acc0);
          }
          float r = vsum(acc0 + acc1);
          if (g.bias) r += g.bias[j];
          c[j] = g.accumulate ? c[j] + r : r;
        }
      } else {  // c[j0:j1] = sum_p a[p] * b[p, j0:j1]
        const int64_t w = j1 - j0;
        V acc[4] = {vzero(), vzero(), vzero(), vzero()};
        for (int64_t p = 0; p < g.k; ++p) {
          const V av = vset(a[p]);
          const float* b = g.b + p * g.ldb + j0;
          for (int v = 0; v < 4; ++v) {
            const int64_t left = w - v * kW;
            if (left <= 0) break;
            acc[v] = vfma(av, left >= kW ? vload(b + v * kW) : vload_part(b + v * kW, left), acc[v]);
          }
        }
        for (int v = 0; v < 4; ++v) {
          const int64_t left = imin(kW, w - v * kW);
          if (left <= 0) break;
          float* cp = c + j0 + v * kW;
          V r = acc[v];
          if (g.bias) r = r + vload_part(g.bias + j0 + v * kW, left);
          if (g.accumulate) r = r + vload_part(cp, left);
          vstore_part(cp, r, left);
        }
      }
    }
  });
}

// A few rows against a pre-packed B (decoding with weights packed once per
// prompt): each B panel is read once for all M rows (M a compile-time
// constant so the accumulators stay in registers), and no row padding is
// computed. Row i's element of step k is a[i * ai + k * ak].
template <int M, class S, class T = typename S::T>
void small_m_packed_panel(const GemmArgs& g, const T* a, int64_t ai, int64_t ak, int64_t jp,
                          int64_t npad, int64_t kc_max) {
  // With M * NV accumulators alone each FMA waits on the previous one (4
  // cycles); U interleaved partial sums over k keep 8 chains in flight.
  constexpr int U = M * NV >= 8 ? 1 : 8 / (M * NV);
  V acc[U][M][NV];
  for (int u = 0; u < U; ++u)
    for (int i = 0; i < M; ++i)
      for (int v = 0; v < NV; ++v) acc[u][i][v] = vzero();
  const T* packed = reinterpret_cast<const T*>(g.b_packed);
  for (int64_t pc = 0; pc < g.k; pc += kc_max) {
    const int64_t ks = ceil_div(imin(kc_max, g.k - pc), S::kPer), s0 = pc / S::kPer;
    const T* panel = packed + s0 * npad + jp * NR * ks;
    int64_t k = 0;
    for (; k + U <= ks; k += U) {
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) {
        V bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) bv[v] = S::load(panel + (k + u) * NR + v * kW);
#pragma GCC unroll 4
        for (int i = 0; i < M; ++i) {
          const V av = S::bcast(a + i * ai + (s0 + k + u) * ak);
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) acc[u][i][v] = S::madd(av, bv[v], acc[u][i][v]);
        }
      }
    }
    for (; k < ks; ++k)
      for (int i = 0; i < M; ++i) {
        const V av = S::bcast(a + i * ai + (s0 + k) * ak);
        for (int v = 0; v < NV; ++v)
          acc[0][i][v] = S::madd(av, S::load(panel + k * NR + v * kW), acc[0][i][v]);
      }
  }
  const int64_t j0 = jp * NR;
  for (int i = 0; i < M; ++i)
    for (int v = 0; v < NV; ++v) {
      const int64_t cols = imin(kW, g.n - j0 - v * kW);
      if (cols <= 0) break;
      float* p = g.c + i * g.ldc + j0 + v * kW;
      V r = acc[0][i][v];
      for (int u = 1; u < U; ++u) r = r + acc[u][i][v];
      if (g.accumulate) r = r + vload_part(p, cols);
      if (g.bias) r = r + vload_part(g.bias + j0 + v * kW, cols);
      vstore_part(p, r, cols);
    }
}

template <class S, class T = typename S::T>
void small_m_packed(const GemmArgs& g, const T* a, int64_t ai, int64_t ak) {
  const int64_t kc_max = kc_block<S>(g.k), npad = round_up(g.n, NR), npanels = npad / NR;
  // Bound by reading B (from L3 once the weights outgrow L2): a second core
  // adds bandwidth once B is large enough to pay for waking it. Measured on
  // decoding the 4-layer, 128-wide GPT (B of 96-256 KB): every fork cost more
  // than it saved, in bf16 and in fp32; so threads split B from 512 KB on.
  constexpr int64_t kParallelBytes = int64_t(1) << 19;
  parallel_for(npanels, g.n * g.k * (int64_t)sizeof(T) >= kParallelBytes, [&](int64_t jp) {
    switch (g.m) {
      case 1: small_m_packed_panel<1, S>(g, a, ai, ak, jp, npad, kc_max); break;
      case 2: small_m_packed_panel<2, S>(g, a, ai, ak, jp, npad, kc_max); break;
      case 3: small_m_packed_panel<3, S>(g, a, ai, ak, jp, npad, kc_max); break;
      default: small_m_packed_panel<4, S>(g, a, ai, ak, jp, npad, kc_max); break;
    }
  });
}

void matmul_small_m_packed(const GemmArgs& g) {
  if (g.trans_a) small_m_packed<Fp32>(g, g.a, 1, g.lda);
  else small_m_packed<Fp32>(g, g.a, g.lda, 1);
}

template <int MR, class S>
void matmul_blocked(const GemmArgs& g) {
  using T = typename S::T;
  // Waking a thread team costs more than a small product (and far more when
  // the cores are shared), so small GEMMs stay on the calling thread.
  constexpr int64_t kMinParallelMacs = int64_t(1) << 20;
  const int nthreads = g.m * g.n * g.k < kMinParallelMacs ? 1 : num_threads();
  // A large M splits into blocks of whole MR-row panels, about MC_MAX rows,
  // as many as a multiple of the threads, with panel counts differing by at
  // most one (2048 rows: 171 panels in 12 blocks of 14 or 15, not 11 blocks
  // of 180 rows and one of 68, which left one thread 10% more work). An M
  // that fits one block is not split (rounding rows up to MR would unbalance
  // the threads: 32 rows give 24 + 8) and the threads split N instead.
  const int64_t mpanels = ceil_div(g.m, MR);
  int64_t nic = 1;
  if (g.m > MC_MAX) nic = imin(mpanels, round_up(ceil_div(g.m, MC_MAX), nthreads));
  const int64_t mc = ceil_div(mpanels, nic) * MR;  // the largest block
  auto block_row = [&](int64_t ib) { return imin(g.m, mpanels * ib / nic * MR); };

  const int64_t nc = imin(NC, round_up(g.n, NR));
  const int64_t kc_max = kc_block<S>(g.k), ks_max = kc_max / S::kPer;
  // B packed by the caller beforehand (matmul_pack_b), or here per block.
  const int64_t npad = round_up(g.n, NR);
  const T* b_packed = reinterpret_cast<const T*>(g.b_packed);
  ScratchFloats bpack_buf(b_packed ? 0 : ks_max * nc, "matmul: a packed block of b");
  T* bpack = b_packed ? nullptr : as_elems<T>(bpack_buf.data);
  // One packed A block per thread, allocated here: inside the region a failed
  // allocation could not be reported.
  const int64_t apack_floats = per_thread_floats(mc * ks_max);
  ScratchFloats apacks(apack_floats * nthreads, "matmul: packed blocks of a");

  // Run by each thread of the team; the `omp for` loops inside split the work
  // (outside a parallel region they run whole on the calling thread).
  auto team_work = [&]() {
    T* apack = as_elems<T>(apacks.data + apack_floats * omp_get_thread_num());
    for (int64_t jc = 0; jc < g.n; jc += nc) {
      const int64_t ncur = imin(nc, g.n - jc);
      const int64_t npanels = ceil_div(ncur, NR);
      const int64_t nslices = imin(npanels, imax(1, ceil_div(2 * nthreads, nic)));
      const int64_t panels_per_slice = ceil_div(npanels, nslices);
      for (int64_t pc = 0; pc < g.k; pc += kc_max) {
        const int64_t kc = imin(kc_max, g.k - pc), ks = ceil_div(kc, S::kPer);
        const bool first = pc == 0;
        const T* bblock = b_packed ? b_packed + pc / S::kPer * npad + jc * ks : bpack;
        if (!b_packed) {
#pragma omp for schedule(static)
          for (int64_t jp = 0; jp < npanels; ++jp)
            pack_b_block(g, jc + jp * NR, imin(NR, ncur - jp * NR), pc, kc, bpack + jp * NR * ks);
        }

        int64_t packed_ic = -1;
#pragma omp for schedule(static)
        for (int64_t unit = 0; unit < nic * nslices; ++unit) {
          const int64_t ib = unit / nslices, slice = unit % nslices;
          const int64_t ic = block_row(ib), mcur = block_row(ib + 1) - ic;
          if (mcur <= 0) continue;
          if (packed_ic != ic) {
            pack_a_block<MR>(g, ic, mcur, pc, kc, apack);
            packed_ic = ic;
          }
          const int64_t jp_end = imin(npanels, (slice + 1) * panels_per_slice);
          // A B micro-panel's first row panel waits on L3 or memory (an RNN's
          // packed recurrent weights, 16 MB at hidden 1024, stream in every
          // step) and the others find it in L2: each microkernel call prefetches
          // its share of the next micro-panel, so the stream never stops.
          const int64_t rpanels = ceil_div(mcur, MR);
          const int64_t pf_lines = ceil_div(NR * ks / 16, rpanels);
          for (int64_t jp = slice * panels_per_slice; jp < jp_end; ++jp) {
            const int64_t j = jc + jp * NR, nr = imin(NR, ncur - jp * NR);
            const float* bias = first && g.bias ? g.bias + j : nullptr;
            const T* next = bblock + (jp + 1) * NR * ks;
            const bool pf = jp + 1 < jp_end;
            for (int64_t ir = 0; ir < mcur; ir += MR) {
              microkernel<MR, S>(ks, apack + ir * ks, bblock + jp * NR * ks,
                                 g.c + (ic + ir) * g.ldc + j, g.ldc, imin(MR, mcur - ir), nr,
                                 !first || g.accumulate, bias, next + ir / MR * pf_lines * 16,
                                 pf ? pf_lines : 0);
            }
          }
        }
      }
    }
  };
  if (nthreads > 1) {
#pragma omp parallel num_threads(nthreads)
    team_work();
  } else {
    team_work();
  }
}

// Whichever tile computes fewer padding rows (the main one on a tie).
template <class S>
void matmul_tiled(const GemmArgs& g) {
  if (round_up(g.m, kMrShort) < round_up(g.m, kMrMain) && g.m <= MC_MAX) matmul_blocked<kMrShort, S>(g);
  else matmul_blocked<kMrMain, S>(g);
}

// Layout: for each K block of KC rows, the NR-column panels of all of N
// (zero padded to a multiple of NR), each panel ceil(kc / kPer) x NR, as
// matmul reads them.
template <class S>
void pack_b_all(const GemmArgs& g, typename S::T* packed) {
  const int64_t kc_max = kc_block<S>(g.k), npad = round_up(g.n, NR), npanels = npad / NR;
  for (int64_t pc = 0; pc < g.k; pc += kc_max) {
    const int64_t kc = imin(kc_max, g.k - pc), ks = ceil_div(kc, S::kPer);
    parallel_for(npanels, g.n * g.k > (1 << 16), [&](int64_t jp) {
      pack_b_block(g, jp * NR, imin(NR, g.n - jp * NR), pc, kc,
                   packed + pc / S::kPer * npad + jp * NR * ks);
    });
  }
}

#if defined(FASTLM_ISA_AVX512BF16)
// The few-row product on pre-packed bfloat16 B, op(A)'s rows converted into a
// (g.m rows of kp words).
void small_m_bf16(const GemmArgs& g, uint32_t* a, int64_t kp) {
  for (int64_t i = 0; i < g.m; ++i) {
    if (!g.trans_a) {
      contiguous_to_pairs(g.a + i * g.lda, g.k, a + i * kp);
      continue;
    }
    alignas(64) float row[2 * kW];  // a column of A, 2 kW values at a time
    for (int64_t p0 = 0; p0 < g.k; p0 += 2 * kW) {
      const int64_t n = imin(2 * kW, g.k - p0);
      for (int64_t p = 0; p < n; ++p) row[p] = g.a[(p0 + p) * g.lda + i];
      contiguous_to_pairs(row, n, a + i * kp + p0 / 2);
    }
  }
  small_m_packed<Bf16>(g, a, kp, 1);
}

// A bfloat16 pack (matmul_pack_b) holds op(b) as pairs for vdpbf16ps, and,
// when it was made with AMX enabled, also as AMX tiles, then a tag word
// saying which: the few-row products of decoding read the pairs, the others
// the tiles, and a pack made before the engine was switched still reads right.
constexpr uint32_t kPairsOnly = 0x50414952, kPairsAndTiles = 0x54494c45;
const uint32_t* packed_tiles(const GemmArgs& g) {
  const uint32_t* tiles = reinterpret_cast<const uint32_t*>(g.b_packed + panel_floats(g.n, g.k));
  return tiles[amx_packed_words(g.n, g.k)] == kPairsAndTiles ? tiles : nullptr;
}

void matmul_bf16(const GemmArgs& g) {
  if (g.m <= kSmallM && g.b_packed) {
    // op(A)'s rows as pairs, once, rather than in every panel: on the stack
    // up to the sizes of a decoding step, which so allocates nothing.
    const int64_t kp = ceil_div(g.k, 2);
    constexpr int64_t kStackWords = 4096;
    alignas(64) uint32_t stack[kStackWords];
    if (g.m * kp <= kStackWords) return small_m_bf16(g, stack, kp);
    ScratchFloats a_buf(g.m * kp, "matmul: bfloat16 pairs of op(a)");
    return small_m_bf16(g, as_elems<uint32_t>(a_buf.data), kp);
  }
  if (amx_enabled()) return matmul_amx(g, g.b_packed ? packed_tiles(g) : nullptr);
  matmul_tiled<Bf16>(g);
}
#endif

}  // namespace

void matmul(const GemmArgs& g) {
  if (g.precision == GemmPrecision::kBF16) {
#if !defined(FASTLM_ISA_AVX512BF16)
    throw std::invalid_argument("a bfloat16 GEMM needs the avx512bf16 CPU ISA (AVX512_BF16); the active one is " FASTLM_STR(FASTLM_ISA));
#endif
  }
  if (g.m <= 0 || g.n <= 0) return;
  if (g.k <= 0) {
    fill_bias(g);
    return;
  }
#if defined(FASTLM_ISA_AVX512BF16)
  if (g.precision == GemmPrecision::kBF16) return matmul_bf16(g);
#endif
  if (g.m <= kSmallM) {
    if (g.b_packed) matmul_small_m_packed(g);
    else matmul_small_m(g);
    return;
  }
  matmul_tiled<Fp32>(g);
}

// The ops' GEMM: float32 data only (bfloat16 data is the CUDA table's).
void gemm(const GemmArgs& g) {
  if (g.dtype != DType::kFloat32 || g.c_float)
    throw std::invalid_argument("gemm: the CPU kernels take float32 data only");
  matmul(g);
}

int64_t matmul_packed_size(int64_t n, int64_t k) {
#if defined(FASTLM_ISA_AVX512BF16)
  return panel_floats(n, k) + amx_packed_words(n, k) + kW;  // a line for the tag
#else
  return panel_floats(n, k);
#endif
}

void matmul_pack_b(const GemmArgs& g, float* packed) {
#if defined(FASTLM_ISA_AVX512BF16)
  if (g.precision == GemmPrecision::kBF16) {
    pack_b_all<Bf16>(g, reinterpret_cast<uint32_t*>(packed));
    uint32_t* tiles = reinterpret_cast<uint32_t*>(packed + panel_floats(g.n, g.k));
    const bool amx = amx_enabled();
    if (amx) amx_pack_b(g, tiles);
    tiles[amx_packed_words(g.n, g.k)] = amx ? kPairsAndTiles : kPairsOnly;
    return;
  }
#endif
  pack_b_all<Fp32>(g, packed);
}

#if defined(FASTLM_ISA_AVX512BF16)
// The GEMM entries of the mixed-precision table (table.cpp): every product in
// bfloat16, whatever the caller's GemmArgs ask.
void matmul_mixed(const GemmArgs& g) {
  GemmArgs h = g;
  h.precision = GemmPrecision::kBF16;
  matmul(h);
}
void matmul_pack_b_mixed(const GemmArgs& g, float* packed) {
  GemmArgs h = g;
  h.precision = GemmPrecision::kBF16;
  matmul_pack_b(h, packed);
}
#endif

// Threads split the columns, 2 vectors at a time; each column sums its rows
// in one order (four interleaved partial sums) whatever the thread count.
void bias_backward(const float* dout, float* dbias, int64_t rows, int64_t cols) {
  constexpr int kV = 2, kU = 4;
  const int64_t chunk = kV * kW;
  parallel_for(ceil_div(cols, chunk), rows * cols >= (1 << 15), [&](int64_t c) {
    const int64_t j0 = c * chunk;
    int64_t w[kV];
    for (int v = 0; v < kV; ++v) w[v] = imax(0, imin(kW, cols - j0 - v * kW));
    V s[kU][kV];
    for (int u = 0; u < kU; ++u)
      for (int v = 0; v < kV; ++v) s[u][v] = vzero();
    // The strip's rows lie cols floats apart, often a page or more, where the
    // hardware prefetchers stop: each row is requested kAhead rows early.
    constexpr int64_t kAhead = 64;
    int64_t r = 0;
    for (; r + kU <= rows; r += kU) {
      for (int u = 0; u < kU && r + kAhead + u < rows; ++u)
        for (int v = 0; v < kV; ++v)
          if (w[v]) __builtin_prefetch(dout + (r + kAhead + u) * cols + j0 + v * kW, 0, 2);
      for (int u = 0; u < kU; ++u)
        for (int v = 0; v < kV; ++v)
          if (w[v]) s[u][v] = s[u][v] + vload_part(dout + (r + u) * cols + j0 + v * kW, w[v]);
    }
    for (; r < rows; ++r)
      for (int v = 0; v < kV; ++v)
        if (w[v]) s[0][v] = s[0][v] + vload_part(dout + r * cols + j0 + v * kW, w[v]);
    for (int v = 0; v < kV; ++v) {
      if (!w[v]) continue;
      float* d = dbias + j0 + v * kW;
      vstore_part(d, vload_part(d, w[v]) + ((s[0][v] + s[1][v]) + (s[2][v] + s[3][v])), w[v]);
    }
  });
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
