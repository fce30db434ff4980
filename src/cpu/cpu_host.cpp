#include "cpu/cpu_host.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>

#include "core/parallel.h"
#include "cpu/ops.h"
#include "cpu/quant_dot.h"
#include "model/stored_weights.h"

namespace tandem::cpu {
namespace {

class CpuContext final : public DeviceContext {
 public:
  Device device() const override { return Device::CPU; }
};

class CpuHost final : public DeviceHost {
 public:
  // `dense`: fp32 weights loaded already (the reference path's tests), or null with `source` given: the weights
  // are read in prepare_weights, in the formats the plan asks for.
  CpuHost(const ModelConfig& config, std::shared_ptr<const Model> dense, const ModelSource* source,
          LoadProgress progress, const HostOptions& o)
      : config_(config), dense_(std::move(dense)), pending_(source), progress_(progress) {
    const ModelConfig& c = config_;
    geo_ = KvGeometry{c.n_layers, c.n_kv_heads, c.head_dim, o.page_size, o.kv_layout};
    TD_CHECK(o.page_size > 0, "--page-size {}: must be positive", o.page_size);
    const std::vector<float> inv = rope_inv_freq(c);
    inv_freq_ = HostTensor::empty(DType::F32, {int64_t(inv.size())});
    std::memcpy(inv_freq_.f32(), inv.data(), inv.size() * sizeof(float));
    ctx_.rope_inv_freq = inv_freq_.view();
    count_weight_bytes();
    // Host memory is cheap to grow: start with room for --kv-tokens (or 1024 tokens) and double on demand, unless
    // the pool is fixed (HostOptions::kv_fixed: as on the GPU; the server then preempts when it is full).
    fixed_pool_ = o.kv_fixed;
    const int64_t tokens = o.kv_tokens > 0 ? o.kv_tokens : 1024;
    resize_pool((tokens + o.page_size - 1) / o.page_size);
  }

  void prepare_weights(bool dense, bool stored) override {
    if (dense && !dense_) {
      TD_CHECK(pending_, "the CPU host was given stored weights only; this plan reads fp32 weights");
      dense_ = std::shared_ptr<const Model>(load_reference_model(*pending_, progress_));
    }
    if (stored && !stored_) {
      TD_CHECK(pending_, "the CPU host was given fp32 weights only; this plan reads weights in their stored format");
      stored_ = std::shared_ptr<const Model>(load_stored_model(*pending_, stored_linear_supported, progress_));
    }
    pending_ = nullptr;
    count_weight_bytes();
  }

  const ModelWeights& weights(WeightFormat f) const override {
    const std::shared_ptr<const Model>& m = f == WeightFormat::stored ? stored_ : dense_;
    TD_CHECK(m, "the CPU host holds no {} weights (prepare_weights was not asked for them)",
             f == WeightFormat::stored ? "stored-format" : "fp32");
    return m->weights;
  }

  Device device() const override { return Device::CPU; }
  const ModelConfig& config() const override { return config_; }
  DType dtype() const override { return DType::F32; }
  const ModelWeights& weights() const override {
    return weights(dense_ || !stored_ ? WeightFormat::dense : WeightFormat::stored);
  }
  int64_t weight_bytes() const override { return weight_bytes_; }
  const KvGeometry& kv_geometry() const override { return geo_; }
  int64_t kv_pages() const override { return pages_; }

  bool grow_kv(int64_t pages) override {
    if (pages <= pages_) return true;
    if (fixed_pool_) return false;
    resize_pool(std::max(pages, 2 * pages_));
    return true;
  }

  void poison_pages(std::span<const int32_t> pages) override {
    const int64_t pe = geo_.page_elems();
    for (int64_t pool = 0; pool < 2 * geo_.n_layers; ++pool)
      for (int32_t p : pages) {
        float* base = kv_.data() + (pool * pages_ + p) * pe;
        std::fill(base, base + pe, std::numeric_limits<float>::quiet_NaN());
      }
  }

  void begin_step(const Step& step, const KvStepTables& tables, std::span<const int32_t> logit_rows,
                  bool /*graphable*/) override {
    const ModelConfig& c = config_;
    const int64_t T = step.size(), R = int64_t(logit_rows.size());
    if (T > rows_) {
      rows_ = std::max<int64_t>(16, rows_);
      while (rows_ < T) rows_ *= 2;
      x_ = HostTensor::empty(DType::F32, {rows_, c.hidden_size});
      h_ = HostTensor::empty(DType::F32, {rows_, c.hidden_size});
      qkv_ = HostTensor::empty(DType::F32, {rows_, c.qkv_dim()});
      attn_ = HostTensor::empty(DType::F32, {rows_, c.q_dim()});
      gate_up_ = HostTensor::empty(DType::F32, {rows_, 2 * c.intermediate_size});
      act_ = HostTensor::empty(DType::F32, {rows_, c.intermediate_size});
    }
    slots_.x = x_.view().slice_rows(0, T);
    slots_.h = h_.view().slice_rows(0, T);
    slots_.qkv = qkv_.view().slice_rows(0, T);
    slots_.attn = attn_.view().slice_rows(0, T);
    slots_.gate_up = gate_up_.view().slice_rows(0, T);
    slots_.act = act_.view().slice_rows(0, T);
    final_rows_ = HostTensor::empty(DType::F32, {R, c.hidden_size});
    logits_ = HostTensor::empty(DType::F32, {R, c.vocab_size});
    slots_.final_rows = final_rows_.view();
    slots_.logits = logits_.view();

    tokens_ = step.tokens;
    positions_ = step.positions;
    logit_rows_.assign(logit_rows.begin(), logit_rows.end());
    tables_ = tables;
    auto i32 = [](std::vector<int32_t>& v) { return Tensor::contiguous(v.data(), DType::I32, {int64_t(v.size())}); };
    view_.tokens = T;
    view_.tables = &tables_;
    ++view_.serial;
    view_.token_ids = i32(tokens_);
    view_.positions = i32(positions_);
    view_.logit_rows = i32(logit_rows_);
    view_.host_positions = positions_;
    kv_tables_ = PagedKv{};
    kv_tables_.layout = geo_.layout;
    kv_tables_.page_size = geo_.page_size;
    kv_tables_.page_indptr = i32(tables_.page_indptr);
    kv_tables_.page_indices = i32(tables_.page_indices);
    kv_tables_.last_page_len = i32(tables_.last_page_len);
    kv_tables_.token_batch = i32(tables_.token_batch);
  }

  const ActivationSlots& slots() const override { return slots_; }
  const StepView& step_view() const override { return view_; }

  PagedKv kv_layer(int layer) const override {
    PagedKv kv = kv_tables_;
    float* base = const_cast<float*>(kv_.data());
    kv.k = kv_pool_view(base + (2 * int64_t(layer)) * pages_ * geo_.page_elems(), DType::F32, Device::CPU, geo_, pages_);
    kv.v = kv_pool_view(base + (2 * int64_t(layer) + 1) * pages_ * geo_.page_elems(), DType::F32, Device::CPU, geo_,
                        pages_);
    return kv;
  }

  DeviceContext& context() override { return ctx_; }

  HostTensor kv_rows(int layer) override {
    const ModelConfig& c = config_;
    HostTensor out = HostTensor::empty(DType::F32, {view_.tokens, 2 * c.kv_dim()});
    kv_gather(view_.positions, kv_layer(layer),
              attention_shape(c), out);
    return out;
  }

  HostTensor kv_pages(int layer, std::span<const int32_t> pages) override {
    const int64_t pe = geo_.page_elems();
    HostTensor out = HostTensor::empty(DType::F32, {int64_t(pages.size()), 2, pe});
    for (size_t i = 0; i < pages.size(); ++i)
      for (int kv = 0; kv < 2; ++kv) {
        TD_CHECK(pages[i] >= 0 && pages[i] < pages_, "kv_pages: page {} outside the pool ({})", pages[i], pages_);
        const float* src = kv_.data() + ((2 * int64_t(layer) + kv) * pages_ + pages[i]) * pe;
        std::memcpy(out.f32() + (int64_t(i) * 2 + kv) * pe, src, size_t(pe) * sizeof(float));
      }
    return out;
  }

  void scale_columns(const Tensor& t, int64_t col_begin, int64_t col_end, float factor) override {
    TD_CHECK(t.dtype == DType::F32 && t.ndim == 2 && 0 <= col_begin && col_begin <= col_end && col_end <= t.shape[1],
             "scale_columns: columns [{}, {}) of {}", col_begin, col_end, t.describe());
    for (int64_t r = 0; r < t.shape[0]; ++r) {
      float* row = t.ptr<float>() + r * t.strides[0];
      for (int64_t c = col_begin; c < col_end; ++c) row[c] *= factor;
    }
  }

  HostTensor to_host(const Tensor& t) override { return HostTensor::to_f32(t); }
  HostTensor finish_step(std::vector<int32_t>* argmax) override {
    if (!argmax) return std::move(logits_);
    const int64_t R = logits_.numel() > 0 ? logits_.view().shape[0] : 0, V = config_.vocab_size;
    argmax->resize(size_t(R));
    for (int64_t r = 0; r < R; ++r) (*argmax)[size_t(r)] = greedy_token({logits_.f32() + r * V, size_t(V)});
    return HostTensor::empty(DType::F32, {0, V});
  }
  void finish_step_sampled(std::span<const RowSampling> rows, std::vector<int32_t>* tokens) override {
    const int64_t R = logits_.numel() > 0 ? logits_.view().shape[0] : 0, V = config_.vocab_size;
    TD_CHECK(int64_t(rows.size()) == R, "finish_step_sampled: {} rows of sampling parameters for {} logits rows",
             rows.size(), R);
    tokens->resize(size_t(R));
    for (int64_t r = 0; r < R; ++r) {
      const RowSampling& s = rows[size_t(r)];
      (*tokens)[size_t(r)] = sample_token({logits_.f32() + r * V, size_t(V)}, s.penalized, s.params, s.u, &scratch_);
    }
  }

  void timing_reset() override { marks_.clear(); }
  void timing_mark() override { marks_.push_back(std::chrono::steady_clock::now()); }
  std::vector<double> timing_intervals_ms() override {
    std::vector<double> ms;
    for (size_t i = 1; i < marks_.size(); ++i)
      ms.push_back(std::chrono::duration<double, std::milli>(marks_[i] - marks_[i - 1]).count());
    return ms;
  }

 private:
  void count_weight_bytes() {
    weight_bytes_ = 0;
    for (const Model* m : {dense_.get(), stored_.get()})
      if (m)
        for (const HostTensor& t : m->storage) weight_bytes_ += t.view().nbytes();
  }

  // Pools are [2 L][pages][page elems]: K of layer l is pool 2l, V is 2l + 1. Growing copies each pool's pages.
  void resize_pool(int64_t pages) {
    const int64_t pe = geo_.page_elems();
    std::vector<float> next(size_t(2 * geo_.n_layers * pages * pe), 0.0f);
    for (int64_t pool = 0; pool < 2 * geo_.n_layers && pages_ > 0; ++pool)
      std::memcpy(next.data() + pool * pages * pe, kv_.data() + pool * pages_ * pe, size_t(pages_ * pe) * sizeof(float));
    kv_ = std::move(next);
    pages_ = pages;
  }

  ModelConfig config_;
  std::shared_ptr<const Model> dense_, stored_;
  const ModelSource* pending_ = nullptr;  // read in prepare_weights, then dropped
  LoadProgress progress_ = nullptr;
  KvGeometry geo_;
  int64_t weight_bytes_ = 0;
  HostTensor inv_freq_;
  CpuContext ctx_;
  std::vector<float> kv_;
  int64_t pages_ = 0;
  bool fixed_pool_ = false;  // HostOptions::kv_fixed: never grows
  int64_t rows_ = 0;
  HostTensor x_, h_, qkv_, attn_, gate_up_, act_, final_rows_, logits_;
  ActivationSlots slots_;
  StepView view_;
  std::vector<int32_t> tokens_, positions_, logit_rows_;
  KvStepTables tables_;
  PagedKv kv_tables_;
  std::vector<std::chrono::steady_clock::time_point> marks_;
  SampleScratch scratch_;  // finish_step_sampled
};

}  // namespace

std::unique_ptr<DeviceHost> make_cpu_host(std::shared_ptr<const Model> model, const HostOptions& options) {
  const ModelConfig config = model->config;
  return std::make_unique<CpuHost>(config, std::move(model), nullptr, nullptr, options);
}

std::unique_ptr<DeviceHost> make_cpu_host(const ModelSource& source, const HostOptions& options,
                                          LoadProgress progress) {
  return std::make_unique<CpuHost>(source.config(), nullptr, &source, progress, options);
}

TD_REGISTER_DEVICE_FAMILY(DeviceFamily{
    Device::CPU, [] { return true; },
    [] { return "cpu, " + std::to_string(num_threads()) + " threads"; },
    [](const ModelSource& src, const HostOptions& o, LoadProgress progress) { return make_cpu_host(src, o, progress); },
    {}});

}  // namespace tandem::cpu
