// The executor: runs any plan (runtime/plan.h) over a device host (exec/device_host.h). It is the one forward
// loop of every path: sequence bookkeeping and KV page allocation, the layer loop calling the plan's variants,
// publishing each variant's last tap, per-variant timing, and the --kv-poison check.
#pragma once
#include <map>
#include <memory>
#include <vector>

#include "exec/device_host.h"
#include "runtime/plan.h"
#include "runtime/runner.h"

namespace tandem {

struct ExecutorOptions {
  // Fresh KV pages are filled with NaN, and each attention output is checked: a read of a slot never written
  // fails at once, naming the layer.
  bool kv_poison = false;
  // After every variant its output is copied to the host and scanned; the first NaN/Inf stops the step with an
  // error naming the tap, the variant and the statistics of the tap before it (its input). Costs one device ->
  // host copy per variant and layer.
  bool nan_check = false;
  // Decode steps (one token per sequence, at most kMaxGraphTokens) of a plan whose variants are all graph_safe
  // run from CUDA graphs on devices that have them: captured the second time a shape is seen, replayed after.
  // Off while taps, timing, --nan-check, --kv-poison or perturbations are active (they need the host between
  // variants). --no-cuda-graphs turns them off.
  bool cuda_graphs = true;
  // Prefix caching (PageTable): attach_prefix / publish_prefix share whole pages of common prefixes between
  // sequences. Off by default: a cached K/V computed in another batch may differ from a recomputed one in the
  // last bits on the GPU paths (the server and chat turn it on).
  bool prefix_caching = false;
};
constexpr int64_t kMaxGraphTokens = 512;

// forward() found too few free KV pages for the step; nothing was run or reserved (the engine preempts on it).
class KvOutOfPages : public Error {
 public:
  using Error::Error;
};

// A perturbation experiment: after stage `stage` of layer `layer` (-1: every layer; model-level stages: -1),
// columns [col_begin, col_end) of that stage's output slot are multiplied by `factor`.
struct Perturbation {
  Stage stage = Stage::qkv;
  int layer = -1;
  int64_t col_begin = 0, col_end = 0;
  float factor = 1.0f;
  std::string spec;  // as given, for messages
};
// "L1.qkv:k:scale=0.0005" (layer L1 or L*, any published stage, part q | k | v of qkv/rope or all, scale=F).
Perturbation parse_perturbation(const std::string& spec, const ModelConfig& c);

// Time spent in one variant, summed over layers, for the last timed step.
struct VariantTiming {
  const Variant* variant = nullptr;
  double ms = 0;
  int calls = 0;
};

class Executor final : public ModelRunner {
 public:
  Executor(std::unique_ptr<DeviceHost> host, Plan plan, ExecutorOptions options = {});

  std::string_view path_name() const override { return plan_.path; }
  const ModelConfig& config() const override { return host_->config(); }
  void create_sequence(int32_t seq, int64_t capacity) override;
  void release_sequence(int32_t seq) override;
  int64_t sequence_length(int32_t seq) const override;
  StepOutput forward(const Step& step, TapSink* taps) override;
  int64_t attach_prefix(int32_t seq, std::span<const int32_t> tokens) override;
  void publish_prefix(int32_t seq, std::span<const int32_t> tokens) override;
  bool prefix_caching() const { return options_.prefix_caching; }

  const Plan& plan() const { return plan_; }
  DeviceHost& host() { return *host_; }
  const PageTable& pages() const { return pages_; }
  // Benchmarks: treat the first `length` positions of `seq` as cached without computing them (pages are
  // reserved; their K/V are whatever the pool holds).
  void assume_cached(int32_t seq, int64_t length);
  void set_timing(bool on) { timing_ = on; }
  // Sequence `seq`'s cached K | V of one layer, read through its page table: [length, 2 kv_dim] fp32 (--kv-verify).
  HostTensor cached_kv(int32_t seq, int layer);
  // Applied in every following step; a stage inside a multi-stage variant of the plan is an error.
  void set_perturbations(std::vector<Perturbation> p);
  const std::vector<VariantTiming>& timings() const { return timings_; }
  // Whether every variant of the plan is graph_safe (CUDA graphs can be used at all).
  bool plan_graph_safe() const { return graph_safe_plan_; }
  // Variant::state of `v` for the last step ("" when it has none).
  std::string variant_state(const Variant& v) { return v.state ? v.state(host_->context()) : std::string(); }

 private:
  struct Seq {
    int64_t length = 0;
    int64_t capacity = 0;
    int64_t published = 0;   // leading pages published (prefix caching)
    uint64_t last_hash = 0;  // the hash of the last of them
  };
  // Pages for every sequence of the step, all or none; returns the fresh ones.
  std::vector<int32_t> reserve_pages(const std::map<int32_t, int64_t>& length_after);
  void run_segment(const Variant& v, int layer, const PagedKv* kv, TapSink* taps);
  VariantArgs args_for(const Variant& v, int layer, const PagedKv* kv);
  void run_layers(TapSink* taps);

  std::unique_ptr<DeviceHost> host_;
  Plan plan_;
  ExecutorOptions options_;
  PageTable pages_;
  std::map<int32_t, Seq> seqs_;
  bool timing_ = false;
  std::vector<const Variant*> timed_;  // the variant of each timing interval of this step
  std::vector<VariantTiming> timings_;
  std::vector<int32_t> order_;         // this step's token order when regrouped (run row i is caller token order_[i])
  std::string nan_prev_;               // --nan-check: the previous tap's statistics, "" at the start of a step
  std::vector<Perturbation> perturb_;
  bool graph_safe_plan_ = false;
  SampleScratch scratch_;              // a sampled step whose logits came to the host for a tap
};

}  // namespace tandem
