// RMSNorm per row: out = w * (x * rsqrt(mean(x^2) + eps)), statistics in fp32 (HF LlamaRMSNorm: the
// normalized value is rounded to the activation dtype before the weight multiply).
// x, out: [T, H] same dtype (f32/f16/bf16); w: [H] same dtype. out may alias x (in place).
// Rounding points (identity for f32): sum of squares in fp32 (the CPU reference uses double); inv = rsqrtf(ss / H +
// eps); normed = round(x * inv); out = round(w * normed), as HF's `weight * hidden.to(input_dtype)` in bf16/f16.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "core/tensor.h"

namespace tandem::cuda {
// The fp32 sum of squares is added in one of two orders (both kernels: 256 threads, warp sums in warp order):
// 16-byte chunks per thread (t, t + 256, ...; the register path) when this says so for the row width H and every
// pointer the launch touches (x, w, out: rows a multiple of 16 bytes of at most 2048 chunks, all 16-byte aligned),
// else one element per thread at a time. The GEMV's RMSNorm prologue (gemv.cuh) asks it too, so that it stays bit
// for bit equal to this kernel.
bool rmsnorm_sums_by_chunks(DType dtype, int64_t H, std::initializer_list<const void*> ptrs);
void rmsnorm(const Tensor& x, const Tensor& w, float eps, const Tensor& out, cudaStream_t stream);

// The fused path's residual add + RMSNorm in one kernel: x = x + delta (rounded to the dtype, as the add kernel),
// then out = rmsnorm(x, w) with the rounding points above. delta, out: [T, H] like x; out may alias delta, not x.
void add_rmsnorm(const Tensor& x, const Tensor& delta, const Tensor& w, float eps, const Tensor& out,
                 cudaStream_t stream);
}
