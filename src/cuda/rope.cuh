// HF rotate-half rotary embedding in place on the q and k heads of each qkv row (layout q | k | v).
// angle = float(position) * inv_freq[i] in fp32, then cosf/sinf; the rotation is computed in fp32 and rounded
// to the activation dtype. qkv: [T, (n_heads + 2 n_kv_heads) * head_dim]; positions: i32 [T]; inv_freq:
// f32 [head_dim / 2], all on device. head_dim must be even.
// Rounding points: cos/sin stay fp32 and each rotated element is rounded once to the activation dtype (the
// closest to the fp32 reference). HF in bf16/f16 instead rounds cos/sin to the activation dtype and rounds
// q*cos, rotate_half(q)*sin and their sum separately; the difference is within a couple of ulp.
#pragma once
#include <cuda_runtime.h>

#include "core/tensor.h"

namespace tandem::cuda {
void rope(const Tensor& qkv, const Tensor& positions, const Tensor& inv_freq, int n_heads, int n_kv_heads,
          int head_dim, cudaStream_t stream);
}
