// Reference ops: fp32, contiguous row-major tensors, obviously-correct loops, multithreaded where it pays.
// Every fast variant of a stage is tested against these.
#pragma once
#include <cstdint>
#include <span>

#include "core/tensor.h"

namespace tandem::cpu {

// out[t, :] = table[tokens[t], :]
void embed(const Tensor& table, std::span<const int32_t> tokens, const Tensor& out);
// out = x * rsqrt(mean(x^2) + eps) * w, per row (HF LlamaRMSNorm; sum of squares in double).
void rmsnorm(const Tensor& x, const Tensor& w, double eps, const Tensor& out);
// out[T, N] = x[T, K] · w[N, K]^T (+ bias[N]); bias may be an undefined Tensor.
void linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out);
// HF rotate-half rotary embedding, in place, on the q heads then the k heads of each qkv row
// (row layout q | k | v; v untouched). angle = position * inv_freq[i], i < head_dim / 2.
void rope(const Tensor& qkv, std::span<const int32_t> positions, std::span<const float> inv_freq, int64_t n_heads,
          int64_t n_kv_heads, int64_t head_dim);
// out[T, I] = silu(gate) * up where gate_up[T, 2I] = gate | up.
void silu_mul(const Tensor& gate_up, const Tensor& out);
// out = a + b (same shape; out may alias a).
void add(const Tensor& a, const Tensor& b, const Tensor& out);

// Causal GQA attention for one query row against one sequence's contiguous K/V cache.
// q: n_heads * head_dim floats. k, v: rows of kv_dim = n_kv_heads * head_dim floats, row r = position r.
// The query sees key positions [lo, hi). Scores and softmax in fp32 (max-subtracted), scale 1/sqrt(head_dim).
// scratch: at least hi - lo floats. out: n_heads * head_dim floats.
void attention_row(const float* q, const float* k, const float* v, int64_t lo, int64_t hi, int64_t n_heads,
                   int64_t n_kv_heads, int64_t head_dim, float* scratch, float* out);

float dot(const float* a, const float* b, int64_t n);

}  // namespace tandem::cpu
