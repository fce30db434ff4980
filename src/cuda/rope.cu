#include "cuda/rope.cuh"

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
constexpr int64_t kMaxBlocks = 65535;  // rows beyond this are covered by the grid-stride loop

// One block per token row (grid-stride over rows). The row's cos/sin table (head_dim / 2 entries each) is built
// once in shared memory, then every (head, i) pair of the q and k heads is rotated by one thread.
template <typename T>
__global__ void rope_kernel(T* qkv, const int32_t* __restrict__ positions, const float* __restrict__ inv_freq,
                            int64_t rows, int64_t row_stride, int n_rot_heads, int half) {
  extern __shared__ float cs[];  // [0, half): cos, [half, 2 half): sin
  float* c = cs;
  float* s = cs + half;
  const int64_t n_pairs = int64_t(n_rot_heads) * half;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float pos = float(positions[r]);
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
      const float angle = pos * inv_freq[i];  // HF: fp32 angle, then cos/sin of it
      c[i] = cosf(angle);
      s[i] = sinf(angle);
    }
    __syncthreads();
    T* row = qkv + r * row_stride;
    for (int64_t p = threadIdx.x; p < n_pairs; p += blockDim.x) {
      const int64_t head = p / half;
      const int i = int(p % half);
      T* x = row + head * 2 * half;
      const float x1 = to_f32(x[i]), x2 = to_f32(x[i + half]);
      // Explicit roundings: no FMA contraction, so qkv_rope_kv_write (cuda/attention.cu) gives the same bits.
      x[i] = from_f32<T>(__fsub_rn(__fmul_rn(x1, c[i]), __fmul_rn(x2, s[i])));
      x[i + half] = from_f32<T>(__fadd_rn(__fmul_rn(x2, c[i]), __fmul_rn(x1, s[i])));
    }
    __syncthreads();  // the table is rebuilt for the next row
  }
}

}  // namespace

void rope(const Tensor& qkv, const Tensor& positions, const Tensor& inv_freq, int n_heads, int n_kv_heads,
          int head_dim, cudaStream_t stream) {
  const char* op = "rope";
  check_float_tensor(op, "qkv", qkv, Device::CUDA, 2);
  TD_CHECK(n_heads > 0 && n_kv_heads > 0 && head_dim > 0 && head_dim % 2 == 0,
           "rope: bad head layout {} q heads, {} kv heads, head_dim {} (head_dim must be even)", n_heads,
           n_kv_heads, head_dim);
  const int64_t rows = qkv.shape[0];
  const int64_t qkv_dim = (int64_t(n_heads) + 2 * int64_t(n_kv_heads)) * head_dim;
  check_shape(op, "qkv (q | k | v heads)", qkv, {-1, qkv_dim});
  check_index_tensor(op, "positions", positions, Device::CUDA, DType::I32, rows);
  check_index_tensor(op, "inv_freq", inv_freq, Device::CUDA, DType::F32, head_dim / 2);
  if (rows == 0) return;
  check_data(op, {&qkv, &positions, &inv_freq});
  const int half = head_dim / 2;
  const size_t shared_bytes = size_t(2 * half) * sizeof(float);
  TD_CHECK(shared_bytes <= 48 * 1024, "rope: head_dim {} is too large", head_dim);
  const unsigned blocks = unsigned(std::min(rows, kMaxBlocks));
  dispatch_float(qkv.dtype, "rope", [&](auto tag) {
    using T = typename decltype(tag)::type;
    rope_kernel<T><<<blocks, kThreads, shared_bytes, stream>>>(qkv.ptr<T>(), positions.ptr<const int32_t>(),
                                                               inv_freq.ptr<const float>(), rows, qkv_dim,
                                                               n_heads + n_kv_heads, half);
    TD_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace tandem::cuda
