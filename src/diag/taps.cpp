#include "diag/taps.h"

#include <array>
#include <cstring>
#include <vector>

#include "io/safetensors.h"

namespace tandem {
namespace {
constexpr std::array<std::string_view, kNumStages> kNames{
    "embed",    "attn_norm", "qkv", "rope", "kv_write", "attention",  "o_proj", "attn_residual",
    "mlp_norm", "gate_up",   "act", "down", "mlp_residual", "final_norm", "logits"};
}

std::string_view stage_name(Stage s) { return kNames[size_t(s)]; }

std::optional<Stage> stage_from_name(std::string_view name) {
  for (int i = 0; i < kNumStages; ++i)
    if (kNames[size_t(i)] == name) return Stage(i);
  return std::nullopt;
}

bool stage_is_per_layer(Stage s) { return s != Stage::embed && s != Stage::final_norm && s != Stage::logits; }

std::string tap_name(Stage s, int layer) {
  if (!stage_is_per_layer(s)) return std::string(stage_name(s));
  return "L" + std::to_string(layer) + "." + std::string(stage_name(s));
}

bool TapRecorder::wants(Stage s, int layer) const {
  if (filter_.empty() || filter_.count("*")) return true;
  return filter_.count(std::string(stage_name(s))) || filter_.count(tap_name(s, layer));
}

void TapRecorder::publish(Stage s, int layer, const Tensor& t) {
  TD_CHECK(t.device == Device::CPU, "TapRecorder got a device tensor for {}; paths copy taps to the host first",
           tap_name(s, layer));
  taps_.insert_or_assign(tap_name(s, layer), HostTensor::to_f32(t));
}

const HostTensor* TapRecorder::find(const std::string& name) const {
  auto it = taps_.find(name);
  return it == taps_.end() ? nullptr : &it->second;
}

void TapRecorder::save(const std::string& path, const std::string& prefix) const {
  std::vector<NamedTensor> out;
  for (const auto& [name, t] : taps_) out.push_back({prefix + name, t.view()});
  write_safetensors(path, out, {{"producer", "tandem taps"}});
}

}  // namespace tandem
