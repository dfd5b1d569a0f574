#include "cpu/cpu_kernels.h"
namespace fastlm { namespace cpu { namespace FASTLM_ISA {
void softmax_forward(const float*, float*, int64_t, int64_t) {}
void softmax_backward(const float*, const float*, float*, int64_t, int64_t) {}
}}}
