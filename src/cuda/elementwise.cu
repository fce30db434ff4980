#include "cuda/elementwise.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "core/checks.h"
#include "cuda/check.h"
#include "cuda/dtype_dispatch.h"
#include "cuda/device_math.cuh"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxFlatBlocks = 4096;  // flat grid-stride kernels: 1M threads cover any GPU
constexpr int64_t kMaxRowBlocks = 65535;  // one block per row, grid-stride beyond

unsigned flat_blocks(int64_t n) { return unsigned(std::min((n + kThreads - 1) / kThreads, kMaxFlatBlocks)); }

template <typename T>
__global__ void add_bias_kernel(T* x, const T* __restrict__ bias, int64_t n, int64_t N) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = from_f32<T>(to_f32(x[i]) + to_f32(bias[i % N]));
}

template <typename T>
__global__ void silu_mul_kernel(const T* __restrict__ gate_up, T* __restrict__ out, int64_t n, int64_t I) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / I, j = i % I;
    const float g = to_f32(gate_up[t * 2 * I + j]);
    const float u = to_f32(gate_up[t * 2 * I + I + j]);
    // HF LlamaMLP: act_fn(gate) is rounded to the activation dtype, then the product with up is rounded.
    const float act = to_f32(from_f32<T>(g / (1.0f + expf(-g))));
    out[i] = from_f32<T>(act * u);
  }
}

template <typename T>
__global__ void add_kernel(const T* a, const T* b, T* out, int64_t n) {  // out may alias a or b
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}

template <typename S, typename D>
__global__ void convert_kernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = from_f32<D>(to_f32(src[i]));
}

template <typename T>
__global__ void gather_rows_kernel(const T* __restrict__ src, const int32_t* __restrict__ rows, T* __restrict__ out,
                                   int64_t n_rows, int64_t src_rows, int64_t N) {
  for (int64_t r = blockIdx.x; r < n_rows; r += gridDim.x) {
    const int64_t s = rows[r];
    T* o = out + r * N;
    if (s < 0 || s >= src_rows) {  // never read outside src: a bad index makes a loud NaN row
      const T nan = from_f32<T>(__int_as_float(0x7fc00000));
      for (int64_t i = threadIdx.x; i < N; i += blockDim.x) o[i] = nan;
      continue;
    }
    const T* row = src + s * N;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) o[i] = row[i];
  }
}

}  // namespace

void add_bias(const Tensor& x, const Tensor& bias, cudaStream_t stream) {
  const char* op = "add_bias";
  check_float_tensor(op, "x", x, Device::CUDA, 2);
  check_float_tensor(op, "bias", bias, Device::CUDA, 1);
  const int64_t N = x.shape[1];
  check_dtype(op, "bias (x's dtype)", bias, x.dtype);
  check_shape(op, "bias (x's width)", bias, {N});
  const int64_t n = x.numel();
  if (n == 0) return;
  check_data(op, {&x, &bias});
  dispatch_float(x.dtype, "add_bias", [&](auto tag) {
    using T = typename decltype(tag)::type;
    add_bias_kernel<T><<<flat_blocks(n), kThreads, 0, stream>>>(x.ptr<T>(), bias.ptr<const T>(), n, N);
    TD_CUDA_CHECK_LAUNCH();
  });
}

void silu_mul(const Tensor& gate_up, const Tensor& out, cudaStream_t stream) {
  const char* op = "silu_mul";
  check_float_tensor(op, "gate_up", gate_up, Device::CUDA, 2);
  check_float_tensor(op, "out", out, Device::CUDA, 2);
  const int64_t T = gate_up.shape[0], I = gate_up.shape[1] / 2;
  TD_CHECK(gate_up.shape[1] % 2 == 0, "silu_mul: gate_up must be [T, 2I] (an even width), got {}", gate_up.describe());
  check_dtype(op, "out (gate_up's dtype)", out, gate_up.dtype);
  check_shape(op, "out ([T, I] for gate_up [T, 2I])", out, {T, I});
  const int64_t n = out.numel();
  if (n == 0) return;
  check_data(op, {&gate_up, &out});
  dispatch_float(out.dtype, "silu_mul", [&](auto tag) {
    using D = typename decltype(tag)::type;
    silu_mul_kernel<D><<<flat_blocks(n), kThreads, 0, stream>>>(gate_up.ptr<const D>(), out.ptr<D>(), n, I);
    TD_CUDA_CHECK_LAUNCH();
  });
}

void add(const Tensor& a, const Tensor& b, const Tensor& out, cudaStream_t stream) {
  const char* op = "add";
  check_float_tensor(op, "a", a, Device::CUDA, -1);
  check_float_tensor(op, "b", b, Device::CUDA, -1);
  check_float_tensor(op, "out", out, Device::CUDA, -1);
  check_same_shape(op, "b (a's shape)", b, a);
  check_dtype(op, "b (a's dtype)", b, a.dtype);
  check_same_shape(op, "out (a's shape)", out, a);
  check_dtype(op, "out (a's dtype)", out, a.dtype);
  const int64_t n = a.numel();
  if (n == 0) return;
  check_data(op, {&a, &b, &out});
  dispatch_float(a.dtype, "add", [&](auto tag) {
    using T = typename decltype(tag)::type;
    add_kernel<T><<<flat_blocks(n), kThreads, 0, stream>>>(a.ptr<const T>(), b.ptr<const T>(), out.ptr<T>(), n);
    TD_CUDA_CHECK_LAUNCH();
  });
}

void convert(const Tensor& src, const Tensor& dst, cudaStream_t stream) {
  const char* op = "convert";
  check_float_tensor(op, "src", src, Device::CUDA, -1);
  check_float_tensor(op, "dst", dst, Device::CUDA, -1);
  TD_CHECK(src.numel() == dst.numel(), "convert: {} -> {} (element counts differ)", src.describe(), dst.describe());
  const int64_t n = src.numel();
  if (n == 0) return;
  check_data(op, {&src, &dst});
  if (src.data == dst.data && src.dtype == dst.dtype) return;  // converting in place to the same dtype
  const char* s0 = static_cast<const char*>(src.data);
  const char* d0 = static_cast<const char*>(dst.data);
  TD_CHECK(s0 + src.nbytes() <= d0 || d0 + dst.nbytes() <= s0, "convert: src {} and dst {} overlap in memory",
           src.describe(), dst.describe());
  if (src.dtype == dst.dtype) {
    TD_CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, size_t(src.nbytes()), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  dispatch_float(src.dtype, "convert", [&](auto src_tag) {
    using S = typename decltype(src_tag)::type;
    dispatch_float(dst.dtype, "convert", [&](auto dst_tag) {
      using D = typename decltype(dst_tag)::type;
      convert_kernel<S, D><<<flat_blocks(n), kThreads, 0, stream>>>(src.ptr<const S>(), dst.ptr<D>(), n);
      TD_CUDA_CHECK_LAUNCH();
    });
  });
}

void gather_rows(const Tensor& src, const Tensor& rows, const Tensor& out, cudaStream_t stream) {
  const char* op = "gather_rows";
  check_float_tensor(op, "src", src, Device::CUDA, 2);
  check_float_tensor(op, "out", out, Device::CUDA, 2);
  check_index_tensor(op, "rows", rows, Device::CUDA, DType::I32, -1);
  const int64_t R = rows.shape[0], N = src.shape[1];
  check_dtype(op, "out (src's dtype)", out, src.dtype);
  check_shape(op, "out ([rows, src width])", out, {R, N});
  if (R == 0 || N == 0) return;
  check_data(op, {&src, &rows, &out});
  const unsigned blocks = unsigned(std::min(R, kMaxRowBlocks));
  dispatch_float(src.dtype, "gather_rows", [&](auto tag) {
    using T = typename decltype(tag)::type;
    gather_rows_kernel<T><<<blocks, kThreads, 0, stream>>>(src.ptr<const T>(), rows.ptr<const int32_t>(), out.ptr<T>(),
                                                           R, src.shape[0], N);
    TD_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace tandem::cuda
