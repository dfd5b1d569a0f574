#include "cpu/cpu_kernels.h"
namespace fastlm { namespace cpu { namespace FASTLM_ISA {
void layernorm_forward(const float*, const float*, const float*, float*, float*, float*, int64_t, int64_t, float) {}
void layernorm_backward(const float*, const float*, const float*, const float*, const float*, float*, float*, float*, int64_t, int64_t) {}
}}}
