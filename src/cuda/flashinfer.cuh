// The one FlashInfer adapter: causal GQA attention over the paged KV cache (exec/kv_cache.h) for a ragged step,
// prefill and decode tokens of several sequences mixed, through FlashInfer 0.7.2.post1's FA2 batch-prefill
// kernel (headers from tools/fetch_flashinfer.sh; built by cmake/flashinfer.cmake). Every FlashInfer call of the
// engine lives in flashinfer.cu; this header includes none of FlashInfer's, so the rest of the build does not
// need its include path.
//
// Contract (the same as cuda::attention, cuda/attention.cuh, for a step whose tokens are grouped by sequence):
// token t of the step belongs to batch entry b (tables.qo_indptr[b] <= t < tables.qo_indptr[b + 1]); entry b's
// qo_len = qo_indptr[b + 1] - qo_indptr[b] tokens are its *last* qo_len positions, kv_len - qo_len .. kv_len - 1
// (kv_len = tables.kv_len[b], the cached tokens after this step's append: call kv_write for the whole step before
// run()). Query row i of entry b sits at position p = kv_len - qo_len + i and attends to positions [lo, p] with
// lo = max(0, p - window + 1) when shape.sliding_window > 0, else 0 (FlashInfer's window_left = window - 1).
// Scores scaled by 1/sqrt(head_dim) (always set), softmax and the weighted sum in fp32, the output rounded once.
// q, the caches and out share one dtype (bf16 or f16). Logits are masked with IEEE -inf (0.7.2.post1, so rows
// whose scores are all very negative are still a proper softmax, unlike the old -5e4 sentinel).
//
// Kernel choice: one FA2 batch-prefill kernel (MaskMode::kCausal, PosEncodingMode::kNone, the sliding-window
// variant DefaultAttention<false, true, false, false> with window_left = -1 for full attention) serves every
// token. A decode token is a prefill of one query (for qo_len = 1 the causal mask is a no-op): this is FlashInfer's
// "tensor-core decode" path (Python's use_tensor_cores=True), and it covers every query/KV group size, including
// 7 (Qwen2.5-0.5B/7B), which the CUDA-core decode kernel (DISPATCH_GQA_GROUP_SIZE: 1, 2, 3, 4, 6, 8, 16) lacks.
// Instantiated: {bf16, f16} x head_dim {64, 128} x CTA tile {16, 64, 128} (every tile the plan can pick for these
// head dims), equal K/V strides, in flashinfer.cu alone.
//
// Use: construct once per model (workspaces), plan() once per step on the host tables, run() once per layer with
// that layer's PagedKv (its device tables must hold the same values as the planned host tables), all on one
// stream. plan() copies its metadata to the device asynchronously from a double-buffered pinned buffer; it waits
// for the copy of the plan before the last, so the host may run ahead by one step. CUDA graphs: plan decode steps
// with cuda_graph = true, outside any capture (workspaces grow on demand, which synchronizes the device), and
// capture only run().
//
// Checks: always, cheap structural checks (sizes, dtypes, devices, strides against the layout, K and V strides
// equal, T matching the plan); in debug builds (NDEBUG unset) also validate_flashinfer_tables() on every plan and,
// on the first run() after a plan, a read-back of the device tables compared with the planned host tables.
// Failures throw tandem::Error naming the sequence (batch entry and sequence id) and the offending value;
// FlashInfer's own exceptions and CUDA errors are rethrown as tandem::Error.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

#include "core/dtype.h"
#include "core/tensor.h"
#include "exec/kv_cache.h"
#include "exec/split_kv.h"

namespace tandem::cuda {

// Whether the adapter was instantiated for this geometry and dtype; if not, `why` (when given) says what is
// missing. Instantiated: dtype bf16 or f16; head_dim 64 or 128; n_heads a multiple of n_kv_heads with group size
// n_heads / n_kv_heads in 1..16 (any group size works through the prefill kernel; the tests cover 1-8);
// sliding_window >= 0.
bool flashinfer_supports(const AttentionShape& shape, DType dtype, std::string* why = nullptr);

// Throws tandem::Error unless the host tables of a step are valid FlashInfer metadata: seq_ids, kv_len and
// last_page_len have B entries and page_indptr B + 1; page_indptr starts at 0, never decreases and ends at
// page_indices.size(); every page index lies in [0, num_pages) and none appears twice in the step; every entry
// has at least one page, its last_page_len lies in 1..page_size and kv_len = (pages - 1) * page_size +
// last_page_len; qo_indptr is present (tokens grouped by sequence), starts at 0, rises by at least 1 per entry
// and ends at token_batch.size(); token_batch agrees with qo_indptr; qo_len <= kv_len per entry; all counts fit
// int32. The message names the entry, its sequence id and the value. Always compiled; plan() calls it in debug
// builds.
void validate_flashinfer_tables(const KvStepTables& tables, int64_t page_size, int64_t num_pages);

// SplitKv::on: the KV chunk a forced split starts from, in tokens, rounded up to whole pages (FlashInfer splits at
// page granularity): 4 tokens at page size 1 (a 5-token prompt is already split in two), one page at 16. plan()
// doubles it where the chunks would not fit: in CUDA-graph mode more chunks than the fixed grid has CTAs
// (2 per SM / n_kv_heads, FlashInfer's max_batch_size_if_split), and in any mode partial outputs larger than
// kForcedSplitMaxFloatBytes (a long prompt in 4-token chunks would need gigabytes).
inline constexpr int64_t kForcedSplitChunkTokens = 4;
inline constexpr size_t kForcedSplitMaxFloatBytes = size_t(64) << 20;

// What the last plan() chose (for tests and reports).
struct FlashInferPlanSummary {
  int64_t batch = 0;                                          // B
  int64_t tokens = 0;                                         // T
  int64_t cta_tile_q = 0;                                     // 16, 64 or 128
  int64_t padded_batch_size = 0;                              // CTAs along x
  bool split_kv = false;                                      // KV split into chunks, partial results merged
  SplitKv split_mode = SplitKv::automatic;                    // what the adapter was asked for (--split-kv)
  int64_t kv_chunk_tokens = 0;                                // split_kv: the chunk, in tokens; else 0
  bool cuda_graph = false;                                    // planned for a fixed launch shape
  size_t float_workspace_bytes = 0, int_workspace_bytes = 0;  // what this plan needs
};

// "FlashInfer plan: batch 3, 24 tokens, CTA tile 16, padded batch 33, split-KV on (auto, 48-token chunks),
// CUDA-graph mode, workspaces ..." (reports). The parenthesis names the requested mode: "auto", "forced, N-token
// chunks" (on), "forced, but no sequence spans two N-token chunks" (on, nothing to split), "disabled" (off).
std::string describe_plan(const FlashInferPlanSummary& s);

class FlashInferAttention {
 public:
  // page_size and layout: the KV pools'. max_tokens / max_batch: the largest step expected (workspaces are sized
  // for them with FlashInfer's PrefillPlanWorkspaceSize and grow if a step needs more). split_kv: automatic
  // (FlashInfer's scheduler), off (one CTA per (query tile, head) over the whole KV: slower for long contexts)
  // or on (every sequence longer than one chunk is split, kForcedSplitChunkTokens; a diagnostic mode, so that
  // split and unsplit kernels can be compared on short inputs too). Throws tandem::Error when
  // flashinfer_supports() is false or no CUDA device is present.
  FlashInferAttention(const AttentionShape& shape, DType dtype, int64_t page_size, KvLayout layout,
                      int64_t max_tokens = 8192, int64_t max_batch = 256, SplitKv split_kv = SplitKv::automatic);
  ~FlashInferAttention();
  FlashInferAttention(const FlashInferAttention&) = delete;
  FlashInferAttention& operator=(const FlashInferAttention&) = delete;

  // Plans the step (host work plus one async copy on `stream`). tables.qo_indptr must be non-empty (the step's
  // tokens grouped by sequence). num_pages: the pools' page count (bounds the page indices in debug checks).
  // cuda_graph: a decode step (one query per sequence) planned in FlashInfer's CUDA-graph mode: every plan of the
  // same batch size gives run() the same launches (the per-step work lives in the int workspace), so run() may be
  // captured once and replayed after each new plan, as long as launch_signature() is unchanged.
  const FlashInferPlanSummary& plan(const KvStepTables& tables, int64_t num_pages, cudaStream_t stream,
                                    bool cuda_graph = false);
  // A hash of everything run() bakes into its launches besides the tensors passed to it: the plan's launch
  // shape and offsets (split-KV on or off among them), the split mode and the workspace addresses. (A forced
  // split's chunk size lives in the int workspace on the device, so a graph replays with a new one.)
  uint64_t launch_signature() const;
  const FlashInferPlanSummary& summary() const { return summary_; }

  // One layer: out[t, h * head_dim + d] per the contract above. q: [T, W] with W >= n_heads * head_dim (the q
  // part is the first n_heads * head_dim columns, e.g. the rows of a fused qkv tensor with their row stride) or
  // [T, n_heads, head_dim], innermost stride 1, rows 16-byte aligned; out: contiguous [T, n_heads * head_dim] (or
  // [T, n_heads, head_dim]), not aliasing q. kv: the layer's pools and the step's device tables, matching the
  // last plan(). T = 0 is a no-op.
  void run(const Tensor& q, const PagedKv& kv, const Tensor& out, cudaStream_t stream);

  const AttentionShape& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  int64_t page_size() const { return page_size_; }
  KvLayout layout() const { return layout_; }
  SplitKv split_kv() const { return split_kv_; }

 private:
  struct State;
  AttentionShape shape_;
  DType dtype_;
  int64_t page_size_;
  KvLayout layout_;
  SplitKv split_kv_;
  FlashInferPlanSummary summary_;
  std::unique_ptr<State> st_;
};

}  // namespace tandem::cuda
