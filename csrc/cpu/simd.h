// Portable float vector `V` for the per-ISA kernel sources.
//
// Every file in csrc/cpu/ except dispatch.cpp is compiled three times, with
// FASTLM_ISA set to generic (SSE2, the x86-64 baseline), avx2 (AVX2+FMA) or
// avx512 (F/BW/DQ/VL). Kernels are written once against `V` (kW lanes) and
// land in namespace fastlm::cpu::FASTLM_ISA. Everything here is inside that
// namespace so no inline function compiled with wide instructions can be
// picked by the linker for another ISA's code (an ODR leak). For the same
// reason kernel sources avoid STL templates (std::vector, std::max, ...):
// use the helpers below and plain new[]/delete[] buffers.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#ifndef FASTLM_ISA
#error "csrc/cpu sources are compiled per ISA with FASTLM_ISA set (see CMakeLists.txt)"
#endif

#define FASTLM_INLINE inline __attribute__((always_inline))

namespace fastlm {
struct Kernels;
namespace cpu {
namespace FASTLM_ISA {

const Kernels* kernel_table();

FASTLM_INLINE float fmaxs(float a, float b) { return a > b ? a : b; }
FASTLM_INLINE float fmins(float a, float b) { return a < b ? a : b; }
FASTLM_INLINE int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
FASTLM_INLINE int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
FASTLM_INLINE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
FASTLM_INLINE int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// kW lanes in the register type VReg; FASTLM_MM(add_ps) is the intrinsic of the
// ISA (_mm512_add_ps, _mm256_add_ps, _mm_add_ps), so the operations every ISA
// spells alike are written once, the others per ISA further down.
#if defined(FASTLM_ISA_AVX512)
constexpr int kW = 16;
using VReg = __m512;
#define FASTLM_MM(op) _mm512_##op
#elif defined(FASTLM_ISA_AVX2)
constexpr int kW = 8;
using VReg = __m256;
#define FASTLM_MM(op) _mm256_##op
#else  // generic: SSE2, which every x86-64 CPU has
constexpr int kW = 4;
using VReg = __m128;
#define FASTLM_MM(op) _mm_##op
#endif

struct V {
  VReg r;
};
FASTLM_INLINE V vzero() { return {FASTLM_MM(setzero_ps)()}; }
FASTLM_INLINE V vset(float x) { return {FASTLM_MM(set1_ps)(x)}; }
FASTLM_INLINE V vload(const float* p) { return {FASTLM_MM(loadu_ps)(p)}; }
FASTLM_INLINE void vstore(float* p, V a) { FASTLM_MM(storeu_ps)(p, a.r); }
FASTLM_INLINE V operator+(V a, V b) { return {FASTLM_MM(add_ps)(a.r, b.r)}; }
FASTLM_INLINE V operator-(V a, V b) { return {FASTLM_MM(sub_ps)(a.r, b.r)}; }
FASTLM_INLINE V operator*(V a, V b) { return {FASTLM_MM(mul_ps)(a.r, b.r)}; }
FASTLM_INLINE V operator/(V a, V b) { return {FASTLM_MM(div_ps)(a.r, b.r)}; }
FASTLM_INLINE V vmax(V a, V b) { return {FASTLM_MM(max_ps)(a.r, b.r)}; }
FASTLM_INLINE V vmin(V a, V b) { return {FASTLM_MM(min_ps)(a.r, b.r)}; }
FASTLM_INLINE V vsqrt(V a) { return {FASTLM_MM(sqrt_ps)(a.r)}; }
FASTLM_INLINE V vcopysign(V mag, V sign) {
  const VReg s = FASTLM_MM(set1_ps)(-0.f);
  return {FASTLM_MM(or_ps)(FASTLM_MM(and_ps)(sign.r, s), FASTLM_MM(andnot_ps)(s, mag.r))};
}

#if defined(FASTLM_ISA_AVX512) || defined(FASTLM_ISA_AVX2)
// vtranspose's first two steps, within each 128-bit lane: pairs of rows
// interleaved (t), then u[4i + j], lane L: column 4L + j of rows 4i .. 4i+3.
FASTLM_INLINE void vtranspose_in_lanes(const V* r, VReg* u) {
  VReg t[kW];
  for (int i = 0; i < kW / 2; ++i) {
    t[2 * i] = FASTLM_MM(unpacklo_ps)(r[2 * i].r, r[2 * i + 1].r);
    t[2 * i + 1] = FASTLM_MM(unpackhi_ps)(r[2 * i].r, r[2 * i + 1].r);
  }
  for (int i = 0; i < kW / 4; ++i) {
    u[4 * i] = FASTLM_MM(shuffle_ps)(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = FASTLM_MM(shuffle_ps)(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = FASTLM_MM(shuffle_ps)(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = FASTLM_MM(shuffle_ps)(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
}
#endif

#if defined(FASTLM_ISA_AVX512)
FASTLM_INLINE __mmask16 tail_mask(int64_t n) { return (__mmask16)((1u << n) - 1u); }
// Lanes past n read as `fill` and are never touched in memory.
FASTLM_INLINE V vload_part(const float* p, int64_t n, float fill = 0.f) {
  return {_mm512_mask_loadu_ps(_mm512_set1_ps(fill), tail_mask(n), p)};
}
FASTLM_INLINE void vstore_part(float* p, V a, int64_t n) {
  _mm512_mask_storeu_ps(p, tail_mask(n), a.r);
}
FASTLM_INLINE V vfma(V a, V b, V c) { return {_mm512_fmadd_ps(a.r, b.r, c.r)}; }  // a*b+c
FASTLM_INLINE V vfnma(V a, V b, V c) { return {_mm512_fnmadd_ps(a.r, b.r, c.r)}; }  // c-a*b
FASTLM_INLINE float vsum(V a) { return _mm512_reduce_add_ps(a.r); }
FASTLM_INLINE float vhmax(V a) { return _mm512_reduce_max_ps(a.r); }
FASTLM_INLINE V vround(V a) {
  return {_mm512_roundscale_ps(a.r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
}
// 2^n for integral-valued n in [-126, 127].
FASTLM_INLINE V vpow2i(V n) {
  __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n.r), _mm512_set1_epi32(127));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(e, 23))};
}
// a < b ? if_lt : otherwise, lane by lane
FASTLM_INLINE V vblend_lt(V a, V b, V if_lt, V otherwise) {
  return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.r, b.r, _CMP_LT_OQ), otherwise.r, if_lt.r)};
}
// The kW x kW matrix in r[0..kW) (r[i] = row i) transposed in place.
FASTLM_INLINE void vtranspose(V* r) {
  __m512 u[16];
  vtranspose_in_lanes(r, u);
  for (int j = 0; j < 4; ++j) {  // gather lane L of u[j], u[4+j], u[8+j], u[12+j]
    const __m512 even01 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);
    const __m512 odd01 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);
    const __m512 even23 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    const __m512 odd23 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
    r[j].r = _mm512_shuffle_f32x4(even01, even23, 0x88);
    r[4 + j].r = _mm512_shuffle_f32x4(odd01, odd23, 0x88);
    r[8 + j].r = _mm512_shuffle_f32x4(even01, even23, 0xDD);
    r[12 + j].r = _mm512_shuffle_f32x4(odd01, odd23, 0xDD);
  }
}

#elif defined(FASTLM_ISA_AVX2)
FASTLM_INLINE __m256i tail_mask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
FASTLM_INLINE V vload_part(const float* p, int64_t n, float fill = 0.f) {
  __m256i m = tail_mask(n);
  return {_mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m))};
}
FASTLM_INLINE void vstore_part(float* p, V a, int64_t n) { _mm256_maskstore_ps(p, tail_mask(n), a.r); }
FASTLM_INLINE V vfma(V a, V b, V c) { return {_mm256_fmadd_ps(a.r, b.r, c.r)}; }
FASTLM_INLINE V vfnma(V a, V b, V c) { return {_mm256_fnmadd_ps(a.r, b.r, c.r)}; }
FASTLM_INLINE float vsum(V a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.r), _mm256_extractf128_ps(a.r, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
FASTLM_INLINE float vhmax(V a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a.r), _mm256_extractf128_ps(a.r, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
FASTLM_INLINE V vround(V a) { return {_mm256_round_ps(a.r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
FASTLM_INLINE V vpow2i(V n) {
  __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n.r), _mm256_set1_epi32(127));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(e, 23))};
}
FASTLM_INLINE V vblend_lt(V a, V b, V if_lt, V otherwise) {
  return {_mm256_blendv_ps(otherwise.r, if_lt.r, _mm256_cmp_ps(a.r, b.r, _CMP_LT_OQ))};
}
// The kW x kW matrix in r[0..kW) (r[i] = row i) transposed in place.
FASTLM_INLINE void vtranspose(V* r) {
  __m256 u[8];
  vtranspose_in_lanes(r, u);
  for (int j = 0; j < 4; ++j) {
    r[j].r = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    r[4 + j].r = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}

#else  // generic: SSE2, which every x86-64 CPU has
FASTLM_INLINE V vload_part(const float* p, int64_t n, float fill = 0.f) {
  alignas(16) float t[4] = {fill, fill, fill, fill};
  for (int64_t i = 0; i < n; ++i) t[i] = p[i];
  return {_mm_load_ps(t)};
}
FASTLM_INLINE void vstore_part(float* p, V a, int64_t n) {
  alignas(16) float t[4];
  _mm_store_ps(t, a.r);
  for (int64_t i = 0; i < n; ++i) p[i] = t[i];
}
// No FMA in the baseline: separate multiply and add (rounded twice).
FASTLM_INLINE V vfma(V a, V b, V c) { return {_mm_add_ps(_mm_mul_ps(a.r, b.r), c.r)}; }
FASTLM_INLINE V vfnma(V a, V b, V c) { return {_mm_sub_ps(c.r, _mm_mul_ps(a.r, b.r))}; }
FASTLM_INLINE float vsum(V a) {
  __m128 s = _mm_add_ps(a.r, _mm_movehl_ps(a.r, a.r));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
FASTLM_INLINE float vhmax(V a) {
  __m128 s = _mm_max_ps(a.r, _mm_movehl_ps(a.r, a.r));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
FASTLM_INLINE V vround(V a) {  // |a| < 2^22 here, so the magic-number trick rounds to nearest
  const __m128 magic = _mm_set1_ps(12582912.f);  // 1.5 * 2^23
  return {_mm_sub_ps(_mm_add_ps(a.r, magic), magic)};
}
FASTLM_INLINE V vpow2i(V n) {
  __m128i e = _mm_add_epi32(_mm_cvtps_epi32(n.r), _mm_set1_epi32(127));
  return {_mm_castsi128_ps(_mm_slli_epi32(e, 23))};
}
FASTLM_INLINE V vblend_lt(V a, V b, V if_lt, V otherwise) {
  __m128 m = _mm_cmplt_ps(a.r, b.r);
  return {_mm_or_ps(_mm_and_ps(m, if_lt.r), _mm_andnot_ps(m, otherwise.r))};
}
// The kW x kW matrix in r[0..kW) (r[i] = row i) transposed in place.
FASTLM_INLINE void vtranspose(V* r) { _MM_TRANSPOSE4_PS(r[0].r, r[1].r, r[2].r, r[3].r); }
#endif

// dst[d * ld + i] = src[i * rs + d] for i < ni, d < nd (ni, nd <= kW): one
// block through vtranspose. Each of the nd rows written is `width` floats
// (<= kW), zero from ni on.
FASTLM_INLINE void transpose_block(const float* src, int64_t rs, int64_t ni, int64_t nd,
                                   float* dst, int64_t ld, int64_t width) {
  V r[kW];
  for (int i = 0; i < kW; ++i) r[i] = i < ni ? vload_part(src + i * rs, nd) : vzero();
  vtranspose(r);
  for (int64_t d = 0; d < nd; ++d) {
    if (width == kW) vstore(dst + d * ld, r[d]);
    else vstore_part(dst + d * ld, r[d], width);
  }
}

// One k step of a register-blocked product in float32: one value per element,
// FMA (matmul.cpp and attention.cpp; matmul_bf16.h's Bf16 is the bfloat16 step).
struct Fp32 {
  using T = float;
  static constexpr int kPer = 1;  // k values per element
  static FASTLM_INLINE V load(const float* p) { return vload(p); }
  static FASTLM_INLINE V bcast(const float* p) { return vset(*p); }
  static FASTLM_INLINE V madd(V a, V b, V c) { return vfma(a, b, c); }
};

// exp(x), relative error ~2 ulp; exactly 0 below -87.33 (and for -inf); NaN stays NaN.
FASTLM_INLINE V vexp(V x) {
  const V lo = vset(-87.33654f);
  V xc = vmin(vset(88.37626f), vmax(lo, x));  // operand order keeps NaN
  V n = vround(xc * vset(1.44269504088896341f));
  V r = vfnma(n, vset(0.693359375f), xc);  // ln2 split in two: exact reduction
  r = vfnma(n, vset(-2.12194440e-4f), r);
  // e^r on [-ln2/2, ln2/2] (Cephes expf polynomial)
  V p = vset(1.9875691500e-4f);
  p = vfma(p, r, vset(1.3981999507e-3f));
  p = vfma(p, r, vset(8.3334519073e-3f));
  p = vfma(p, r, vset(4.1665795894e-2f));
  p = vfma(p, r, vset(1.6666665459e-1f));
  p = vfma(p, r, vset(5.0000001201e-1f));
  p = vfma(p * r, r, r) + vset(1.f);
  return vblend_lt(x, lo, vzero(), p * vpow2i(n));
}

FASTLM_INLINE V vsigmoid(V x) { return vset(1.f) / (vset(1.f) + vexp(vzero() - x)); }

// tanh: an odd polynomial for |x| < 0.625 (Cephes tanhf), else
// 1 - 2 / (exp(2|x|) + 1), which cannot overflow; the sign restored last.
FASTLM_INLINE V vtanh(V x) {
  V ax = vmax(x, vzero() - x);
  V big = vset(1.f) - vset(2.f) / (vexp(ax + ax) + vset(1.f));
  V z = x * x;
  V p = vset(-5.70498872745e-3f);
  p = vfma(p, z, vset(2.06390887954e-2f));
  p = vfma(p, z, vset(-5.37397155531e-2f));
  p = vfma(p, z, vset(1.33314422036e-1f));
  p = vfma(p, z, vset(-3.33332819422e-1f));
  V small = vfma(p * z, ax, ax);
  return vcopysign(vblend_lt(ax, vset(0.625f), small, big), x);
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm

#undef FASTLM_MM
