// Linear layers (PyTorch layout: weight (out, in)) over the backend's GEMM.
#pragma once
#include <cstdint>

#include "kernels.h"

namespace fastlm {

// c (m, n) [+]= op(a) @ op(b) [+ bias] for contiguous row-major operands;
// b_packed, when not null, is op(b) packed by pack_b.
void gemm(const Kernels& k, const float* a, const float* b, const float* bias, float* c,
          int64_t m, int64_t n, int64_t kdim, bool trans_a, bool trans_b, bool accumulate,
          const float* b_packed = nullptr);

// Floats pack_b needs for an op(b) of (kdim, n) (0 when the backend does not pre-pack).
int64_t packed_b_size(const Kernels& k, int64_t n, int64_t kdim);
// Packs op(b) into `packed` once for many gemm calls with the same b (an
// RNN's recurrent weights, once per sequence); returns the pointer to pass
// as b_packed, or null when the backend does not pre-pack.
const float* pack_b(const Kernels& k, const float* b, int64_t n, int64_t kdim, bool trans_b,
                    float* packed);

// out (rows, n_out) = inp (rows, n_in) @ weight^T + bias (bias may be null);
// weight_packed, when not null, is weight^T packed by pack_b.
void linear_forward(const Kernels& k, const float* inp, const float* weight, const float* bias,
                    float* out, int64_t rows, int64_t n_in, int64_t n_out,
                    const float* weight_packed = nullptr);

// dinp += dout @ weight (dinp = ..., skipping a zeroing pass, when not
// add_to_dinp); dweight += dout^T @ inp; dbias += column sums of dout.
// dinp or dbias may be null when not wanted.
void linear_backward(const Kernels& k, const float* dout, const float* inp, const float* weight,
                     float* dinp, float* dweight, float* dbias, int64_t rows, int64_t n_in,
                     int64_t n_out, bool add_to_dinp = true);

// A bias-free classifier head and its cross-entropy loss (ClassifierArgs in
// kernels.h): the backend's fused classifier where it has one, else
// linear_forward, cross_entropy (the gradient over the logits in place) and
// linear_backward, which is what every CPU table (and the emulated device) runs.
float classifier_loss(const Kernels& k, const ClassifierArgs& a);

}  // namespace fastlm
