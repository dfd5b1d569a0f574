#include "cpu/cpu_kernels.h"
namespace fastlm { namespace cpu { namespace FASTLM_ISA {
float cross_entropy(const float*, const int64_t*, float*, int64_t, int64_t, int64_t, float) { return 0.f; }
}}}
