// The core's multiply-add ceiling, for judging the GEMMs: float32 FMA
// (vfmadd231ps) and bfloat16 pair dot products (vdpbf16ps), 512 bits wide,
// 24 independent accumulators (as the GEMM's 12 x 32 tile), on T threads.
// Prints "fp32 <GFLOP/s>" and "bf16 <GFLOP/s>" (total over the threads; one
// vdpbf16ps lane does 2 multiply-adds = 4 flops, one FMA lane 2 flops), and
// where the CPU and OS offer AMX tiles "amx <GFLOP/s>": the AMX GEMM's inner
// loop (four 16 x 16 float32 tiles, two A and two B tiles loaded a k step,
// from a 16 KB L1-resident block), one TDPBF16PS being 16 x 16 x 32 multiply-adds.
// Build: c++ -O2 -fopenmp -mavx512f -mavx512bf16 -mamx-tile -mamx-bf16 peak.cpp -o peak;
// run: ./peak [threads]
#include <cpuid.h>
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

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

// cpuid's AMX-TILE and AMX-BF16, then Linux's permission for the tile data.
bool amx_usable() {
  unsigned a, b, c, d;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 0, a, b, c, d);
  if (!(d & (1u << 24)) || !(d & (1u << 22))) return false;
  return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
}

struct alignas(64) TileConfig {
  unsigned char palette = 1, start_row = 0, reserved[14] = {};
  unsigned short colsb[16] = {};
  unsigned char rows[16] = {};
};

__attribute__((noinline)) float amx_spin(long iters) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.colsb[t] = 64, cfg.rows[t] = 16;
  _tile_loadconfig(&cfg);
  alignas(64) static thread_local unsigned short buf[8192];  // 16 KB of bfloat16 ones
  for (unsigned short& x : buf) x = 0x3f80;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (long n = 0; n < iters; ++n) {
    const unsigned short* a = buf + (n & 3) * 1024;  // 2 KB of A, 2 KB of B a step
    const unsigned short* b = buf + 4096 + (n & 3) * 1024;
    _tile_loadd(4, a, 64);
    _tile_loadd(6, b, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b + 512, 64);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, a + 512, 64);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float out[256];
  _tile_stored(0, out, 64);
  _tile_release();
  return out[0];
}

double amx_gflops(int threads) {
  constexpr long kSteps = 200'000;
  double best = 1e30;
  float sink = 0;
  for (int rep = 0; rep < 30; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += amx_spin(kSteps);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s < best) best = s;
  }
  if (sink == 12345.f) std::puts("");
  return (double)kSteps * 4 * (16 * 16 * 32 * 2) * threads / best / 1e9;
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
  if (amx_usable()) std::printf("amx %.1f\n", amx_gflops(threads));
  return 0;
}
