#include "cpu/memory.h"

#include <cstdlib>
#include <cstring>
#include <limits>

namespace fastlm {
namespace cpu {

}  // namespace cpu

OutOfMemory::OutOfMemory(const char* what, int64_t count, size_t elem_size, const char* where,
                         const std::string& reason) {
  const long double bytes = (long double)count * elem_size;
  msg_ = std::string("out of ") + where + ": could not allocate " +
         (bytes < 1e18L ? std::to_string((unsigned long long)bytes) : std::to_string((double)bytes)) +
         " bytes (" + std::to_string(count) + " x " + std::to_string(elem_size) + ") for " + what +
         (reason.empty() ? "" : " (" + reason + ")");
}

const char* OutOfMemory::what() const noexcept { return msg_.c_str(); }

namespace cpu {

void* host_alloc(int64_t bytes) {
  if (bytes == 0) return nullptr;
  return alloc_floats((bytes + 3) / 4, "a model buffer");
}

void host_release(void* p) { free_floats(static_cast<float*>(p)); }

void host_copy(void* dst, const void* src, int64_t bytes) {
  if (bytes > 0) std::memcpy(dst, src, (size_t)bytes);
}

float* alloc_floats(int64_t n, const char* what) {
  constexpr int64_t kLine = 64;
  constexpr int64_t kMax = (std::numeric_limits<int64_t>::max() - kLine) / (int64_t)sizeof(float);
  if (n < 0 || n > kMax) throw OutOfMemory(what, n, sizeof(float));
  // aligned_alloc wants a multiple of the alignment, and may return NULL for 0.
  const int64_t bytes = ((n * (int64_t)sizeof(float) + kLine - 1) / kLine) * kLine;
  void* p = std::aligned_alloc(kLine, bytes ? (size_t)bytes : (size_t)kLine);
  if (!p) throw OutOfMemory(what, n, sizeof(float));
  return static_cast<float*>(p);
}

void free_floats(float* p) { std::free(p); }

ScratchFloats::ScratchFloats(int64_t n, const char* what) : data(alloc_floats(n, what)) {}
ScratchFloats::~ScratchFloats() { free_floats(data); }

int64_t per_thread_floats(int64_t n) {
  constexpr int64_t kLineFloats = 64 / sizeof(float);
  return (n + kLineFloats - 1) / kLineFloats * kLineFloats;
}

}  // namespace cpu
}  // namespace fastlm
