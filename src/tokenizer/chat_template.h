// Chat formats: ChatML (SmolLM2, Qwen2), Llama 3 and Mistral [INST]. tandem does not run Jinja; it
// recognizes which of these formats a model's template implements (from the template text, else from the
// architecture and vocabulary) and renders that format itself. An unrecognized template is an error that
// names the --chat-template override.
#pragma once
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tandem {

enum class ChatFormat { ChatML, Llama3, Mistral };

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant"
  std::string content;
};

class ChatTemplate {
 public:
  // template_text: the model's Jinja template (tokenizer.chat_template), may be empty.
  // has_token: asks the vocabulary whether a special token exists (to pick a format when there is no text).
  static ChatTemplate detect(std::string_view template_text, std::string_view arch,
                             bool (*has_token)(const void* ctx, std::string_view piece), const void* ctx);
  static ChatTemplate from_name(std::string_view name);  // "chatml" | "llama3" | "mistral"
  static std::string_view names() { return "chatml, llama3, mistral"; }

  ChatFormat format() const { return format_; }
  std::string_view name() const;
  // System prompt the model's template inserts when the conversation has none (ChatML templates of SmolLM2
  // and Qwen2.5 do); empty for none.
  const std::string& default_system() const { return default_system_; }

  // The prompt text with special-token text inline (tokenize with special-token parsing on). Includes the
  // BOS text where the format writes it (Llama 3, Mistral), so do not add a BOS token again.
  std::string render(std::span<const ChatMessage> messages, bool add_generation_prompt = true) const;
  // Text that ends an assistant turn.
  std::vector<std::string> stop_strings() const;

 private:
  ChatFormat format_ = ChatFormat::ChatML;
  std::string default_system_;
};

}  // namespace tandem
