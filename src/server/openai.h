// The OpenAI API schema for /v1/completions and /v1/chat/completions: request parsing with validation that names
// the field and its limit (ApiError -> a 400 JSON error body), and the response bodies and stream chunks.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/engine.h"
#include "tokenizer/chat_template.h"

namespace tandem::server {

// An error the client caused (or a limit it hit), answered as {"error": {...}} with this status.
struct ApiError {
  int status = 400;
  std::string message;
  std::string param;                            // the field, when one is to blame
  std::string type = "invalid_request_error";   // OpenAI's error types
};
// {"error": {"message", "type", "param", "code"}}
std::string error_body(const ApiError& e);

struct CompletionRequest {
  bool chat = false;
  std::string model;
  std::vector<ChatMessage> messages;  // chat
  std::string prompt_text;            // completions, text prompt
  std::vector<int32_t> prompt_ids;    // completions, a prompt given as token ids
  bool prompt_is_ids = false;
  int64_t max_tokens = -1;            // -1: until the context ends (chat) or 16 (completions)
  int n = 1;
  bool stream = false, include_usage = false;
  std::vector<std::string> stop;
  SamplingParams sampling;            // OpenAI defaults: temperature 1, top_p 1, no top_k/min_p
  int logprobs = -1;                  // -1: none; else how many alternatives per token (0..20)
  std::vector<std::pair<int32_t, float>> logit_bias;
  float presence_penalty = 0.0f, frequency_penalty = 0.0f;  // [-2, 2], over the generated tokens
  bool echo = false;                  // completions: not supported (error)
};

// Parses and validates a request body; `vocab_size` bounds token ids and logit_bias keys. Throws ApiError.
CompletionRequest parse_request(const std::string& body, bool chat, int32_t vocab_size);

}  // namespace tandem::server
