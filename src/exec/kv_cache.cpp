#include "exec/kv_cache.h"

#include <algorithm>

#include "core/error.h"
#include "core/hash.h"
#include "model/config.h"

namespace tandem {

std::string_view kv_layout_name(KvLayout l) { return l == KvLayout::NHD ? "nhd" : "hnd"; }

std::optional<KvLayout> kv_layout_from_name(std::string_view name) {
  if (name == "nhd" || name == "NHD") return KvLayout::NHD;
  if (name == "hnd" || name == "HND") return KvLayout::HND;
  return std::nullopt;
}

AttentionShape attention_shape(const ModelConfig& c) {
  return {int(c.n_heads), int(c.n_kv_heads), int(c.head_dim), int(c.sliding_window)};
}

Tensor kv_pool_view(void* data, DType dtype, Device device, const KvGeometry& g, int64_t num_pages) {
  TD_CHECK(g.page_size > 0 && g.n_kv_heads > 0 && g.head_dim > 0 && num_pages >= 0,
           "KV pool: bad geometry: page size {}, {} kv heads, head_dim {}, {} pages", g.page_size, g.n_kv_heads,
           g.head_dim, num_pages);
  if (g.layout == KvLayout::NHD) return Tensor::contiguous(data, dtype, {num_pages, g.page_size, g.n_kv_heads, g.head_dim}, device);
  return Tensor::contiguous(data, dtype, {num_pages, g.n_kv_heads, g.page_size, g.head_dim}, device);
}

KvStrides kv_strides(const Tensor& pool, KvLayout layout) {
  TD_CHECK(pool.ndim == 4 && pool.strides[3] == 1, "KV pool must be a 4-D view with contiguous head_dim, got {}",
           pool.describe());
  if (layout == KvLayout::NHD) return {pool.strides[0], pool.strides[1], pool.strides[2]};
  return {pool.strides[0], pool.strides[2], pool.strides[1]};
}

PageTable::PageTable(int64_t page_size, int64_t num_pages) : page_size_(page_size) {
  TD_CHECK(page_size > 0, "KV page size must be positive, got {}", page_size);
  grow(num_pages);
}

void PageTable::grow(int64_t new_total) {
  TD_CHECK(new_total >= num_pages_ && new_total <= INT32_MAX, "KV cache: cannot resize from {} to {} pages",
           num_pages_, new_total);
  // Pushed high-to-low onto the stack, so the lowest new id is handed out next.
  for (int64_t p = new_total - 1; p >= num_pages_; --p) free_.push_back(int32_t(p));
  num_pages_ = new_total;
  refs_.resize(size_t(new_total), 0);
  hash_.resize(size_t(new_total), 0);
  lru_at_.resize(size_t(new_total));
  in_lru_.resize(size_t(new_total), 0);
}

uint64_t PageTable::page_hash(uint64_t parent, std::span<const int32_t> tokens) {
  uint64_t h = fnv1a_mix(kFnvOffset, parent);
  for (int32_t t : tokens) h = fnv1a_mix(h, uint64_t(uint32_t(t)));
  h ^= h >> 29;  // (fnv's low bits mix poorly; the map hashes the whole word, but keep 0 unused either way)
  return h ? h : 1;
}

int32_t PageTable::take_page() {
  if (!free_.empty()) {
    const int32_t p = free_.back();
    free_.pop_back();
    return p;
  }
  TD_CHECK(!lru_.empty(), "KV cache: no page left");
  const int32_t p = lru_.front();  // evict: the least recently released cached page
  lru_.pop_front();
  in_lru_[size_t(p)] = 0;
  by_hash_.erase(hash_[size_t(p)]);
  hash_[size_t(p)] = 0;
  return p;
}

int64_t PageTable::attach_cached(int32_t seq, std::span<const uint64_t> hashes) {
  std::vector<int32_t>& own = seqs_.at(seq);
  TD_CHECK(own.empty(), "sequence {} already holds pages; cached pages attach to a fresh sequence", seq);
  int64_t n = 0;
  for (uint64_t h : hashes) {
    auto it = by_hash_.find(h);
    if (it == by_hash_.end()) break;
    const int32_t p = it->second;
    if (in_lru_[size_t(p)]) {
      lru_.erase(lru_at_[size_t(p)]);
      in_lru_[size_t(p)] = 0;
    }
    refs_[size_t(p)]++;
    own.push_back(p);
    ++n;
  }
  return n;
}

void PageTable::publish(int32_t seq, int64_t index, uint64_t hash) {
  const int32_t p = seqs_.at(seq).at(size_t(index));
  if (hash_[size_t(p)] != 0 || by_hash_.count(hash)) return;
  hash_[size_t(p)] = hash;
  by_hash_[hash] = p;
}

void PageTable::add_sequence(int32_t seq) {
  TD_CHECK(!seqs_.count(seq), "sequence {} already exists", seq);
  seqs_[seq];
}

void PageTable::release(int32_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  // Last page first: a cached prefix is evicted from its end, and an unpublished page is free at once.
  for (auto p = it->second.rbegin(); p != it->second.rend(); ++p) {
    if (--refs_[size_t(*p)] > 0) continue;
    if (hash_[size_t(*p)] == 0) {
      free_.push_back(*p);
    } else {
      lru_at_[size_t(*p)] = lru_.insert(lru_.end(), *p);
      in_lru_[size_t(*p)] = 1;
    }
  }
  seqs_.erase(it);
}

int64_t PageTable::pages_needed(int32_t seq, int64_t tokens) const {
  return std::max<int64_t>(0, pages_for(tokens) - int64_t(pages(seq).size()));
}

std::vector<int32_t> PageTable::reserve(int32_t seq, int64_t tokens) {
  std::vector<int32_t>& own = seqs_.at(seq);
  const int64_t need = pages_needed(seq, tokens);
  TD_CHECK(need <= free_pages(), "KV cache out of pages: sequence {} needs {} more pages ({} tokens of {} per page), "
           "{} of {} pages are free", seq, need, tokens, page_size_, free_pages(), num_pages_);
  std::vector<int32_t> fresh;
  for (int64_t i = 0; i < need; ++i) {
    fresh.push_back(take_page());
    refs_[size_t(fresh.back())] = 1;
  }
  own.insert(own.end(), fresh.begin(), fresh.end());
  return fresh;
}

const std::vector<int32_t>& PageTable::pages(int32_t seq) const {
  auto it = seqs_.find(seq);
  TD_CHECK(it != seqs_.end(), "unknown sequence {}", seq);
  return it->second;
}

KvStepTables build_kv_tables(std::span<const int32_t> seq_of, const PageTable& pages,
                             const std::map<int32_t, int64_t>& kv_len_after) {
  KvStepTables t;
  std::map<int32_t, int32_t> batch_of;
  t.token_batch.reserve(seq_of.size());
  bool grouped = true;
  for (int32_t seq : seq_of) {
    auto [it, fresh] = batch_of.emplace(seq, int32_t(t.seq_ids.size()));
    if (fresh) t.seq_ids.push_back(seq);
    else if (it->second != t.token_batch.back()) grouped = false;  // seq seen before, not just now
    t.token_batch.push_back(it->second);
  }
  const int64_t P = pages.page_size();
  t.page_indptr.push_back(0);
  for (int32_t seq : t.seq_ids) {
    const int64_t len = kv_len_after.at(seq);
    const std::vector<int32_t>& own = pages.pages(seq);
    const int64_t n = pages.pages_for(len);
    TD_CHECK(n <= int64_t(own.size()), "KV tables: sequence {} holds {} tokens but has {} pages of {}", seq, len,
             own.size(), P);
    t.page_indices.insert(t.page_indices.end(), own.begin(), own.begin() + n);
    t.page_indptr.push_back(int32_t(t.page_indices.size()));
    t.last_page_len.push_back(int32_t(len - (n - 1) * P));
    t.kv_len.push_back(int32_t(len));
  }
  if (grouped) {
    t.qo_indptr.assign(t.seq_ids.size() + 1, 0);
    for (int32_t b : t.token_batch) ++t.qo_indptr[size_t(b) + 1];
    for (size_t b = 0; b < t.seq_ids.size(); ++b) t.qo_indptr[b + 1] += t.qo_indptr[b];
  }
  return t;
}

}  // namespace tandem
