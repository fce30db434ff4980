#include "cuda/standard_runner.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cuda/attention.cuh"
#include "cuda/check.h"
#include "cuda/elementwise.cuh"
#include "cuda/embedding.cuh"
#include "cuda/norm.cuh"
#include "cuda/random_fill.cuh"
#include "cuda/rope.cuh"

namespace tandem::cuda {

namespace {
void check_device_and_dtype(DType dtype) {
  TD_CHECK(dtype == DType::BF16 || dtype == DType::F16 || dtype == DType::F32,
           "--dtype {}: the standard path runs in bf16, f16 or f32", dtype_name(dtype));
  int devices = 0;
  TD_CUDA_CHECK(cudaGetDeviceCount(&devices));
  TD_CHECK(devices > 0, "the standard path needs a CUDA GPU and none was found");
}
}  // namespace

StandardRunner::StandardRunner(const ModelSource& source, const StandardOptions& options,
                               void (*progress)(int64_t, int64_t))
    : config_(source.config()), dtype_(options.dtype) {
  check_device_and_dtype(dtype_);
  TD_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  // Weights arrive one at a time as fp32 host tensors; each is converted and uploaded, then freed.
  // Norm weights and biases use the activation dtype too (HF keeps every parameter in the model dtype).
  w_ = load_weights(
      source,
      [this](HostTensor&& t) {
        add_weight(upload(t, dtype_, stream_));
        return weight_storage_.back().view();
      },
      progress);
  init_runtime(options);
}

StandardRunner::StandardRunner(const ModelConfig& config, const StandardOptions& options, uint64_t seed)
    : config_(config), dtype_(options.dtype) {
  check_device_and_dtype(dtype_);
  TD_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  // Uniform weights with std 0.7 / sqrt(fan_in) keep activations O(1) through the layers; norms near 1.
  auto make = [&](std::initializer_list<int64_t> shape, float offset, float scale) {
    DeviceTensor t = DeviceTensor::empty(dtype_, shape);
    fill_uniform(t, seed++, offset, scale, stream_);
    add_weight(std::move(t));
    return weight_storage_.back().view();
  };
  auto linear = [&](int64_t out, int64_t in) { return make({out, in}, 0.0f, 0.7f * std::sqrt(3.0f / float(in))); };
  w_.embed = make({c.vocab_size, H}, 0.0f, 1.0f);
  w_.final_norm = make({H}, 1.0f, 0.1f);
  w_.lm_head = c.tie_embeddings ? w_.embed : linear(c.vocab_size, H);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    LayerWeights lw;
    lw.attn_norm = make({H}, 1.0f, 0.1f);
    lw.wqkv = linear(c.qkv_dim(), H);
    if (c.qkv_bias) lw.bqkv = make({c.qkv_dim()}, 0.0f, 0.1f);
    lw.wo = linear(H, c.q_dim());
    if (c.o_bias) lw.bo = make({H}, 0.0f, 0.1f);
    lw.mlp_norm = make({H}, 1.0f, 0.1f);
    lw.w_gate_up = linear(2 * I, H);
    lw.w_down = linear(H, I);
    w_.layers.push_back(lw);
  }
  init_runtime(options);
}

void StandardRunner::init_runtime(const StandardOptions& options) {
  gemm_ = std::make_unique<Gemm>();
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
    // Zeroed so that benchmark contexts (assume_cached) read finite values.
    TD_CUDA_CHECK(cudaMemsetAsync(k_cache_.back().view().data, 0, size_t(k_cache_.back().nbytes()), stream_));
    TD_CUDA_CHECK(cudaMemsetAsync(v_cache_.back().view().data, 0, size_t(v_cache_.back().nbytes()), stream_));
  }
  TD_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

StandardRunner::~StandardRunner() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
  if (stream_) cudaStreamDestroy(stream_);
}

void StandardRunner::assume_cached(int32_t seq, int64_t length) {
  auto it = seqs_.find(seq);
  TD_CHECK(it != seqs_.end(), "unknown sequence {}", seq);
  TD_CHECK(length >= 0 && length <= it->second.capacity, "sequence {}: cannot assume {} cached tokens (capacity {})",
           seq, length, it->second.capacity);
  it->second.length = length;
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

void StandardRunner::ensure_logit_rows(int64_t rows) {
  if (rows <= scratch_.logit_rows) return;
  int64_t n = 16;
  while (n < rows) n *= 2;
  TD_CUDA_CHECK(cudaStreamSynchronize(stream_));
  scratch_.gathered = DeviceTensor::empty(dtype_, {n, config_.hidden_size});
  scratch_.logits = DeviceTensor::empty(DType::F32, {n, config_.vocab_size});
  scratch_.logit_rows = n;
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
  // Stage timing: an event at every stage boundary; a stage's time is the gap to the previous event.
  std::vector<Stage> marks;
  auto mark = [&](Stage st) {
    if (!time_stages_) return;
    if (marks.size() + 1 > events_.size()) {
      cudaEvent_t e;
      TD_CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
    }
    TD_CUDA_CHECK(cudaEventRecord(events_[marks.size()], stream_));
    marks.push_back(st);
  };
  mark(Stage::embed);  // the start; its own interval is not counted
  auto publish = [&](Stage st, int layer, const Tensor& t) {
    mark(st);
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
    mark(Stage::kv_write);
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

  const int64_t logits_shape[] = {R, c.vocab_size};
  out.logits = pinned_->take(DType::F32, logits_shape);
  if (R > 0) {
    const Tensor sel_rows = rows(s.rows_i32, R);
    copy_to_device(logit_rows.view().slice_rows(0, R), sel_rows, stream_);
    ensure_logit_rows(R);
    const Tensor gathered = rows(s.gathered, R), logits = rows(s.logits, R);
    gather_rows(h, sel_rows, gathered, stream_);
    gemm_->linear(gathered, w_.lm_head, logits, stream_);
    mark(Stage::logits);
    copy_to_host(logits, out.logits, stream_);
  }
  TD_CUDA_CHECK(cudaStreamSynchronize(stream_));  // host staging buffers above die at scope end
  if (time_stages_) {
    stage_timings_.clear();
    std::map<Stage, StageTiming> by_stage;
    for (size_t i = 1; i < marks.size(); ++i) {
      float ms = 0;
      TD_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[i - 1], events_[i]));
      StageTiming& st = by_stage[marks[i]];
      st.stage = marks[i];
      st.ms += ms;
      st.calls += 1;
    }
    for (const auto& [stage, t] : by_stage) stage_timings_.push_back(t);
  }
  for (int64_t t = 0; t < T; ++t) {
    Seq& q = seqs_.at(step.seq_ids[size_t(t)]);
    q.length = std::max<int64_t>(q.length, step.positions[size_t(t)] + 1);
  }
  if (taps && taps->wants(Stage::logits, -1)) taps->publish(Stage::logits, -1, out.logits);
  return out;
}

}  // namespace tandem::cuda
