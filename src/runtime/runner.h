// ModelRunner: one execution path (reference, standard, fused) over one loaded model. It owns the KV cache
// for the sequences the engine creates, and executes steps. Every path takes the same Step and returns the
// same StepOutput; only the KV layout behind it differs.
#pragma once
#include <cstdint>
#include <span>
#include <string_view>

#include "diag/taps.h"
#include "model/config.h"
#include "exec/step.h"

namespace tandem {

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  virtual std::string_view path_name() const = 0;
  virtual const ModelConfig& config() const = 0;
  // capacity: most tokens this sequence will hold (prompt + generation); bounded by max_positions.
  virtual void create_sequence(int32_t seq, int64_t capacity) = 0;
  virtual void release_sequence(int32_t seq) = 0;
  virtual int64_t sequence_length(int32_t seq) const = 0;  // tokens whose K/V are cached
  // Validates the step (known sequences, positions continuing the cache, token ids in range), runs it and
  // returns logits for the rows that asked. `taps` may be null.
  virtual StepOutput forward(const Step& step, TapSink* taps) = 0;
  // Prefix caching (where the runner has it switched on; else these do nothing): attach_prefix gives the fresh
  // sequence `seq` the cached K/V of the longest prefix of `tokens` held in whole published pages (at most
  // tokens.size() - 1 tokens, so one is left to compute) and returns how many tokens are now cached; publish_prefix
  // offers the full pages of `seq` holding tokens[0, tokens.size()) (their K/V computed) to later sequences.
  virtual int64_t attach_prefix(int32_t seq, std::span<const int32_t> tokens) {
    (void)seq, (void)tokens;
    return 0;
  }
  virtual void publish_prefix(int32_t seq, std::span<const int32_t> tokens) { (void)seq, (void)tokens; }
};

}  // namespace tandem
