// Batched generation over a ModelRunner: one prefill step holding every prompt, then decode steps holding
// the next token of each unfinished sequence. (The continuous-batching scheduler of the server builds on the
// same Step; this is its simplest client.)
#pragma once
#include <functional>
#include <span>
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
  // Sample from logits rows copied to the host (the host sampler) instead of on the device (Step::sampling: token
  // ids come back). Same tokens either way (exec/sampling.h); for checking that, and for timing the copy.
  bool logits_to_host = false;
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
// Prefill progress: prompt tokens computed so far and the number to compute (cached ones excluded).
using PrefillProgress = std::function<void(int64_t done, int64_t total)>;
// Given a PrefillProgress, a single request's prefill longer than this runs in steps of this many tokens (as the
// server's chunked prefill does), and the callback is called after each; otherwise the prefill is one step.
inline constexpr int64_t kPrefillProgressChunk = 256;

// Throws before running anything if a prompt is empty, has ids outside the vocabulary, or prompt +
// max_new_tokens exceeds the model's context. prefill_taps (may be null) sees the prefill step.
// Unless a request asks for logits_to_host, every step asks the runner for token ids (Step::greedy_only when all
// requests are greedy without a penalty, else Step::sampling with each sampler's draw), not logits rows.
// A logits row that holds a NaN or Inf, one value or all, is never sampled (the device's pick gives no token for
// it): generate() throws a tandem::Error naming the request, the step and the first non-finite tap
// (locate_non_finite). on_prefill: see PrefillProgress (unused when prefill_taps is given: the taps see the
// prefill as one step).
std::vector<GenerationResult> generate(ModelRunner& runner, const std::vector<GenerationRequest>& requests,
                                       const TokenCallback& on_token = {}, GenerationStats* stats = nullptr,
                                       TapSink* prefill_taps = nullptr, const PrefillProgress& on_prefill = {});

// The runtime NaN guard, shared with the serving engine (runtime/engine.h).
// How many values of a logits row are NaN / +-Inf; a model's raw logits are finite, so any is a fault.
struct NonFiniteRow {
  int64_t nan = 0, inf = 0;
  bool any() const { return nan > 0 || inf > 0; }
};
NonFiniteRow count_non_finite_row(std::span<const float> row);

// Why a sequence's logits went non-finite, as a clause for its error message: reruns `tokens` (the sequence's
// prompt + generated tokens) alone through `runner` as the fresh sequence `seq`, in steps of at most `chunk`
// tokens, with every tap on, and names the first tap (in execution order) holding a NaN or Inf, its variant,
// the first position affected and the tap before it. The cost is one prefill of the sequence; it never throws
// (a rerun that cannot run, e.g. for want of KV pages, says so). `seq` is released afterwards.
std::string locate_non_finite(ModelRunner& runner, int32_t seq, std::span<const int32_t> tokens, int64_t chunk);

}  // namespace tandem
