// Reference ops: the CPU twins of the CUDA launchers (src/cuda/*.cuh), with the same names and the same Tensor
// arguments (less the stream). fp32 only, contiguous row-major tensors, obviously-correct loops, multithreaded
// where it pays. Every fast variant of a stage is tested against these; the conformance suite calls them.
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "exec/kv_cache.h"

namespace tandem::cpu {

// out[t, :] = table[tokens[t], :]. tokens: i32 [T].
void embed(const Tensor& table, const Tensor& tokens, const Tensor& out);
// out = x * rsqrt(mean(x^2) + eps) * w, per row (HF LlamaRMSNorm; sum of squares in double). out may alias x.
void rmsnorm(const Tensor& x, const Tensor& w, float eps, const Tensor& out);
// out[T, N] = x[T, K] . w[N, K]^T (cuda::Gemm::linear).
void linear(const Tensor& x, const Tensor& w, const Tensor& out);
// x[t, n] += bias[n].
void add_bias(const Tensor& x, const Tensor& bias);
// HF rotate-half rotary embedding, in place, on the q heads then the k heads of each qkv row (layout q | k | v;
// v untouched). angle = position * inv_freq[i], i < head_dim / 2. positions: i32 [T]; inv_freq: f32 [head_dim/2].
void rope(const Tensor& qkv, const Tensor& positions, const Tensor& inv_freq, int n_heads, int n_kv_heads,
          int head_dim);
// out[T, I] = silu(gate) * up where gate_up[T, 2I] = gate | up.
void silu_mul(const Tensor& gate_up, const Tensor& out);
// out = a + b (same shape; out may alias a or b).
void add(const Tensor& a, const Tensor& b, const Tensor& out);
// out[r, :] = src[rows[r], :]; an index outside [0, T) gives a NaN row. rows: i32 [R].
void gather_rows(const Tensor& src, const Tensor& rows, const Tensor& out);

// dst = src converted between f32/f16/bf16 (same element count).
void convert(const Tensor& src, const Tensor& dst);

// Paged KV cache ops (contracts in cuda/attention.cuh); the cache pools are f32 here.
void kv_write(const Tensor& qkv, const Tensor& positions, const PagedKv& kv, const AttentionShape& shape);
void attention(const Tensor& qkv, const Tensor& positions, const PagedKv& kv, const AttentionShape& shape,
               const Tensor& out);
void kv_gather(const Tensor& positions, const PagedKv& kv, const AttentionShape& shape, const Tensor& out);
// Paged-KV helpers the fast attention shares: the checks of a call (returns the token count) and the element offset
// of (position, kv head) of token t's sequence in the pools, or -1 when the tables do not name a slot.
int64_t check_paged(const char* op, const Tensor& positions, const PagedKv& kv, const AttentionShape& shape);
int64_t slot_offset(const PagedKv& kv, const KvStrides& st, int64_t t, int64_t pos, int64_t kvh);

// Fused twins (contracts in cuda/attention.cuh, norm.cuh, gemv.cuh): the standard ops in sequence.
void qkv_rope_kv_write(const Tensor& qkv, const Tensor& bias, const Tensor& positions, const Tensor& inv_freq,
                       const PagedKv& kv, const AttentionShape& shape);
void add_rmsnorm(const Tensor& x, const Tensor& delta, const Tensor& w, float eps, const Tensor& out);
void gate_up_silu(const Tensor& x, const Tensor& w, const Tensor& out);

float dot(const float* a, const float* b, int64_t n);

}  // namespace tandem::cpu
