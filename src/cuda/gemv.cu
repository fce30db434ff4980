#include "cuda/gemv.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "core/checks.h"
#include "cuda/check.h"
#include "cuda/device_math.cuh"
#include "cuda/dtype_dispatch.h"

namespace tandem::cuda {
namespace {

constexpr int kWarps = 8;  // outputs per block: one warp per output column i

// VEC elements per load (16 bytes, or 1). One warp computes out[:, i] for all R rows: it walks gate row i and up
// row I + i once, lanes striding by 32 * VEC elements, each lane keeping 2R fp32 partial sums.
template <typename T, int R, int VEC>
__global__ void gate_up_silu_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out,
                                    int64_t I, int64_t H) {
  const int lane = threadIdx.x & 31;
  const int64_t i = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (i >= I) return;  // whole warps leave together: no shuffle below misses a lane
  const T* wg = w + i * H;
  const T* wu = w + (I + i) * H;
  float g[R], u[R];
#pragma unroll
  for (int r = 0; r < R; ++r) g[r] = u[r] = 0.0f;
  for (int64_t k = int64_t(lane) * VEC; k < H; k += 32 * VEC) {
    T a[VEC], b[VEC];
    if constexpr (VEC > 1) {
      *reinterpret_cast<uint4*>(a) = __ldg(reinterpret_cast<const uint4*>(wg + k));
      *reinterpret_cast<uint4*>(b) = __ldg(reinterpret_cast<const uint4*>(wu + k));
    } else {
      a[0] = wg[k];
      b[0] = wu[k];
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      T xv[VEC];
      if constexpr (VEC > 1) *reinterpret_cast<uint4*>(xv) = __ldg(reinterpret_cast<const uint4*>(x + r * H + k));
      else xv[0] = x[r * H + k];
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float xf = to_f32(xv[e]);
        g[r] = fmaf(xf, to_f32(a[e]), g[r]);
        u[r] = fmaf(xf, to_f32(b[e]), u[r]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float gs = to_f32(from_f32<T>(warp_sum(g[r])));  // the GEMM's output rounding
    const float us = to_f32(from_f32<T>(warp_sum(u[r])));
    if (lane == 0) {
      const float act = to_f32(from_f32<T>(gs / (1.0f + expf(-gs))));  // silu_mul's rounding points
      out[r * I + i] = from_f32<T>(act * us);
    }
  }
}

template <typename T, int R>
void launch_rows(const Tensor& x, const Tensor& w, const Tensor& out, int64_t I, int64_t H, bool vec,
                 cudaStream_t stream) {
  constexpr int kVec = int(16 / sizeof(T));
  const unsigned blocks = unsigned((I + kWarps - 1) / kWarps);
  if (vec)
    gate_up_silu_kernel<T, R, kVec><<<blocks, 32 * kWarps, 0, stream>>>(x.ptr<const T>(), w.ptr<const T>(),
                                                                        out.ptr<T>(), I, H);
  else
    gate_up_silu_kernel<T, R, 1><<<blocks, 32 * kWarps, 0, stream>>>(x.ptr<const T>(), w.ptr<const T>(),
                                                                     out.ptr<T>(), I, H);
  TD_CUDA_CHECK_LAUNCH();
}

template <typename T, int R = 1>
void dispatch_rows(int64_t rows, const Tensor& x, const Tensor& w, const Tensor& out, int64_t I, int64_t H,
                   bool vec, cudaStream_t stream) {
  if constexpr (R <= kGemvMaxRows) {
    if (rows == R) return launch_rows<T, R>(x, w, out, I, H, vec, stream);
    dispatch_rows<T, R + 1>(rows, x, w, out, I, H, vec, stream);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void gate_up_silu(const Tensor& x, const Tensor& w, const Tensor& out, cudaStream_t stream) {
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
  TD_CHECK(T <= kGemvMaxRows, "gate_up_silu: {} rows; the GEMV kernel takes 1..{} (use the GEMM for more)", T,
           kGemvMaxRows);
  if (T == 0) return;
  TD_CHECK(H > 0, "gate_up_silu: empty rows in {}", x.describe());
  check_data(op, {&x, &w, &out});
  const int64_t elem = int64_t(dtype_block_bytes(x.dtype));
  const bool vec = (H * elem) % 16 == 0 && aligned16(x.data) && aligned16(w.data);
  dispatch_float(x.dtype, op, [&](auto tag) {
    using D = typename decltype(tag)::type;
    dispatch_rows<D>(T, x, w, out, I, H, vec, stream);
  });
}

}  // namespace tandem::cuda
