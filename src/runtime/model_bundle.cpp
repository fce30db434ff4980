#include "runtime/model_bundle.h"

#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "cpu/reference_runner.h"
#include "cuda/device_query.h"
#include "cuda/standard_runner.h"
#include "io/gguf.h"
#include "tokenizer/gguf_vocab.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;
constexpr const char* kDefaultModel = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// HF keeps the template in tokenizer_config.json ("chat_template": string, or a list of {name, template})
// or, in newer folders, in chat_template.jinja.
std::string hf_chat_template(const fs::path& dir) {
  if (fs::exists(dir / "chat_template.jinja")) return read_text(dir / "chat_template.jinja");
  const fs::path cfg = dir / "tokenizer_config.json";
  if (!fs::exists(cfg)) return {};
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text(cfg));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", cfg.string(), e.what());
  }
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
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_text(cfg));
    } catch (const nlohmann::json::exception& e) {
      fail("{}: not valid JSON: {}", cfg.string(), e.what());
    }
    auto token_id = [&](const char* key) -> std::optional<int32_t> {
      auto it = j.find(key);
      if (it == j.end() || it->is_null()) return std::nullopt;
      const nlohmann::json& v = it->is_object() ? it->value("content", nlohmann::json()) : *it;
      TD_CHECK(v.is_string(), "{}: '{}' must be a token string or {{\"content\": ...}}, got {}", cfg.string(), key,
               it->dump());
      const auto id = tok.piece_to_id(v.get<std::string>());
      TD_CHECK(id.has_value(), "{}: {} '{}' is not in the vocabulary", cfg.string(), key, v.get<std::string>());
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

std::unique_ptr<ModelRunner> make_runner(const ModelBundle& b, const RunnerOptions& o,
                                         void (*progress)(int64_t, int64_t)) {
  const int gpus = cuda::device_count();
  TD_CHECK(o.device == "auto" || o.device == "cpu" || o.device == "cuda", "--device {}: expected auto, cpu or cuda",
           o.device);
  TD_CHECK(o.path == "auto" || o.path == "reference" || o.path == "standard",
           "--path {}: expected auto, reference or standard", o.path);
  TD_CHECK(!(o.device == "cuda" && gpus == 0), "--device cuda: no CUDA GPU found");
  TD_CHECK(!(o.device == "cpu" && o.path == "standard"), "--path standard runs on CUDA, not with --device cpu");
  TD_CHECK(!(o.device == "cuda" && o.path == "reference"), "--path reference runs on the CPU, not with --device cuda");
  const bool use_gpu = o.path == "standard" || o.device == "cuda" || (o.device == "auto" && o.path == "auto" && gpus > 0);
  if (!use_gpu) return std::make_unique<ReferenceRunner>(load_reference_model(*b.source, progress));
  TD_CHECK(gpus > 0, "--path standard: no CUDA GPU found");
  const auto dtype = dtype_from_name(o.dtype);
  TD_CHECK(dtype && (*dtype == DType::BF16 || *dtype == DType::F16 || *dtype == DType::F32),
           "--dtype {}: expected bf16, f16 or f32", o.dtype);
  return std::make_unique<cuda::StandardRunner>(*b.source, cuda::StandardOptions{*dtype, o.kv_tokens}, progress);
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
