// The `reference` path: every stage in fp32 on the CPU (cpu/ops.h), a contiguous KV cache per sequence.
// It is the oracle the GPU paths are compared against, and the runtime when there is no GPU.
#pragma once
#include <map>
#include <memory>
#include <vector>

#include "model/model.h"
#include "runtime/runner.h"

namespace tandem {

class ReferenceRunner final : public ModelRunner {
 public:
  explicit ReferenceRunner(std::shared_ptr<const Model> model);

  std::string_view path_name() const override { return "reference"; }
  const ModelConfig& config() const override { return model_->config; }
  void create_sequence(int32_t seq, int64_t capacity) override;
  void release_sequence(int32_t seq) override;
  int64_t sequence_length(int32_t seq) const override;
  StepOutput forward(const Step& step, TapSink* taps) override;

 private:
  struct SeqCache {
    int64_t capacity = 0;
    int64_t length = 0;
    std::vector<std::vector<float>> k, v;  // per layer: [capacity, kv_dim]
  };
  void validate(const Step& step) const;

  std::shared_ptr<const Model> model_;
  std::vector<float> inv_freq_;
  std::map<int32_t, SeqCache> seqs_;
};

}  // namespace tandem
