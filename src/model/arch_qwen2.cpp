// Qwen2 / Qwen2.5 (Qwen2ForCausalLM). Quirks: q/k/v always carry a bias (o does not); the K bias is large
// (|K| near 200 is normal), which is why every path accumulates attention scores in fp32. Qwen2's own
// sliding window (use_sliding_window=true, only above max_window_layers) is rejected.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/arch.h"

namespace tandem {
namespace {
constexpr std::string_view kClasses[] = {"Qwen2ForCausalLM"};

void read_quirks(const nlohmann::json& j, ModelConfig& cfg, const std::string& source) {
  cfg.qkv_bias = true;
  cfg.o_bias = false;
  TD_CHECK(!j.value("use_sliding_window", false),
           "{}: use_sliding_window=true (Qwen2 per-layer sliding window) is not supported; released Qwen2/2.5 "
           "checkpoints set it to false",
           source);
  cfg.sliding_window = 0;  // sliding_window is present in Qwen2 configs but unused unless use_sliding_window
}
}  // namespace

extern const ArchSpec kQwen2Arch{"qwen2", kClasses, read_quirks, llama_family_hf_tensor_name, "qwen2", false};

}  // namespace tandem
