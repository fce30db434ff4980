// Token sampling as a pure function of one logits row, the sequence's penalty window and one uniform draw u: the
// part of the sampler that every device shares. runtime/sampler.h keeps the seeded RNG and draws u (one draw per
// non-greedy token, none for greedy); the CPU host runs sample_token() on its rows; the CUDA host runs its device
// twin cuda::sample_rows (cuda/sampling.cuh), so a decode step copies token ids, not logits rows.
//
// The chain (llama.cpp's order): repetition penalty -> drop NaN/-inf -> greedy? argmax : (+inf dominates) ->
// top-k -> sort (descending logit, ties -> lower id) -> top-p -> min-p -> temperature -> inverse-CDF draw with u.
// Probabilities, sums and the draw are computed in double, in the sorted order, one term at a time.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <utility>
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

// Sentinels in place of a token id (StepOutput::argmax, StepOutput::sampled):
// a raw logits row holding any NaN, +inf or -inf: the NaN guard's rule (exec/step.h greedy_token); the runtime fails
// the request (runtime/generate.h count_non_finite_row) instead of sampling it.
inline constexpr int32_t kNonFiniteRow = -1;
// every logit is -inf after the repetition penalty (finite logits overflowed by an extreme penalty): nothing can be
// chosen; the request fails as the host sampler's sample_row() throws.
inline constexpr int32_t kNoCandidate = -2;

// The tokens the repetition penalty looks at: the last repeat_last_n of `recent` (all of them for -1); none when the
// penalty is off (repeat_penalty 1 or repeat_last_n 0). A view into `recent`.
std::span<const int32_t> penalty_window(std::span<const int32_t> recent, const SamplingParams& p);

using SampleScratch = std::vector<std::pair<float, int32_t>>;

// The chain above over `logits` with the penalty applied once to each distinct id of `penalized` (duplicates are
// fine), drawing with u in [0, 1) (ignored when greedy). NaN and -inf logits are never chosen; when any logit is
// +inf (after the penalty), only the +inf ones are, uniformly. Throws tandem::Error when the row is empty, an id of
// `penalized` is outside the row, or no logit can be chosen (all NaN/-inf). scratch: reused storage (may be null).
int32_t sample_row(std::span<const float> logits, std::span<const int32_t> penalized, const SamplingParams& p, double u,
                   SampleScratch* scratch = nullptr);

// What a step returns for a sampled logits row (StepOutput::sampled), and what the device computes: kNonFiniteRow
// when any raw logit is NaN or +-inf (before the penalty, as greedy_token); kNoCandidate when every logit is -inf
// after the penalty; else sample_row(). Throws only for an empty row or an id of `penalized` outside it.
int32_t sample_token(std::span<const float> logits, std::span<const int32_t> penalized, const SamplingParams& p,
                     double u, SampleScratch* scratch = nullptr);

// One logits row's sampling in a step (Step::sampling): the request's parameters, the sampler's uniform draw for
// this token (runtime/sampler.h Sampler::next_draw) and its penalty window, a view that must stay valid until the
// step's forward() returns.
struct RowSampling {
  SamplingParams params;
  double u = 0.0;
  std::span<const int32_t> penalized;
};

}  // namespace tandem
