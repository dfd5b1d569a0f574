// Picks one CPU kernel table at import: cpuid says what the CPU implements,
// xgetbv whether the OS saves the wider registers on a context switch.
#include "cpu/dispatch.h"

#include "cpu/amx.h"

#include <cpuid.h>
#include <omp.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace fastlm {
namespace cpu {
namespace generic { const Kernels* kernel_table(); }
namespace avx2 { const Kernels* kernel_table(); }
namespace avx512 { const Kernels* kernel_table(); }
namespace avx512bf16 {
const Kernels* kernel_table();
const Kernels* mixed_table();
const Kernels* bf16_products_table();
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

namespace {

bool detect_amx() {
  if (!detect().avx512bf16 || __get_cpuid_max(0, nullptr) < 7) return false;
  unsigned a, b, c, d;
  __cpuid_count(7, 0, a, b, c, d);
  const bool tile = d & (1u << 24), bf16 = d & (1u << 22);
  const bool tile_state = (xgetbv0() & 0x60000) == 0x60000;  // XTILECFG, XTILEDATA
  if (!tile || !bf16 || !tile_state) return false;
  // Linux hands out the 8 KB of tile data per process on request.
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
}

std::atomic<int> g_amx{-1};  // -1: not decided yet

}  // namespace

bool amx_available() {
  static const bool available = detect_amx();
  return available;
}

bool amx_enabled() {
  int on = g_amx.load(std::memory_order_acquire);
  if (on < 0) {
    const char* env = std::getenv("FASTLM_CPU_AMX");
    on = amx_available() && !(env && std::string(env) == "0");
    g_amx.store(on, std::memory_order_release);
  }
  return on;
}

void set_amx(bool on) {
  if (on && !amx_available())
    throw std::invalid_argument("this CPU (or its OS) offers no AMX-BF16 tiles");
  g_amx.store(on, std::memory_order_release);
}

const Kernels& kernels_for(GemmPrecision precision, bool bf16_attention) {
  const Kernels& k = kernels();
  if (precision != GemmPrecision::kBF16) return k;
  if (k.name != std::string("avx512bf16"))
    throw std::invalid_argument(std::string("precision 'bf16' needs the avx512bf16 CPU ISA "
                                            "(AVX512_BF16); the active CPU ISA is '") + k.name + "'");
  return bf16_attention ? *avx512bf16::bf16_products_table() : *avx512bf16::mixed_table();
}

namespace {

std::atomic<int> g_threads{0};  // 0: not read from OpenMP's default yet
// Whether libgomp may have started worker threads (a count above one was
// handed out), and whether this process is a child forked after that.
std::atomic<bool> g_team_started{false};
std::atomic<bool> g_forked_child{false};

// libgomp's workers do not survive fork(): a child that enters a parallel
// region with more than one thread waits forever for them. So a child forked
// after the team started runs the kernels on one thread (regions of one
// thread never touch the worker pool). pthread_atfork covers os.fork,
// multiprocessing's fork start method and any fork from C.
pthread_mutex_t g_team_lock = PTHREAD_MUTEX_INITIALIZER;  // guards g_team_ready (start_team)

void after_fork_in_child() {
  // Only the forking thread lives on: a lock another thread held is free.
  g_team_lock = PTHREAD_MUTEX_INITIALIZER;
  if (g_team_started.load(std::memory_order_relaxed)) {
    g_forked_child.store(true, std::memory_order_relaxed);
    g_threads.store(1, std::memory_order_relaxed);
  }
}

struct ForkHandler {
  ForkHandler() { pthread_atfork(nullptr, nullptr, after_fork_in_child); }
} g_fork_handler;

// libgomp ends the process ("Thread creation failed") when it cannot start
// a worker. Before a team of n is asked for, n - 1 threads with the default
// attributes (stack size included, as libgomp's) are started and held at once:
// if the system refuses one, the caller gets an exception instead. Then the
// team itself is started, so that it is made under the conditions just tried.
int g_team_ready = 1;  // the largest team started so far

struct Probe {
  pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
  pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
  bool go = false;
};

void* probe_thread(void* arg) {
  Probe* p = static_cast<Probe*>(arg);
  pthread_mutex_lock(&p->m);
  while (!p->go) pthread_cond_wait(&p->cv, &p->m);
  pthread_mutex_unlock(&p->m);
  return nullptr;
}

struct TeamLock {
  TeamLock() { pthread_mutex_lock(&g_team_lock); }
  ~TeamLock() { pthread_mutex_unlock(&g_team_lock); }
};

void start_team(int n) {
  TeamLock lock;
  if (n <= g_team_ready) return;
  Probe probe;
  std::vector<pthread_t> ids(n - 1);
  int started = 0, err = 0;
  pthread_mutex_lock(&probe.m);  // holds the probes until all exist
  for (; started < n - 1; ++started) {
    err = pthread_create(&ids[started], nullptr, probe_thread, &probe);
    if (err) break;
  }
  probe.go = true;
  pthread_cond_broadcast(&probe.cv);
  pthread_mutex_unlock(&probe.m);
  for (int i = 0; i < started; ++i) pthread_join(ids[i], nullptr);
  pthread_cond_destroy(&probe.cv);
  pthread_mutex_destroy(&probe.m);
  if (err)
    throw std::runtime_error("set_num_threads(" + std::to_string(n) + "): the system refused thread " +
                             std::to_string(started + 1) + " of " + std::to_string(n - 1) + " (" +
                             std::strerror(err) + "); the thread count stays " +
                             std::to_string(num_threads()));
  g_team_started.store(true, std::memory_order_relaxed);
  int seen = 0;
#pragma omp parallel num_threads(n)
  {
#pragma omp master
    seen = omp_get_num_threads();
  }
  g_team_ready = seen > g_team_ready ? seen : g_team_ready;
}

}  // namespace

int num_threads() {
  int n = g_threads.load(std::memory_order_relaxed);
  if (n == 0) {
    const int dflt = std::min(std::max(omp_get_max_threads(), 1), kMaxThreads);
    g_threads.compare_exchange_strong(n, dflt);  // leaves n as the value now stored
    n = g_threads.load(std::memory_order_relaxed);
  }
  if (n > 1 && !g_team_started.load(std::memory_order_relaxed))
    g_team_started.store(true, std::memory_order_relaxed);
  return n;
}

void set_num_threads(int n) {
  if (n < 1 || n > kMaxThreads)
    throw std::invalid_argument("num_threads must be in [1, " + std::to_string(kMaxThreads) + "], got " +
                                std::to_string(n));
  if (n > 1 && g_forked_child.load(std::memory_order_relaxed))
    throw std::runtime_error(
        "set_num_threads(" + std::to_string(n) +
        "): this process was forked after its kernel threads started, and OpenMP cannot start "
        "them again in a forked child; it runs the kernels on one thread (start worker processes "
        "with the 'spawn' or 'forkserver' method to use more)");
  start_team(n);
  g_threads.store(n, std::memory_order_relaxed);
}

}  // namespace cpu
}  // namespace fastlm
