#include "runtime/generate.h"

#include <algorithm>
#include <chrono>
#include <span>

#include "core/error.h"

namespace tandem {
namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Releases the runner's sequences however generate() exits.
struct SequenceGuard {
  ModelRunner& runner;
  std::vector<int32_t> ids;
  ~SequenceGuard() {
    for (int32_t id : ids) runner.release_sequence(id);
  }
};
}  // namespace

std::vector<GenerationResult> generate(ModelRunner& runner, const std::vector<GenerationRequest>& requests,
                                       const TokenCallback& on_token, GenerationStats* stats, TapSink* prefill_taps) {
  const ModelConfig& c = runner.config();
  TD_CHECK(!requests.empty(), "generate: no requests");
  for (size_t r = 0; r < requests.size(); ++r) {
    const GenerationRequest& q = requests[r];
    TD_CHECK(!q.prompt.empty(), "request {}: the prompt is empty", r);
    TD_CHECK(q.max_new_tokens >= 1, "request {}: max_new_tokens must be at least 1, got {}", r, q.max_new_tokens);
    for (size_t i = 0; i < q.prompt.size(); ++i)
      TD_CHECK(q.prompt[i] >= 0 && q.prompt[i] < c.vocab_size,
               "request {}: prompt token {} has id {}, outside the vocabulary (size {})", r, i, q.prompt[i],
               c.vocab_size);
    const int64_t need = int64_t(q.prompt.size()) + q.max_new_tokens;
    TD_CHECK(need <= c.max_positions,
             "request {}: prompt of {} tokens + {} new tokens = {} exceeds the model's context of {} tokens", r,
             q.prompt.size(), q.max_new_tokens, need, c.max_positions);
    q.sampling.validate();
  }

  std::vector<Sampler> samplers;
  std::vector<std::vector<int32_t>> history;
  std::vector<GenerationResult> results(requests.size());
  SequenceGuard guard{runner, {}};
  Step prefill;
  int64_t cached_total = 0;
  for (size_t r = 0; r < requests.size(); ++r) {
    const GenerationRequest& q = requests[r];
    const int32_t seq = int32_t(r);
    runner.create_sequence(seq, int64_t(q.prompt.size()) + q.max_new_tokens);
    guard.ids.push_back(seq);
    samplers.emplace_back(q.sampling);
    results[r].seed = samplers.back().seed();
    history.push_back(q.prompt);
    // With prefix caching (tandem chat: the conversation so far) the prefill starts after the cached pages.
    const size_t cached = size_t(runner.attach_prefix(seq, q.prompt));
    cached_total += int64_t(cached);
    for (size_t i = cached; i < q.prompt.size(); ++i)
      prefill.add(q.prompt[i], seq, int32_t(i), i + 1 == q.prompt.size());
  }

  GenerationStats local;
  GenerationStats& st = stats ? *stats : local;
  st = {};
  st.prompt_tokens = prefill.size() + cached_total;
  st.cached_prompt_tokens = cached_total;

  std::vector<size_t> active(requests.size());
  for (size_t r = 0; r < requests.size(); ++r) active[r] = r;
  // Sample row i of `out` for request active[i]; drop requests that finish.
  auto take = [&](const StepOutput& out) {
    const int64_t V = c.vocab_size;
    std::vector<size_t> still;
    for (size_t i = 0; i < active.size(); ++i) {
      const size_t r = active[i];
      int32_t tok;
      if (!out.argmax.empty()) {  // chosen on the device (greedy, no penalty: the sampler's rule)
        tok = out.argmax[i];
        TD_CHECK(tok >= 0, "sampler: all {} logits are NaN/-inf", V);
      } else {
        tok = samplers[r].sample(std::span<const float>(out.logits.f32() + int64_t(i) * V, size_t(V)), history[r]);
      }
      history[r].push_back(tok);
      results[r].tokens.push_back(tok);
      if (on_token) on_token(r, tok);
      const auto& stops = requests[r].stop_ids;
      const bool eos = requests[r].stop_at_eos &&
                       (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), tok) != c.eos_token_ids.end() ||
                        std::find(stops.begin(), stops.end(), tok) != stops.end());
      if (eos) {
        results[r].finish_reason = "stop";
      } else if (int64_t(results[r].tokens.size()) >= requests[r].max_new_tokens) {
        results[r].finish_reason = "length";
      } else {
        still.push_back(r);
      }
    }
    active = std::move(still);
  };

  auto t0 = std::chrono::steady_clock::now();
  // Greedy requests without a repetition penalty need only each row's argmax: the logits stay on the device.
  const bool greedy_only = std::all_of(requests.begin(), requests.end(), [](const GenerationRequest& q) {
    return q.sampling.greedy() && (q.sampling.repeat_penalty == 1.0f || q.sampling.repeat_last_n == 0);
  });
  prefill.greedy_only = greedy_only;
  // Every token but each history's newest (just sampled) has its K/V cached after a step.
  auto publish = [&] {
    for (size_t r = 0; r < requests.size(); ++r)
      runner.publish_prefix(int32_t(r), std::span<const int32_t>(history[r].data(), history[r].size() - 1));
  };
  take(runner.forward(prefill, prefill_taps));
  publish();
  st.prefill_seconds = seconds_since(t0);

  t0 = std::chrono::steady_clock::now();
  while (!active.empty()) {
    Step step;
    for (size_t r : active) step.add(history[r].back(), int32_t(r), int32_t(history[r].size() - 1), true);
    step.greedy_only = greedy_only;
    take(runner.forward(step, nullptr));
    publish();
    st.generated_tokens += step.size();
  }
  st.decode_seconds = seconds_since(t0);
  return results;
}

}  // namespace tandem
