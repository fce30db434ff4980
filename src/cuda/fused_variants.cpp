// The fused variants and the `fused` path preset: what a GPU serves with. Each variant covers a run of stages
// with fewer kernels than the standard path and the same rounding points, so every tap it publishes (its last
// stage's) stays within the standard path's tolerance, and the elementwise fusions are bit-identical.
//
// Two regimes per step, chosen by gemv_fuses(rows) (cuda/gemv.cuh) the same way in every variant below:
// decode of few rows runs GEMV kernels that RMSNorm their input in a prologue and add their output to the
// residual stream in an epilogue, so a layer is six launches (qkv, RoPE + append, attention, o_proj, gate_up,
// down) and h never holds a norm; more rows run cuBLASLt GEMMs, with each residual add and the norm after it in
// one add_rmsnorm kernel that leaves the norm in h for the next variant.
//
//   attn_norm..kv_write    GEMV: rmsnorm + qkv GEMV in one kernel; GEMM: layer 0's RMSNorm kernel (later layers:
//                          h holds it), GEMM; then one kernel: bias + RoPE + paged K/V append (cuda/attention.cuh)
//   attention              decode steps of few sequences with short histories: the split-KV decode kernel
//                          (cuda/attention.cuh attention_decode); others: FlashInfer batch prefill over the paged
//                          cache, one plan per step (cuda/flashinfer.cuh)
//   o_proj..attn_residual  GEMV: x += o_proj (+ bias) in the GEMV's epilogue; GEMM: GEMM (+ bias), then
//                          x += o_proj; h = mlp_norm(x) in one kernel (cuda/norm.cuh add_rmsnorm)
//   mlp_norm..act          GEMV: rmsnorm + gate/up GEMV + SiLU*mul in one kernel; GEMM: GEMM (h) + silu_mul
//   down..mlp_residual     GEMV: x += down in the GEMV's epilogue; GEMM: GEMM, then x += down; h = the *next*
//                          norm (layer l+1's attn_norm, or final_norm) in one add_rmsnorm kernel
//   final_norm             GEMV: the RMSNorm kernel; GEMM: nothing (h holds it)
//
// mlp_norm..act needs o_proj..attn_residual, attn_norm..kv_write and final_norm need down..mlp_residual
// (Variant::needs: in the GEMM regime they read the norm those left in h); build_plan rejects a plan with one and
// not the other, and bisect swaps them together. The preset falls back to `standard`, stage by stage, where a
// variant cannot run the model (FlashInfer's head dims and dtypes, cuda/flashinfer.cuh).
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
// Decode of few rows: the GEMV kernels with the RMSNorm prologue and residual epilogue (same answer in every
// variant of a step).
bool gemv_regime(const VariantArgs& a) {
  return gemv_fuses(a.step.tokens, a.config.hidden_size, a.slots.x.dtype);
}

float eps(const VariantArgs& a) { return float(a.config.rms_eps); }

// `why` for the variants that read the norm a residual variant leaves in h (the GEMM regime).
const char* const kNormInH =
    "in the GEMM regime (prefill, larger batches) the residual variant's add_rmsnorm leaves this norm in h";

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

Variant needing(Variant v, std::string need) {
  v.needs = {std::move(need)};
  v.needs_why = kNormInH;
  return v;
}

TD_REGISTER_VARIANT(needing(fused(
    Stage::attn_norm, Stage::kv_write, "fused",
    "decode: RMSNorm + qkv GEMV in one kernel; else (layer 0) RMSNorm, cuBLASLt GEMM; then bias + RoPE + paged "
    "K/V append in one kernel",
    [](const VariantArgs& a) {
      if (gemv_regime(a)) {
        rmsnorm_linear_gemv(a.slots.x, a.lw->attn_norm, eps(a), a.lw->wqkv, a.slots.qkv, stream(a));
      } else {
        if (a.layer == 0) rmsnorm(a.slots.x, a.lw->attn_norm, eps(a), a.slots.h, stream(a));
        ctx(a).gemm->linear(a.slots.h, a.lw->wqkv, a.slots.qkv, stream(a));
      }
      qkv_rope_kv_write(a.slots.qkv, a.lw->bqkv, a.step.positions, a.device.rope_inv_freq, *a.kv,
                        attention_shape(a.config), stream(a));
    },
    kBothLayouts), "down..mlp_residual.fused"));

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

TD_REGISTER_VARIANT(fused(
    Stage::o_proj, Stage::attn_residual, "fused",
    "decode: o_proj GEMV with x += o_proj (+ bias) in its epilogue; else cuBLASLt GEMM (+ bias kernel), then x += "
    "o_proj and h = mlp_norm(x) in one kernel",
    [](const VariantArgs& a) {
      if (gemv_regime(a)) return linear_gemv_residual(a.slots.attn, a.lw->wo, a.lw->bo, a.slots.x, stream(a));
      ctx(a).gemm->linear(a.slots.attn, a.lw->wo, a.slots.h, stream(a));
      if (a.lw->bo.data) add_bias(a.slots.h, a.lw->bo, stream(a));
      add_rmsnorm(a.slots.x, a.slots.h, a.lw->mlp_norm, eps(a), a.slots.h, stream(a));
    }));

TD_REGISTER_VARIANT(needing(fused(
    Stage::mlp_norm, Stage::act, "fused",
    "decode: RMSNorm + gate/up GEMV + SiLU*mul in one kernel; else cuBLASLt GEMM of h (the norm) + silu_mul",
    [](const VariantArgs& a) {
      if (gemv_regime(a))
        return rmsnorm_gate_up_silu(a.slots.x, a.lw->mlp_norm, eps(a), a.lw->w_gate_up, a.slots.act, stream(a));
      ctx(a).gemm->linear(a.slots.h, a.lw->w_gate_up, a.slots.gate_up, stream(a));
      silu_mul(a.slots.gate_up, a.slots.act, stream(a));
    }), "o_proj..attn_residual.fused"));

const Tensor& next_norm(const VariantArgs& a) {
  const bool last = a.layer + 1 == int(a.config.n_layers);
  return last ? a.weights.final_norm : a.weights.layers[size_t(a.layer) + 1].attn_norm;
}

TD_REGISTER_VARIANT(fused(
    Stage::down, Stage::mlp_residual, "fused",
    "decode: down GEMV with x += down in its epilogue; else cuBLASLt GEMM, then x += down and h = the next "
    "RMSNorm (next layer's attn_norm, or final_norm) in one kernel",
    [](const VariantArgs& a) {
      if (gemv_regime(a)) return linear_gemv_residual(a.slots.act, a.lw->w_down, Tensor(), a.slots.x, stream(a));
      ctx(a).gemm->linear(a.slots.act, a.lw->w_down, a.slots.h, stream(a));
      add_rmsnorm(a.slots.x, a.slots.h, next_norm(a), eps(a), a.slots.h, stream(a));
    }));

TD_REGISTER_VARIANT(needing(fused(Stage::final_norm, Stage::final_norm, "fused",
                                  "decode: the RMSNorm kernel; else nothing (down..mlp_residual.fused left it in h)",
                                  [](const VariantArgs& a) {
                                    if (gemv_regime(a))
                                      rmsnorm(a.slots.x, a.weights.final_norm, eps(a), a.slots.h, stream(a));
                                  }),
                            "down..mlp_residual.fused"));

TD_REGISTER_PATH(PathPreset{
    "fused", Device::CUDA,
    "CUDA, fused kernels + FlashInfer attention over the paged cache: the GPU default (falls back to standard "
    "per stage where a model is outside what is instantiated)",
    {"embed.standard", "attn_norm..kv_write.fused", "attention.fused", "o_proj..attn_residual.fused",
     "mlp_norm..act.fused", "down..mlp_residual.fused", "final_norm.fused", "logits.standard"},
    "standard"});

}  // namespace
}  // namespace tandem::cuda
