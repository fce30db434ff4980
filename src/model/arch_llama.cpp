// Llama 2 / Llama 3 (LlamaForCausalLM). Quirks: optional attention_bias (q, k, v and o), rope_scaling
// llama3/linear (handled by the common reader), no MLP bias.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/arch.h"

namespace tandem {
namespace {
constexpr std::string_view kClasses[] = {"LlamaForCausalLM"};

void read_quirks(const nlohmann::json& j, ModelConfig& cfg, const std::string& source) {
  const bool attention_bias = j.value("attention_bias", false);
  cfg.qkv_bias = attention_bias;
  cfg.o_bias = attention_bias;
  TD_CHECK(!j.value("mlp_bias", false), "{}: mlp_bias=true is not supported for {}", source, cfg.hf_class);
}
}  // namespace

extern const ArchSpec kLlamaArch{"llama", kClasses, read_quirks, llama_family_hf_tensor_name, "llama", true};

}  // namespace tandem
