// Stages, variants and path presets as data.
//
// A variant is a named implementation ("attention.standard", later "qkv_rope_kvwrite.fused") of one stage or a
// contiguous run of stages (StageRange) on one device. It runs over one layer's activation slots (or the
// model-level ones for embed, final_norm and logits), the weights, that layer's paged KV cache and the step's
// metadata, all given as Tensor views on its device in VariantArgs. The executor (runtime/executor.h) publishes
// the tap of a variant's last stage from the slot stage_output_slot() names.
//
// Variants register themselves, at static-initialization time, in one table per device family
// (TD_REGISTER_VARIANT next to their kernels: cpu/reference_variants.cpp, cuda/standard_variants.cpp). A path
// preset ("reference", "standard") names one variant per stage and the device it runs on; runtime/plan.h turns a
// preset plus --variant overrides into a checked Plan.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "diag/taps.h"
#include "exec/kv_cache.h"
#include "model/model.h"

namespace tandem {

// The stages a layer repeats, in order: attn_norm .. mlp_residual. embed precedes them; final_norm, logits follow.
constexpr Stage kFirstLayerStage = Stage::attn_norm;
constexpr Stage kLastLayerStage = Stage::mlp_residual;

struct StageRange {
  Stage first = Stage::embed, last = Stage::embed;
  bool contains(Stage s) const { return int(first) <= int(s) && int(s) <= int(last); }
  std::string str() const;  // "attention" or "qkv..kv_write"
};

// Activation buffers of one step on the executing device; rows = the step's tokens, except final_rows/logits
// (one row per token that asked for logits).
enum class Slot : uint8_t { x, h, qkv, attn, gate_up, act, logits, kv_rows };
struct ActivationSlots {
  Tensor x;        // [T, H]  residual stream
  Tensor h;        // [T, H]  norm outputs, projections
  Tensor qkv;      // [T, q_dim + 2 kv_dim]
  Tensor attn;     // [T, q_dim]
  Tensor gate_up;  // [T, 2 I]
  Tensor act;      // [T, I]
  Tensor final_rows;  // [R, H] the final_norm rows that need logits
  Tensor logits;      // [R, V] f32
  const Tensor& get(Slot s) const;
};
// The slot holding a stage's output after it ran (kv_write's tap is read back from the cache: Slot::kv_rows).
Slot stage_output_slot(Stage s);

// The step on the executing device.
struct StepView {
  int64_t tokens = 0;
  Tensor token_ids;   // i32 [T]
  Tensor positions;   // i32 [T]
  Tensor logit_rows;  // i32 [R]: the step row of each logits row
  std::span<const int32_t> host_positions;  // the same positions on the host
  const KvStepTables* tables = nullptr;     // the step's page tables on the host (what kv tensors hold)
  int64_t serial = 0;                       // increments every step: variants that plan once per step key on it
  // The step may run from a CUDA graph (a decode step the executor captures or replays): whatever prepare()
  // chooses must give the same launches for every step of the same shape (FlashInfer plans in graph mode).
  bool graphable = false;
};

// What a device family gives its variants beyond the tensors (the CUDA one adds the stream and GEMM handle).
class DeviceContext {
 public:
  virtual ~DeviceContext() = default;
  virtual Device device() const = 0;
  Tensor rope_inv_freq;  // f32 [head_dim / 2] on the device
  // Reset before each step's prepare() calls; a variant whose launches bake values chosen in prepare() (workspace
  // pointers, grid sizes) mixes them in, so that a CUDA graph captured with other values is not replayed.
  uint64_t graph_salt = 0;
};

struct VariantArgs {
  const ModelConfig& config;
  int layer = -1;  // -1 for embed, final_norm and logits
  const ModelWeights& weights;
  const LayerWeights* lw = nullptr;  // this layer's weights (null for model-level stages)
  const ActivationSlots& slots;
  const StepView& step;
  const PagedKv* kv = nullptr;  // this layer's cache (null for model-level stages)
  DeviceContext& device;
};

// Which copy of the weights a variant reads (the host loads those its plan needs, DeviceHost::prepare_weights):
// dense = every matrix in the host's compute dtype (fp32 on the CPU; what the reference and CUDA variants read);
// stored = matrices as the file stores them (GGUF blocks, f16/bf16/f32; model/stored_weights.h), norms and biases
// f32 (the fast CPU variants).
enum class WeightFormat : uint8_t { dense, stored };

struct Variant {
  std::string name;  // "<stages>.<impl>", e.g. "attention.standard"
  Device device = Device::CPU;
  StageRange stages;
  WeightFormat weights = WeightFormat::dense;
  std::vector<KvLayout> kv_layouts;  // layouts it reads or writes; empty: it touches no KV
  bool test_only = false;            // deliberately wrong, for tests of the diagnostics; never in a preset
  std::string summary;
  // Why it cannot run this model in this dtype, or nullopt when it can. May be empty (always supported).
  std::function<std::optional<std::string>(const ModelConfig&, DType)> unsupported;
  std::function<void(const VariantArgs&)> run;
  // Host work once per step before any layer runs (e.g. FlashInfer's plan), given layer 0's args (or the
  // model-level ones); never recorded in a CUDA graph. May be empty.
  std::function<void(const VariantArgs&)> prepare;
  // run() only launches device work on the context's stream, reading nothing from the host's step data that
  // changes between steps of the same shape (no host sync, no copies from host memory, no allocation): its
  // launches can be captured once and replayed as a CUDA graph.
  bool graph_safe = false;
  // What the variant chose for the last step (e.g. FlashInfer's plan: tile, padded batch, split-KV), for diff's
  // report of what went into a tensor; may be empty.
  std::function<std::string(DeviceContext&)> state;
  // Variants that must be in the same plan, and why (e.g. a norm that the previous layer's fused residual kernel
  // already computed). build_plan rejects a plan that lacks one; a preset's fallback replaces both.
  std::vector<std::string> needs;
  std::string needs_why;

  std::string_view impl() const;  // the part after the last '.'
  bool touches_kv() const { return !kv_layouts.empty(); }
  bool supports_layout(KvLayout l) const;
};

void register_variant(Variant v);
// Every registered variant of a device family, in stage order then by name.
std::vector<const Variant*> variants_for(Device d);
const Variant* find_variant(Device d, std::string_view name);

// A path preset: one variant name per stage, on one device.
struct PathPreset {
  std::string name;
  Device device = Device::CPU;
  std::string summary;
  std::vector<std::string> variants;  // each stage covered exactly once
  // A preset whose variants replace, stage by stage, any of these that cannot run the model (with a notice); empty:
  // such a model is an error.
  std::string fallback = {};
};
void register_path(PathPreset p);
const std::vector<PathPreset>& path_presets();
const PathPreset* find_path(std::string_view name);

#define TD_CONCAT_INNER(a, b) a##b
#define TD_CONCAT(a, b) TD_CONCAT_INNER(a, b)
// Registers at static-initialization time: TD_REGISTER_VARIANT(Variant{...});
#define TD_REGISTER_VARIANT(...) \
  static const bool TD_CONCAT(td_variant_registered_, __LINE__) = (::tandem::register_variant(__VA_ARGS__), true)
#define TD_REGISTER_PATH(...) \
  static const bool TD_CONCAT(td_path_registered_, __LINE__) = (::tandem::register_path(__VA_ARGS__), true)

}  // namespace tandem
