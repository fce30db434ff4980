// Batched generation over a ModelRunner: one prefill step holding every prompt, then decode steps holding
// the next token of each unfinished sequence. (The continuous-batching scheduler of the server builds on the
// same Step; this is its simplest client.)
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "diag/taps.h"
#include "runtime/runner.h"
#include "runtime/sampler.h"

namespace tandem {

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int64_t max_new_tokens = 64;
  SamplingParams sampling;
  bool stop_at_eos = true;           // stop at the model's eos ids and at stop_ids
  std::vector<int32_t> stop_ids;     // more end-of-turn ids (the tokenizer's eos/eot, the chat format's end)
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated tokens (the eos token, if hit, included)
  std::string finish_reason;    // "length" | "stop"
  uint64_t seed = 0;
};

struct GenerationStats {
  int64_t prompt_tokens = 0;
  int64_t cached_prompt_tokens = 0;  // of those, found in the prefix cache (not computed)
  int64_t generated_tokens = 0;  // tokens produced by decode steps (the first token comes from prefill)
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

using TokenCallback = std::function<void(size_t request, int32_t token)>;

// Throws before running anything if a prompt is empty, has ids outside the vocabulary, or prompt +
// max_new_tokens exceeds the model's context. prefill_taps (may be null) sees the prefill step.
std::vector<GenerationResult> generate(ModelRunner& runner, const std::vector<GenerationRequest>& requests,
                                       const TokenCallback& on_token = {}, GenerationStats* stats = nullptr,
                                       TapSink* prefill_taps = nullptr);

}  // namespace tandem
