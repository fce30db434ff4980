// The OpenAI request parser/validator (/v1/chat/completions and /v1/completions bodies) on arbitrary bytes. Every
// rejection is an ApiError with a 4xx status whose error_body() is valid JSON; no other exception escapes (the
// server would answer 500). An accepted request holds only in-range values. Then the stop strings it carries are
// run through StopStrings over the body text: the text let through never contains a stop string.
#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "runtime/stop_strings.h"
#include "server/openai.h"

using namespace tandem;
using namespace tandem::server;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool chat = !(data[0] & 1);
  const int32_t vocab = (data[0] & 2) ? 49152 : 1;
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  CompletionRequest r;
  try {
    r = parse_request(body, chat, vocab);
  } catch (const ApiError& e) {
    if (e.status < 400 || e.status > 499) __builtin_trap();
    const std::string eb = error_body(e);
    if (!nlohmann::json::accept(eb)) __builtin_trap();
    return 0;
  }
  if (chat ? r.messages.empty() : (r.prompt_is_ids ? r.prompt_ids.empty() : r.prompt_text.empty())) __builtin_trap();
  for (int32_t id : r.prompt_ids)
    if (id < 0 || id >= vocab) __builtin_trap();
  for (const auto& [id, bias] : r.logit_bias)
    if (id < 0 || id >= vocab || !std::isfinite(bias)) __builtin_trap();
  if (r.n < 1 || r.n > 16 || r.max_tokens == 0 || r.max_tokens < -1) __builtin_trap();
  const SamplingParams& s = r.sampling;
  if (!std::isfinite(s.temperature) || !std::isfinite(s.top_p) || !std::isfinite(s.min_p) || s.top_k == 0)
    __builtin_trap();

  if (chat) (void)ChatTemplate::from_name("chatml").render(r.messages);

  StopStrings m(r.stop);
  std::string out;
  for (size_t k = 0; k < body.size() && !m.stopped(); k += 3) out += m.push(body.substr(k, 3));
  if (!m.stopped()) out += m.flush();
  if (body.compare(0, out.size(), out) != 0) __builtin_trap();  // not a prefix of the text
  for (const std::string& st : r.stop)
    if (out.find(st) != std::string::npos) __builtin_trap();
  return 0;
}
