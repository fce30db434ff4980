// The kernel behind attention.test_f16_scores on the GPU (planted_gpu.h).
#include "planted_gpu.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "core/error.h"
#include "cuda/check.h"
#include "cuda/device_math.cuh"
#include "cuda/dtype_dispatch.h"

namespace tandem::planted {
namespace {

using cuda::from_f32;
using cuda::to_f32;

constexpr int kThreads = 128;

struct Geometry {
  const int32_t* indptr;
  const int32_t* indices;
  const int32_t* token_batch;
  int64_t batch, n_indices, num_pages, page_size;
  int64_t s_page, s_slot, s_head;
};

// Grid (T, n_heads): one block per token and q head. Each thread scores a strided share of the visible keys in fp32,
// the block takes the largest |score|; past 65504 the head's output row is NaN.
template <typename T>
__global__ void f16_overflow_kernel(const T* __restrict__ qkv, const int32_t* __restrict__ positions, Geometry g,
                                    const T* __restrict__ k_pool, T* __restrict__ out, int64_t qkv_dim,
                                    int64_t out_stride, int n_heads, int n_kv_heads, int head_dim, int window,
                                    float scale) {
  __shared__ float block_max[kThreads];
  const int64_t t = blockIdx.x;
  const int h = blockIdx.y;
  const int64_t pos = positions[t];
  const int64_t b = g.token_batch[t];
  bool valid = b >= 0 && b < g.batch && pos >= 0;
  int64_t begin = 0, end = 0;
  if (valid) {
    begin = g.indptr[b];
    end = g.indptr[b + 1];
    valid = begin >= 0 && begin <= end && end <= g.n_indices && pos / g.page_size < end - begin;
  }
  if (!valid) return;  // cuda::attention wrote NaN for it already
  const int kvh = h / (n_heads / n_kv_heads);
  const int64_t lo = window > 0 ? max(int64_t(0), pos - window + 1) : 0;
  const T* q = qkv + t * qkv_dim + int64_t(h) * head_dim;
  float m = 0;
  for (int64_t p = lo + threadIdx.x; p <= pos; p += blockDim.x) {
    const int64_t page = g.indices[begin + p / g.page_size];
    if (page < 0 || page >= g.num_pages) continue;
    const T* k = k_pool + page * g.s_page + (p % g.page_size) * g.s_slot + kvh * g.s_head;
    float dot = 0;
    for (int d = 0; d < head_dim; ++d) dot += to_f32(q[d]) * to_f32(k[d]);
    m = fmaxf(m, fabsf(dot * scale));
  }
  block_max[threadIdx.x] = m;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) block_max[threadIdx.x] = fmaxf(block_max[threadIdx.x], block_max[threadIdx.x + s]);
    __syncthreads();
  }
  if (!(block_max[0] > 65504.0f)) return;
  T* o = out + t * out_stride + int64_t(h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) o[d] = from_f32<T>(__int_as_float(0x7fc00000));
}

}  // namespace

void nan_where_scores_overflow_f16(const Tensor& qkv, const Tensor& positions, const PagedKv& kv,
                                   const AttentionShape& s, const Tensor& out, cudaStream_t stream) {
  const int64_t T = qkv.shape[0];
  if (T == 0) return;
  TD_CHECK(qkv.device == Device::CUDA && out.device == Device::CUDA && kv.k.device == Device::CUDA,
           "nan_where_scores_overflow_f16: tensors must be on the GPU");
  TD_CHECK(qkv.dtype == out.dtype && qkv.dtype == kv.k.dtype, "nan_where_scores_overflow_f16: one dtype, got {} {} {}",
           dtype_name(qkv.dtype), dtype_name(out.dtype), dtype_name(kv.k.dtype));
  TD_CHECK(qkv.strides[1] == 1 && out.strides[1] == 1, "nan_where_scores_overflow_f16: rows must be contiguous");
  const KvStrides st = kv_strides(kv.k, kv.layout);
  Geometry g{kv.page_indptr.ptr<const int32_t>(), kv.page_indices.ptr<const int32_t>(),
             kv.token_batch.ptr<const int32_t>(), kv.batch(), kv.page_indices.numel(), kv.k.shape[0], kv.page_size,
             st.page, st.slot, st.head};
  const float scale = 1.0f / std::sqrt(float(s.head_dim));
  cuda::dispatch_float(qkv.dtype, "nan_where_scores_overflow_f16", [&](auto tag) {
    using E = typename decltype(tag)::type;
    f16_overflow_kernel<E><<<dim3(unsigned(T), unsigned(s.n_heads)), kThreads, 0, stream>>>(
        qkv.ptr<const E>(), positions.ptr<const int32_t>(), g, kv.k.ptr<const E>(), out.ptr<E>(), qkv.strides[0],
        out.strides[0], s.n_heads, s.n_kv_heads, s.head_dim, s.sliding_window, scale);
  });
  TD_CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::planted
