// Mistral (MistralForCausalLM). (llama.cpp converts Mistral to GGUF architecture "llama", handled there.)
// Quirks: sliding-window attention (sliding_window: null = full attention);
// a query at position p sees keys at positions (p - window, p], as HF's mask does. head_dim may differ from
// hidden_size / num_attention_heads.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/arch.h"
#include "model/hf_config.h"

namespace tandem {
namespace {
constexpr std::string_view kClasses[] = {"MistralForCausalLM"};

void read_quirks(const nlohmann::json& j, ModelConfig& cfg, const std::string& source) {
  cfg.qkv_bias = false;
  cfg.o_bias = false;
  cfg.sliding_window = 0;
  if (auto it = j.find("sliding_window"); it != j.end() && !it->is_null()) {
    // A JSON integer above INT64_MAX reads back negative here and is rejected; validate() bounds the rest.
    TD_CHECK(it->is_number_integer() && it->get<int64_t>() > 0,
             "{}: sliding_window must be null or a positive integer, got {}", source, json_excerpt(*it));
    cfg.sliding_window = it->get<int64_t>();
  }
}
}  // namespace

extern const ArchSpec kMistralArch{"mistral", kClasses, read_quirks, llama_family_hf_tensor_name, "", false};

}  // namespace tandem
