#include "cuda/random_fill.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "core/checks.h"
#include "cuda/check.h"

namespace tandem::cuda {
namespace {

__host__ __device__ inline float hashed_uniform(uint64_t seed, uint64_t i) {
  uint64_t z = seed ^ (i * 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return float(z >> 40) * (2.0f / 16777216.0f) - 1.0f;  // 24 random bits -> [-1, 1)
}

template <typename T>
__device__ inline T from_float(float v);
template <>
__device__ inline float from_float<float>(float v) { return v; }
template <>
__device__ inline __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__global__ void fill_kernel(T* out, int64_t n, uint64_t seed, float offset, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_float<T>(offset + scale * hashed_uniform(seed, uint64_t(i)));
}
}  // namespace

float uniform_value(uint64_t seed, int64_t i, float offset, float scale) {
  return offset + scale * hashed_uniform(seed, uint64_t(i));
}

void fill_uniform(const Tensor& t, uint64_t seed, float offset, float scale, cudaStream_t stream) {
  check_float_tensor("fill_uniform", "t", t, Device::CUDA, -1);
  const int64_t n = t.numel();
  if (n == 0) return;
  check_data("fill_uniform", {&t});
  const int threads = 256;
  const int blocks = int(std::min<int64_t>((n + threads - 1) / threads, 65535));
  switch (t.dtype) {
    case DType::F32: fill_kernel<<<blocks, threads, 0, stream>>>(t.ptr<float>(), n, seed, offset, scale); break;
    case DType::F16: fill_kernel<<<blocks, threads, 0, stream>>>(t.ptr<__half>(), n, seed, offset, scale); break;
    case DType::BF16:
      fill_kernel<<<blocks, threads, 0, stream>>>(t.ptr<__nv_bfloat16>(), n, seed, offset, scale);
      break;
    default: fail("fill_uniform: dtype {} is not f32, f16 or bf16", dtype_name(t.dtype));
  }
  TD_CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::cuda
