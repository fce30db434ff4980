// The GEMV kernels and their launch dispatch, for gemv.cu (host side) and the three files that instantiate them,
// one per dtype (gemv_f32.cu, gemv_f16.cu, gemv_bf16.cu): the templates come to several hundred kernels (rows x
// splits x tunings x fusions x load widths), which took one nvcc process over 3 minutes; split by dtype they
// compile in parallel. Internal to src/cuda: the contract is gemv.cuh.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "core/tensor.h"
#include "cuda/check.h"
#include "cuda/device_math.cuh"
#include "cuda/gemv.cuh"
#include "cuda/launch.h"

namespace tandem::cuda::gemv_detail {

constexpr int kWarps = 8;  // warps per block
// 16-byte weight loads per weight row each lane has in flight before it uses them: two loads a lane in all (one
// row: 2, gate | up: 1 each). Measured on an H200 over the decode shapes of Llama 1B/8B (weights cycled through
// more than L2, launches in a CUDA graph): 2 loads at 8 blocks an SM beat 4 or 8 loads at 4-6 blocks an SM by
// 5-25% (down 8B: 29 us vs 37 us at 4 loads), as more resident warps hide more latency than deeper unrolling.
// Two tunings, chosen per launch by gemv_tuning() (gemv.cuh): `occupancy` (the above; 32 registers at one row so
// 8 blocks fit an SM) and `deep` (4 loads per weight row in flight, no register cap: the tuning before).
template <GemvTuning TUNE, int NW>
inline constexpr int kUnroll = TUNE == GemvTuning::deep ? 4 : (NW == 1 ? 2 : 1);
template <GemvTuning TUNE, int R>
inline constexpr int kMinBlocks = TUNE == GemvTuning::occupancy && R == 1 ? 8 : 1;

// acc[n][r] += x[r] . w_n over H for the NW weight rows `w[n]` and R rows of x: lanes stride by 32 * VEC
// elements, kUnroll chunks per trip with every weight load issued first (weight bandwidth is the limit, so the
// loads must be in flight together). Partial sums stay per lane; the caller reduces over the warp.
// X_SHARED: x is the block's normalized copy in shared memory. Only the weights are read with __ldg: x is written by
// the kernel before while this one is already resident (launch_pdl), and ld.global.nc is only defined for memory
// that no one writes during the kernel's lifetime. Hence no __restrict__ on x anywhere here either: with it the
// compiler turns plain loads of a const x into ld.global.nc.
template <GemvTuning TUNE, typename T, int R, int VEC, int NW, bool X_SHARED = false>
__device__ __forceinline__ void warp_dots(const T* x, const T* const (&w)[NW], int64_t k_begin,
                                          int64_t k_end, int64_t H, float (&acc)[NW][R]) {
  const int lane = threadIdx.x & 31;
  constexpr int64_t kStep = 32 * VEC;
  constexpr int U = kUnroll<TUNE, NW>;
  for (int64_t k0 = k_begin + int64_t(lane) * VEC; k0 < k_end; k0 += kStep * U) {
    T wv[U][NW][VEC];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t k = k0 + u * kStep;
      if (k < k_end) {
#pragma unroll
        for (int n = 0; n < NW; ++n) {
          if constexpr (VEC > 1) *reinterpret_cast<uint4*>(wv[u][n]) = __ldg(reinterpret_cast<const uint4*>(w[n] + k));
          else wv[u][n][0] = w[n][k];
        }
      }
    }
    // The first weight loads are in flight before x, written by the kernel before, may be read (launch_pdl).
    if (k0 == k_begin + int64_t(lane) * VEC) pdl_wait();
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t k = k0 + u * kStep;
      if (k >= k_end) break;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        T xv[VEC];
        if constexpr (X_SHARED) {
          if constexpr (VEC > 1) *reinterpret_cast<uint4*>(xv) = *reinterpret_cast<const uint4*>(x + r * H + k);
          else xv[0] = x[r * H + k];
        } else {
          if constexpr (VEC > 1) *reinterpret_cast<uint4*>(xv) = *reinterpret_cast<const uint4*>(x + r * H + k);
          else xv[0] = x[r * H + k];
        }
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const float xf = to_f32(xv[e]);
#pragma unroll
          for (int n = 0; n < NW; ++n) acc[n][r] = fmaf(xf, to_f32(wv[u][n][e]), acc[n][r]);
        }
      }
    }
  }
}

// The block's 8 warps cover kWarps / SPLIT output columns, SPLIT warps per column, each over one slice of the
// dot product (a multiple of 32 * VEC elements); so that small-N projections still put enough loads in flight
// on every SM. The slices' warp sums meet in shared memory and are added in slice order (deterministic).
template <int SPLIT>
struct Split {
  static constexpr int kCols = kWarps / SPLIT;
  int64_t col;            // this warp's output column
  int slice;              // this warp's slice of the dot product
  int64_t k_begin, k_end;
  __device__ Split(int64_t K, int vec) {
    const int warp = threadIdx.x >> 5;
    col = int64_t(blockIdx.x) * kCols + warp % kCols;
    slice = warp / kCols;
    const int64_t chunk = 32 * vec;
    const int64_t per = (K + chunk * SPLIT - 1) / (chunk * SPLIT) * chunk;
    k_begin = min(K, slice * per);
    k_end = min(K, k_begin + per);
  }
};

// red[slice][col in block][value]: the warps' sums, reduced by slice 0's warps.
template <int SPLIT, int NV>
__device__ __forceinline__ void reduce_slices(float (&v)[NV], int slice, int col_in_block,
                                              float (*red)[kWarps][NV]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int j = 0; j < NV; ++j) v[j] = warp_sum(v[j]);
  if constexpr (SPLIT > 1) {
    if (lane == 0)
#pragma unroll
      for (int j = 0; j < NV; ++j) red[slice][col_in_block][j] = v[j];
    __syncthreads();
    if (slice == 0)
#pragma unroll
      for (int j = 0; j < NV; ++j) {
        float t = 0.0f;
        for (int s = 0; s < SPLIT; ++s) t += red[s][col_in_block][j];
        v[j] = t;
      }
  }
}

// What a kernel does around its dot products (gemv.cuh): nothing, RMSNorm x first (prologue), or add the result
// (and a bias) to `out`, the residual stream (epilogue).
enum class Fuse { none, rmsnorm, residual };

// The fused operands: the RMSNorm weight and eps (Fuse::rmsnorm), the bias added before the residual or null
// (Fuse::residual).
template <typename T>
struct Fused {
  const T* norm_w = nullptr;
  float eps = 0.0f;
  // The sum order of the rmsnorm launcher's kernel for these rows (norm.cuh rmsnorm_sums_by_chunks): 16-byte chunks
  // or one element at a time, whatever the GEMV's loads are.
  bool norm_chunks = false;
  const T* bias = nullptr;
};

// The block's R rows of x, RMSNorm'ed with g into shared memory xs [R][K]: inv = rsqrtf(sum(x^2) / K + eps),
// normed = round(x * inv), xs = round(g * normed): rmsnorm's rounding points (norm.cuh), and its sum order too:
// thread t adds the chunks t, t + 256, ... (VEC elements each) in turn, then the warps' sums are added in warp
// order, as rmsnorm_regs_kernel (VEC > 1) and rmsnorm_kernel (VEC = 1) do with their 256 threads; so xs holds
// exactly the bits the rmsnorm kernel would have written to h. Every thread of the block takes part; the last
// barrier makes xs visible to all warps.
template <typename T, int R, int VEC>
__device__ __forceinline__ void rmsnorm_rows_to_shared(const T* x, const T* __restrict__ g, float eps,
                                                       int64_t K, T* xs) {
  static_assert(32 * kWarps == 256, "the sum order mirrors the rmsnorm kernels' 256 threads");
  __shared__ float red[R][kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n_chunks = K / VEC;
  float ss[R];
#pragma unroll
  for (int r = 0; r < R; ++r) ss[r] = 0.0f;
  for (int64_t c = threadIdx.x; c < n_chunks; c += blockDim.x)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      T v[VEC];
      if constexpr (VEC > 1) *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(x + r * K + c * VEC);
      else v[0] = x[r * K + c];
      if constexpr (VEC > 1) *reinterpret_cast<uint4*>(xs + r * K + c * VEC) = *reinterpret_cast<const uint4*>(v);
      else xs[r * K + c] = v[0];
#pragma unroll
      for (int e = 0; e < VEC; ++e) ss[r] += to_f32(v[e]) * to_f32(v[e]);
    }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    ss[r] = warp_sum(ss[r]);
    if (lane == 0) red[r][warp] = ss[r];
  }
  __syncthreads();
  float inv[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float total = 0.0f;
    for (int w = 0; w < kWarps; ++w) total += red[r][w];
    inv[r] = rsqrtf(total / float(K) + eps);
  }
  // Each thread rewrites only the chunks it stored above: no barrier needed between the two passes.
  for (int64_t c = threadIdx.x; c < n_chunks; c += blockDim.x) {
    T gv[VEC];
    if constexpr (VEC > 1) *reinterpret_cast<uint4*>(gv) = __ldg(reinterpret_cast<const uint4*>(g + c * VEC));
    else gv[0] = g[c];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      T v[VEC];
      if constexpr (VEC > 1) *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(xs + r * K + c * VEC);
      else v[0] = xs[r * K + c];
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float normed = to_f32(from_f32<T>(to_f32(v[e]) * inv[r]));
        v[e] = from_f32<T>(to_f32(gv[e]) * normed);
      }
      if constexpr (VEC > 1) *reinterpret_cast<uint4*>(xs + r * K + c * VEC) = *reinterpret_cast<const uint4*>(v);
      else xs[r * K + c] = v[0];
    }
  }
  __syncthreads();
}

// Before the prologue's wait: ask L2 for the first weight chunks this lane will read, so that weight traffic is in
// flight while the block normalizes x (the unfused kernels load them into registers before their wait instead).
template <GemvTuning TUNE, typename T, int VEC, int NW>
__device__ __forceinline__ void prefetch_first_weights(const T* const (&w)[NW], int64_t k_begin, int64_t k_end) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int u = 0; u < kUnroll<TUNE, NW>; ++u) {
    const int64_t k = k_begin + int64_t(lane) * VEC + int64_t(u) * 32 * VEC;
    if (k < k_end)
#pragma unroll
      for (int n = 0; n < NW; ++n) asm volatile("prefetch.global.L2 [%0];" ::"l"(w[n] + k));
  }
}

// Fuse::rmsnorm: waits for x, normalizes the block's rows into dynamic shared memory and returns them; otherwise x.
template <Fuse F, GemvTuning TUNE, typename T, int R, int VEC, int NW>
__device__ __forceinline__ const T* gemv_input(const T* x, const T* const (&w)[NW], bool live, int64_t k_begin,
                                               int64_t k_end, int64_t K, const Fused<T>& f) {
  if constexpr (F == Fuse::rmsnorm) {
    extern __shared__ uint4 normed_x[];  // [R][K] of T (16-byte aligned)
    if (live) prefetch_first_weights<TUNE, T, VEC, NW>(w, k_begin, k_end);
    pdl_wait();  // x comes from the kernel before
    T* xs = reinterpret_cast<T*>(normed_x);
    if (f.norm_chunks) rmsnorm_rows_to_shared<T, R, int(16 / sizeof(T))>(x, f.norm_w, f.eps, K, xs);
    else rmsnorm_rows_to_shared<T, R, 1>(x, f.norm_w, f.eps, K, xs);
    return xs;
  } else {
    return x;
  }
}

// out[:, i] = silu(gate row i . x) * (up row I + i . x) for all R rows (x RMSNorm'ed first with Fuse::rmsnorm).
template <GemvTuning TUNE, typename T, int R, int VEC, int SPLIT, Fuse F>
__global__ void __launch_bounds__(32 * kWarps, kMinBlocks<TUNE, R>)
    gate_up_silu_kernel(const T* x, const T* __restrict__ w, T* out, int64_t I, int64_t H,
                        Fused<T> f) {
  static_assert(F != Fuse::residual, "gate_up_silu has no residual epilogue");
  pdl_launch_dependents();
  __shared__ float red[SPLIT > 1 ? SPLIT : 1][kWarps][2 * R];
  const Split<SPLIT> sp(H, VEC);
  const bool live = sp.col < I;  // dead warps still meet the barriers
  const int64_t i = live ? sp.col : 0;
  const T* const rows[2] = {w + i * H, w + (I + i) * H};
  const T* xin = gemv_input<F, TUNE, T, R, VEC, 2>(x, rows, live, sp.k_begin, sp.k_end, H, f);
  float acc[2][R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[0][r] = acc[1][r] = 0.0f;
  if (live) warp_dots<TUNE, T, R, VEC, 2, F == Fuse::rmsnorm>(xin, rows, sp.k_begin, sp.k_end, H, acc);
  pdl_wait();  // (again, for warps with no slice: out may still be read by the kernel before)
  float v[2 * R];
#pragma unroll
  for (int r = 0; r < R; ++r) v[r] = acc[0][r], v[R + r] = acc[1][r];
  reduce_slices<SPLIT, 2 * R>(v, sp.slice, int((threadIdx.x >> 5) % Split<SPLIT>::kCols), red);
  if (!live || sp.slice != 0 || (threadIdx.x & 31) != 0) return;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float gs = to_f32(from_f32<T>(v[r]));  // the GEMM's output rounding
    const float us = to_f32(from_f32<T>(v[R + r]));
    const float act = to_f32(from_f32<T>(gs / (1.0f + expf(-gs))));  // silu_mul's rounding points
    out[r * I + i] = from_f32<T>(act * us);
  }
}

// out[:, n] = w row n . x for all R rows; Fuse::rmsnorm: of RMSNorm'ed x; Fuse::residual: out[:, n] += that (after
// the bias), with the add kernel's rounding.
template <GemvTuning TUNE, typename T, int R, int VEC, int SPLIT, Fuse F>
__global__ void __launch_bounds__(32 * kWarps, kMinBlocks<TUNE, R>)
    linear_gemv_kernel(const T* x, const T* __restrict__ w, T* out, int64_t N, int64_t K,
                       Fused<T> f) {
  pdl_launch_dependents();
  __shared__ float red[SPLIT > 1 ? SPLIT : 1][kWarps][R];
  const Split<SPLIT> sp(K, VEC);
  const bool live = sp.col < N;
  const int64_t n = live ? sp.col : 0;
  const T* const rows[1] = {w + n * K};
  const T* xin = gemv_input<F, TUNE, T, R, VEC, 1>(x, rows, live, sp.k_begin, sp.k_end, K, f);
  float acc[1][R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[0][r] = 0.0f;
  if (live) warp_dots<TUNE, T, R, VEC, 1, F == Fuse::rmsnorm>(xin, rows, sp.k_begin, sp.k_end, K, acc);
  pdl_wait();  // (again, for warps with no slice: out may still be read by the kernel before)
  reduce_slices<SPLIT, R>(acc[0], sp.slice, int((threadIdx.x >> 5) % Split<SPLIT>::kCols), red);
  if (!live || sp.slice != 0 || (threadIdx.x & 31) != 0) return;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if constexpr (F == Fuse::residual) {
      // The standard path: h = linear (rounded), h = round(h + bias), x = round(x + h).
      float v = to_f32(from_f32<T>(acc[0][r]));
      if (f.bias) v = to_f32(from_f32<T>(v + to_f32(f.bias[n])));
      out[r * N + n] = from_f32<T>(to_f32(out[r * N + n]) + v);
    } else {
      out[r * N + n] = from_f32<T>(acc[0][r]);
    }
  }
}

// Slices per column: at least two (measured: 5% faster than one even for the 128k-row logits), more until there
// are about 8192 warps in all (a full H100/H200 at 8 blocks an SM), never slices under 512 elements.
inline int split_for(int64_t N, int64_t K) {
  int s = 1;
  while (s < kWarps && (s < 2 || N * s < 8192) && K / (2 * s) >= 512) s *= 2;
  return s;
}

enum class Kernel { gate_up_silu, linear };

// Dynamic shared memory above which a launch opts in to more than the default 48 KiB per block: the kernels' own
// static arrays (the slices' sums, the norm's warp sums) take at most a few KiB.
constexpr size_t kSmemOptInFrom = 40 * 1024;

template <typename T>
struct Launch {
  Kernel kernel;
  Fuse fuse;
  const Tensor& x;
  const Tensor& w;
  const Tensor& out;
  int64_t N, K;
  bool vec;
  Fused<T> f;
};

template <GemvTuning TUNE, typename T, int R, int SPLIT, Fuse F>
void launch_split(const Launch<T>& l, cudaStream_t stream) {
  constexpr int kVec = int(16 / sizeof(T));
  const unsigned blocks = unsigned((l.N + Split<SPLIT>::kCols - 1) / Split<SPLIT>::kCols);
  const T* xp = l.x.template ptr<const T>();
  const T* wp = l.w.template ptr<const T>();
  T* op = l.out.template ptr<T>();
  const dim3 block(32 * kWarps);
  const size_t smem = F == Fuse::rmsnorm ? size_t(R * l.K) * sizeof(T) : 0;
  const auto go = [&](auto kernel) {
    // Static and dynamic shared memory together past 48 KiB need the kernel's opt-in (a host-side attribute, not
    // a stream operation: allowed while a graph is captured). Only rows near gemv_norm_fits' limit get here.
    if (smem > kSmemOptInFrom)
      TD_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    launch_pdl(kernel, blocks, block, smem, stream, xp, wp, op, l.N, l.K, l.f);
  };
  if (l.kernel == Kernel::gate_up_silu) {
    if constexpr (F != Fuse::residual) {
      if (l.vec) go(gate_up_silu_kernel<TUNE, T, R, kVec, SPLIT, F>);
      else go(gate_up_silu_kernel<TUNE, T, R, 1, SPLIT, F>);
    }
  } else {
    if (l.vec) go(linear_gemv_kernel<TUNE, T, R, kVec, SPLIT, F>);
    else go(linear_gemv_kernel<TUNE, T, R, 1, SPLIT, F>);
  }
}

template <typename T, int R, Fuse F>
void launch_rows(const Launch<T>& l, GemvTuning tuning, cudaStream_t stream) {
  const auto go = [&](auto tune) {
    constexpr GemvTuning U = decltype(tune)::value;
    switch (split_for(l.N, l.K)) {
      case 1: return launch_split<U, T, R, 1, F>(l, stream);
      case 2: return launch_split<U, T, R, 2, F>(l, stream);
      case 4: return launch_split<U, T, R, 4, F>(l, stream);
      default: return launch_split<U, T, R, 8, F>(l, stream);
    }
  };
  if (tuning == GemvTuning::deep)
    go(std::integral_constant<GemvTuning, GemvTuning::deep>{});
  else
    go(std::integral_constant<GemvTuning, GemvTuning::occupancy>{});
}

// The fused kernels are instantiated for up to kGemvFusedMaxRows rows only (what decode uses; compile time).
template <typename T, int R = 1>
void dispatch_rows(const Launch<T>& l, int64_t rows, GemvTuning tuning, cudaStream_t stream) {
  if constexpr (R <= kGemvMaxRows) {
    if (rows == R) {
      if constexpr (R <= kGemvFusedMaxRows) {
        if (l.fuse == Fuse::rmsnorm) return launch_rows<T, R, Fuse::rmsnorm>(l, tuning, stream);
        if (l.fuse == Fuse::residual) return launch_rows<T, R, Fuse::residual>(l, tuning, stream);
      }
      TD_CHECK(l.fuse == Fuse::none, "gemv: fused epilogues take up to {} rows, got {}", kGemvFusedMaxRows, rows);
      return launch_rows<T, R, Fuse::none>(l, tuning, stream);
    }
    dispatch_rows<T, R + 1>(l, rows, tuning, stream);
  }
}

// Launches the kernel `l` asks for on `rows` rows of x (1..kGemvMaxRows; the fused forms up to kGemvFusedMaxRows).
template <typename T>
void launch(const Launch<T>& l, int64_t rows, GemvTuning tuning, cudaStream_t stream) {
  dispatch_rows<T>(l, rows, tuning, stream);
}

// Instantiated by gemv_f32.cu, gemv_f16.cu and gemv_bf16.cu only.
extern template void launch<float>(const Launch<float>&, int64_t, GemvTuning, cudaStream_t);
extern template void launch<__half>(const Launch<__half>&, int64_t, GemvTuning, cudaStream_t);
extern template void launch<__nv_bfloat16>(const Launch<__nv_bfloat16>&, int64_t, GemvTuning, cudaStream_t);

}  // namespace tandem::cuda::gemv_detail
