// The tensor-core attention kernels' operand fetches (attention_tc.cu,
// attention_tc_fwd.cu): mma.sync.m16n8k16 bfloat16 fragments from shared
// tiles, and score tiles turned into A operands without leaving registers.
//
// Tiles come in by cp.async into shared rows padded by 8 elements (16 bytes),
// which keeps every ldmatrix row address 16-byte aligned and the 8 rows of
// each 8x8 matrix on distinct banks.
//
// Operand fetches all follow the GEMM's patterns (matmul.cu), with tiles
// stored [row][dim]:
//   A operand, rows of a tile (Q, dO, K, V):  ldmatrix, matrix q at
//       row + 8 (q & 1), col + 8 (q >> 1)
//   B operand "transposed" (n = tile row, k = dim; for Q K^T-like products):
//       ldmatrix, matrix q at row + 8 (q >> 1), col + 8 (q & 1)
//   B operand "plain" (k = tile row, n = dim; for P V-like products):
//       ldmatrix.trans, matrix q at row + 8 (q & 1), col + 8 (q >> 1)
// A score tile in accumulator layout becomes the A operand of the next
// product without leaving registers: for k step kk (16 columns), the A
// registers are (C[2kk][0..1], C[2kk][2..3], C[2kk+1][0..1], C[2kk+1][2..3])
// packed to bfloat16x2.
#pragma once
#include "cuda/attention.cuh"

namespace fastlm {
namespace cuda {
namespace attn {

struct Lane {
  int warp, lane, g, t, q, r8;
  __device__ Lane()
      : warp(threadIdx.x >> 5),
        lane(threadIdx.x & 31),
        g((threadIdx.x & 31) >> 2),
        t(threadIdx.x & 3),
        q((threadIdx.x & 31) >> 3),
        r8(threadIdx.x & 7) {}
};

// A fragment for rows [row, row + 16), dims [col, col + 16) of a tile.
template <int LD>
__device__ __forceinline__ void frag_a(uint32_t (&a)[4], const bf16* s, int row, int col,
                                       const Lane& L) {
  ldmatrix_x4(a, s + (row + (L.q & 1) * 8 + L.r8) * LD + col + (L.q >> 1) * 8);
}
// B fragments of two n tiles, n = tile rows [row, row + 16), k = dims [col, col + 16).
template <int LD>
__device__ __forceinline__ void frag_b_rows(uint32_t (&b)[4], const bf16* s, int row, int col,
                                            const Lane& L) {
  ldmatrix_x4(b, s + (row + (L.q >> 1) * 8 + L.r8) * LD + col + (L.q & 1) * 8);
}
// B fragments of two n tiles, k = tile rows [row, row + 16), n = dims [col, col + 16).
template <int LD>
__device__ __forceinline__ void frag_b_cols(uint32_t (&b)[4], const bf16* s, int row, int col,
                                            const Lane& L) {
  ldmatrix_x4_trans(b, s + (row + (L.q & 1) * 8 + L.r8) * LD + col + (L.q >> 1) * 8);
}

// Accumulator tiles c[2kk], c[2kk + 1] (16 columns) as an A operand.
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c0)[4],
                                         const float (&c1)[4]) {
  a[0] = pack_bf16(c0[0], c0[1]);
  a[1] = pack_bf16(c0[2], c0[3]);
  a[2] = pack_bf16(c1[0], c1[1]);
  a[3] = pack_bf16(c1[2], c1[3]);
}

// ---- the forwards' shared steps (a warp's 16 query rows; this thread's two
// rows are rows[0] = g and rows[1] = g + 8 of them) ----------------------------

// S = Q K^T for 8 NT keys: qf the warp's Q fragments (NKD steps of 16 dims),
// K the tile's rows [key][dim]. Element e of tile nt is row rows[e >> 1], key
// 8 nt + 2 t + (e & 1) of the tile.
template <int LD, int NKD, int NT>
__device__ __forceinline__ void qk_tile(float (&s)[NT][4], const uint32_t (&qf)[NKD][4],
                                        const bf16* Ks, const Lane& L) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
#pragma unroll
  for (int kd = 0; kd < NKD; ++kd)
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t kb[4];
      frag_b_rows<LD>(kb, Ks, 16 * np, 16 * kd, L);
      mma_bf16(s[2 * np], qf[kd], kb[0], kb[1]);
      mma_bf16(s[2 * np + 1], qf[kd], kb[2], kb[3]);
    }
}

// The online softmax's rescale: folds this thread's tile row maxima mx (of
// scores in units that u turns into log2 units) into the running maxima m,
// and rescales l and o by 2^(m u - m' u). ms receives m' u, or 0 while a row
// has seen no key, so that exp2(score u - ms) of a hidden score is 0, not NaN.
template <int NDT>
__device__ __forceinline__ void online_rescale(float (&m)[2], float (&l)[2], float (&o)[NDT][4],
                                               float (&mx)[2], float u, float (&ms)[2]) {
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(kFullMask, mx[hr], 1));
    mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(kFullMask, mx[hr], 2));
    const float mn = fmaxf(m[hr], mx[hr]);
    ms[hr] = mn == -INFINITY ? 0.f : mn * u;
    const float corr = exp2f(m[hr] * u - ms[hr]);
    l[hr] *= corr;
#pragma unroll
    for (int dt = 0; dt < NDT; ++dt) {
      o[dt][2 * hr] *= corr;
      o[dt][2 * hr + 1] *= corr;
    }
    m[hr] = mn;
  }
}

// Dropout on a probability tile whose element e of tile nt is row rows[e >> 1],
// key k0 + 8 nt + 2 t + (e & 1).
template <int NT>
__device__ __forceinline__ void drop_tile(float (&s)[NT][4], const HeadParams& p, uint64_t key,
                                          const int64_t (&rows)[2], int64_t k0, const Lane& L) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      s[nt][e] *= drop_factor(p, key, rows[e >> 1], k0 + 8 * nt + 2 * L.t + (e & 1));
}

// O += P V: P the probability tiles (8 NT keys, rounded to bfloat16 as A
// operands), V the tile's rows [key][dim]; k in steps of 16 keys, n = dims.
// The backward's products of a score tile and a row tile take it too
// (dV += P^T dO, dK += dS^T Q, dQ += dS K).
template <int LD, int NT, int NDT>
__device__ __forceinline__ void add_pv(float (&o)[NDT][4], const float (&s)[NT][4],
                                       const bf16* Vs, const Lane& L) {
#pragma unroll
  for (int kk = 0; kk < NT / 2; ++kk) {
    uint32_t pa[4];
    acc_to_a(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
    for (int dp = 0; dp < NDT / 2; ++dp) {
      uint32_t vb[4];
      frag_b_cols<LD>(vb, Vs, 16 * kk, 16 * dp, L);
      mma_bf16(o[2 * dp], pa, vb[0], vb[1]);
      mma_bf16(o[2 * dp + 1], pa, vb[2], vb[3]);
    }
  }
}

// dst[d] += acc (times scale when SCALED) for the dims d < D of this thread's
// row half hr of accumulator tiles over dims (element 2 hr + e of tile dt is
// dim 8 dt + 2 t + e), dst a bfloat16 row of a gradient: read, add, round.
template <bool SCALED, int NDT>
__device__ __forceinline__ void add_row(bf16* dst, const float (&acc)[NDT][4], int hr, int D,
                                        float scale, const Lane& L) {
#pragma unroll
  for (int dt = 0; dt < NDT; ++dt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int d = 8 * dt + 2 * L.t + e;
      if (d < D)
        dst[d] = __float2bfloat16_rn(__bfloat162float(dst[d]) +
                                     (SCALED ? acc[dt][2 * hr + e] * scale : acc[dt][2 * hr + e]));
    }
}

// The rows' out = o / l in bfloat16 and lse = (m2 + log2 l) ln 2, m2 being
// the row max in log2 units and l this thread's share of the row sum (the
// quad's shares are added here). A row that saw no key (causal, seq_q >
// seq_k) gets 0 and lse -inf.
template <int NDT>
__device__ __forceinline__ void store_forward(const FwdParams& p, int64_t b, int64_t h,
                                              const int64_t (&rows)[2], const float (&o)[NDT][4],
                                              const float (&l)[2], const float (&m2)[2],
                                              const Lane& L) {
  bf16* O = head_ptr<bf16>(p.out, p.so, b, h);
  float* lse = p.lse + (b * p.heads + h) * p.seq_q;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float lt = l[hr];
    lt += __shfl_xor_sync(kFullMask, lt, 1);
    lt += __shfl_xor_sync(kFullMask, lt, 2);
    const int64_t i = rows[hr];
    if (i >= p.seq_q) continue;
    const float inv = lt > 0.f ? 1.f / lt : 0.f;
    bf16* orow = O + i * p.so.row;
#pragma unroll
    for (int dt = 0; dt < NDT; ++dt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int d = 8 * dt + 2 * L.t + e;
        if (d < p.head_dim) orow[d] = __float2bfloat16_rn(o[dt][2 * hr + e] * inv);
      }
    if (L.t == 0) lse[i] = lt == 0.f ? -INFINITY : (m2[hr] + log2f(lt)) * kLn2;
  }
}

}  // namespace attn
}  // namespace cuda
}  // namespace fastlm
