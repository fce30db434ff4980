// DeviceHost: what one device family keeps for a model so that the executor can run any plan of its variants:
// the weights, the paged KV storage, the activation slots, the step's metadata on the device, transfers and
// timing. It holds no sequence state and runs no stage itself: the executor (runtime/executor.h) does the
// bookkeeping once for every device, and the variants do the math.
//
// Device families register a DeviceFamily (cpu/cpu_host.cpp, cuda/cuda_host.cpp), so the runtime opens a host by
// device without including either.
#pragma once
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "exec/kv_cache.h"
#include "exec/split_kv.h"
#include "exec/variant.h"
#include "model/model.h"
#include "exec/step.h"

namespace tandem {

struct HostOptions {
  DType dtype = DType::F32;     // weights and activations (the CPU reference always runs fp32)
  int64_t kv_tokens = 0;        // KV pool size in tokens; 0: the device's default
  int64_t page_size = 16;
  KvLayout kv_layout = KvLayout::NHD;
  // GPU: when > 0 (and kv_tokens is 0), the KV pool takes what is left of this fraction of the card's memory
  // after the weights and an activation reserve (vLLM's --gpu-memory-utilization).
  double gpu_memory_utilization = 0;
  // GPU: programmatic dependent launch for the kernels that support it (cuda/launch.h; process-wide).
  bool programmatic_launch = true;
  // CPU: the KV pool stays at kv_tokens instead of growing on demand (the GPU pool is always fixed).
  bool kv_fixed = false;
  // GPU: FlashInfer's split-KV (--split-kv; exec/split_kv.h), for the attention variants that run FlashInfer.
  SplitKv split_kv = SplitKv::automatic;
};

class DeviceHost {
 public:
  virtual ~DeviceHost() = default;
  virtual Device device() const = 0;
  virtual const ModelConfig& config() const = 0;
  virtual DType dtype() const = 0;
  virtual const ModelWeights& weights() const = 0;
  // The plan's weight formats (Variant::weights), called once by the executor before any step. A host that holds
  // only one format fails for the other; the CPU host opened from a source reads its weights here, so that source
  // must outlive this call (make_runner keeps it).
  virtual void prepare_weights(bool dense, bool stored) {
    TD_CHECK(!stored, "this device has no kernels for weights in their stored format (a CPU path needs them)");
    (void)dense;
  }
  virtual const ModelWeights& weights(WeightFormat f) const {
    TD_CHECK(f == WeightFormat::dense, "this device holds its weights in one format only");
    return weights();
  }
  virtual int64_t weight_bytes() const = 0;
  virtual const KvGeometry& kv_geometry() const = 0;
  virtual int64_t kv_pages() const = 0;
  // Enlarges the KV pools to at least `pages` pages, keeping their contents; false when the device cannot.
  virtual bool grow_kv(int64_t pages) = 0;
  // Fills the given pages of every layer's K and V with NaN (--kv-poison).
  virtual void poison_pages(std::span<const int32_t> pages) = 0;

  // Sizes the slots for the step and copies its metadata to the device. graphable: the step may run from a CUDA
  // graph (StepView::graphable).
  virtual void begin_step(const Step& step, const KvStepTables& tables, std::span<const int32_t> logit_rows,
                          bool graphable) = 0;
  virtual const ActivationSlots& slots() const = 0;
  virtual const StepView& step_view() const = 0;
  virtual PagedKv kv_layer(int layer) const = 0;
  virtual DeviceContext& context() = 0;
  // The step's K|V rows of one layer read back through the page tables: [T, 2 kv_dim] fp32 on the host.
  virtual HostTensor kv_rows(int layer) = 0;
  // Raw pages of one layer's pools as fp32: [pages.size(), 2, page_elems] (K page, then V page), in the pools'
  // layout (--kv-verify).
  virtual HostTensor kv_pages(int layer, std::span<const int32_t> pages) = 0;
  // A slot's tensor as fp32 on the host (taps); waits for the work before it.
  virtual HostTensor to_host(const Tensor& t) = 0;
  // Perturbation experiments: t[:, col_begin:col_end] *= factor, in place, on a slot of this step (rounded to
  // the slot's dtype). Diagnostics only: on the GPU it goes through the host.
  virtual void scale_columns(const Tensor& t, int64_t col_begin, int64_t col_end, float factor) = 0;
  // Waits for the step and returns its logits [R, V] fp32 on the host; with `argmax`, fills it with each row's
  // greedy_token() instead (chosen on the device) and returns [0, V]: the logits are not copied.
  virtual HostTensor finish_step(std::vector<int32_t>* argmax) = 0;
  // Waits for the step and fills `tokens` with sample_token() (exec/sampling.h) of each logits row r under rows[r]
  // (rows in this host's row order), without returning the logits. The GPU chooses on the device and copies ids;
  // a row it cannot sample there (cuda/sampling.cuh kSampleOnHost) comes to the host alone and is sampled here.
  virtual void finish_step_sampled(std::span<const RowSampling> rows, std::vector<int32_t>* tokens) = 0;

  // CUDA graphs, for steps begun graphable, after the variants' prepare(): `key` names the step's shape (tokens,
  // logits rows, batch, the context's graph_salt). replayed: a graph captured for this key over the host's
  // current buffers was launched, run nothing. capturing: the variants' launches are being recorded, call
  // graph_end(true) after them (it instantiates and launches the graph) or graph_end(false) if one threw. eager:
  // run them as usual (the first step of a key runs eagerly, so that lazy set-up happens outside any capture).
  enum class GraphRun { eager, capturing, replayed };
  virtual GraphRun graph_begin(uint64_t key) { (void)key; return GraphRun::eager; }
  virtual void graph_end(bool ok) { (void)ok; }
  virtual int64_t graph_replays() const { return 0; }   // steps run from a graph so far
  virtual int64_t graph_captures() const { return 0; }  // graphs captured so far

  // Timing of the variants of a step: mark() at each boundary; intervals() after finish_step().
  virtual void timing_reset() = 0;
  virtual void timing_mark() = 0;
  virtual std::vector<double> timing_intervals_ms() = 0;
};

using LoadProgress = void (*)(int64_t done, int64_t total);

struct DeviceFamily {
  Device device = Device::CPU;
  std::function<bool()> available;
  std::function<std::string()> describe;  // "cpu, 2 threads" / "NVIDIA H200"
  std::function<std::unique_ptr<DeviceHost>(const ModelSource&, const HostOptions&, LoadProgress)> open;
  // Real-shape model with deterministic pseudo-random weights (benchmarks; no file read). May be empty.
  std::function<std::unique_ptr<DeviceHost>(const ModelConfig&, const HostOptions&, uint64_t seed)> random;
};
void register_device_family(DeviceFamily f);
const DeviceFamily* find_device_family(Device d);

#define TD_REGISTER_DEVICE_FAMILY(...) \
  static const bool TD_CONCAT(td_family_registered_, __LINE__) = (::tandem::register_device_family(__VA_ARGS__), true)

}  // namespace tandem
