// KV write and causal GQA attention over a contiguous KV cache.
//
// The cache of one layer is k_cache / v_cache: [pool_rows, kv_dim] (kv_dim = n_kv_heads * head_dim), the
// activation dtype. Each sequence owns a contiguous range of rows; its position p lives at row base + p.
// Per token t of the step (device arrays): kv_base[t] (i64) is its sequence's base row, positions[t] (i32)
// its position. A token attends to positions [lo, positions[t]] with lo = max(0, pos - window + 1) when
// window > 0, else 0. Scores, softmax and the weighted sum accumulate in fp32; scale 1/sqrt(head_dim).
// 1 <= head_dim <= 256; n_kv_heads divides n_heads. The output is rounded once to the activation dtype.
// A token whose (kv_base, position) names no row of the pool (position < 0, base < 0, row >= pool_rows) is not
// written by kv_write, and attention writes a NaN output row for it; nothing is read or written out of bounds.
// Call kv_write for the whole step before attention (a prefill token attends to the step's earlier tokens);
// two tokens of one step must not share a cache row. out must not alias qkv.
#pragma once
#include <cuda_runtime.h>

#include "core/tensor.h"

namespace tandem::cuda {

struct AttentionShape {
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int sliding_window = 0;  // 0: full causal attention
};

// Copies the k and v parts of each qkv row to row kv_base[t] + positions[t] of the caches.
void kv_write(const Tensor& qkv, const Tensor& kv_base, const Tensor& positions, const Tensor& k_cache,
              const Tensor& v_cache, const AttentionShape& shape, cudaStream_t stream);

// out[t, h * head_dim + d] = sum_p softmax_p(q_t,h . k_p,kvh / sqrt(head_dim)) v_p,kvh[d], kvh = h / group.
// qkv: [T, qkv_dim] (the q part is read); out: [T, n_heads * head_dim], same dtype as qkv.
void attention(const Tensor& qkv, const Tensor& kv_base, const Tensor& positions, const Tensor& k_cache,
               const Tensor& v_cache, const AttentionShape& shape, const Tensor& out, cudaStream_t stream);

}  // namespace tandem::cuda
