// Element-wise ops, computed in fp32 and rounded to the output dtype. All tensors contiguous on device.
// Rounding points: add_bias, add and convert round once (nearest even); silu_mul rounds silu(gate) to the
// activation dtype, then rounds the product with up (HF LlamaMLP: act_fn(gate_proj(x)) * up_proj(x) in bf16).
#pragma once
#include <cuda_runtime.h>

#include "core/tensor.h"

namespace tandem::cuda {
// x[t, n] += bias[n], in place. x: [T, N], bias: [N], same dtype.
void add_bias(const Tensor& x, const Tensor& bias, cudaStream_t stream);
// out[t, i] = silu(gate_up[t, i]) * gate_up[t, I + i]. gate_up: [T, 2I], out: [T, I], same dtype, not aliased.
void silu_mul(const Tensor& gate_up, const Tensor& out, cudaStream_t stream);
// out = a + b (same shape and dtype; out may alias a or b).
void add(const Tensor& a, const Tensor& b, const Tensor& out, cudaStream_t stream);
// dst = src converted between f32/f16/bf16 (same element count; the buffers must not overlap unless identical).
void convert(const Tensor& src, const Tensor& dst, cudaStream_t stream);
// out[r, :] = src[rows[r], :]. src: [T, N], rows: i32 [R] on device, out: [R, N], same dtype. Like embed, an index
// outside [0, T) writes a NaN row and reads nothing.
void gather_rows(const Tensor& src, const Tensor& rows, const Tensor& out, cudaStream_t stream);
}  // namespace tandem::cuda
