// Launchers of the planted GPU bugs that need a kernel of their own (tests/planted/planted_gpu.cu); the variants
// that use them: tests/planted/planted_gpu_variants.cpp.
#pragma once
#include <cuda_runtime.h>

#include "core/tensor.h"
#include "exec/kv_cache.h"

namespace tandem::planted {

// What a bf16 -> f16 conversion of the attention scores does where they pass f16's range: for each (token t,
// q head h) whose largest |q.k| / sqrt(head_dim) over the keys t sees (its entry's positions [lo, pos], GQA head
// h / group) exceeds 65504, out[t, h * head_dim .. +head_dim) becomes NaN (inf - inf in the softmax). Other rows
// are left as they are (run cuda::attention first: below the limit the bug is invisible). Fp32 dot products of
// the activation-dtype q (the q part of qkv) and cached k. Tokens that name no slot are skipped.
void nan_where_scores_overflow_f16(const Tensor& qkv, const Tensor& positions, const PagedKv& kv,
                                   const AttentionShape& shape, const Tensor& out, cudaStream_t stream);

}  // namespace tandem::planted
