#include "cuda/embedding.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "core/checks.h"
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
  const char* op = "embed";
  check_float_tensor(op, "table", table, Device::CUDA, 2);
  check_index_tensor(op, "tokens", tokens, Device::CUDA, DType::I32, -1);
  check_float_tensor(op, "out", out, Device::CUDA, 2);
  check_dtype(op, "out (the table's dtype)", out, table.dtype);
  const int64_t n_tokens = tokens.shape[0], V = table.shape[0], H = table.shape[1];
  check_shape(op, "out ([tokens, table width])", out, {n_tokens, H});
  if (n_tokens == 0 || H == 0) return;
  check_data(op, {&table, &tokens, &out});
  const unsigned blocks = unsigned(std::min(n_tokens, kMaxBlocks));
  dispatch_float(table.dtype, "embed", [&](auto tag) {
    using T = typename decltype(tag)::type;
    embed_kernel<T><<<blocks, kThreads, 0, stream>>>(table.ptr<const T>(), tokens.ptr<const int32_t>(), out.ptr<T>(),
                                                     n_tokens, V, H);
    TD_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace tandem::cuda
