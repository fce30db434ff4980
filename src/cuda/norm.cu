#include "cuda/norm.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "core/checks.h"
#include "cuda/check.h"
#include "cuda/dtype_dispatch.h"
#include "cuda/device_math.cuh"
#include "cuda/launch.h"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 256;          // a multiple of 32, at most 1024
constexpr int64_t kMaxBlocks = 65535;  // rows beyond this are covered by the grid-stride loop
constexpr int kNormChunks = 8;         // register path: rows up to kThreads * 8 * 16 bytes (16384 bf16 values)

// Sum over the block; every thread gets the total (same order in every thread, so deterministic).
// `red` holds one float per warp. Ends with a barrier, so it can be called again right away.
__device__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < n_warps; ++w) total += red[w];
  __syncthreads();
  return total;
}

// One block per row (grid-stride over rows).
template <typename T>
__global__ void rmsnorm_kernel(const T* x, const T* __restrict__ w, T* out, int64_t rows, int64_t H, float eps) {
  // x and out may alias: each element is read by the thread that writes it, after the block's reduction.
  __shared__ float red[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * H;
    T* o = out + r * H;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
      const float v = to_f32(xr[i]);
      ss += v * v;
    }
    ss = block_sum(ss, red);
    const float inv = rsqrtf(ss / float(H) + eps);
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
      // HF LlamaRMSNorm: weight * (x_f32 * inv).to(input_dtype); the product is rounded again.
      const float normed = to_f32(from_f32<T>(to_f32(xr[i]) * inv));
      o[i] = from_f32<T>(to_f32(w[i]) * normed);
    }
  }
}


// One block per row (grid-stride): x = round(x + delta), then out = rmsnorm(x) as rmsnorm_kernel. Each element is
// read and written by one thread only; out may alias delta (read before the reduction's barrier), not x.
template <typename T>
__global__ void add_rmsnorm_kernel(T* x, const T* delta, const T* __restrict__ w, T* out, int64_t rows, int64_t H,
                                   float eps) {
  __shared__ float red[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    T* xr = x + r * H;
    const T* dr = delta + r * H;
    T* o = out + r * H;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
      const T sum = from_f32<T>(to_f32(xr[i]) + to_f32(dr[i]));  // the standard add kernel's rounding
      xr[i] = sum;
      const float v = to_f32(sum);
      ss += v * v;
    }
    ss = block_sum(ss, red);
    const float inv = rsqrtf(ss / float(H) + eps);
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
      const float normed = to_f32(from_f32<T>(to_f32(xr[i]) * inv));
      o[i] = from_f32<T>(to_f32(w[i]) * normed);
    }
  }
}

// Rows held in registers: thread t owns chunks t, t + blockDim, ... (kChunks at most) of VEC elements, loaded
// 16 bytes at a time, all issued before the reduction; so a row costs one memory latency, not one per loop trip
// (the loops above, at T = 1, are one block waiting out H / 256 dependent trips: ~10 us for H = 2048). kAdd: x =
// round(x + delta) first, as add_rmsnorm_kernel. Same rounding points as the kernels above; the fp32 sum of
// squares is added in another order (rmsnorm and add_rmsnorm take this path under the same conditions, so
// they stay bit-identical to each other).
template <typename T, bool kAdd>
__global__ void rmsnorm_regs_kernel(T* x, const T* delta, const T* __restrict__ w, T* out, int64_t rows, int64_t H,
                                    float eps) {
  constexpr int VEC = 16 / sizeof(T);
  __shared__ float red[32];
  const int64_t n_chunks = H / VEC;
  pdl_launch_dependents();
  // The weight (no kernel writes it) is in registers before the wait: one memory latency less after it.
  T wv[kNormChunks][VEC];
#pragma unroll
  for (int j = 0; j < kNormChunks; ++j) {
    const int64_t c = threadIdx.x + int64_t(j) * blockDim.x;
    if (c < n_chunks) *reinterpret_cast<uint4*>(wv[j]) = __ldg(reinterpret_cast<const uint4*>(w + c * VEC));
  }
  pdl_wait();  // x and delta come from the kernels before (launch_pdl, cuda/launch.h)
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    T* xr = x + r * H;
    T v[kNormChunks][VEC];
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < kNormChunks; ++j) {
      const int64_t c = threadIdx.x + int64_t(j) * blockDim.x;
      if (c < n_chunks) *reinterpret_cast<uint4*>(v[j]) = *reinterpret_cast<const uint4*>(xr + c * VEC);
    }
    if constexpr (kAdd) {
#pragma unroll
      for (int j = 0; j < kNormChunks; ++j) {
        const int64_t c = threadIdx.x + int64_t(j) * blockDim.x;
        if (c < n_chunks) {
          T d[VEC];
          *reinterpret_cast<uint4*>(d) = *reinterpret_cast<const uint4*>(delta + r * H + c * VEC);
#pragma unroll
          for (int e = 0; e < VEC; ++e) v[j][e] = from_f32<T>(to_f32(v[j][e]) + to_f32(d[e]));
          *reinterpret_cast<uint4*>(xr + c * VEC) = *reinterpret_cast<const uint4*>(v[j]);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kNormChunks; ++j) {
      const int64_t c = threadIdx.x + int64_t(j) * blockDim.x;
      if (c < n_chunks)
#pragma unroll
        for (int e = 0; e < VEC; ++e) ss += to_f32(v[j][e]) * to_f32(v[j][e]);
    }
    ss = block_sum(ss, red);  // also the barrier after which out may overwrite delta (kAdd) or x (in place)
    const float inv = rsqrtf(ss / float(H) + eps);
    T* o = out + r * H;
#pragma unroll
    for (int j = 0; j < kNormChunks; ++j) {
      const int64_t c = threadIdx.x + int64_t(j) * blockDim.x;
      if (c < n_chunks) {
        T ov[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const float normed = to_f32(from_f32<T>(to_f32(v[j][e]) * inv));
          ov[e] = from_f32<T>(to_f32(wv[j][e]) * normed);
        }
        *reinterpret_cast<uint4*>(o + c * VEC) = *reinterpret_cast<const uint4*>(ov);
      }
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool rmsnorm_sums_by_chunks(DType dtype, int64_t H, std::initializer_list<const void*> ptrs) {
  const int64_t vec = 16 / dtype_block_bytes(dtype);
  if (H % vec != 0 || H / vec > int64_t(kThreads) * kNormChunks) return false;
  for (const void* p : ptrs)
    if (!aligned16(p)) return false;
  return true;
}

void rmsnorm(const Tensor& x, const Tensor& w, float eps, const Tensor& out, cudaStream_t stream) {
  const char* op = "rmsnorm";
  check_float_tensor(op, "x", x, Device::CUDA, 2);
  const int64_t rows = x.shape[0], H = x.shape[1];
  check_float_tensor(op, "weight", w, Device::CUDA, 1);
  check_dtype(op, "weight (x's dtype)", w, x.dtype);
  check_shape(op, "weight", w, {H});
  check_float_tensor(op, "out", out, Device::CUDA, 2);
  check_dtype(op, "out (x's dtype)", out, x.dtype);
  check_same_shape(op, "out (x's shape)", out, x);
  TD_CHECK(eps >= 0.0f, "rmsnorm: eps must not be negative, got {}", eps);
  if (rows == 0) return;
  TD_CHECK(H > 0, "rmsnorm: empty rows in {}", x.describe());
  check_data(op, {&x, &w, &out});
  const unsigned blocks = unsigned(std::min(rows, kMaxBlocks));
  dispatch_float(x.dtype, "rmsnorm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (rmsnorm_sums_by_chunks(x.dtype, H, {x.data, w.data, out.data}))
      launch_pdl(rmsnorm_regs_kernel<T, false>, blocks, kThreads, 0, stream, const_cast<T*>(x.ptr<const T>()),
                 nullptr, w.ptr<const T>(), out.ptr<T>(), rows, H, eps);
    else
      rmsnorm_kernel<T><<<blocks, kThreads, 0, stream>>>(x.ptr<const T>(), w.ptr<const T>(), out.ptr<T>(), rows, H,
                                                         eps);
    TD_CUDA_CHECK_LAUNCH();
  });
}

void add_rmsnorm(const Tensor& x, const Tensor& delta, const Tensor& w, float eps, const Tensor& out,
                 cudaStream_t stream) {
  const char* op = "add_rmsnorm";
  check_float_tensor(op, "x", x, Device::CUDA, 2);
  const int64_t rows = x.shape[0], H = x.shape[1];
  check_float_tensor(op, "delta", delta, Device::CUDA, 2);
  check_dtype(op, "delta (x's dtype)", delta, x.dtype);
  check_same_shape(op, "delta (x's shape)", delta, x);
  check_float_tensor(op, "weight", w, Device::CUDA, 1);
  check_dtype(op, "weight (x's dtype)", w, x.dtype);
  check_shape(op, "weight", w, {H});
  check_float_tensor(op, "out", out, Device::CUDA, 2);
  check_dtype(op, "out (x's dtype)", out, x.dtype);
  check_same_shape(op, "out (x's shape)", out, x);
  TD_CHECK(eps >= 0.0f, "add_rmsnorm: eps must not be negative, got {}", eps);
  TD_CHECK(out.data != x.data || rows == 0, "add_rmsnorm: out must not alias x (the residual stream) {}",
           x.describe());
  if (rows == 0) return;
  TD_CHECK(H > 0, "add_rmsnorm: empty rows in {}", x.describe());
  check_data(op, {&x, &delta, &w, &out});
  const unsigned blocks = unsigned(std::min(rows, kMaxBlocks));
  dispatch_float(x.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (rmsnorm_sums_by_chunks(x.dtype, H, {x.data, delta.data, w.data, out.data}))
      launch_pdl(rmsnorm_regs_kernel<T, true>, blocks, kThreads, 0, stream, x.ptr<T>(), delta.ptr<const T>(),
                 w.ptr<const T>(), out.ptr<T>(), rows, H, eps);
    else
      add_rmsnorm_kernel<T><<<blocks, kThreads, 0, stream>>>(x.ptr<T>(), delta.ptr<const T>(), w.ptr<const T>(),
                                                             out.ptr<T>(), rows, H, eps);
    TD_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace tandem::cuda
