#include "exec/variant.h"

#include <algorithm>
#include <map>

#include "core/error.h"
#include "exec/device_host.h"

namespace tandem {
namespace {
struct Registry {
  std::vector<std::unique_ptr<Variant>> variants;
  std::vector<PathPreset> paths;
  std::vector<DeviceFamily> families;
};
Registry& registry() {
  static Registry r;  // function-local: safe to use from other translation units' static initializers
  return r;
}
}  // namespace

std::string StageRange::str() const {
  if (first == last) return std::string(stage_name(first));
  return std::string(stage_name(first)) + ".." + std::string(stage_name(last));
}

const Tensor& ActivationSlots::get(Slot s) const {
  switch (s) {
    case Slot::x: return x;
    case Slot::h: return h;
    case Slot::qkv: return qkv;
    case Slot::attn: return attn;
    case Slot::gate_up: return gate_up;
    case Slot::act: return act;
    case Slot::logits: return logits;
    case Slot::kv_rows: break;
  }
  fail("slot kv_rows is read back from the KV cache, not held in a slot");
}

Slot stage_output_slot(Stage s) {
  switch (s) {
    case Stage::embed: return Slot::x;
    case Stage::attn_norm: return Slot::h;
    case Stage::qkv: return Slot::qkv;
    case Stage::rope: return Slot::qkv;
    case Stage::kv_write: return Slot::kv_rows;
    case Stage::attention: return Slot::attn;
    case Stage::o_proj: return Slot::h;
    case Stage::attn_residual: return Slot::x;
    case Stage::mlp_norm: return Slot::h;
    case Stage::gate_up: return Slot::gate_up;
    case Stage::act: return Slot::act;
    case Stage::down: return Slot::h;
    case Stage::mlp_residual: return Slot::x;
    case Stage::final_norm: return Slot::h;
    case Stage::logits: return Slot::logits;
  }
  fail("unknown stage {}", int(s));
}

std::string_view Variant::impl() const {
  const size_t dot = name.rfind('.');
  return dot == std::string::npos ? std::string_view(name) : std::string_view(name).substr(dot + 1);
}

bool Variant::supports_layout(KvLayout l) const {
  return std::find(kv_layouts.begin(), kv_layouts.end(), l) != kv_layouts.end();
}

void register_variant(Variant v) {
  TD_CHECK(!find_variant(v.device, v.name), "variant {} registered twice on {}", v.name, device_name(v.device));
  TD_CHECK(int(v.stages.first) <= int(v.stages.last), "variant {}: stage range {} is reversed", v.name,
           v.stages.str());
  const bool layer_run = int(v.stages.first) >= int(kFirstLayerStage) && int(v.stages.last) <= int(kLastLayerStage);
  const bool model_run = v.stages.last == Stage::embed ||
                         (int(v.stages.first) >= int(Stage::final_norm));
  TD_CHECK(layer_run || model_run, "variant {}: stages {} mix per-layer and model-level stages", v.name,
           v.stages.str());
  TD_CHECK(bool(v.run), "variant {}: no run function", v.name);
  registry().variants.push_back(std::make_unique<Variant>(std::move(v)));
}

std::vector<const Variant*> variants_for(Device d) {
  std::vector<const Variant*> out;
  for (const auto& v : registry().variants)
    if (v->device == d) out.push_back(v.get());
  std::sort(out.begin(), out.end(), [](const Variant* a, const Variant* b) {
    if (a->stages.first != b->stages.first) return int(a->stages.first) < int(b->stages.first);
    return a->name < b->name;
  });
  return out;
}

const Variant* find_variant(Device d, std::string_view name) {
  for (const auto& v : registry().variants)
    if (v->device == d && v->name == name) return v.get();
  return nullptr;
}

void register_path(PathPreset p) {
  TD_CHECK(!find_path(p.name), "path preset {} registered twice", p.name);
  registry().paths.push_back(std::move(p));
}

const std::vector<PathPreset>& path_presets() { return registry().paths; }

const PathPreset* find_path(std::string_view name) {
  for (const PathPreset& p : registry().paths)
    if (p.name == name) return &p;
  return nullptr;
}

void register_device_family(DeviceFamily f) {
  TD_CHECK(!find_device_family(f.device), "device family {} registered twice", device_name(f.device));
  registry().families.push_back(std::move(f));
}

const DeviceFamily* find_device_family(Device d) {
  for (const DeviceFamily& f : registry().families)
    if (f.device == d) return &f;
  return nullptr;
}

}  // namespace tandem
