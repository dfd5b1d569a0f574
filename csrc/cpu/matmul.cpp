#include "cpu/cpu_kernels.h"
namespace fastlm { namespace cpu { namespace FASTLM_ISA {
void matmul(const GemmArgs&) {}
}}}
