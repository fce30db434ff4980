// The FlashInfer adapter (contract in cuda/flashinfer.cuh). The only translation unit of the engine that includes
// FlashInfer: plan, run, the workspaces and the explicit template instantiations all live here (nvcc 13 makes
// template-kernel stubs static, so kernels must be instantiated in the TU that launches them; the build also
// passes -static-global-template-stub=false, see cmake/flashinfer.cmake).
#include "cuda/flashinfer.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

// FlashInfer 0.7.2.post1 (headers from tools/fetch_flashinfer.sh; its CCCL 3.6 precedes the toolkit's on the
// include path).
#include <flashinfer/exception.h>
#include <flashinfer/attention/default_prefill_params.cuh>
#include <flashinfer/attention/mask.cuh>
#include <flashinfer/attention/prefill.cuh>
#include <flashinfer/attention/scheduler.cuh>
#include <flashinfer/attention/variants.cuh>
#include <flashinfer/page.cuh>
#include <flashinfer/pos_enc.cuh>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/hash.h"
#include "cuda/check.h"
#include "cuda/device_buffer.h"
#include "cuda/dtype_dispatch.h"

namespace tandem::cuda {
namespace {

namespace fi = ::flashinfer;

// The one attention variant: no custom mask, sliding window compiled in (window_left = -1 turns it into full
// attention: DefaultAttention then uses window_left = kv_len, and the mask kv_idx + qo_len + kv_len >= kv_len +
// qo_idx always holds), no soft-cap, no ALiBi.
using Variant = fi::DefaultAttention</*custom_mask=*/false, /*sliding_window=*/true, /*soft_cap=*/false,
                                     /*alibi=*/false>;
template <typename T>
using Params = fi::BatchPrefillPagedParams<T, T, T, int32_t>;

constexpr fi::PosEncodingMode kPos = fi::PosEncodingMode::kNone;  // RoPE is applied before the KV append
constexpr fi::MaskMode kMask = fi::MaskMode::kCausal;             // bottom-right aligned
constexpr bool kSameKvStrides = true;     // K and V pools are separate allocations with identical strides
constexpr bool kFp16QkReduction = false;  // the fp16 QK-reduction path is broken upstream (#4297/#4298)

}  // namespace
}  // namespace tandem::cuda

// ------------------------------------------------------------------------------------- explicit instantiations
// {bf16, f16} x head_dim {64, 128} x CTA tile {16, 64, 128}: FA2DetermineCtaTileQ picks only these three for
// head_dim < 256, so every plan is dispatchable. 12 Dispatched functions (each holds up to 4 NUM_MMA_KV kernels
// plus the split-KV merge kernel).
#define TANDEM_FI_INST(T, D, CTA)                                                                                     \
  template cudaError_t flashinfer::BatchPrefillWithPagedKVCacheDispatched<                                            \
      tandem::cuda::kSameKvStrides, CTA, D, D, tandem::cuda::kPos, tandem::cuda::kFp16QkReduction,                    \
      tandem::cuda::kMask, tandem::cuda::Variant, tandem::cuda::Params<T>>(tandem::cuda::Params<T>, T*, float*, bool, \
                                                                           cudaStream_t);
#define TANDEM_FI_INST_D(T, D) TANDEM_FI_INST(T, D, 16) TANDEM_FI_INST(T, D, 64) TANDEM_FI_INST(T, D, 128)
TANDEM_FI_INST_D(__nv_bfloat16, 64)
TANDEM_FI_INST_D(__nv_bfloat16, 128)
TANDEM_FI_INST_D(__half, 64)
TANDEM_FI_INST_D(__half, 128)
#undef TANDEM_FI_INST_D
#undef TANDEM_FI_INST

namespace tandem::cuda {
namespace {

// Runs `f`, turning FlashInfer's exceptions (flashinfer::Error and anything else but our own) into tandem::Error.
template <typename F>
auto at_boundary(const char* what, F&& f) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("FlashInfer {}: {}", what, e.what());
  }
}

void check_fi(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    fail("FlashInfer {} failed: CUDA error {} ({})", what, cudaGetErrorName(e), cudaGetErrorString(e));
}

template <typename T, uint32_t D>
cudaError_t dispatch_cta(const Params<T>& p, T* tmp_v, float* tmp_s, int64_t cta_tile_q, cudaStream_t stream) {
  switch (cta_tile_q) {
    case 16:
      return fi::BatchPrefillWithPagedKVCacheDispatched<kSameKvStrides, 16, D, D, kPos, kFp16QkReduction, kMask,
                                                        Variant, Params<T>>(p, tmp_v, tmp_s, false, stream);
    case 64:
      return fi::BatchPrefillWithPagedKVCacheDispatched<kSameKvStrides, 64, D, D, kPos, kFp16QkReduction, kMask,
                                                        Variant, Params<T>>(p, tmp_v, tmp_s, false, stream);
    case 128:
      return fi::BatchPrefillWithPagedKVCacheDispatched<kSameKvStrides, 128, D, D, kPos, kFp16QkReduction, kMask,
                                                        Variant, Params<T>>(p, tmp_v, tmp_s, false, stream);
    default: fail("FlashInfer: the plan chose CTA tile {}, which is not instantiated (16, 64, 128)", cta_tile_q);
  }
}

constexpr size_t kAlign = 256;
size_t round_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// A pinned staging buffer for one plan's metadata; the event marks the end of its host-to-device copies.
struct PinnedSlot {
  void* ptr = nullptr;
  size_t bytes = 0;
  cudaEvent_t copied = nullptr;
  bool pending = false;  // `copied` was recorded and may not have completed

  void wait() {
    if (pending) TD_CUDA_CHECK(cudaEventSynchronize(copied));
    pending = false;
  }
  void release() {
    if (ptr) cudaFreeHost(ptr);
    ptr = nullptr;
    bytes = 0;
  }
};

const char* layout_str(KvLayout l) { return l == KvLayout::NHD ? "NHD" : "HND"; }

}  // namespace

// --------------------------------------------------------------------------------------------------- supports

bool flashinfer_supports(const AttentionShape& s, DType dtype, std::string* why) {
  auto no = [&](std::string reason) {
    if (why) *why = std::move(reason);
    return false;
  };
  if (dtype != DType::BF16 && dtype != DType::F16)
    return no("FlashInfer is instantiated for bf16 and f16 only, not " + std::string(dtype_name(dtype)));
  if (s.head_dim != 64 && s.head_dim != 128)
    return no("FlashInfer is instantiated for head_dim 64 and 128 only, not " + std::to_string(s.head_dim));
  if (s.n_heads <= 0 || s.n_kv_heads <= 0 || s.n_heads % s.n_kv_heads != 0)
    return no("n_heads " + std::to_string(s.n_heads) + " is not a positive multiple of n_kv_heads " +
              std::to_string(s.n_kv_heads));
  const int group = s.n_heads / s.n_kv_heads;
  if (group > 16) return no("query/KV group size " + std::to_string(group) + " is above 16 (untested)");
  if (s.sliding_window < 0) return no("sliding_window " + std::to_string(s.sliding_window) + " is negative");
  if (why) why->clear();
  return true;
}

// ------------------------------------------------------------------------------------------------- validation

void validate_flashinfer_tables(const KvStepTables& t, int64_t page_size, int64_t num_pages) {
  TD_CHECK(page_size > 0, "FlashInfer tables: page size {} is not positive", page_size);
  TD_CHECK(num_pages >= 0 && num_pages <= INT32_MAX, "FlashInfer tables: page count {} out of range", num_pages);
  const size_t B = t.seq_ids.size();
  const int64_t T = int64_t(t.token_batch.size());
  TD_CHECK(T <= INT32_MAX, "FlashInfer tables: {} tokens do not fit int32", T);
  TD_CHECK(t.page_indptr.size() == B + 1, "FlashInfer tables: page_indptr has {} entries for a batch of {} (want {})",
           t.page_indptr.size(), B, B + 1);
  TD_CHECK(t.last_page_len.size() == B, "FlashInfer tables: last_page_len has {} entries for a batch of {}",
           t.last_page_len.size(), B);
  TD_CHECK(t.kv_len.size() == B, "FlashInfer tables: kv_len has {} entries for a batch of {}", t.kv_len.size(), B);
  TD_CHECK(!t.qo_indptr.empty(),
           "FlashInfer tables: qo_indptr is empty: the step's tokens are not grouped by sequence (FlashInfer needs "
           "each sequence's tokens contiguous)");
  TD_CHECK(t.qo_indptr.size() == B + 1, "FlashInfer tables: qo_indptr has {} entries for a batch of {} (want {})",
           t.qo_indptr.size(), B, B + 1);
  TD_CHECK(t.page_indptr[0] == 0, "FlashInfer tables: page_indptr[0] is {}, not 0", t.page_indptr[0]);
  TD_CHECK(t.qo_indptr[0] == 0, "FlashInfer tables: qo_indptr[0] is {}, not 0", t.qo_indptr[0]);
  TD_CHECK(int64_t(t.page_indptr[B]) == int64_t(t.page_indices.size()),
           "FlashInfer tables: page_indptr[{}] is {} but there are {} page indices", B, t.page_indptr[B],
           t.page_indices.size());
  TD_CHECK(int64_t(t.qo_indptr[B]) == T, "FlashInfer tables: qo_indptr[{}] is {} but the step has {} tokens", B,
           t.qo_indptr[B], T);

  // The two indptr arrays first: monotone and in range (the per-entry checks below index through them).
  for (size_t b = 0; b < B; ++b) {
    const int32_t seq = t.seq_ids[b];
    TD_CHECK(t.page_indptr[b + 1] >= t.page_indptr[b],
             "FlashInfer tables: page_indptr decreases at entry {} (sequence {}): {} then {}", b, seq, t.page_indptr[b],
             t.page_indptr[b + 1]);
    TD_CHECK(t.qo_indptr[b + 1] > t.qo_indptr[b],
             "FlashInfer tables: qo_indptr does not rise at entry {} (sequence {}): {} then {} (every entry of the "
             "batch has at least one token)",
             b, seq, t.qo_indptr[b], t.qo_indptr[b + 1]);
  }
  std::vector<int32_t> owner(size_t(num_pages), -1);  // batch entry holding each page in this step
  for (size_t b = 0; b < B; ++b) {
    const int32_t seq = t.seq_ids[b];
    const int64_t p0 = t.page_indptr[b], p1 = t.page_indptr[b + 1];
    const int64_t n_pages = p1 - p0;
    TD_CHECK(n_pages >= 1, "FlashInfer tables: entry {} (sequence {}) has no pages (kv_len {})", b, seq, t.kv_len[b]);
    const int64_t last = t.last_page_len[b];
    TD_CHECK(last >= 1 && last <= page_size,
             "FlashInfer tables: entry {} (sequence {}) has last_page_len {}, outside 1..{} (a full last page is "
             "{}, never 0)",
             b, seq, last, page_size, page_size);
    const int64_t kv = (n_pages - 1) * page_size + last;
    TD_CHECK(kv == t.kv_len[b],
             "FlashInfer tables: entry {} (sequence {}): {} pages of {} with last_page_len {} hold {} tokens, but "
             "kv_len is {}",
             b, seq, n_pages, page_size, last, kv, t.kv_len[b]);
    for (int64_t i = p0; i < p1; ++i) {
      const int64_t page = t.page_indices[size_t(i)];
      TD_CHECK(page >= 0 && page < num_pages,
               "FlashInfer tables: entry {} (sequence {}) page {} of {} is page id {}, outside [0, {})", b, seq, i - p0,
               n_pages, page, num_pages);
      int32_t& o = owner[size_t(page)];
      TD_CHECK(o < 0,
               "FlashInfer tables: page id {} appears twice in the step: entry {} (sequence {}) and entry {} "
               "(sequence {})",
               page, o, o < 0 ? -1 : t.seq_ids[size_t(o)], b, seq);
      o = int32_t(b);
    }
    const int64_t q0 = t.qo_indptr[b], q1 = t.qo_indptr[b + 1];
    TD_CHECK(q1 - q0 <= kv,
             "FlashInfer tables: entry {} (sequence {}) has {} query tokens but only {} cached tokens (append the "
             "step's K/V first; kv_len must be >= qo_len)",
             b, seq, q1 - q0, kv);
    for (int64_t tok = q0; tok < q1; ++tok)
      TD_CHECK(t.token_batch[size_t(tok)] == int32_t(b),
               "FlashInfer tables: token {} is in entry {}'s qo range (sequence {}) but token_batch says {}", tok, b,
               seq, t.token_batch[size_t(tok)]);
  }
}

// ----------------------------------------------------------------------------------------------------- state

struct FlashInferAttention::State {
  int device = 0;
  int num_sm = 0;  // FlashInfer's scheduler sizes CUDA-graph grids by it
  SplitKv split = SplitKv::automatic;
  int32_t window_left = -1;
  float sm_scale = 0.0f;

  DeviceTensor float_ws, int_ws, qo_dev;          // u8, u8, i32
  size_t float_cap = 0, int_cap = 0, qo_cap = 0;  // bytes, bytes, entries
  PinnedSlot slots[2];
  int next_slot = 0;

  fi::PrefillPlanInfo info;
  bool planned = false;
  int64_t num_pages = 0, num_page_entries = 0;  // the planned pool size and page_indptr[B]
  // The planned host tables (what run() compares the device tables with in debug builds; kept in debug builds only).
  std::vector<int32_t> page_indptr, page_indices, last_page_len, seq_ids;
  const void* verified[3] = {nullptr, nullptr, nullptr};  // device tables already compared since the plan

  ~State() {
    for (PinnedSlot& s : slots) {
      if (s.copied) {
        cudaEventSynchronize(s.copied);
        cudaEventDestroy(s.copied);
      }
      s.release();
    }
  }

  // Makes the device workspaces and both pinned slots at least this large. Existing buffers may be in use by
  // kernels or copies in flight: wait for the device before replacing any of them.
  void reserve(size_t float_bytes, size_t int_bytes, size_t qo_entries, cudaStream_t stream) {
    float_bytes = round_up(std::max<size_t>(float_bytes, 1));
    int_bytes = round_up(std::max<size_t>(int_bytes, 1));
    const bool grow_f = float_bytes > float_cap, grow_i = int_bytes > int_cap, grow_q = qo_entries > qo_cap;
    if (!grow_f && !grow_i && !grow_q) return;
    if (stream) TD_CUDA_CHECK(cudaStreamSynchronize(stream));
    TD_CUDA_CHECK(cudaDeviceSynchronize());
    if (grow_f) {
      float_ws = DeviceTensor();
      float_ws = DeviceTensor::empty(DType::U8, {int64_t(float_bytes)});
      float_cap = float_bytes;
    }
    if (grow_i) {
      int_ws = DeviceTensor();
      int_ws = DeviceTensor::empty(DType::U8, {int64_t(int_bytes)});
      int_cap = int_bytes;
    }
    if (grow_q) {
      qo_dev = DeviceTensor();
      qo_dev = DeviceTensor::empty(DType::I32, {int64_t(qo_entries)});
      qo_cap = qo_entries;
    }
    const size_t pinned = int_cap + round_up(qo_cap * sizeof(int32_t));
    for (PinnedSlot& s : slots) {
      s.wait();
      if (s.bytes < pinned) {
        s.release();
        TD_CUDA_CHECK(cudaMallocHost(&s.ptr, pinned));
        s.bytes = pinned;
      }
    }
  }
};

// ------------------------------------------------------------------------------------------------ construction

namespace {

// FlashInfer's own sizing (PrefillPlanWorkspaceSize) for a synthetic step: `batch` sequences of `qo` query tokens
// and `kv_tokens` cached tokens each.
void workspace_for(const AttentionShape& s, int64_t page_size, int32_t window_left, bool disable_split, int64_t batch,
                   int64_t qo, int64_t kv_tokens, size_t& float_bytes, size_t& int_bytes) {
  const int64_t pages = (kv_tokens + page_size - 1) / page_size;
  if (batch <= 0 || qo <= 0 || pages <= 0 || batch * qo > INT32_MAX || batch * pages > INT32_MAX) return;
  std::vector<int32_t> qo_indptr(size_t(batch) + 1), kv_indptr(size_t(batch) + 1);
  for (int64_t b = 0; b <= batch; ++b) {
    qo_indptr[size_t(b)] = int32_t(b * qo);
    kv_indptr[size_t(b)] = int32_t(b * pages);
  }
  size_t f = 0, i = 0;
  check_fi(at_boundary("PrefillPlanWorkspaceSize",
                       [&] {
                         return fi::PrefillPlanWorkspaceSize<int32_t>(
                             f, i, qo_indptr.data(), kv_indptr.data(), uint32_t(batch * qo), uint32_t(batch),
                             uint32_t(s.n_heads), uint32_t(s.n_kv_heads), uint32_t(s.head_dim), uint32_t(s.head_dim),
                             uint32_t(page_size), /*enable_cuda_graph=*/false, /*sizeof_dtype_o=*/2, window_left,
                             /*fixed_split_size=*/-1, disable_split, /*num_colocated_ctas=*/0, /*uniform_q_len=*/0,
                             /*stream=*/nullptr, /*kv_dtype_bytes=*/2);
                       }),
           "PrefillPlanWorkspaceSize");
  float_bytes = std::max(float_bytes, f);
  int_bytes = std::max(int_bytes, i);
}

}  // namespace

FlashInferAttention::FlashInferAttention(const AttentionShape& shape, DType dtype, int64_t page_size, KvLayout layout,
                                         int64_t max_tokens, int64_t max_batch, SplitKv split_kv)
    : shape_(shape),
      dtype_(dtype),
      page_size_(page_size),
      layout_(layout),
      split_kv_(split_kv),
      st_(std::make_unique<State>()) {
  std::string why;
  TD_CHECK(flashinfer_supports(shape, dtype, &why), "FlashInferAttention: {}", why);
  TD_CHECK(page_size > 0 && page_size <= 65536, "FlashInferAttention: page size {} out of range", page_size);
  TD_CHECK(max_tokens > 0 && max_batch > 0 && max_tokens <= INT32_MAX && max_batch <= INT32_MAX,
           "FlashInferAttention: bad size hints: {} tokens, {} sequences", max_tokens, max_batch);
  int n = 0;
  TD_CHECK(cudaGetDeviceCount(&n) == cudaSuccess && n > 0, "FlashInferAttention: no CUDA device");
  TD_CUDA_CHECK(cudaGetDevice(&st_->device));
  TD_CUDA_CHECK(cudaDeviceGetAttribute(&st_->num_sm, cudaDevAttrMultiProcessorCount, st_->device));
  TD_CHECK(split_kv == SplitKv::automatic || split_kv == SplitKv::off || split_kv == SplitKv::on,
           "FlashInferAttention: split-KV mode {} is none of auto, off, on", int(split_kv));
  st_->split = split_kv;
  st_->window_left = shape.sliding_window > 0 ? shape.sliding_window - 1 : -1;
  st_->sm_scale = 1.0f / std::sqrt(float(shape.head_dim));
  for (PinnedSlot& s : st_->slots) TD_CUDA_CHECK(cudaEventCreateWithFlags(&s.copied, cudaEventDisableTiming));

  // Size for the largest steps the hints allow (a step that needs more grows the buffers in plan()): many
  // decoding sequences with long contexts, one long prompt, and one sequence decoding a long context (split-KV
  // temporaries peak when few, long sequences spread over all SMs). A forced split (SplitKv::on) is sized as
  // `auto`: its chunks are chosen per step, and plan() grows the buffers (to at most kForcedSplitMaxFloatBytes
  // of partial outputs, or what one chunk per sequence needs).
  size_t float_bytes = 0, int_bytes = 0;
  const int64_t batch = std::min(max_batch, max_tokens);
  const int32_t wl = st_->window_left;
  const bool disable_split_kv = split_kv == SplitKv::off;
  workspace_for(shape, page_size, wl, disable_split_kv, batch, 1, 4096, float_bytes, int_bytes);
  workspace_for(shape, page_size, wl, disable_split_kv, 1, max_tokens, max_tokens, float_bytes, int_bytes);
  workspace_for(shape, page_size, wl, disable_split_kv, 1, 1, 32768, float_bytes, int_bytes);
  workspace_for(shape, page_size, wl, disable_split_kv, std::min<int64_t>(batch, 8),
                std::max<int64_t>(1, max_tokens / 8), 4096 + max_tokens / 8, float_bytes, int_bytes);
  st_->reserve(float_bytes, std::max<size_t>(int_bytes, 64 << 10), size_t(max_batch) + 1, nullptr);
}

FlashInferAttention::~FlashInferAttention() = default;

// ------------------------------------------------------------------------------------------------------- plan

const FlashInferPlanSummary& FlashInferAttention::plan(const KvStepTables& t, int64_t num_pages, cudaStream_t stream,
                                                       bool cuda_graph) {
  State& st = *st_;
  st.planned = false;
  const size_t B = t.seq_ids.size();
  const int64_t T = int64_t(t.token_batch.size());
  TD_CHECK(!t.qo_indptr.empty() || T == 0,
           "FlashInferAttention::plan: qo_indptr is empty: the step's tokens are not grouped by sequence "
           "(FlashInfer needs each sequence's tokens contiguous; reorder the step)");
  TD_CHECK(t.page_indptr.size() == B + 1 && t.last_page_len.size() == B && (T == 0 || t.qo_indptr.size() == B + 1),
           "FlashInferAttention::plan: inconsistent tables: batch {}, page_indptr {}, last_page_len {}, qo_indptr {}",
           B, t.page_indptr.size(), t.last_page_len.size(), t.qo_indptr.size());
  TD_CHECK(num_pages >= 0 && num_pages <= INT32_MAX, "FlashInferAttention::plan: page count {} out of range",
           num_pages);
#ifndef NDEBUG
  if (T > 0) validate_flashinfer_tables(t, page_size_, num_pages);
#endif
  summary_ = FlashInferPlanSummary{};
  summary_.split_mode = st.split;
  summary_.batch = int64_t(B);
  summary_.tokens = T;
  st.num_pages = num_pages;
  st.num_page_entries = int64_t(t.page_indices.size());
#ifndef NDEBUG
  st.page_indptr = t.page_indptr;
  st.page_indices = t.page_indices;
  st.last_page_len = t.last_page_len;
  st.seq_ids = t.seq_ids;
  st.verified[0] = st.verified[1] = st.verified[2] = nullptr;
#endif
  if (T == 0) {
    st.planned = true;
    return summary_;
  }
  TD_CHECK(T <= INT32_MAX, "FlashInferAttention::plan: {} tokens do not fit int32", T);

  if (cuda_graph)
    for (size_t b = 0; b < B; ++b)
      TD_CHECK(t.qo_indptr[b + 1] - t.qo_indptr[b] == 1,
               "FlashInferAttention::plan: a CUDA-graph plan is for decode steps (one query per sequence); entry "
               "{} (sequence {}) has {}",
               b, t.seq_ids[b], t.qo_indptr[b + 1] - t.qo_indptr[b]);
  // In graph mode (uniform_q_len 1) the launch shape (CTA tile, padded batch, split-KV, workspace offsets)
  // depends on the batch size alone; the per-step work goes to the device through the int workspace.
  const int64_t uniform_q_len = cuda_graph ? 1 : 0;
  std::vector<int32_t> qo_indptr = t.qo_indptr, kv_indptr = t.page_indptr;  // PrefillPlan takes non-const
  const uint32_t nq = uint32_t(shape_.n_heads), nkv = uint32_t(shape_.n_kv_heads), D = uint32_t(shape_.head_dim);
  const uint32_t dt_bytes = uint32_t(dtype_block_bytes(dtype_));
  // Split-KV: auto (FlashInfer's binary search over chunk sizes), off (disable_split_kv) or on (fixed_split_size,
  // in pages: FlashInfer's scheduler counts the KV in pages and multiplies the chunk by the page size).
  const bool disable_split_kv = st.split == SplitKv::off;
  auto workspace_size = [&](int32_t fixed_split_pages, size_t& f, size_t& i) {
    check_fi(at_boundary("PrefillPlanWorkspaceSize",
                         [&] {
                           return fi::PrefillPlanWorkspaceSize<int32_t>(
                               f, i, qo_indptr.data(), kv_indptr.data(), uint32_t(T), uint32_t(B), nq, nkv, D, D,
                               uint32_t(page_size_), cuda_graph, dt_bytes, st.window_left, fixed_split_pages,
                               disable_split_kv, /*num_colocated_ctas=*/0, uniform_q_len, stream, dt_bytes);
                         }),
             "PrefillPlanWorkspaceSize");
  };
  int32_t fixed_split_pages = -1;
  if (st.split == SplitKv::on) {
    int64_t max_pages = 1;
    for (size_t b = 0; b < B; ++b) max_pages = std::max<int64_t>(max_pages, t.page_indptr[b + 1] - t.page_indptr[b]);
    int64_t chunk = std::max<int64_t>(1, (kForcedSplitChunkTokens + page_size_ - 1) / page_size_);
    if (cuda_graph) {
      // The graph's grid is fixed at max(2 * SMs / n_kv_heads, B) CTAs (one query tile per decode sequence), and
      // FlashInfer refuses a plan with more (query tile, chunk) pairs than that.
      const int64_t grid = std::max<int64_t>(int64_t(uint32_t(2 * st.num_sm) / nkv), int64_t(B));
      auto pairs = [&](int64_t c) {
        int64_t n = 0;
        for (size_t b = 0; b < B; ++b) n += (std::max<int64_t>(1, t.page_indptr[b + 1] - t.page_indptr[b]) + c - 1) / c;
        return n;
      };
      while (chunk < max_pages && pairs(chunk) > grid) chunk *= 2;
    }
    for (;;) {  // partial outputs within the budget (or one chunk per sequence)
      size_t f = 0, i = 0;
      workspace_size(int32_t(std::min<int64_t>(chunk, INT32_MAX)), f, i);
      if (f <= kForcedSplitMaxFloatBytes || chunk >= max_pages) break;
      chunk *= 2;
    }
    fixed_split_pages = int32_t(std::min<int64_t>(chunk, INT32_MAX));
  }
  size_t need_f = 0, need_i = 0;
  workspace_size(fixed_split_pages, need_f, need_i);
  st.reserve(need_f, need_i, B + 1, stream);

  PinnedSlot& slot = st.slots[st.next_slot];
  slot.wait();  // the copy of the plan before the last read from this buffer
  check_fi(at_boundary("PrefillPlan",
                       [&] {
                         return fi::PrefillPlan<int32_t>(
                             st.float_ws.view().data, st.float_cap, st.int_ws.view().data, slot.ptr, st.int_cap,
                             st.info, qo_indptr.data(), kv_indptr.data(), uint32_t(T), uint32_t(B), nq, nkv, D, D,
                             uint32_t(page_size_),
                             cuda_graph, dt_bytes, st.window_left, fixed_split_pages,
                             disable_split_kv, /*num_colocated_ctas=*/0, uniform_q_len, stream, dt_bytes);
                       }),
           "PrefillPlan");
  // The chunk the plan chose, in tokens (PrefillPlan staged it in the pinned slot; meaningless when unsplit).
  int32_t chunk_tokens = 0;
  std::memcpy(&chunk_tokens, static_cast<const char*>(slot.ptr) + st.info.kv_chunk_size_ptr_offset,
              sizeof(chunk_tokens));
  // qo_indptr on the device (the kernel's q_indptr), staged behind the plan's region of the same pinned slot.
  int32_t* qo_h = reinterpret_cast<int32_t*>(static_cast<char*>(slot.ptr) + st.int_cap);
  std::memcpy(qo_h, t.qo_indptr.data(), (B + 1) * sizeof(int32_t));
  TD_CUDA_CHECK(
      cudaMemcpyAsync(st.qo_dev.view().data, qo_h, (B + 1) * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
  TD_CUDA_CHECK(cudaEventRecord(slot.copied, stream));
  slot.pending = true;
  st.next_slot ^= 1;

  const int64_t cta = st.info.cta_tile_q;
  TD_CHECK(cta == 16 || cta == 64 || cta == 128,
           "FlashInferAttention::plan: the plan chose CTA tile {}, which is not instantiated (16, 64, 128)", cta);
  summary_.cta_tile_q = cta;
  summary_.padded_batch_size = st.info.padded_batch_size;
  summary_.split_kv = st.info.split_kv;
  if (st.split == SplitKv::on) summary_.kv_chunk_tokens = int64_t(fixed_split_pages) * page_size_;
  else if (st.info.split_kv) summary_.kv_chunk_tokens = chunk_tokens;
  summary_.float_workspace_bytes = need_f;
  summary_.int_workspace_bytes = need_i;
  summary_.cuda_graph = cuda_graph;
  st.planned = true;
  return summary_;
}

std::string describe_plan(const FlashInferPlanSummary& s) {
  // Plain concatenation: fmt's compile-time format checks do not build under nvcc.
  using std::to_string;
  const std::string chunk = to_string(s.kv_chunk_tokens) + "-token chunks";
  std::string mode;
  switch (s.split_mode) {
    case SplitKv::automatic: mode = s.split_kv && s.kv_chunk_tokens > 0 ? "auto, " + chunk : "auto"; break;
    case SplitKv::off: mode = "disabled"; break;
    case SplitKv::on:
      mode = s.split_kv ? "forced, " + chunk
                        : "forced, but no sequence spans two " + to_string(s.kv_chunk_tokens) + "-token chunks";
      break;
  }
  return "FlashInfer plan: batch " + to_string(s.batch) + ", " + to_string(s.tokens) + " tokens, CTA tile " +
         to_string(s.cta_tile_q) + ", padded batch " + to_string(s.padded_batch_size) + ", split-KV " +
         (s.split_kv ? "on" : "off") + " (" + mode + "), " + (s.cuda_graph ? "CUDA-graph" : "eager") +
         " mode, workspaces " +
         to_string(s.float_workspace_bytes) + " B float + " + to_string(s.int_workspace_bytes) + " B int";
}

uint64_t FlashInferAttention::launch_signature() const {
  const State& st = *st_;
  const fi::PrefillPlanInfo& i = st.info;
  uint64_t h = kFnvOffset;
  auto mix = [&](uint64_t v) { h = fnv1a_mix(h, v); };
  for (const int64_t v : i.ToVector()) mix(uint64_t(v));
  mix(uint64_t(st.split));
  mix(uint64_t(reinterpret_cast<uintptr_t>(st.float_ws.view().data)));
  mix(uint64_t(reinterpret_cast<uintptr_t>(st.int_ws.view().data)));
  mix(uint64_t(reinterpret_cast<uintptr_t>(st.qo_dev.view().data)));
  mix(uint64_t(summary_.tokens));
  mix(uint64_t(summary_.batch));
  return h;
}

// -------------------------------------------------------------------------------------------------------- run

namespace {

// at_least: the table may be longer than planned (a CUDA-graph step's page_indices reach to the end of their
// buffer, cuda/cuda_host.cpp); page_indptr bounds what is read.
void check_table(const Tensor& x, const char* name, int64_t n, bool at_least = false) {
  TD_CHECK(x.device == Device::CUDA && x.dtype == DType::I32 && x.ndim == 1 && x.is_contiguous() &&
               (at_least ? x.numel() >= n : x.numel() == n) && (n == 0 || x.data),
           "FlashInferAttention::run: kv.{} must be a contiguous i32 CUDA tensor of {}{} entries (the planned "
           "tables), got {}",
           name, at_least ? "at least " : "", n, x.describe());
}

bool overlaps(const void* a, size_t an, const void* b, size_t bn) {
  const char* pa = static_cast<const char*>(a);
  const char* pb = static_cast<const char*>(b);
  return pa < pb + bn && pb < pa + an;
}

}  // namespace

void FlashInferAttention::run(const Tensor& q, const PagedKv& kv, const Tensor& out, cudaStream_t stream) {
  State& st = *st_;
  TD_CHECK(st.planned, "FlashInferAttention::run: no plan (call plan() for the step first)");
  const int64_t T = summary_.tokens, B = summary_.batch;
  const int64_t nq = shape_.n_heads, nkv = shape_.n_kv_heads, D = shape_.head_dim, P = page_size_;
  const int64_t esize = dtype_block_bytes(dtype_);

  // q: [T, W >= nq * D] or [T, nq, D], innermost contiguous.
  TD_CHECK(q.device == Device::CUDA && q.dtype == dtype_ && (q.ndim == 2 || q.ndim == 3) && q.shape[0] == T,
           "FlashInferAttention::run: q must be a {} CUDA tensor [{}, >= {}] or [{}, {}, {}], got {}",
           dtype_name(dtype_), T, nq * D, T, nq, D, q.describe());
  int64_t q_stride_n = 0, q_stride_h = 0;
  if (q.ndim == 2) {
    TD_CHECK(q.shape[1] >= nq * D && q.strides[1] == 1 && q.strides[0] >= nq * D,
             "FlashInferAttention::run: q rows must hold the {} x {} query values contiguously, got {}", nq, D,
             q.describe());
    q_stride_n = q.strides[0];
    q_stride_h = D;
  } else {
    TD_CHECK(q.shape[1] == nq && q.shape[2] == D && q.strides[2] == 1,
             "FlashInferAttention::run: q must be [{}, {}, {}] with contiguous head_dim, got {}", T, nq, D,
             q.describe());
    q_stride_n = q.strides[0];
    q_stride_h = q.strides[1];
  }
  TD_CHECK(q_stride_n <= INT32_MAX && q_stride_h <= INT32_MAX && q_stride_n > 0 && q_stride_h > 0,
           "FlashInferAttention::run: q strides out of range in {}", q.describe());
  // The kernel loads q 16 bytes at a time.
  TD_CHECK(T == 0 || (reinterpret_cast<uintptr_t>(q.data) % 16 == 0 && (q_stride_n * esize) % 16 == 0 &&
                      (q_stride_h * esize) % 16 == 0),
           "FlashInferAttention::run: q must be 16-byte aligned (data and row/head strides), got {} at {}",
           q.describe(), q.data);
  // out: contiguous [T, nq * D] or [T, nq, D] (FlashInfer writes it at fixed strides).
  TD_CHECK(
      out.device == Device::CUDA && out.dtype == dtype_ && out.is_contiguous() && out.shape[0] == T &&
          ((out.ndim == 2 && out.shape[1] == nq * D) || (out.ndim == 3 && out.shape[1] == nq && out.shape[2] == D)),
      "FlashInferAttention::run: out must be a contiguous {} CUDA tensor [{}, {}], got {}", dtype_name(dtype_), T,
      nq * D, out.describe());
  if (T == 0) return;
  TD_CHECK(q.data && out.data, "FlashInferAttention::run: null data (q {}, out {})", q.describe(), out.describe());
  const size_t q_bytes = size_t(((T - 1) * q_stride_n + (nq - 1) * q_stride_h + D) * esize);
  TD_CHECK(!overlaps(q.data, q_bytes, out.data, size_t(out.nbytes())), "FlashInferAttention::run: out {} aliases q {}",
           out.describe(), q.describe());

  // The pools: [pages, page_size, heads, D] (NHD) or [pages, heads, page_size, D] (HND), K and V alike.
  TD_CHECK(kv.layout == layout_ && kv.page_size == P,
           "FlashInferAttention::run: the cache is {} with page size {}, but the adapter was built for {} with page "
           "size {}",
           layout_str(kv.layout), kv.page_size, layout_str(layout_), P);
  for (const Tensor* pool : {&kv.k, &kv.v}) {
    const char* name = pool == &kv.k ? "k" : "v";
    const bool shape_ok = pool->ndim == 4 && pool->shape[3] == D &&
                          (layout_ == KvLayout::NHD ? (pool->shape[1] == P && pool->shape[2] == nkv)
                                                    : (pool->shape[1] == nkv && pool->shape[2] == P));
    TD_CHECK(pool->device == Device::CUDA && pool->dtype == dtype_ && shape_ok && pool->data,
             "FlashInferAttention::run: kv.{} must be a {} CUDA pool view [pages, {}] ({}), got {}", name,
             dtype_name(dtype_),
             layout_ == KvLayout::NHD ? std::to_string(P) + ", " + std::to_string(nkv) + ", " + std::to_string(D)
                                      : std::to_string(nkv) + ", " + std::to_string(P) + ", " + std::to_string(D),
             layout_str(layout_), pool->describe());
    const KvStrides s = kv_strides(*pool, layout_);
    // Slots and heads must not overlap inside a page, and everything must fit paged_kv_t's uint32 strides.
    TD_CHECK(s.head >= D && s.slot >= D && s.page >= P * nkv * D && s.page <= UINT32_MAX && s.slot <= UINT32_MAX &&
                 s.head <= UINT32_MAX && (layout_ == KvLayout::NHD ? s.slot >= nkv * s.head : s.head >= P * s.slot),
             "FlashInferAttention::run: kv.{} strides (page {}, slot {}, head {}) do not match a {} layout of {} "
             "slots x {} heads x {}: {}",
             name, s.page, s.slot, s.head, layout_str(layout_), P, nkv, D, pool->describe());
    TD_CHECK(reinterpret_cast<uintptr_t>(pool->data) % 16 == 0 && (s.slot * esize) % 16 == 0 &&
                 (s.head * esize) % 16 == 0 && (s.page * esize) % 16 == 0,
             "FlashInferAttention::run: kv.{} must be 16-byte aligned: {}", name, pool->describe());
  }
  TD_CHECK(kv.k.shape == kv.v.shape && kv.k.strides == kv.v.strides,
           "FlashInferAttention::run: K and V pools must have the same shape and strides (instantiated with "
           "SAME_KV_STRIDES): k {}, v {}",
           kv.k.describe(), kv.v.describe());
  TD_CHECK(kv.k.shape[0] == st.num_pages,
           "FlashInferAttention::run: the pools hold {} pages but the step was planned for {}", kv.k.shape[0],
           st.num_pages);
  check_table(kv.page_indptr, "page_indptr", B + 1);
  check_table(kv.page_indices, "page_indices", st.num_page_entries, /*at_least=*/summary_.cuda_graph);
  check_table(kv.last_page_len, "last_page_len", B);

#ifndef NDEBUG
  // The device tables must be the planned ones: compare them once per plan (per set of table buffers); not while
  // a CUDA graph is being captured (the read-back synchronizes).
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  TD_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture == cudaStreamCaptureStatusNone && (st.verified[0] != kv.page_indptr.data || st.verified[1] != kv.page_indices.data ||
      st.verified[2] != kv.last_page_len.data)) {
    std::vector<int32_t> indptr(st.page_indptr.size()), indices(st.page_indices.size()), last(st.last_page_len.size());  // planned sizes
    TD_CUDA_CHECK(
        cudaMemcpyAsync(indptr.data(), kv.page_indptr.data, indptr.size() * 4, cudaMemcpyDeviceToHost, stream));
    if (!indices.empty())
      TD_CUDA_CHECK(
          cudaMemcpyAsync(indices.data(), kv.page_indices.data, indices.size() * 4, cudaMemcpyDeviceToHost, stream));
    TD_CUDA_CHECK(cudaMemcpyAsync(last.data(), kv.last_page_len.data, last.size() * 4, cudaMemcpyDeviceToHost, stream));
    TD_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (size_t b = 0; b < size_t(B); ++b) {
      TD_CHECK(indptr[b + 1] == st.page_indptr[b + 1],
               "FlashInferAttention::run: device page_indptr[{}] (entry {}, sequence {}) is {}, planned {}", b + 1, b,
               st.seq_ids[b], indptr[b + 1], st.page_indptr[b + 1]);
      TD_CHECK(last[b] == st.last_page_len[b],
               "FlashInferAttention::run: device last_page_len[{}] (sequence {}) is {}, planned {}", b, st.seq_ids[b],
               last[b], st.last_page_len[b]);
      for (int32_t i = st.page_indptr[b]; i < st.page_indptr[b + 1]; ++i)
        TD_CHECK(indices[size_t(i)] == st.page_indices[size_t(i)],
                 "FlashInferAttention::run: device page_indices[{}] (entry {}, sequence {}) is {}, planned {}", i, b,
                 st.seq_ids[b], indices[size_t(i)], st.page_indices[size_t(i)]);
    }
    TD_CHECK(indptr[0] == 0, "FlashInferAttention::run: device page_indptr[0] is {}, not 0", indptr[0]);
    st.verified[0] = kv.page_indptr.data;
    st.verified[1] = kv.page_indices.data;
    st.verified[2] = kv.last_page_len.data;
  }
#endif

  const fi::PrefillPlanInfo& info = st.info;
  dispatch_float(dtype_, "FlashInferAttention::run", [&](auto tag) {
    using T_ = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T_, float>) {
      fail("FlashInferAttention::run: f32 is not instantiated");
    } else {
      const int64_t strides[3] = {kv.k.strides[0], kv.k.strides[1], kv.k.strides[2]};  // tensor order
      fi::paged_kv_t<T_, int32_t> paged(uint32_t(nkv), uint32_t(P), uint32_t(D), uint32_t(B),
                                        layout_ == KvLayout::NHD ? fi::QKVLayout::kNHD : fi::QKVLayout::kHND,
                                        kv.k.ptr<T_>(), kv.v.ptr<T_>(), strides, kv.page_indices.ptr<int32_t>(),
                                        kv.page_indptr.ptr<int32_t>(), kv.last_page_len.ptr<int32_t>());
      Params<T_> p;  // the default constructor leaves sm_scale and group_size 0: every field is set below
      p.q = q.ptr<T_>();
      p.paged_kv = paged;
      p.q_indptr = st.qo_dev.view().ptr<int32_t>();
      p.o = out.ptr<T_>();
      p.lse = nullptr;
      p.num_qo_heads = uint32_t(nq);
      p.group_size = fi::uint_fastdiv(uint32_t(nq / nkv));
      p.q_stride_n = int32_t(q_stride_n);
      p.q_stride_h = int32_t(q_stride_h);
      p.window_left = st.window_left;
      p.logits_soft_cap = 0.0f;
      p.sm_scale = st.sm_scale;
      p.rope_rcp_scale = 1.0f;
      p.rope_rcp_theta = 1.0f;
      void* iws = st.int_ws.view().data;
      p.request_indices = fi::GetPtrFromBaseOffset<int32_t>(iws, info.request_indices_offset);
      p.qo_tile_indices = fi::GetPtrFromBaseOffset<int32_t>(iws, info.qo_tile_indices_offset);
      p.kv_tile_indices = fi::GetPtrFromBaseOffset<int32_t>(iws, info.kv_tile_indices_offset);
      p.o_indptr = fi::GetPtrFromBaseOffset<int32_t>(iws, info.o_indptr_offset);
      p.kv_chunk_size_ptr = fi::GetPtrFromBaseOffset<int32_t>(iws, info.kv_chunk_size_ptr_offset);
      p.merge_indptr = nullptr;
      p.block_valid_mask = nullptr;
      p.total_num_rows = nullptr;
      if (info.enable_cuda_graph) {  // a fixed grid: padding CTAs masked off, the real row count read on the device
        p.block_valid_mask = fi::GetPtrFromBaseOffset<bool>(iws, info.block_valid_mask_offset);
        p.total_num_rows = fi::GetPtrFromBaseOffset<uint32_t>(iws, info.total_num_rows_offset);
      }
      p.max_total_num_rows = uint32_t(info.total_num_rows);
      p.padded_batch_size = uint32_t(info.padded_batch_size);
      T_* tmp_v = nullptr;
      float* tmp_s = nullptr;
      if (info.split_kv) {
        p.merge_indptr = fi::GetPtrFromBaseOffset<int32_t>(iws, info.merge_indptr_offset);
        tmp_v = fi::GetPtrFromBaseOffset<T_>(st.float_ws.view().data, info.v_offset);
        tmp_s = fi::GetPtrFromBaseOffset<float>(st.float_ws.view().data, info.s_offset);
      }
      TD_CHECK(p.sm_scale > 0.0f && uint32_t(p.group_size) * nkv == uint32_t(nq) && p.max_total_num_rows == T,
               "FlashInferAttention::run: bad params: sm_scale {}, group size {}, rows {} (planned {})", p.sm_scale,
               uint32_t(p.group_size), p.max_total_num_rows, T);
      const int64_t cta = info.cta_tile_q;
      cudaError_t e = at_boundary("BatchPrefillWithPagedKVCache", [&] {
        return D == 64 ? dispatch_cta<T_, 64>(p, tmp_v, tmp_s, cta, stream)
                       : dispatch_cta<T_, 128>(p, tmp_v, tmp_s, cta, stream);
      });
      check_fi(e, "BatchPrefillWithPagedKVCache");
      TD_CUDA_CHECK_LAUNCH();
    }
  });
}

}  // namespace tandem::cuda
