// Picks one CPU kernel table at import: cpuid says what the CPU implements,
// xgetbv whether the OS saves the wider registers on a context switch.
#include "cpu/dispatch.h"

#include <cpuid.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>

namespace fastlm {
namespace cpu {
namespace generic { const Kernels* kernel_table(); }
namespace avx2 { const Kernels* kernel_table(); }
namespace avx512 { const Kernels* kernel_table(); }
namespace avx512bf16 {
const Kernels* kernel_table();
const Kernels* mixed_table();
}  // namespace avx512bf16

namespace {

uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}

struct CpuFeatures {
  bool avx2 = false, avx512 = false, avx512bf16 = false;
};

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12),
             f16c = c & (1u << 29);
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = xgetbv0();
  const bool ymm_state = (xcr0 & 0x6) == 0x6;            // SSE + AVX state
  const bool zmm_state = (xcr0 & 0xe6) == 0xe6;          // + opmask, ZMM_Hi256, Hi16_ZMM
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5);
  const bool avx512 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) && (b & (1u << 31));
  f.avx2 = ymm_state && avx2 && fma && f16c;
  f.avx512 = f.avx2 && zmm_state && avx512;  // F, DQ, BW, VL
  if (f.avx512 && a >= 1) {  // leaf 7's subleaf count is in EAX of subleaf 0
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512bf16 = a & (1u << 5);  // vdpbf16ps, vcvtne2ps2bf16
  }
  return f;
}

const char* const kExpected = "expected generic, avx2, avx512 or avx512bf16";

const Kernels* table_for(const std::string& name) {
  const CpuFeatures f = detect();
  if (name == "generic") return generic::kernel_table();
  if (name == "avx2") return f.avx2 ? avx2::kernel_table() : nullptr;
  if (name == "avx512") return f.avx512 ? avx512::kernel_table() : nullptr;
  if (name == "avx512bf16") return f.avx512bf16 ? avx512bf16::kernel_table() : nullptr;
  throw std::invalid_argument("unknown CPU ISA '" + name + "': " + kExpected);
}

// The variable's value for a message: bytes outside printable ASCII as \xNN
// (the message becomes a Python str, which must be valid UTF-8).
std::string printable(const char* s) {
  std::string out;
  for (; *s; ++s) {
    const unsigned char c = (unsigned char)*s;
    if (c >= 0x20 && c < 0x7f) {
      out += (char)c;
    } else {
      const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

const Kernels* initial_table() {
  const char* forced = std::getenv("FASTLM_CPU_ISA");
  if (forced && *forced) {
    const std::string shown = std::string("FASTLM_CPU_ISA='") + printable(forced) + "'";
    const Kernels* t = nullptr;
    try {
      t = table_for(forced);
    } catch (const std::invalid_argument&) {  // its message would show the raw bytes
      throw std::invalid_argument(shown + ": unknown CPU ISA, " + kExpected);
    }
    if (!t) throw std::invalid_argument(shown + ": this CPU (or its OS) cannot run that ISA");
    return t;
  }
  const std::vector<std::string> isas = available_isas();
  return table_for(isas.back());
}

std::atomic<const Kernels*> g_table{nullptr};

}  // namespace

std::vector<std::string> available_isas() {
  const CpuFeatures f = detect();
  std::vector<std::string> out = {"generic"};
  if (f.avx2) out.push_back("avx2");
  if (f.avx512) out.push_back("avx512");
  if (f.avx512bf16) out.push_back("avx512bf16");
  return out;
}

const Kernels& kernels() {
  const Kernels* t = g_table.load(std::memory_order_acquire);
  if (!t) {
    t = initial_table();
    g_table.store(t, std::memory_order_release);
  }
  return *t;
}

void set_isa(const std::string& name) {
  const Kernels* t = table_for(name);
  if (!t) throw std::invalid_argument("this CPU (or its OS) cannot run ISA '" + name + "'");
  g_table.store(t, std::memory_order_release);
}

const Kernels& kernels_for(GemmPrecision precision) {
  const Kernels& k = kernels();
  if (precision != GemmPrecision::kBF16) return k;
  if (k.name != std::string("avx512bf16"))
    throw std::invalid_argument(std::string("precision 'bf16' needs the avx512bf16 CPU ISA "
                                            "(AVX512_BF16); the active CPU ISA is '") + k.name + "'");
  return *avx512bf16::mixed_table();
}

namespace {
std::atomic<int> g_threads{0};  // 0: not read from OpenMP's default yet
}  // namespace

int num_threads() {
  int n = g_threads.load(std::memory_order_relaxed);
  if (n == 0) {
    const int dflt = std::min(std::max(omp_get_max_threads(), 1), kMaxThreads);
    g_threads.compare_exchange_strong(n, dflt);  // leaves n as the value now stored
    n = g_threads.load(std::memory_order_relaxed);
  }
  return n;
}

void set_num_threads(int n) {
  if (n < 1 || n > kMaxThreads)
    throw std::invalid_argument("num_threads must be in [1, " + std::to_string(kMaxThreads) + "], got " +
                                std::to_string(n));
  g_threads.store(n, std::memory_order_relaxed);
}

}  // namespace cpu
}  // namespace fastlm
