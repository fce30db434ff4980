// The reference variants: one per stage, fp32 on the CPU (cpu/ops.h), and the `reference` path preset.
// Also the test-only variants the diagnostics are tested with (deliberately wrong; never in a preset).
#include <algorithm>
#include <cmath>
#include <limits>
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

// The last page's length one short (FlashInfer's last_page_len off by one): every sequence's newest key is out of
// reach. In prefill only each sequence's last query notices (causal), in decode every query.
Variant last_page_len_short() {
  Variant v = reference(
      Stage::attention, "TEST ONLY: last_page_len one short (the newest key of each sequence unseen)",
      [](const VariantArgs& a) {
        const PagedKv& kv = *a.kv;
        std::vector<int32_t> pos(a.step.host_positions.begin(), a.step.host_positions.end());
        for (size_t t = 0; t < pos.size(); ++t) {
          const int32_t b = kv.token_batch.ptr<const int32_t>()[t];
          const int64_t newest = a.step.tables->kv_len[size_t(b)] - 1;
          pos[t] = int32_t(std::min<int64_t>(pos[t], newest - 1));  // -1: no key left, a NaN row
        }
        const Tensor t = Tensor::contiguous(pos.data(), DType::I32, {int64_t(pos.size())});
        attention(a.slots.qkv, t, kv, attention_shape(a.config), a.slots.attn);
      },
      kBothLayouts);
  v.name = "attention.test_last_page_short";
  v.test_only = true;
  return v;
}
TD_REGISTER_VARIANT(last_page_len_short());

// sm_scale left at 0 (a default-constructed params struct): every score is 0, so each query averages the values
// of all its keys uniformly. Modelled by zeroing q: q.k = 0 exactly as 0 * (q.k) is.
Variant zero_sm_scale() {
  Variant v = reference(
      Stage::attention, "TEST ONLY: sm_scale 0 (uniform attention over the visible keys)",
      [](const VariantArgs& a) {
        const ModelConfig& c = a.config;
        const Tensor& qkv = a.slots.qkv;
        HostTensor zq = HostTensor::empty(DType::F32, {qkv.shape[0], qkv.shape[1]});
        const int64_t q_dim = int64_t(c.n_heads) * c.head_dim;
        for (int64_t t = 0; t < qkv.shape[0]; ++t) {
          const float* src = qkv.ptr<const float>() + t * qkv.shape[1];
          float* dst = zq.f32() + t * qkv.shape[1];
          std::fill(dst, dst + q_dim, 0.0f);
          std::copy(src + q_dim, src + qkv.shape[1], dst + q_dim);
        }
        attention(zq.view(), a.step.positions, *a.kv, attention_shape(c), a.slots.attn);
      },
      kBothLayouts);
  v.name = "attention.test_zero_scale";
  v.test_only = true;
  return v;
}
TD_REGISTER_VARIANT(zero_sm_scale());

// A batch-index mix-up on a batch-of-one fast path: with one sequence in the step, token t reads batch entry t
// (should be 0). Decode at batch 1 is right by luck (t = 0); a prefill of more than one token is not (entries past
// the first do not exist: NaN rows); with two or more sequences in the step the general path is right.
Variant batch1_index_mixup() {
  Variant v = reference(
      Stage::attention, "TEST ONLY: at batch 1, token t reads batch entry t",
      [](const VariantArgs& a) {
        PagedKv kv = *a.kv;
        const int64_t T = kv.token_batch.numel();
        std::vector<int32_t> entry(static_cast<size_t>(T));
        for (int64_t t = 0; t < T; ++t)
          entry[size_t(t)] = kv.batch() == 1 ? int32_t(t) : kv.token_batch.ptr<const int32_t>()[t];
        kv.token_batch = Tensor::contiguous(entry.data(), DType::I32, {T});
        attention(a.slots.qkv, a.step.positions, kv, attention_shape(a.config), a.slots.attn);
      },
      kBothLayouts);
  v.name = "attention.test_batch1_index";
  v.test_only = true;
  return v;
}
TD_REGISTER_VARIANT(batch1_index_mixup());

// Scores through f16 (a bf16 -> f16 conversion before Q.K^T): any |q.k| / sqrt(d) past f16's 65504 becomes inf, and
// softmax turns a row holding inf into NaN. Below the limit the scores are kept as they are, so the bug shows
// only where the logits overflow (a Qwen2-like model with |K| ~ 200, or diff --perturb L1.qkv:k:scale=...).
Variant f16_score_overflow() {
  Variant v = reference(
      Stage::attention, "TEST ONLY: attention scores overflow as f16 would (|score| > 65504 -> inf)",
      [](const VariantArgs& a) {
        const ModelConfig& c = a.config;
        const AttentionShape s = attention_shape(c);
        attention(a.slots.qkv, a.step.positions, *a.kv, s, a.slots.attn);
        // Rows whose largest scaled |q.k| passes 65504: the f16 kernel would have produced inf - inf = NaN there.
        const Tensor& qkv = a.slots.qkv;
        const int64_t D = c.head_dim, T = qkv.shape[0], group = c.n_heads / c.n_kv_heads;
        const int64_t kv_dim = int64_t(c.n_kv_heads) * D;
        const float scale = 1.0f / std::sqrt(float(D));
        for (int64_t t = 0; t < T; ++t) {
          const int32_t pos = a.step.host_positions[size_t(t)];
          if (pos < 0) continue;
          const int64_t lo = s.sliding_window > 0 ? std::max<int64_t>(0, pos - s.sliding_window + 1) : 0;
          // The token's visible keys, through its own page table (kv_gather with every row on its entry).
          std::vector<int32_t> ps, entry;
          for (int32_t p = int32_t(lo); p <= pos; ++p) {
            ps.push_back(p);
            entry.push_back(a.kv->token_batch.ptr<const int32_t>()[t]);
          }
          const int64_t P = int64_t(ps.size());
          PagedKv kv = *a.kv;
          kv.token_batch = Tensor::contiguous(entry.data(), DType::I32, {P});
          HostTensor keys = HostTensor::empty(DType::F32, {P, 2 * kv_dim});
          kv_gather(Tensor::contiguous(ps.data(), DType::I32, {P}), kv, s, keys.view());
          for (int64_t h = 0; h < c.n_heads; ++h) {
            const float* q = qkv.ptr<const float>() + t * qkv.shape[1] + h * D;
            bool overflow = false;
            for (int64_t p = 0; p < P && !overflow; ++p) {
              const float* k = keys.f32() + p * 2 * kv_dim + (h / group) * D;
              double dot = 0;
              for (int64_t d = 0; d < D; ++d) dot += double(q[d]) * k[d];
              overflow = std::fabs(dot * scale) > 65504.0;
            }
            if (overflow) {
              float* o = a.slots.attn.ptr<float>() + t * a.slots.attn.shape[1] + h * D;
              std::fill(o, o + D, std::numeric_limits<float>::quiet_NaN());
            }
          }
        }
      },
      kBothLayouts);
  v.name = "attention.test_f16_scores";
  v.test_only = true;
  return v;
}
TD_REGISTER_VARIANT(f16_score_overflow());

std::vector<std::string> reference_preset() {
  std::vector<std::string> names;
  for (int s = 0; s < kNumStages; ++s) names.push_back(std::string(stage_name(Stage(s))) + ".reference");
  return names;
}
TD_REGISTER_PATH(PathPreset{"reference", Device::CPU, "fp32 on the CPU, the oracle: one plain loop per stage",
                            reference_preset()});

}  // namespace
}  // namespace tandem::cpu
