// tandem perplexity -m M -f FILE [--ctx N --stride S]: exp(mean NLL) of a text (see runtime/perplexity.h).
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/file.h"
#include "runtime/perplexity.h"

namespace tandem::cli {
namespace {
struct PplArgs {
  ModelOptions model;
  std::string file;
  int64_t ctx = 512, stride = 0, max_tokens = 0;
  bool bos = false, json = false;
};

void run(const PplArgs& a) {
  const std::string text = read_file(a.file);
  Loaded l = load(a.model);
  TD_CHECK(l.bundle.tokenizer.has_value(), "{}: perplexity of a text needs a tokenizer", model_path(a.model).string());
  std::vector<int32_t> ids = l.bundle.tokenizer->encode(text, a.bos, false);
  if (a.max_tokens > 0 && int64_t(ids.size()) > a.max_tokens) ids.resize(size_t(a.max_tokens));
  const int64_t stride = a.stride > 0 ? a.stride : a.ctx;
  std::fprintf(stderr, "%s: %zu tokens, ctx %lld, stride %lld\n", a.file.c_str(), ids.size(), (long long)a.ctx,
               (long long)stride);
  const PerplexityResult r = perplexity(*l.runner, ids, a.ctx, stride, [](int64_t done, int64_t total) {
    std::fprintf(stderr, "\rwindow %lld/%lld", (long long)done, (long long)total);
    if (done == total) std::fprintf(stderr, "\n");
  });
  const double tok_s = double(r.scored + r.windows) / std::max(r.seconds, 1e-9);
  if (a.json) {
    const nlohmann::json j{{"perplexity", r.perplexity}, {"tokens", r.scored},    {"windows", r.windows},
                           {"seconds", r.seconds},       {"tokens_per_second", tok_s}, {"ctx", a.ctx},
                           {"stride", stride},           {"file", a.file},        {"model", model_path(a.model).string()}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("perplexity %.4f over %lld tokens (%lld windows, %.1f s, %.1f tok/s)\n", r.perplexity,
              (long long)r.scored, (long long)r.windows, r.seconds, tok_s);
}
}  // namespace

void register_perplexity(CLI::App& app) {
  auto a = std::make_shared<PplArgs>();
  CLI::App* cmd = app.add_subcommand("perplexity", "perplexity of a text file");
  add_model_options(cmd, a->model, false);
  cmd->add_option("-f,--file", a->file, "text file")->required();
  cmd->add_option("-c,--ctx,--ctx-size", a->ctx, "window length in tokens")->capture_default_str();
  cmd->add_option("--stride", a->stride, "distance between window starts (default: --ctx)");
  cmd->add_option("--max-tokens", a->max_tokens, "score only the first N tokens of the text");
  cmd->add_flag("--bos", a->bos, "add the BOS token at the start of the text");
  cmd->add_flag("--json", a->json, "print the result as one JSON object");
  cmd->callback([a] { run(*a); });
}

}  // namespace tandem::cli
