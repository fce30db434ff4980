// tandem info: what a model is (architecture, dimensions, tensor types, tokenizer, chat template).
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

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
  bool json = false;
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

const char* rope_note(const ModelConfig& c) {
  return c.rope.scaling == RopeScaling::Llama3   ? "llama3 scaling"
         : c.rope.scaling == RopeScaling::Linear ? "linear scaling"
         : !c.rope.freq_factors.empty()          ? "frequency factors"
                                                 : "";
}

double mib(int64_t bytes) { return double(bytes) / (1 << 20); }

// --json: the same facts as one object on stdout (printed last, after the weight check).
nlohmann::json describe_json(const ModelBundle& b, const std::string& chat, const std::string& chat_error) {
  const ModelSource* src = b.source.get();
  const ModelConfig& c = src->config();
  nlohmann::json j{{"source", src->source()},
                   {"architecture", c.arch},
                   {"hf_class", c.hf_class},
                   {"layers", c.n_layers},
                   {"hidden", c.hidden_size},
                   {"intermediate", c.intermediate_size},
                   {"heads", c.n_heads},
                   {"kv_heads", c.n_kv_heads},
                   {"head_dim", c.head_dim},
                   {"vocab", c.vocab_size},
                   {"context", c.max_positions},
                   {"rope_theta", c.rope.theta},
                   {"rope_scaling", rope_note(c)},
                   {"sliding_window", c.sliding_window},
                   {"tied_embeddings", c.tie_embeddings},
                   {"qkv_bias", c.qkv_bias},
                   {"weights", src->storage_summary()},
                   {"chat_template", chat.empty() ? nlohmann::json() : nlohmann::json(chat)},
                   {"gpus", cuda::device_count()}};
  if (!chat_error.empty()) j["chat_template_error"] = chat_error;
  if (b.tokenizer)
    j["tokenizer"] = {{"source", b.tokenizer_source},
                      {"tokens", b.tokenizer->vocab_size()},
                      {"bos", b.tokenizer->bos_id()},
                      {"eos", b.tokenizer->eos_ids()}};
  else
    j["tokenizer"] = nullptr;
  return j;
}

void run(const InfoArgs& a) {
  if (a.variants) return print_variants(a);
  // A named template that does not exist is an error before anything is read.
  if (!a.model.chat_template.empty()) ChatTemplate::from_name(a.model.chat_template);
  const auto path = model_path(a.model);
  ModelBundle b = open_model_bundle(path);
  const ModelSource* src = b.source.get();
  const ModelConfig& c = src->config();
  std::string chat, chat_error;
  try {
    const ChatTemplate t = chat_template_for(b, a.model.chat_template);
    chat = std::string(t.name()) + (b.chat_template_text.empty() ? " (inferred: the model has none)" : "");
  } catch (const Error& e) {
    chat_error = e.what();
  }
  nlohmann::json j = describe_json(b, chat, chat_error);
  if (!a.json) {
    std::printf("source        %s\n", src->source().c_str());
    std::printf("architecture  %s%s\n", c.arch.c_str(), c.hf_class.empty() ? "" : (" (" + c.hf_class + ")").c_str());
    std::printf("layers        %lld\nhidden        %lld\nintermediate  %lld\n", (long long)c.n_layers,
                (long long)c.hidden_size, (long long)c.intermediate_size);
    std::printf("heads         %lld (kv %lld, head_dim %lld)\nvocab         %lld\n", (long long)c.n_heads,
                (long long)c.n_kv_heads, (long long)c.head_dim, (long long)c.vocab_size);
    const std::string rope = rope_note(c);
    std::printf("context       %lld\nrope theta    %g%s\n", (long long)c.max_positions, c.rope.theta,
                rope.empty() ? "" : (" (" + rope + ")").c_str());
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
    std::printf("chat template %s\n", chat_error.empty() ? chat.c_str() : ("none: " + chat_error).c_str());
    const int gpus = cuda::device_count();
    std::printf("gpus          %d%s\n", gpus, gpus ? (" (" + cuda::device_name(0) + ")").c_str() : "");
    if (a.verbose && src->gguf()) std::printf("\n%s", src->gguf()->describe(true).c_str());
    std::fflush(stdout);
  }
  // Errors below come after the summary (in --json, inside it: "error"), and the exit status is non-zero.
  auto finish = [&](const std::string& error) {
    j["resident_bytes"] = resident_bytes();
    j["peak_resident_bytes"] = peak_resident_bytes();
    if (!error.empty()) j["error"] = error;
    if (a.json) std::printf("%s\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    std::fflush(stdout);
    if (!error.empty()) throw Error(error);
  };
  // A template asked for by name that does not fit the model is an error; the model having none is not.
  if (!a.model.chat_template.empty() && !chat_error.empty())
    finish("--chat-template " + a.model.chat_template + ": " + chat_error);
  j["checked"] = false;
  if (a.model.runner.check_tensors) {
    // What loading would reject: a missing or wrong-shaped weight, a dtype tandem cannot load, NaN/Inf.
    if (a.model.threads > 0) set_num_threads(a.model.threads);
    try {
      validate_weights(*src);
      check_weights_finite(*src);
    } catch (const Error& e) {
      finish(e.what());
    }
    j["checked"] = true;
    if (!a.json) std::printf("checked       every weight present, shaped as the config says, no NaN/Inf\n");
  }
  // Every weight has been read once (mapped or converted) by now: what the process holds after loading it.
  if (!a.json)
    std::printf("memory        %.0f MiB resident, peak %.0f MiB%s\n", mib(resident_bytes()), mib(peak_resident_bytes()),
                a.model.runner.check_tensors ? " (after reading every weight)" : "");
  finish("");
}
}  // namespace

void register_info(CLI::App& app) {
  auto a = std::make_shared<InfoArgs>();
  CLI::App* cmd = app.add_subcommand("info", "print a model's architecture, dimensions, tokenizer and template");
  add_model_options(cmd, a->model, false);
  cmd->add_option("--chat-template", a->model.chat_template, "chat format override to check");
  cmd->add_flag("-v,--verbose", a->verbose, "also list metadata and tensors (GGUF)");
  cmd->add_flag("--json", a->json, "print the facts as one JSON object (after the weight check)");
  cmd->add_flag("--variants", a->variants,
                "list every stage's variants per device, the presets' choices and the plan of --path/--variant");
  cmd->callback([a] { run(*a); });
}

}  // namespace tandem::cli
