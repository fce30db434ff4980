// Dequantization of GGUF tensor data to f32, bit-exact with ggml-quants.c `dequantize_row_*` and gguf-py's
// `gguf.quants.dequantize` (same f32 operations in the same order, f16 scales widened exactly; the products are
// exact, so FMA contraction cannot change a bit), plus the inverse of llama.cpp's converter Q/K row permutation.
#pragma once
#include <cstdint>
#include <span>

#include "core/tensor.h"

namespace tandem {

// Decodes n consecutive elements of `type` starting at src (for quantized types: n / block_elems packed
// blocks; n must be a multiple of the block size) into dst. Supports F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
// Q8_0, Q4_K, Q5_K, Q6_K. src may be unaligned.
void dequantize_row(DType type, const void* src, float* dst, int64_t n);

// Whether dequantize_row supports `type`.
bool dequant_supported(DType type);

// Byte offsets of the f16 scales (d, and dmin or m where the block has one) inside one block of a quantized
// type, from the block layouts in dequant.cpp; empty for plain types. A non-finite scale makes the whole
// block non-finite, so NaN/Inf checks of quantized weights read these (tensor_check).
std::span<const int> block_f16_scale_offsets(DType type);

// A contiguous CPU tensor of any supported type -> new contiguous f32 tensor of the same shape.
HostTensor dequantize_to_f32(const Tensor& src);

// llama.cpp's convert_hf_to_gguf.py permutes the rows of attn_q/attn_k so rotary pairs are interleaved:
//   permute(w, n_head) = w.reshape(n_head, 2, head_dim/2, cols).swapaxes(1, 2).reshape(rows, cols)
// i.e. GGUF row h*head_dim + 2*j + t holds HF row h*head_dim + t*head_dim/2 + j.
// permute_qk_rows applies it; unpermute_qk_rows undoes it (GGUF -> HF "rotate_half" layout), in place.
// rows = n_heads * head_dim (n_heads is the KV head count for attn_k), head_dim even; w is [rows, cols].
void permute_qk_rows(float* w, int64_t rows, int64_t cols, int64_t n_heads);
void unpermute_qk_rows(float* w, int64_t rows, int64_t cols, int64_t n_heads);

}  // namespace tandem
