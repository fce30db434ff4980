// Architecture registry. Each architecture lives in its own file (arch_<name>.cpp) and says how its HF
// config keys and tensor names map onto tandem's one internal layout (ModelConfig + canonical weights).
//
// Canonical weight names: "embed", "final_norm", "lm_head", and per layer "L{i}.{attn_norm, wq, wk, wv, bq,
// bk, bv, wo, bo, mlp_norm, w_gate, w_up, w_down}". Linear weights are [out, in] row-major (y = x W^T).
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "model/config.h"

namespace tandem {

struct ArchSpec {
  std::string_view name;                       // "llama"
  std::span<const std::string_view> hf_classes;  // "LlamaForCausalLM", ...
  // Reads the keys only this architecture has (biases, sliding window, ...) after the common ones.
  // Rejects features it does not implement with a message naming the key.
  void (*read_hf_quirks)(const nlohmann::json& config, ModelConfig& cfg, const std::string& source);
  // HF tensor name for a canonical weight name ("L3.wq" -> "model.layers.3.self_attn.q_proj.weight").
  std::string (*hf_tensor_name)(std::string_view canonical);
  // GGUF `general.architecture` value, and whether llama.cpp's converter permuted the Q/K weight rows
  // into the interleaved rope layout (it does for "llama", which tandem undoes; not for "qwen2").
  std::string_view gguf_arch;
  bool gguf_qk_permuted;
};

// nullptr when no registered architecture claims the HF class.
const ArchSpec* find_arch_by_hf_class(std::string_view hf_class);
std::string supported_hf_classes();  // "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"

const ArchSpec* find_arch_by_gguf_name(std::string_view gguf_arch);
std::string supported_gguf_archs();

// GGUF tensor name for a canonical weight name ("L3.wq" -> "blk.3.attn_q.weight"); same for every
// llama-family architecture llama.cpp converts.
std::string gguf_tensor_name(std::string_view canonical);

// Shared by the Llama-family architectures (Llama, Mistral, Qwen2 all use these HF names).
std::string llama_family_hf_tensor_name(std::string_view canonical);

// Parse "L{i}.{role}" into (i, role); nullopt for global names.
std::optional<std::pair<int, std::string_view>> split_layer_name(std::string_view canonical);

}  // namespace tandem
