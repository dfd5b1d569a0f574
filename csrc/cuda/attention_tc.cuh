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

}  // namespace attn
}  // namespace cuda
}  // namespace fastlm
