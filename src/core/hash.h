// FNV-1a over the bytes of 64-bit words: cheap, stable keys for caches (CUDA-graph keys, launch signatures,
// prefix-cache pages); splitmix64 for reproducible seeds.
#pragma once
#include <cstdint>

namespace tandem {

inline constexpr uint64_t kFnvOffset = 1469598103934665603ull;

// h folded with the 8 bytes of v, lowest first.
inline uint64_t fnv1a_mix(uint64_t h, uint64_t v) {
  for (int i = 0; i < 8; ++i) h = (h ^ ((v >> (8 * i)) & 0xFF)) * 1099511628211ull;
  return h;
}

// splitmix64 (Vigna): the next value of the sequence whose state is x. Seeds generators (the sampler's
// xoshiro state, the serve bench's prompts): the same x, the same numbers on every platform.
inline uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace tandem
