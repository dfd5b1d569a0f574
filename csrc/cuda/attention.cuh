// Flash attention internals shared by attention.cu (float32 kernels and the
// host entry points) and attention_tc.cu (bfloat16 tensor-core kernels).
#pragma once
#include "cuda/common.cuh"
#include "dropout_hash.h"

namespace fastlm {
namespace cuda {
namespace attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// What the forward and backward kernels share. Tensor (b, h, row, d)
// element: base + b s.batch + h s.head + row s.row + d.
struct HeadParams {
  const void* q;
  const void* k;
  const void* v;
  Strides sq, sk, sv, so;
  int64_t heads, seq_q, seq_k;
  int head_dim;
  bool causal;
  float scale;  // 1 / sqrt(head_dim)
  bool vec;     // every base and stride 16-byte aligned: cp.async tile loads
  // Probability dropout (AttentionArgs::dropout_p); off when drop_threshold is 0.
  uint64_t dropout_seed;
  uint32_t drop_threshold;  // dropout::threshold(p)
  float drop_scale;         // 1 / (1 - p)
};

struct FwdParams : HeadParams {
  void* out;
  float* lse;  // (batch, heads, seq_q) contiguous
};

struct BwdParams : HeadParams {
  const void* dout;  // strides so
  const float* lse;
  const float* delta;  // rowsum(dout * out), (batch, heads, seq_q)
  void* dq;            // strides sq
  void* dk;            // strides sk
  void* dv;            // strides sv
};

// The dropout key of head (b, h): the CPU kernel's, so both drop the same
// probabilities.
__device__ __forceinline__ uint64_t drop_key(const HeadParams& p, int64_t b, int64_t h) {
  return dropout::key(p.dropout_seed, (uint64_t)(b * p.heads + h));
}
// Probability (i, j)'s factor: 0 where dropped, 1 / (1 - p) where kept.
__device__ __forceinline__ float drop_factor(const HeadParams& p, uint64_t key, int64_t i,
                                             int64_t j) {
  return dropout::bits(key, (uint64_t)(i * p.seq_k + j)) >= p.drop_threshold ? p.drop_scale
                                                                              : 0.f;
}

template <typename T>
__device__ __forceinline__ const T* head_ptr(const void* base, const Strides& s, int64_t b,
                                             int64_t h) {
  return static_cast<const T*>(base) + b * s.batch + h * s.head;
}
template <typename T>
__device__ __forceinline__ T* head_ptr(void* base, const Strides& s, int64_t b, int64_t h) {
  return static_cast<T*>(base) + b * s.batch + h * s.head;
}

// kernel over (blocks of ROWS along seq, heads, batch), THREADS threads each,
// with smem bytes of dynamic shared memory; `name` reaches launch errors.
template <int ROWS, int THREADS, typename Params>
void launch_heads(void (*kernel)(const Params), size_t smem, int64_t seq, const Params& p,
                  int64_t batch, const char* name) {
  allow_shared_bytes(kernel, smem);
  const dim3 grid((unsigned)cdiv(seq, ROWS), (unsigned)p.heads, (unsigned)batch);
  kernel<<<grid, THREADS, smem, launch_stream()>>>(p);
  FASTLM_CHECK_LAUNCH(name);
}

// Keys < this bound can be seen by some query of [q0, q0 + rows): with a
// causal mask query i sees keys j <= i + seq_k - seq_q.
__device__ __forceinline__ int64_t key_end(int64_t q0, int64_t rows, int64_t seq_q,
                                           int64_t seq_k, bool causal) {
  if (!causal) return seq_k;
  const int64_t last = (q0 + rows < seq_q ? q0 + rows : seq_q) + (seq_k - seq_q);
  return last < seq_k ? last : seq_k;
}

// First query that can see key k0 under a causal mask, rounded down to a
// multiple of the query block.
__device__ __forceinline__ int64_t query_begin(int64_t k0, int block, int64_t seq_q,
                                               int64_t seq_k, bool causal) {
  if (!causal) return 0;
  int64_t first = k0 - (seq_k - seq_q);
  if (first < 0) first = 0;
  return first / block * block;
}

__device__ __forceinline__ bool visible(int64_t i, int64_t key, int64_t seq_q, int64_t seq_k,
                                        bool causal) {
  return i < seq_q && key < seq_k && (!causal || key <= i + (seq_k - seq_q));
}

// bfloat16 tensor-core kernels (attention_tc.cu); DMAX 64 or 128 >= head_dim.
void launch_forward_bf16(const FwdParams& p, int64_t batch);
void launch_backward_bf16(const BwdParams& p, int64_t batch);
// The 128-query pipelined forward (attention_tc_fwd.cu), opt-in with
// FASTLM_CUDA_ATTENTION=next until it has passed on a GPU; false when not
// asked for or the sizes are beyond its grid (the caller then runs the default).
bool launch_forward_bf16_next(const FwdParams& p, int64_t batch);

}  // namespace attn
}  // namespace cuda
}  // namespace fastlm
