// tandem diff: two plans (paths and --variant overrides, on any devices) run the same tokens (the prefill, then
// greedy decode steps both fed plan A's choice, so their KV histories stay aligned); every tap both publish is
// compared in execution order and the first divergence is reported with what went into both tensors.
// Exit 0: equal within the tolerance; 1: they diverge; 2: usage error (bad flags, unknown path or variant).
// tandem bisect (below) reuses the same comparison to find which of the bad plan's variants cause a divergence.
#include <algorithm>
#include <cstdio>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>

#include "cli/common.h"
#include "cuda/flashinfer.cuh"
#include "diag/compare.h"
#include "diag/report.h"
#include "diag/trace.h"
#include "diag/taps.h"

namespace tandem::cli {
namespace {

struct DiffArgs {
  std::string model, prompt, prompt_ids, a = "auto", b = "reference", dtype = "bf16", kv_layout = "nhd";
  std::vector<std::string> variant_a, variant_b;
  std::string split_kv_a = "auto", split_kv_b = "auto";  // --split-kv of each plan
  std::vector<std::string> perturb;  // applied to both plans alike
  int64_t page_size = 16;
  int steps = 4;
  double tol = 0;
  bool no_bos = false, kv_verify = false;
  int batch = 1;
  std::string html;
  bool matrix = false;
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
    if (v && stage && *stage == Stage::attention)
      if (const std::string st = runner->variant_state(*v); !st.empty()) out += "; " + st;
    return out;
  }
};

struct Outcome {
  bool diverged = false;
  std::string report;  // the FIRST DIVERGENCE block, or the "equal" line
  int step = 0;        // the step the cells are of: the divergent one, or the last
  std::vector<ReportCell> cells;
};

// Runs both sides on the prompt and `steps` greedy decode steps (both fed side a's choice); compares every common
// tap in execution order. The runners get a fresh sequence 0.
// --kv-verify: sequence 0's whole cache on both sides, layer by layer, position by position, head by head; the
// first (layer, K|V, head, position) whose rel_l2 exceeds tol, or "" when all agree.
std::string verify_kv(Side (&sides)[2], const ModelConfig& c, int step, double tol) {
  const int64_t hd = c.head_dim, heads = c.n_kv_heads, kv_dim = heads * hd;
  for (int l = 0; l < int(c.n_layers); ++l) {
    const HostTensor a = sides[0].runner->cached_kv(0, l), b = sides[1].runner->cached_kv(0, l);
    const int64_t len = b.view().shape[0];
    for (int64_t p = 0; p < len; ++p)
      for (int kv = 0; kv < 2; ++kv)
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t off = p * 2 * kv_dim + kv * kv_dim + h * hd;
          double num = 0, den = 0;
          bool nonfinite = false;
          for (int64_t d = 0; d < hd; ++d) {
            const double x = a.f32()[off + d], y = b.f32()[off + d];
            if (!std::isfinite(x)) nonfinite = true;
            num += (x - y) * (x - y);
            den += y * y;
          }
          const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
          if (nonfinite || rel > tol)
            return fmt::format("\nKV VERIFY FAILED after step {}: layer {} {} head {} position {} (of {} cached): "
                               "rel_l2 {:.3e}{}; a {:.6g} b {:.6g} at dim 0\n  {}\n  {}\n",
                               step, l, kv ? "V" : "K", h, p, len, rel, nonfinite ? " (non-finite)" : "",
                               a.f32()[off], b.f32()[off], sides[0].describe_stage(tap_name(Stage::kv_write, l)),
                               sides[1].describe_stage(tap_name(Stage::kv_write, l)));
        }
  }
  return "";
}

// batch > 1: sequences 1.. run beside sequence 0 in every step, sequence b with the prompt's first
// max(1, len - b) tokens (other lengths, other pages), each fed its own greedy choice (side a's).
// logits_only: no taps are recorded (so that plan a may replay CUDA graphs, which taps turn off); only the logits
// of every step are compared, as the tap "logits".
Outcome compare_runs(Side (&sides)[2], const ModelConfig& c, const std::vector<int32_t>& ids, int steps, double tol,
                     bool kv_verify = false, int batch = 1, bool logits_only = false) {
  const int64_t capacity = int64_t(ids.size()) + steps + 1;
  std::vector<int64_t> lens(static_cast<size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    lens[size_t(b)] = std::max<int64_t>(1, int64_t(ids.size()) - b);
    for (Side& s : sides) s.runner->create_sequence(b, capacity);
  }
  const std::vector<std::string> order = execution_order(c);
  Step step;
  for (int b = 0; b < batch; ++b)
    for (int64_t i = 0; i < lens[size_t(b)]; ++i) step.add(ids[size_t(i)], b, int32_t(i), i + 1 == lens[size_t(b)]);
  int compared = 0;
  std::vector<ReportCell> last_cells;
  double worst_ok = 0;
  std::string worst_ok_tap;
  auto done = [&](Outcome o) {
    for (Side& s : sides)
      for (int b = 0; b < batch; ++b) s.runner->release_sequence(b);
    return o;
  };
  for (int s = 0; s <= steps; ++s) {
    TapRecorder rec[2];
    StepOutput out[2];
    for (int i = 0; i < 2; ++i) out[i] = sides[i].runner->forward(step, logits_only ? nullptr : &rec[i]);
    if (logits_only)
      for (int i = 0; i < 2; ++i) rec[i].publish(Stage::logits, -1, out[i].logits);
    std::string prev, r;
    std::vector<ReportCell> cells;
    for (const std::string& name : order) {
      const HostTensor *ta = rec[0].find(name), *tb = rec[1].find(name);
      if (!ta || !tb) continue;  // inside a multi-stage variant of one side
      const bool same_shape = ta->view().numel() == tb->view().numel();
      const Comparison cmp = same_shape ? compare(*ta, *tb) : Comparison{};
      const bool bad = !same_shape || cmp.rel_l2 > tol || cmp.nonfinite_a > cmp.nonfinite_b;
      cells.push_back({name, same_shape ? cmp.rel_l2 : INFINITY, tap_stats(name, s, ta->view(), DType::F32).absmax,
                       tap_stats(name, s, tb->view(), DType::F32).absmax, bad});
      if (!r.empty()) continue;  // after the first divergence: only the report's cells
      ++compared;
      if (!bad) {
        if (cmp.rel_l2 > worst_ok) worst_ok = cmp.rel_l2, worst_ok_tap = fmt::format("step {} {}", s, name);
        prev = fmt::format("{} (rel_l2 {:.2e})", name, cmp.rel_l2);
        continue;
      }
      r = fmt::format("\nFIRST DIVERGENCE: step {} ({}{}), tap {}\n", s, s == 0 ? "prefill" : "decode",
                                  batch > 1 ? fmt::format(", batch of {}", batch) : std::string(), name);
      if (!same_shape) {
        r += fmt::format("  shapes differ: a {}, b {}\n", ta->view().describe(), tb->view().describe());
      } else {
        const int64_t cols = ta->view().ndim > 1 ? ta->view().shape[1] : 1;
        r += fmt::format("  {}; non-finite a {}, b {}\n", cmp.summary(), cmp.nonfinite_a, cmp.nonfinite_b);
        if (cmp.max_abs_index >= 0) {
          const int64_t row = cmp.max_abs_index / cols, col = cmp.max_abs_index % cols;
          const size_t at = size_t(std::min<int64_t>(row, step.size() - 1));
          r += fmt::format("  largest error at row {} (sequence {}, position {}), column {}: a {:.6g}, b {:.6g}\n", row,
                           step.seq_ids[at], step.positions[at], col,
                           ta->f32()[cmp.max_abs_index], tb->f32()[cmp.max_abs_index]);
        }
      }
      r += fmt::format("  tap tensor: a {}, b {} (taps are fp32 copies, rows = the step's tokens)\n",
                       ta->view().describe(), tb->view().describe());
      r += fmt::format("  {}\n  {}\n", sides[0].describe_stage(name), sides[1].describe_stage(name));
      r += fmt::format("  last tap that agreed: {}\n", prev.empty() ? "none (this is the first compared)" : prev);
    }
    if (!r.empty()) return done({true, r, s, std::move(cells)});
    if (kv_verify) {
      const std::string bad = verify_kv(sides, c, s, tol);
      if (!bad.empty()) return done({true, bad, s, std::move(cells)});
    }
    last_cells = std::move(cells);
    const int64_t V = c.vocab_size;
    step = Step{};
    for (int b = 0; b < batch; ++b) {  // logits rows: one per sequence, in step order
      const float* row = out[0].logits.f32() + int64_t(b) * V;
      step.add(int32_t(std::max_element(row, row + V) - row), b, int32_t(lens[size_t(b)] + s), true);
    }
  }
  return done({false,
               fmt::format("equal: {} taps over {} steps within {:.1e} (largest rel_l2 {:.2e} at {})\n", compared,
                           steps + 1, tol, worst_ok, worst_ok_tap.empty() ? "-" : worst_ok_tap),
               steps, std::move(last_cells)});
}

int run_matrix(const DiffArgs& a, const ModelBundle& bundle, const std::vector<int32_t>& ids);

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
      o.split_kv = i == 0 ? a.split_kv_a : a.split_kv_b;
      o.dtype = a.dtype;
      o.page_size = a.page_size;
      o.kv_layout = a.kv_layout;
      sides[i].label = i == 0 ? "a" : "b";
      sides[i].runner = make_runner(bundle, o);
      for (const std::string& n : sides[i].runner->plan().notices) std::fprintf(stderr, "note (%s): %s\n", i ? "b" : "a", n.c_str());
      std::vector<Perturbation> ps;
      for (const std::string& spec : a.perturb) ps.push_back(parse_perturbation(spec, bundle.config()));
      sides[i].runner->set_perturbations(ps);
    }
    TD_CHECK(a.perturb.empty() || !a.matrix, "diff: --perturb is not taken with --matrix");
    TD_CHECK((a.split_kv_a == "auto" && a.split_kv_b == "auto") || !a.matrix,
             "diff: --split-kv-a/--split-kv-b are not taken with --matrix (its cells run plan a's FlashInfer with "
             "split-KV off and on)");
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
  if (a.matrix) return run_matrix(a, bundle, ids);
  const ModelConfig& c = bundle.config();
  const DType worst = std::max({sides[0].runner->host().dtype(), sides[1].runner->host().dtype()},
                               [](DType x, DType y) { return rel_tolerance(x) < rel_tolerance(y); });
  const double tol = a.tol > 0 ? a.tol : rel_tolerance(worst);
  std::printf("diff: a = %s, b = %s (reference side); tolerance rel_l2 <= %.1e (%s)\n",
              sides[0].runner->plan().path.c_str(), sides[1].runner->plan().path.c_str(), tol,
              a.tol > 0 ? "--tol" : dtype_name(worst).data());
  const Outcome o = compare_runs(sides, c, ids, a.steps, tol, a.kv_verify, a.batch);
  std::fputs(o.report.c_str(), stdout);
  if (!a.html.empty()) {
    DiffReport rep;
    rep.title = "tandem diff: " + model_path(base).filename().string();
    auto label = [](const Side& s) {
      std::string l = s.runner->plan().path + " on " + std::string(device_name(s.runner->plan().device));
      for (const std::string& v : s.runner->plan().overridden) l += ", " + v;
      return l;
    };
    rep.label_a = label(sides[0]);
    rep.label_b = label(sides[1]);
    rep.text = o.report;
    rep.n_layers = int(c.n_layers);
    rep.step = o.step;
    rep.tol = tol;
    rep.cells = o.cells;
    std::ofstream f(a.html);
    TD_CHECK(f.good(), "--html {}: cannot write", a.html);
    f << diff_report_html(rep);
    std::fprintf(stderr, "report: %s\n", a.html.c_str());
  }
  return o.diverged ? 1 : 0;
}

// --matrix: plan a against plan b in every cell of page size {1, 16} x KV layout {NHD, HND} x batch sizes, and
// when plan a runs on the GPU also x dtype {bf16, f16} x CUDA graphs {off, on} x plan a's attention setting.
// Batch sizes: {1, 3} on the CPU; {1, 3, 9} on the GPU (9 is past attention.fused's split-KV decode limit of 8
// sequences, so its decode steps go to FlashInfer).
// Attention setting: the decode kernel and FlashInfer's split-KV (--split-kv), two axes folded into one so that the
// grid stays at 144 cells instead of 192:
//   - decode kernel: when plan a's attention is attention.fused or attention.flashinfer (not set by --variant-a)
//     and both can run the model in every dtype of the grid, cells run with attention.fused (the split-KV decode
//     kernel for decode steps of few short sequences, FlashInfer for the rest) and with attention.flashinfer
//     (FlashInfer for every step); otherwise the axis is not varied and a line says why.
//   - split-KV: when plan a's attention runs FlashInfer (attention.fused or attention.flashinfer, also when set by
//     --variant-a), FlashInfer's cells run with split-KV off (never split) and on (forced: every sequence longer
//     than a small chunk, 4 tokens at page size 1 and one page at 16, is split and merged); otherwise a line says
//     why it is not varied. With both axes the settings are attention.fused with split-KV auto (what users run) and
//     attention.flashinfer with split-KV off and with split-KV on (FlashInfer on every step, so the split-KV
//     choice reaches the decode steps too): 3 settings, 144 cells. With the split axis alone: 2 settings, 96 cells.
// Plan b always runs as given (split-KV auto). On the CPU the GPU-only axes are skipped with a line saying so. Cells
// with graphs on compare the logits of every step only (taps keep a step off the graph); the others compare every
// common tap. One line per cell (the varied axes as columns): pass, or the step and the first divergent tap. Exit 1
// when any cell fails.
int run_matrix(const DiffArgs& a, const ModelBundle& bundle, const std::vector<int32_t>& ids) {
  const ModelConfig& c = bundle.config();
  RunnerOptions probe;
  probe.path = a.a;
  probe.variants = a.variant_a;  // dtype: bf16, the grid's first on the GPU
  const Plan plan_a = plan_for(probe, &c);
  const bool gpu = plan_a.device == Device::CUDA;
  const std::vector<std::string> dtypes = gpu ? std::vector<std::string>{"bf16", "f16"} : std::vector<std::string>{"f32"};
  const std::vector<bool> graphs = gpu ? std::vector<bool>{false, true} : std::vector<bool>{false};
  const std::vector<int> batches = gpu ? std::vector<int>{1, 3, 9} : std::vector<int>{1, 3};
  bool decode_axis = false, split_axis = false;
  if (!gpu) {
    std::printf("plan a runs on the %s: the GPU-only axes (dtype bf16/f16, CUDA graphs off/on, decode kernel "
                "fused/flashinfer, split-KV off/on, batch 9) are skipped\n",
                std::string(device_name(plan_a.device)).c_str());
  } else {
    const Variant* att = plan_a.by_stage[size_t(Stage::attention)];
    const bool overridden =
        std::find(plan_a.overridden.begin(), plan_a.overridden.end(), att->name) != plan_a.overridden.end();
    const bool flashinfer = att->name == "attention.fused" || att->name == "attention.flashinfer";
    std::string why;
    if (overridden) {
      why = fmt::format("--variant-a sets attention to {}", att->name);
    } else if (!flashinfer) {
      why = fmt::format("plan a's attention is {}, which chooses no decode kernel", att->name);
      for (const std::string& n : plan_a.notices)
        if (n.find("attention.") != std::string::npos) why += " (" + n + ")";
    } else {
      for (const std::string& dt : dtypes)
        for (const char* k : {"attention.fused", "attention.flashinfer"}) {
          RunnerOptions o = probe;
          o.dtype = dt;
          o.variants.push_back(std::string("attention=") + k);
          try {
            (void)plan_for(o, &c);
          } catch (const Error& e) {
            if (why.empty()) why = fmt::format("{} in {}: {}", k, dt, e.what());
          }
        }
    }
    decode_axis = why.empty();
    if (!decode_axis) std::printf("decode kernel axis not varied: %s\n", why.c_str());
    split_axis = flashinfer;
    if (!split_axis)
      std::printf("split-KV axis not varied: plan a's attention is %s, which does not run FlashInfer\n",
                  att->name.c_str());
  }
  struct Setting {
    std::string decode;  // "": plan a's attention as it is; else attention.<decode>
    std::string split;   // --split-kv of plan a
  };
  std::vector<Setting> settings;
  if (decode_axis && split_axis) settings = {{"fused", "auto"}, {"flashinfer", "off"}, {"flashinfer", "on"}};
  else if (decode_axis) settings = {{"fused", "auto"}, {"flashinfer", "auto"}};
  else if (split_axis) settings = {{"", "off"}, {"", "on"}};
  else settings = {{"", "auto"}};
  if (split_axis)
    std::printf("split-KV axis: %s with split-KV off and on (on: every sequence longer than %lld tokens at page "
                "size 1, one page at 16, split and merged)\n",
                decode_axis ? "attention.flashinfer cells (attention.fused ones: auto)" : "every cell",
                (long long)cuda::kForcedSplitChunkTokens);
  std::printf("diff --matrix: a = %s, b = %s; %zu cells\n", a.a.c_str(), a.b.c_str(),
              size_t(2 * 2) * batches.size() * dtypes.size() * graphs.size() * settings.size());
  std::printf("%-6s %-5s %-4s %-5s %-6s  %s%s%s\n", "page", "kv", "batch", "dtype", "graphs",
              decode_axis ? "decode      " : "", split_axis ? "split-kv  " : "", "result");
  int failed = 0, cells = 0;
  for (const std::string& dt : dtypes)
    for (bool g : graphs)
      for (const Setting& set : settings)
        for (int64_t page : {int64_t(1), int64_t(16)})
          for (const char* layout : {"nhd", "hnd"})
            for (int batch : batches) {
              Side sides[2];
              for (int i = 0; i < 2; ++i) {
                RunnerOptions o;
                o.path = i == 0 ? a.a : a.b;
                o.variants = i == 0 ? a.variant_a : a.variant_b;
                if (i == 0 && !set.decode.empty()) o.variants.push_back("attention=attention." + set.decode);
                if (i == 0) o.split_kv = set.split;
                o.dtype = dt;
                o.page_size = page;
                o.kv_layout = layout;
                o.cuda_graphs = g;
                sides[i].label = i == 0 ? "a" : "b";
                sides[i].runner = make_runner(bundle, o);
              }
              const DType worst = std::max({sides[0].runner->host().dtype(), sides[1].runner->host().dtype()},
                                           [](DType x, DType y) { return rel_tolerance(x) < rel_tolerance(y); });
              const double tol = a.tol > 0 ? a.tol : rel_tolerance(worst);
              const Outcome o = compare_runs(sides, c, ids, a.steps, tol, false, batch, g);
              std::string result = "pass";
              if (o.diverged) {
                ++failed;
                const auto bad =
                    std::find_if(o.cells.begin(), o.cells.end(), [](const ReportCell& x) { return x.bad; });
                result = fmt::format("FAIL at step {}: {} (rel_l2 {:.2e} > {:.1e})", o.step,
                                     bad == o.cells.end() ? std::string("?") : bad->tap,
                                     bad == o.cells.end() ? 0.0 : bad->rel_l2, tol);
              }
              if (g)
                result += fmt::format(" (logits only; {} steps from graphs)", sides[0].runner->host().graph_replays());
              std::printf("%-6lld %-5s %-4d  %-5s %-6s  %s%s%s\n", (long long)page, layout, batch, dt.c_str(),
                          g ? "on" : "off", decode_axis ? fmt::format("{:<10}  ", set.decode).c_str() : "",
                          split_axis ? fmt::format("{:<8}  ", set.split).c_str() : "", result.c_str());
              ++cells;
            }
  std::printf("%d of %d cells pass\n", cells - failed, cells);
  return failed ? 1 : 0;
}

// ------------------------------------------------------------------------------------------------------ bisect

struct BisectArgs {
  std::string model, prompt, prompt_ids, good = "standard", bad = "fused", dtype = "bf16", kv_layout = "nhd";
  std::string split_kv = "auto";  // every run alike
  std::vector<std::string> variant_good, variant_bad;
  std::vector<std::string> perturb;  // applied to every run alike
  int64_t page_size = 16;
  int steps = 2, batch = 1;
  double tol = 0;
};

// The stages where the plans differ, grouped into units that can be swapped alone: a unit covers whole segments
// of both plans, and a variant that needs another (Variant::needs) shares its unit.
std::vector<std::vector<int>> swap_units(const Plan& good, const Plan& bad) {
  std::vector<int> unit_of(kNumStages, -1);
  int n = 0;
  for (int s = 0; s < kNumStages; ++s) {
    if (good.by_stage[size_t(s)] == bad.by_stage[size_t(s)] || unit_of[size_t(s)] >= 0) continue;
    int end = s;
    for (int k = s; k <= end; ++k)
      end = std::max({end, int(good.by_stage[size_t(k)]->stages.last), int(bad.by_stage[size_t(k)]->stages.last)});
    for (int k = s; k <= end; ++k) unit_of[size_t(k)] = n;
    ++n;
  }
  // Merge units joined by `needs`.
  for (bool changed = true; changed;) {
    changed = false;
    for (int s = 0; s < kNumStages; ++s) {
      if (unit_of[size_t(s)] < 0) continue;
      for (const std::string& need : bad.by_stage[size_t(s)]->needs)
        for (int k = 0; k < kNumStages; ++k)
          if (bad.by_stage[size_t(k)]->name == need && unit_of[size_t(k)] >= 0 && unit_of[size_t(k)] != unit_of[size_t(s)]) {
            const int from = unit_of[size_t(k)], to = unit_of[size_t(s)];
            for (int& u : unit_of)
              if (u == from) u = to;
            changed = true;
          }
    }
  }
  std::map<int, std::vector<int>> by_unit;
  for (int s = 0; s < kNumStages; ++s)
    if (unit_of[size_t(s)] >= 0) by_unit[unit_of[size_t(s)]].push_back(s);
  std::vector<std::vector<int>> out;
  for (auto& [u, stages] : by_unit) out.push_back(stages);
  return out;
}

// --variant overrides on the good path that give the good plan with the chosen units taken from the bad plan.
std::vector<std::string> overrides_for(const Plan& good, const Plan& bad, const std::vector<std::vector<int>>& units,
                                       const std::vector<int>& chosen) {
  std::vector<bool> from_bad(kNumStages, false);
  for (int u : chosen)
    for (int s : units[size_t(u)]) from_bad[size_t(s)] = true;
  std::vector<std::string> out;
  for (int s = 0; s < kNumStages; ++s) {
    const Variant* v = from_bad[size_t(s)] ? bad.by_stage[size_t(s)] : good.by_stage[size_t(s)];
    if (int(v->stages.first) != s) continue;
    const bool overridden = std::find(good.overridden.begin(), good.overridden.end(), v->name) != good.overridden.end();
    if (from_bad[size_t(s)] || overridden) out.push_back(std::string(stage_name(Stage(s))) + "=" + v->name);
  }
  return out;
}

std::string unit_names(const Plan& bad, const std::vector<std::vector<int>>& units, const std::vector<int>& chosen) {
  std::string out;
  for (int u : chosen)
    for (int s : units[size_t(u)])
      if (int(bad.by_stage[size_t(s)]->stages.first) == s) out += (out.empty() ? "" : ", ") + bad.by_stage[size_t(s)]->name;
  return out;
}

int run_bisect(const BisectArgs& a) {
  ModelOptions base;
  base.model = a.model;
  ModelBundle bundle;
  std::vector<int32_t> ids;
  RunnerOptions good_o, bad_o;
  Plan good, bad;
  try {
    TD_CHECK(a.prompt.empty() != a.prompt_ids.empty(), "bisect: give -p TEXT or --prompt-ids 1,2,3 (one of them)");
    bundle = open_model_bundle(model_path(base));
    for (RunnerOptions* o : {&good_o, &bad_o}) {
      o->split_kv = a.split_kv;
      o->dtype = a.dtype;
      o->page_size = a.page_size;
      o->kv_layout = a.kv_layout;
    }
    good_o.path = a.good;
    good_o.variants = a.variant_good;
    bad_o.path = a.bad;
    bad_o.variants = a.variant_bad;
    good = plan_for(good_o, &bundle.config());
    bad = plan_for(bad_o, &bundle.config());
    TD_CHECK(good.device == bad.device, "bisect: --good runs on {}, --bad on {}; swapping variants needs one device "
             "(tandem diff compares devices)", device_name(good.device), device_name(bad.device));
    TD_CHECK(good.kv_layout == bad.kv_layout, "bisect: the plans use different KV layouts");
    if (a.prompt.empty()) {
      ids = parse_token_ids(a.prompt_ids);
    } else {
      TD_CHECK(bundle.tokenizer.has_value(), "-p TEXT needs a tokenizer; pass --prompt-ids");
      ids = bundle.tokenizer->encode(a.prompt, true, true);
    }
    for (int32_t t : ids)
      TD_CHECK(t >= 0 && t < bundle.config().vocab_size, "--prompt-ids: id {} outside the vocabulary", t);
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  const auto units = swap_units(good, bad);
  std::printf("bisect: good %s, bad %s; %zu swappable unit(s) differ:\n", good.path.c_str(), bad.path.c_str(),
              units.size());
  for (size_t u = 0; u < units.size(); ++u) std::printf("  [%zu] %s\n", u, unit_names(bad, units, {int(u)}).c_str());
  if (units.empty()) {
    std::printf("the plans are the same variant for variant: nothing to bisect\n");
    return 0;
  }
  std::vector<Perturbation> perturbations;
  try {
    for (const std::string& spec : a.perturb) perturbations.push_back(parse_perturbation(spec, bundle.config()));
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  Side sides[2];
  sides[1].label = "good";
  good_o.path = good.path;
  sides[1].runner = make_runner(bundle, good_o);
  sides[1].runner->set_perturbations(perturbations);
  const DType dt = sides[1].runner->host().dtype();
  const double tol = a.tol > 0 ? a.tol : rel_tolerance(dt);
  int trials = 0;
  Outcome last;
  auto diverges = [&](const std::vector<int>& chosen) {
    RunnerOptions o = good_o;
    o.variants = overrides_for(good, bad, units, chosen);
    sides[0].label = "candidate";
    sides[0].runner = make_runner(bundle, o);
    sides[0].runner->set_perturbations(perturbations);
    const Outcome out = compare_runs(sides, bundle.config(), ids, a.steps, tol, false, a.batch);
    std::printf("  trial %d: good + {%s}: %s\n", ++trials, unit_names(bad, units, chosen).c_str(),
                out.diverged ? "diverges" : "equal");
    if (out.diverged) last = out;
    return out.diverged;
  };
  std::vector<int> set(units.size());
  for (size_t u = 0; u < units.size(); ++u) set[u] = int(u);
  if (!diverges(set)) {
    std::printf("good + every unit of bad agrees with good within %.1e: no divergence to bisect\n", tol);
    return 0;
  }
  // Halving while one half alone reproduces it, then dropping units one at a time.
  while (set.size() > 1) {
    const std::vector<int> lo(set.begin(), set.begin() + long(set.size() / 2)), hi(set.begin() + long(set.size() / 2), set.end());
    if (diverges(lo)) set = lo;
    else if (diverges(hi)) set = hi;
    else break;
  }
  for (size_t i = 0; i < set.size() && set.size() > 1;) {
    std::vector<int> without = set;
    without.erase(without.begin() + long(i));
    if (diverges(without)) set = without;
    else ++i;
  }
  diverges(set);  // the report of the final set
  std::printf("\nCULPRIT: %s (the smallest set of the bad plan's variants that alone reproduces the divergence; "
              "%d trials)\n%s", unit_names(bad, units, set).c_str(), trials, last.report.c_str());
  return 1;
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
  cmd->add_option("--split-kv-a", a->split_kv_a, "plan A's FlashInfer split-KV: auto | off | on (as --split-kv)")
      ->check(CLI::IsMember({"auto", "off", "on"}))
      ->capture_default_str();
  cmd->add_option("--split-kv-b", a->split_kv_b, "plan B's FlashInfer split-KV: auto | off | on")
      ->check(CLI::IsMember({"auto", "off", "on"}))
      ->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "GPU activations: bf16 | f16 | f32")->check(CLI::IsMember({"bf16", "f16", "f32"}));
  cmd->add_option("--page-size", a->page_size, "KV page size")->capture_default_str();
  cmd->add_option("--kv-layout", a->kv_layout, "nhd | hnd")->check(CLI::IsMember({"nhd", "hnd"}));
  cmd->add_option("-n,--steps", a->steps, "decode steps after the prefill")->capture_default_str();
  cmd->add_option("--tol", a->tol, "relative L2 tolerance (default: that of the less precise dtype)");
  cmd->add_option("--perturb", a->perturb,
                  "TAP:PART:scale=F on both plans alike (as trace --perturb; e.g. L1.qkv:k:scale=1000 to give a "
                  "small model Qwen2-sized keys)");
  cmd->add_flag("--no-bos", a->no_bos, "do not add the tokenizer's BOS token");
  cmd->add_option("--html", a->html, "also write a self-contained HTML report (absmax per layer, layer x stage "
                  "heat map, the report, the taps)");
  cmd->add_option("--batch", a->batch, "sequences per step (the others: shorter copies of the prompt)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd->add_flag("--matrix", a->matrix,
                "run the comparison over page sizes {1,16} x NHD/HND x batch {1,3} (GPU plan a: batch {1,3,9} x bf16/f16 "
                "x CUDA graphs off/on x decode kernel attention.fused/flashinfer where plan a chooses one x FlashInfer "
                "split-KV off/on where plan a runs FlashInfer) and print a pass/fail grid with the first divergent "
                "tap per cell");
  cmd->add_flag("--kv-verify", a->kv_verify,
                "after every step compare sequence 0's whole K/V cache (through each side's page table) and report "
                "the first wrong layer, head and position");
  cmd->callback([a] {
    std::fflush(stdout);
    const int rc = run(*a);
    std::fflush(stdout);
    if (rc != 0) std::exit(rc);
  });
}

void register_bisect(CLI::App& app) {
  auto a = std::make_shared<BisectArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bisect", "swap variants between a good and a bad plan and name the smallest set that reproduces the divergence");
  cmd->add_option("-m,--model", a->model, "model (default: the default model)");
  cmd->add_option("-p,--prompt", a->prompt, "prompt text");
  cmd->add_option("--prompt-ids", a->prompt_ids, "prompt as comma-separated token ids");
  cmd->add_option("--good", a->good, "the trusted path")->capture_default_str();
  cmd->add_option("--bad", a->bad, "the path that diverges")->capture_default_str();
  cmd->add_option("--variant-good", a->variant_good, "STAGE=NAME override for the good plan (repeatable)");
  cmd->add_option("--variant-bad", a->variant_bad, "STAGE=NAME override for the bad plan (repeatable)");
  cmd->add_option("--split-kv", a->split_kv, "FlashInfer split-KV of every run: auto | off | on")
      ->check(CLI::IsMember({"auto", "off", "on"}))
      ->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "GPU activations")->check(CLI::IsMember({"bf16", "f16", "f32"}));
  cmd->add_option("--page-size", a->page_size, "KV page size")->capture_default_str();
  cmd->add_option("--kv-layout", a->kv_layout, "nhd | hnd")->check(CLI::IsMember({"nhd", "hnd"}));
  cmd->add_option("-n,--steps", a->steps, "decode steps per trial")->capture_default_str();
  cmd->add_option("--batch", a->batch, "sequences per step, as in diff --batch")->capture_default_str()->check(CLI::Range(1, 64));
  cmd->add_option("--tol", a->tol, "relative L2 tolerance (default: the dtype's)");
  cmd->add_option("--perturb", a->perturb, "TAP:PART:scale=F on every run alike, as diff --perturb");
  cmd->callback([a] {
    const int rc = run_bisect(*a);
    std::fflush(stdout);
    if (rc != 0) std::exit(rc);
  });
}

}  // namespace tandem::cli
