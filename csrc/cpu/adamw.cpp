#include "cpu/cpu_kernels.h"
namespace fastlm { namespace cpu { namespace FASTLM_ISA {
void adamw(float*, const float*, float*, float*, int64_t, const AdamWArgs&) {}
}}}
