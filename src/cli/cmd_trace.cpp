// tandem trace: magnitudes of every tap through a prefill and a few greedy decode steps of one prompt, on any
// path or plan (diag/trace.h). Exits 1 when a tap holds NaN or Inf, naming the first.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>

#include "cli/common.h"
#include "diag/trace.h"

namespace tandem::cli {
namespace {

struct TraceArgs {
  ModelOptions model;
  std::string prompt, prompt_ids, taps, json;
  int steps = 4;
  bool no_bos = false;
};

void run(const TraceArgs& a) {
  TD_CHECK(a.prompt.empty() != a.prompt_ids.empty(), "trace: give -p TEXT or --prompt-ids 1,2,3 (one of them)");
  TD_CHECK(a.steps >= 0 && a.steps <= 4096, "--steps {}: expected 0..4096 decode steps", a.steps);
  Loaded l = load(a.model);
  std::vector<int32_t> ids;
  if (!a.prompt.empty()) {
    TD_CHECK(l.bundle.tokenizer.has_value(), "{}: -p TEXT needs a tokenizer; pass --prompt-ids",
             model_path(a.model).string());
    ids = l.bundle.tokenizer->encode(a.prompt, !a.no_bos, true);
  } else {
    ids = parse_token_ids(a.prompt_ids);
    for (int32_t t : ids)
      TD_CHECK(t >= 0 && t < l.runner->config().vocab_size, "--prompt-ids: id {} outside the vocabulary (size {})",
               t, l.runner->config().vocab_size);
  }
  TD_CHECK(!ids.empty(), "trace: the prompt encodes to no tokens");
  const ModelConfig& c = l.runner->config();
  const int64_t capacity = int64_t(ids.size()) + a.steps + 1;
  TD_CHECK(capacity <= c.max_positions, "trace: {} prompt tokens + {} steps exceed the model's context ({})",
           ids.size(), a.steps, c.max_positions);
  Tracer tracer({int(c.n_heads), int(c.n_kv_heads), int(c.head_dim), int(c.sliding_window)}, int(c.n_layers),
                l.runner->host().dtype(), split_list(a.taps));
  l.runner->create_sequence(0, capacity);
  Step step;
  for (size_t i = 0; i < ids.size(); ++i) step.add(ids[i], 0, int32_t(i), i + 1 == ids.size());
  std::vector<int32_t> chosen;
  for (int s = 0; s <= a.steps; ++s) {
    tracer.begin_step(s, step.positions);
    const StepOutput out = l.runner->forward(step, &tracer);
    const float* row = out.logits.f32();
    const int32_t next = int32_t(std::max_element(row, row + c.vocab_size) - row);
    chosen.push_back(next);
    step = Step{};
    step.add(next, 0, int32_t(ids.size()) + s, true);
  }
  std::fputs(tracer.table().c_str(), stdout);
  std::printf("greedy tokens:");
  for (int32_t t : chosen) std::printf(" %d", t);
  std::printf("\n");
  if (!a.json.empty()) {
    std::ofstream f(a.json);
    TD_CHECK(f.good(), "--json {}: cannot write", a.json);
    f << tracer.json() << "\n";
    std::fprintf(stderr, "trace: %zu tap statistics written to %s\n", tracer.stats().size(), a.json.c_str());
  }
  std::fflush(stdout);
  if (const TapStats* bad = tracer.first_non_finite())
    fail("trace: {} at step {} holds {} NaN and {} Inf of {} values (the first non-finite tap)", bad->tap, bad->step,
         bad->nan, bad->inf, bad->count);
}

}  // namespace

void register_trace(CLI::App& app) {
  auto a = std::make_shared<TraceArgs>();
  CLI::App* cmd = app.add_subcommand(
      "trace", "per-layer magnitudes (absmax, rms, NaN/Inf, headroom, largest attention logit) of a prompt's run");
  add_model_options(cmd, a->model, false);
  cmd->add_option("-p,--prompt", a->prompt, "prompt text");
  cmd->add_option("--prompt-ids", a->prompt_ids, "prompt as comma-separated token ids");
  cmd->add_option("-n,--steps", a->steps, "greedy decode steps after the prefill")->capture_default_str();
  cmd->add_option("--taps", a->taps, "taps with statistics: names (L1.attention), stages (attention) or * (all)");
  cmd->add_option("--json", a->json, "write every tap's statistics and the attention-logit maxima to this file");
  cmd->add_flag("--no-bos", a->no_bos, "do not add the tokenizer's BOS token");
  cmd->callback([a] { run(*a); });
}

}  // namespace tandem::cli
