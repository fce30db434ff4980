#include "runtime/model_bundle.h"

#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/file.h"
#include "core/checks.h"
#include "exec/split_kv.h"
#include "io/gguf.h"
#include "tokenizer/gguf_vocab.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;
constexpr const char* kDefaultModel = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

// A side JSON file (tokenizer_config.json), read through read_file (regular files only, size cap) and
// depth-checked before nlohmann's recursive parse sees it.
nlohmann::json read_side_json(const fs::path& p) {
  const std::string text = read_file(p);
  check_json_depth(text, p.string());
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", p.string(), excerpt(e.what(), 300));
  }
}

// HF keeps the template in tokenizer_config.json ("chat_template": string, or a list of {name, template})
// or, in newer folders, in chat_template.jinja.
std::string hf_chat_template(const fs::path& dir) {
  if (fs::exists(dir / "chat_template.jinja")) return read_file(dir / "chat_template.jinja");
  const fs::path cfg = dir / "tokenizer_config.json";
  if (!fs::exists(cfg)) return {};
  const nlohmann::json j = read_side_json(cfg);
  auto it = j.find("chat_template");
  if (it == j.end() || it->is_null()) return {};
  if (it->is_string()) return it->get<std::string>();
  TD_CHECK(it->is_array(), "{}: chat_template must be a string or a list of {{name, template}}", cfg.string());
  for (const auto& t : *it)
    if (t.is_object() && t.value("name", "") == "default" && t.contains("template") && t["template"].is_string())
      return t["template"].get<std::string>();
  return {};
}

void attach_tokenizer(ModelBundle& b, const ModelSource& src, const fs::path& path) {
  if (const GgufFile* g = src.gguf()) {
    if (!g->has("tokenizer.ggml.model")) return;
    b.tokenizer = Tokenizer::from_spec(tokenizer_spec_from_gguf(*g));
    b.tokenizer_source = path.string() + " (GGUF vocabulary)";
    b.chat_template_text = g->get_string("tokenizer.chat_template").value_or("");
    return;
  }
  const fs::path dir = fs::is_directory(path) ? path : path.parent_path();
  if (fs::exists(dir / "tokenizer.json")) {
    b.tokenizer = Tokenizer::from_hf_json(dir / "tokenizer.json");
    b.tokenizer_source = (dir / "tokenizer.json").string();
    apply_hf_tokenizer_config(*b.tokenizer, dir, src.config().eos_token_ids);
  }
  b.chat_template_text = hf_chat_template(dir);
}
}  // namespace

void apply_hf_tokenizer_config(Tokenizer& tok, const fs::path& dir, const std::vector<int32_t>& config_eos_ids) {
  std::vector<int32_t> eos;
  const fs::path cfg = dir / "tokenizer_config.json";
  if (fs::exists(cfg)) {
    const nlohmann::json j = read_side_json(cfg);
    auto token_id = [&](const char* key) -> std::optional<int32_t> {
      auto it = j.find(key);
      if (it == j.end() || it->is_null()) return std::nullopt;
      const nlohmann::json& v = it->is_object() ? it->value("content", nlohmann::json()) : *it;
      TD_CHECK(v.is_string(), "{}: '{}' must be a token string or {{\"content\": ...}}, got {}", cfg.string(), key,
               excerpt(it->dump()));
      const auto id = tok.piece_to_id(v.get<std::string>());
      TD_CHECK(id.has_value(), "{}: {} '{}' is not in the vocabulary", cfg.string(), key,
               excerpt(v.get_ref<const std::string&>()));
      return id;
    };
    const auto add_bos_it = j.find("add_bos_token");
    const bool add_bos = add_bos_it != j.end() && add_bos_it->is_boolean() ? add_bos_it->get<bool>() : tok.add_bos();
    if (auto bos = token_id("bos_token")) tok.set_bos(*bos, add_bos);
    else if (add_bos_it != j.end()) tok.set_bos(tok.bos_id(), add_bos);
    if (auto e = token_id("eos_token")) eos.push_back(*e);
  }
  for (int32_t e : config_eos_ids)
    if (std::find(eos.begin(), eos.end(), e) == eos.end()) eos.push_back(e);
  if (!eos.empty()) tok.set_eos_ids(eos);
}

ModelBundle open_model_bundle(const fs::path& path) {
  ModelBundle b;
  b.source = open_model_source(path);
  attach_tokenizer(b, *b.source, path);
  if (b.tokenizer) {
    TD_CHECK(b.tokenizer->vocab_size() <= b.config().vocab_size,
             "{}: the tokenizer has {} tokens but the model's vocabulary is {}", b.tokenizer_source,
             b.tokenizer->vocab_size(), b.config().vocab_size);
  }
  return b;
}

std::vector<CheckedTensor> model_weight_views(const ModelSource& src) {
  std::vector<std::string> names = {"embed", "final_norm", "lm_head"};
  static constexpr const char* kLayerRoles[] = {"attn_norm", "wq", "wk",       "wv",     "bq",   "bk",    "bv",
                                                "wo",        "bo", "mlp_norm", "w_gate", "w_up", "w_down"};
  for (int64_t i = 0; i < src.config().n_layers; ++i)
    for (const char* role : kLayerRoles) names.push_back(fmt::format("L{}.{}", i, role));
  std::vector<CheckedTensor> out;
  std::vector<const void*> seen;  // a tied head is the embedding itself
  for (const std::string& n : names) {
    auto t = src.find(n);  // absent: an optional bias, or a tied head; loading reports truly missing ones
    if (!t || std::find(seen.begin(), seen.end(), t->view.data) != seen.end()) continue;
    seen.push_back(t->view.data);
    out.push_back({t->file_name, t->file, t->view});
  }
  return out;
}

void check_weights_finite(const ModelSource& src) {
  const std::vector<TensorFinding> bad = check_tensors(model_weight_views(src));
  if (bad.empty()) return;
  fail("{}: {} weight tensor{} hold{} NaN or Inf values (--check-tensors):{}", src.source(), bad.size(),
       bad.size() == 1 ? "" : "s", bad.size() == 1 ? "s" : "", describe_findings(bad));
}

void validate_weights(const ModelSource& src) {
  load_weights(src, [](HostTensor&&) { return Tensor(); });  // the fp32 copy is dropped at once
}

namespace {
bool gpu_available() {
  const DeviceFamily* f = find_device_family(Device::CUDA);
  return f && f->available();
}

struct Resolved {
  const PathPreset* preset;
  DType dtype;
  KvLayout layout;
  SplitKv split_kv;
};

Resolved resolve(const RunnerOptions& o) {
  TD_CHECK(o.device == "auto" || o.device == "cpu" || o.device == "cuda", "--device {}: expected auto, cpu or cuda",
           o.device);
  const std::string path = resolve_path(o);
  const PathPreset* preset = find_path(path);
  if (!preset) {
    std::string known;
    for (const PathPreset& p : path_presets()) known += ", " + p.name;
    fail("--path {}: expected auto{}", o.path, known);
  }
  const std::string dev(device_name(preset->device));
  TD_CHECK(o.device == "auto" || o.device == dev, "--path {} runs on {}, not with --device {}", path, dev == "cuda" ? "CUDA" : "the CPU", o.device);
  TD_CHECK(preset->device != Device::CUDA || gpu_available(), "--path {}: no CUDA GPU found", path);
  const auto dtype = dtype_from_name(o.dtype);
  TD_CHECK(dtype && is_float_dtype(*dtype), "--dtype {}: expected bf16, f16 or f32", o.dtype);
  const auto layout = kv_layout_from_name(o.kv_layout);
  TD_CHECK(layout.has_value(), "--kv-layout {}: expected nhd or hnd", o.kv_layout);
  const auto split = split_kv_from_name(o.split_kv);
  TD_CHECK(split.has_value(), "--split-kv {}: expected auto, off or on", o.split_kv);
  TD_CHECK(o.page_size > 0 && o.page_size <= 4096, "--page-size {}: expected 1..4096 tokens", o.page_size);
  TD_CHECK(o.kv_tokens >= 0, "--kv-tokens {}: must not be negative", o.kv_tokens);
  TD_CHECK(o.gpu_memory_utilization >= 0 && o.gpu_memory_utilization <= 1,
           "--gpu-memory-utilization {}: expected a fraction in (0, 1]", o.gpu_memory_utilization);
  TD_CHECK(o.gpu_memory_utilization == 0 || o.kv_tokens == 0,
           "give --kv-tokens or --gpu-memory-utilization, not both (both size the KV cache)");
  return {preset, preset->device == Device::CPU ? DType::F32 : *dtype, *layout, *split};
}

HostOptions host_options(const RunnerOptions& o, const Resolved& r) {
  return HostOptions{r.dtype, o.kv_tokens, o.page_size, r.layout, o.gpu_memory_utilization, o.pdl, o.kv_fixed,
                     r.split_kv};
}
}  // namespace

std::string resolve_path(const RunnerOptions& o) {
  if (o.path != "auto") return o.path;
  if (o.device == "cpu") return "cpu";
  if (o.device == "cuda") return "fused";
  return gpu_available() ? "fused" : "cpu";
}

Plan plan_for(const RunnerOptions& o, const ModelConfig* config) {
  const Resolved r = resolve(o);
  return build_plan(PlanRequest{r.preset->name, o.variants, r.layout, config, r.dtype});
}

std::unique_ptr<Executor> make_runner(const ModelBundle& b, const RunnerOptions& o, LoadProgress progress) {
  const Resolved r = resolve(o);
  Plan plan = build_plan(PlanRequest{r.preset->name, o.variants, r.layout, &b.config(), r.dtype});
  if (o.check_tensors) check_weights_finite(*b.source);
  const DeviceFamily* family = find_device_family(r.preset->device);
  TD_CHECK(family, "no device family registered for {}", device_name(r.preset->device));
  auto host = family->open(*b.source, host_options(o, r), progress);
  return std::make_unique<Executor>(std::move(host), std::move(plan), ExecutorOptions{o.kv_poison, o.nan_check, o.cuda_graphs, o.prefix_caching});
}

std::unique_ptr<Executor> make_random_runner(const ModelConfig& config, const RunnerOptions& o, uint64_t seed) {
  const Resolved r = resolve(o);
  Plan plan = build_plan(PlanRequest{r.preset->name, o.variants, r.layout, &config, r.dtype});
  const DeviceFamily* family = find_device_family(r.preset->device);
  TD_CHECK(family && family->random, "--path {}: random-weight models are made on the GPU only", r.preset->name);
  auto host = family->random(config, host_options(o, r), seed);
  return std::make_unique<Executor>(std::move(host), std::move(plan), ExecutorOptions{o.kv_poison, o.nan_check, o.cuda_graphs, o.prefix_caching});
}

ChatTemplate chat_template_for(const ModelBundle& b, std::string_view override_name) {
  if (!override_name.empty()) return ChatTemplate::from_name(override_name);
  auto has_token = [](const void* ctx, std::string_view piece) {
    const auto* tok = static_cast<const Tokenizer*>(ctx);
    return tok && tok->piece_to_id(piece).has_value();
  };
  const Tokenizer* tok = b.tokenizer ? &*b.tokenizer : nullptr;
  return ChatTemplate::detect(b.chat_template_text, b.source ? b.config().arch : "", has_token, tok);
}

fs::path default_model_path() {
  if (const char* env = std::getenv("TANDEM_MODEL"); env && *env) return env;
  if (fs::exists(kDefaultModel)) return kDefaultModel;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (fs::path dir = exe.parent_path(); !dir.empty() && dir != dir.root_path(); dir = dir.parent_path())
      if (fs::exists(dir / kDefaultModel)) return dir / kDefaultModel;
  }
  fail("no model given and the default model ({}) is not there; run `make run` or tools/fetch_default_model.sh, "
       "or pass -m",
       kDefaultModel);
}

}  // namespace tandem
