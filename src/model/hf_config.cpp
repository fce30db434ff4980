#include "model/hf_config.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file.h"

namespace tandem {
using nlohmann::json;

std::string json_excerpt(const json& v) {
  // Containers are described, never dumped: a hostile value can be megabytes long or deeply nested.
  if (v.is_array()) return fmt::format("a list of {} items", v.size());
  if (v.is_object()) return fmt::format("an object with {} keys", v.size());
  if (v.is_string()) return "\"" + excerpt(v.get_ref<const std::string&>()) + "\"";
  return v.dump();  // a number, bool or null: short
}

namespace {

const json* find_key(const json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

int64_t as_int(const json& v, const std::string& field, const std::string& source) {
  TD_CHECK(v.is_number_integer(), "{}: field '{}' must be an integer, got {}", source, field, json_excerpt(v));
  // nlohmann keeps integers above INT64_MAX as unsigned; get<int64_t> would wrap them negative.
  TD_CHECK(!v.is_number_unsigned() || v.get<uint64_t>() <= uint64_t(INT64_MAX),
           "{}: field '{}' = {} does not fit in int64", source, field, json_excerpt(v));
  return v.get<int64_t>();
}

int64_t get_int(const json& j, const char* key, const std::string& source, std::optional<int64_t> fallback = {}) {
  const json* v = find_key(j, key);
  if (!v) {
    TD_CHECK(fallback.has_value(), "{}: required field '{}' is missing", source, key);
    return *fallback;
  }
  return as_int(*v, key, source);
}

double get_number(const json& j, const char* key, const std::string& source, double fallback) {
  const json* v = find_key(j, key);
  if (!v) return fallback;
  TD_CHECK(v->is_number(), "{}: field '{}' must be a number, got {}", source, key, json_excerpt(*v));
  return v->get<double>();
}

bool get_bool(const json& j, const char* key, const std::string& source, bool fallback) {
  const json* v = find_key(j, key);
  if (!v) return fallback;
  TD_CHECK(v->is_boolean(), "{}: field '{}' must be true or false, got {}", source, key, json_excerpt(*v));
  return v->get<bool>();
}

// transformers 4.x writes rope_theta + rope_scaling {"rope_type"|"type": ...}; 5.x writes rope_parameters
// {"rope_type", "rope_theta", ...}. Hub checkpoints use the former, so both are read.
void read_rope(const json& j, ModelConfig& cfg, ConfigKeys& keys, const std::string& source) {
  const json* params = find_key(j, "rope_parameters");
  const json* scaling = params ? params : find_key(j, "rope_scaling");
  const std::string where = params ? "rope_parameters" : "rope_scaling";
  cfg.rope.theta = get_number(j, "rope_theta", source, 10000.0);
  if (params) cfg.rope.theta = get_number(*params, "rope_theta", source, cfg.rope.theta);
  if (params && find_key(*params, "rope_theta")) keys.rope_theta = "rope_parameters.rope_theta";
  keys.rope_factor = where + ".factor";
  keys.rope_low_freq = where + ".low_freq_factor";
  keys.rope_high_freq = where + ".high_freq_factor";
  keys.rope_original_max = where + ".original_max_position_embeddings";
  if (!scaling) return;
  TD_CHECK(scaling->is_object(), "{}: '{}' must be an object, got {}", source, where, json_excerpt(*scaling));
  std::string type = "default";
  if (const json* t = find_key(*scaling, "rope_type"); t && t->is_string())
    type = t->get<std::string>();
  else if (const json* t2 = find_key(*scaling, "type"); t2 && t2->is_string())
    type = t2->get<std::string>();
  type = excerpt(type);  // it may be echoed in an error below
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

// Ids are int64 in JSON; each must fit the int32 the engine uses. Real configs give one eos id or a short list.
void read_special_tokens(const json& j, ModelConfig& cfg, const std::string& source) {
  if (const json* b = find_key(j, "bos_token_id"))
    cfg.bos_token_id = checked_token_id(as_int(*b, "bos_token_id", source), source, "bos_token_id");
  // pad_token_id is not used, but a value that would wrap is still a broken config; -1 is an old "none" marker.
  if (const json* p = find_key(j, "pad_token_id"); p && as_int(*p, "pad_token_id", source) != -1)
    checked_token_id(as_int(*p, "pad_token_id", source), source, "pad_token_id");
  if (const json* e = find_key(j, "eos_token_id")) {
    if (!e->is_array()) {
      cfg.eos_token_ids.push_back(checked_token_id(as_int(*e, "eos_token_id", source), source, "eos_token_id"));
      return;
    }
    TD_CHECK(e->size() <= size_t(config_limits::kMaxEosIds), "{}: eos_token_id lists {} ids, over the limit of {}",
             source, e->size(), config_limits::kMaxEosIds);
    for (size_t i = 0; i < e->size(); ++i) {
      const std::string field = fmt::format("eos_token_id[{}]", i);
      cfg.eos_token_ids.push_back(checked_token_id(as_int((*e)[i], field, source), source, field));
    }
  }
}
}  // namespace

HfConfig parse_hf_config(const std::string& text, const std::string& source) {
  json j;
  check_json_depth(text, source);
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
  ConfigKeys keys;
  const std::string& hf_class = (*archs)[0].get_ref<const std::string&>();
  out.arch = find_arch_by_hf_class(hf_class);
  TD_CHECK(out.arch != nullptr, "{}: architecture '{}' is not supported (supported: {})", source, excerpt(hf_class),
           supported_hf_classes());
  cfg.hf_class = hf_class;
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
               "{}: hidden_act {} is not supported (only \"silu\")", source, json_excerpt(*act));
    }
    read_rope(j, cfg, keys, source);
    read_special_tokens(j, cfg, source);
    out.arch->read_hf_quirks(j, cfg, source);
  } catch (const json::exception& e) {
    fail("{}: malformed field: {}", source, e.what());
  }
  cfg.validate(source, keys);
  return out;
}

HfConfig read_hf_config(const std::filesystem::path& path) { return parse_hf_config(read_file(path), path.string()); }

}  // namespace tandem
