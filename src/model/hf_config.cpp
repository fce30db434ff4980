#include "model/hf_config.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file.h"

namespace tandem {
namespace {
using nlohmann::json;

const json* find_key(const json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

int64_t get_int(const json& j, const char* key, const std::string& source, std::optional<int64_t> fallback = {}) {
  const json* v = find_key(j, key);
  if (!v) {
    TD_CHECK(fallback.has_value(), "{}: required field '{}' is missing", source, key);
    return *fallback;
  }
  TD_CHECK(v->is_number_integer(), "{}: field '{}' must be an integer, got {}", source, key, v->dump());
  return v->get<int64_t>();
}

double get_number(const json& j, const char* key, const std::string& source, double fallback) {
  const json* v = find_key(j, key);
  if (!v) return fallback;
  TD_CHECK(v->is_number(), "{}: field '{}' must be a number, got {}", source, key, v->dump());
  return v->get<double>();
}

bool get_bool(const json& j, const char* key, const std::string& source, bool fallback) {
  const json* v = find_key(j, key);
  if (!v) return fallback;
  TD_CHECK(v->is_boolean(), "{}: field '{}' must be true or false, got {}", source, key, v->dump());
  return v->get<bool>();
}

// transformers 4.x writes rope_theta + rope_scaling {"rope_type"|"type": ...}; 5.x writes rope_parameters
// {"rope_type", "rope_theta", ...}. Hub checkpoints use the former, so both are read.
void read_rope(const json& j, ModelConfig& cfg, const std::string& source) {
  const json* params = find_key(j, "rope_parameters");
  const json* scaling = params ? params : find_key(j, "rope_scaling");
  const char* where = params ? "rope_parameters" : "rope_scaling";
  cfg.rope.theta = get_number(j, "rope_theta", source, 10000.0);
  if (params) cfg.rope.theta = get_number(*params, "rope_theta", source, cfg.rope.theta);
  if (!scaling) return;
  TD_CHECK(scaling->is_object(), "{}: '{}' must be an object, got {}", source, where, scaling->dump());
  std::string type = "default";
  if (const json* t = find_key(*scaling, "rope_type"); t && t->is_string()) type = t->get<std::string>();
  else if (const json* t2 = find_key(*scaling, "type"); t2 && t2->is_string()) type = t2->get<std::string>();
  const std::string src = source + ": " + where;
  if (type == "default") return;
  cfg.rope.factor = get_number(*scaling, "factor", src, 0.0);
  if (type == "linear") {
    cfg.rope.scaling = RopeScaling::Linear;
  } else if (type == "llama3") {
    cfg.rope.scaling = RopeScaling::Llama3;
    cfg.rope.low_freq_factor = get_number(*scaling, "low_freq_factor", src, 1.0);
    cfg.rope.high_freq_factor = get_number(*scaling, "high_freq_factor", src, 4.0);
    cfg.rope.original_max_positions = get_int(*scaling, "original_max_position_embeddings", src, 8192);
  } else {
    fail("{}: rope type '{}' is not supported (supported: default, linear, llama3)", src, type);
  }
}

void read_special_tokens(const json& j, ModelConfig& cfg, const std::string& source) {
  if (const json* b = find_key(j, "bos_token_id")) {
    TD_CHECK(b->is_number_integer(), "{}: bos_token_id must be an integer, got {}", source, b->dump());
    cfg.bos_token_id = b->get<int32_t>();
  }
  if (const json* e = find_key(j, "eos_token_id")) {
    if (e->is_number_integer()) {
      cfg.eos_token_ids.push_back(e->get<int32_t>());
    } else {
      TD_CHECK(e->is_array(), "{}: eos_token_id must be an integer or a list of integers, got {}", source,
               e->dump());
      for (const json& x : *e) {
        TD_CHECK(x.is_number_integer(), "{}: eos_token_id entries must be integers, got {}", source, x.dump());
        cfg.eos_token_ids.push_back(x.get<int32_t>());
      }
    }
  }
}
}  // namespace

HfConfig parse_hf_config(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", source, e.what());
  }
  TD_CHECK(j.is_object(), "{}: config must be a JSON object", source);
  const json* archs = find_key(j, "architectures");
  TD_CHECK(archs && archs->is_array() && !archs->empty() && (*archs)[0].is_string(),
           "{}: field 'architectures' must be a non-empty list of class names", source);
  HfConfig out;
  ModelConfig& cfg = out.config;
  cfg.hf_class = (*archs)[0].get<std::string>();
  out.arch = find_arch_by_hf_class(cfg.hf_class);
  TD_CHECK(out.arch != nullptr, "{}: architecture '{}' is not supported (supported: {})", source, cfg.hf_class,
           supported_hf_classes());
  cfg.arch = std::string(out.arch->name);

  try {
    cfg.vocab_size = get_int(j, "vocab_size", source);
    cfg.hidden_size = get_int(j, "hidden_size", source);
    cfg.intermediate_size = get_int(j, "intermediate_size", source);
    cfg.n_layers = get_int(j, "num_hidden_layers", source);
    cfg.n_heads = get_int(j, "num_attention_heads", source);
    cfg.n_kv_heads = get_int(j, "num_key_value_heads", source, cfg.n_heads);
    if (find_key(j, "head_dim")) {
      cfg.head_dim = get_int(j, "head_dim", source);
    } else {
      TD_CHECK(cfg.n_heads > 0 && cfg.hidden_size % cfg.n_heads == 0,
               "{}: hidden_size ({}) is not divisible by num_attention_heads ({}) and no head_dim is given", source,
               cfg.hidden_size, cfg.n_heads);
      cfg.head_dim = cfg.hidden_size / cfg.n_heads;
    }
    cfg.rms_eps = get_number(j, "rms_norm_eps", source, 1e-6);
    cfg.max_positions = get_int(j, "max_position_embeddings", source, 4096);
    cfg.tie_embeddings = get_bool(j, "tie_word_embeddings", source, false);
    if (const json* act = find_key(j, "hidden_act")) {
      TD_CHECK(act->is_string() && act->get<std::string>() == "silu",
               "{}: hidden_act {} is not supported (only \"silu\")", source, act->dump());
    }
    read_rope(j, cfg, source);
    read_special_tokens(j, cfg, source);
    out.arch->read_hf_quirks(j, cfg, source);
  } catch (const json::exception& e) {
    fail("{}: malformed field: {}", source, e.what());
  }
  cfg.validate(source);
  return out;
}

HfConfig read_hf_config(const std::filesystem::path& path) {
  return parse_hf_config(read_file(path), path.string());
}

}  // namespace tandem
