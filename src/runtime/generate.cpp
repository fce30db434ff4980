#include "runtime/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <span>

#include "core/error.h"
#include "diag/trace.h"
#include "runtime/executor.h"

namespace tandem {
namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The first tap of a rerun that holds a NaN or Inf, and the finite one before it (its input, in execution order).
class FirstNonFinite final : public TapSink {
 public:
  explicit FirstNonFinite(int64_t first_position) : first_position_(first_position) {}
  bool wants(Stage, int) const override { return !found; }
  void publish(Stage s, int layer, const Tensor& t) override {
    if (found) return;
    const HostTensor f = HostTensor::to_f32(t);
    const TapStats st = tap_stats(tap_name(s, layer), 0, f.view(), DType::F32);
    if (st.finite()) {
      before = st;
      return;
    }
    found = st;
    stage = s;
    const int64_t rows = std::max<int64_t>(1, f.view().shape[0]), cols = st.count / rows;
    const float* p = f.f32();
    for (int64_t i = 0; i < st.count; ++i)
      if (!std::isfinite(p[i])) {
        // Rows follow the step's tokens (logits: one row, the chunk's last token).
        position = s == Stage::logits ? -1 : first_position_ + i / std::max<int64_t>(1, cols);
        break;
      }
  }
  void next_chunk(int64_t first_position) { first_position_ = first_position; }

  std::optional<TapStats> found, before;
  Stage stage = Stage::embed;
  int64_t position = -1;

 private:
  int64_t first_position_ = 0;
};

// Releases the runner's sequences however generate() exits.
struct SequenceGuard {
  ModelRunner& runner;
  std::vector<int32_t> ids;
  ~SequenceGuard() {
    for (int32_t id : ids) runner.release_sequence(id);
  }
};
}  // namespace

NonFiniteRow count_non_finite_row(std::span<const float> row) {
  NonFiniteRow n;
  for (float v : row) {
    n.nan += std::isnan(v);
    n.inf += std::isinf(v);
  }
  return n;
}

std::string locate_non_finite(ModelRunner& runner, int32_t seq, std::span<const int32_t> tokens, int64_t chunk) {
  if (tokens.empty()) return "nothing to rerun";
  chunk = std::max<int64_t>(1, chunk);
  FirstNonFinite sink(0);
  bool created = false;
  try {
    runner.create_sequence(seq, int64_t(tokens.size()));
    created = true;
    for (int64_t at = 0; at < int64_t(tokens.size()) && !sink.found; at += chunk) {
      const int64_t end = std::min<int64_t>(int64_t(tokens.size()), at + chunk);
      Step step;
      for (int64_t i = at; i < end; ++i) step.add(tokens[size_t(i)], seq, int32_t(i), i + 1 == end);
      sink.next_chunk(at);
      runner.forward(step, &sink);  // the logits come back as the "logits" tap
    }
    runner.release_sequence(seq);
    created = false;
  } catch (const std::exception& e) {
    if (created) {
      try {
        runner.release_sequence(seq);
      } catch (...) {
      }
    }
    return fmt::format("it could not be rerun alone to find the first non-finite tap: {}", e.what());
  }
  if (!sink.found)
    return fmt::format("rerun alone ({} tokens) with every tap on, it stayed finite: the fault depends on the batch "
                       "it ran in, or is not deterministic", tokens.size());
  const TapStats& st = *sink.found;
  std::string by;
  if (auto* ex = dynamic_cast<Executor*>(&runner))
    if (const Variant* v = ex->plan().by_stage[size_t(sink.stage)]) by = fmt::format(" (by {})", v->name);
  std::string where = sink.position >= 0 ? fmt::format(", first at position {}", sink.position) : std::string();
  std::string input = sink.before ? fmt::format("; its input {} was finite (absmax {:.3e}, rms {:.3e})",
                                                sink.before->tap, sink.before->absmax, sink.before->rms)
                                  : std::string("; its input was the tokens");
  return fmt::format("rerun alone with every tap on, the first non-finite tap is {}{}: {} NaN and {} Inf of {} "
                     "values{}{}", st.tap, by, st.nan, st.inf, st.count, where, input);
}

std::vector<GenerationResult> generate(ModelRunner& runner, const std::vector<GenerationRequest>& requests,
                                       const TokenCallback& on_token, GenerationStats* stats, TapSink* prefill_taps,
                                       const PrefillProgress& on_prefill) {
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
  int64_t step_no = 0;  // 0: the prefill
  // The NaN guard: request r's logits went non-finite; its pages go first (the rerun needs room for them).
  auto fail_non_finite = [&](size_t r, const std::string& what) {
    runner.release_sequence(int32_t(r));
    std::erase(guard.ids, int32_t(r));
    const std::string why = locate_non_finite(runner, int32_t(requests.size()), history[r], int64_t(history[r].size()));
    fail("request {}: the logits of step {} ({}, position {}) {}, so no token can be sampled; {}", r, step_no,
         step_no == 0 ? "prefill" : "decode", history[r].size() - 1, what, why);
  };
  // Sample row i of `out` for request active[i]; drop requests that finish.
  auto take = [&](const StepOutput& out) {
    const int64_t V = c.vocab_size;
    std::vector<size_t> still;
    for (size_t i = 0; i < active.size(); ++i) {
      const size_t r = active[i];
      int32_t tok;
      if (!out.argmax.empty()) {  // chosen on the device (greedy, no penalty: the sampler's rule)
        tok = out.argmax[i];
        // The greedy pick's sentinel: one NaN/Inf anywhere in the row (exec/step.h greedy_token).
        if (tok < 0) fail_non_finite(r, fmt::format("hold NaN or Inf among {} values (the greedy pick found one)", V));
      } else if (!out.sampled.empty()) {  // chosen by the runner with this sampler's draw (exec/sampling.h)
        tok = out.sampled[i];
        if (tok == kNonFiniteRow)
          fail_non_finite(r, fmt::format("hold NaN or Inf among {} values (the sampler found one)", V));
        TD_CHECK(tok >= 0, "request {}: sampler: all {} logits are NaN/-inf after the repetition penalty", r, V);
        samplers[r].accept_draw();
      } else {
        const std::span<const float> row(out.logits.f32() + int64_t(i) * V, size_t(V));
        if (const NonFiniteRow nf = count_non_finite_row(row); nf.any())
          fail_non_finite(r, fmt::format("hold {} NaN and {} Inf of {} values", nf.nan, nf.inf, V));
        tok = samplers[r].sample(row, history[r]);
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
  // Token ids come back, not logits rows: greedy requests without a repetition penalty need only each row's argmax;
  // others are sampled by the runner with each sampler's draw. The logits stay on the device.
  const bool on_device = std::none_of(requests.begin(), requests.end(),
                                      [](const GenerationRequest& q) { return q.logits_to_host; });
  const bool greedy_only = on_device && std::all_of(requests.begin(), requests.end(), [](const GenerationRequest& q) {
    return q.sampling.greedy() && (q.sampling.repeat_penalty == 1.0f || q.sampling.repeat_last_n == 0);
  });
  // Each logits row's sampling, from the sequence (seq id = request) of the token that wants it.
  auto ask_for_tokens = [&](Step& s) {
    s.greedy_only = greedy_only;
    if (!on_device || greedy_only) return;
    for (int64_t t = 0; t < s.size(); ++t)
      if (s.want_logits[size_t(t)]) {
        const auto r = size_t(s.seq_ids[size_t(t)]);
        s.sampling.push_back(samplers[r].peek_draw(history[r]));
      }
  };
  ask_for_tokens(prefill);
  // Every token but each history's newest (just sampled) has its K/V cached after a step.
  auto publish = [&] {
    for (size_t r = 0; r < requests.size(); ++r)
      runner.publish_prefix(int32_t(r), std::span<const int32_t>(history[r].data(), history[r].size() - 1));
  };
  const int64_t total = prefill.size();
  if (on_prefill && !prefill_taps && requests.size() == 1 && total > kPrefillProgressChunk) {
    // Chunks in order: the K/V of each is cached before the next reads it; only the last asks for logits.
    for (int64_t at = 0; at < total; at += kPrefillProgressChunk) {
      const int64_t end = std::min(total, at + kPrefillProgressChunk);
      Step part;
      for (int64_t i = at; i < end; ++i)
        part.add(prefill.tokens[size_t(i)], prefill.seq_ids[size_t(i)], prefill.positions[size_t(i)],
                 prefill.want_logits[size_t(i)] != 0);
      ask_for_tokens(part);
      StepOutput out = runner.forward(part, nullptr);
      on_prefill(end, total);
      if (end == total) take(out);
    }
  } else {
    take(runner.forward(prefill, prefill_taps));
  }
  publish();
  st.prefill_seconds = seconds_since(t0);

  t0 = std::chrono::steady_clock::now();
  while (!active.empty()) {
    Step step;
    for (size_t r : active) step.add(history[r].back(), int32_t(r), int32_t(history[r].size() - 1), true);
    ask_for_tokens(step);
    ++step_no;
    take(runner.forward(step, nullptr));
    publish();
    st.generated_tokens += step.size();
  }
  st.decode_seconds = seconds_since(t0);
  return results;
}

}  // namespace tandem
