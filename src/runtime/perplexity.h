// Perplexity over a token sequence with the HF sliding-window recipe: windows of `ctx` tokens starting every
// `stride` tokens; each window scores only tokens no earlier window scored (the first window: all but its
// first token); ppl = exp(mean NLL). stride == ctx gives disjoint windows (llama.cpp's perplexity scores only
// the second half of each window instead, so its numbers differ).
#pragma once
#include <cstdint>
#include <functional>
#include <span>

#include "runtime/runner.h"

namespace tandem {

struct PerplexityResult {
  double perplexity = 0;
  double nll_sum = 0;
  int64_t scored = 0;
  int64_t windows = 0;
  double seconds = 0;
};

PerplexityResult perplexity(ModelRunner& runner, std::span<const int32_t> ids, int64_t ctx, int64_t stride,
                            const std::function<void(int64_t done, int64_t total)>& progress = {});

}  // namespace tandem
