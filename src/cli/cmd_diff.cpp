// tandem diff: two plans (paths and --variant overrides, on any devices) run the same tokens (the prefill, then
// greedy decode steps both fed plan A's choice, so their KV histories stay aligned); every tap both publish is
// compared in execution order and the first divergence is reported with what went into both tensors.
// Exit 0: equal within the tolerance; 1: they diverge; 2: usage error (bad flags, unknown path or variant).
#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "cli/common.h"
#include "diag/compare.h"
#include "diag/taps.h"

namespace tandem::cli {
namespace {

struct DiffArgs {
  std::string model, prompt, prompt_ids, a = "auto", b = "reference", dtype = "bf16", kv_layout = "nhd";
  std::vector<std::string> variant_a, variant_b;
  int64_t page_size = 16;
  int steps = 4;
  double tol = 0;
  bool no_bos = false;
};

// Every tap name in the order a forward pass produces them.
std::vector<std::string> execution_order(const ModelConfig& c) {
  std::vector<std::string> names{tap_name(Stage::embed, -1)};
  for (int l = 0; l < int(c.n_layers); ++l)
    for (int s = int(kFirstLayerStage); s <= int(kLastLayerStage); ++s) names.push_back(tap_name(Stage(s), l));
  names.push_back(tap_name(Stage::final_norm, -1));
  names.push_back(tap_name(Stage::logits, -1));
  return names;
}

std::string pages_of(const Executor& e) {
  std::string s;
  for (int32_t p : e.pages().pages(0)) s += (s.empty() ? "" : ",") + std::to_string(p);
  return "[" + s + "]";
}

struct Side {
  std::string label;
  std::unique_ptr<Executor> runner;
  std::string describe_stage(const std::string& tap) const {
    const size_t dot = tap.find('.');
    const auto stage = stage_from_name(dot == std::string::npos ? tap : tap.substr(dot + 1));
    const Plan& p = runner->plan();
    const Variant* v = stage ? p.by_stage[size_t(*stage)] : nullptr;
    std::string out = fmt::format("{}: path {} on {}, {} activations", label, p.path, device_name(p.device),
                                  dtype_name(runner->host().dtype()));
    if (v) out += fmt::format(", {} by {}{}", stage_name(*stage), v->name, v->stages.first != v->stages.last
                                                                              ? " (covers " + v->stages.str() + ")"
                                                                              : std::string());
    if (stage && (*stage == Stage::attention || *stage == Stage::kv_write))
      out += fmt::format("; KV {} pages of {} tokens, sequence 0 pages {}", kv_layout_name(p.kv_layout),
                         runner->pages().page_size(), pages_of(*runner));
    return out;
  }
};

int run(const DiffArgs& a) {
  ModelOptions base;
  base.model = a.model;
  std::vector<int32_t> ids;
  Side sides[2];
  ModelBundle bundle;
  try {
    TD_CHECK(a.prompt.empty() != a.prompt_ids.empty(), "diff: give -p TEXT or --prompt-ids 1,2,3 (one of them)");
    TD_CHECK(a.steps >= 0 && a.steps <= 4096, "--steps {}: expected 0..4096", a.steps);
    TD_CHECK(a.tol >= 0, "--tol {}: must not be negative", a.tol);
    bundle = open_model_bundle(model_path(base));
    for (int i = 0; i < 2; ++i) {
      RunnerOptions o;
      o.path = i == 0 ? a.a : a.b;
      o.variants = i == 0 ? a.variant_a : a.variant_b;
      o.dtype = a.dtype;
      o.page_size = a.page_size;
      o.kv_layout = a.kv_layout;
      sides[i].label = i == 0 ? "a" : "b";
      sides[i].runner = make_runner(bundle, o);
      for (const std::string& n : sides[i].runner->plan().notices) std::fprintf(stderr, "note (%s): %s\n", i ? "b" : "a", n.c_str());
    }
    if (!a.prompt.empty()) {
      TD_CHECK(bundle.tokenizer.has_value(), "-p TEXT needs a tokenizer; pass --prompt-ids");
      ids = bundle.tokenizer->encode(a.prompt, !a.no_bos, true);
    } else {
      ids = parse_token_ids(a.prompt_ids);
    }
    TD_CHECK(!ids.empty(), "diff: empty prompt");
    for (int32_t t : ids)
      TD_CHECK(t >= 0 && t < bundle.config().vocab_size, "--prompt-ids: id {} outside the vocabulary (size {})", t,
               bundle.config().vocab_size);
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  const ModelConfig& c = bundle.config();
  const DType worst = std::max({sides[0].runner->host().dtype(), sides[1].runner->host().dtype()},
                               [](DType x, DType y) { return rel_tolerance(x) < rel_tolerance(y); });
  const double tol = a.tol > 0 ? a.tol : rel_tolerance(worst);
  std::printf("diff: a = %s, b = %s (reference side); tolerance rel_l2 <= %.1e (%s)\n",
              sides[0].runner->plan().path.c_str(), sides[1].runner->plan().path.c_str(), tol,
              a.tol > 0 ? "--tol" : dtype_name(worst).data());
  const int64_t capacity = int64_t(ids.size()) + a.steps + 1;
  for (Side& s : sides) s.runner->create_sequence(0, capacity);
  const std::vector<std::string> order = execution_order(c);
  Step step;
  for (size_t i = 0; i < ids.size(); ++i) step.add(ids[i], 0, int32_t(i), i + 1 == ids.size());
  int compared = 0;
  double worst_ok = 0;
  std::string worst_ok_tap;
  for (int s = 0; s <= a.steps; ++s) {
    TapRecorder rec[2];
    StepOutput out[2];
    for (int i = 0; i < 2; ++i) out[i] = sides[i].runner->forward(step, &rec[i]);
    std::string prev;
    for (const std::string& name : order) {
      const HostTensor *ta = rec[0].find(name), *tb = rec[1].find(name);
      if (!ta || !tb) continue;  // inside a multi-stage variant of one side
      const bool same_shape = ta->view().numel() == tb->view().numel();
      const Comparison cmp = same_shape ? compare(*ta, *tb) : Comparison{};
      const bool bad = !same_shape || cmp.rel_l2 > tol || cmp.nonfinite_a > cmp.nonfinite_b;
      ++compared;
      if (!bad) {
        if (cmp.rel_l2 > worst_ok) worst_ok = cmp.rel_l2, worst_ok_tap = fmt::format("step {} {}", s, name);
        prev = fmt::format("{} (rel_l2 {:.2e})", name, cmp.rel_l2);
        continue;
      }
      std::printf("\nFIRST DIVERGENCE: step %d (%s), tap %s\n", s, s == 0 ? "prefill" : "decode", name.c_str());
      if (!same_shape) {
        std::printf("  shapes differ: a %s, b %s\n", ta->view().describe().c_str(), tb->view().describe().c_str());
      } else {
        const int64_t cols = ta->view().ndim > 1 ? ta->view().shape[1] : 1;
        std::printf("  %s; non-finite a %lld, b %lld\n", cmp.summary().c_str(), (long long)cmp.nonfinite_a,
                    (long long)cmp.nonfinite_b);
        if (cmp.max_abs_index >= 0) {
          const int64_t row = cmp.max_abs_index / cols, col = cmp.max_abs_index % cols;
          std::printf("  largest error at row %lld (position %d), column %lld: a %.6g, b %.6g\n", (long long)row,
                      step.positions[size_t(std::min<int64_t>(row, step.size() - 1))], (long long)col,
                      ta->f32()[cmp.max_abs_index], tb->f32()[cmp.max_abs_index]);
        }
      }
      std::printf("  tap tensor: a %s, b %s (taps are fp32 copies, rows = the step's tokens)\n",
                  ta->view().describe().c_str(), tb->view().describe().c_str());
      std::printf("  %s\n  %s\n", sides[0].describe_stage(name).c_str(), sides[1].describe_stage(name).c_str());
      std::printf("  last tap that agreed: %s\n", prev.empty() ? "none (this is the first compared)" : prev.c_str());
      return 1;
    }
    const int64_t V = c.vocab_size;
    const float* row = out[0].logits.f32() + (out[0].logits.view().shape[0] - 1) * V;
    const int32_t next = int32_t(std::max_element(row, row + V) - row);
    step = Step{};
    step.add(next, 0, int32_t(ids.size()) + s, true);
  }
  std::printf("equal: %d taps over %d steps within %.1e (largest rel_l2 %.2e at %s)\n", compared, a.steps + 1, tol,
              worst_ok, worst_ok_tap.empty() ? "-" : worst_ok_tap.c_str());
  return 0;
}

}  // namespace

void register_diff(CLI::App& app) {
  auto a = std::make_shared<DiffArgs>();
  CLI::App* cmd = app.add_subcommand("diff", "run two plans on the same tokens and name the first tap where they part");
  cmd->add_option("-m,--model", a->model, "model: HF folder, .safetensors or .gguf file (default: the default model)");
  cmd->add_option("-p,--prompt", a->prompt, "prompt text");
  cmd->add_option("--prompt-ids", a->prompt_ids, "prompt as comma-separated token ids");
  cmd->add_option("--a", a->a, "plan A: a path (auto, reference, standard, fused)")->capture_default_str();
  cmd->add_option("--b", a->b, "plan B, the reference side")->capture_default_str();
  cmd->add_option("--variant-a", a->variant_a, "STAGE=NAME override for plan A (repeatable)");
  cmd->add_option("--variant-b", a->variant_b, "STAGE=NAME override for plan B (repeatable)");
  cmd->add_option("--dtype", a->dtype, "GPU activations: bf16 | f16 | f32")->check(CLI::IsMember({"bf16", "f16", "f32"}));
  cmd->add_option("--page-size", a->page_size, "KV page size")->capture_default_str();
  cmd->add_option("--kv-layout", a->kv_layout, "nhd | hnd")->check(CLI::IsMember({"nhd", "hnd"}));
  cmd->add_option("-n,--steps", a->steps, "decode steps after the prefill")->capture_default_str();
  cmd->add_option("--tol", a->tol, "relative L2 tolerance (default: that of the less precise dtype)");
  cmd->add_flag("--no-bos", a->no_bos, "do not add the tokenizer's BOS token");
  cmd->callback([a] {
    std::fflush(stdout);
    const int rc = run(*a);
    std::fflush(stdout);
    if (rc != 0) std::exit(rc);
  });
}

}  // namespace tandem::cli
