// A step: the unit of work every path executes. A ragged batch of tokens, each with the sequence it belongs
// to and its position there; several sequences at once, some prefilling many tokens, some decoding one.
// A single sequence is a batch of one. Tokens of one sequence appear in position order and continue where
// that sequence's KV cache ends.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "exec/sampling.h"

namespace tandem {

struct Step {
  std::vector<int32_t> tokens;
  std::vector<int32_t> seq_ids;
  std::vector<int32_t> positions;
  std::vector<uint8_t> want_logits;  // 1: return a logits row for this token
  // The caller needs only each logits row's greedy token (StepOutput::argmax): it is chosen on the device and
  // the logits stay there (StepOutput::logits is empty), unless a tap asks for them.
  bool greedy_only = false;
  // Sampling on the device: one RowSampling per logits row, in the order of the tokens that want logits (not with
  // greedy_only). StepOutput::sampled gets sample_token() of each row (exec/sampling.h) and the logits stay on the
  // device (StepOutput::logits is empty), unless a tap asks for them.
  std::vector<RowSampling> sampling;

  void add(int32_t token, int32_t seq, int32_t pos, bool logits) {
    tokens.push_back(token);
    seq_ids.push_back(seq);
    positions.push_back(pos);
    want_logits.push_back(logits ? 1 : 0);
  }
  int64_t size() const { return int64_t(tokens.size()); }
};

// What a runner knows of one sequence: tokens cached so far and the most it may hold.
struct SequenceExtent {
  int64_t length = 0;
  int64_t capacity = 0;
};

// Checks a step before any work: arrays agree, token ids in [0, vocab), every sequence known (lookup
// returns nullopt for unknown ones), each sequence's positions continue its cache in order, within capacity.
void validate_step(const Step& step, int64_t vocab,
                   const std::function<std::optional<SequenceExtent>(int32_t seq)>& lookup);

struct StepOutput {
  HostTensor logits;                // [tokens that asked for logits, vocab] fp32 ([0, V] for a greedy_only step)
  std::vector<int32_t> logit_rows;  // index into the step's tokens for each logits row
  std::vector<int32_t> argmax;      // greedy_only: greedy_token() of each logits row
  std::vector<int32_t> sampled;     // Step::sampling: sample_token() of each logits row under its RowSampling
};

// The greedy token of a logits row: the index of the largest value, ties to the lowest index; -1 (the NaN guard's
// sentinel) when ANY value is NaN, +inf or -inf. A model's raw logits are finite, and nothing (no bias, mask or
// penalty) is applied before this pick, so one non-finite value means a fault upstream: the runtime fails the
// request as the host scan of a row does (runtime/generate.h count_non_finite_row), whichever path chose the
// token. On a finite row it is the CPU sampler's greedy rule (runtime/sampler.h); the device's twin is
// cuda/sampling.cuh argmax_rows. (kNonFiniteRow: exec/sampling.h.)
int32_t greedy_token(std::span<const float> row);

}  // namespace tandem
