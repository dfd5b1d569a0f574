// Intel AMX tiles (AMX-TILE + AMX-BF16: Sapphire Rapids and later) for the
// bfloat16 GEMM of the avx512bf16 table. One TDPBF16PS multiplies a 16 x 32
// bfloat16 tile by a 32 x 16 one into 16 x 16 float32 sums: 16 times the
// multiply-adds of a 512-bit vdpbf16ps. Where the CPU and OS offer the tiles,
// precision "bf16" GEMMs of more than a few rows run on them (matmul_amx.cpp).
#pragma once
#include <cstdint>

#include "kernels.h"

namespace fastlm {
namespace cpu {

// Whether the CPU implements AMX-TILE and AMX-BF16, the OS saves the tile
// state (XCR0) and grants this process its use (Linux: arch_prctl
// ARCH_REQ_XCOMP_PERM). Asked once.
bool amx_available();
// Whether the bfloat16 GEMM uses the tiles now: available, and not turned
// off by FASTLM_CPU_AMX=0 or set_amx(false).
bool amx_enabled();
// std::invalid_argument when on and the tiles are not available.
void set_amx(bool on);

namespace avx512bf16 {
// Only when amx_enabled():
// c = op(a) @ op(b) [+ bias] [+ c] on AMX tiles, operands rounded to bfloat16
// (nearest even), float32 sums and output. op(b) is read from b_tiles when
// given (amx_pack_b's), else packed from g.b; g.b_packed is not read.
void matmul_amx(const GemmArgs& g, const uint32_t* b_tiles);
// Words (4 bytes) of op(b) (k, n) packed as AMX tiles, and the packing.
int64_t amx_packed_words(int64_t n, int64_t k);
void amx_pack_b(const GemmArgs& g, uint32_t* tiles);
}  // namespace avx512bf16

}  // namespace cpu
}  // namespace fastlm
