// The fast CPU variants ("<stage>.stored") and the `cpu` path preset: weights in their stored format (model/stored_weights.h), the
// linear stages on the quantized kernels of cpu/quant_dot.h (SIMD chosen at run time, multi-threaded), the
// embedding dequantized row by row from the stored table. Stages where the reference loop is not the cost yet run
// the reference ops (cpu/ops.h) on the same stored-format weights (norms and biases are f32 there too).
#include <string>
#include <vector>

#include "cpu/attention_fast.h"
#include "cpu/ops.h"
#include "cpu/quant_dot.h"
#include "exec/variant.h"
#include "io/dequant.h"

namespace tandem::cpu {
namespace {

const std::vector<KvLayout> kBothLayouts{KvLayout::NHD, KvLayout::HND};

Variant fast(Stage s, std::string summary, std::function<void(const VariantArgs&)> run,
             std::vector<KvLayout> layouts = {}) {
  Variant v;
  v.name = std::string(stage_name(s)) + ".stored";
  v.device = Device::CPU;
  v.stages = {s, s};
  v.weights = WeightFormat::stored;
  v.kv_layouts = std::move(layouts);
  v.summary = std::move(summary);
  v.run = std::move(run);
  return v;
}

// out[t, :] = table[tokens[t], :] dequantized (any stored format).
void embed_stored(const Tensor& table, const Tensor& tokens, const Tensor& out) {
  const int64_t T = tokens.numel(), H = table.shape[1];
  const int64_t row_bytes = H / dtype_block_elems(table.dtype) * dtype_block_bytes(table.dtype);
  TD_CHECK(out.dtype == DType::F32 && out.shape[0] == T && out.shape[1] == H, "embed: output {} for {} tokens of {}",
           out.describe(), T, table.describe());
  for (int64_t t = 0; t < T; ++t) {
    const int32_t id = tokens.ptr<const int32_t>()[t];
    TD_CHECK(id >= 0 && id < table.shape[0], "embed: token id {} outside the vocabulary ({})", id, table.shape[0]);
    dequantize_row(table.dtype, static_cast<const uint8_t*>(table.data) + id * row_bytes, out.ptr<float>() + t * H, H);
  }
}

TD_REGISTER_VARIANT(fast(Stage::embed, "stored-format table, rows dequantized", [](const VariantArgs& a) {
  embed_stored(a.weights.embed, a.step.token_ids, a.slots.x);
}));
TD_REGISTER_VARIANT(fast(Stage::attn_norm, "RMSNorm (reference op)", [](const VariantArgs& a) {
  rmsnorm(a.slots.x, a.lw->attn_norm, float(a.config.rms_eps), a.slots.h);
}));
TD_REGISTER_VARIANT(fast(Stage::qkv, "x . Wqkv^T on stored blocks (Q8 activations), SIMD (+ bias)",
                         [](const VariantArgs& a) {
                           linear_stored(a.slots.h, a.lw->wqkv, a.slots.qkv);
                           if (a.lw->bqkv.data) add_bias(a.slots.qkv, a.lw->bqkv);
                         }));
TD_REGISTER_VARIANT(fast(Stage::rope, "rotate-half RoPE (reference op)", [](const VariantArgs& a) {
  const ModelConfig& c = a.config;
  rope(a.slots.qkv, a.step.positions, a.device.rope_inv_freq, int(c.n_heads), int(c.n_kv_heads), int(c.head_dim));
}));
TD_REGISTER_VARIANT(fast(
    Stage::kv_write, "copy k, v into the token's page slot (reference op)",
    [](const VariantArgs& a) { kv_write(a.slots.qkv, a.step.positions, *a.kv, attention_shape(a.config)); },
    kBothLayouts));
TD_REGISTER_VARIANT(fast(
    Stage::attention, "causal GQA attention over the f32 pages, parallel over (token, kv head), AVX2",
    [](const VariantArgs& a) {
      attention_fast(a.slots.qkv, a.step.positions, *a.kv, attention_shape(a.config), a.slots.attn);
    },
    kBothLayouts));
TD_REGISTER_VARIANT(fast(Stage::o_proj, "attn . Wo^T on stored blocks, SIMD (+ bias)", [](const VariantArgs& a) {
  linear_stored(a.slots.attn, a.lw->wo, a.slots.h);
  if (a.lw->bo.data) add_bias(a.slots.h, a.lw->bo);
}));
TD_REGISTER_VARIANT(fast(Stage::attn_residual, "x += o_proj", [](const VariantArgs& a) {
  add(a.slots.x, a.slots.h, a.slots.x);
}));
TD_REGISTER_VARIANT(fast(Stage::mlp_norm, "RMSNorm (reference op)", [](const VariantArgs& a) {
  rmsnorm(a.slots.x, a.lw->mlp_norm, float(a.config.rms_eps), a.slots.h);
}));
TD_REGISTER_VARIANT(fast(Stage::gate_up, "h . Wgate_up^T on stored blocks, SIMD", [](const VariantArgs& a) {
  linear_stored(a.slots.h, a.lw->w_gate_up, a.slots.gate_up);
}));
TD_REGISTER_VARIANT(fast(Stage::act, "silu(gate) * up (reference op)", [](const VariantArgs& a) {
  silu_mul(a.slots.gate_up, a.slots.act);
}));
TD_REGISTER_VARIANT(fast(Stage::down, "act . Wdown^T on stored blocks, SIMD", [](const VariantArgs& a) {
  linear_stored(a.slots.act, a.lw->w_down, a.slots.h);
}));
TD_REGISTER_VARIANT(fast(Stage::mlp_residual, "x += down", [](const VariantArgs& a) {
  add(a.slots.x, a.slots.h, a.slots.x);
}));
TD_REGISTER_VARIANT(fast(Stage::final_norm, "RMSNorm (reference op)", [](const VariantArgs& a) {
  rmsnorm(a.slots.x, a.weights.final_norm, float(a.config.rms_eps), a.slots.h);
}));
TD_REGISTER_VARIANT(fast(Stage::logits, "gather the rows that want logits, . lm_head^T on stored blocks, SIMD",
                         [](const VariantArgs& a) {
                           if (a.slots.logits.shape[0] == 0) return;
                           gather_rows(a.slots.h, a.step.logit_rows, a.slots.final_rows);
                           linear_stored(a.slots.final_rows, a.weights.lm_head, a.slots.logits);
                         }));

std::vector<std::string> cpu_preset() {
  std::vector<std::string> names;
  for (int s = 0; s < kNumStages; ++s) names.push_back(std::string(stage_name(Stage(s))) + ".stored");
  return names;
}
TD_REGISTER_PATH(PathPreset{"cpu", Device::CPU,
                            "weights in their stored format (GGUF blocks), SIMD quantized linears, multi-threaded",
                            cpu_preset(), "reference"});

}  // namespace
}  // namespace tandem::cpu
