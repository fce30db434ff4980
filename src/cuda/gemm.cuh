// GEMMs through cuBLASLt: out[T, N] = x[T, K] . w[N, K]^T, row-major. x and w share a dtype (bf16, f16 or
// f32); out is that dtype or f32. Accumulation is fp32 (CUBLAS_COMPUTE_32F; for f32 inputs, no TF32); with a
// 16-bit output, split-K partial sums are reduced in fp32 too (no reduction in the output type), and the result
// is rounded once. The algorithm is cuBLASLt's first heuristic choice, cached per (T, N, K, dtypes, pointer
// alignments). The handle and the 32 MB workspace are created by the first linear() call that passes validation,
// so constructing a Gemm touches no CUDA API. The workspace is shared by all calls: use one Gemm per stream, from
// one thread at a time.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>

#include "core/tensor.h"

namespace tandem::cuda {

class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;
  void linear(const Tensor& x, const Tensor& w, const Tensor& out, cudaStream_t stream);

 private:
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 32u << 20;
  // The heuristic's algorithm per problem: {T, N, K, x/w dtype, out dtype, alignment of x, w, out in bytes}.
  std::map<std::array<int64_t, 8>, cublasLtMatmulAlgo_t> algo_cache_;
};

}  // namespace tandem::cuda
