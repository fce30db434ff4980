// Token sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeded RNG.
// Chain order follows llama.cpp: repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw.
// The chain itself is exec/sampling.h sample_row(), a pure function of the row and one uniform draw; this class
// adds the seeded RNG that makes the draws, so a device that samples (Step::sampling) gets the same stream.
#pragma once
#include <cstdint>
#include <span>

#include "exec/sampling.h"

namespace tandem {

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // logits: one row of vocab size. recent: the sequence's tokens so far (prompt + generated), oldest first.
  // Same seed + same inputs -> same output on every platform (no std:: distributions).
  int32_t sample(std::span<const float> logits, std::span<const int32_t> recent);
  // The same token chosen elsewhere (a device, Step::sampling): this token's parameters, uniform draw and penalty
  // window (a view into `recent`); sample_token(row, r.penalized, r.params, r.u) is then the token sample() would
  // return for a finite row. The draw is not consumed: accept_draw() does that once the token is taken (a step that
  // did not run asks again and gets the same u), so the stream advances exactly as with sample(): one draw per
  // sampled token, none for greedy.
  RowSampling peek_draw(std::span<const int32_t> recent) const;
  void accept_draw();
  uint64_t seed() const { return seed_; }
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  uint64_t seed_;
  uint64_t state_[4];  // xoshiro256** state
  double next_uniform() { return advance(state_); }  // [0, 1)
  static double advance(uint64_t (&state)[4]);        // one xoshiro256** step: the next draw
  SampleScratch scratch_;
};

}  // namespace tandem
