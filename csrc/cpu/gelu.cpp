#include "cpu/cpu_kernels.h"
namespace fastlm { namespace cpu { namespace FASTLM_ISA {
void gelu_forward(const float*, float*, int64_t) {}
void gelu_backward(const float*, const float*, float*, int64_t) {}
}}}
