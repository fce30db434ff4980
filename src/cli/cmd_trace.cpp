// tandem trace: magnitudes of every tap through a prefill and a few greedy decode steps of one prompt, on any
// path or plan (diag/trace.h). Exits 1 when a tap holds NaN or Inf, naming the first.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <set>

#include "cli/common.h"
#include "diag/compare.h"
#include "diag/report.h"
#include "diag/trace.h"

namespace tandem::cli {
namespace {

struct TraceArgs {
  ModelOptions model;
  std::string prompt, prompt_ids, taps, json, html;
  int steps = 4;
  std::vector<std::string> perturb;
  std::string sweep;
  bool no_bos = false;
};

struct Outcome {
  std::vector<int32_t> tokens;  // greedy choice after each step
  std::vector<float> logits;    // the prefill's last-row logits
};

// One prefill + `steps` greedy decode steps of sequence 0 (created and released here).
Outcome run_once(Executor& r, const std::vector<int32_t>& ids, int steps, Tracer* tracer) {
  const ModelConfig& c = r.config();
  r.create_sequence(0, int64_t(ids.size()) + steps + 1);
  Outcome o;
  Step step;
  for (size_t i = 0; i < ids.size(); ++i) step.add(ids[i], 0, int32_t(i), i + 1 == ids.size());
  for (int s = 0; s <= steps; ++s) {
    if (tracer) tracer->begin_step(s, step.positions);
    const StepOutput out = r.forward(step, tracer);
    const float* row = out.logits.f32();
    if (s == 0) o.logits.assign(row, row + c.vocab_size);
    o.tokens.push_back(int32_t(std::max_element(row, row + c.vocab_size) - row));
    step = Step{};
    step.add(o.tokens.back(), 0, int32_t(ids.size()) + s, true);
  }
  r.release_sequence(0);
  return o;
}

// How a perturbed run answers: its prefill logits against the unperturbed ones, and how many greedy tokens stayed.
struct Response {
  Comparison logits;
  size_t same_tokens = 0;
};
Response response_of(const Outcome& base, const Outcome& o) {
  auto view = [](const std::vector<float>& v) {
    return Tensor::contiguous(const_cast<float*>(v.data()), DType::F32, {int64_t(v.size())});
  };
  Response r{compare(view(o.logits), view(base.logits)), 0};
  while (r.same_tokens < o.tokens.size() && o.tokens[r.same_tokens] == base.tokens[r.same_tokens]) ++r.same_tokens;
  return r;
}

std::string response(const Outcome& base, const Outcome& o) {
  const Response r = response_of(base, o);
  return fmt::format("response: prefill logits rel_l2 {:.3e} (cos {:.4f}) vs unperturbed; first token {} -> {}; "
                     "greedy tokens equal for {}/{}", r.logits.rel_l2, r.logits.cosine, base.tokens[0], o.tokens[0],
                     r.same_tokens, o.tokens.size());
}

// --sweep 'L*.qkv:k:scale=A..B:log:N' (or :lin:N): the perturbation at N factors from A to B.
void sweep(const TraceArgs& a, Loaded& l, const std::vector<int32_t>& ids, const Outcome& base) {
  const std::string& spec = a.sweep;
  const size_t eq = spec.find("scale="), dots = spec.find("..", eq == std::string::npos ? 0 : eq);
  TD_CHECK(eq != std::string::npos && dots != std::string::npos,
           "--sweep {}: expected TAP:PART:scale=A..B:log:N or :lin:N", spec);
  const std::string head = spec.substr(0, eq);
  std::string rest = spec.substr(dots + 2);
  // A whole-string number or a named error (no silent 0 for "abc").
  auto number = [&](const std::string& text, const char* what) {
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    TD_CHECK(!text.empty() && *end == 0 && std::isfinite(v), "--sweep {}: {} '{}' is not a number", spec, what, text);
    return v;
  };
  const double lo = number(spec.substr(eq + 6, dots - eq - 6), "the lower bound");
  const size_t c1 = rest.find(':'), c2 = c1 == std::string::npos ? c1 : rest.find(':', c1 + 1);
  TD_CHECK(c2 != std::string::npos, "--sweep {}: expected ...:log:N or ...:lin:N after the range", spec);
  const double hi = number(rest.substr(0, c1), "the upper bound");
  const std::string kind = rest.substr(c1 + 1, c2 - c1 - 1);
  const double points = number(rest.substr(c2 + 1), "the point count");
  const int n = int(points);
  TD_CHECK(double(n) == points, "--sweep {}: the point count must be a whole number", spec);
  TD_CHECK((kind == "log" || kind == "lin") && n >= 2 && n <= 64 && (kind == "lin" || (lo > 0 && hi > 0)),
           "--sweep {}: need log|lin, 2..64 points, and positive bounds for log", spec);
  const ModelConfig& c = l.runner->config();
  std::printf("%12s %12s %8s %8s %10s %14s\n", "scale", "logits rel", "cos", "token", "same", "max q.k/sqrt");
  for (int i = 0; i < n; ++i) {
    const double t = double(i) / double(n - 1);
    const double f = kind == "log" ? lo * std::pow(hi / lo, t) : lo + (hi - lo) * t;
    const Perturbation p = parse_perturbation(head + fmt::format("scale={:.9g}", f), c);
    l.runner->set_perturbations({p});
    Tracer tr({int(c.n_heads), int(c.n_kv_heads), int(c.head_dim), int(c.sliding_window)}, int(c.n_layers),
              l.runner->host().dtype(), {"rope"});
    const Outcome o = run_once(*l.runner, ids, a.steps, &tr);
    double m = 0;
    for (const LogitMax& x : tr.logit_max())
      if (std::fabs(x.value) > std::fabs(m) || std::isnan(x.value)) m = x.value;
    const Response r = response_of(base, o);
    std::printf("%12.4g %12.3e %8.4f %8d %6zu/%-3zu %14.4g\n", f, r.logits.rel_l2, r.logits.cosine, o.tokens[0],
                r.same_tokens, o.tokens.size(), m);
  }
  l.runner->set_perturbations({});
}

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
  const Outcome base = run_once(*l.runner, ids, a.steps, &tracer);
  if (!a.sweep.empty()) return sweep(a, l, ids, base);
  if (!a.perturb.empty()) {
    std::vector<Perturbation> ps;
    for (const std::string& spec : a.perturb) ps.push_back(parse_perturbation(spec, c));
    l.runner->set_perturbations(ps);
    Tracer perturbed({int(c.n_heads), int(c.n_kv_heads), int(c.head_dim), int(c.sliding_window)}, int(c.n_layers),
                     l.runner->host().dtype(), split_list(a.taps));
    const Outcome o = run_once(*l.runner, ids, a.steps, &perturbed);
    std::fputs(perturbed.table().c_str(), stdout);
    std::printf("%s\n", response(base, o).c_str());
    std::printf("greedy tokens unperturbed:");
    for (int32_t t : base.tokens) std::printf(" %d", t);
    std::printf("\ngreedy tokens perturbed:  ");
    for (int32_t t : o.tokens) std::printf(" %d", t);
    std::printf("\n");
    return;
  }
  const std::vector<int32_t>& chosen = base.tokens;
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
  if (!a.html.empty()) {
    std::ofstream f(a.html);
    TD_CHECK(f.good(), "--html {}: cannot write", a.html);
    f << trace_report_html({"tandem trace: " + std::string(l.runner->path_name()) + " path", tracer.table(),
                            int(c.n_layers), tracer.stats(), tracer.logit_max()});
    std::fprintf(stderr, "trace: report written to %s\n", a.html.c_str());
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
  cmd->add_option("--html", a->html, "write a self-contained HTML report (plots, heat map, tables) to this file");
  cmd->add_flag("--no-bos", a->no_bos, "do not add the tokenizer's BOS token");
  cmd->add_option("--perturb", a->perturb,
                  "TAP:PART:scale=F (e.g. L1.qkv:k:scale=0.0005, L*.attn_norm:all:scale=2): trace the perturbed run "
                  "and report how the logits and greedy tokens respond (repeatable)");
  cmd->add_option("--sweep", a->sweep, "TAP:PART:scale=A..B:log:N (or :lin:N): the response at N factors");
  cmd->callback([a] { run(*a); });
}

}  // namespace tandem::cli
