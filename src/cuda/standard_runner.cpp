#include "cuda/standard_runner.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cuda/attention.cuh"
#include "cuda/check.h"
#include "cuda/elementwise.cuh"
#include "cuda/embedding.cuh"
#include "cuda/norm.cuh"
#include "cuda/rope.cuh"

namespace tandem::cuda {

StandardRunner::StandardRunner(const ModelSource& source, const StandardOptions& options,
                               void (*progress)(int64_t, int64_t))
    : config_(source.config()), dtype_(options.dtype) {
  TD_CHECK(dtype_ == DType::BF16 || dtype_ == DType::F16 || dtype_ == DType::F32,
           "--dtype {}: the standard path runs in bf16, f16 or f32", dtype_name(dtype_));
  int devices = 0;
  TD_CUDA_CHECK(cudaGetDeviceCount(&devices));
  TD_CHECK(devices > 0, "the standard path needs a CUDA GPU and none was found");
  TD_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  gemm_ = std::make_unique<Gemm>();

  // Weights arrive one at a time as fp32 host tensors; each is converted and uploaded, then freed.
  // Norm weights and biases use the activation dtype too (HF keeps every parameter in the model dtype).
  weight_storage_.reserve(size_t(config_.n_layers) * 8 + 4);
  w_ = load_weights(
      source,
      [this](HostTensor&& t) {
        weight_storage_.push_back(upload(t, dtype_, stream_));
        weight_bytes_ += weight_storage_.back().nbytes();
        return weight_storage_.back().view();
      },
      progress);

  const std::vector<float> inv = rope_inv_freq(config_);
  HostTensor inv_host = HostTensor::empty(DType::F32, {int64_t(inv.size())});
  std::memcpy(inv_host.f32(), inv.data(), inv.size() * sizeof(float));
  inv_freq_ = upload(inv_host, DType::F32, stream_);

  int64_t pool = options.kv_pool_tokens;
  const int64_t bytes_per_token = 2 * config_.n_layers * config_.kv_dim() * dtype_block_bytes(dtype_);
  if (pool <= 0) {
    size_t free_bytes = 0, total_bytes = 0;
    TD_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    pool = std::min<int64_t>(std::max<int64_t>(4 * config_.max_positions, 32768),
                             int64_t(0.4 * double(free_bytes)) / bytes_per_token);
  }
  TD_CHECK(pool > 0, "no device memory left for a KV cache ({} bytes per token)", bytes_per_token);
  rows_ = RowRangeAllocator(pool);
  for (int64_t l = 0; l < config_.n_layers; ++l) {
    k_cache_.push_back(DeviceTensor::empty(dtype_, {pool, config_.kv_dim()}));
    v_cache_.push_back(DeviceTensor::empty(dtype_, {pool, config_.kv_dim()}));
  }
  TD_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

StandardRunner::~StandardRunner() {
  if (stream_) cudaStreamDestroy(stream_);
}

void StandardRunner::create_sequence(int32_t seq, int64_t capacity) {
  TD_CHECK(!seqs_.count(seq), "sequence {} already exists", seq);
  TD_CHECK(capacity > 0 && capacity <= config_.max_positions,
           "sequence {}: capacity {} tokens is outside the model's context (1..{})", seq, capacity,
           config_.max_positions);
  const auto base = rows_.allocate(capacity);
  TD_CHECK(base.has_value(),
           "KV cache full: sequence {} needs {} contiguous rows, the largest free range has {} (pool of {} tokens)",
           seq, capacity, rows_.largest_free(), rows_.capacity());
  seqs_[seq] = Seq{*base, capacity, 0};
}

void StandardRunner::release_sequence(int32_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  rows_.release(it->second.base);
  seqs_.erase(it);
}

int64_t StandardRunner::sequence_length(int32_t seq) const {
  auto it = seqs_.find(seq);
  TD_CHECK(it != seqs_.end(), "unknown sequence {}", seq);
  return it->second.length;
}

void StandardRunner::ensure_scratch(int64_t tokens) {
  if (tokens <= scratch_.tokens) return;
  int64_t n = 16;
  while (n < tokens) n *= 2;
  const ModelConfig& c = config_;
  Scratch s;
  s.tokens = n;
  s.x = DeviceTensor::empty(dtype_, {n, c.hidden_size});
  s.h = DeviceTensor::empty(dtype_, {n, c.hidden_size});
  s.qkv = DeviceTensor::empty(dtype_, {n, c.qkv_dim()});
  s.attn = DeviceTensor::empty(dtype_, {n, c.q_dim()});
  s.gate_up = DeviceTensor::empty(dtype_, {n, 2 * c.intermediate_size});
  s.act = DeviceTensor::empty(dtype_, {n, c.intermediate_size});
  s.tokens_i32 = DeviceTensor::empty(DType::I32, {n});
  s.positions_i32 = DeviceTensor::empty(DType::I32, {n});
  s.kv_base_i64 = DeviceTensor::empty(DType::I64, {n});
  s.rows_i32 = DeviceTensor::empty(DType::I32, {n});
  TD_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the old buffers may still be in use
  scratch_ = std::move(s);
}

StepOutput StandardRunner::forward(const Step& step, TapSink* taps) {
  validate_step(step, config_.vocab_size, [this](int32_t seq) -> std::optional<SequenceExtent> {
    auto it = seqs_.find(seq);
    if (it == seqs_.end()) return std::nullopt;
    return SequenceExtent{it->second.length, it->second.capacity};
  });
  const ModelConfig& c = config_;
  const int64_t T = step.size(), R = step.num_logit_rows();
  ensure_scratch(T);
  Scratch& s = scratch_;
  auto publish = [&](Stage st, int layer, const Tensor& t) {
    if (taps && taps->wants(st, layer)) taps->publish(st, layer, download_f32(t, stream_));
  };

  // Step metadata to the device.
  HostTensor kv_base = HostTensor::empty(DType::I64, {T});
  HostTensor logit_rows = HostTensor::empty(DType::I32, {std::max<int64_t>(R, 1)});
  StepOutput out;
  for (int64_t t = 0; t < T; ++t) {
    kv_base.view().ptr<int64_t>()[t] = seqs_.at(step.seq_ids[size_t(t)]).base;
    if (step.want_logits[size_t(t)]) {
      logit_rows.view().ptr<int32_t>()[out.logit_rows.size()] = int32_t(t);
      out.logit_rows.push_back(int32_t(t));
    }
  }
  const Tensor tokens = rows(s.tokens_i32, T), positions = rows(s.positions_i32, T), bases = rows(s.kv_base_i64, T);
  copy_to_device(Tensor::contiguous(const_cast<int32_t*>(step.tokens.data()), DType::I32, {T}), tokens, stream_);
  copy_to_device(Tensor::contiguous(const_cast<int32_t*>(step.positions.data()), DType::I32, {T}), positions, stream_);
  copy_to_device(kv_base, bases, stream_);

  const Tensor x = rows(s.x, T), h = rows(s.h, T), qkv = rows(s.qkv, T), attn = rows(s.attn, T);
  const Tensor gate_up = rows(s.gate_up, T), act = rows(s.act, T);
  const AttentionShape shape{int(c.n_heads), int(c.n_kv_heads), int(c.head_dim), int(c.sliding_window)};
  const float eps = float(c.rms_eps);

  embed(w_.embed, tokens, x, stream_);
  publish(Stage::embed, -1, x);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& lw = w_.layers[size_t(l)];
    const int li = int(l);
    rmsnorm(x, lw.attn_norm, eps, h, stream_);
    publish(Stage::attn_norm, li, h);
    gemm_->linear(h, lw.wqkv, qkv, stream_);
    if (lw.bqkv.data) add_bias(qkv, lw.bqkv, stream_);
    publish(Stage::qkv, li, qkv);
    rope(qkv, positions, inv_freq_, int(c.n_heads), int(c.n_kv_heads), int(c.head_dim), stream_);
    publish(Stage::rope, li, qkv);
    kv_write(qkv, bases, positions, k_cache_[size_t(l)], v_cache_[size_t(l)], shape, stream_);
    attention(qkv, bases, positions, k_cache_[size_t(l)], v_cache_[size_t(l)], shape, attn, stream_);
    publish(Stage::attention, li, attn);
    gemm_->linear(attn, lw.wo, h, stream_);
    if (lw.bo.data) add_bias(h, lw.bo, stream_);
    publish(Stage::o_proj, li, h);
    add(x, h, x, stream_);
    publish(Stage::attn_residual, li, x);
    rmsnorm(x, lw.mlp_norm, eps, h, stream_);
    publish(Stage::mlp_norm, li, h);
    gemm_->linear(h, lw.w_gate_up, gate_up, stream_);
    publish(Stage::gate_up, li, gate_up);
    silu_mul(gate_up, act, stream_);
    publish(Stage::act, li, act);
    gemm_->linear(act, lw.w_down, h, stream_);
    publish(Stage::down, li, h);
    add(x, h, x, stream_);
    publish(Stage::mlp_residual, li, x);
  }
  rmsnorm(x, w_.final_norm, eps, h, stream_);
  publish(Stage::final_norm, -1, h);

  out.logits = HostTensor::empty(DType::F32, {R, c.vocab_size});
  if (R > 0) {
    const Tensor sel_rows = rows(s.rows_i32, R);
    copy_to_device(logit_rows.view().slice_rows(0, R), sel_rows, stream_);
    DeviceTensor gathered = DeviceTensor::empty(dtype_, {R, c.hidden_size});
    DeviceTensor logits = DeviceTensor::empty(DType::F32, {R, c.vocab_size});
    gather_rows(h, sel_rows, gathered, stream_);
    gemm_->linear(gathered, w_.lm_head, logits, stream_);
    copy_to_host(logits, out.logits, stream_);
  }
  TD_CUDA_CHECK(cudaStreamSynchronize(stream_));  // host staging buffers above die at scope end
  for (int64_t t = 0; t < T; ++t) {
    Seq& q = seqs_.at(step.seq_ids[size_t(t)]);
    q.length = std::max<int64_t>(q.length, step.positions[size_t(t)] + 1);
  }
  if (taps && taps->wants(Stage::logits, -1)) taps->publish(Stage::logits, -1, out.logits);
  return out;
}

}  // namespace tandem::cuda
