// Planted bugs inside FlashInfer: test-only attention variants that run the real adapter (cuda/flashinfer.cuh,
// FlashInfer's FA2 batch-prefill kernel, as attention.flashinfer does on every step) over a deliberately wrong view
// of the step -- the metadata mistakes that make FlashInfer return garbage silently (notes/flashinfer.md). Where
// the bug is in the tables, both FlashInfer's plan and its kernel get the same wrong tables (host copy to plan(),
// a device copy to run()), as a caller with that bug would pass them:
//
//   attention.test_flashinfer_last_page_long   last_page_len one long (capped at the page size: a full last page
//                                              stays full), so each entry's KV is one slot longer: every query sees
//                                              the key after its own, the newest query a slot never written
//   attention.test_flashinfer_other_seq_pages  entry b's page indices are entry (b + 1) % B's (as many as both
//                                              have; the rest its own): invisible with one sequence
//   attention.test_flashinfer_nhd_as_hnd       the adapter (and so paged_kv_t) told HND while the cache is NHD: K/V
//                                              read through HND strides (invisible at page size 1, where both
//                                              layouts are the same bytes)
//
// Like the other planted GPU variants (planted_gpu_variants.cpp) they live only in the test binaries, are not
// graph_safe (they copy host-made tables to the device in run()) and share the context's FlashInfer adapter slot
// with attention.flashinfer (one attention variant per plan), made with the context's --split-kv mode. They need
// what attention.flashinfer needs (head_dim 64 or 128, bf16 or f16): the real-shape models of
// tools/make_gpu_models.py, not the head_dim-16 fixtures. In a debug build (NDEBUG unset) the adapter's table
// validation rejects the first two before they run: the suite expects a release build.
#include <algorithm>
#include <memory>
#include <vector>

#include "cuda/check.h"
#include "cuda/cuda_host.h"
#include "cuda/flashinfer.cuh"
#include "exec/variant.h"

namespace tandem::planted {
namespace {

enum class Bug { last_page_long, other_seq_pages, nhd_as_hnd };

cuda::CudaContext& ctx(const VariantArgs& a) { return static_cast<cuda::CudaContext&>(a.device); }

// The layout FlashInfer is told the cache has.
KvLayout told_layout(Bug bug, KvLayout actual) { return bug == Bug::nhd_as_hnd ? KvLayout::HND : actual; }

// The step's tables as the buggy caller hands them to FlashInfer.
KvStepTables wrong_tables(Bug bug, const KvStepTables& t, int64_t page_size) {
  KvStepTables out = t;
  const size_t B = t.seq_ids.size();
  switch (bug) {
    case Bug::last_page_long:
      for (int32_t& last : out.last_page_len) last = int32_t(std::min<int64_t>(int64_t(last) + 1, page_size));
      break;
    case Bug::other_seq_pages:
      for (size_t b = 0; b < B; ++b) {
        const size_t o = (b + 1) % B;
        const int32_t n = t.page_indptr[b + 1] - t.page_indptr[b], n_other = t.page_indptr[o + 1] - t.page_indptr[o];
        for (int32_t i = 0; i < std::min(n, n_other); ++i)
          out.page_indices[size_t(t.page_indptr[b] + i)] = t.page_indices[size_t(t.page_indptr[o] + i)];
      }
      break;
    case Bug::nhd_as_hnd: break;  // the tables are right; the layout is not
  }
  return out;
}

// The context's adapter, made again when the step's dtype, page size, (told) layout or split mode changed.
cuda::FlashInferAttention& adapter(const VariantArgs& a, Bug bug) {
  cuda::CudaContext& c = ctx(a);
  const DType dt = a.slots.qkv.dtype;
  const PagedKv& kv = *a.kv;
  const KvLayout layout = told_layout(bug, kv.layout);
  if (!c.flashinfer || c.flashinfer->dtype() != dt || c.flashinfer->page_size() != kv.page_size ||
      c.flashinfer->layout() != layout || c.flashinfer->split_kv() != c.split_kv)
    c.flashinfer = std::make_shared<cuda::FlashInferAttention>(attention_shape(a.config), dt, kv.page_size, layout,
                                                               8192, 256, c.split_kv);
  return *c.flashinfer;
}

Variant planted_flashinfer(Bug bug, std::string impl, std::string summary, std::vector<KvLayout> layouts) {
  Variant v;
  v.stages = {Stage::attention, Stage::attention};
  v.name = v.stages.str() + "." + impl;
  v.device = Device::CUDA;
  v.kv_layouts = std::move(layouts);
  v.summary = "TEST ONLY: FlashInfer with " + std::move(summary);
  v.test_only = true;
  v.graph_safe = false;
  v.unsupported = [](const ModelConfig& c, DType dt) -> std::optional<std::string> {
    std::string why;
    if (cuda::flashinfer_supports(attention_shape(c), dt, &why)) return std::nullopt;
    return why;
  };
  v.state = [](DeviceContext& d) {
    const cuda::CudaContext& c = static_cast<cuda::CudaContext&>(d);
    return c.flashinfer ? cuda::describe_plan(c.flashinfer->summary()) : std::string("FlashInfer: no plan yet");
  };
  // Once per step: FlashInfer's plan of the wrong tables (eager mode: never in a CUDA graph).
  v.prepare = [bug](const VariantArgs& a) {
    TD_CHECK(a.step.tables, "planted FlashInfer variant: the step's host page tables are missing");
    cuda::CudaContext& c = ctx(a);
    adapter(a, bug).plan(wrong_tables(bug, *a.step.tables, a.kv->page_size), a.kv->k.shape[0], c.stream, false);
    c.flashinfer_planned = a.step.serial;
  };
  v.run = [bug](const VariantArgs& a) {
    cuda::CudaContext& c = ctx(a);
    TD_CHECK(c.flashinfer && c.flashinfer_planned == a.step.serial,
             "planted FlashInfer variant: the step was not planned (prepare() did not run for step {})", a.step.serial);
    const KvStepTables t = wrong_tables(bug, *a.step.tables, a.kv->page_size);
    PagedKv kv = *a.kv;
    if (bug == Bug::nhd_as_hnd) {  // the NHD pools viewed with HND strides, as paged_kv_t would read them
      const KvGeometry g{1, a.config.n_kv_heads, a.config.head_dim, kv.page_size, KvLayout::HND};
      kv.k = kv_pool_view(kv.k.data, kv.k.dtype, kv.k.device, g, kv.k.shape[0]);
      kv.v = kv_pool_view(kv.v.data, kv.v.dtype, kv.v.device, g, kv.v.shape[0]);
      kv.layout = KvLayout::HND;
    }
    // The wrong tables on the device, in one stream-ordered allocation freed behind the kernel. Pageable source:
    // the copy has read it when the call returns.
    const int64_t B = int64_t(t.seq_ids.size()), N = int64_t(t.page_indices.size());
    std::vector<int32_t> packed;
    packed.reserve(size_t(2 * B + 1 + N));
    packed.insert(packed.end(), t.page_indptr.begin(), t.page_indptr.end());
    packed.insert(packed.end(), t.page_indices.begin(), t.page_indices.end());
    packed.insert(packed.end(), t.last_page_len.begin(), t.last_page_len.end());
    TD_CHECK(int64_t(packed.size()) == 2 * B + 1 + N, "planted FlashInfer variant: inconsistent tables ({} values)",
             packed.size());
    void* dev = nullptr;
    TD_CUDA_CHECK(cudaMallocAsync(&dev, packed.size() * sizeof(int32_t), c.stream));
    TD_CUDA_CHECK(
        cudaMemcpyAsync(dev, packed.data(), packed.size() * sizeof(int32_t), cudaMemcpyHostToDevice, c.stream));
    int32_t* p = static_cast<int32_t*>(dev);
    kv.page_indptr = Tensor::contiguous(p, DType::I32, {B + 1}, Device::CUDA);
    kv.page_indices = Tensor::contiguous(p + B + 1, DType::I32, {N}, Device::CUDA);
    kv.last_page_len = Tensor::contiguous(p + B + 1 + N, DType::I32, {B}, Device::CUDA);
    try {
      c.flashinfer->run(a.slots.qkv, kv, a.slots.attn, c.stream);
    } catch (...) {
      cudaFreeAsync(dev, c.stream);
      throw;
    }
    TD_CUDA_CHECK(cudaFreeAsync(dev, c.stream));
  };
  return v;
}

const std::vector<KvLayout> kBothLayouts{KvLayout::NHD, KvLayout::HND};

TD_REGISTER_VARIANT(planted_flashinfer(Bug::last_page_long, "test_flashinfer_last_page_long",
                                       "last_page_len one long (each sequence's KV one slot too long)", kBothLayouts));
TD_REGISTER_VARIANT(planted_flashinfer(Bug::other_seq_pages, "test_flashinfer_other_seq_pages",
                                       "each sequence's page indices taken from the next sequence's", kBothLayouts));
TD_REGISTER_VARIANT(planted_flashinfer(Bug::nhd_as_hnd, "test_flashinfer_nhd_as_hnd",
                                       "the adapter told HND while the cache is NHD", {KvLayout::NHD}));

}  // namespace
}  // namespace tandem::planted
