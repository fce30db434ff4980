// The `standard` path: one CUDA kernel per stage (src/cuda/*.cuh), cuBLASLt GEMMs, activations and weights
// in one dtype (bf16 by default; f16, f32), fp32 accumulation everywhere, and a contiguous KV cache: every
// sequence owns one contiguous row range of a per-layer pool. Same Step in, same StepOutput out, same taps
// as the reference path, so the two can be compared stage by stage.
#pragma once
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <vector>

#include "cuda/device_buffer.h"
#include "cuda/gemm.cuh"
#include "model/model.h"
#include "runtime/row_allocator.h"
#include "runtime/runner.h"

namespace tandem::cuda {

struct StandardOptions {
  DType dtype = DType::BF16;
  int64_t kv_pool_tokens = 0;  // 0: max(4 x context, 32768) tokens, capped at 40% of free device memory
};

// Time spent in one stage, summed over layers, for the last timed step.
struct StageTiming {
  Stage stage;
  double ms = 0;
  int calls = 0;
};

class StandardRunner final : public ModelRunner {
 public:
  StandardRunner(const ModelSource& source, const StandardOptions& options,
                 void (*progress)(int64_t, int64_t) = nullptr);
  // Real-shape model with deterministic pseudo-random weights made on the GPU (benchmarks; no file read).
  StandardRunner(const ModelConfig& config, const StandardOptions& options, uint64_t seed);
  ~StandardRunner() override;

  std::string_view path_name() const override { return "standard"; }
  const ModelConfig& config() const override { return config_; }
  void create_sequence(int32_t seq, int64_t capacity) override;
  void release_sequence(int32_t seq) override;
  int64_t sequence_length(int32_t seq) const override;
  StepOutput forward(const Step& step, TapSink* taps) override;

  DType dtype() const { return dtype_; }
  // Benchmarks: treat the first `length` positions of `seq` as cached without computing them (their K/V are
  // whatever the pool holds, zeros at first). Decode steps then read a context of that length.
  void assume_cached(int32_t seq, int64_t length);
  // Per-stage CUDA-event timing of every forward while enabled (adds a sync-free event pair per stage).
  void set_stage_timing(bool on) { time_stages_ = on; }
  const std::vector<StageTiming>& stage_timings() const { return stage_timings_; }
  int64_t weight_bytes() const { return weight_bytes_; }
  int64_t kv_pool_tokens() const { return rows_.capacity(); }

 private:
  struct Seq {
    int64_t base = 0;
    int64_t capacity = 0;
    int64_t length = 0;
  };
  // Activation buffers for up to `tokens` tokens per step; regrown when a step is larger.
  struct Scratch {
    int64_t tokens = 0;
    DeviceTensor x, h, qkv, attn, gate_up, act, tokens_i32, positions_i32, kv_base_i64, rows_i32;
    int64_t logit_rows = 0;  // capacity of the two below, grown separately (vocab-wide rows are large)
    DeviceTensor gathered, logits;
  };
  void ensure_scratch(int64_t tokens);
  void ensure_logit_rows(int64_t rows);
  void init_runtime(const StandardOptions& options);
  void add_weight(DeviceTensor t) {
    weight_bytes_ += t.nbytes();
    weight_storage_.push_back(std::move(t));
  }
  Tensor rows(const DeviceTensor& t, int64_t n) const { return t.view().slice_rows(0, n); }

  ModelConfig config_;
  DType dtype_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Gemm> gemm_;
  std::vector<DeviceTensor> weight_storage_;
  ModelWeights w_;  // device views into weight_storage_
  int64_t weight_bytes_ = 0;
  DeviceTensor inv_freq_;
  std::vector<DeviceTensor> k_cache_, v_cache_;  // per layer: [pool rows, kv_dim]
  RowRangeAllocator rows_;
  std::map<int32_t, Seq> seqs_;
  Scratch scratch_;
  std::shared_ptr<PinnedPool> pinned_ = std::make_shared<PinnedPool>();
  bool time_stages_ = false;
  std::vector<StageTiming> stage_timings_;
  std::vector<cudaEvent_t> events_;  // pool of stage-boundary events, reused every timed step
};

}  // namespace tandem::cuda
