// KV write, KV read-back and causal GQA attention over the paged KV cache (exec/kv_cache.h).
//
// Token t of the step belongs to batch entry b = kv.token_batch[t] at position p = positions[t]; position p of
// entry b lives in page kv.page_indices[kv.page_indptr[b] + p / page_size], slot p % page_size, at the strides of
// the pool views (kv_strides(kv.k, kv.layout): NHD and HND alike). A token attends to positions [lo, p] with
// lo = max(0, p - window + 1) when window > 0, else 0. Scores, softmax and the weighted sum accumulate in fp32;
// scale 1/sqrt(head_dim); the output is rounded once to the activation dtype. 1 <= head_dim <= 256; n_kv_heads
// divides n_heads.
// A token whose position is negative or beyond its entry's pages (or whose batch index is out of range) is not
// written by kv_write, and attention and kv_gather write a NaN output row for it: nothing is read or written out
// of bounds, and a bad table is loud.
// Call kv_write for the whole step before attention (a prefill token attends to the step's earlier tokens); two
// tokens of one step must not share a slot. out must not alias qkv.
// CPU twins of the same names and arguments: cpu/ops.h.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "core/tensor.h"
#include "exec/kv_cache.h"

namespace tandem::cuda {

// Copies the k and v parts of each qkv row [T, qkv_dim] into the token's slot of kv.k / kv.v.
void kv_write(const Tensor& qkv, const Tensor& positions, const PagedKv& kv, const AttentionShape& shape,
              cudaStream_t stream);

// The fused path's QKV epilogue, in one kernel: qkv += bias (when bias.data is set; [qkv_dim]), rotate-half RoPE
// of the q and k heads at the token's position (angle = position * inv_freq[i], f32 [head_dim / 2]), and the
// append of the roped k and the v heads into the token's slot. Equal to add_bias -> rope -> kv_write, rounding
// included (elementwise: the same values, bit for bit). The qkv row is left roped (q is what attention reads).
void qkv_rope_kv_write(const Tensor& qkv, const Tensor& bias, const Tensor& positions, const Tensor& inv_freq,
                       const PagedKv& kv, const AttentionShape& shape, cudaStream_t stream);

// out[t, h * head_dim + d] = sum_p softmax_p(q_t,h . k_p,kvh / sqrt(head_dim)) v_p,kvh[d], kvh = h / group.
// qkv: [T, qkv_dim] (the q part is read); out: [T, n_heads * head_dim], same dtype as qkv and the cache.
void attention(const Tensor& qkv, const Tensor& positions, const PagedKv& kv, const AttentionShape& shape,
               const Tensor& out, cudaStream_t stream);

// The fused path's attention for decode steps: attention()'s contract (any step; bad rows NaN alike), split-KV so
// that a step of few tokens still spreads over the GPU. Grid (splits, n_kv_heads, T), W warps per q head of a
// group (their states merged in shared memory; W * group <= 16), 16-byte loads of k and v per lane; splits = a function of T and the shape only (fixed launch shape for
// CUDA graphs). With more than one split the states meet in `workspace` and the last split of each (token, kv
// head) merges them in split order (deterministic). workspace: f32 [>= attention_decode_workspace(T, shape)]
// (none needed when that is 0); its first T * n_kv_heads elements are counters that must be zero before the first
// call and are left zero by every call. head_dim 64 or 128, group size <= 16, f32/f16/bf16, qkv and pools 16-byte
// aligned (attention_decode_supports says why not). Fp32 softmax and sums; the summation order differs from
// attention() (split, key groups), so the two agree within rounding, not bit for bit.
bool attention_decode_supports(const AttentionShape& shape, DType dtype, std::string* why = nullptr);
int64_t attention_decode_workspace(int64_t T, const AttentionShape& shape);
void attention_decode(const Tensor& qkv, const Tensor& positions, const PagedKv& kv, const AttentionShape& shape,
                      const Tensor& out, const Tensor& workspace, cudaStream_t stream);

// out[t] = k | v of token t's slot: [T, 2 kv_dim], the cache's dtype (the L{layer}.kv_write tap).
void kv_gather(const Tensor& positions, const PagedKv& kv, const AttentionShape& shape, const Tensor& out,
               cudaStream_t stream);

}  // namespace tandem::cuda
