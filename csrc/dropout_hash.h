// The dropout mask as a pure function of (key, element index), shared by the
// CPU and CUDA kernels: a backward regenerates the forward's mask instead of
// storing it, and a run is reproducible from its seed alone. Counter-based,
// like Philox, but a cheaper mixer: two rounds of murmur3's 32-bit finalizer
// (multiplies, shifts and xors only, so loops over elements vectorize).
//
// Everything here has internal linkage (static): each per-ISA object keeps its
// own copy, and no weak symbol compiled for one ISA can be picked for another.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FASTLM_HD __host__ __device__ __forceinline__
#else
#define FASTLM_HD inline
#endif

namespace fastlm {
namespace dropout {

// splitmix64's output function: a bijection of 64-bit words.
static FASTLM_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The key of one tensor (or one attention head) of one call: `seed` names the
// call (a training step's micro-batch), `stream` the tensor within it.
static FASTLM_HD uint64_t key(uint64_t seed, uint64_t stream) {
  return mix64(seed + mix64(stream + 0x9E3779B97F4A7C15ull));
}

static FASTLM_HD uint32_t fmix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  return x ^ (x >> 16);
}

// 32 uniform bits for element `index` under `key`.
static FASTLM_HD uint32_t bits(uint64_t key, uint64_t index) {
  const uint32_t x = fmix32((uint32_t)index ^ (uint32_t)key);
  return fmix32(x ^ ((uint32_t)(index >> 32) + (uint32_t)(key >> 32)));
}

// Elements with bits < threshold(p) are dropped: probability p to within 2^-32.
static FASTLM_HD uint32_t threshold(float p) {
  const double t = (double)p * 4294967296.0;
  return t >= 4294967295.0 ? 0xFFFFFFFFu : (uint32_t)(t + 0.5);
}

}  // namespace dropout
}  // namespace fastlm
