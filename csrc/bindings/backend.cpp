#include "bindings/backend.h"

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>

#include "bindings/arrays.h"
#include "cpu/dispatch.h"
#include "cpu/memory.h"
#if defined(FASTLM_WITH_CUDA) && FASTLM_WITH_CUDA
#include "cuda/cuda_kernels.h"
#include "cuda/runtime.h"
#endif

namespace fastlm {
namespace bindings {

namespace {

// ---- The emulated device's memory -----------------------------------------
// Host blocks that the emulated table calls device memory. Each one is
// registered, and every upload and download checks that its device side lies
// inside a live block and its host side does not: passing a host pointer
// where device memory belongs (or the reverse) throws, as it would fault on
// a GPU. New blocks are filled with 0xFF bytes (float NaN), as cudaMalloc's
// memory is not zeroed either: code that reads what it never wrote shows.
struct EmulatedMemory {
  std::mutex mu;
  std::map<uintptr_t, int64_t> blocks;  // start -> bytes

  bool inside(const void* p, int64_t bytes) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = blocks.upper_bound(a);
    if (it == blocks.begin()) return false;
    --it;
    return a + (uintptr_t)bytes <= it->first + (uintptr_t)it->second;
  }
};

EmulatedMemory& emulated() {
  static EmulatedMemory* m = new EmulatedMemory;  // outlives every model
  return *m;
}

void* emulated_alloc(int64_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = cpu::host_alloc(bytes);
  std::memset(p, 0xFF, (size_t)bytes);
  EmulatedMemory& m = emulated();
  std::lock_guard<std::mutex> lock(m.mu);
  m.blocks[reinterpret_cast<uintptr_t>(p)] = bytes;
  return p;
}

void emulated_release(void* p) {
  if (!p) return;
  EmulatedMemory& m = emulated();
  {
    std::lock_guard<std::mutex> lock(m.mu);
    m.blocks.erase(reinterpret_cast<uintptr_t>(p));
  }
  cpu::host_release(p);
}

void emulated_check(const void* device, const void* host, int64_t bytes, const char* what) {
  if (bytes == 0) return;
  EmulatedMemory& m = emulated();
  std::lock_guard<std::mutex> lock(m.mu);
  if (!m.inside(device, bytes))
    throw std::logic_error(std::string("emulated CUDA device: ") + what +
                           " of " + std::to_string(bytes) +
                           " bytes names device memory the device never allocated");
  if (m.inside(host, 1))
    throw std::logic_error(std::string("emulated CUDA device: ") + what +
                           " names device memory as its host side");
}

void emulated_upload(void* dst, const void* src, int64_t bytes) {
  emulated_check(dst, src, bytes, "upload");
  cpu::host_copy(dst, src, bytes);
}

void emulated_download(void* dst, const void* src, int64_t bytes) {
  emulated_check(src, dst, bytes, "download");
  cpu::host_copy(dst, src, bytes);
}

// The emulated table of a CPU table: its kernels, the emulated memory.
const Kernels& emulated_table(const Kernels& cpu) {
  static std::mutex mu;
  static std::map<const Kernels*, std::unique_ptr<Kernels>> tables;
  std::lock_guard<std::mutex> lock(mu);
  std::unique_ptr<Kernels>& t = tables[&cpu];
  if (!t) {
    t.reset(new Kernels(cpu));
    t->name = "cuda-emulated";
    t->device = "cuda";
    t->alloc = emulated_alloc, t->release = emulated_release;
    t->upload = emulated_upload, t->download = emulated_download;
  }
  return *t;
}

GemmPrecision parse_precision(const char* op, const std::string& device,
                              const std::string& precision) {
  if (precision == "fp32") return GemmPrecision::kExact;
  if (precision == "bf16") return GemmPrecision::kBF16;
  if (precision == "tf32") {
    if (device != "cuda")
      value_error(op, "precision 'tf32' is for device='cuda' (the CPU has no TF32 arithmetic)");
    return GemmPrecision::kTF32;
  }
  value_error(op, "precision must be 'fp32', 'bf16' or 'tf32', got '" + precision + "'");
}

// The CPU table for a precision (TF32 computes exact float32 on the CPU).
const Kernels& cpu_table(const char* op, GemmPrecision p) {
  if (p != GemmPrecision::kBF16) return cpu::kernels();
  try {
    return cpu::kernels_for(GemmPrecision::kBF16);
  } catch (const std::invalid_argument& e) {
    value_error(op, e.what());
  }
}

}  // namespace

bool emulated_owns(const void* p, int64_t bytes) {
  EmulatedMemory& m = emulated();
  std::lock_guard<std::mutex> lock(m.mu);
  return m.inside(p, bytes);
}

const Kernels& backend_for(const char* op, Device device) {
  switch (device) {
    case Device::kCpu: return cpu::kernels();
    case Device::kEmulated: return emulated_table(cpu::kernels());
    case Device::kCuda: break;
  }
#if defined(FASTLM_WITH_CUDA) && FASTLM_WITH_CUDA
  cuda::require();
  return *cuda::kernel_table(GemmPrecision::kExact);
#else
  throw std::runtime_error(std::string(op) +
                           ": device 'cuda': CUDA is not compiled into this fastlm build");
#endif
}

bool cuda_emulated() {
  const char* v = std::getenv("FASTLM_EMULATE_CUDA");
  return v && std::strcmp(v, "1") == 0;
}

const Kernels& model_backend(const char* op, const std::string& device,
                             const std::string& precision) {
  if (device != "cpu" && device != "cuda")
    value_error(op, "device must be 'cpu' or 'cuda', got '" + device + "'");
  const GemmPrecision p = parse_precision(op, device, precision);
  if (device == "cpu") return cpu_table(op, p);
  if (cuda_emulated()) return emulated_table(cpu_table(op, p));
#if defined(FASTLM_WITH_CUDA) && FASTLM_WITH_CUDA
  cuda::require();
  return *cuda::kernel_table(p);
#else
  throw std::runtime_error(std::string(op) +
                           ": device 'cuda': CUDA is not compiled into this fastlm build");
#endif
}

}  // namespace bindings
}  // namespace fastlm
