// Flash attention on the GPU: the host entry points, the float32 kernels and
// the delta = rowsum(dout * out) pass both precisions share. The bfloat16
// tensor-core kernels are in attention_tc.cu.
//
// float32 (the Kernels table's entries) runs plain FMA tiles, exact like the
// CPU: a block takes 32 queries of one (batch, head) and walks the keys in
// blocks of 32 with an online softmax. Thread (r, c) of the 128 owns query
// row r (4 threads per row): it computes the scores of keys c, c + 4, ...,
// and output dims c, c + 4, ...; the 4 threads of a row reduce with two
// shuffles. Shared rows are padded to an odd length so the column reads of
// the dot products hit distinct banks.
//
// The backward is FlashAttention-2's, made deterministic by not sharing any
// output between blocks: one kernel per key block accumulates dK and dV over
// the query blocks that see it; another per query block accumulates dQ over
// the key blocks (recomputing P and dS there instead of atomically adding dQ
// partials from the first kernel).
#include <cmath>

#include "cuda/attention.cuh"

namespace fastlm {
namespace cuda {
namespace attn {

namespace {

constexpr int kThreads = 128;
constexpr int kTile = 32;  // queries and keys per float32 tile

// rows [r0, r0 + kTile) of a (row stride ld) head, dims < dim, into s (row
// stride LD) with zeros outside.
template <int DMAX, int LD>
__device__ __forceinline__ void load_rows_f32(float* s, const float* g, int64_t ld, int64_t r0,
                                              int64_t nrows, int dim) {
  for (int e = threadIdx.x; e < kTile * DMAX; e += kThreads) {
    const int rr = e / DMAX, d = e % DMAX;
    const int64_t row = r0 + rr;
    s[rr * LD + d] = (row < nrows && d < dim) ? g[row * ld + d] : 0.f;
  }
}

__device__ __forceinline__ float dot_rows(const float* a, const float* b, int dim) {
  float s = 0.f;
  for (int d = 0; d < dim; ++d) s = fmaf(a[d], b[d], s);
  return s;
}

template <int DMAX>
__global__ void __launch_bounds__(kThreads) fwd_f32_kernel(const FwdParams p) {
  constexpr int LD = DMAX + 1, NU = DMAX / 4;
  __shared__ float Qs[kTile * LD];
  __shared__ float KVs[kTile * LD];  // K, then V, of the current key block
  __shared__ float Ps[kTile * (kTile + 1)];
  const int r = threadIdx.x >> 2, c = threadIdx.x & 3;
  const int64_t b = blockIdx.z, h = blockIdx.y, q0 = (int64_t)blockIdx.x * kTile;
  const float* Q = head_ptr<float>(p.q, p.sq, b, h);
  const float* K = head_ptr<float>(p.k, p.sk, b, h);
  const float* V = head_ptr<float>(p.v, p.sv, b, h);
  float* O = head_ptr<float>(p.out, p.so, b, h);
  const int D = p.head_dim;
  const int64_t i = q0 + r;

  load_rows_f32<DMAX, LD>(Qs, Q, p.sq.row, q0, p.seq_q, D);
  const bool drop = p.drop_threshold != 0;
  const uint64_t dkey = drop ? drop_key(p, b, h) : 0;
  float m = -INFINITY, l = 0.f, o[NU];
#pragma unroll
  for (int u = 0; u < NU; ++u) o[u] = 0.f;

  const int64_t kend = key_end(q0, kTile, p.seq_q, p.seq_k, p.causal);
  for (int64_t k0 = 0; k0 < kend; k0 += kTile) {
    __syncthreads();  // Qs written (first pass); KVs and Ps free (later passes)
    load_rows_f32<DMAX, LD>(KVs, K, p.sk.row, k0, p.seq_k, D);
    __syncthreads();
    float s[8];
    float bm = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < 8; ++jj) {
      const int j = c + 4 * jj;
      const float dot = dot_rows(Qs + r * LD, KVs + j * LD, D);
      s[jj] = visible(i, k0 + j, p.seq_q, p.seq_k, p.causal) ? dot * p.scale : -INFINITY;
      bm = fmaxf(bm, s[jj]);
    }
    bm = fmaxf(bm, __shfl_xor_sync(kFullMask, bm, 1));
    bm = fmaxf(bm, __shfl_xor_sync(kFullMask, bm, 2));
    const float mn = fmaxf(m, bm);
    const float mu = mn == -INFINITY ? 0.f : mn;  // a row with nothing visible yet stays at 0
    const float corr = expf(m - mu);
    l *= corr;
#pragma unroll
    for (int u = 0; u < NU; ++u) o[u] *= corr;
#pragma unroll
    for (int jj = 0; jj < 8; ++jj) {
      const int j = c + 4 * jj;
      const float pj = expf(s[jj] - mu);
      l += pj;  // the normaliser sums kept and dropped alike
      Ps[r * (kTile + 1) + j] = drop ? pj * drop_factor(p, dkey, i, k0 + j) : pj;
    }
    m = mn;
    __syncthreads();  // everyone is done with K and has written P
    load_rows_f32<DMAX, LD>(KVs, V, p.sv.row, k0, p.seq_k, D);
    __syncthreads();
    for (int j = 0; j < kTile; ++j) {
      const float pj = Ps[r * (kTile + 1) + j];
#pragma unroll
      for (int u = 0; u < NU; ++u) o[u] = fmaf(pj, KVs[j * LD + c + 4 * u], o[u]);
    }
  }
  l += __shfl_xor_sync(kFullMask, l, 1);
  l += __shfl_xor_sync(kFullMask, l, 2);
  if (i < p.seq_q) {
    // A query that sees no key (causal, seq_q > seq_k) gets 0 and lse -inf.
    const float inv = l > 0.f ? 1.f / l : 0.f;
    float* orow = O + i * p.so.row;
#pragma unroll
    for (int u = 0; u < NU; ++u)
      if (c + 4 * u < D) orow[c + 4 * u] = o[u] * inv;
    if (c == 0) p.lse[(b * p.heads + h) * p.seq_q + i] = l == 0.f ? -INFINITY : m + logf(l);
  }
}

// dK, dV for the 32 keys of this block, summed over query blocks in order.
// Thread (j, c) owns key row j, dims c, c + 4, ...
template <int DMAX>
__global__ void __launch_bounds__(kThreads) bwd_dkdv_f32_kernel(const BwdParams p) {
  constexpr int LD = DMAX + 1, NU = DMAX / 4, LP = kTile + 1;
  extern __shared__ float sm[];
  float* Ks = sm;
  float* Vs = Ks + kTile * LD;
  float* Qs = Vs + kTile * LD;
  float* dOs = Qs + kTile * LD;
  float* Ps = dOs + kTile * LD;  // [key][query]
  float* dSs = Ps + kTile * LP;
  float* lse_s = dSs + kTile * LP;
  float* delta_s = lse_s + kTile;
  const int jr = threadIdx.x >> 2, c = threadIdx.x & 3;
  const int64_t b = blockIdx.z, h = blockIdx.y, k0 = (int64_t)blockIdx.x * kTile;
  const float* Q = head_ptr<float>(p.q, p.sq, b, h);
  const float* K = head_ptr<float>(p.k, p.sk, b, h);
  const float* V = head_ptr<float>(p.v, p.sv, b, h);
  const float* dO = head_ptr<float>(p.dout, p.so, b, h);
  const float* lse = p.lse + (b * p.heads + h) * p.seq_q;
  const float* delta = p.delta + (b * p.heads + h) * p.seq_q;
  const int D = p.head_dim;
  const int64_t key = k0 + jr;
  const bool drop = p.drop_threshold != 0;
  const uint64_t dkey = drop ? drop_key(p, b, h) : 0;

  load_rows_f32<DMAX, LD>(Ks, K, p.sk.row, k0, p.seq_k, D);
  load_rows_f32<DMAX, LD>(Vs, V, p.sv.row, k0, p.seq_k, D);
  float dk[NU], dv[NU];
#pragma unroll
  for (int u = 0; u < NU; ++u) dk[u] = dv[u] = 0.f;

  for (int64_t q0 = query_begin(k0, kTile, p.seq_q, p.seq_k, p.causal); q0 < p.seq_q;
       q0 += kTile) {
    __syncthreads();  // previous Qs, dOs, Ps, dSs readers are done
    load_rows_f32<DMAX, LD>(Qs, Q, p.sq.row, q0, p.seq_q, D);
    load_rows_f32<DMAX, LD>(dOs, dO, p.so.row, q0, p.seq_q, D);
    if (threadIdx.x < kTile) {
      const int64_t i = q0 + threadIdx.x;
      lse_s[threadIdx.x] = i < p.seq_q ? lse[i] : -INFINITY;
      delta_s[threadIdx.x] = i < p.seq_q ? delta[i] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int ii = 0; ii < 8; ++ii) {
      const int il = c + 4 * ii;
      const float li = lse_s[il];
      float pv = 0.f, ds = 0.f;
      if (li != -INFINITY && visible(q0 + il, key, p.seq_q, p.seq_k, p.causal)) {
        pv = expf(dot_rows(Ks + jr * LD, Qs + il * LD, D) * p.scale - li);
        const float dp = dot_rows(Vs + jr * LD, dOs + il * LD, D);
        // Dropout: dV takes P Z, and dS = P (Z dP - delta).
        const float z = drop ? drop_factor(p, dkey, q0 + il, key) : 1.f;
        ds = pv * (dp * z - delta_s[il]);
        pv *= z;
      }
      Ps[jr * LP + il] = pv;
      dSs[jr * LP + il] = ds;
    }
    __syncthreads();
    for (int il = 0; il < kTile; ++il) {
      const float pv = Ps[jr * LP + il], ds = dSs[jr * LP + il];
#pragma unroll
      for (int u = 0; u < NU; ++u) {
        dv[u] = fmaf(pv, dOs[il * LD + c + 4 * u], dv[u]);
        dk[u] = fmaf(ds, Qs[il * LD + c + 4 * u], dk[u]);
      }
    }
  }
  if (key < p.seq_k) {
    float* dK = head_ptr<float>(p.dk, p.sk, b, h) + key * p.sk.row;
    float* dV = head_ptr<float>(p.dv, p.sv, b, h) + key * p.sv.row;
#pragma unroll
    for (int u = 0; u < NU; ++u) {
      const int d = c + 4 * u;
      if (d < D) {
        dK[d] += dk[u] * p.scale;
        dV[d] += dv[u];
      }
    }
  }
}

// dQ for the 32 queries of this block, summed over key blocks in order.
template <int DMAX>
__global__ void __launch_bounds__(kThreads) bwd_dq_f32_kernel(const BwdParams p) {
  constexpr int LD = DMAX + 1, NU = DMAX / 4, LP = kTile + 1;
  extern __shared__ float sm[];
  float* Qs = sm;
  float* dOs = Qs + kTile * LD;
  float* Ks = dOs + kTile * LD;
  float* Vs = Ks + kTile * LD;
  float* dSs = Vs + kTile * LD;  // [query][key]
  const int r = threadIdx.x >> 2, c = threadIdx.x & 3;
  const int64_t b = blockIdx.z, h = blockIdx.y, q0 = (int64_t)blockIdx.x * kTile;
  const float* Q = head_ptr<float>(p.q, p.sq, b, h);
  const float* K = head_ptr<float>(p.k, p.sk, b, h);
  const float* V = head_ptr<float>(p.v, p.sv, b, h);
  const float* dO = head_ptr<float>(p.dout, p.so, b, h);
  const int D = p.head_dim;
  const int64_t i = q0 + r;
  const int64_t stat = (b * p.heads + h) * p.seq_q + i;
  const float li = i < p.seq_q ? p.lse[stat] : -INFINITY;
  const float di = i < p.seq_q ? p.delta[stat] : 0.f;
  const bool drop = p.drop_threshold != 0;
  const uint64_t dkey = drop ? drop_key(p, b, h) : 0;

  load_rows_f32<DMAX, LD>(Qs, Q, p.sq.row, q0, p.seq_q, D);
  load_rows_f32<DMAX, LD>(dOs, dO, p.so.row, q0, p.seq_q, D);
  float dq[NU];
#pragma unroll
  for (int u = 0; u < NU; ++u) dq[u] = 0.f;

  const int64_t kend = key_end(q0, kTile, p.seq_q, p.seq_k, p.causal);
  for (int64_t k0 = 0; k0 < kend; k0 += kTile) {
    __syncthreads();
    load_rows_f32<DMAX, LD>(Ks, K, p.sk.row, k0, p.seq_k, D);
    load_rows_f32<DMAX, LD>(Vs, V, p.sv.row, k0, p.seq_k, D);
    __syncthreads();
#pragma unroll
    for (int jj = 0; jj < 8; ++jj) {
      const int j = c + 4 * jj;
      float ds = 0.f;
      if (li != -INFINITY && visible(i, k0 + j, p.seq_q, p.seq_k, p.causal)) {
        const float pv = expf(dot_rows(Qs + r * LD, Ks + j * LD, D) * p.scale - li);
        const float z = drop ? drop_factor(p, dkey, i, k0 + j) : 1.f;
        ds = pv * (dot_rows(dOs + r * LD, Vs + j * LD, D) * z - di);
      }
      dSs[r * LP + j] = ds;
    }
    __syncthreads();
    for (int j = 0; j < kTile; ++j) {
      const float ds = dSs[r * LP + j];
#pragma unroll
      for (int u = 0; u < NU; ++u) dq[u] = fmaf(ds, Ks[j * LD + c + 4 * u], dq[u]);
    }
  }
  if (i < p.seq_q) {
    float* dQ = head_ptr<float>(p.dq, p.sq, b, h) + i * p.sq.row;
#pragma unroll
    for (int u = 0; u < NU; ++u)
      if (c + 4 * u < D) dQ[c + 4 * u] += dq[u] * p.scale;
  }
}

// delta[b, h, i] = sum_d dout * out, one warp per row.
template <typename T>
__global__ void delta_kernel(const T* __restrict__ dout, const T* __restrict__ out, Strides so,
                             int64_t heads, int64_t seq, int dim, float* __restrict__ delta,
                             int64_t rows) {
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps leave together
  const int lane = threadIdx.x & 31;
  const int64_t i = row % seq, bh = row / seq;
  const int64_t off = (bh / heads) * so.batch + (bh % heads) * so.head + i * so.row;
  float s = 0.f;
  for (int d = lane; d < dim; d += 32) s = fmaf(to_f32(dout[off + d]), to_f32(out[off + d]), s);
  s = warp_sum(s);
  if (lane == 0) delta[row] = s;
}

template <int DMAX>
void launch_forward_f32(const FwdParams& p, int64_t batch) {
  launch_heads<kTile, kThreads>(fwd_f32_kernel<DMAX>, 0, p.seq_q, p, batch,
                                "attention fwd_f32_kernel");
}

template <int DMAX>
void launch_backward_f32(const BwdParams& p, int64_t batch) {
  constexpr int LD = DMAX + 1, LP = kTile + 1;
  if (p.seq_k > 0)
    launch_heads<kTile, kThreads>(bwd_dkdv_f32_kernel<DMAX>,
                                  sizeof(float) * (4 * kTile * LD + 2 * kTile * LP + 2 * kTile),
                                  p.seq_k, p, batch, "attention bwd_dkdv_f32_kernel");
  launch_heads<kTile, kThreads>(bwd_dq_f32_kernel<DMAX>, sizeof(float) * (4 * kTile * LD + kTile * LP),
                                p.seq_q, p, batch, "attention bwd_dq_f32_kernel");
}

void check_sizes(const AttentionArgs& d, const char* op) {
  const std::string name(op);
  if (d.batch < 0 || d.heads < 0 || d.seq_q < 0 || d.seq_k < 0)
    throw std::invalid_argument(name + ": negative size");
  if (d.head_dim < 1 || d.head_dim > kMaxHeadDim)
    throw std::invalid_argument(name + ": head_dim must be in [1, " + std::to_string(kMaxHeadDim) +
                                "] on CUDA, got " + std::to_string(d.head_dim));
  if (d.batch > 65535 || d.heads > 65535)
    throw std::invalid_argument(name + ": batch and heads must be <= 65535 on CUDA");
  if (!(d.dropout_p >= 0.f && d.dropout_p < 1.f))
    throw std::invalid_argument(name + ": dropout must be in [0, 1), got " +
                                std::to_string(d.dropout_p));
}

// cp.async needs 16-byte aligned rows: base pointers and all strides.
bool vec_ok(const void* ptr, const Strides& s, int64_t elem) {
  return aligned16(ptr) && (s.batch * elem) % 16 == 0 && (s.head * elem) % 16 == 0 &&
         (s.row * elem) % 16 == 0;
}

HeadParams head_params(const AttentionArgs& d) {
  HeadParams p;
  p.q = d.q;
  p.k = d.k;
  p.v = d.v;
  p.sq = d.sq;
  p.sk = d.sk;
  p.sv = d.sv;
  p.so = d.so;
  p.heads = d.heads;
  p.seq_q = d.seq_q;
  p.seq_k = d.seq_k;
  p.head_dim = (int)d.head_dim;
  p.causal = d.causal;
  p.scale = 1.f / sqrtf((float)d.head_dim);
  // The float32 kernels load with plain loads; bfloat16 tiles by cp.async.
  p.vec = d.dtype == DType::kBFloat16 && vec_ok(d.q, d.sq, 2) && vec_ok(d.k, d.sk, 2) &&
          vec_ok(d.v, d.sv, 2);
  p.dropout_seed = d.dropout_seed;
  p.drop_threshold = d.dropout_p > 0.f ? dropout::threshold(d.dropout_p) : 0u;
  p.drop_scale = 1.f / (1.f - d.dropout_p);
  return p;
}

}  // namespace

}  // namespace attn

void attention_forward(const AttentionArgs& d) {
  attn::check_sizes(d, "attention");
  if (d.batch == 0 || d.heads == 0 || d.seq_q == 0) return;
  attn::FwdParams p;
  static_cast<attn::HeadParams&>(p) = attn::head_params(d);
  p.out = d.out;
  p.lse = d.lse;
  if (d.dtype == DType::kFloat32) {
    if (d.head_dim <= 64)
      attn::launch_forward_f32<64>(p, d.batch);
    else
      attn::launch_forward_f32<128>(p, d.batch);
  } else if (!attn::launch_forward_bf16_next(p, d.batch)) {
    attn::launch_forward_bf16(p, d.batch);
  }
}

void attention_backward(const AttentionGradArgs& g) {
  const AttentionArgs& d = g.fwd;
  attn::check_sizes(d, "attention_backward");
  // No query: nothing reaches k or v.
  if (d.batch == 0 || d.heads == 0 || d.seq_q == 0) return;
  attn::BwdParams p;
  static_cast<attn::HeadParams&>(p) = attn::head_params(d);
  p.dout = g.dout;
  p.lse = d.lse;
  p.dq = g.dq;
  p.dk = g.dk;
  p.dv = g.dv;

  const int64_t rows = d.batch * d.heads * d.seq_q;
  Scratch delta(sizeof(float) * rows);
  p.delta = delta.as<float>();
  const int rows_per_block = 8;  // one warp each
  const unsigned blocks = (unsigned)cdiv(rows, rows_per_block);
  if (d.dtype == DType::kFloat32) {
    attn::delta_kernel<float><<<blocks, 32 * rows_per_block, 0, launch_stream()>>>(
        static_cast<const float*>(g.dout), static_cast<const float*>(d.out), d.so, d.heads,
        d.seq_q, (int)d.head_dim, delta.as<float>(), rows);
    FASTLM_CHECK_LAUNCH("attention delta_kernel<float>");
    if (d.head_dim <= 64)
      attn::launch_backward_f32<64>(p, d.batch);
    else
      attn::launch_backward_f32<128>(p, d.batch);
  } else {
    attn::delta_kernel<bf16><<<blocks, 32 * rows_per_block, 0, launch_stream()>>>(
        reinterpret_cast<const bf16*>(g.dout), reinterpret_cast<const bf16*>(d.out), d.so, d.heads,
        d.seq_q, (int)d.head_dim, delta.as<float>(), rows);
    FASTLM_CHECK_LAUNCH("attention delta_kernel<bf16>");
    p.vec = p.vec && attn::vec_ok(g.dout, d.so, 2);
    attn::launch_backward_bf16(p, d.batch);
  }
}

}  // namespace cuda
}  // namespace fastlm
