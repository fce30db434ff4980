#include "cuda/embedding.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "cuda/check.h"
#include "cuda/dtype_dispatch.h"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // rows beyond this are covered by the grid-stride loop

template <typename T>
__device__ __forceinline__ T nan_value() {
  const float nan = __int_as_float(0x7fc00000);
  if constexpr (std::is_same_v<T, float>) return nan;
  else if constexpr (std::is_same_v<T, __half>) return __float2half_rn(nan);
  else return __float2bfloat16_rn(nan);
}

template <typename T>
__global__ void embed_kernel(const T* __restrict__ table, const int32_t* __restrict__ tokens, T* __restrict__ out,
                             int64_t n_tokens, int64_t vocab, int64_t hidden) {
  for (int64_t t = blockIdx.x; t < n_tokens; t += gridDim.x) {
    const int64_t id = tokens[t];
    T* o = out + t * hidden;
    if (id < 0 || id >= vocab) {  // never read outside the table: a bad id makes a loud NaN row
      const T nan = nan_value<T>();
      for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = nan;
      continue;
    }
    const T* row = table + id * hidden;
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = row[i];
  }
}

}  // namespace

void embed(const Tensor& table, const Tensor& tokens, const Tensor& out, cudaStream_t stream) {
  TD_CHECK(table.device == Device::CUDA && table.ndim == 2 && table.is_contiguous() &&
               (table.dtype == DType::F32 || table.dtype == DType::F16 || table.dtype == DType::BF16),
           "embed: table must be a contiguous 2-D f32/f16/bf16 CUDA tensor, got {}", table.describe());
  TD_CHECK(tokens.device == Device::CUDA && tokens.ndim == 1 && tokens.is_contiguous() && tokens.dtype == DType::I32,
           "embed: tokens must be a contiguous 1-D i32 CUDA tensor, got {}", tokens.describe());
  TD_CHECK(out.device == Device::CUDA && out.ndim == 2 && out.is_contiguous() && out.dtype == table.dtype,
           "embed: out must be a contiguous 2-D CUDA tensor of the table's dtype {}, got {}",
           dtype_name(table.dtype), out.describe());
  const int64_t n_tokens = tokens.shape[0], V = table.shape[0], H = table.shape[1];
  TD_CHECK(out.shape[0] == n_tokens && out.shape[1] == H, "embed: out {} for {} tokens of table {}", out.describe(),
           n_tokens, table.describe());
  if (n_tokens == 0 || H == 0) return;
  TD_CHECK(table.data && tokens.data && out.data, "embed: null data pointer (table {}, tokens {}, out {})",
           table.describe(), tokens.describe(), out.describe());
  const unsigned blocks = unsigned(std::min(n_tokens, kMaxBlocks));
  dispatch_float(table.dtype, "embed", [&](auto tag) {
    using T = typename decltype(tag)::type;
    embed_kernel<T><<<blocks, kThreads, 0, stream>>>(table.ptr<const T>(), tokens.ptr<const int32_t>(), out.ptr<T>(),
                                                     n_tokens, V, H);
    TD_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace tandem::cuda
