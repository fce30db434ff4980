// The standard variants: one CUDA kernel (or cuBLASLt GEMM) per stage, src/cuda/*.cuh, and the `standard` path
// preset. Also the test-only CUDA twins of cpu/reference_variants.cpp's deliberately wrong variants.
#include <vector>

#include "cuda/attention.cuh"
#include "cuda/check.h"
#include "cuda/cuda_host.h"
#include "cuda/elementwise.cuh"
#include "cuda/embedding.cuh"
#include "cuda/norm.cuh"
#include "cuda/rope.cuh"
#include "exec/variant.h"

namespace tandem::cuda {
namespace {

CudaContext& ctx(const VariantArgs& a) { return static_cast<CudaContext&>(a.device); }
cudaStream_t stream(const VariantArgs& a) { return ctx(a).stream; }

const std::vector<KvLayout> kBothLayouts{KvLayout::NHD, KvLayout::HND};

Variant standard(Stage s, std::string summary, std::function<void(const VariantArgs&)> run,
                 std::vector<KvLayout> layouts = {}) {
  Variant v;
  v.name = std::string(stage_name(s)) + ".standard";
  v.device = Device::CUDA;
  v.stages = {s, s};
  v.kv_layouts = std::move(layouts);
  v.summary = std::move(summary);
  v.run = std::move(run);
  v.graph_safe = true;  // each launches kernels on the stream and reads only device tensors
  return v;
}

TD_REGISTER_VARIANT(standard(Stage::embed, "gather kernel", [](const VariantArgs& a) {
  embed(a.weights.embed, a.step.token_ids, a.slots.x, stream(a));
}));
TD_REGISTER_VARIANT(standard(Stage::attn_norm, "RMSNorm kernel, fp32 statistics", [](const VariantArgs& a) {
  rmsnorm(a.slots.x, a.lw->attn_norm, float(a.config.rms_eps), a.slots.h, stream(a));
}));
TD_REGISTER_VARIANT(standard(Stage::qkv, "cuBLASLt GEMM + bias kernel", [](const VariantArgs& a) {
  ctx(a).gemm->linear(a.slots.h, a.lw->wqkv, a.slots.qkv, stream(a));
  if (a.lw->bqkv.data) add_bias(a.slots.qkv, a.lw->bqkv, stream(a));
}));
TD_REGISTER_VARIANT(standard(Stage::rope, "rotate-half RoPE kernel, fp32 angles", [](const VariantArgs& a) {
  const ModelConfig& c = a.config;
  rope(a.slots.qkv, a.step.positions, a.device.rope_inv_freq, int(c.n_heads), int(c.n_kv_heads), int(c.head_dim),
       stream(a));
}));
TD_REGISTER_VARIANT(standard(
    Stage::kv_write, "copy kernel into the page slots",
    [](const VariantArgs& a) { kv_write(a.slots.qkv, a.step.positions, *a.kv, attention_shape(a.config), stream(a)); },
    kBothLayouts));
TD_REGISTER_VARIANT(standard(
    Stage::attention, "one block per (token, head), online softmax over 64-key chunks, fp32",
    [](const VariantArgs& a) {
      attention(a.slots.qkv, a.step.positions, *a.kv, attention_shape(a.config), a.slots.attn, stream(a));
    },
    kBothLayouts));
TD_REGISTER_VARIANT(standard(Stage::o_proj, "cuBLASLt GEMM + bias kernel", [](const VariantArgs& a) {
  ctx(a).gemm->linear(a.slots.attn, a.lw->wo, a.slots.h, stream(a));
  if (a.lw->bo.data) add_bias(a.slots.h, a.lw->bo, stream(a));
}));
TD_REGISTER_VARIANT(standard(Stage::attn_residual, "add kernel", [](const VariantArgs& a) {
  add(a.slots.x, a.slots.h, a.slots.x, stream(a));
}));
TD_REGISTER_VARIANT(standard(Stage::mlp_norm, "RMSNorm kernel, fp32 statistics", [](const VariantArgs& a) {
  rmsnorm(a.slots.x, a.lw->mlp_norm, float(a.config.rms_eps), a.slots.h, stream(a));
}));
TD_REGISTER_VARIANT(standard(Stage::gate_up, "cuBLASLt GEMM", [](const VariantArgs& a) {
  ctx(a).gemm->linear(a.slots.h, a.lw->w_gate_up, a.slots.gate_up, stream(a));
}));
TD_REGISTER_VARIANT(standard(Stage::act, "silu(gate) * up kernel", [](const VariantArgs& a) {
  silu_mul(a.slots.gate_up, a.slots.act, stream(a));
}));
TD_REGISTER_VARIANT(standard(Stage::down, "cuBLASLt GEMM", [](const VariantArgs& a) {
  ctx(a).gemm->linear(a.slots.act, a.lw->w_down, a.slots.h, stream(a));
}));
TD_REGISTER_VARIANT(standard(Stage::mlp_residual, "add kernel", [](const VariantArgs& a) {
  add(a.slots.x, a.slots.h, a.slots.x, stream(a));
}));
TD_REGISTER_VARIANT(standard(Stage::final_norm, "RMSNorm kernel, fp32 statistics", [](const VariantArgs& a) {
  rmsnorm(a.slots.x, a.weights.final_norm, float(a.config.rms_eps), a.slots.h, stream(a));
}));
TD_REGISTER_VARIANT(standard(Stage::logits, "gather kernel + cuBLASLt GEMM to fp32", [](const VariantArgs& a) {
  if (a.slots.logits.shape[0] == 0) return;
  gather_rows(a.slots.h, a.step.logit_rows, a.slots.final_rows, stream(a));
  ctx(a).gemm->linear(a.slots.final_rows, a.weights.lm_head, a.slots.logits, stream(a));
}));

// Test-only twins of cpu/reference_variants.cpp's: attention at position - 1 (ignores the last key), and a
// kv_write that skips layer 1.
Variant drop_last_key() {
  Variant v = standard(
      Stage::attention, "TEST ONLY: ignores the last key of every query",
      [](const VariantArgs& a) {
        std::vector<int32_t> shifted(a.step.host_positions.begin(), a.step.host_positions.end());
        for (int32_t& p : shifted) --p;
        const Tensor pos = ctx(a).scratch_i32;
        // Pageable source: the copy has read `shifted` when the call returns.
        TD_CUDA_CHECK(cudaMemcpyAsync(pos.data, shifted.data(), shifted.size() * sizeof(int32_t),
                                      cudaMemcpyHostToDevice, stream(a)));
        attention(a.slots.qkv, pos, *a.kv, attention_shape(a.config), a.slots.attn, stream(a));
      },
      kBothLayouts);
  v.name = "attention.test_drop_last_key";
  v.test_only = true;
  v.graph_safe = false;  // copies host positions
  return v;
}
TD_REGISTER_VARIANT(drop_last_key());

Variant skip_layer1_append() {
  Variant v = standard(
      Stage::kv_write, "TEST ONLY: does not append layer 1's K/V",
      [](const VariantArgs& a) {
        if (a.layer != 1) kv_write(a.slots.qkv, a.step.positions, *a.kv, attention_shape(a.config), stream(a));
      },
      kBothLayouts);
  v.name = "kv_write.test_skip_layer1";
  v.test_only = true;
  return v;
}
TD_REGISTER_VARIANT(skip_layer1_append());

std::vector<std::string> standard_preset() {
  std::vector<std::string> names;
  for (int s = 0; s < kNumStages; ++s) names.push_back(std::string(stage_name(Stage(s))) + ".standard");
  return names;
}
TD_REGISTER_PATH(PathPreset{"standard", Device::CUDA,
                            "CUDA, one kernel per stage, cuBLASLt GEMMs, fp32 accumulation: the trusted GPU baseline",
                            standard_preset()});

}  // namespace
}  // namespace tandem::cuda
