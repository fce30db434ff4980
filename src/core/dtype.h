// Element types and host-side half-precision conversion.
#pragma once
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace tandem {

// Plain element types first; block-quantized GGUF types (one scale per block) after.
enum class DType : uint8_t {
  F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2,
  Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K,
};

std::string_view dtype_name(DType t);              // "f32", "bf16", "q4_k", ...
std::optional<DType> dtype_from_name(std::string_view name);  // accepts dtype_name() spellings
// Elements per block (1 for plain types) and bytes per block.
int64_t dtype_block_elems(DType t);
int64_t dtype_block_bytes(DType t);

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; NaN stays NaN (quiet).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);  // round to nearest even, overflow to inf

}  // namespace tandem
