// Loops across the OpenMP team, or on the calling thread when they are small.
//
// An `omp parallel if (false)` region is not free: libgomp still ends it
// with a barrier whose last thread makes a futex system call (about 0.4 us on
// the development machine), which is the whole cost of a small kernel; one
// decoded token runs about fifty of them. So small work never enters a region.
#pragma once
#include <omp.h>

#include "cpu/dispatch.h"
#include "cpu/simd.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

// body(i) for i in [0, n), split statically over the threads when `parallel`
// (and there is more than one item and more than one thread).
template <class Body>
FASTLM_INLINE void parallel_for(int64_t n, bool parallel, const Body& body) {
  const int nt = parallel && n > 1 ? num_threads() : 1;
  if (nt > 1) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < n; ++i) body(i);
  } else {
    for (int64_t i = 0; i < n; ++i) body(i);
  }
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
