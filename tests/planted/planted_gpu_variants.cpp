// Planted GPU bugs: test-only CUDA variants, each a real failure class of the GPU paths, for tandem diff, bisect,
// trace, --kv-poison and --nan-check to localize (tests/planted/test_planted_gpu.cpp). They register on the CUDA
// device under the names of their CPU twins (cpu/reference_variants.cpp), so `--variant attention=test_zero_scale`
// plants the same bug on either device. They live only in the test binaries (planted_gpu_tests, tandem_planted),
// never in tandem_lib. Each runs the standard kernels (cuda/*.cuh) over a deliberately wrong view of the step:
//
//   attention.test_read_nhd_as_hnd   the NHD cache read through HND strides (the paged_kv_t layout flag mix-up)
//   attention.test_last_page_short   last_page_len one short: each sequence's newest key unseen
//   attention.test_other_seq_pages   entry b reads entry (b + 1) % B's page list (shows only in a batch)
//   attention.test_zero_scale        sm_scale 0 (a default-constructed params struct): uniform attention
//   attention.test_batch1_index      at batch 1 token t reads batch entry t (shows only at batch 1)
//   attention.test_f16_scores        scores through f16: NaN rows where |q.k|/sqrt(d) passes 65504
//   rope.test_decode_offset          decode steps rotate at position + 1 (prefill equal)
//   attn_norm..kv_write.test_skip_layer1   the fused path's QKV epilogue without layer 1's K/V append
// (kv_write.test_skip_layer1 and attention.test_drop_last_key, the standard path's, are in cuda/standard_variants.cpp.)
// None is graph_safe except the fused skip: they copy host-made tables to the device in run().
#include <algorithm>
#include <vector>

#include "cuda/attention.cuh"
#include "cuda/check.h"
#include "cuda/cuda_host.h"
#include "cuda/elementwise.cuh"
#include "cuda/gemv.cuh"
#include "cuda/norm.cuh"
#include "cuda/rope.cuh"
#include "exec/variant.h"
#include "planted_gpu.h"

namespace tandem::planted {
namespace {

cuda::CudaContext& ctx(const VariantArgs& a) { return static_cast<cuda::CudaContext&>(a.device); }
cudaStream_t stream(const VariantArgs& a) { return ctx(a).stream; }

const std::vector<KvLayout> kBothLayouts{KvLayout::NHD, KvLayout::HND};

Variant planted(Stage first, Stage last, std::string impl, std::string summary,
                std::function<void(const VariantArgs&)> run, std::vector<KvLayout> layouts = kBothLayouts) {
  Variant v;
  v.stages = {first, last};
  v.name = v.stages.str() + "." + impl;
  v.device = Device::CUDA;
  v.kv_layouts = std::move(layouts);
  v.summary = "TEST ONLY: " + std::move(summary);
  v.run = std::move(run);
  v.test_only = true;
  v.graph_safe = false;
  return v;
}

// `values` (one per step row) in the context's i32 scratch on the device. Pageable source: the copy has read it
// when the call returns.
Tensor upload_rows(const VariantArgs& a, const std::vector<int32_t>& values) {
  const Tensor& s = ctx(a).scratch_i32;
  TD_CHECK(int64_t(values.size()) <= s.numel(), "planted variant: {} rows, scratch holds {}", values.size(), s.numel());
  TD_CUDA_CHECK(cudaMemcpyAsync(s.data, values.data(), values.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                stream(a)));
  return Tensor::contiguous(s.data, DType::I32, {int64_t(values.size())}, Device::CUDA);
}

void attend(const VariantArgs& a, const Tensor& positions, const PagedKv& kv) {
  cuda::attention(a.slots.qkv, positions, kv, attention_shape(a.config), a.slots.attn, stream(a));
}

TD_REGISTER_VARIANT(planted(
    Stage::attention, Stage::attention, "test_read_nhd_as_hnd", "reads the NHD cache with HND strides",
    [](const VariantArgs& a) {
      const ModelConfig& c = a.config;
      PagedKv kv = *a.kv;
      const KvGeometry g{1, c.n_kv_heads, c.head_dim, kv.page_size, KvLayout::HND};
      kv.k = kv_pool_view(kv.k.data, kv.k.dtype, kv.k.device, g, kv.k.shape[0]);
      kv.v = kv_pool_view(kv.v.data, kv.v.dtype, kv.v.device, g, kv.v.shape[0]);
      kv.layout = KvLayout::HND;
      attend(a, a.step.positions, kv);
    },
    {KvLayout::NHD}));

TD_REGISTER_VARIANT(planted(
    Stage::attention, Stage::attention, "test_last_page_short",
    "last_page_len one short (the newest key of each sequence unseen)", [](const VariantArgs& a) {
      const KvStepTables& tb = *a.step.tables;
      std::vector<int32_t> pos(a.step.host_positions.begin(), a.step.host_positions.end());
      for (size_t t = 0; t < pos.size(); ++t) {
        const int64_t newest = tb.kv_len[size_t(tb.token_batch[t])] - 1;
        pos[t] = int32_t(std::min<int64_t>(pos[t], newest - 1));  // -1: no key left, a NaN row
      }
      attend(a, upload_rows(a, pos), *a.kv);
    }));

TD_REGISTER_VARIANT(planted(
    Stage::attention, Stage::attention, "test_other_seq_pages", "each sequence reads the next sequence's pages",
    [](const VariantArgs& a) {
      const KvStepTables& tb = *a.step.tables;
      const int32_t B = int32_t(tb.seq_ids.size());
      std::vector<int32_t> entry(tb.token_batch.size());
      for (size_t t = 0; t < entry.size(); ++t) entry[t] = (tb.token_batch[t] + 1) % B;
      PagedKv kv = *a.kv;
      kv.token_batch = upload_rows(a, entry);
      attend(a, a.step.positions, kv);
    }));

TD_REGISTER_VARIANT(planted(
    Stage::attention, Stage::attention, "test_batch1_index", "at batch 1, token t reads batch entry t",
    [](const VariantArgs& a) {
      const KvStepTables& tb = *a.step.tables;
      std::vector<int32_t> entry(tb.token_batch.size());
      for (size_t t = 0; t < entry.size(); ++t) entry[t] = tb.seq_ids.size() == 1 ? int32_t(t) : tb.token_batch[t];
      PagedKv kv = *a.kv;
      kv.token_batch = upload_rows(a, entry);
      attend(a, a.step.positions, kv);
    }));

// sm_scale 0: every score 0, so each query averages the values of its keys uniformly; modelled by attending with
// q zeroed (0 * q.k == 0.q . k), in a copy of qkv made on the stream.
TD_REGISTER_VARIANT(planted(
    Stage::attention, Stage::attention, "test_zero_scale", "sm_scale 0 (uniform attention over the visible keys)",
    [](const VariantArgs& a) {
      const Tensor& qkv = a.slots.qkv;
      const int64_t T = qkv.shape[0], cols = qkv.shape[1];
      if (T == 0) return;
      const size_t e = size_t(dtype_block_bytes(qkv.dtype)), q_bytes = size_t(a.config.n_heads * a.config.head_dim) * e;
      void* copy = nullptr;
      TD_CUDA_CHECK(cudaMallocAsync(&copy, size_t(T * cols) * e, stream(a)));
      TD_CUDA_CHECK(cudaMemcpy2DAsync(copy, size_t(cols) * e, qkv.data, size_t(qkv.strides[0]) * e, size_t(cols) * e,
                                      size_t(T), cudaMemcpyDeviceToDevice, stream(a)));
      TD_CUDA_CHECK(cudaMemset2DAsync(copy, size_t(cols) * e, 0, q_bytes, size_t(T), stream(a)));
      const Tensor zq = Tensor::contiguous(copy, qkv.dtype, {T, cols}, Device::CUDA);
      cuda::attention(zq, a.step.positions, *a.kv, attention_shape(a.config), a.slots.attn, stream(a));
      TD_CUDA_CHECK(cudaFreeAsync(copy, stream(a)));
    }));

TD_REGISTER_VARIANT(planted(
    Stage::attention, Stage::attention, "test_f16_scores",
    "attention scores overflow as f16 would (|score| > 65504 -> inf -> NaN row)", [](const VariantArgs& a) {
      attend(a, a.step.positions, *a.kv);
      nan_where_scores_overflow_f16(a.slots.qkv, a.step.positions, *a.kv, attention_shape(a.config), a.slots.attn,
                                    stream(a));
    }));

TD_REGISTER_VARIANT(planted(
    Stage::rope, Stage::rope, "test_decode_offset", "decode steps rotate at position + 1",
    [](const VariantArgs& a) {
      const ModelConfig& c = a.config;
      std::vector<int32_t> pos(a.step.host_positions.begin(), a.step.host_positions.end());
      if (a.step.tables && a.step.tables->seq_ids.size() == pos.size())
        for (int32_t& p : pos) ++p;
      cuda::rope(a.slots.qkv, upload_rows(a, pos), a.device.rope_inv_freq, int(c.n_heads), int(c.n_kv_heads),
                 int(c.head_dim), stream(a));
    },
    {}));

// The fused path's attn_norm..kv_write (decode: RMSNorm + qkv GEMV in one kernel; else layer 0's RMSNorm and
// cuBLASLt; then bias + RoPE + append in one kernel), except that layer 1 runs bias and RoPE alone (the standard
// kernels: the same bits) and never appends its K/V.
Variant fused_skip_layer1() {
  Variant v = planted(
      Stage::attn_norm, Stage::kv_write, "test_skip_layer1", "the fused QKV epilogue without layer 1's K/V append",
      [](const VariantArgs& a) {
        const ModelConfig& c = a.config;
        const float eps = float(c.rms_eps);
        if (cuda::gemv_fuses(a.step.tokens, c.hidden_size, a.slots.x.dtype)) {
          cuda::rmsnorm_linear_gemv(a.slots.x, a.lw->attn_norm, eps, a.lw->wqkv, a.slots.qkv, stream(a));
        } else {
          if (a.layer == 0) cuda::rmsnorm(a.slots.x, a.lw->attn_norm, eps, a.slots.h, stream(a));
          ctx(a).gemm->linear(a.slots.h, a.lw->wqkv, a.slots.qkv, stream(a));
        }
        if (a.layer != 1) {
          cuda::qkv_rope_kv_write(a.slots.qkv, a.lw->bqkv, a.step.positions, a.device.rope_inv_freq, *a.kv,
                                  attention_shape(c), stream(a));
          return;
        }
        if (a.lw->bqkv.data) cuda::add_bias(a.slots.qkv, a.lw->bqkv, stream(a));
        cuda::rope(a.slots.qkv, a.step.positions, a.device.rope_inv_freq, int(c.n_heads), int(c.n_kv_heads),
                   int(c.head_dim), stream(a));
      });
  v.graph_safe = true;  // device work on the stream only, like attn_norm..kv_write.fused
  v.needs = {"down..mlp_residual.fused"};  // as attn_norm..kv_write.fused: h holds the norm in the GEMM regime
  v.needs_why = "it reads the norm that variant leaves in h, as attn_norm..kv_write.fused does";
  return v;
}
TD_REGISTER_VARIANT(fused_skip_layer1());

}  // namespace
}  // namespace tandem::planted
