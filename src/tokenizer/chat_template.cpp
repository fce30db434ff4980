#include "tokenizer/chat_template.h"

#include "core/error.h"
#include "core/file.h"

namespace tandem {
namespace {

bool contains(std::string_view s, std::string_view what) { return s.find(what) != std::string_view::npos; }

// The literal default system prompt of a ChatML template: the text between "<|im_start|>system\n" and
// "<|im_end|>" inside a Jinja string literal ("\n" may be written as an escape).
std::string chatml_default_system(std::string_view tpl) {
  for (std::string_view head : {std::string_view("<|im_start|>system\\n"), std::string_view("<|im_start|>system\n")}) {
    const size_t at = tpl.find(head);
    if (at == std::string_view::npos) continue;
    const size_t begin = at + head.size();
    const size_t end = tpl.find("<|im_end|>", begin);
    if (end == std::string_view::npos) continue;
    std::string_view body = tpl.substr(begin, end - begin);
    // A Jinja expression (e.g. messages[0]['content']) is not a literal default.
    if (contains(body, "{{") || contains(body, "{%") || contains(body, "'") || contains(body, "+")) continue;
    std::string out;
    for (size_t i = 0; i < body.size(); ++i) {
      if (body[i] == '\\' && i + 1 < body.size() && body[i + 1] == 'n') {
        out += '\n';
        ++i;
      } else {
        out += body[i];
      }
    }
    return out;
  }
  return {};
}
}  // namespace

ChatTemplate ChatTemplate::from_name(std::string_view name) {
  ChatTemplate t;
  if (name == "chatml") t.format_ = ChatFormat::ChatML;
  else if (name == "llama3") t.format_ = ChatFormat::Llama3;
  else if (name == "mistral") t.format_ = ChatFormat::Mistral;
  else fail("unknown chat template '{}' (known: {})", excerpt(name), names());
  return t;
}

ChatTemplate ChatTemplate::detect(std::string_view tpl, std::string_view arch,
                                  bool (*has_token)(const void*, std::string_view), const void* ctx) {
  ChatTemplate t;
  if (!tpl.empty()) {
    if (contains(tpl, "<|im_start|>")) {
      t.format_ = ChatFormat::ChatML;
      t.default_system_ = chatml_default_system(tpl);
    } else if (contains(tpl, "<|start_header_id|>")) {
      t.format_ = ChatFormat::Llama3;
    } else if (contains(tpl, "[INST]")) {
      t.format_ = ChatFormat::Mistral;
    } else {
      fail("the model's chat template is not one tandem recognizes (it starts with \"{}\"); pass --chat-template "
           "with one of: {}",
           excerpt(tpl, 60), names());
    }
    return t;
  }
  auto has = [&](std::string_view piece) { return has_token && has_token(ctx, piece); };
  if (has("<|im_start|>")) t.format_ = ChatFormat::ChatML;
  else if (has("<|start_header_id|>")) t.format_ = ChatFormat::Llama3;
  else if (arch == "mistral" || has("[INST]")) t.format_ = ChatFormat::Mistral;
  else fail("the model has no chat template and none can be inferred for architecture '{}'; pass --chat-template "
            "with one of: {}", excerpt(arch), names());
  return t;
}

std::string_view ChatTemplate::name() const {
  switch (format_) {
    case ChatFormat::ChatML: return "chatml";
    case ChatFormat::Llama3: return "llama3";
    case ChatFormat::Mistral: return "mistral";
  }
  return "?";
}

std::string ChatTemplate::render(std::span<const ChatMessage> messages, bool add_generation_prompt) const {
  for (const ChatMessage& m : messages)
    TD_CHECK(m.role == "system" || m.role == "user" || m.role == "assistant",
             "chat message role '{}' is not one of system, user, assistant", excerpt(m.role));
  std::string out;
  switch (format_) {
    case ChatFormat::ChatML:
      if (!default_system_.empty() && (messages.empty() || messages[0].role != "system"))
        out += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
      for (const ChatMessage& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      break;
    case ChatFormat::Llama3:
      out += "<|begin_of_text|>";
      for (const ChatMessage& m : messages)
        out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + m.content + "<|eot_id|>";
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
    case ChatFormat::Mistral: {
      // <s>[INST] {system}\n\n{user} [/INST] {assistant}</s>[INST] {user} [/INST]
      out += "<s>";
      std::string system;
      for (const ChatMessage& m : messages) {
        if (m.role == "system") {
          system = m.content;
        } else if (m.role == "user") {
          out += "[INST] " + (system.empty() ? "" : system + "\n\n") + m.content + " [/INST]";
          system.clear();
        } else {
          out += " " + m.content + "</s>";
        }
      }
      break;
    }
  }
  return out;
}

std::vector<std::string> ChatTemplate::stop_strings() const {
  switch (format_) {
    case ChatFormat::ChatML: return {"<|im_end|>"};
    case ChatFormat::Llama3: return {"<|eot_id|>"};
    case ChatFormat::Mistral: return {"</s>"};
  }
  return {};
}

}  // namespace tandem
