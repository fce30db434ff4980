#include "cuda/gemv.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <type_traits>

#include "core/checks.h"
#include "core/error.h"
#include "cuda/check.h"
#include "cuda/device_math.cuh"
#include "cuda/dtype_dispatch.h"
#include "cuda/launch.h"

namespace tandem::cuda {
namespace {

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
template <GemvTuning TUNE, typename T, int R, int VEC, int NW>
__device__ __forceinline__ void warp_dots(const T* __restrict__ x, const T* const (&w)[NW], int64_t k_begin,
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
        if constexpr (VEC > 1) *reinterpret_cast<uint4*>(xv) = __ldg(reinterpret_cast<const uint4*>(x + r * H + k));
        else xv[0] = x[r * H + k];
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

// out[:, i] = silu(gate row i . x) * (up row I + i . x) for all R rows.
template <GemvTuning TUNE, typename T, int R, int VEC, int SPLIT>
__global__ void __launch_bounds__(32 * kWarps, kMinBlocks<TUNE, R>)
    gate_up_silu_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out, int64_t I, int64_t H) {
  pdl_launch_dependents();
  __shared__ float red[SPLIT > 1 ? SPLIT : 1][kWarps][2 * R];
  const Split<SPLIT> sp(H, VEC);
  const bool live = sp.col < I;  // dead warps still meet the barrier
  const int64_t i = live ? sp.col : 0;
  const T* const rows[2] = {w + i * H, w + (I + i) * H};
  float acc[2][R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[0][r] = acc[1][r] = 0.0f;
  if (live) warp_dots<TUNE, T, R, VEC, 2>(x, rows, sp.k_begin, sp.k_end, H, acc);
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

// out[:, n] = w row n . x for all R rows.
template <GemvTuning TUNE, typename T, int R, int VEC, int SPLIT>
__global__ void __launch_bounds__(32 * kWarps, kMinBlocks<TUNE, R>)
    linear_gemv_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out, int64_t N, int64_t K) {
  pdl_launch_dependents();
  __shared__ float red[SPLIT > 1 ? SPLIT : 1][kWarps][R];
  const Split<SPLIT> sp(K, VEC);
  const bool live = sp.col < N;
  const int64_t n = live ? sp.col : 0;
  const T* const rows[1] = {w + n * K};
  float acc[1][R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[0][r] = 0.0f;
  if (live) warp_dots<TUNE, T, R, VEC, 1>(x, rows, sp.k_begin, sp.k_end, K, acc);
  pdl_wait();  // (again, for warps with no slice: out may still be read by the kernel before)
  reduce_slices<SPLIT, R>(acc[0], sp.slice, int((threadIdx.x >> 5) % Split<SPLIT>::kCols), red);
  if (!live || sp.slice != 0 || (threadIdx.x & 31) != 0) return;
#pragma unroll
  for (int r = 0; r < R; ++r) out[r * N + n] = from_f32<T>(acc[0][r]);
}

// Slices per column: at least two (measured: 5% faster than one even for the 128k-row logits), more until there
// are about 8192 warps in all (a full H100/H200 at 8 blocks an SM), never slices under 512 elements.
int split_for(int64_t N, int64_t K) {
  int s = 1;
  while (s < kWarps && (s < 2 || N * s < 8192) && K / (2 * s) >= 512) s *= 2;
  return s;
}

enum class Kernel { gate_up_silu, linear };

template <GemvTuning TUNE, typename T, int R, int SPLIT>
void launch_split(Kernel k, const Tensor& x, const Tensor& w, const Tensor& out, int64_t N, int64_t K, bool vec,
                  cudaStream_t stream) {
  constexpr int kVec = int(16 / sizeof(T));
  const unsigned blocks = unsigned((N + Split<SPLIT>::kCols - 1) / Split<SPLIT>::kCols);
  const T* xp = x.ptr<const T>();
  const T* wp = w.ptr<const T>();
  T* op = out.ptr<T>();
  const dim3 block(32 * kWarps);
  if (k == Kernel::gate_up_silu) {
    if (vec) launch_pdl(gate_up_silu_kernel<TUNE, T, R, kVec, SPLIT>, blocks, block, 0, stream, xp, wp, op, N, K);
    else launch_pdl(gate_up_silu_kernel<TUNE, T, R, 1, SPLIT>, blocks, block, 0, stream, xp, wp, op, N, K);
  } else {
    if (vec) launch_pdl(linear_gemv_kernel<TUNE, T, R, kVec, SPLIT>, blocks, block, 0, stream, xp, wp, op, N, K);
    else launch_pdl(linear_gemv_kernel<TUNE, T, R, 1, SPLIT>, blocks, block, 0, stream, xp, wp, op, N, K);
  }
}

template <typename T, int R>
void launch_rows(Kernel k, const Tensor& x, const Tensor& w, const Tensor& out, int64_t N, int64_t K, bool vec,
                 GemvTuning tuning, cudaStream_t stream) {
  const auto go = [&](auto tune) {
    constexpr GemvTuning U = decltype(tune)::value;
    switch (split_for(N, K)) {
      case 1: return launch_split<U, T, R, 1>(k, x, w, out, N, K, vec, stream);
      case 2: return launch_split<U, T, R, 2>(k, x, w, out, N, K, vec, stream);
      case 4: return launch_split<U, T, R, 4>(k, x, w, out, N, K, vec, stream);
      default: return launch_split<U, T, R, 8>(k, x, w, out, N, K, vec, stream);
    }
  };
  if (tuning == GemvTuning::deep)
    go(std::integral_constant<GemvTuning, GemvTuning::deep>{});
  else
    go(std::integral_constant<GemvTuning, GemvTuning::occupancy>{});
}

template <typename T, int R = 1>
void dispatch_rows(Kernel k, int64_t rows, const Tensor& x, const Tensor& w, const Tensor& out, int64_t N, int64_t K,
                   bool vec, GemvTuning tuning, cudaStream_t stream) {
  if constexpr (R <= kGemvMaxRows) {
    if (rows == R) return launch_rows<T, R>(k, x, w, out, N, K, vec, tuning, stream);
    dispatch_rows<T, R + 1>(k, rows, x, w, out, N, K, vec, tuning, stream);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void run(Kernel k, const char* op, const Tensor& x, const Tensor& w, const Tensor& out, int64_t N,
         std::optional<GemvTuning> tuning, cudaStream_t stream) {
  const int64_t T = x.shape[0], K = x.shape[1];
  TD_CHECK(T <= kGemvMaxRows, "{}: {} rows; the GEMV kernel takes 1..{} (use the GEMM for more)", op, T,
           kGemvMaxRows);
  if (T == 0) return;
  TD_CHECK(K > 0, "{}: empty rows in {}", op, x.describe());
  check_data(op, {&x, &w, &out});
  const int64_t elem = int64_t(dtype_block_bytes(x.dtype));
  const bool vec = (K * elem) % 16 == 0 && aligned16(x.data) && aligned16(w.data);
  dispatch_float(x.dtype, op, [&](auto tag) {
    using D = typename decltype(tag)::type;
    const GemvTuning t = tuning ? *tuning : gemv_tuning(T, k == Kernel::gate_up_silu ? 2 * N : N, K);
    dispatch_rows<D>(k, T, x, w, out, N, K, vec, t == GemvTuning::deep ? t : GemvTuning::occupancy, stream);
  });
}

}  // namespace

namespace {
// TANDEM_GEMV_TUNING=occupancy|deep|cublas (read once): one tuning for every shape, for measuring them.
std::optional<GemvTuning> forced_tuning() {
  static const std::optional<GemvTuning> forced = []() -> std::optional<GemvTuning> {
    const char* e = std::getenv("TANDEM_GEMV_TUNING");
    if (!e || !*e) return std::nullopt;
    const std::string v(e);
    if (v == "occupancy") return GemvTuning::occupancy;
    if (v == "deep") return GemvTuning::deep;
    if (v == "cublas") return GemvTuning::cublas;
    fail("TANDEM_GEMV_TUNING={}: expected occupancy, deep or cublas", v);
  }();
  return forced;
}
}  // namespace

GemvTuning gemv_tuning(int64_t rows, int64_t N, int64_t K) {
  if (rows > kGemvMaxRows) return GemvTuning::cublas;
  if (auto f = forced_tuning()) return *f;
  if (rows > kGemvFasterRows) return GemvTuning::cublas;
  // H200, bf16, batch 1 (GPU time per projection over the layers, one call): deep wins where the output is at
  // least as wide as the input (8B gate_up 1.87 ms vs 2.58 occupancy vs 2.09 cuBLASLt; qkv 0.84 vs 0.88 vs 0.86;
  // 1B gate_up 0.37 vs 0.48), occupancy where the input is wider (8B down 1.16 ms vs 1.28 deep: one wave of
  // 1024 blocks at 8 an SM against several at deep's occupancy).
  return K <= N ? GemvTuning::deep : GemvTuning::occupancy;
}

void gate_up_silu(const Tensor& x, const Tensor& w, const Tensor& out, cudaStream_t stream,
                  std::optional<GemvTuning> tuning) {
  const char* op = "gate_up_silu";
  check_float_tensor(op, "x", x, Device::CUDA, 2);
  const int64_t T = x.shape[0], H = x.shape[1];
  check_float_tensor(op, "w (gate | up)", w, Device::CUDA, 2);
  check_dtype(op, "w (x's dtype)", w, x.dtype);
  TD_CHECK(w.shape[1] == H && w.shape[0] % 2 == 0 && w.shape[0] > 0,
           "gate_up_silu: w must be [2I, {}] (gate rows, then up rows) for x {}, got {}", H, x.describe(),
           w.describe());
  const int64_t I = w.shape[0] / 2;
  check_float_tensor(op, "out", out, Device::CUDA, 2);
  check_dtype(op, "out (x's dtype)", out, x.dtype);
  check_shape(op, "out ([T, I])", out, {T, I});
  run(Kernel::gate_up_silu, op, x, w, out, I, tuning, stream);
}

void linear_gemv(const Tensor& x, const Tensor& w, const Tensor& out, cudaStream_t stream,
                 std::optional<GemvTuning> tuning) {
  const char* op = "linear_gemv";
  check_float_tensor(op, "x", x, Device::CUDA, 2);
  const int64_t T = x.shape[0], K = x.shape[1];
  check_float_tensor(op, "w", w, Device::CUDA, 2);
  check_dtype(op, "w (x's dtype)", w, x.dtype);
  check_shape(op, "w ([out features, x's in features])", w, {-1, K});
  const int64_t N = w.shape[0];
  TD_CHECK(N > 0, "linear_gemv: empty weight {}", w.describe());
  check_float_tensor(op, "out", out, Device::CUDA, 2);
  check_dtype(op, "out (x's dtype)", out, x.dtype);
  check_shape(op, "out ([T, N])", out, {T, N});
  run(Kernel::linear, op, x, w, out, N, tuning, stream);
}

}  // namespace tandem::cuda
