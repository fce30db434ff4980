// Chat-template detection and rendering on arbitrary input. Fields are separated by "\n\x01\n": the template text,
// the architecture, then role/content pairs. Byte flags pick add_generation_prompt and which special tokens the
// vocabulary claims to have (for templates without text).
#include <string>

#include "core/error.h"
#include "fuzz_util.h"
#include "tokenizer/chat_template.h"

using namespace tandem;

namespace {
bool has_token(const void* ctx, std::string_view piece) {
  const uint8_t mask = *static_cast<const uint8_t*>(ctx);
  static constexpr std::string_view kPieces[] = {"<|im_start|>", "<|start_header_id|>", "[INST]", "<|eot_id|>",
                                                 "<|im_end|>",   "</s>",                "<s>",    "<|endoftext|>"};
  for (size_t k = 0; k < 8; ++k)
    if (piece == kPieces[k]) return mask & (1u << k);
  return false;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t mask = data[0], flags = data[1];
  const auto parts = fuzz::split({reinterpret_cast<const char*>(data + 2), size - 2}, "\n\x01\n", 64);
  std::vector<ChatMessage> msgs;
  for (size_t k = 2; k + 1 < parts.size(); k += 2) msgs.push_back({std::string(parts[k]), std::string(parts[k + 1])});
  const std::string_view arch = parts.size() > 1 ? parts[1] : std::string_view("llama");
  ChatTemplate t;
  try {
    t = (flags & 2) ? ChatTemplate::from_name(parts[0]) : ChatTemplate::detect(parts[0], arch, has_token, &mask);
  } catch (const Error&) {
    return 0;
  }
  try {
    std::string out = t.render(msgs, flags & 1);
    for (const std::string& s : t.stop_strings())
      if (s.empty()) __builtin_trap();
    (void)out;
    (void)t.name();
  } catch (const Error&) {
  }
  return 0;
}
