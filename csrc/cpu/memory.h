// Checked scratch memory for the CPU kernels. Compiled once (memory.cpp),
// outside the per-ISA namespaces: nothing here may be an inline function,
// which each ISA object would emit as its own weak copy.
#pragma once
#include <cstddef>
#include <cstdint>
#include <new>
#include <string>

#include "out_of_memory.h"

namespace fastlm {
namespace cpu {

using ::fastlm::OutOfMemory;

// The CPU table's memory entries (csrc/kernels.h): host memory, 64-byte
// aligned; upload and download are plain copies.
void* host_alloc(int64_t bytes);
void host_release(void* p);
void host_copy(void* dst, const void* src, int64_t bytes);

// n floats, 64-byte aligned (n == 0 gives a valid, empty block); throws
// OutOfMemory when n * 4 bytes overflow or cannot be had. Release with
// free_floats. Call before a parallel region, never inside one: an exception
// cannot leave an OpenMP region (it would terminate the process).
float* alloc_floats(int64_t n, const char* what);
void free_floats(float* p);

// alloc_floats owned for a scope.
class ScratchFloats {
 public:
  ScratchFloats(int64_t n, const char* what);
  ~ScratchFloats();
  ScratchFloats(const ScratchFloats&) = delete;
  ScratchFloats& operator=(const ScratchFloats&) = delete;
  float* const data;
};

// Floats per thread slice of a shared scratch block: n rounded up to whole
// 64-byte lines, so that every slice keeps the block's alignment and no two
// threads write one cache line.
int64_t per_thread_floats(int64_t n);

}  // namespace cpu
}  // namespace fastlm
