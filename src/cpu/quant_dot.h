// Linear layers over weights kept in their stored format (GGUF blocks, f16/bf16/f32): out = x . W^T with W read
// block by block, never widened to an fp32 copy.
//
// Integer formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) take the activation row quantized to Q8 blocks
// of 32 (one f32 scale d and the scaled sum s = d * sum(q) per block, as llama.cpp's Q8_0/Q8_1), and each 32-element
// weight block contributes d_x * sum_lanes(int dot * lane scale) + m * s_x, where a block is decoded to int8 values
// with one scale per 16-element half (K-quant sub-block scales; Q6_K has two per 32) and an offset m (Q4_1's min,
// Q4_K's -dmin*min, Q4_0's -8d). The K-quants' sub-blocks are 32 (16 for Q6_K) wide, so 32-wide activation blocks
// are at least as fine as llama.cpp's Q8_K. Float formats take the fp32 activation row as it is.
//
// Kernels exist per instruction set: a portable scalar one, AVX2+FMA+F16C, and AVX-512 VNNI (256-bit vpdpbusd),
// chosen at run time by CPU features (__builtin_cpu_supports); force_isa() pins one for tests. The linear is
// multi-threaded over output features (core/parallel.h) and blocks prefill rows: each weight block decoded once
// serves 4 activation rows (and each activation block 2 weight rows).
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "core/tensor.h"

namespace tandem::cpu {

enum class Isa : uint8_t { scalar, avx2, avx512_vnni };
std::string_view isa_name(Isa isa);
// The best instruction set this CPU has (of the ones above).
Isa detected_isa();
// The one the kernels use: detected_isa(), or what force_isa() pinned. Forcing one the CPU lacks throws.
Isa active_isa();
void force_isa(std::optional<Isa> isa);

// Whether linear_stored reads `t` weights directly (else the loader keeps them as f32).
bool stored_linear_supported(DType t);
// Whether the weight format takes Q8-quantized activations (the integer block formats).
bool takes_q8_activations(DType t);

// Activation rows quantized to two-level Q8 blocks of 32: x ~ d * q + d2 * q2, where q2 quantizes the residual
// x - d * q (at most d / 2) with its own scale. q, q2 [rows, K] int8; d, d2, s [rows, K / 32] f32 with
// s = d * sum(q) + d2 * sum(q2). The residual level costs a second integer dot per block and makes the activation
// error ~127x smaller than llama.cpp's single Q8 level (the default model's greedy answers then follow the
// reference path's where the top two logits are close).
struct Q8Rows {
  int64_t rows = 0, K = 0, blocks = 0;
  std::vector<int8_t> q, q2;
  std::vector<float> d, d2, s;
};
// K must be a multiple of 32. Round-to-nearest-even of x / d with d = absmax / 127 (0 for an all-zero block), then
// of (x - d q) / d2 with d2 = absmax(x - d q) / 127.
void quantize_rows_q8(const float* x, int64_t rows, int64_t ld, int64_t K, Q8Rows& out);

// out[T, N] = x[T, K] . w[N, K]^T: x, out f32 contiguous rows; w contiguous, any stored_linear_supported dtype.
void linear_stored(const Tensor& x, const Tensor& w, const Tensor& out);

// The same product given activations already quantized (integer formats), rows [r0, r1), features [n0, n1), on
// the active ISA, single-threaded: what the conformance tests call.
void linear_q8_block(DType t, const void* w, int64_t n0, int64_t n1, const Q8Rows& x, int64_t r0, int64_t r1,
                     float* out, int64_t ld_out);

}  // namespace tandem::cpu
