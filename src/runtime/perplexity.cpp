#include "runtime/perplexity.h"

#include <chrono>
#include <cmath>

#include "core/error.h"

namespace tandem {

PerplexityResult perplexity(ModelRunner& runner, std::span<const int32_t> ids, int64_t ctx, int64_t stride,
                            const std::function<void(int64_t, int64_t)>& progress) {
  const int64_t n = int64_t(ids.size());
  TD_CHECK(n >= 2, "perplexity needs at least 2 tokens, got {}", n);
  TD_CHECK(ctx >= 2 && ctx <= runner.config().max_positions,
           "perplexity: --ctx {} must be between 2 and the model's context ({})", ctx, runner.config().max_positions);
  TD_CHECK(stride >= 1 && stride <= ctx, "perplexity: --stride {} must be between 1 and --ctx ({})", stride, ctx);
  const int64_t V = runner.config().vocab_size;
  const auto t0 = std::chrono::steady_clock::now();
  PerplexityResult r;
  const int64_t total_windows = n <= ctx ? 1 : (n - ctx + stride - 1) / stride + 1;
  int64_t prev_end = 0;
  constexpr int32_t kSeq = 0;
  for (int64_t begin = 0; begin < n; begin += stride) {
    const int64_t end = std::min(begin + ctx, n);
    const int64_t first_target = std::max(prev_end, begin + 1);
    Step step;
    // Row for position p predicts token p + 1; ask only for the rows whose prediction is scored.
    for (int64_t p = begin; p < end; ++p)
      step.add(ids[size_t(p)], kSeq, int32_t(p - begin), p + 1 >= first_target && p + 1 < end);
    runner.create_sequence(kSeq, end - begin);
    StepOutput out;
    try {
      out = runner.forward(step, nullptr);
    } catch (...) {
      runner.release_sequence(kSeq);
      throw;
    }
    runner.release_sequence(kSeq);
    for (size_t row = 0; row < out.logit_rows.size(); ++row) {
      const float* l = out.logits.f32() + int64_t(row) * V;
      double m = -INFINITY;
      for (int64_t v = 0; v < V; ++v) m = std::max(m, double(l[v]));
      double z = 0;
      for (int64_t v = 0; v < V; ++v) z += std::exp(double(l[v]) - m);
      const int64_t target = begin + out.logit_rows[row] + 1;
      r.nll_sum -= double(l[ids[size_t(target)]]) - m - std::log(z);
      ++r.scored;
    }
    ++r.windows;
    prev_end = end;
    if (progress) progress(r.windows, total_windows);
    if (end == n) break;
  }
  r.perplexity = std::exp(r.nll_sum / double(r.scored));
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace tandem
