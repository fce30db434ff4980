#include "cuda/cuda_host.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "cuda/attention.cuh"
#include "cuda/check.h"
#include "cuda/device_buffer.h"
#include "cuda/device_query.h"
#include "cuda/launch.h"
#include "cuda/random_fill.cuh"
#include "cuda/sampling.cuh"

namespace tandem::cuda {
namespace {

void check_device_and_dtype(DType dtype) {
  TD_CHECK(dtype == DType::BF16 || dtype == DType::F16 || dtype == DType::F32,
           "--dtype {}: the CUDA paths run in bf16, f16 or f32", dtype_name(dtype));
  TD_CHECK(device_count() > 0, "the CUDA paths need a CUDA GPU and none was found");
}

int64_t grow_to(int64_t have, int64_t need) {
  int64_t n = std::max<int64_t>(16, have);
  while (n < need) n *= 2;
  return n;
}

class CudaHost final : public DeviceHost {
 public:
  CudaHost(const ModelConfig& config, const HostOptions& o) : config_(config), dtype_(o.dtype), options_(o) {
    check_device_and_dtype(dtype_);
    TD_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  ~CudaHost() override {
    open_gate();
    if (stream_) cudaStreamSynchronize(stream_);
    for (auto& [key, g] : graphs_) cudaGraphExecDestroy(g.exec);
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
    if (staging_) cudaFreeHost(staging_);
    if (argmax_host_) cudaFreeHost(argmax_host_);
    if (sample_staging_) cudaFreeHost(sample_staging_);
    if (gate_flag_) cudaFreeHost(gate_flag_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  void load(const ModelSource& source, LoadProgress progress) {
    // Weights arrive one at a time as fp32 host tensors; each is converted and uploaded, then freed. Norm weights
    // and biases use the activation dtype too (HF keeps every parameter in the model dtype).
    w_ = load_weights(
        source,
        [this](HostTensor&& t) {
          add_weight(upload(t, dtype_, stream_));
          return weight_storage_.back().view();
        },
        progress);
    init_runtime();
  }

  void randomize(uint64_t seed) {
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
    init_runtime();
  }

  Device device() const override { return Device::CUDA; }
  const ModelConfig& config() const override { return config_; }
  DType dtype() const override { return dtype_; }
  const ModelWeights& weights() const override { return w_; }
  int64_t weight_bytes() const override { return weight_bytes_; }
  const KvGeometry& kv_geometry() const override { return geo_; }
  int64_t kv_pages() const override { return pages_; }
  bool grow_kv(int64_t) override { return false; }  // the pool is sized once, from free memory

  void poison_pages(std::span<const int32_t> pages) override {
    // All 2L pools share one allocation [2L][pages][page]: one 2-D memset per run of consecutive pages sets that
    // run in every pool. 0xFF bytes are NaN in f32, f16 and bf16.
    const size_t page_bytes = size_t(geo_.page_elems() * dtype_block_bytes(dtype_));
    std::vector<int32_t> sorted(pages.begin(), pages.end());
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 0; i < sorted.size();) {
      size_t j = i + 1;
      while (j < sorted.size() && sorted[j] == sorted[j - 1] + 1) ++j;
      char* base = static_cast<char*>(kv_.view().data) + size_t(sorted[i]) * page_bytes;
      TD_CUDA_CHECK(cudaMemset2DAsync(base, size_t(pages_) * page_bytes, 0xFF, (j - i) * page_bytes,
                                      size_t(2 * geo_.n_layers), stream_));
      i = j;
    }
  }

  void begin_step(const Step& step, const KvStepTables& tables, std::span<const int32_t> logit_rows,
                  bool graphable) override {
    open_gate();
    const ModelConfig& c = config_;
    const int64_t T = step.size(), R = int64_t(logit_rows.size());
    // The previous step ended synchronized unless it threw midway; the staging buffer below must be idle.
    TD_CUDA_CHECK(cudaStreamSynchronize(stream_));
    ensure_rows(T);
    ensure_logit_rows(R);
    slots_.x = rows(x_, T);
    slots_.h = rows(h_, T);
    slots_.qkv = rows(qkv_, T);
    slots_.attn = rows(attn_, T);
    slots_.gate_up = rows(gate_up_, T);
    slots_.act = rows(act_, T);
    slots_.final_rows = rows(final_rows_, R);
    slots_.logits = rows(logits_, R);
    ctx_.scratch_i32 = rows(scratch_, T);

    // All of the step's metadata in one pinned buffer and one copy:
    // tokens | positions | token_batch | logit_rows | page_indptr | last_page_len | page_indices.
    const int64_t B = int64_t(tables.seq_ids.size()), N = int64_t(tables.page_indices.size());
    const int64_t total = 3 * T + R + (B + 1) + B + N;
    if (total > staging_ints_) {
      if (staging_) TD_CUDA_CHECK(cudaFreeHost(staging_));
      // Room for long contexts from the start: every reallocation moves the tables and retires the graphs.
      staging_ints_ = grow_to(std::max<int64_t>(staging_ints_, 1 << 16), total);
      ++buffers_epoch_;
      TD_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&staging_), size_t(staging_ints_) * sizeof(int32_t)));
      meta_ = DeviceTensor::empty(DType::I32, {staging_ints_});
    }
    int32_t* dev = meta_.view().ptr<int32_t>();
    int64_t at = 0;
    auto put = [&](std::span<const int32_t> v) {
      std::memcpy(staging_ + at, v.data(), v.size() * sizeof(int32_t));
      const Tensor t = Tensor::contiguous(dev + at, DType::I32, {int64_t(v.size())}, Device::CUDA);
      at += int64_t(v.size());
      return t;
    };
    view_.tokens = T;
    view_.graphable = graphable;
    tables_ = tables;
    view_.tables = &tables_;
    ++view_.serial;
    view_.token_ids = put(step.tokens);
    view_.positions = put(step.positions);
    kv_tables_ = PagedKv{};
    kv_tables_.layout = geo_.layout;
    kv_tables_.page_size = geo_.page_size;
    kv_tables_.token_batch = put(tables.token_batch);
    view_.logit_rows = put(logit_rows);
    kv_tables_.page_indptr = put(tables.page_indptr);
    kv_tables_.last_page_len = put(tables.last_page_len);
    kv_tables_.page_indices = put(tables.page_indices);
    if (graphable) {
      // The kernels bound page lookups by the table's length, which a replayed graph keeps from its capture: the
      // table reaches to the end of the buffer (it is last), and page_indptr says which entries are live.
      const int64_t first = at - N;
      kv_tables_.page_indices = Tensor::contiguous(dev + first, DType::I32, {staging_ints_ - first}, Device::CUDA);
    }
    TD_CUDA_CHECK(cudaMemcpyAsync(dev, staging_, size_t(at) * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    host_positions_ = step.positions;
    view_.host_positions = host_positions_;
    const int64_t logits_shape[] = {R, c.vocab_size};
    out_logits_ = pinned_->take(DType::F32, logits_shape);
  }

  const ActivationSlots& slots() const override { return slots_; }
  const StepView& step_view() const override { return view_; }

  PagedKv kv_layer(int layer) const override {
    PagedKv kv = kv_tables_;
    const int64_t pool_elems = pages_ * geo_.page_elems(), e = dtype_block_bytes(dtype_);
    char* base = static_cast<char*>(kv_.view().data);
    kv.k = kv_pool_view(base + 2 * layer * pool_elems * e, dtype_, Device::CUDA, geo_, pages_);
    kv.v = kv_pool_view(base + (2 * layer + 1) * pool_elems * e, dtype_, Device::CUDA, geo_, pages_);
    return kv;
  }

  DeviceContext& context() override { return ctx_; }

  HostTensor kv_rows(int layer) override {
    open_gate();
    const ModelConfig& c = config_;
    DeviceTensor out = DeviceTensor::empty(dtype_, {view_.tokens, 2 * c.kv_dim()});
    kv_gather(view_.positions, kv_layer(layer),
              attention_shape(c), out, stream_);
    return download_f32(out, stream_);
  }

  HostTensor kv_pages(int layer, std::span<const int32_t> pages) override {
    open_gate();
    const int64_t pe = geo_.page_elems(), e = dtype_block_bytes(dtype_);
    HostTensor out = HostTensor::empty(DType::F32, {int64_t(pages.size()), 2, pe});
    char* base = static_cast<char*>(kv_.view().data);
    for (size_t i = 0; i < pages.size(); ++i)
      for (int kv = 0; kv < 2; ++kv) {
        TD_CHECK(pages[i] >= 0 && pages[i] < pages_, "kv_pages: page {} outside the pool ({})", pages[i], pages_);
        char* page = base + (((2 * int64_t(layer) + kv) * pages_ + pages[i]) * pe) * e;
        const HostTensor h = download_f32(Tensor::contiguous(page, dtype_, {pe}, Device::CUDA), stream_);
        std::memcpy(out.f32() + (int64_t(i) * 2 + kv) * pe, h.f32(), size_t(pe) * sizeof(float));
      }
    return out;
  }

  void scale_columns(const Tensor& t, int64_t col_begin, int64_t col_end, float factor) override {
    open_gate();
    TD_CHECK(t.ndim == 2 && t.strides[1] == 1 && 0 <= col_begin && col_begin <= col_end && col_end <= t.shape[1],
             "scale_columns: columns [{}, {}) of {}", col_begin, col_end, t.describe());
    HostTensor h = download_f32(t, stream_);  // synchronizes
    for (int64_t r = 0; r < t.shape[0]; ++r)
      for (int64_t c = col_begin; c < col_end; ++c) h.f32()[r * t.shape[1] + c] *= factor;
    DeviceTensor back = upload(h.view(), t.dtype, stream_);
    const size_t e = size_t(dtype_block_bytes(t.dtype));
    TD_CUDA_CHECK(cudaMemcpy2DAsync(t.data, size_t(t.strides[0]) * e, back.view().data, size_t(t.shape[1]) * e,
                                    size_t(t.shape[1]) * e, size_t(t.shape[0]), cudaMemcpyDeviceToDevice, stream_));
    TD_CUDA_CHECK(cudaStreamSynchronize(stream_));  // `back` is freed on return
  }

  HostTensor to_host(const Tensor& t) override {
    open_gate();
    return download_f32(t, stream_);
  }

  HostTensor finish_step(std::vector<int32_t>* argmax) override {
    open_gate();
    const int64_t R = slots_.logits.shape[0];
    if (argmax) {
      argmax->resize(size_t(R));
      if (R > 0) {
        const Tensor ids = argmax_.view().slice_rows(0, R);
        argmax_rows(slots_.logits, ids, stream_);
        TD_CUDA_CHECK(cudaMemcpyAsync(argmax_host_, ids.data, size_t(R) * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                      stream_));
      }
      TD_CUDA_CHECK(cudaStreamSynchronize(stream_));
      std::memcpy(argmax->data(), argmax_host_, size_t(R) * sizeof(int32_t));
      return HostTensor::empty(DType::F32, {0, config_.vocab_size});
    }
    if (R > 0) copy_to_host(slots_.logits, out_logits_, stream_);
    TD_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return std::move(out_logits_);
  }

  void finish_step_sampled(std::span<const RowSampling> rows, std::vector<int32_t>* tokens) override {
    open_gate();
    const int64_t R = slots_.logits.shape[0], V = config_.vocab_size;
    TD_CHECK(int64_t(rows.size()) == R, "finish_step_sampled: {} rows of sampling parameters for {} logits rows",
             rows.size(), R);
    tokens->resize(size_t(R));
    if (R == 0) {
      TD_CUDA_CHECK(cudaStreamSynchronize(stream_));
      return;
    }
    // The rows' knobs and penalty windows in one pinned buffer and one copy: params | penalized ids.
    sample_ids_.clear();
    const std::vector<SampleRowParams> params = pack_sample_rows(rows, V, &sample_ids_);
    const size_t param_bytes = params.size() * sizeof(SampleRowParams);
    const size_t ids_at = (param_bytes + 15) / 16 * 16, bytes = ids_at + sample_ids_.size() * sizeof(int32_t);
    if (bytes > sample_bytes_) {
      TD_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the old buffers may still be read
      if (sample_staging_) TD_CUDA_CHECK(cudaFreeHost(sample_staging_));
      sample_staging_ = nullptr;
      sample_bytes_ = size_t(grow_to(int64_t(sample_bytes_), int64_t(bytes)));
      TD_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&sample_staging_), sample_bytes_));
      sample_dev_ = DeviceTensor::empty(DType::U8, {int64_t(sample_bytes_)});
    }
    std::memcpy(sample_staging_, params.data(), param_bytes);
    if (!sample_ids_.empty())
      std::memcpy(sample_staging_ + ids_at, sample_ids_.data(), sample_ids_.size() * sizeof(int32_t));
    char* dev = static_cast<char*>(sample_dev_.view().data);
    TD_CUDA_CHECK(cudaMemcpyAsync(dev, sample_staging_, bytes, cudaMemcpyHostToDevice, stream_));
    const Tensor params_t = Tensor::contiguous(dev, DType::U8, {R, int64_t(sizeof(SampleRowParams))}, Device::CUDA);
    const Tensor ids_t = Tensor::contiguous(dev + ids_at, DType::I32, {int64_t(sample_ids_.size())}, Device::CUDA);
    const Tensor out = argmax_.view().slice_rows(0, R);
    sample_rows(slots_.logits, params_t, ids_t, out, stream_);
    TD_CUDA_CHECK(
        cudaMemcpyAsync(argmax_host_, out.data, size_t(R) * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
    TD_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::memcpy(tokens->data(), argmax_host_, size_t(R) * sizeof(int32_t));

    // Rows the device handed back (a candidate set over kMaxDeviceCandidates): their logits alone come to the host.
    std::vector<int64_t> on_host;
    for (int64_t r = 0; r < R; ++r)
      if ((*tokens)[size_t(r)] == kSampleOnHost) on_host.push_back(r);
    if (on_host.empty()) return;
    const size_t row_bytes = size_t(V) * sizeof(float);
    const float* logits = slots_.logits.ptr<const float>();
    for (int64_t r : on_host)
      TD_CUDA_CHECK(cudaMemcpyAsync(out_logits_.f32() + r * V, logits + r * slots_.logits.strides[0], row_bytes,
                                    cudaMemcpyDeviceToHost, stream_));
    TD_CUDA_CHECK(cudaStreamSynchronize(stream_));
    for (int64_t r : on_host) {
      const RowSampling& s = rows[size_t(r)];
      (*tokens)[size_t(r)] =
          sample_token({out_logits_.f32() + r * V, size_t(V)}, s.penalized, s.params, s.u, &sample_scratch_);
    }
  }

  GraphRun graph_begin(uint64_t key) override {
    TD_CHECK(view_.graphable, "graph_begin: the step was not begun graphable");
    auto it = graphs_.find(key);
    if (it != graphs_.end() && it->second.epoch == buffers_epoch_) {
      TD_CUDA_CHECK(cudaGraphLaunch(it->second.exec, stream_));
      it->second.last_use = ++graph_clock_;
      ++graph_replays_;
      return GraphRun::replayed;
    }
    if (it != graphs_.end()) {  // captured over buffers that have moved since
      cudaGraphExecDestroy(it->second.exec);
      graphs_.erase(it);
    }
    // The first step of a shape runs eagerly (lazy allocations, cuBLASLt heuristics, FlashInfer workspaces), the
    // second is captured.
    if (graph_seen_.insert({key, buffers_epoch_}).second) return GraphRun::eager;
    TD_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    capturing_key_ = key;
    return GraphRun::capturing;
  }

  void graph_end(bool ok) override {
    cudaGraph_t graph = nullptr;
    const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
    if (!ok) {  // a variant threw midway: drop the partial capture, keep the stream usable
      if (graph) cudaGraphDestroy(graph);
      (void)cudaGetLastError();
      return;
    }
    TD_CHECK(end == cudaSuccess && graph, "CUDA graph capture of a decode step failed: {} ({}); a variant marked "
             "graph_safe did host work (--no-cuda-graphs runs without graphs)",
             cudaGetErrorName(end), cudaGetErrorString(end));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    TD_CHECK(inst == cudaSuccess, "CUDA graph instantiation failed: {} ({})", cudaGetErrorName(inst),
             cudaGetErrorString(inst));
    if (graphs_.size() >= kMaxGraphs) {  // the least recently used goes
      auto lru = std::min_element(graphs_.begin(), graphs_.end(),
                                  [](const auto& a, const auto& b) { return a.second.last_use < b.second.last_use; });
      cudaGraphExecDestroy(lru->second.exec);
      graphs_.erase(lru);
    }
    graphs_[capturing_key_] = Graph{exec, buffers_epoch_, ++graph_clock_};
    ++graph_captures_;
    TD_CUDA_CHECK(cudaGraphLaunch(exec, stream_));
  }
  int64_t graph_replays() const override { return graph_replays_; }
  int64_t graph_captures() const override { return graph_captures_; }

  // Timed steps queue their launches behind a gate (device_buffer.h) that opens when the step's host work is done
  // (finish_step, or any read-back), so the intervals are GPU time without the host's launch gaps.
  void timing_reset() override {
    marks_ = 0;
    if (!gate_flag_) {
      TD_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&gate_flag_), sizeof(int32_t), cudaHostAllocMapped));
      TD_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&gate_dev_), gate_flag_, 0));
    }
    *gate_flag_ = 0;
    launch_stream_gate(gate_dev_, 2000.0, stream_);
    gated_ = true;
  }
  void open_gate() {
    if (gated_) *static_cast<volatile int32_t*>(gate_flag_) = 1;
    gated_ = false;
  }
  void timing_mark() override {
    if (marks_ + 1 > events_.size()) {
      cudaEvent_t e;
      TD_CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
    }
    TD_CUDA_CHECK(cudaEventRecord(events_[marks_++], stream_));
  }
  std::vector<double> timing_intervals_ms() override {
    std::vector<double> ms;
    for (size_t i = 1; i < marks_; ++i) {
      float v = 0;
      TD_CUDA_CHECK(cudaEventElapsedTime(&v, events_[i - 1], events_[i]));
      ms.push_back(v);
    }
    return ms;
  }

 private:
  void add_weight(DeviceTensor t) {
    weight_bytes_ += t.nbytes();
    weight_storage_.push_back(std::move(t));
  }

  void init_runtime() {
    ctx_.stream = stream_;
    ctx_.gemm = &gemm_;
    ctx_.split_kv = options_.split_kv;
    const std::vector<float> inv = rope_inv_freq(config_);
    HostTensor inv_host = HostTensor::empty(DType::F32, {int64_t(inv.size())});
    std::memcpy(inv_host.f32(), inv.data(), inv.size() * sizeof(float));
    inv_freq_ = upload(inv_host, DType::F32, stream_);
    ctx_.rope_inv_freq = inv_freq_.view();

    TD_CHECK(options_.page_size > 0, "--page-size {}: must be positive", options_.page_size);
    geo_ = KvGeometry{config_.n_layers, config_.n_kv_heads, config_.head_dim, options_.page_size, options_.kv_layout};
    int64_t tokens = options_.kv_tokens;
    const int64_t bytes_per_token = 2 * config_.n_layers * config_.kv_dim() * dtype_block_bytes(dtype_);
    if (tokens <= 0) {
      size_t free_bytes = 0, total_bytes = 0;
      TD_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
      const double util = options_.gpu_memory_utilization;
      if (util > 0) {
        // What this process may still take: util * total less what is in use now (our weights, other processes),
        // less a reserve for activations, logits, GEMM and FlashInfer workspaces.
        constexpr double kReserve = 1.0 * (1 << 30);
        const double used = double(total_bytes - free_bytes);
        const double budget = util * double(total_bytes) - used - kReserve;
        TD_CHECK(budget >= double(bytes_per_token * geo_.page_size),
                 "--gpu-memory-utilization {}: {:.2f} GiB of {:.2f} GiB allowed, but {:.2f} GiB are in use already "
                 "(weights and other processes) and 1 GiB is kept for activations: no room for a KV cache (raise it)",
                 util, util * double(total_bytes) / (1 << 30), double(total_bytes) / (1 << 30), used / (1 << 30));
        tokens = int64_t(budget / double(bytes_per_token));
      } else {
        tokens = std::min<int64_t>(std::max<int64_t>(4 * config_.max_positions, 32768),
                                   int64_t(0.4 * double(free_bytes)) / bytes_per_token);
      }
    }
    pages_ = tokens / geo_.page_size;
    TD_CHECK(pages_ > 0, "no device memory left for a KV cache ({} bytes per token, page size {})", bytes_per_token,
             geo_.page_size);
    kv_ = DeviceTensor::empty(dtype_, {2 * config_.n_layers * pages_ * geo_.page_elems()});
    // Zeroed so that benchmark contexts (assume_cached) read finite values.
    TD_CUDA_CHECK(cudaMemsetAsync(kv_.view().data, 0, size_t(kv_.nbytes()), stream_));
    TD_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void ensure_rows(int64_t T) {
    if (T <= rows_) return;
    const int64_t n = grow_to(rows_, T);
    const ModelConfig& c = config_;
    TD_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the old buffers may still be in use
    x_ = DeviceTensor::empty(dtype_, {n, c.hidden_size});
    h_ = DeviceTensor::empty(dtype_, {n, c.hidden_size});
    qkv_ = DeviceTensor::empty(dtype_, {n, c.qkv_dim()});
    attn_ = DeviceTensor::empty(dtype_, {n, c.q_dim()});
    gate_up_ = DeviceTensor::empty(dtype_, {n, 2 * c.intermediate_size});
    act_ = DeviceTensor::empty(dtype_, {n, c.intermediate_size});
    scratch_ = DeviceTensor::empty(DType::I32, {n});
    rows_ = n;
    ++buffers_epoch_;
  }

  void ensure_logit_rows(int64_t R) {
    if (R <= logit_rows_) return;
    const int64_t n = grow_to(logit_rows_, R);
    TD_CUDA_CHECK(cudaStreamSynchronize(stream_));
    final_rows_ = DeviceTensor::empty(dtype_, {n, config_.hidden_size});
    logits_ = DeviceTensor::empty(DType::F32, {n, config_.vocab_size});
    argmax_ = DeviceTensor::empty(DType::I32, {n});
    if (argmax_host_) TD_CUDA_CHECK(cudaFreeHost(argmax_host_));
    TD_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&argmax_host_), size_t(n) * sizeof(int32_t)));
    logit_rows_ = n;
    ++buffers_epoch_;
  }

  static Tensor rows(const DeviceTensor& t, int64_t n) { return t.view().slice_rows(0, n); }

  ModelConfig config_;
  DType dtype_;
  HostOptions options_;
  cudaStream_t stream_ = nullptr;
  Gemm gemm_;
  CudaContext ctx_;
  std::vector<DeviceTensor> weight_storage_;
  ModelWeights w_;  // device views into weight_storage_
  int64_t weight_bytes_ = 0;
  DeviceTensor inv_freq_;
  KvGeometry geo_;
  int64_t pages_ = 0;
  DeviceTensor kv_;  // [2 L][pages][page elems]: K of layer l is pool 2l, V is 2l + 1
  int64_t rows_ = 0, logit_rows_ = 0;
  DeviceTensor x_, h_, qkv_, attn_, gate_up_, act_, scratch_, final_rows_, logits_, argmax_;
  int32_t* argmax_host_ = nullptr;  // pinned [logit_rows_]
  int32_t* staging_ = nullptr;  // pinned
  int64_t staging_ints_ = 0;
  DeviceTensor meta_;
  ActivationSlots slots_;
  StepView view_;
  PagedKv kv_tables_;
  KvStepTables tables_;  // the host copy of what kv_tables_ holds on the device
  std::vector<int32_t> host_positions_;
  std::shared_ptr<PinnedPool> pinned_ = std::make_shared<PinnedPool>();
  HostTensor out_logits_;
  // finish_step_sampled: the packed rows (pinned, and their device copy) and the host sampler's scratch.
  std::vector<int32_t> sample_ids_;
  char* sample_staging_ = nullptr;
  size_t sample_bytes_ = 0;
  DeviceTensor sample_dev_;
  SampleScratch sample_scratch_;
  std::vector<cudaEvent_t> events_;  // pool of boundary events, reused every timed step
  size_t marks_ = 0;
  int32_t* gate_flag_ = nullptr;  // mapped pinned: the timing gate's flag (host side)
  int32_t* gate_dev_ = nullptr;   // the same flag, as the device sees it
  bool gated_ = false;
  // CUDA graphs by step key (DeviceHost::graph_begin). The slots and the step tables live at fixed device
  // addresses; buffers_epoch_ counts their reallocations, and a graph captured in an older epoch is not replayed.
  struct Graph {
    cudaGraphExec_t exec = nullptr;
    int64_t epoch = 0;
    int64_t last_use = 0;
  };
  static constexpr size_t kMaxGraphs = 64;
  std::map<uint64_t, Graph> graphs_;
  std::set<std::pair<uint64_t, int64_t>> graph_seen_;  // (key, epoch) run eagerly once
  uint64_t capturing_key_ = 0;
  int64_t buffers_epoch_ = 0, graph_clock_ = 0, graph_replays_ = 0, graph_captures_ = 0;
};

}  // namespace

std::unique_ptr<DeviceHost> make_cuda_host(const ModelSource& source, const HostOptions& options,
                                           LoadProgress progress) {
  set_programmatic_launch(options.programmatic_launch);
  auto h = std::make_unique<CudaHost>(source.config(), options);
  h->load(source, progress);
  return h;
}

std::unique_ptr<DeviceHost> make_random_cuda_host(const ModelConfig& config, const HostOptions& options,
                                                  uint64_t seed) {
  set_programmatic_launch(options.programmatic_launch);
  auto h = std::make_unique<CudaHost>(config, options);
  h->randomize(seed);
  return h;
}

TD_REGISTER_DEVICE_FAMILY(DeviceFamily{Device::CUDA, [] { return device_count() > 0; },
                                       [] { return device_count() > 0 ? device_name(0) : std::string("no GPU"); },
                                       make_cuda_host, make_random_cuda_host});

}  // namespace tandem::cuda
