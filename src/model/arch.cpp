#include "model/arch.h"

#include <array>
#include <charconv>

#include "core/error.h"

namespace tandem {

extern const ArchSpec kLlamaArch;
extern const ArchSpec kQwen2Arch;
extern const ArchSpec kMistralArch;

namespace {
const std::array<const ArchSpec*, 3> kArchs{&kLlamaArch, &kMistralArch, &kQwen2Arch};
}

const ArchSpec* find_arch_by_hf_class(std::string_view hf_class) {
  for (const ArchSpec* a : kArchs)
    for (std::string_view c : a->hf_classes)
      if (c == hf_class) return a;
  return nullptr;
}

std::string supported_hf_classes() {
  std::string s;
  for (const ArchSpec* a : kArchs)
    for (std::string_view c : a->hf_classes) s += (s.empty() ? "" : ", ") + std::string(c);
  return s;
}

const ArchSpec* find_arch_by_gguf_name(std::string_view gguf_arch) {
  for (const ArchSpec* a : kArchs)
    if (!a->gguf_arch.empty() && a->gguf_arch == gguf_arch) return a;
  return nullptr;
}

std::string supported_gguf_archs() {
  std::string s;
  for (const ArchSpec* a : kArchs)
    if (!a->gguf_arch.empty()) s += (s.empty() ? "" : ", ") + std::string(a->gguf_arch);
  return s;
}

std::string gguf_tensor_name(std::string_view canonical) {
  if (canonical == "embed") return "token_embd.weight";
  if (canonical == "final_norm") return "output_norm.weight";
  if (canonical == "lm_head") return "output.weight";
  auto layer = split_layer_name(canonical);
  TD_CHECK(layer.has_value(), "unknown canonical weight name '{}'", canonical);
  const auto [i, role] = *layer;
  static constexpr std::array<std::pair<std::string_view, std::string_view>, 13> kRoles{{
      {"attn_norm", "attn_norm.weight"}, {"wq", "attn_q.weight"},      {"wk", "attn_k.weight"},
      {"wv", "attn_v.weight"},           {"bq", "attn_q.bias"},        {"bk", "attn_k.bias"},
      {"bv", "attn_v.bias"},             {"wo", "attn_output.weight"}, {"bo", "attn_output.bias"},
      {"mlp_norm", "ffn_norm.weight"},   {"w_gate", "ffn_gate.weight"}, {"w_up", "ffn_up.weight"},
      {"w_down", "ffn_down.weight"},
  }};
  for (const auto& [r, g] : kRoles)
    if (r == role) return "blk." + std::to_string(i) + "." + std::string(g);
  fail("unknown canonical weight role '{}' in '{}'", role, canonical);
}

std::optional<std::pair<int, std::string_view>> split_layer_name(std::string_view canonical) {
  if (canonical.size() < 3 || canonical[0] != 'L') return std::nullopt;
  const size_t dot = canonical.find('.');
  if (dot == std::string_view::npos) return std::nullopt;
  int layer = 0;
  auto [p, ec] = std::from_chars(canonical.data() + 1, canonical.data() + dot, layer);
  if (ec != std::errc() || p != canonical.data() + dot) return std::nullopt;
  return std::pair{layer, canonical.substr(dot + 1)};
}

std::string llama_family_hf_tensor_name(std::string_view canonical) {
  if (canonical == "embed") return "model.embed_tokens.weight";
  if (canonical == "final_norm") return "model.norm.weight";
  if (canonical == "lm_head") return "lm_head.weight";
  auto layer = split_layer_name(canonical);
  TD_CHECK(layer.has_value(), "unknown canonical weight name '{}'", canonical);
  const auto [i, role] = *layer;
  static constexpr std::array<std::pair<std::string_view, std::string_view>, 13> kRoles{{
      {"attn_norm", "input_layernorm.weight"}, {"wq", "self_attn.q_proj.weight"},
      {"wk", "self_attn.k_proj.weight"},       {"wv", "self_attn.v_proj.weight"},
      {"bq", "self_attn.q_proj.bias"},         {"bk", "self_attn.k_proj.bias"},
      {"bv", "self_attn.v_proj.bias"},         {"wo", "self_attn.o_proj.weight"},
      {"bo", "self_attn.o_proj.bias"},         {"mlp_norm", "post_attention_layernorm.weight"},
      {"w_gate", "mlp.gate_proj.weight"},      {"w_up", "mlp.up_proj.weight"},
      {"w_down", "mlp.down_proj.weight"},
  }};
  for (const auto& [r, hf] : kRoles)
    if (r == role) return "model.layers." + std::to_string(i) + "." + std::string(hf);
  fail("unknown canonical weight role '{}' in '{}'", role, canonical);
}

}  // namespace tandem
