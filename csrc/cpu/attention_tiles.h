// The tile products of the CPU flash attention (attention.cpp) and how they
// read their operands: in float32, or, in the avx512bf16 build, as words of
// bfloat16 pairs (matmul_bf16.h) multiplied by vdpbf16ps into float32.
//
// Every product has one shape, "broadcast a scalar of A, multiply it into
// vector rows of B": C (m x nv vectors) (+)= A (m x k) B (k x nv vectors),
// templated on the k step S of matmul (simd.h's Fp32, matmul_bf16.h's Bf16),
// whose elements hold S::kPer consecutive k. A bfloat16 A holds pairs along
// k, element (r, p) = (a[r][2p], a[r][2p + 1]); a bfloat16 B pairs of rows.
// Included by attention.cpp only: everything is in an anonymous namespace.
#pragma once
#include <cstring>

#include "cpu/simd.h"
#if defined(FASTLM_ISA_AVX512BF16)
#include "cpu/matmul_bf16.h"
#endif

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {
namespace {

constexpr int64_t kBq = 64, kBk = 64;  // queries x keys per tile
// Accumulator registers of the micro-kernel and its widest column block:
// leaves room for the B row and the broadcast (32 zmm, 16 ymm/xmm registers).
#if defined(FASTLM_ISA_AVX512)
constexpr int kAcc = 16, kMaxNV = 4;
#else
constexpr int kAcc = 8, kMaxNV = 2;
#endif

// c[r][0, NV kW) (+)= sum_p a[r ars + p aks] * b[p ldb + (0, NV kW)] for r < R,
// over ks elements of k.
template <class S, int R, int NV, class T = typename S::T>
FASTLM_INLINE void micro(int64_t ks, const T* a, int64_t ars, int64_t aks, const T* b,
                         int64_t ldb, float* c, int64_t ldc, bool acc) {
  V s[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) s[r][v] = acc ? vload(c + r * ldc + v * kW) : vzero();
  for (int64_t p = 0; p < ks; ++p) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = S::load(b + p * ldb + v * kW);
    for (int r = 0; r < R; ++r) {
      const V ar = S::bcast(a + r * ars + p * aks);
      for (int v = 0; v < NV; ++v) s[r][v] = S::madd(ar, bv[v], s[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) vstore(c + r * ldc + v * kW, s[r][v]);
}

constexpr int64_t kAll = int64_t(1) << 60;  // "no causal limit" for gemm's lo / hi

// Rows [r, r + R) of A need only k in [r + lo, r + R + hi) (clamped to [0, k)):
// under a causal mask the rest of a diagonal tile's A is zero, and skipping it
// halves the work of the products there. Callers pass lo = -kAll, hi = kAll
// for a full product. In pairs the range widens to whole pairs, whose extra
// values of A are those zeros (or the zero padding past k).
template <class S, int R, int NV, class T = typename S::T>
FASTLM_INLINE void micro_range(int64_t r, int64_t k, int64_t lo, int64_t hi, const T* a,
                               int64_t ars, int64_t aks, const T* b, int64_t ldb, float* c,
                               int64_t ldc, bool acc) {
  const int64_t p0 = imax(0, imin(k, r + lo)), p1 = imax(p0, imin(k, r + R + hi));
  const int64_t s0 = p0 / S::kPer, s1 = ceil_div(p1, S::kPer);
  micro<S, R, NV>(s1 - s0, a + r * ars + s0 * aks, ars, aks, b + s0 * ldb, ldb, c + r * ldc, ldc,
                  acc);
}

// micro_range on the column vectors [skip, NV) of an NV-vector block (the
// first skip vectors are left unwritten).
template <class S, int R, int NV, class T = typename S::T>
FASTLM_INLINE void micro_skip(int skip, int64_t r, int64_t k, int64_t lo, int64_t hi, const T* a,
                              int64_t ars, int64_t aks, const T* b, int64_t ldb, float* c,
                              int64_t ldc, bool acc) {
  if constexpr (NV > 1) {
    if (skip > 0) {
      micro_skip<S, R, NV - 1>(skip - 1, r, k, lo, hi, a, ars, aks, b + kW, ldb, c + kW, ldc, acc);
      return;
    }
  }
  micro_range<S, R, NV>(r, k, lo, hi, a, ars, aks, b, ldb, c, ldc, acc);
}

// Rows [r, r + R) of C need only the columns j >= r + cols_from: the column
// vectors wholly before that (a causal score tile's hidden part) are skipped
// and left unwritten. cols_from = -kAll for every column.
template <class S, int NV, class T = typename S::T>
void gemm_cols(int64_t m, int64_t k, int64_t lo, int64_t hi, int64_t cols_from, const T* a,
               int64_t ars, int64_t aks, const T* b, int64_t ldb, float* c, int64_t ldc,
               bool acc) {
  constexpr int R = kAcc / NV;
  auto skip = [&](int64_t r) { return (int)imax(0, imin(NV, (r + cols_from) / kW)); };
  int64_t r = 0;
  for (; r + R <= m; r += R) {
    const int s = skip(r);
    if (s < NV) micro_skip<S, R, NV>(s, r, k, lo, hi, a, ars, aks, b, ldb, c, ldc, acc);
  }
  for (; r < m; ++r) {
    const int s = skip(r);
    if (s < NV) micro_skip<S, 1, NV>(s, r, k, lo, hi, a, ars, aks, b, ldb, c, ldc, acc);
  }
}

// A (m x k) as gemm reads it: element (r, p) at p[r rs + p ks], p counting
// elements of S (pairs of k in bfloat16).
template <class T>
struct MatA {
  const T* p;
  int64_t rs, ks;
};
// B (k x columns) as gemm reads it: row p (an element of S) at p + p ld.
template <class T>
struct MatB {
  const T* p;
  int64_t ld;
  const T* row(int64_t k, int per) const { return p + k / per * ld; }  // k a multiple of per
};

// c (m x nv vectors, row stride ldc) (+)= A (m x k) times B (k x nv vectors);
// lo, hi as in micro_range, cols_from as in gemm_cols.
template <class S, class T = typename S::T>
void gemm(int64_t m, int64_t nv, int64_t k, MatA<T> a, const T* b, int64_t ldb, float* c,
          int64_t ldc, bool acc, int64_t lo = -kAll, int64_t hi = kAll,
          int64_t cols_from = -kAll) {
  for (int64_t v0 = 0; v0 < nv; v0 += kMaxNV) {
    const T* bb = b + v0 * kW;
    float* cc = c + v0 * kW;
    const int64_t cf = cols_from - v0 * kW;
    switch (imin(kMaxNV, nv - v0)) {
      case 1: gemm_cols<S, 1>(m, k, lo, hi, cf, a.p, a.rs, a.ks, bb, ldb, cc, ldc, acc); break;
      case 2: gemm_cols<S, 2>(m, k, lo, hi, cf, a.p, a.rs, a.ks, bb, ldb, cc, ldc, acc); break;
      case 3: gemm_cols<S, 3>(m, k, lo, hi, cf, a.p, a.rs, a.ks, bb, ldb, cc, ldc, acc); break;
      default: gemm_cols<S, 4>(m, k, lo, hi, cf, a.p, a.rs, a.ks, bb, ldb, cc, ldc, acc); break;
    }
  }
}

// Rows [0, n) of dim floats (row stride rs) requested into L2 ahead of use.
// The rows of q, k and v in a fused qkv buffer lie a page or more apart,
// where the hardware prefetchers stop, and each row read then waits on memory.
// With write = true the lines are requested for writing (rows to update).
void prefetch_rows(const float* src, int64_t rs, int64_t n, int64_t dim, bool write = false) {
  for (int64_t i = 0; i < n; ++i) {
    const char *p = reinterpret_cast<const char*>(src + i * rs), *end = p + dim * sizeof(float);
    for (p -= reinterpret_cast<uintptr_t>(p) % 64; p < end; p += 64) {
      if (write) __builtin_prefetch(p, 1, 2);
      else __builtin_prefetch(p, 0, 2);
    }
  }
}

// dst[d ld + i] = src[i rs + d] for i < n, d < dim; each group of kW rows is
// read while the next is prefetched.
void pack_t(const float* src, int64_t rs, int64_t n, int64_t dim, float* dst, int64_t ld) {
  prefetch_rows(src, rs, imin(kW, n), dim);
  for (int64_t i0 = 0; i0 < n; i0 += kW) {
    const int64_t ni = imin(kW, n - i0);
    if (i0 + kW < n) prefetch_rows(src + (i0 + kW) * rs, rs, imin(kW, n - i0 - kW), dim);
    for (int64_t d0 = 0; d0 < dim; d0 += kW)
      transpose_block(src + i0 * rs + d0, rs, ni, imin(kW, dim - d0), dst + d0 * ld + i0, ld, ni);
  }
}

// Zero the columns [n, ld) of a (dim x ld) matrix.
void zero_cols(float* dst, int64_t n, int64_t ld, int64_t dim) {
  if (n < ld)
    for (int64_t d = 0; d < dim; ++d) memset(dst + d * ld + n, 0, (ld - n) * sizeof(float));
}

// dst (n x dp) = src rows, the columns past dim zero.
void pack_rows(const float* src, int64_t rs, int64_t n, int64_t dim, int64_t dp, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    memcpy(dst + i * dp, src + i * rs, dim * sizeof(float));
    if (dp > dim) memset(dst + i * dp + dim, 0, (dp - dim) * sizeof(float));
  }
}

// How the products read float32 operands: in place where the layout allows.
struct F32 {
  using S = Fp32;
  using T = float;
  static constexpr bool kPairs = false;
  static FASTLM_INLINE V round(V x) { return x; }  // x as the products see it
  // n rows of dim floats (row stride rs) as an A whose k runs along the rows.
  static MatA<T> a_rows(const float* src, int64_t rs, int64_t, int64_t, T*, int64_t) {
    return {src, rs, 1};
  }
  // A tile stored k-major: element (r, p) at src[p ld + r], p < n, r < ncols.
  static MatA<T> a_cols(const float* src, int64_t ld, int64_t, int64_t, T*) { return {src, 1, ld}; }
  // n rows of dim floats (stride rs) as a B of dp columns (k along the n rows):
  // in place when dim is dp, else copied to buf, padded with zeros.
  static MatB<T> b_rows(const float* src, int64_t rs, int64_t n, int64_t dim, int64_t dp, T* buf) {
    if (dim == dp) return {src, rs};
    pack_rows(src, rs, n, dim, dp, buf);
    return {buf, dp};
  }
};

#if defined(FASTLM_ISA_AVX512BF16)
// bfloat16 operands (nearest even), converted into the caller's buffers; the
// same contracts as F32. a_rows writes rows of ceil(dim / 2) words (stride
// ldbuf), a_cols and b_rows ceil(n / 2) rows of pairs.
struct B16 {
  using S = Bf16;
  using T = uint32_t;
  static constexpr bool kPairs = true;
  static FASTLM_INLINE V round(V x) {
    const __m256i h = (__m256i)_mm512_cvtneps_pbh(x.r);
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
  }
  static MatA<T> a_rows(const float* src, int64_t rs, int64_t n, int64_t dim, T* buf,
                        int64_t ldbuf) {
    for (int64_t i = 0; i < n; ++i) contiguous_to_pairs(src + i * rs, dim, buf + i * ldbuf);
    return {buf, ldbuf, 1};
  }
  static MatA<T> a_cols(const float* src, int64_t ld, int64_t n, int64_t ncols, T* buf) {
    pair_rows(src, ld, n, ncols, buf, ld, ncols);
    return {buf, 1, ld};
  }
  static MatB<T> b_rows(const float* src, int64_t rs, int64_t n, int64_t dim, int64_t dp, T* buf) {
    pair_rows(src, rs, n, dim, buf, dp, dp);
    return {buf, dp};
  }
  static void pairs(const float* src, int64_t lds, int64_t rows, int64_t cols, T* dst,
                    int64_t ldd, int64_t width) {
    pair_rows(src, lds, rows, cols, dst, ldd, width);
  }
};
#endif

}  // namespace
}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
