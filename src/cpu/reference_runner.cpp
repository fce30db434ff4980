#include "cpu/reference_runner.h"

#include <cstring>

#include "core/parallel.h"
#include "cpu/ops.h"

namespace tandem {

ReferenceRunner::ReferenceRunner(std::shared_ptr<const Model> model)
    : model_(std::move(model)), inv_freq_(rope_inv_freq(model_->config)) {}

void ReferenceRunner::create_sequence(int32_t seq, int64_t capacity) {
  const ModelConfig& c = model_->config;
  TD_CHECK(!seqs_.count(seq), "sequence {} already exists", seq);
  TD_CHECK(capacity > 0 && capacity <= c.max_positions,
           "sequence {}: capacity {} tokens is outside the model's context (1..{})", seq, capacity,
           c.max_positions);
  SeqCache s;
  s.capacity = capacity;
  s.k.assign(size_t(c.n_layers), std::vector<float>(size_t(capacity * c.kv_dim())));
  s.v.assign(size_t(c.n_layers), std::vector<float>(size_t(capacity * c.kv_dim())));
  seqs_.emplace(seq, std::move(s));
}

void ReferenceRunner::release_sequence(int32_t seq) { seqs_.erase(seq); }

int64_t ReferenceRunner::sequence_length(int32_t seq) const {
  auto it = seqs_.find(seq);
  TD_CHECK(it != seqs_.end(), "unknown sequence {}", seq);
  return it->second.length;
}

void ReferenceRunner::validate(const Step& step) const {
  validate_step(step, model_->config.vocab_size, [this](int32_t seq) -> std::optional<SequenceExtent> {
    auto it = seqs_.find(seq);
    if (it == seqs_.end()) return std::nullopt;
    return SequenceExtent{it->second.length, it->second.capacity};
  });
}

StepOutput ReferenceRunner::forward(const Step& step, TapSink* taps) {
  validate(step);
  const ModelConfig& c = model_->config;
  const ModelWeights& w = model_->weights;
  const int64_t T = step.size(), H = c.hidden_size, I = c.intermediate_size;
  const int64_t qd = c.q_dim(), kvd = c.kv_dim();
  auto publish = [&](Stage s, int layer, const Tensor& t) {
    if (taps && taps->wants(s, layer)) taps->publish(s, layer, t);
  };

  HostTensor x = HostTensor::empty(DType::F32, {T, H});
  HostTensor h = HostTensor::empty(DType::F32, {T, H});
  HostTensor qkv = HostTensor::empty(DType::F32, {T, c.qkv_dim()});
  HostTensor attn = HostTensor::empty(DType::F32, {T, qd});
  HostTensor gate_up = HostTensor::empty(DType::F32, {T, 2 * I});
  HostTensor act = HostTensor::empty(DType::F32, {T, I});

  cpu::embed(w.embed, step.tokens, x);
  publish(Stage::embed, -1, x);

  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& lw = w.layers[size_t(l)];
    const int li = int(l);
    cpu::rmsnorm(x, lw.attn_norm, c.rms_eps, h);
    publish(Stage::attn_norm, li, h);
    cpu::linear(h, lw.wqkv, lw.bqkv, qkv);
    publish(Stage::qkv, li, qkv);
    cpu::rope(qkv, step.positions, inv_freq_, c.n_heads, c.n_kv_heads, c.head_dim);
    publish(Stage::rope, li, qkv);

    // kv_write: every token's K/V lands in its sequence's cache before any token attends.
    for (int64_t t = 0; t < T; ++t) {
      SeqCache& s = seqs_.at(step.seq_ids[size_t(t)]);
      const int64_t pos = step.positions[size_t(t)];
      const float* row = qkv.f32() + t * c.qkv_dim();
      std::memcpy(s.k[size_t(l)].data() + pos * kvd, row + qd, size_t(kvd) * sizeof(float));
      std::memcpy(s.v[size_t(l)].data() + pos * kvd, row + qd + kvd, size_t(kvd) * sizeof(float));
    }

    parallel_for(T, [&](int64_t b, int64_t e) {
      std::vector<float> scratch;
      for (int64_t t = b; t < e; ++t) {
        const SeqCache& s = seqs_.at(step.seq_ids[size_t(t)]);
        const int64_t pos = step.positions[size_t(t)];
        const int64_t lo = c.sliding_window > 0 ? std::max<int64_t>(0, pos - c.sliding_window + 1) : 0;
        scratch.resize(size_t(pos + 1 - lo));
        cpu::attention_row(qkv.f32() + t * c.qkv_dim(), s.k[size_t(l)].data(), s.v[size_t(l)].data(), lo, pos + 1,
                           c.n_heads, c.n_kv_heads, c.head_dim, scratch.data(), attn.f32() + t * qd);
      }
    });
    publish(Stage::attention, li, attn);

    cpu::linear(attn, lw.wo, lw.bo, h);
    publish(Stage::o_proj, li, h);
    cpu::add(x, h, x);
    publish(Stage::attn_residual, li, x);
    cpu::rmsnorm(x, lw.mlp_norm, c.rms_eps, h);
    publish(Stage::mlp_norm, li, h);
    cpu::linear(h, lw.w_gate_up, Tensor{}, gate_up);
    publish(Stage::gate_up, li, gate_up);
    cpu::silu_mul(gate_up, act);
    publish(Stage::act, li, act);
    cpu::linear(act, lw.w_down, Tensor{}, h);
    publish(Stage::down, li, h);
    cpu::add(x, h, x);
    publish(Stage::mlp_residual, li, x);
  }
  for (int64_t t = 0; t < T; ++t) seqs_.at(step.seq_ids[size_t(t)]).length = step.positions[size_t(t)] + 1;

  cpu::rmsnorm(x, w.final_norm, c.rms_eps, h);
  publish(Stage::final_norm, -1, h);

  StepOutput out;
  const int64_t R = step.num_logit_rows();
  HostTensor rows = HostTensor::empty(DType::F32, {R, H});
  for (int64_t t = 0, r = 0; t < T; ++t) {
    if (!step.want_logits[size_t(t)]) continue;
    std::memcpy(rows.f32() + r * H, h.f32() + t * H, size_t(H) * sizeof(float));
    out.logit_rows.push_back(int32_t(t));
    ++r;
  }
  out.logits = HostTensor::empty(DType::F32, {R, c.vocab_size});
  if (R > 0) cpu::linear(rows, w.lm_head, Tensor{}, out.logits);
  publish(Stage::logits, -1, out.logits);
  return out;
}

}  // namespace tandem
