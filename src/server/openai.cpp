#include "server/openai.h"

#include <cmath>
#include <limits>

namespace tandem::server {
namespace {
using nlohmann::json;

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError{400, message, param}; }

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    default: return "a number";
  }
}

// Optional fields: absent or null means "not given".
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

double number(const json& body, const char* name, double lo, double hi, double dflt) {
  const json* v = field(body, name);
  if (!v) return dflt;
  if (!v->is_number()) bad(name, fmt::format("'{}' must be a number, got {}", name, type_name(*v)));
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    bad(name, fmt::format("'{}' must be in [{}, {}], got {}", name, lo, hi, v->dump()));
  return x;
}

int64_t integer(const json& body, const char* name, int64_t lo, int64_t hi, int64_t dflt) {
  const json* v = field(body, name);
  if (!v) return dflt;
  if (!v->is_number_integer() && !(v->is_number_float() && std::floor(v->get<double>()) == v->get<double>()))
    bad(name, fmt::format("'{}' must be an integer, got {}", name, v->dump()));
  const double x = v->get<double>();
  if (x < double(lo) || x > double(hi)) bad(name, fmt::format("'{}' must be in [{}, {}], got {}", name, lo, hi, v->dump()));
  return int64_t(x);
}

bool boolean(const json& body, const char* name, bool dflt) {
  const json* v = field(body, name);
  if (!v) return dflt;
  if (!v->is_boolean()) bad(name, fmt::format("'{}' must be a boolean, got {}", name, type_name(*v)));
  return v->get<bool>();
}

std::string text_content(const json& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (content.is_array()) {  // [{"type": "text", "text": "..."}]
    std::string out;
    for (const json& part : content) {
      if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
        bad(param, "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported");
      out += part["text"].get<std::string>();
    }
    return out;
  }
  bad(param, fmt::format("'{}' must be a string or an array of text parts, got {}", param, type_name(content)));
}
}  // namespace

std::string error_body(const ApiError& e) {
  json j = {{"error",
             {{"message", e.message},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.status}}}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

CompletionRequest parse_request(const std::string& body, bool chat, int32_t vocab_size) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number beyond double (1e400)
    bad("", std::string("the body is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) bad("", fmt::format("the body must be a JSON object, got {}", type_name(j)));
  CompletionRequest r;
  r.chat = chat;
  if (const json* m = field(j, "model")) {
    if (!m->is_string()) bad("model", fmt::format("'model' must be a string, got {}", type_name(*m)));
    r.model = m->get<std::string>();
  }
  if (chat) {
    const json* msgs = field(j, "messages");
    if (!msgs) bad("messages", "'messages' is required");
    if (!msgs->is_array()) bad("messages", fmt::format("'messages' must be an array, got {}", type_name(*msgs)));
    if (msgs->empty()) bad("messages", "'messages' must hold at least one message");
    for (size_t i = 0; i < msgs->size(); ++i) {
      const json& m = (*msgs)[i];
      const std::string p = fmt::format("messages[{}]", i);
      if (!m.is_object()) bad(p, fmt::format("'{}' must be an object", p));
      if (!m.contains("role") || !m["role"].is_string()) bad(p + ".role", fmt::format("'{}.role' must be a string", p));
      const std::string role = m["role"].get<std::string>();
      if (role != "system" && role != "user" && role != "assistant" && role != "developer")
        bad(p + ".role", fmt::format("'{}.role' must be system, developer, user or assistant, got '{}'", p, role));
      if (!m.contains("content") || m["content"].is_null())
        bad(p + ".content", fmt::format("'{}.content' is required", p));
      r.messages.push_back({role == "developer" ? "system" : role, text_content(m["content"], p + ".content")});
    }
  } else {
    const json* prompt = field(j, "prompt");
    if (!prompt) bad("prompt", "'prompt' is required");
    if (prompt->is_string()) {
      r.prompt_text = prompt->get<std::string>();
    } else if (prompt->is_array() && !prompt->empty() && (*prompt)[0].is_number_integer()) {
      r.prompt_is_ids = true;
      for (size_t i = 0; i < prompt->size(); ++i) {
        const json& t = (*prompt)[i];
        if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= vocab_size)
          bad("prompt", fmt::format("'prompt[{}]' must be a token id in [0, {}), got {}", i, vocab_size, t.dump()));
        r.prompt_ids.push_back(int32_t(t.get<int64_t>()));
      }
    } else if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) {
      r.prompt_text = (*prompt)[0].get<std::string>();
    } else {
      bad("prompt", "'prompt' must be a string, a one-element array of strings, or an array of token ids "
                    "(batches of prompts: send one request each)");
    }
    if (!r.prompt_is_ids && r.prompt_text.empty()) bad("prompt", "'prompt' is empty");
    r.echo = boolean(j, "echo", false);
    if (r.echo) bad("echo", "'echo' is not supported");
  }
  // max_completion_tokens (chat, newer) wins over max_tokens.
  const int64_t mt = integer(j, "max_tokens", 1, std::numeric_limits<int32_t>::max(), -1);
  r.max_tokens = integer(j, "max_completion_tokens", 1, std::numeric_limits<int32_t>::max(), mt);
  if (r.max_tokens < 0 && !chat) r.max_tokens = 16;  // OpenAI's default for completions
  r.n = int(integer(j, "n", 1, 16, 1));
  r.stream = boolean(j, "stream", false);
  if (const json* so = field(j, "stream_options")) {
    if (!so->is_object()) bad("stream_options", "'stream_options' must be an object");
    r.include_usage = boolean(*so, "include_usage", false);
  }
  if (const json* st = field(j, "stop")) {
    if (st->is_string()) r.stop.push_back(st->get<std::string>());
    else if (st->is_array())
      for (const json& s : *st) {
        if (!s.is_string()) bad("stop", "'stop' must be a string or an array of strings");
        r.stop.push_back(s.get<std::string>());
      }
    else bad("stop", "'stop' must be a string or an array of strings");
    if (r.stop.size() > 4) bad("stop", fmt::format("'stop' holds at most 4 strings, got {}", r.stop.size()));
    for (const std::string& s : r.stop)
      if (s.empty()) bad("stop", "'stop' strings must not be empty");
  }
  SamplingParams& s = r.sampling;
  s.temperature = float(number(j, "temperature", 0, 2, 1.0));
  s.top_p = float(number(j, "top_p", 0, 1, 1.0));
  if (s.top_p <= 0.0f) bad("top_p", "'top_p' must be in (0, 1]");
  s.top_k = int(integer(j, "top_k", -1, std::numeric_limits<int32_t>::max(), -1));
  if (s.top_k == 0) s.top_k = -1;
  s.min_p = float(number(j, "min_p", 0, 1, 0.0));
  s.repeat_penalty = float(number(j, "repetition_penalty", 1e-3, 100, 1.0));
  s.repeat_last_n = -1;  // the whole sequence, as vLLM's repetition_penalty
  r.presence_penalty = float(number(j, "presence_penalty", -2, 2, 0.0));
  r.frequency_penalty = float(number(j, "frequency_penalty", -2, 2, 0.0));
  if (const json* seed = field(j, "seed")) {
    if (!seed->is_number_integer()) bad("seed", "'seed' must be an integer");
    s.seed = uint64_t(seed->get<int64_t>());
  }
  if (chat) {
    if (boolean(j, "logprobs", false)) r.logprobs = int(integer(j, "top_logprobs", 0, 20, 0));
    else if (field(j, "top_logprobs")) bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
  } else {
    r.logprobs = int(integer(j, "logprobs", 0, 5, -1));
  }
  if (const json* lb = field(j, "logit_bias")) {
    if (!lb->is_object()) bad("logit_bias", "'logit_bias' must be an object of token id -> bias");
    for (const auto& [k, v] : lb->items()) {
      char* end = nullptr;
      const long id = std::strtol(k.c_str(), &end, 10);
      if (k.empty() || *end || id < 0 || id >= vocab_size)
        bad("logit_bias", fmt::format("'logit_bias' key '{}' must be a token id in [0, {})", k, vocab_size));
      if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < -100 || v.get<double>() > 100)
        bad("logit_bias", fmt::format("'logit_bias[{}]' must be a number in [-100, 100], got {}", k, v.dump()));
      r.logit_bias.push_back({int32_t(id), float(v.get<double>())});
    }
  }
  return r;
}

}  // namespace tandem::server
