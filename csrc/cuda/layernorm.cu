// LayerNorm over rows (the CPU's formulas). The forward and dx run one thread
// block per row. dweight and dbias are column sums over rows, made
// deterministic in two passes: each block of the backward sums its rows into
// its own partial row (one thread per column, rows in order), then one thread
// per column adds the partial rows in order. The row blocking depends on the
// shape only, so results repeat exactly. FASTLM_CUDA_POINTWISE=next opts in to
// warp-per-row kernels (below) where the row shape allows them.
#include "cuda/common.cuh"

namespace fastlm {
namespace cuda {

namespace {

constexpr int kMaxThreads = 256;
// Partials of up to this many columns (dweight and dbias) live in shared memory.
constexpr int64_t kSharedPartialCols = 6000;  // 48 KB less the reduction scratch

// Corrected two-pass statistics (Chan, Golub & LeVeque), as the CPU: the
// second pass sums both d = x - mean0 and d^2, removing the first mean's
// rounding error from mean and var.
__global__ void layernorm_forward_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                         const float* __restrict__ b, float* __restrict__ y,
                                         float* __restrict__ mean, float* __restrict__ rstd,
                                         int64_t cols, float eps) {
  __shared__ float red[33];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * cols;
  float* yr = y + row * cols;
  float s = 0.f;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += xr[j];
  const float mean0 = block_sum(s, red) / (float)cols;
  float sd = 0.f, q = 0.f;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const float d = xr[j] - mean0;
    sd += d;
    q = fmaf(d, d, q);
  }
  const float dm = block_sum(sd, red) / (float)cols;
  const float msq = block_sum(q, red) / (float)cols;
  const float v = isinf(msq) ? msq : msq - dm * dm;  // as the CPU's row_stats
  const float var = v < 0.f ? 0.f : v;
  const float mu = mean0 + dm;
  const float r = 1.f / sqrtf(var + eps);
  if (threadIdx.x == 0) {
    mean[row] = mu;
    rstd[row] = r;
  }
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
    yr[j] = fmaf((xr[j] - mu) * r, w[j], b[j]);
}

// dx (+)= (dnorm - mean(dnorm) - norm mean(dnorm norm)) rstd, dnorm = w dy;
// partial[block] = (sum of norm dy, sum of dy) over the block's rows.
// Thread t owns columns t, t + blockDim, ... of the partials throughout, so
// no synchronisation is needed around them.
__global__ void layernorm_backward_kernel(const float* __restrict__ dy, const float* __restrict__ x,
                                          const float* __restrict__ w,
                                          const float* __restrict__ mean,
                                          const float* __restrict__ rstd, float* __restrict__ dx,
                                          float* __restrict__ partial, int64_t rows, int64_t cols,
                                          int64_t rows_per_block, bool shared_partials,
                                          bool accumulate) {
  extern __shared__ float acc_shared[];
  __shared__ float red[33];
  float* mine = partial + (int64_t)blockIdx.x * 2 * cols;
  float* acc = shared_partials ? acc_shared : mine;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    acc[j] = 0.f;
    acc[cols + j] = 0.f;
  }
  const int64_t r0 = (int64_t)blockIdx.x * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
  for (int64_t r = r0; r < r1; ++r) {
    const float* dyr = dy + r * cols;
    const float* xr = x + r * cols;
    float* dxr = dx + r * cols;
    const float mu = mean[r], rs = rstd[r];
    float a0 = 0.f, a1 = 0.f;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float norm = (xr[j] - mu) * rs;
      // Rounded product (no FMA contraction) as on the CPU: both passes see the
      // same dnorm, so dnorm - mean(dnorm) cancels exactly where it should.
      const float dnorm = __fmul_rn(w[j], dyr[j]);
      a0 += dnorm;
      a1 = fmaf(dnorm, norm, a1);
    }
    const float m1 = block_sum(a0, red) / (float)cols;
    const float m2 = block_sum(a1, red) / (float)cols;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float g = dyr[j];
      const float norm = (xr[j] - mu) * rs;
      const float dnorm = __fmul_rn(w[j], g);
      const float t = fmaf(-norm, m2, dnorm - m1);
      dxr[j] = fmaf(t, rs, accumulate ? dxr[j] : 0.f);
      acc[j] = fmaf(norm, g, acc[j]);
      acc[cols + j] += g;
    }
  }
  if (shared_partials)
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      mine[j] = acc[j];
      mine[cols + j] = acc[cols + j];
    }
}

__global__ void layernorm_finish_kernel(const float* __restrict__ partial, float* __restrict__ dw,
                                        float* __restrict__ db, int64_t nblocks, int64_t cols) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float sw = 0.f, sb = 0.f;
  for (int64_t b = 0; b < nblocks; ++b) {
    sw += partial[b * 2 * cols + c];
    sb += partial[b * 2 * cols + cols + c];
  }
  dw[c] += sw;
  db[c] += sb;
}

// ---- The opt-in kernels (FASTLM_CUDA_POINTWISE=next) -------------------------
// One warp per row, the row held in registers as float4s (lane l owns float4s
// l, l + 32, ...), so x is read from memory once and no __syncthreads is
// needed per row; the statistics are the corrected two-pass ones above, over
// registers. Rows of cols % 4 == 0, cols <= 32 * 4 * kMaxV4, 16-byte aligned.
constexpr int kNextWarps = 8, kNextThreads = kNextWarps * kWarp;
constexpr int kMaxV4Forward = 16, kMaxV4Backward = 8;
// Row blocks of the backward: a number fixed by the shape, so results repeat.
constexpr int64_t kNextMaxBlocks = 1024;

__device__ __forceinline__ float sum4(float4 v) { return (v.x + v.y) + (v.z + v.w); }

template <int V4>
__global__ void __launch_bounds__(kNextThreads)
    layernorm_forward_next_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                  const float* __restrict__ b, float* __restrict__ y,
                                  float* __restrict__ mean, float* __restrict__ rstd,
                                  int64_t rows, int64_t cols, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * kNextWarps + (threadIdx.x >> 5);
  if (row >= rows) return;  // the whole warp: no barrier below
  const int64_t c4 = cols / 4;
  const float4* xr = reinterpret_cast<const float4*>(x + row * cols);
  float4 v[V4];
  float s = 0.f;
#pragma unroll
  for (int u = 0; u < V4; ++u) {
    const int64_t j = lane + u * kWarp;
    v[u] = j < c4 ? xr[j] : make_float4(0.f, 0.f, 0.f, 0.f);
    s += sum4(v[u]);
  }
  const float inv = 1.f / (float)cols;
  const float mean0 = warp_sum(s) * inv;
  float sd = 0.f, q = 0.f;
#pragma unroll
  for (int u = 0; u < V4; ++u) {
    if (lane + u * kWarp < c4) {
      const float d0 = v[u].x - mean0, d1 = v[u].y - mean0, d2 = v[u].z - mean0,
                  d3 = v[u].w - mean0;
      sd += (d0 + d1) + (d2 + d3);
      q = fmaf(d0, d0, fmaf(d1, d1, fmaf(d2, d2, fmaf(d3, d3, q))));
    }
  }
  const float dm = warp_sum(sd) * inv;
  const float msq = warp_sum(q) * inv;
  const float var0 = isinf(msq) ? msq : msq - dm * dm;
  const float var = var0 < 0.f ? 0.f : var0;
  const float mu = mean0 + dm;
  const float r = 1.f / sqrtf(var + eps);
  if (lane == 0) {
    mean[row] = mu;
    rstd[row] = r;
  }
  const float4* w4 = reinterpret_cast<const float4*>(w);
  const float4* b4 = reinterpret_cast<const float4*>(b);
  float4* yr = reinterpret_cast<float4*>(y + row * cols);
#pragma unroll
  for (int u = 0; u < V4; ++u) {
    const int64_t j = lane + u * kWarp;
    if (j < c4) {
      const float4 ww = w4[j], bb = b4[j];
      yr[j] = make_float4(fmaf((v[u].x - mu) * r, ww.x, bb.x), fmaf((v[u].y - mu) * r, ww.y, bb.y),
                          fmaf((v[u].z - mu) * r, ww.z, bb.z), fmaf((v[u].w - mu) * r, ww.w, bb.w));
    }
  }
}

// The backward's dx as the kernel above (the same formulas); each lane keeps
// the dweight / dbias partials of its own columns in registers across the
// rows its warp takes (rows r0 + warp, r0 + warp + 8, ...), then the block's
// warps add theirs in warp order into shared memory and write one partial row
// pair, which layernorm_finish_kernel sums in block order.
template <int V4>
__global__ void __launch_bounds__(kNextThreads)
    layernorm_backward_next_kernel(const float* __restrict__ dy, const float* __restrict__ x,
                                   const float* __restrict__ w, const float* __restrict__ mean,
                                   const float* __restrict__ rstd, float* __restrict__ dx,
                                   float* __restrict__ partial, int64_t rows, int64_t cols,
                                   int64_t rows_per_block, bool accumulate) {
  extern __shared__ float4 acc_shared4[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t c4 = cols / 4;
  const float inv = 1.f / (float)cols;
  const float4* w4 = reinterpret_cast<const float4*>(w);
  float4 aw[V4], ab[V4];
#pragma unroll
  for (int u = 0; u < V4; ++u) aw[u] = ab[u] = make_float4(0.f, 0.f, 0.f, 0.f);
  const int64_t r0 = (int64_t)blockIdx.x * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
  for (int64_t r = r0 + warp; r < r1; r += kNextWarps) {
    const float4* dyr = reinterpret_cast<const float4*>(dy + r * cols);
    const float4* xr = reinterpret_cast<const float4*>(x + r * cols);
    float4* dxr = reinterpret_cast<float4*>(dx + r * cols);
    const float mu = mean[r], rs = rstd[r];
    float4 g[V4], nm[V4];
    float a0 = 0.f, a1 = 0.f;
#pragma unroll
    for (int u = 0; u < V4; ++u) {
      const int64_t j = lane + u * kWarp;
      if (j < c4) {
        g[u] = dyr[j];
        const float4 xv = xr[j], ww = w4[j];
        nm[u] = make_float4((xv.x - mu) * rs, (xv.y - mu) * rs, (xv.z - mu) * rs, (xv.w - mu) * rs);
        // Rounded products (no FMA contraction), as in the kernel above.
        const float d0 = __fmul_rn(ww.x, g[u].x), d1 = __fmul_rn(ww.y, g[u].y),
                    d2 = __fmul_rn(ww.z, g[u].z), d3 = __fmul_rn(ww.w, g[u].w);
        a0 += (d0 + d1) + (d2 + d3);
        a1 = fmaf(d3, nm[u].w, fmaf(d2, nm[u].z, fmaf(d1, nm[u].y, fmaf(d0, nm[u].x, a1))));
      }
    }
    const float m1 = warp_sum(a0) * inv;
    const float m2 = warp_sum(a1) * inv;
#pragma unroll
    for (int u = 0; u < V4; ++u) {
      const int64_t j = lane + u * kWarp;
      if (j < c4) {
        const float4 ww = w4[j];
        const float4 old = accumulate ? dxr[j] : make_float4(0.f, 0.f, 0.f, 0.f);
        float4 o;
        o.x = fmaf(fmaf(-nm[u].x, m2, __fmul_rn(ww.x, g[u].x) - m1), rs, old.x);
        o.y = fmaf(fmaf(-nm[u].y, m2, __fmul_rn(ww.y, g[u].y) - m1), rs, old.y);
        o.z = fmaf(fmaf(-nm[u].z, m2, __fmul_rn(ww.z, g[u].z) - m1), rs, old.z);
        o.w = fmaf(fmaf(-nm[u].w, m2, __fmul_rn(ww.w, g[u].w) - m1), rs, old.w);
        dxr[j] = o;
        aw[u].x = fmaf(nm[u].x, g[u].x, aw[u].x), aw[u].y = fmaf(nm[u].y, g[u].y, aw[u].y);
        aw[u].z = fmaf(nm[u].z, g[u].z, aw[u].z), aw[u].w = fmaf(nm[u].w, g[u].w, aw[u].w);
        ab[u].x += g[u].x, ab[u].y += g[u].y, ab[u].z += g[u].z, ab[u].w += g[u].w;
      }
    }
  }
  // Shared: dweight partials in [0, c4), dbias in [c4, 2 c4); warps in order.
  for (int k = 0; k < kNextWarps; ++k) {
    if (warp == k) {
#pragma unroll
      for (int u = 0; u < V4; ++u) {
        const int64_t j = lane + u * kWarp;
        if (j < c4) {
          float4& sw = acc_shared4[j];
          float4& sb = acc_shared4[c4 + j];
          if (k == 0) {
            sw = aw[u], sb = ab[u];
          } else {
            sw.x += aw[u].x, sw.y += aw[u].y, sw.z += aw[u].z, sw.w += aw[u].w;
            sb.x += ab[u].x, sb.y += ab[u].y, sb.z += ab[u].z, sb.w += ab[u].w;
          }
        }
      }
    }
    __syncthreads();
  }
  float4* mine = reinterpret_cast<float4*>(partial + (int64_t)blockIdx.x * 2 * cols);
  for (int64_t j = threadIdx.x; j < 2 * c4; j += blockDim.x) mine[j] = acc_shared4[j];
}

// The smallest instantiated float4-per-lane count covering cols, or 0.
int next_v4(int64_t cols, int max_v4) {
  static const int kCounts[] = {1, 2, 4, 6, 8, 12, 16};
  const int64_t need = cdiv(cols, 4 * kWarp);
  for (int c : kCounts)
    if (c <= max_v4 && need <= c) return c;
  return 0;
}

template <int V4>
void forward_next_launch(const float* x, const float* w, const float* b, float* y, float* mean,
                         float* rstd, int64_t rows, int64_t cols, float eps) {
  layernorm_forward_next_kernel<V4><<<(unsigned)cdiv(rows, kNextWarps), kNextThreads, 0, launch_stream()>>>(
      x, w, b, y, mean, rstd, rows, cols, eps);
  FASTLM_CHECK_LAUNCH("layernorm_forward_next_kernel");
}

// False (nothing launched) where the warp-per-row kernels do not apply.
bool forward_next(const float* x, const float* w, const float* b, float* y, float* mean,
                  float* rstd, int64_t rows, int64_t cols, float eps) {
  if (cols % 4 != 0 || !aligned16(x) || !aligned16(w) || !aligned16(b) || !aligned16(y) ||
      cdiv(rows, kNextWarps) > 0x7fffffffLL)
    return false;
  switch (next_v4(cols, kMaxV4Forward)) {
#define FASTLM_LN_CASE(V)                                           \
  case V: forward_next_launch<V>(x, w, b, y, mean, rstd, rows, cols, eps); return true;
    FASTLM_LN_CASE(1) FASTLM_LN_CASE(2) FASTLM_LN_CASE(4) FASTLM_LN_CASE(6) FASTLM_LN_CASE(8)
    FASTLM_LN_CASE(12) FASTLM_LN_CASE(16)
#undef FASTLM_LN_CASE
    default: return false;
  }
}

template <int V4>
void backward_next_launch(const float* dy, const float* x, const float* w, const float* mean,
                          const float* rstd, float* dx, float* dw, float* db, int64_t rows,
                          int64_t cols, bool accumulate) {
  const int64_t rpb = cdiv(rows, kNextMaxBlocks);
  const int64_t nb = cdiv(rows, rpb);
  Scratch partial(sizeof(float) * 2 * nb * cols);
  layernorm_backward_next_kernel<V4><<<(unsigned)nb, kNextThreads, sizeof(float) * 2 * cols, launch_stream()>>>(
      dy, x, w, mean, rstd, dx, partial.as<float>(), rows, cols, rpb, accumulate);
  FASTLM_CHECK_LAUNCH("layernorm_backward_next_kernel");
  layernorm_finish_kernel<<<(unsigned)cdiv(cols, 256), 256, 0, launch_stream()>>>(partial.as<float>(), dw, db, nb,
                                                               cols);
  FASTLM_CHECK_LAUNCH("layernorm_finish_kernel");
}

bool backward_next(const float* dy, const float* x, const float* w, const float* mean,
                   const float* rstd, float* dx, float* dw, float* db, int64_t rows, int64_t cols,
                   bool accumulate) {
  if (cols % 4 != 0 || !aligned16(dy) || !aligned16(x) || !aligned16(w) || !aligned16(dx))
    return false;
  switch (next_v4(cols, kMaxV4Backward)) {
#define FASTLM_LN_CASE(V)                                                              \
  case V:                                                                              \
    backward_next_launch<V>(dy, x, w, mean, rstd, dx, dw, db, rows, cols, accumulate); \
    return true;
    FASTLM_LN_CASE(1) FASTLM_LN_CASE(2) FASTLM_LN_CASE(4) FASTLM_LN_CASE(6) FASTLM_LN_CASE(8)
#undef FASTLM_LN_CASE
    default: return false;
  }
}

}  // namespace

void layernorm_forward(const float* x, const float* weight, const float* bias, float* y,
                       float* mean, float* rstd, int64_t rows, int64_t cols, float eps) {
  if (rows <= 0 || cols <= 0) return;
  if (pointwise_next() && forward_next(x, weight, bias, y, mean, rstd, rows, cols, eps)) return;
  layernorm_forward_kernel<<<row_grid(rows, "layernorm"), row_threads(cols, kMaxThreads), 0, launch_stream()>>>(
      x, weight, bias, y, mean, rstd, cols, eps);
  FASTLM_CHECK_LAUNCH("layernorm_forward_kernel");
}

void layernorm_backward_ex(const float* dy, const float* x, const float* weight,
                           const float* mean, const float* rstd, float* dx, float* dweight,
                           float* dbias, int64_t rows, int64_t cols, bool accumulate) {
  if (rows <= 0 || cols <= 0) return;
  if (pointwise_next() &&
      backward_next(dy, x, weight, mean, rstd, dx, dweight, dbias, rows, cols, accumulate))
    return;
  // At most 512 row blocks: enough to fill the GPU, and few partial rows to add.
  const int64_t rpb = cdiv(rows, 512);
  const int64_t nb = cdiv(rows, rpb);
  Scratch partial(sizeof(float) * 2 * nb * cols);
  const bool shared = cols <= kSharedPartialCols;
  const size_t smem = shared ? sizeof(float) * 2 * cols : 0;
  layernorm_backward_kernel<<<(unsigned)nb, row_threads(cols, kMaxThreads), smem, launch_stream()>>>(
      dy, x, weight, mean, rstd, dx, partial.as<float>(), rows, cols, rpb, shared, accumulate);
  FASTLM_CHECK_LAUNCH("layernorm_backward_kernel");
  layernorm_finish_kernel<<<(unsigned)cdiv(cols, 256), 256, 0, launch_stream()>>>(partial.as<float>(), dweight, dbias,
                                                               nb, cols);
  FASTLM_CHECK_LAUNCH("layernorm_finish_kernel");
}

void layernorm_backward(const float* dy, const float* x, const float* weight, const float* mean,
                        const float* rstd, float* dx, float* dweight, float* dbias, int64_t rows,
                        int64_t cols) {
  layernorm_backward_ex(dy, x, weight, mean, rstd, dx, dweight, dbias, rows, cols, true);
}

void layernorm_backward_write(const float* dy, const float* x, const float* weight,
                              const float* mean, const float* rstd, float* dx, float* dweight,
                              float* dbias, int64_t rows, int64_t cols) {
  layernorm_backward_ex(dy, x, weight, mean, rstd, dx, dweight, dbias, rows, cols, false);
}

}  // namespace cuda
}  // namespace fastlm
