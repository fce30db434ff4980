// tandem info: what a model is (architecture, dimensions, tensor types, tokenizer, chat template).
#include <algorithm>
#include <cstdio>

#include "cli/common.h"
#include "core/parallel.h"
#include "cuda/device_query.h"
#include "io/gguf.h"

namespace tandem::cli {
namespace {
struct InfoArgs {
  ModelOptions model = [] {
    ModelOptions m;
    m.runner.check_tensors = true;  // info is where a user asks "is this model sound?"; --no-check-tensors skips
    return m;
  }();
  bool verbose = false;
  bool variants = false;
};

// Every stage with its variants per device, which preset picks each, and the plan these options give.
void print_variants(const InfoArgs& a) {
  const Plan plan = plan_for(a.model.runner, nullptr);
  std::printf("%-26s %-5s %-32s %s\n", "stages", "dev", "variant", "chosen by");
  for (Device d : {Device::CPU, Device::CUDA}) {
    for (const Variant* v : variants_for(d)) {
      std::string by;
      for (const PathPreset& p : path_presets())
        if (std::find(p.variants.begin(), p.variants.end(), v->name) != p.variants.end()) by += " " + p.name;
      if (v->test_only) by += " (test only)";
      const bool in_plan = plan.device == d && plan.by_stage[size_t(v->stages.first)] == v;
      std::printf("%-26s %-5s %-32s%s%s\n", v->stages.str().c_str(), std::string(device_name(d)).c_str(),
                  v->name.c_str(), by.c_str(), in_plan ? "  <- plan" : "");
    }
  }
  std::printf("\n%s", plan.describe().c_str());
}

void run(const InfoArgs& a) {
  if (a.variants) return print_variants(a);
  const auto path = model_path(a.model);
  ModelBundle b = open_model_bundle(path);
  const ModelSource* src = b.source.get();
  const ModelConfig& c = src->config();
  std::printf("source        %s\n", src->source().c_str());
  std::printf("architecture  %s%s\n", c.arch.c_str(), c.hf_class.empty() ? "" : (" (" + c.hf_class + ")").c_str());
  std::printf("layers        %lld\nhidden        %lld\nintermediate  %lld\n", (long long)c.n_layers,
              (long long)c.hidden_size, (long long)c.intermediate_size);
  std::printf("heads         %lld (kv %lld, head_dim %lld)\nvocab         %lld\n", (long long)c.n_heads,
              (long long)c.n_kv_heads, (long long)c.head_dim, (long long)c.vocab_size);
  std::printf("context       %lld\nrope theta    %g%s\n", (long long)c.max_positions, c.rope.theta,
              c.rope.scaling == RopeScaling::Llama3   ? " (llama3 scaling)"
              : c.rope.scaling == RopeScaling::Linear ? " (linear scaling)"
              : !c.rope.freq_factors.empty()          ? " (frequency factors)"
                                                      : "");
  std::printf("sliding win.  %lld\ntied embed.   %s\nqkv bias      %s\nweights       %s\n",
              (long long)c.sliding_window, c.tie_embeddings ? "yes" : "no", c.qkv_bias ? "yes" : "no",
              src->storage_summary().c_str());
  if (b.tokenizer) {
    std::printf("tokenizer     %s, %d tokens, bos %d, eos", b.tokenizer_source.c_str(), b.tokenizer->vocab_size(),
                b.tokenizer->bos_id());
    for (int32_t e : b.tokenizer->eos_ids()) std::printf(" %d", e);
    std::printf("\n");
  } else {
    std::printf("tokenizer     none\n");
  }
  try {
    const ChatTemplate t = chat_template_for(b, a.model.chat_template);
    std::printf("chat template %s%s\n", std::string(t.name()).c_str(),
                b.chat_template_text.empty() ? " (inferred: the model has none)" : "");
  } catch (const Error& e) {
    std::printf("chat template none: %s\n", e.what());
  }
  const int gpus = cuda::device_count();
  std::printf("gpus          %d%s\n", gpus, gpus ? (" (" + cuda::device_name(0) + ")").c_str() : "");
  if (a.verbose && src->gguf()) std::printf("\n%s", src->gguf()->describe(true).c_str());
  if (!a.model.runner.check_tensors) return;
  // What loading would reject (a missing or wrong-shaped weight, a dtype tandem cannot load, NaN/Inf) is an
  // error here too: the summary above is printed first, then the error, and the exit status is non-zero.
  if (a.model.threads > 0) set_num_threads(a.model.threads);
  std::fflush(stdout);
  validate_weights(*src);
  check_weights_finite(*src);
  std::printf("checked       every weight present, shaped as the config says, no NaN/Inf\n");
}
}  // namespace

void register_info(CLI::App& app) {
  auto a = std::make_shared<InfoArgs>();
  CLI::App* cmd = app.add_subcommand("info", "print a model's architecture, dimensions, tokenizer and template");
  add_model_options(cmd, a->model, false);
  cmd->add_option("--chat-template", a->model.chat_template, "chat format override to check");
  cmd->add_flag("-v,--verbose", a->verbose, "also list metadata and tensors (GGUF)");
  cmd->add_flag("--variants", a->variants,
                "list every stage's variants per device, the presets' choices and the plan of --path/--variant");
  cmd->callback([a] { run(*a); });
}

}  // namespace tandem::cli
