// Chat formats rendered by hand-checked strings, detection from template text and from the vocabulary.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/error.h"
#include "tokenizer/chat_template.h"

namespace tandem {
namespace {
using ::testing::HasSubstr;

// SmolLM2-Instruct's template (as in its tokenizer_config.json): a literal default system prompt.
constexpr std::string_view kSmolTemplate =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

TEST(ChatTemplate, ChatMLWithDefaultSystem) {
  const ChatTemplate t = ChatTemplate::detect(kSmolTemplate, "llama", nullptr, nullptr);
  EXPECT_EQ(t.format(), ChatFormat::ChatML);
  EXPECT_EQ(t.default_system(), "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  const ChatMessage msgs[] = {{"user", "Hi"}};
  EXPECT_EQ(t.render(msgs),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  const ChatMessage with_system[] = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}};
  EXPECT_EQ(t.render(with_system, false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            "Hello<|im_end|>\n");
  EXPECT_EQ(t.stop_strings(), std::vector<std::string>{"<|im_end|>"});
}

TEST(ChatTemplate, Llama3AndMistral) {
  const ChatTemplate l = ChatTemplate::detect("{{ '<|start_header_id|>' + message['role'] }}", "llama", nullptr,
                                              nullptr);
  EXPECT_EQ(l.format(), ChatFormat::Llama3);
  const ChatMessage msgs[] = {{"system", "S"}, {"user", "U"}};
  EXPECT_EQ(l.render(msgs),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user"
            "<|end_header_id|>\n\nU<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");

  const ChatTemplate m = ChatTemplate::detect("{{ '[INST] ' + message['content'] + ' [/INST]' }}", "llama",
                                              nullptr, nullptr);
  EXPECT_EQ(m.format(), ChatFormat::Mistral);
  const ChatMessage conv[] = {{"system", "S"}, {"user", "A"}, {"assistant", "B"}, {"user", "C"}};
  EXPECT_EQ(m.render(conv), "<s>[INST] S\n\nA [/INST] B</s>[INST] C [/INST]");
}

TEST(ChatTemplate, DetectFromVocabularyAndOverride) {
  auto has_im_start = [](const void*, std::string_view p) { return p == "<|im_start|>"; };
  EXPECT_EQ(ChatTemplate::detect("", "qwen2", has_im_start, nullptr).format(), ChatFormat::ChatML);
  EXPECT_EQ(ChatTemplate::detect("", "mistral", nullptr, nullptr).format(), ChatFormat::Mistral);
  EXPECT_EQ(ChatTemplate::from_name("llama3").format(), ChatFormat::Llama3);
  try {
    ChatTemplate::detect("{{ bos_token }}{% for m in messages %}<<SYS>>{% endfor %}", "llama", nullptr, nullptr);
    FAIL() << "unknown template accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("--chat-template"));
  }
  EXPECT_THROW(ChatTemplate::from_name("vicuna"), Error);
  const ChatMessage bad[] = {{"tool", "x"}};
  EXPECT_THROW(ChatTemplate::from_name("chatml").render(bad), Error);
}

}  // namespace
}  // namespace tandem
