// The reference variants: one per stage, fp32 on the CPU (cpu/ops.h), and the `reference` path preset.
// Also the test-only variants the diagnostics are tested with (deliberately wrong; never in a preset).
#include <vector>

#include "cpu/ops.h"
#include "exec/variant.h"

namespace tandem::cpu {
namespace {


const std::vector<KvLayout> kBothLayouts{KvLayout::NHD, KvLayout::HND};

Variant reference(Stage s, std::string summary, std::function<void(const VariantArgs&)> run,
                  std::vector<KvLayout> layouts = {}) {
  Variant v;
  v.name = std::string(stage_name(s)) + ".reference";
  v.device = Device::CPU;
  v.stages = {s, s};
  v.kv_layouts = std::move(layouts);
  v.summary = std::move(summary);
  v.run = std::move(run);
  return v;
}

TD_REGISTER_VARIANT(reference(Stage::embed, "table row copy", [](const VariantArgs& a) {
  embed(a.weights.embed, a.step.token_ids, a.slots.x);
}));
TD_REGISTER_VARIANT(reference(Stage::attn_norm, "RMSNorm, sum of squares in double", [](const VariantArgs& a) {
  rmsnorm(a.slots.x, a.lw->attn_norm, float(a.config.rms_eps), a.slots.h);
}));
TD_REGISTER_VARIANT(reference(Stage::qkv, "x . Wqkv^T (+ bias)", [](const VariantArgs& a) {
  linear(a.slots.h, a.lw->wqkv, a.slots.qkv);
  if (a.lw->bqkv.data) add_bias(a.slots.qkv, a.lw->bqkv);
}));
TD_REGISTER_VARIANT(reference(Stage::rope, "rotate-half RoPE on q and k, fp32 angles", [](const VariantArgs& a) {
  const ModelConfig& c = a.config;
  rope(a.slots.qkv, a.step.positions, a.device.rope_inv_freq, int(c.n_heads), int(c.n_kv_heads), int(c.head_dim));
}));
TD_REGISTER_VARIANT(reference(
    Stage::kv_write, "copy k, v into the token's page slot",
    [](const VariantArgs& a) { kv_write(a.slots.qkv, a.step.positions, *a.kv, attention_shape(a.config)); },
    kBothLayouts));
TD_REGISTER_VARIANT(reference(
    Stage::attention, "causal GQA softmax(q k^T / sqrt(d)) v over the pages, fp32",
    [](const VariantArgs& a) {
      attention(a.slots.qkv, a.step.positions, *a.kv, attention_shape(a.config), a.slots.attn);
    },
    kBothLayouts));
TD_REGISTER_VARIANT(reference(Stage::o_proj, "attn . Wo^T (+ bias)", [](const VariantArgs& a) {
  linear(a.slots.attn, a.lw->wo, a.slots.h);
  if (a.lw->bo.data) add_bias(a.slots.h, a.lw->bo);
}));
TD_REGISTER_VARIANT(reference(Stage::attn_residual, "x += o_proj", [](const VariantArgs& a) {
  add(a.slots.x, a.slots.h, a.slots.x);
}));
TD_REGISTER_VARIANT(reference(Stage::mlp_norm, "RMSNorm, sum of squares in double", [](const VariantArgs& a) {
  rmsnorm(a.slots.x, a.lw->mlp_norm, float(a.config.rms_eps), a.slots.h);
}));
TD_REGISTER_VARIANT(reference(Stage::gate_up, "h . Wgate_up^T", [](const VariantArgs& a) {
  linear(a.slots.h, a.lw->w_gate_up, a.slots.gate_up);
}));
TD_REGISTER_VARIANT(reference(Stage::act, "silu(gate) * up", [](const VariantArgs& a) {
  silu_mul(a.slots.gate_up, a.slots.act);
}));
TD_REGISTER_VARIANT(reference(Stage::down, "act . Wdown^T", [](const VariantArgs& a) {
  linear(a.slots.act, a.lw->w_down, a.slots.h);
}));
TD_REGISTER_VARIANT(reference(Stage::mlp_residual, "x += down", [](const VariantArgs& a) {
  add(a.slots.x, a.slots.h, a.slots.x);
}));
TD_REGISTER_VARIANT(reference(Stage::final_norm, "RMSNorm, sum of squares in double", [](const VariantArgs& a) {
  rmsnorm(a.slots.x, a.weights.final_norm, float(a.config.rms_eps), a.slots.h);
}));
TD_REGISTER_VARIANT(reference(Stage::logits, "gather the rows that want logits, . lm_head^T", [](const VariantArgs& a) {
  if (a.slots.logits.shape[0] == 0) return;
  gather_rows(a.slots.h, a.step.logit_rows, a.slots.final_rows);
  linear(a.slots.final_rows, a.weights.lm_head, a.slots.logits);
}));

// Test-only: attention that ignores each query's last key (its own), i.e. runs at position - 1. A query at
// position 0 sees no key and gets a NaN row.
Variant drop_last_key() {
  Variant v = reference(
      Stage::attention, "TEST ONLY: ignores the last key of every query",
      [](const VariantArgs& a) {
        std::vector<int32_t> shifted(a.step.host_positions.begin(), a.step.host_positions.end());
        for (int32_t& p : shifted) --p;
        const Tensor pos = Tensor::contiguous(shifted.data(), DType::I32, {int64_t(shifted.size())});
        attention(a.slots.qkv, pos, *a.kv, attention_shape(a.config), a.slots.attn);
      },
      kBothLayouts);
  v.name = "attention.test_drop_last_key";
  v.test_only = true;
  return v;
}
TD_REGISTER_VARIANT(drop_last_key());

// Test-only: kv_write that skips layer 1's append (what --kv-poison must catch at L1.attention).
Variant skip_layer1_append() {
  Variant v = reference(
      Stage::kv_write, "TEST ONLY: does not append layer 1's K/V",
      [](const VariantArgs& a) {
        if (a.layer != 1) kv_write(a.slots.qkv, a.step.positions, *a.kv, attention_shape(a.config));
      },
      kBothLayouts);
  v.name = "kv_write.test_skip_layer1";
  v.test_only = true;
  return v;
}
TD_REGISTER_VARIANT(skip_layer1_append());


// Planted bugs (test-only), each a real failure class for the diagnostics to localize (tests/unit/test_planted.cpp).
// RoPE with the position off by one in decode steps only (steps of one token per sequence): prefill is equal,
// the first decode step diverges at L0.rope.
Variant rope_decode_offset() {
  Variant v = reference(Stage::rope, "TEST ONLY: decode steps rotate at position + 1", [](const VariantArgs& a) {
    const ModelConfig& c = a.config;
    std::vector<int32_t> pos(a.step.host_positions.begin(), a.step.host_positions.end());
    const bool decode = a.step.tables && a.step.tables->seq_ids.size() == pos.size();
    if (decode)
      for (int32_t& p : pos) ++p;
    const Tensor t = Tensor::contiguous(pos.data(), DType::I32, {int64_t(pos.size())});
    rope(a.slots.qkv, t, a.device.rope_inv_freq, int(c.n_heads), int(c.n_kv_heads), int(c.head_dim));
  });
  v.name = "rope.test_decode_offset";
  v.test_only = true;
  return v;
}
TD_REGISTER_VARIANT(rope_decode_offset());

// Attention that reads an NHD cache as if it were HND (the layout mix-up): the page is the same block, the
// slot/head strides are swapped, so keys come from the wrong slots from the first prefill on.
Variant read_nhd_as_hnd() {
  Variant v = reference(
      Stage::attention, "TEST ONLY: reads the NHD cache with HND strides",
      [](const VariantArgs& a) {
        const ModelConfig& c = a.config;
        PagedKv kv = *a.kv;
        const KvGeometry g{1, c.n_kv_heads, c.head_dim, kv.page_size, KvLayout::HND};
        kv.k = kv_pool_view(kv.k.data, kv.k.dtype, kv.k.device, g, kv.k.shape[0]);
        kv.v = kv_pool_view(kv.v.data, kv.v.dtype, kv.v.device, g, kv.v.shape[0]);
        kv.layout = KvLayout::HND;
        attention(a.slots.qkv, a.step.positions, kv, attention_shape(c), a.slots.attn);
      },
      {KvLayout::NHD});
  v.name = "attention.test_read_nhd_as_hnd";
  v.test_only = true;
  return v;
}
TD_REGISTER_VARIANT(read_nhd_as_hnd());

// Attention that reads another sequence's pages (entry b uses entry (b + 1) % B's page list): invisible at batch 1,
// wrong (or NaN where the other sequence is shorter) as soon as two sequences share a step.
Variant other_sequence_pages() {
  Variant v = reference(
      Stage::attention, "TEST ONLY: each sequence reads the next sequence's pages",
      [](const VariantArgs& a) {
        PagedKv kv = *a.kv;
        const int64_t B = kv.batch(), T = kv.token_batch.numel();
        std::vector<int32_t> shifted(static_cast<size_t>(T));
        for (int64_t t = 0; t < T; ++t) shifted[size_t(t)] = int32_t((kv.token_batch.ptr<const int32_t>()[t] + 1) % B);
        kv.token_batch = Tensor::contiguous(shifted.data(), DType::I32, {T});
        attention(a.slots.qkv, a.step.positions, kv, attention_shape(a.config), a.slots.attn);
      },
      kBothLayouts);
  v.name = "attention.test_other_seq_pages";
  v.test_only = true;
  return v;
}
TD_REGISTER_VARIANT(other_sequence_pages());

std::vector<std::string> reference_preset() {
  std::vector<std::string> names;
  for (int s = 0; s < kNumStages; ++s) names.push_back(std::string(stage_name(Stage(s))) + ".reference");
  return names;
}
TD_REGISTER_PATH(PathPreset{"reference", Device::CPU, "fp32 on the CPU, the oracle: one plain loop per stage",
                            reference_preset()});

}  // namespace
}  // namespace tandem::cpu
