// The paged KV cache, one design for every device.
//
// Storage: per layer, one K pool and one V pool of `num_pages` fixed-size pages. A page holds `page_size` token
// slots of n_kv_heads x head_dim elements, laid out NHD ([page_size, heads, head_dim]) or HND ([heads, page_size,
// head_dim]); pages are the outermost dimension, so a page is one contiguous block in both layouts. The 4-D views
// and their strides come from kv_pool_view() alone; kernels read strides from the view (kv_strides), never from a
// layout flag of their own.
//
// Bookkeeping (host, device-independent): PageTable hands out page ids from a free list and keeps each sequence's
// pages in order; token position p of a sequence lives in page pages[p / page_size], slot p % page_size.
//
// Per step, build_kv_tables() turns the page tables into the metadata FlashInfer and our kernels both consume:
// the step's sequences in order of first appearance (the batch), page_indptr [B+1] (cumulative *page* counts),
// page_indices (physical page ids), last_page_len [B] in 1..page_size (a full last page is page_size, never 0),
// kv_len [B] (tokens cached after this step's append), token_batch [T] (batch index of each token) and, when the
// step's tokens are grouped by sequence, qo_indptr [B+1] (cumulative token counts).
#pragma once
#include <cstdint>
#include <list>
#include <map>
#include <optional>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"

namespace tandem {

enum class KvLayout : uint8_t { NHD, HND };
std::string_view kv_layout_name(KvLayout l);
std::optional<KvLayout> kv_layout_from_name(std::string_view name);

struct KvGeometry {
  int64_t n_layers = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t page_size = 16;
  KvLayout layout = KvLayout::NHD;
  int64_t page_elems() const { return page_size * n_kv_heads * head_dim; }
};

// The 4-D view of one pool: [pages, page_size, heads, head_dim] (NHD) or [pages, heads, page_size, head_dim]
// (HND), contiguous, over `data`.
Tensor kv_pool_view(void* data, DType dtype, Device device, const KvGeometry& g, int64_t num_pages);

// Element strides of a pool view, whatever its layout.
struct KvStrides {
  int64_t page = 0, slot = 0, head = 0;  // head_dim is contiguous
};
KvStrides kv_strides(const Tensor& pool, KvLayout layout);

// One layer's cache and the step's page tables, as views on the cache's device: what kv_write, attention and
// kv_gather take (the CPU twins and the CUDA launchers alike).
struct PagedKv {
  Tensor k, v;  // kv_pool_view()s
  KvLayout layout = KvLayout::NHD;
  int64_t page_size = 0;
  Tensor page_indptr;    // i32 [B + 1]
  Tensor page_indices;   // i32 [page_indptr[B]]
  Tensor last_page_len;  // i32 [B], 1..page_size
  Tensor token_batch;    // i32 [T]
  int64_t batch() const { return page_indptr.numel() - 1; }
};

// Attention geometry shared by kv_write, attention and kv_gather on every device.
struct AttentionShape {
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int sliding_window = 0;  // 0: full causal attention; else a query at p sees keys (p - window, p]
};

struct ModelConfig;
// The attention geometry of a model.
AttentionShape attention_shape(const ModelConfig& c);

// The step's page tables on the host (see the file comment).
struct KvStepTables {
  std::vector<int32_t> seq_ids;  // [B] the batch: sequences in order of first appearance in the step
  std::vector<int32_t> page_indptr, page_indices, last_page_len, kv_len, token_batch;
  std::vector<int32_t> qo_indptr;  // [B + 1] when every sequence's tokens are contiguous in the step, else empty
};

// Page ids and per-sequence page lists (nano-vllm's block manager), with prefix caching (vLLM's automatic prefix
// caching): a full page may be published under a hash of every token up to its end (page_hash chains them); when
// its last user releases it, a published page stays cached (evictable, the least recently released first) until
// its slot is needed, and a later sequence whose tokens start the same way attaches it instead of recomputing.
// Shared pages are full and never written again (a sequence attaches whole pages of its prefix only).
class PageTable {
 public:
  PageTable() = default;
  PageTable(int64_t page_size, int64_t num_pages);

  int64_t page_size() const { return page_size_; }
  int64_t num_pages() const { return num_pages_; }
  // Pages a reservation can take: free ones and cached ones nobody uses (evicted on demand).
  int64_t free_pages() const { return int64_t(free_.size() + lru_.size()); }
  int64_t cached_pages() const { return int64_t(lru_.size()); }  // published, unused, evictable

  // The hash of a page holding `tokens` after a prefix whose last page hashed to `parent` (0: none); never 0.
  static uint64_t page_hash(uint64_t parent, std::span<const int32_t> tokens);
  // Appends to `seq` the cached pages published under hashes[0], hashes[1], ... up to the first one not cached;
  // returns how many. (The sequence must hold no pages yet.)
  int64_t attach_cached(int32_t seq, std::span<const uint64_t> hashes);
  // Publishes page `index` of `seq` (full, its tokens final) under `hash`; nothing if either is published already.
  void publish(int32_t seq, int64_t index, uint64_t hash);
  int64_t pages_for(int64_t tokens) const { return (tokens + page_size_ - 1) / page_size_; }
  // Adds pages [num_pages, new_total) to the free list (a host that grew its storage).
  void grow(int64_t new_total);

  void add_sequence(int32_t seq);
  // Returns the sequence's pages to the free list; unknown sequences are ignored.
  void release(int32_t seq);
  bool has(int32_t seq) const { return seqs_.count(seq) != 0; }
  // Pages needed to extend `seq` to `tokens` tokens (0 if it already has them).
  int64_t pages_needed(int32_t seq, int64_t tokens) const;
  // Extends `seq` to hold `tokens` tokens; returns the fresh pages. The caller checked pages_needed fits.
  std::vector<int32_t> reserve(int32_t seq, int64_t tokens);
  const std::vector<int32_t>& pages(int32_t seq) const;

 private:
  int32_t take_page();  // a free page, else the least recently released cached one (unpublished first)

  int64_t page_size_ = 16, num_pages_ = 0;
  std::vector<int32_t> free_;  // a stack: the most recently freed page is reused first
  std::map<int32_t, std::vector<int32_t>> seqs_;
  std::vector<int32_t> refs_;      // sequences holding each page
  std::vector<uint64_t> hash_;     // each page's published hash (0: none)
  std::unordered_map<uint64_t, int32_t> by_hash_;
  std::list<int32_t> lru_;         // cached pages with no user, least recently released first
  std::vector<std::list<int32_t>::iterator> lru_at_;
  std::vector<uint8_t> in_lru_;
};

// Page tables of a step whose sequences hold `kv_len(seq)` tokens after it (pages already reserved).
// seq_of / pos_of: the step's tokens.
KvStepTables build_kv_tables(std::span<const int32_t> seq_of, const PageTable& pages,
                             const std::map<int32_t, int64_t>& kv_len_after);

}  // namespace tandem
