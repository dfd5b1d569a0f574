// The core's multiply-add ceiling, for judging the GEMMs: float32 FMA
// (vfmadd231ps) and bfloat16 pair dot products (vdpbf16ps), 512 bits wide,
// 24 independent accumulators (as the GEMM's 12 x 32 tile), on T threads.
// Prints "fp32 <GFLOP/s>" and "bf16 <GFLOP/s>" (total over the threads; one
// vdpbf16ps lane does 2 multiply-adds = 4 flops, one FMA lane 2 flops).
// Build: c++ -O2 -fopenmp -mavx512f -mavx512bf16 peak.cpp -o peak; run: ./peak [threads]
#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace {

constexpr long kIters = 2'000'000;  // about 50 ms a run: short runs, best of many, dodge other load

template <bool kBf16>
__attribute__((noinline)) float spin(long iters, float seed) {
  __m512 acc[24];
  for (int i = 0; i < 24; ++i) acc[i] = _mm512_set1_ps(seed * (float)i);
  __m512 x = _mm512_set1_ps(seed), y = _mm512_set1_ps(1.0f - seed);
  for (long n = 0; n < iters; ++n) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; ++i) {
      if constexpr (kBf16)
        acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)x, (__m512bh)y);
      else
        acc[i] = _mm512_fmadd_ps(x, y, acc[i]);
    }
    __asm__ volatile("" : "+v"(x), "+v"(y));  // keep the operands opaque
  }
  __m512 s = acc[0];
  for (int i = 1; i < 24; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

template <bool kBf16>
double gflops(int threads) {
  double best = 1e30;
  float sink = 0;
  for (int rep = 0; rep < 30; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += spin<kBf16>(kIters, 1e-3f * (float)(omp_get_thread_num() + 1));
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s < best) best = s;
  }
  if (sink == 12345.f) std::puts("");  // the results are used
  const double flops_per_instr = kBf16 ? 16 * 4 : 16 * 2;
  return (double)kIters * 24 * flops_per_instr * threads / best / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  if (threads < 1) {
    std::fprintf(stderr, "threads must be >= 1\n");
    return 2;
  }
  std::printf("fp32 %.1f\n", gflops<false>(threads));
  std::printf("bf16 %.1f\n", gflops<true>(threads));
  return 0;
}
