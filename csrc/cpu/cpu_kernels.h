// Declarations of the CPU kernels of one ISA (namespace fastlm::cpu::FASTLM_ISA);
// each is documented at its entry in csrc/kernels.h. table.cpp collects them.
#pragma once
#include "kernels.h"
#include "cpu/simd.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

void matmul(const GemmArgs& args);
int64_t matmul_packed_size(int64_t n, int64_t k);
void matmul_pack_b(const GemmArgs& args, float* packed);
void bias_backward(const float* dout, float* dbias, int64_t rows, int64_t cols);
void embedding_forward(const int64_t* idx, const float* wte, const float* wpe, float* out,
                       int64_t b, int64_t t, int64_t c, int64_t pos0);
void embedding_backward(const float* dout, const int64_t* idx, float* dwte, float* dwpe,
                        int64_t b, int64_t t, int64_t c, int64_t pos0);
void zero(float* x, int64_t n);
void copy(float* dst, const float* src, int64_t n);
void residual_forward(const float* a, const float* b, float* out, int64_t n);
double sum_squares(const float* x, int64_t n);
void softmax_forward(const float* x, float* y, int64_t rows, int64_t cols);
void softmax_backward(const float* dy, const float* y, float* dx, int64_t rows, int64_t cols);
void layernorm_forward(const float* x, const float* weight, const float* bias, float* y,
                       float* mean, float* rstd, int64_t rows, int64_t cols, float eps);
void layernorm_backward(const float* dy, const float* x, const float* weight, const float* mean,
                        const float* rstd, float* dx, float* dweight, float* dbias, int64_t rows,
                        int64_t cols);
void gelu_forward(const float* x, float* y, int64_t n);
void gelu_backward(const float* dy, const float* x, float* dx, int64_t n);
void attention_forward(const AttentionArgs& args);
void attention_backward(const AttentionGradArgs& args);
float cross_entropy(const float* logits, const int64_t* targets, float* dlogits, int64_t rows,
                    int64_t vocab, int64_t ignore_index, float dloss);
void lstm_cell_forward(const float* preact, const float* c, float* gates, float* c_next,
                       float* h_next, int64_t n, int64_t hidden);
void lstm_cell_backward(const float* dh_next, const float* dc_next, const float* c,
                        const float* c_next, const float* gates, float* dpreact, float* dc,
                        int64_t n, int64_t hidden);
void gru_cell_forward(const float* gi, const float* gh, const float* h, float* gates,
                      float* h_next, int64_t n, int64_t hidden);
void gru_cell_backward(const float* dh_next, const float* h, const float* gates, float* dgi,
                       float* dgh, float* dh, int64_t n, int64_t hidden);
void adamw(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWArgs& args);
void sgd(float* param, const float* grad, float* momentum_buf, int64_t n, const SgdArgs& args);

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm
