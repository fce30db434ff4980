// FNV-1a over the bytes of 64-bit words: cheap, stable keys for caches (CUDA-graph keys, launch signatures).
#pragma once
#include <cstdint>

namespace tandem {

inline constexpr uint64_t kFnvOffset = 1469598103934665603ull;

// h folded with the 8 bytes of v, lowest first.
inline uint64_t fnv1a_mix(uint64_t h, uint64_t v) {
  for (int i = 0; i < 8; ++i) h = (h ^ ((v >> (8 * i)) & 0xFF)) * 1099511628211ull;
  return h;
}

}  // namespace tandem
