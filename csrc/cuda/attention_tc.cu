// bfloat16 flash attention on tensor cores (FlashAttention-2's scheme with
// mma.sync.m16n8k16, float32 accumulation and softmax statistics).
//
// Each block has 4 warps; a warp owns 16 rows of the block's 64 queries (the
// forward and dQ kernels) or of its 64 keys (the dK/dV kernel). Operand
// fetches and the register reuse of score tiles: attention_tc.cuh.
#include "cuda/attention_tc.cuh"

namespace fastlm {
namespace cuda {
namespace attn {

namespace {

constexpr int kThreads = 128;  // 4 warps
constexpr int kRows = 64;      // queries (or keys) per block, 16 per warp

// DROP (dropout on the probabilities) is a separate instance: the plain
// kernel keeps the registers and the code it had.
template <int DMAX, bool DROP>
__global__ void __launch_bounds__(kThreads) fwd_bf16_kernel(const FwdParams p) {
  constexpr int LD = DMAX + 8, NKD = DMAX / 16, NDT = DMAX / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* Ks = Qs + kRows * LD;
  bf16* Vs = Ks + kRows * LD;
  const Lane L;
  const int64_t b = blockIdx.z, h = blockIdx.y, q0 = (int64_t)blockIdx.x * kRows;
  const bf16* Q = head_ptr<bf16>(p.q, p.sq, b, h);
  const bf16* K = head_ptr<bf16>(p.k, p.sk, b, h);
  const bf16* V = head_ptr<bf16>(p.v, p.sv, b, h);
  const int D = p.head_dim;

  load_tile<bf16, kRows, DMAX, LD, kThreads>(Qs, Q, p.sq.row, q0, 0, p.seq_q, D, p.vec);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  uint32_t qf[NKD][4];
#pragma unroll
  for (int kd = 0; kd < NKD; ++kd) frag_a<LD>(qf[kd], Qs, 16 * L.warp, 16 * kd, L);

  // This thread's two query rows: g and g + 8 of the warp's 16.
  const int64_t rows[2] = {q0 + 16 * L.warp + L.g, q0 + 16 * L.warp + L.g + 8};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // m in log2 units
  const uint64_t dkey = DROP ? drop_key(p, b, h) : 0;
  float o[NDT][4];
#pragma unroll
  for (int dt = 0; dt < NDT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[dt][e] = 0.f;
  const float sl2 = p.scale * kLog2e;

  const int64_t kend = key_end(q0, kRows, p.seq_q, p.seq_k, p.causal);
  for (int64_t k0 = 0; k0 < kend; k0 += kRows) {
    __syncthreads();  // the previous block's K and V are no longer read
    load_tile<bf16, kRows, DMAX, LD, kThreads>(Ks, K, p.sk.row, k0, 0, p.seq_k, D, p.vec);
    cp_async_commit();
    load_tile<bf16, kRows, DMAX, LD, kThreads>(Vs, V, p.sv.row, k0, 0, p.seq_k, D, p.vec);
    cp_async_commit();
    cp_async_wait<1>();  // K has landed; V may still be in flight
    __syncthreads();

    // S = Q K^T: 16 queries x 64 keys per warp, 8 n tiles of 8 keys.
    float s[8][4];
    qk_tile<LD>(s, qf, Ks, L);

    // Online softmax in log2 units; element e of tile nt is row rows[e >> 1],
    // key k0 + 8 nt + 2 t + (e & 1).
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = k0 + 8 * nt + 2 * L.t + (e & 1);
        const float v = visible(rows[e >> 1], key, p.seq_q, p.seq_k, p.causal)
                            ? s[nt][e] * sl2
                            : -INFINITY;
        s[nt][e] = v;
        mx[e >> 1] = fmaxf(mx[e >> 1], v);
      }
    float mu[2];
    online_rescale(m, l, o, mx, 1.f, mu);  // scores already in log2 units
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pv = exp2f(s[nt][e] - mu[e >> 1]);
        l[e >> 1] += pv;
        s[nt][e] = pv;
      }
    if (DROP) drop_tile(s, p, dkey, rows, k0, L);  // after l: it sums kept and dropped alike

    cp_async_wait<0>();  // V
    __syncthreads();
    add_pv<LD>(o, s, Vs, L);
  }
  store_forward(p, b, h, rows, o, l, m, L);
}

// One element of a backward score tile: query i, key j, the query's lse (in
// log2 units) and delta.
struct ElemAt {
  int64_t i, j;
  float lse, delta;
};

// The backward's recompute of a score tile, shared by the dK/dV kernel (rows
// of A = the warp's 16 keys of K and V, rows of B = queries of Q and dO: S^T
// and dP^T) and the dQ kernel (A = queries of Q and dO, B = keys of K and V:
// S and dP). First s = A1 B1^T and dp = A2 B2^T over NKD steps of 16 dims,
// NT tiles of 8 B rows; then, element by element (`at` says which), s becomes
// P Z (the probability times its dropout factor, what dV takes) and dp becomes
// dS = P (Z dP - delta), unscaled; both are 0 where the mask hides (i, j).
template <int LD, int NKD, int NT, bool DROP, typename At>
__device__ __forceinline__ void recompute_tile(float (&s)[NT][4], float (&dp)[NT][4],
                                               const bf16* A1, const bf16* A2, const bf16* B1,
                                               const bf16* B2, const BwdParams& p, uint64_t dkey,
                                               const Lane& L, At at) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
  for (int kd = 0; kd < NKD; ++kd) {
    uint32_t a1[4], a2[4];
    frag_a<LD>(a1, A1, 16 * L.warp, 16 * kd, L);
    frag_a<LD>(a2, A2, 16 * L.warp, 16 * kd, L);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b1[4], b2[4];
      frag_b_rows<LD>(b1, B1, 16 * np, 16 * kd, L);
      frag_b_rows<LD>(b2, B2, 16 * np, 16 * kd, L);
      mma_bf16(s[2 * np], a1, b1[0], b1[1]);
      mma_bf16(s[2 * np + 1], a1, b1[2], b1[3]);
      mma_bf16(dp[2 * np], a2, b2[0], b2[1]);
      mma_bf16(dp[2 * np + 1], a2, b2[2], b2[3]);
    }
  }
  const float sl2 = p.scale * kLog2e;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const ElemAt x = at(nt, e);
      float pv = 0.f, ds = 0.f;
      if (x.lse != -INFINITY && visible(x.i, x.j, p.seq_q, p.seq_k, p.causal)) {
        pv = exp2f(s[nt][e] * sl2 - x.lse);
        if (DROP) {
          const float z = drop_factor(p, dkey, x.i, x.j);
          ds = pv * (dp[nt][e] * z - x.delta);
          pv *= z;
        } else {
          ds = pv * (dp[nt][e] - x.delta);
        }
      }
      s[nt][e] = pv;
      dp[nt][e] = ds;
    }
}

// dK, dV for the block's 64 keys (16 per warp), over query blocks of 32.
template <int DMAX, bool DROP>
__global__ void __launch_bounds__(kThreads) bwd_dkdv_bf16_kernel(const BwdParams p) {
  constexpr int LD = DMAX + 8, NKD = DMAX / 16, NDT = DMAX / 8, BQ = 32;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + kRows * LD;
  bf16* Qs = Vs + kRows * LD;
  bf16* dOs = Qs + BQ * LD;
  float* lse_s = reinterpret_cast<float*>(dOs + BQ * LD);  // log2 units
  float* delta_s = lse_s + BQ;
  const Lane L;
  const int64_t b = blockIdx.z, h = blockIdx.y, k0 = (int64_t)blockIdx.x * kRows;
  const bf16* Q = head_ptr<bf16>(p.q, p.sq, b, h);
  const bf16* K = head_ptr<bf16>(p.k, p.sk, b, h);
  const bf16* V = head_ptr<bf16>(p.v, p.sv, b, h);
  const bf16* dO = head_ptr<bf16>(p.dout, p.so, b, h);
  const float* lse = p.lse + (b * p.heads + h) * p.seq_q;
  const float* delta = p.delta + (b * p.heads + h) * p.seq_q;
  const int D = p.head_dim;
  const uint64_t dkey = DROP ? drop_key(p, b, h) : 0;

  load_tile<bf16, kRows, DMAX, LD, kThreads>(Ks, K, p.sk.row, k0, 0, p.seq_k, D, p.vec);
  load_tile<bf16, kRows, DMAX, LD, kThreads>(Vs, V, p.sv.row, k0, 0, p.seq_k, D, p.vec);
  cp_async_commit();

  // This thread's keys: rows g and g + 8 of the warp's 16.
  const int64_t keys[2] = {k0 + 16 * L.warp + L.g, k0 + 16 * L.warp + L.g + 8};
  float dk[NDT][4], dv[NDT][4];
#pragma unroll
  for (int dt = 0; dt < NDT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[dt][e] = dv[dt][e] = 0.f;

  for (int64_t q0 = query_begin(k0, BQ, p.seq_q, p.seq_k, p.causal); q0 < p.seq_q; q0 += BQ) {
    __syncthreads();  // previous Qs, dOs, lse_s, delta_s are no longer read
    load_tile<bf16, BQ, DMAX, LD, kThreads>(Qs, Q, p.sq.row, q0, 0, p.seq_q, D, p.vec);
    load_tile<bf16, BQ, DMAX, LD, kThreads>(dOs, dO, p.so.row, q0, 0, p.seq_q, D, p.vec);
    cp_async_commit();
    if (threadIdx.x < BQ) {
      const int64_t i = q0 + threadIdx.x;
      lse_s[threadIdx.x] = i < p.seq_q ? lse[i] * kLog2e : -INFINITY;
      delta_s[threadIdx.x] = i < p.seq_q ? delta[i] : 0.f;
    }
    cp_async_wait<0>();
    __syncthreads();

    // P^T Z and dS^T: 16 keys x 32 queries per warp; element e of tile nt is
    // key keys[e >> 1], query q0 + 8 nt + 2 t + (e & 1).
    float st[4][4], dpt[4][4];
    recompute_tile<LD, NKD, 4, DROP>(st, dpt, Ks, Vs, Qs, dOs, p, dkey, L, [&](int nt, int e) {
      const int il = 8 * nt + 2 * L.t + (e & 1);
      return ElemAt{q0 + il, keys[e >> 1], lse_s[il], delta_s[il]};
    });
    // dV += P^T dO, dK += dS^T Q: k = the 32 queries in 2 steps of 16.
    add_pv<LD>(dv, st, dOs, L);
    add_pv<LD>(dk, dpt, Qs, L);
  }
  cp_async_wait<0>();  // K and V, if no query block ran

#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int64_t key = keys[hr];
    if (key >= p.seq_k) continue;
    add_row<true>(head_ptr<bf16>(p.dk, p.sk, b, h) + key * p.sk.row, dk, hr, D, p.scale, L);
    add_row<false>(head_ptr<bf16>(p.dv, p.sv, b, h) + key * p.sv.row, dv, hr, D, p.scale, L);
  }
}

// dQ for the block's 64 queries (16 per warp), over key blocks of 64.
template <int DMAX, bool DROP>
__global__ void __launch_bounds__(kThreads) bwd_dq_bf16_kernel(const BwdParams p) {
  constexpr int LD = DMAX + 8, NKD = DMAX / 16, NDT = DMAX / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* dOs = Qs + kRows * LD;
  bf16* Ks = dOs + kRows * LD;
  bf16* Vs = Ks + kRows * LD;
  const Lane L;
  const int64_t b = blockIdx.z, h = blockIdx.y, q0 = (int64_t)blockIdx.x * kRows;
  const bf16* Q = head_ptr<bf16>(p.q, p.sq, b, h);
  const bf16* K = head_ptr<bf16>(p.k, p.sk, b, h);
  const bf16* V = head_ptr<bf16>(p.v, p.sv, b, h);
  const bf16* dO = head_ptr<bf16>(p.dout, p.so, b, h);
  const int D = p.head_dim;
  const uint64_t dkey = DROP ? drop_key(p, b, h) : 0;

  load_tile<bf16, kRows, DMAX, LD, kThreads>(Qs, Q, p.sq.row, q0, 0, p.seq_q, D, p.vec);
  load_tile<bf16, kRows, DMAX, LD, kThreads>(dOs, dO, p.so.row, q0, 0, p.seq_q, D, p.vec);
  cp_async_commit();

  const int64_t rows[2] = {q0 + 16 * L.warp + L.g, q0 + 16 * L.warp + L.g + 8};
  float li[2], di[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int64_t stat = (b * p.heads + h) * p.seq_q + rows[hr];
    li[hr] = rows[hr] < p.seq_q ? p.lse[stat] * kLog2e : -INFINITY;
    di[hr] = rows[hr] < p.seq_q ? p.delta[stat] : 0.f;
  }
  float dq[NDT][4];
#pragma unroll
  for (int dt = 0; dt < NDT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[dt][e] = 0.f;

  const int64_t kend = key_end(q0, kRows, p.seq_q, p.seq_k, p.causal);
  for (int64_t k0 = 0; k0 < kend; k0 += kRows) {
    __syncthreads();  // the previous K and V are no longer read
    load_tile<bf16, kRows, DMAX, LD, kThreads>(Ks, K, p.sk.row, k0, 0, p.seq_k, D, p.vec);
    load_tile<bf16, kRows, DMAX, LD, kThreads>(Vs, V, p.sv.row, k0, 0, p.seq_k, D, p.vec);
    cp_async_commit();
    cp_async_wait<0>();  // (and Q, dO on the first pass)
    __syncthreads();

    // dS: 16 queries x 64 keys per warp; element e of tile nt is query
    // rows[e >> 1], key k0 + 8 nt + 2 t + (e & 1).
    float s[8][4], dpm[8][4];
    recompute_tile<LD, NKD, 8, DROP>(s, dpm, Qs, dOs, Ks, Vs, p, dkey, L, [&](int nt, int e) {
      return ElemAt{rows[e >> 1], k0 + 8 * nt + 2 * L.t + (e & 1), li[e >> 1], di[e >> 1]};
    });
    add_pv<LD>(dq, dpm, Ks, L);  // dQ += dS K: k = the 64 keys in 4 steps of 16
  }
  cp_async_wait<0>();  // Q and dO, if no key block ran

#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int64_t i = rows[hr];
    if (i >= p.seq_q) continue;
    add_row<true>(head_ptr<bf16>(p.dq, p.sq, b, h) + i * p.sq.row, dq, hr, D, p.scale, L);
  }
}

template <int DMAX, bool DROP>
void forward(const FwdParams& p, int64_t batch) {
  const size_t smem = sizeof(bf16) * 3 * kRows * (DMAX + 8);
  launch_heads<kRows, kThreads>(fwd_bf16_kernel<DMAX, DROP>, smem, p.seq_q, p, batch,
                                "attention fwd_bf16_kernel");
}

template <int DMAX, bool DROP>
void backward(const BwdParams& p, int64_t batch) {
  constexpr int LD = DMAX + 8;
  if (p.seq_k > 0)
    launch_heads<kRows, kThreads>(bwd_dkdv_bf16_kernel<DMAX, DROP>,
                                  sizeof(bf16) * (2 * kRows + 2 * 32) * LD + sizeof(float) * 2 * 32,
                                  p.seq_k, p, batch, "attention bwd_dkdv_bf16_kernel");
  launch_heads<kRows, kThreads>(bwd_dq_bf16_kernel<DMAX, DROP>, sizeof(bf16) * 4 * kRows * LD,
                                p.seq_q, p, batch, "attention bwd_dq_bf16_kernel");
}

}  // namespace

// Each instance by head-dim bound and dropout.
void launch_forward_bf16(const FwdParams& p, int64_t batch) {
  const bool drop = p.drop_threshold != 0;
  if (p.head_dim <= 64)
    (drop ? forward<64, true> : forward<64, false>)(p, batch);
  else
    (drop ? forward<128, true> : forward<128, false>)(p, batch);
}

void launch_backward_bf16(const BwdParams& p, int64_t batch) {
  const bool drop = p.drop_threshold != 0;
  if (p.head_dim <= 64)
    (drop ? backward<64, true> : backward<64, false>)(p, batch);
  else
    (drop ? backward<128, true> : backward<128, false>)(p, batch);
}

}  // namespace attn
}  // namespace cuda
}  // namespace fastlm
