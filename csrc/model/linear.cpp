#include "model/linear.h"

namespace fastlm {

void gemm(const Kernels& k, const float* a, const float* b, const float* bias, float* c,
          int64_t m, int64_t n, int64_t kdim, bool trans_a, bool trans_b, bool accumulate) {
  GemmArgs g;
  g.a = a;
  g.b = b;
  g.bias = bias;
  g.c = c;
  g.m = m;
  g.n = n;
  g.k = kdim;
  g.lda = trans_a ? m : kdim;
  g.ldb = trans_b ? kdim : n;
  g.ldc = n;
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.accumulate = accumulate;
  k.matmul(g);
}

void linear_forward(const Kernels& k, const float* inp, const float* weight, const float* bias,
                    float* out, int64_t rows, int64_t n_in, int64_t n_out) {
  gemm(k, inp, weight, bias, out, rows, n_out, n_in, false, true, false);
}

void linear_backward(const Kernels& k, const float* dout, const float* inp, const float* weight,
                     float* dinp, float* dweight, float* dbias, int64_t rows, int64_t n_in,
                     int64_t n_out) {
  if (dinp) gemm(k, dout, weight, nullptr, dinp, rows, n_in, n_out, false, false, true);
  gemm(k, dout, inp, nullptr, dweight, n_out, n_in, rows, true, false, true);
  if (dbias) k.bias_backward(dout, dbias, rows, n_out);
}

}  // namespace fastlm
