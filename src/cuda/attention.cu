#include "cuda/attention.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "cuda/check.h"
#include "cuda/dtype_dispatch.h"
#include "cuda/device_math.cuh"

namespace tandem::cuda {
namespace {

constexpr int kMaxHeadDim = 256;  // one thread per output dimension, at most 256 threads a block
constexpr int kChunk = 64;        // keys scored per round of the online softmax
constexpr int kCopyThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // work items beyond this are covered by grid-stride loops

// The cache row of a token, or -1 when (base, pos) does not name a row of the pool. Overflow-safe.
__device__ __forceinline__ int64_t cache_row(int64_t base, int64_t pos, int64_t pool_rows) {
  if (base < 0 || base >= pool_rows || pos < 0 || pos >= pool_rows - base) return -1;
  return base + pos;
}

// One block per token (grid-stride): copies the token's k and v heads into its cache row.
template <typename T>
__global__ void kv_write_kernel(const T* __restrict__ qkv, const int64_t* __restrict__ kv_base,
                                const int32_t* __restrict__ positions, T* __restrict__ k_cache,
                                T* __restrict__ v_cache, int64_t n_tokens, int64_t qkv_dim, int64_t q_dim,
                                int64_t kv_dim, int64_t pool_rows) {
  for (int64_t t = blockIdx.x; t < n_tokens; t += gridDim.x) {
    const int64_t row = cache_row(kv_base[t], positions[t], pool_rows);
    if (row < 0) continue;  // never written out of bounds; attention() writes NaN for such a token
    const T* k = qkv + t * qkv_dim + q_dim;
    const T* v = k + kv_dim;
    for (int64_t i = threadIdx.x; i < kv_dim; i += blockDim.x) {
      k_cache[row * kv_dim + i] = k[i];
      v_cache[row * kv_dim + i] = v[i];
    }
  }
}

// One block per (token, q head), grid-stride over the T * n_heads work items; blockDim.x >= head_dim, a multiple
// of 32. Keys [lo, pos] are visited in chunks of kChunk: the chunk's scores are computed by all warps (one warp
// per key, lanes split head_dim), the chunk max by a block reduction, and each thread d rescales and extends its
// running output acc[d] (online softmax). Shared memory is fixed: nothing is sized by the context length.
template <typename T>
__global__ void attention_kernel(const T* __restrict__ qkv, const int64_t* __restrict__ kv_base,
                                 const int32_t* __restrict__ positions, const T* __restrict__ k_cache,
                                 const T* __restrict__ v_cache, T* __restrict__ out, int64_t n_tokens,
                                 int n_heads, int n_kv_heads, int head_dim, int window, int64_t pool_rows,
                                 float scale) {
  __shared__ float q_s[kMaxHeadDim];
  __shared__ float p_s[kChunk];  // scores, then softmax numerators, of the current chunk
  __shared__ float red[32];      // per-warp maxima

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  const int d = threadIdx.x;  // the output dimension this thread owns (if < head_dim)
  const int group = n_heads / n_kv_heads;
  const int64_t q_dim = int64_t(n_heads) * head_dim, kv_dim = int64_t(n_kv_heads) * head_dim;
  const int64_t qkv_dim = q_dim + 2 * kv_dim;
  const int64_t n_work = n_tokens * n_heads;

  for (int64_t w = blockIdx.x; w < n_work; w += gridDim.x) {
    const int64_t t = w / n_heads;
    const int h = int(w % n_heads);
    const int kvh = h / group;
    const int64_t pos = positions[t], base = kv_base[t];
    T* o = out + t * q_dim + int64_t(h) * head_dim;
    // The branch is uniform over the block, so the barriers below are reached by all threads or none.
    if (cache_row(base, pos, pool_rows) < 0) {  // bad (base, position): a loud NaN row, no stray reads
      if (d < head_dim) o[d] = from_f32<T>(__int_as_float(0x7fc00000));
      continue;
    }
    const int64_t lo = (window > 0 && pos - window + 1 > 0) ? pos - window + 1 : 0;
    const T* q = qkv + t * qkv_dim + int64_t(h) * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) q_s[i] = to_f32(q[i]);
    __syncthreads();

    const T* k_head = k_cache + base * kv_dim + int64_t(kvh) * head_dim;  // + p * kv_dim for position p
    const T* v_head = v_cache + base * kv_dim + int64_t(kvh) * head_dim;
    float m_run = -INFINITY;  // running max of the scores seen so far
    float l_run = 0.0f;       // running sum of exp(score - m_run)
    float acc = 0.0f;         // running sum of exp(score - m_run) * v[d]
    for (int64_t c0 = lo; c0 <= pos; c0 += kChunk) {
      const int n = pos - c0 + 1 < kChunk ? int(pos - c0 + 1) : kChunk;
      // 1. Scores of the chunk: warp `warp` takes keys j = warp, warp + n_warps, ...
      for (int j = warp; j < n; j += n_warps) {
        const T* k = k_head + (c0 + j) * kv_dim;
        float partial = 0.0f;
        for (int i = lane; i < head_dim; i += 32) partial += q_s[i] * to_f32(k[i]);
        partial = warp_sum(partial);
        if (lane == 0) p_s[j] = partial * scale;
      }
      __syncthreads();
      // 2. Chunk max (block reduction), new running max. Every thread computes the same values.
      float m_local = -INFINITY;
      for (int j = threadIdx.x; j < n; j += blockDim.x) m_local = fmaxf(m_local, p_s[j]);
      m_local = warp_max(m_local);
      if (lane == 0) red[warp] = m_local;
      __syncthreads();
      float m_new = m_run;
      for (int i = 0; i < n_warps; ++i) m_new = fmaxf(m_new, red[i]);
      // 3. Numerators of the chunk, in place.
      for (int j = threadIdx.x; j < n; j += blockDim.x) p_s[j] = expf(p_s[j] - m_new);
      __syncthreads();
      // 4. Rescale the running sums (alpha = 0 on the first chunk, as m_run = -inf) and add the chunk.
      const float alpha = expf(m_run - m_new);
      l_run *= alpha;
      acc *= alpha;
      for (int j = 0; j < n; ++j) {
        const float p = p_s[j];
        l_run += p;
        if (d < head_dim) acc += p * to_f32(v_head[(c0 + j) * kv_dim + d]);
      }
      m_run = m_new;
      __syncthreads();  // p_s and red are rewritten by the next chunk
    }
    if (d < head_dim) o[d] = from_f32<T>(acc / l_run);
  }
}

// Validates what kv_write and attention share; returns the token count.
int64_t check_common(const char* op, const Tensor& qkv, const Tensor& kv_base, const Tensor& positions,
                     const Tensor& k_cache, const Tensor& v_cache, const AttentionShape& s) {
  TD_CHECK(s.n_heads > 0 && s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0 && s.head_dim > 0 &&
               s.head_dim <= kMaxHeadDim && s.sliding_window >= 0,
           "{}: bad attention shape: {} q heads, {} kv heads (must divide), head_dim {} (1..{}), sliding window {}",
           op, s.n_heads, s.n_kv_heads, s.head_dim, kMaxHeadDim, s.sliding_window);
  TD_CHECK(qkv.device == Device::CUDA && qkv.ndim == 2 && qkv.is_contiguous() &&
               (qkv.dtype == DType::F32 || qkv.dtype == DType::F16 || qkv.dtype == DType::BF16),
           "{}: qkv must be a contiguous 2-D f32/f16/bf16 CUDA tensor, got {}", op, qkv.describe());
  const int64_t T = qkv.shape[0];
  const int64_t kv_dim = int64_t(s.n_kv_heads) * s.head_dim;
  const int64_t qkv_dim = int64_t(s.n_heads) * s.head_dim + 2 * kv_dim;
  TD_CHECK(qkv.shape[1] == qkv_dim, "{}: qkv {} does not hold {} + 2x{} heads of {}", op, qkv.describe(),
           s.n_heads, s.n_kv_heads, s.head_dim);
  TD_CHECK(kv_base.device == Device::CUDA && kv_base.ndim == 1 && kv_base.is_contiguous() &&
               kv_base.dtype == DType::I64 && kv_base.shape[0] == T,
           "{}: kv_base must be a contiguous 1-D i64 CUDA tensor [{}], got {}", op, T, kv_base.describe());
  TD_CHECK(positions.device == Device::CUDA && positions.ndim == 1 && positions.is_contiguous() &&
               positions.dtype == DType::I32 && positions.shape[0] == T,
           "{}: positions must be a contiguous 1-D i32 CUDA tensor [{}], got {}", op, T, positions.describe());
  for (const Tensor* c : {&k_cache, &v_cache})
    TD_CHECK(c->device == Device::CUDA && c->ndim == 2 && c->is_contiguous() && c->dtype == qkv.dtype &&
                 c->shape[1] == kv_dim,
             "{}: {} must be a contiguous CUDA tensor [pool_rows, {}] of dtype {}, got {}", op,
             c == &k_cache ? "k_cache" : "v_cache", kv_dim, dtype_name(qkv.dtype), c->describe());
  TD_CHECK(k_cache.shape[0] == v_cache.shape[0], "{}: k_cache {} and v_cache {} differ in rows", op,
           k_cache.describe(), v_cache.describe());
  if (T > 0)
    TD_CHECK(qkv.data && kv_base.data && positions.data && k_cache.data && v_cache.data,
             "{}: null data pointer (qkv {}, kv_base {}, positions {}, k_cache {}, v_cache {})", op, qkv.describe(),
             kv_base.describe(), positions.describe(), k_cache.describe(), v_cache.describe());
  return T;
}

}  // namespace

void kv_write(const Tensor& qkv, const Tensor& kv_base, const Tensor& positions, const Tensor& k_cache,
              const Tensor& v_cache, const AttentionShape& shape, cudaStream_t stream) {
  const int64_t T = check_common("kv_write", qkv, kv_base, positions, k_cache, v_cache, shape);
  if (T == 0) return;
  const int64_t kv_dim = int64_t(shape.n_kv_heads) * shape.head_dim;
  const int64_t q_dim = int64_t(shape.n_heads) * shape.head_dim;
  const unsigned blocks = unsigned(std::min(T, kMaxBlocks));
  dispatch_float(qkv.dtype, "kv_write", [&](auto tag) {
    using D = typename decltype(tag)::type;
    kv_write_kernel<D><<<blocks, kCopyThreads, 0, stream>>>(
        qkv.ptr<const D>(), kv_base.ptr<const int64_t>(), positions.ptr<const int32_t>(), k_cache.ptr<D>(),
        v_cache.ptr<D>(), T, q_dim + 2 * kv_dim, q_dim, kv_dim, k_cache.shape[0]);
    TD_CUDA_CHECK_LAUNCH();
  });
}

void attention(const Tensor& qkv, const Tensor& kv_base, const Tensor& positions, const Tensor& k_cache,
               const Tensor& v_cache, const AttentionShape& shape, const Tensor& out, cudaStream_t stream) {
  const int64_t T = check_common("attention", qkv, kv_base, positions, k_cache, v_cache, shape);
  const int64_t q_dim = int64_t(shape.n_heads) * shape.head_dim;
  TD_CHECK(out.device == Device::CUDA && out.ndim == 2 && out.is_contiguous() && out.dtype == qkv.dtype &&
               out.shape[0] == T && out.shape[1] == q_dim,
           "attention: out must be a contiguous CUDA tensor [{}, {}] of dtype {}, got {}", T, q_dim,
           dtype_name(qkv.dtype), out.describe());
  if (T == 0) return;
  TD_CHECK(out.data, "attention: null data pointer (out {})", out.describe());
  // One thread per output dimension, at least two warps so that scoring a chunk is spread over warps.
  const int threads = (std::max(shape.head_dim, 64) + 31) / 32 * 32;
  const unsigned blocks = unsigned(std::min(T * shape.n_heads, kMaxBlocks));
  const float scale = 1.0f / std::sqrt(float(shape.head_dim));  // as the CPU reference
  dispatch_float(qkv.dtype, "attention", [&](auto tag) {
    using D = typename decltype(tag)::type;
    attention_kernel<D><<<blocks, threads, 0, stream>>>(
        qkv.ptr<const D>(), kv_base.ptr<const int64_t>(), positions.ptr<const int32_t>(), k_cache.ptr<const D>(),
        v_cache.ptr<const D>(), out.ptr<D>(), T, shape.n_heads, shape.n_kv_heads, shape.head_dim,
        shape.sliding_window, k_cache.shape[0], scale);
    TD_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace tandem::cuda
