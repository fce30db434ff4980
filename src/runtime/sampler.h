// Token sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeded RNG.
// Chain order follows llama.cpp: repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace tandem {

struct SamplingParams {
  float temperature = 0.8f;    // <= 0: greedy (argmax, ties -> lowest id)
  int top_k = 40;              // <= 0: disabled
  float top_p = 0.95f;         // >= 1: disabled
  float min_p = 0.05f;         // <= 0: disabled; keeps tokens with p >= min_p * p_max
  float repeat_penalty = 1.0f; // 1: disabled; logit > 0 ? logit / r : logit * r for recent tokens
  int repeat_last_n = 64;      // window of recent tokens the penalty looks at (0: none, -1: all given)
  std::optional<uint64_t> seed;  // unset: random, chosen at construction and reported by seed()

  // Throws tandem::Error naming the parameter when a value is out of range or not finite.
  void validate() const;
  bool greedy() const { return temperature <= 0.0f; }
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // logits: one row of vocab size. recent: the sequence's tokens so far (prompt + generated), oldest first.
  // Same seed + same inputs -> same output on every platform (no std:: distributions).
  int32_t sample(std::span<const float> logits, std::span<const int32_t> recent);
  uint64_t seed() const { return seed_; }
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  uint64_t seed_;
  uint64_t state_[4];  // xoshiro256** state
  double next_uniform();  // [0, 1)
  std::vector<std::pair<float, int32_t>> scratch_;
};

}  // namespace tandem
