#include "cuda/elementwise.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

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

bool is_float(DType d) { return d == DType::F32 || d == DType::F16 || d == DType::BF16; }

// A contiguous CUDA tensor of a float dtype with `ndim` dimensions (any rank when ndim < 0).
void check_float_cuda(const Tensor& t, int ndim, const char* op, const char* name) {
  TD_CHECK(t.device == Device::CUDA && (ndim < 0 || t.ndim == ndim) && t.is_contiguous() && is_float(t.dtype),
           "{}: {} must be a contiguous {}f32/f16/bf16 CUDA tensor, got {}", op, name,
           ndim < 0 ? std::string() : std::to_string(ndim) + "-D ", t.describe());
}

bool same_shape(const Tensor& a, const Tensor& b) {
  if (a.ndim != b.ndim) return false;
  for (int i = 0; i < a.ndim; ++i)
    if (a.shape[size_t(i)] != b.shape[size_t(i)]) return false;
  return true;
}

}  // namespace

void add_bias(const Tensor& x, const Tensor& bias, cudaStream_t stream) {
  check_float_cuda(x, 2, "add_bias", "x");
  check_float_cuda(bias, 1, "add_bias", "bias");
  const int64_t N = x.shape[1];
  TD_CHECK(bias.dtype == x.dtype && bias.shape[0] == N, "add_bias: bias {} for x {}", bias.describe(), x.describe());
  const int64_t n = x.numel();
  if (n == 0) return;
  TD_CHECK(x.data && bias.data, "add_bias: null data pointer (x {}, bias {})", x.describe(), bias.describe());
  dispatch_float(x.dtype, "add_bias", [&](auto tag) {
    using T = typename decltype(tag)::type;
    add_bias_kernel<T><<<flat_blocks(n), kThreads, 0, stream>>>(x.ptr<T>(), bias.ptr<const T>(), n, N);
    TD_CUDA_CHECK_LAUNCH();
  });
}

void silu_mul(const Tensor& gate_up, const Tensor& out, cudaStream_t stream) {
  check_float_cuda(gate_up, 2, "silu_mul", "gate_up");
  check_float_cuda(out, 2, "silu_mul", "out");
  const int64_t T = gate_up.shape[0], I = out.shape[1];
  TD_CHECK(out.dtype == gate_up.dtype && out.shape[0] == T && gate_up.shape[1] == 2 * I,
           "silu_mul: gate_up {} must be [T, 2I] of out {} ([T, I], same dtype)", gate_up.describe(),
           out.describe());
  const int64_t n = out.numel();
  if (n == 0) return;
  TD_CHECK(gate_up.data && out.data, "silu_mul: null data pointer (gate_up {}, out {})", gate_up.describe(),
           out.describe());
  dispatch_float(out.dtype, "silu_mul", [&](auto tag) {
    using D = typename decltype(tag)::type;
    silu_mul_kernel<D><<<flat_blocks(n), kThreads, 0, stream>>>(gate_up.ptr<const D>(), out.ptr<D>(), n, I);
    TD_CUDA_CHECK_LAUNCH();
  });
}

void add(const Tensor& a, const Tensor& b, const Tensor& out, cudaStream_t stream) {
  check_float_cuda(a, -1, "add", "a");
  check_float_cuda(b, -1, "add", "b");
  check_float_cuda(out, -1, "add", "out");
  TD_CHECK(same_shape(a, b) && same_shape(a, out) && b.dtype == a.dtype && out.dtype == a.dtype,
           "add: {} + {} -> {} (shapes and dtypes must match)", a.describe(), b.describe(), out.describe());
  const int64_t n = a.numel();
  if (n == 0) return;
  TD_CHECK(a.data && b.data && out.data, "add: null data pointer (a {}, b {}, out {})", a.describe(), b.describe(),
           out.describe());
  dispatch_float(a.dtype, "add", [&](auto tag) {
    using T = typename decltype(tag)::type;
    add_kernel<T><<<flat_blocks(n), kThreads, 0, stream>>>(a.ptr<const T>(), b.ptr<const T>(), out.ptr<T>(), n);
    TD_CUDA_CHECK_LAUNCH();
  });
}

void convert(const Tensor& src, const Tensor& dst, cudaStream_t stream) {
  check_float_cuda(src, -1, "convert", "src");
  check_float_cuda(dst, -1, "convert", "dst");
  TD_CHECK(src.numel() == dst.numel(), "convert: {} -> {} (element counts differ)", src.describe(), dst.describe());
  const int64_t n = src.numel();
  if (n == 0) return;
  TD_CHECK(src.data && dst.data, "convert: null data pointer (src {}, dst {})", src.describe(), dst.describe());
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
  check_float_cuda(src, 2, "gather_rows", "src");
  check_float_cuda(out, 2, "gather_rows", "out");
  TD_CHECK(rows.device == Device::CUDA && rows.ndim == 1 && rows.is_contiguous() && rows.dtype == DType::I32,
           "gather_rows: rows must be a contiguous 1-D i32 CUDA tensor, got {}", rows.describe());
  const int64_t R = rows.shape[0], N = src.shape[1];
  TD_CHECK(out.dtype == src.dtype && out.shape[0] == R && out.shape[1] == N,
           "gather_rows: out {} for {} rows of src {}", out.describe(), R, src.describe());
  if (R == 0 || N == 0) return;
  TD_CHECK(src.data && rows.data && out.data, "gather_rows: null data pointer (src {}, rows {}, out {})",
           src.describe(), rows.describe(), out.describe());
  const unsigned blocks = unsigned(std::min(R, kMaxRowBlocks));
  dispatch_float(src.dtype, "gather_rows", [&](auto tag) {
    using T = typename decltype(tag)::type;
    gather_rows_kernel<T><<<blocks, kThreads, 0, stream>>>(src.ptr<const T>(), rows.ptr<const int32_t>(), out.ptr<T>(),
                                                           R, src.shape[0], N);
    TD_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace tandem::cuda
