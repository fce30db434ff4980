#include "core/dtype.h"

#include <array>
#include <cmath>

namespace tandem {
namespace {
struct DTypeInfo {
  DType type;
  std::string_view name;
  int64_t block_elems;
  int64_t block_bytes;
};
// GGUF block layouts: ggml-common.h (QK4_0 = 32, QK_K = 256).
constexpr std::array<DTypeInfo, 20> kInfo{{
    {DType::F32, "f32", 1, 4},      {DType::F16, "f16", 1, 2},          {DType::BF16, "bf16", 1, 2},
    {DType::F64, "f64", 1, 8},      {DType::I64, "i64", 1, 8},          {DType::I32, "i32", 1, 4},
    {DType::I16, "i16", 1, 2},      {DType::I8, "i8", 1, 1},            {DType::U8, "u8", 1, 1},
    {DType::BOOL, "bool", 1, 1},    {DType::F8_E4M3, "f8_e4m3", 1, 1},  {DType::F8_E5M2, "f8_e5m2", 1, 1},
    {DType::Q4_0, "q4_0", 32, 18},  {DType::Q4_1, "q4_1", 32, 20},      {DType::Q5_0, "q5_0", 32, 22},
    {DType::Q5_1, "q5_1", 32, 24},  {DType::Q8_0, "q8_0", 32, 34},      {DType::Q4_K, "q4_k", 256, 144},
    {DType::Q5_K, "q5_k", 256, 176}, {DType::Q6_K, "q6_k", 256, 210},
}};
const DTypeInfo& info(DType t) { return kInfo[static_cast<size_t>(t)]; }
}  // namespace

std::string_view dtype_name(DType t) { return info(t).name; }
std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& i : kInfo)
    if (i.name == name) return i.type;
  return std::nullopt;
}
int64_t dtype_block_elems(DType t) { return info(t).block_elems; }
int64_t dtype_block_bytes(DType t) { return info(t).block_bytes; }

float fp16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    u = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    u = sign;
  } else {  // subnormal: normalize
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400) == 0);
    u = sign | (uint32_t(112 - e) << 23) | ((mant & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_fp16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00;  // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00;  // rounds to >= 65520 -> inf
  if (abs < 0x38800000u) {                       // below smallest normal: subnormal or zero
    if (abs < 0x33000000u) return sign;          // < 2^-25 rounds to 0
    const uint32_t mant = (abs & 0x7fffff) | 0x800000;
    // value = mant * 2^(e - 150); in units of the fp16 subnormal step 2^-24 that is mant >> (126 - e).
    const uint32_t drop = uint32_t(126 - int(abs >> 23));  // 14..24
    uint32_t r = mant >> drop;
    const uint32_t rem = mant & ((1u << drop) - 1), half = 1u << (drop - 1);
    if (rem > half || (rem == half && (r & 1))) ++r;
    return sign | uint16_t(r);
  }
  uint32_t r = abs - 0x38000000u;  // rebias exponent 127 -> 15
  r = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
  return sign | uint16_t(r);
}

}  // namespace tandem
