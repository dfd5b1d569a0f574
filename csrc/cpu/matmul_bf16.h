// bfloat16 pieces of the GEMM (csrc/cpu/matmul.cpp), for the avx512bf16 table
// only: vdpbf16ps multiplies pairs of bfloat16 and adds both products to one
// float32 lane, so op(A) and op(B) are packed as 32-bit words, each holding
// the values at k and k+1 (k even; k in the low half), rounded to nearest even.
// Both conversion instructions treat subnormal inputs as zero.
#pragma once
#include "cpu/simd.h"

#if !defined(FASTLM_ISA_AVX512BF16)
#error "matmul_bf16.h is for the avx512bf16 build of matmul.cpp"
#endif

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

// One k step of the microkernel on words of bfloat16 pairs (matmul.cpp's Fp32
// is the float32 step, one k per element).
struct Bf16 {
  using T = uint32_t;
  static constexpr int kPer = 2;  // k values per element
  static FASTLM_INLINE V load(const uint32_t* p) {
    return {_mm512_castsi512_ps(_mm512_loadu_si512(p))};
  }
  static FASTLM_INLINE V bcast(const uint32_t* p) {
    return {_mm512_castsi512_ps(_mm512_set1_epi32((int)*p))};
  }
  static FASTLM_INLINE V madd(V a, V b, V c) {
    return {_mm512_dpbf16_ps(c.r, (__m512bh)a.r, (__m512bh)b.r)};
  }
};

// kW words: word i = (bf16(lo[i]), bf16(hi[i])), rounded to nearest even.
FASTLM_INLINE __m512i pair_words(__m512 lo, __m512 hi) {
  // cvtne2ps gives bf16(lo) in 16-bit elements 0..15, bf16(hi) in 16..31;
  // the permutation interleaves them.
  const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                         23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(order, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

// n contiguous floats as ceil(n / 2) words of pairs (values 2q, 2q+1 in word
// q; an odd last value paired with zero): cvtne2ps keeps the order.
FASTLM_INLINE void contiguous_to_pairs(const float* src, int64_t n, uint32_t* dst) {
  for (int64_t p = 0; p < n; p += 2 * kW) {
    const int64_t left = n - p;
    const int64_t n0 = imin(left, kW), n1 = imax(0, imin(left - kW, kW)), words = imin(kW, (left + 1) / 2);
    const __m512 x0 = _mm512_maskz_loadu_ps((__mmask16)((1u << n0) - 1), src + p);
    const __m512 x1 = _mm512_maskz_loadu_ps((__mmask16)((1u << n1) - 1), src + p + kW);
    _mm512_mask_storeu_epi32(dst + p / 2, (__mmask16)((1u << words) - 1),
                             (__m512i)_mm512_cvtne2ps_pbh(x1, x0));
  }
}

// Rows [0, rows) x columns [0, cols) of src (row stride lds) as
// ceil(rows / 2) rows of `width` words in dst (row stride ldd): word (r, c)
// holds (src[2r][c], src[2r + 1][c]), an odd last row paired with zeros,
// words from cols on zero. The B operand of a product over the rows' index.
FASTLM_INLINE void pair_rows(const float* src, int64_t lds, int64_t rows, int64_t cols,
                             uint32_t* dst, int64_t ldd, int64_t width) {
  for (int64_t r = 0; r < rows; r += 2) {
    const float* lo = src + r * lds;
    uint32_t* d = dst + r / 2 * ldd;
    for (int64_t c = 0; c < width; c += kW) {
      const __mmask16 m = tail_mask(imax(0, imin(kW, cols - c)));
      const __m512 a = _mm512_maskz_loadu_ps(m, lo + c);
      const __m512 b = r + 1 < rows ? _mm512_maskz_loadu_ps(m, lo + lds + c) : _mm512_setzero_ps();
      _mm512_mask_storeu_epi32(d + c, tail_mask(imin(kW, width - c)), pair_words(a, b));
    }
  }
}

// Rows [0, ni) of src (row stride rs), each nk <= 2 kW contiguous values
// along k, as ceil(nk / 2) rows of dst (row stride ld): dst[d * ld + i] holds
// (src[i][2d], src[i][2d + 1]), a missing odd last value as zero. Each row
// written is `width` words (<= kW), zero from ni on. The transpose of
// contiguous_to_pairs, in registers: the A panels of x @ W and the B panels
// of x @ W^T.
FASTLM_INLINE void transpose_pairs(const float* src, int64_t rs, int64_t ni, int64_t nk,
                                   uint32_t* dst, int64_t ld, int64_t width) {
  const __mmask16 m0 = tail_mask(imin(nk, kW)), m1 = tail_mask(imax(0, nk - kW));
  V r[kW];
  for (int i = 0; i < kW; ++i) {
    if (i >= ni) {
      r[i] = vzero();
      continue;
    }
    const __m512 x0 = _mm512_maskz_loadu_ps(m0, src + i * rs);
    const __m512 x1 = _mm512_maskz_loadu_ps(m1, src + i * rs + kW);
    r[i] = {_mm512_castsi512_ps((__m512i)_mm512_cvtne2ps_pbh(x1, x0))};
  }
  vtranspose(r);
  float* d = reinterpret_cast<float*>(dst);
  for (int64_t q = 0; q < (nk + 1) / 2; ++q) vstore_part(d + q * ld, r[q], width);
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
