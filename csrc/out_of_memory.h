// The one out-of-memory error of fastlm's allocators (host scratch, device
// buffers): a std::bad_alloc, which pybind11 raises as MemoryError with
// what(), saying how many bytes were asked for and for what. Defined in
// csrc/cpu/memory.cpp.
#pragma once
#include <cstddef>
#include <cstdint>
#include <new>
#include <string>

namespace fastlm {

class OutOfMemory : public std::bad_alloc {
 public:
  // count elements of elem_size bytes each; `where` names the memory ("GPU
  // memory") and `reason` the allocator's own words, when it has some.
  OutOfMemory(const char* what, int64_t count, size_t elem_size, const char* where = "memory",
              const std::string& reason = "");
  const char* what() const noexcept override;

 private:
  std::string msg_;
};

}  // namespace fastlm
