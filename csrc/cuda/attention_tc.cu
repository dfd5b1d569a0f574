// bfloat16 flash attention on tensor cores (FlashAttention-2's scheme with
// mma.sync.m16n8k16, float32 accumulation and softmax statistics).
//
// Each block has 4 warps; a warp owns 16 rows of the block's 64 queries (the
// forward and dQ kernels) or of its 64 keys (the dK/dV kernel). Tiles come in
// by cp.async into shared rows padded by 8 elements (16 bytes), which keeps
// every ldmatrix row address 16-byte aligned and the 8 rows of each 8x8
// matrix on distinct banks.
//
// Operand fetches all follow the GEMM's patterns (matmul.cu), with tiles
// stored [row][dim]:
//   A operand, rows of a tile (Q, dO, K, V):  ldmatrix, matrix q at
//       row + 8 (q & 1), col + 8 (q >> 1)
//   B operand "transposed" (n = tile row, k = dim; for Q K^T-like products):
//       ldmatrix, matrix q at row + 8 (q >> 1), col + 8 (q & 1)
//   B operand "plain" (k = tile row, n = dim; for P V-like products):
//       ldmatrix.trans, matrix q at row + 8 (q & 1), col + 8 (q >> 1)
// A score tile in accumulator layout becomes the A operand of the next
// product without leaving registers: for k step kk (16 columns), the A
// registers are (C[2kk][0..1], C[2kk][2..3], C[2kk+1][0..1], C[2kk+1][2..3])
// packed to bfloat16x2.
#include "cuda/attention.cuh"

namespace fastlm {
namespace cuda {
namespace attn {

namespace {

constexpr int kThreads = 128;  // 4 warps
constexpr int kRows = 64;      // queries (or keys) per block, 16 per warp

struct Lane {
  int warp, lane, g, t, q, r8;
  __device__ Lane()
      : warp(threadIdx.x >> 5),
        lane(threadIdx.x & 31),
        g((threadIdx.x & 31) >> 2),
        t(threadIdx.x & 3),
        q((threadIdx.x & 31) >> 3),
        r8(threadIdx.x & 7) {}
};

// A fragment for rows [row, row + 16), dims [col, col + 16) of a tile.
template <int LD>
__device__ __forceinline__ void frag_a(uint32_t (&a)[4], const bf16* s, int row, int col,
                                       const Lane& L) {
  ldmatrix_x4(a, s + (row + (L.q & 1) * 8 + L.r8) * LD + col + (L.q >> 1) * 8);
}
// B fragments of two n tiles, n = tile rows [row, row + 16), k = dims [col, col + 16).
template <int LD>
__device__ __forceinline__ void frag_b_rows(uint32_t (&b)[4], const bf16* s, int row, int col,
                                            const Lane& L) {
  ldmatrix_x4(b, s + (row + (L.q >> 1) * 8 + L.r8) * LD + col + (L.q & 1) * 8);
}
// B fragments of two n tiles, k = tile rows [row, row + 16), n = dims [col, col + 16).
template <int LD>
__device__ __forceinline__ void frag_b_cols(uint32_t (&b)[4], const bf16* s, int row, int col,
                                            const Lane& L) {
  ldmatrix_x4_trans(b, s + (row + (L.q & 1) * 8 + L.r8) * LD + col + (L.q >> 1) * 8);
}

// Accumulator tiles c[2kk], c[2kk + 1] (16 columns) as an A operand.
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c0)[4],
                                         const float (&c1)[4]) {
  a[0] = pack_bf16(c0[0], c0[1]);
  a[1] = pack_bf16(c0[2], c0[3]);
  a[2] = pack_bf16(c1[0], c1[1]);
  a[3] = pack_bf16(c1[2], c1[3]);
}

template <int DMAX>
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
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
#pragma unroll
    for (int kd = 0; kd < NKD; ++kd)
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t kb[4];
        frag_b_rows<LD>(kb, Ks, 16 * np, 16 * kd, L);
        mma_bf16(s[2 * np], qf[kd], kb[0], kb[1]);
        mma_bf16(s[2 * np + 1], qf[kd], kb[2], kb[3]);
      }

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
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(kFullMask, mx[hr], 1));
      mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(kFullMask, mx[hr], 2));
      const float mn = fmaxf(m[hr], mx[hr]);
      mu[hr] = mn == -INFINITY ? 0.f : mn;
      const float corr = exp2f(m[hr] - mu[hr]);
      l[hr] *= corr;
#pragma unroll
      for (int dt = 0; dt < NDT; ++dt) {
        o[dt][2 * hr] *= corr;
        o[dt][2 * hr + 1] *= corr;
      }
      m[hr] = mn;
    }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pv = exp2f(s[nt][e] - mu[e >> 1]);
        l[e >> 1] += pv;
        s[nt][e] = pv;
      }

    cp_async_wait<0>();  // V
    __syncthreads();
    // O += P V: k = the 64 keys in 4 steps of 16, n = head dims.
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t pa[4];
      acc_to_a(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < DMAX / 16; ++dp) {
        uint32_t vb[4];
        frag_b_cols<LD>(vb, Vs, 16 * kk, 16 * dp, L);
        mma_bf16(o[2 * dp], pa, vb[0], vb[1]);
        mma_bf16(o[2 * dp + 1], pa, vb[2], vb[3]);
      }
    }
  }

  bf16* O = head_ptr<bf16>(p.out, p.so, b, h);
  float* lse = p.lse + (b * p.heads + h) * p.seq_q;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float lt = l[hr];
    lt += __shfl_xor_sync(kFullMask, lt, 1);
    lt += __shfl_xor_sync(kFullMask, lt, 2);
    const int64_t i = rows[hr];
    if (i >= p.seq_q) continue;
    const float inv = lt > 0.f ? 1.f / lt : 0.f;
    bf16* orow = O + i * p.so.row;
#pragma unroll
    for (int dt = 0; dt < NDT; ++dt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int d = 8 * dt + 2 * L.t + e;
        if (d < D) orow[d] = __float2bfloat16_rn(o[dt][2 * hr + e] * inv);
      }
    if (L.t == 0) lse[i] = lt == 0.f ? -INFINITY : (m[hr] + log2f(lt)) * kLn2;
  }
}

// dK, dV for the block's 64 keys (16 per warp), over query blocks of 32.
template <int DMAX>
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
  const float sl2 = p.scale * kLog2e;

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

    // S^T = K Q^T and dP^T = V dO^T: 16 keys x 32 queries per warp.
    float st[4][4], dpt[4][4];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.f;
#pragma unroll
    for (int kd = 0; kd < NKD; ++kd) {
      uint32_t ka[4], va[4];
      frag_a<LD>(ka, Ks, 16 * L.warp, 16 * kd, L);
      frag_a<LD>(va, Vs, 16 * L.warp, 16 * kd, L);
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        uint32_t qb[4], ob[4];
        frag_b_rows<LD>(qb, Qs, 16 * np, 16 * kd, L);
        frag_b_rows<LD>(ob, dOs, 16 * np, 16 * kd, L);
        mma_bf16(st[2 * np], ka, qb[0], qb[1]);
        mma_bf16(st[2 * np + 1], ka, qb[2], qb[3]);
        mma_bf16(dpt[2 * np], va, ob[0], ob[1]);
        mma_bf16(dpt[2 * np + 1], va, ob[2], ob[3]);
      }
    }
    // P^T = exp(S^T scale - lse), dS^T = P^T (dP^T - delta); element e of tile
    // nt is key keys[e >> 1], query q0 + 8 nt + 2 t + (e & 1).
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int il = 8 * nt + 2 * L.t + (e & 1);
        const float li = lse_s[il];
        float pv = 0.f;
        if (li != -INFINITY && visible(q0 + il, keys[e >> 1], p.seq_q, p.seq_k, p.causal))
          pv = exp2f(st[nt][e] * sl2 - li);
        st[nt][e] = pv;
        dpt[nt][e] = pv * (dpt[nt][e] - delta_s[il]);
      }
    // dV += P^T dO, dK += dS^T Q: k = the 32 queries in 2 steps of 16.
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      uint32_t pa[4], sa[4];
      acc_to_a(pa, st[2 * kk], st[2 * kk + 1]);
      acc_to_a(sa, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < DMAX / 16; ++dp) {
        uint32_t ob[4], qb[4];
        frag_b_cols<LD>(ob, dOs, 16 * kk, 16 * dp, L);
        frag_b_cols<LD>(qb, Qs, 16 * kk, 16 * dp, L);
        mma_bf16(dv[2 * dp], pa, ob[0], ob[1]);
        mma_bf16(dv[2 * dp + 1], pa, ob[2], ob[3]);
        mma_bf16(dk[2 * dp], sa, qb[0], qb[1]);
        mma_bf16(dk[2 * dp + 1], sa, qb[2], qb[3]);
      }
    }
  }
  cp_async_wait<0>();  // K and V, if no query block ran

#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int64_t key = keys[hr];
    if (key >= p.seq_k) continue;
    bf16* dK = head_ptr<bf16>(p.dk, p.sk, b, h) + key * p.sk.row;
    bf16* dV = head_ptr<bf16>(p.dv, p.sv, b, h) + key * p.sv.row;
#pragma unroll
    for (int dt = 0; dt < NDT; ++dt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int d = 8 * dt + 2 * L.t + e;
        if (d >= D) continue;
        dK[d] = __float2bfloat16_rn(__bfloat162float(dK[d]) + dk[dt][2 * hr + e] * p.scale);
        dV[d] = __float2bfloat16_rn(__bfloat162float(dV[d]) + dv[dt][2 * hr + e]);
      }
  }
}

// dQ for the block's 64 queries (16 per warp), over key blocks of 64.
template <int DMAX>
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
  const float sl2 = p.scale * kLog2e;

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

    // S = Q K^T and dP = dO V^T: 16 queries x 64 keys per warp.
    float s[8][4], dpm[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = dpm[nt][e] = 0.f;
#pragma unroll
    for (int kd = 0; kd < NKD; ++kd) {
      uint32_t qa[4], oa[4];
      frag_a<LD>(qa, Qs, 16 * L.warp, 16 * kd, L);
      frag_a<LD>(oa, dOs, 16 * L.warp, 16 * kd, L);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t kb[4], vb[4];
        frag_b_rows<LD>(kb, Ks, 16 * np, 16 * kd, L);
        frag_b_rows<LD>(vb, Vs, 16 * np, 16 * kd, L);
        mma_bf16(s[2 * np], qa, kb[0], kb[1]);
        mma_bf16(s[2 * np + 1], qa, kb[2], kb[3]);
        mma_bf16(dpm[2 * np], oa, vb[0], vb[1]);
        mma_bf16(dpm[2 * np + 1], oa, vb[2], vb[3]);
      }
    }
    // dS = P (dP - delta), P = exp(S scale - lse); element e of tile nt is
    // query rows[e >> 1], key k0 + 8 nt + 2 t + (e & 1).
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int hr = e >> 1;
        const int64_t key = k0 + 8 * nt + 2 * L.t + (e & 1);
        float ds = 0.f;
        if (li[hr] != -INFINITY && visible(rows[hr], key, p.seq_q, p.seq_k, p.causal))
          ds = exp2f(s[nt][e] * sl2 - li[hr]) * (dpm[nt][e] - di[hr]);
        dpm[nt][e] = ds;
      }
    // dQ += dS K: k = the 64 keys in 4 steps of 16.
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t sa[4];
      acc_to_a(sa, dpm[2 * kk], dpm[2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < DMAX / 16; ++dp) {
        uint32_t kb[4];
        frag_b_cols<LD>(kb, Ks, 16 * kk, 16 * dp, L);
        mma_bf16(dq[2 * dp], sa, kb[0], kb[1]);
        mma_bf16(dq[2 * dp + 1], sa, kb[2], kb[3]);
      }
    }
  }
  cp_async_wait<0>();  // Q and dO, if no key block ran

#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int64_t i = rows[hr];
    if (i >= p.seq_q) continue;
    bf16* dQ = head_ptr<bf16>(p.dq, p.sq, b, h) + i * p.sq.row;
#pragma unroll
    for (int dt = 0; dt < NDT; ++dt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int d = 8 * dt + 2 * L.t + e;
        if (d < D)
          dQ[d] = __float2bfloat16_rn(__bfloat162float(dQ[d]) + dq[dt][2 * hr + e] * p.scale);
      }
  }
}

template <int DMAX>
void forward(const FwdParams& p, int64_t batch) {
  const size_t smem = sizeof(bf16) * 3 * kRows * (DMAX + 8);
  allow_shared_bytes(fwd_bf16_kernel<DMAX>, smem);
  const dim3 grid((unsigned)cdiv(p.seq_q, kRows), (unsigned)p.heads, (unsigned)batch);
  fwd_bf16_kernel<DMAX><<<grid, kThreads, smem>>>(p);
  FASTLM_CHECK_LAUNCH("attention fwd_bf16_kernel");
}

template <int DMAX>
void backward(const BwdParams& p, int64_t batch) {
  constexpr int LD = DMAX + 8;
  if (p.seq_k > 0) {
    const size_t smem = sizeof(bf16) * (2 * kRows + 2 * 32) * LD + sizeof(float) * 2 * 32;
    allow_shared_bytes(bwd_dkdv_bf16_kernel<DMAX>, smem);
    const dim3 grid((unsigned)cdiv(p.seq_k, kRows), (unsigned)p.heads, (unsigned)batch);
    bwd_dkdv_bf16_kernel<DMAX><<<grid, kThreads, smem>>>(p);
    FASTLM_CHECK_LAUNCH("attention bwd_dkdv_bf16_kernel");
  }
  const size_t smem = sizeof(bf16) * 4 * kRows * LD;
  allow_shared_bytes(bwd_dq_bf16_kernel<DMAX>, smem);
  const dim3 grid((unsigned)cdiv(p.seq_q, kRows), (unsigned)p.heads, (unsigned)batch);
  bwd_dq_bf16_kernel<DMAX><<<grid, kThreads, smem>>>(p);
  FASTLM_CHECK_LAUNCH("attention bwd_dq_bf16_kernel");
}

}  // namespace

void launch_forward_bf16(const FwdParams& p, int64_t batch) {
  if (p.head_dim <= 64)
    forward<64>(p, batch);
  else
    forward<128>(p, batch);
}

void launch_backward_bf16(const BwdParams& p, int64_t batch) {
  if (p.head_dim <= 64)
    backward<64>(p, batch);
  else
    backward<128>(p, batch);
}

}  // namespace attn
}  // namespace cuda
}  // namespace fastlm
