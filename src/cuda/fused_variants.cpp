// The fused variants and the `fused` path preset: what a GPU serves with. Each variant covers a run of stages
// with fewer kernels than the standard path and the same rounding points, so every tap it publishes (its last
// stage's) stays within the standard path's tolerance, and the elementwise fusions are bit-identical.
//
//   qkv..kv_write     GEMV (T <= 8, cuda/gemv.cuh) or cuBLASLt GEMM, then one kernel: bias + RoPE + paged K/V
//                     append (cuda/attention.cuh)
//   o_proj, down      GEMV for T <= 8, else cuBLASLt GEMM
//   attention         decode steps of few sequences with short histories: the split-KV decode kernel
//                     (cuda/attention.cuh attention_decode); others: FlashInfer batch prefill over the paged
//                     cache, one plan per step (cuda/flashinfer.cuh)
//   attn_residual..mlp_norm   one kernel: x += o_proj; h = rmsnorm(x) (cuda/norm.cuh add_rmsnorm)
//   gate_up..act      T <= 8: one GEMV kernel gate/up + SiLU*mul (cuda/gemv.cuh); more rows: GEMM + silu_mul
//   mlp_residual      one kernel: x += down; h = the *next* norm of x (layer l+1's attn_norm, or final_norm)
//   attn_norm, final_norm   layer 0: the RMSNorm kernel; after a fused mlp_residual: nothing (h holds the norm)
//
// The last two need each other (Variant::needs): a plan that swaps mlp_residual.fused for the standard add must
// swap attn_norm and final_norm too, and build_plan says so. The preset falls back to `standard`, stage by stage,
// where a variant cannot run the model (FlashInfer's head dims and dtypes, cuda/flashinfer.cuh).
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "core/hash.h"
#include "cuda/attention.cuh"
#include "cuda/check.h"
#include "cuda/cuda_host.h"
#include "cuda/elementwise.cuh"
#include "cuda/flashinfer.cuh"
#include "cuda/gemv.cuh"
#include "cuda/norm.cuh"
#include "exec/variant.h"

namespace tandem::cuda {
namespace {

CudaContext& ctx(const VariantArgs& a) { return static_cast<CudaContext&>(a.device); }
cudaStream_t stream(const VariantArgs& a) { return ctx(a).stream; }

const std::vector<KvLayout> kBothLayouts{KvLayout::NHD, KvLayout::HND};
// Up to kGemvMaxRows rows (decode): the weight-streaming GEMV; more: cuBLASLt.
void linear_auto(const VariantArgs& a, const Tensor& x, const Tensor& w, const Tensor& out) {
  if (gemv_tuning(x.shape[0], w.shape[0], w.shape[1]) != GemvTuning::cublas) linear_gemv(x, w, out, stream(a));
  else ctx(a).gemm->linear(x, w, out, stream(a));
}

const char* const kNormNeeds =
    "mlp_residual.fused leaves the next layer's attn_norm (or final_norm) in h, and this variant uses it";

Variant fused(Stage first, Stage last, std::string impl, std::string summary,
              std::function<void(const VariantArgs&)> run, std::vector<KvLayout> layouts = {}) {
  Variant v;
  v.stages = {first, last};
  v.name = v.stages.str() + "." + impl;
  v.device = Device::CUDA;
  v.kv_layouts = std::move(layouts);
  v.summary = std::move(summary);
  v.run = std::move(run);
  v.graph_safe = true;
  return v;
}

Variant norm_after_fused_residual(Stage s) {
  Variant v = fused(s, s, "fused", "RMSNorm kernel at layer 0; after mlp_residual.fused nothing (h holds it)",
                    [s](const VariantArgs& a) {
                      if (s == Stage::attn_norm && a.layer == 0)
                        rmsnorm(a.slots.x, a.lw->attn_norm, float(a.config.rms_eps), a.slots.h, stream(a));
                    });
  v.needs = {"mlp_residual.fused"};
  v.needs_why = kNormNeeds;
  return v;
}
TD_REGISTER_VARIANT(norm_after_fused_residual(Stage::attn_norm));
TD_REGISTER_VARIANT(norm_after_fused_residual(Stage::final_norm));

TD_REGISTER_VARIANT(fused(
    Stage::qkv, Stage::kv_write, "fused",
    "GEMV (up to 8 rows) or cuBLASLt GEMM, then bias + RoPE + paged K/V append in one kernel",
    [](const VariantArgs& a) {
      linear_auto(a, a.slots.h, a.lw->wqkv, a.slots.qkv);
      qkv_rope_kv_write(a.slots.qkv, a.lw->bqkv, a.step.positions, a.device.rope_inv_freq, *a.kv,
                        attention_shape(a.config), stream(a));
    },
    kBothLayouts));

Variant flashinfer_attention() {
  Variant v = fused(
      Stage::attention, Stage::attention, "flashinfer",
      "FlashInfer FA2 batch prefill over the paged cache (decode = one query), one plan per step",
      [](const VariantArgs& a) {
        CudaContext& c = ctx(a);
        TD_CHECK(c.flashinfer && c.flashinfer_planned == a.step.serial,
                 "attention.flashinfer: the step was not planned (prepare() did not run for step {})", a.step.serial);
        c.flashinfer->run(a.slots.qkv, *a.kv, a.slots.attn, c.stream);
      },
      kBothLayouts);
  v.state = [](DeviceContext& d) {
    const CudaContext& c = static_cast<CudaContext&>(d);
    return c.flashinfer ? describe_plan(c.flashinfer->summary()) : std::string("FlashInfer: no plan yet");
  };
  // Once per step, outside any CUDA graph: the plan (graph mode for graphable decode steps).
  v.prepare = [](const VariantArgs& a) {
    CudaContext& c = ctx(a);
    const PagedKv& kv = *a.kv;
    const DType dt = a.slots.qkv.dtype;
    if (!c.flashinfer || c.flashinfer->dtype() != dt || c.flashinfer->page_size() != kv.page_size ||
        c.flashinfer->layout() != kv.layout || c.flashinfer->split_kv() != c.split_kv)
      c.flashinfer = std::make_shared<FlashInferAttention>(attention_shape(a.config), dt, kv.page_size, kv.layout,
                                                           8192, 256, c.split_kv);
    TD_CHECK(a.step.tables, "attention.flashinfer: the step's host page tables are missing");
    c.flashinfer->plan(*a.step.tables, kv.k.shape[0], c.stream, a.step.graphable);
    c.flashinfer_planned = a.step.serial;
    // (launch_signature() covers the split mode too: a graph captured under one mode is never replayed under
    // another, even if a context's mode changed)
    c.graph_salt ^= c.flashinfer->launch_signature();
  };
  v.unsupported = [](const ModelConfig& c, DType dt) -> std::optional<std::string> {
    std::string why;
    if (flashinfer_supports(attention_shape(c), dt, &why)) return std::nullopt;
    return why;
  };
  return v;
}
TD_REGISTER_VARIANT(flashinfer_attention());

// Where the split-KV decode kernel beats FlashInfer (H200, bf16, TANDEM_GEMV_TUNING=deep, tok/s, one call):
// batch 1 at context 128 (1B shape 891 vs 845, 8B 204 vs 197), but not batch 64 at context 128 (1B 36808 vs
// 38674) nor batch 1 at context 2048 (1B 613 vs 827, 8B 168 vs 194): its per-split merge costs more than
// FlashInfer's once the histories are long. So: decode steps of few sequences with short histories only.
constexpr int64_t kDecodeKernelMaxBatch = 8;
constexpr int64_t kDecodeKernelMaxKv = 256;

// A decode step (one query per sequence) that the split-KV decode kernel takes; other steps go to FlashInfer.
bool decode_step(const VariantArgs& a) {
  const KvStepTables* t = a.step.tables;
  if (!t || a.step.tokens != int64_t(t->seq_ids.size()) || a.step.tokens > kDecodeKernelMaxBatch) return false;
  for (int64_t len : t->kv_len)
    if (len > kDecodeKernelMaxKv) return false;
  return attention_decode_supports(attention_shape(a.config), a.slots.qkv.dtype);
}

Variant fused_attention() {
  Variant fi = flashinfer_attention();
  Variant v = fused(
      Stage::attention, Stage::attention, "fused",
      "decode steps of <= 8 sequences with <= 256 cached tokens: split-KV decode kernel (cuda/attention.cuh "
      "attention_decode); other steps: FlashInfer",
      [run_fi = fi.run](const VariantArgs& a) {
        if (!decode_step(a)) return run_fi(a);
        CudaContext& c = ctx(a);
        attention_decode(a.slots.qkv, a.step.positions, *a.kv, attention_shape(a.config), a.slots.attn,
                         c.decode_workspace.view(), c.stream);
      },
      kBothLayouts);
  v.state = [state_fi = fi.state](DeviceContext& d) {
    const CudaContext& c = static_cast<CudaContext&>(d);
    return "decode kernel workspace " + std::to_string(c.decode_workspace.nbytes()) + " B; " + state_fi(d);
  };
  v.prepare = [prepare_fi = fi.prepare](const VariantArgs& a) {
    if (!decode_step(a)) return prepare_fi(a);
    CudaContext& c = ctx(a);
    const int64_t need = attention_decode_workspace(a.step.tokens, attention_shape(a.config));
    if (need > c.decode_workspace.view().numel() || !c.decode_workspace.view().data) {
      c.decode_workspace = DeviceTensor::empty(DType::F32, {std::max<int64_t>(need, 1)});
      TD_CUDA_CHECK(cudaMemsetAsync(c.decode_workspace.view().data, 0, size_t(c.decode_workspace.nbytes()), c.stream));
    }
    // (the kernel choice is in the salt too: a graph captured with FlashInfer is not replayed for this kernel)
    c.graph_salt ^= fnv1a_mix(fnv1a_mix(kFnvOffset, 0x64656b), reinterpret_cast<uintptr_t>(c.decode_workspace.view().data));
  };
  v.unsupported = fi.unsupported;
  return v;
}
TD_REGISTER_VARIANT(fused_attention());

TD_REGISTER_VARIANT(fused(Stage::o_proj, Stage::o_proj, "fused",
                          "up to 8 rows: GEMV kernel; more: cuBLASLt GEMM (+ bias kernel)", [](const VariantArgs& a) {
                            linear_auto(a, a.slots.attn, a.lw->wo, a.slots.h);
                            if (a.lw->bo.data) add_bias(a.slots.h, a.lw->bo, stream(a));
                          }));

TD_REGISTER_VARIANT(fused(Stage::down, Stage::down, "fused", "up to 8 rows: GEMV kernel; more: cuBLASLt GEMM",
                          [](const VariantArgs& a) { linear_auto(a, a.slots.act, a.lw->w_down, a.slots.h); }));

TD_REGISTER_VARIANT(fused(Stage::attn_residual, Stage::mlp_norm, "fused",
                          "residual add + RMSNorm in one kernel", [](const VariantArgs& a) {
                            add_rmsnorm(a.slots.x, a.slots.h, a.lw->mlp_norm, float(a.config.rms_eps), a.slots.h,
                                        stream(a));
                          }));

TD_REGISTER_VARIANT(fused(Stage::gate_up, Stage::act, "fused",
                          "up to 8 rows: one GEMV kernel (gate, up, SiLU*mul); more: cuBLASLt GEMM + silu_mul",
                          [](const VariantArgs& a) {
                            const Tensor& w = a.lw->w_gate_up;
                            if (gemv_tuning(a.step.tokens, w.shape[0], w.shape[1]) != GemvTuning::cublas) {
                              gate_up_silu(a.slots.h, a.lw->w_gate_up, a.slots.act, stream(a));
                            } else {
                              ctx(a).gemm->linear(a.slots.h, a.lw->w_gate_up, a.slots.gate_up, stream(a));
                              silu_mul(a.slots.gate_up, a.slots.act, stream(a));
                            }
                          }));

TD_REGISTER_VARIANT(fused(Stage::mlp_residual, Stage::mlp_residual, "fused",
                          "residual add + the next RMSNorm (next layer's attn_norm, or final_norm) in one kernel",
                          [](const VariantArgs& a) {
                            const bool last = a.layer + 1 == int(a.config.n_layers);
                            const Tensor& next_norm =
                                last ? a.weights.final_norm : a.weights.layers[size_t(a.layer) + 1].attn_norm;
                            add_rmsnorm(a.slots.x, a.slots.h, next_norm, float(a.config.rms_eps), a.slots.h,
                                        stream(a));
                          }));

TD_REGISTER_PATH(PathPreset{
    "fused", Device::CUDA,
    "CUDA, fused kernels + FlashInfer attention over the paged cache: the GPU default (falls back to standard "
    "per stage where a model is outside what is instantiated)",
    {"embed.standard", "attn_norm.fused", "qkv..kv_write.fused", "attention.fused", "o_proj.fused",
     "attn_residual..mlp_norm.fused", "gate_up..act.fused", "down.fused", "mlp_residual.fused",
     "final_norm.fused", "logits.standard"},
    "standard"});

}  // namespace
}  // namespace tandem::cuda
