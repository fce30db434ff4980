// Stages and taps. A transformer layer is a fixed sequence of stages; the output of a stage is a tap named
// "L{layer}.{stage}" ("embed", "final_norm" and "logits" for the model-level ones). A path publishes the
// taps it materializes to an optional TapSink; with no sink attached, taps cost nothing.
//
// Tap shapes are [tokens in the step, features]: rows follow the step's token order (see runtime/step.h);
// "logits" has one row per token that asked for logits.
#pragma once
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "core/tensor.h"

namespace tandem {

enum class Stage : uint8_t {
  embed,
  attn_norm,
  qkv,            // [T, q_dim + 2 kv_dim]: q | k | v after bias
  rope,           // same layout, rotary embedding applied to q and k
  kv_write,
  attention,      // [T, q_dim]: softmax(q k^T) v, heads concatenated (input of o_proj)
  o_proj,
  attn_residual,
  mlp_norm,
  gate_up,        // [T, 2 I]: gate | up
  act,            // [T, I]: silu(gate) * up
  down,
  mlp_residual,   // the layer's output
  final_norm,
  logits,
};
constexpr int kNumStages = int(Stage::logits) + 1;

std::string_view stage_name(Stage s);
std::optional<Stage> stage_from_name(std::string_view name);
bool stage_is_per_layer(Stage s);
// "L3.attention", or "embed" / "final_norm" / "logits" (layer ignored).
std::string tap_name(Stage s, int layer);

class TapSink {
 public:
  virtual ~TapSink() = default;
  // Cheap filter asked before a path copies anything off the device.
  virtual bool wants(Stage s, int layer) const = 0;
  virtual void publish(Stage s, int layer, const Tensor& t) = 0;
};

// Keeps fp32 copies of the taps it wants. Filter entries are tap names ("L1.attention"), stage names
// ("attention": every layer) or "*"; an empty filter keeps everything.
class TapRecorder final : public TapSink {
 public:
  explicit TapRecorder(std::set<std::string> filter = {}) : filter_(std::move(filter)) {}
  bool wants(Stage s, int layer) const override;
  void publish(Stage s, int layer, const Tensor& t) override;

  const std::map<std::string, HostTensor>& taps() const { return taps_; }
  const HostTensor* find(const std::string& name) const;
  void clear() { taps_.clear(); }
  // Writes every recorded tap to a safetensors file, each name prefixed with `prefix`.
  void save(const std::string& path, const std::string& prefix = "") const;

 private:
  std::set<std::string> filter_;
  std::map<std::string, HostTensor> taps_;
};

}  // namespace tandem
