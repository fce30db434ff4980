// BPE merging. Ranked merges follow HF tokenizers' Word::merge_all (a min-heap of (rank, position), stale entries
// skipped), O(n log n) in the word length; scored merges (SentencePiece vocab without a merges list) follow
// llama.cpp's SPM tokenizer (highest score of the merged token first, then leftmost).
#include <algorithm>
#include <queue>

#include "tokenizer/internal.h"
#include "tokenizer/unicode.h"

namespace tandem {
namespace {

constexpr size_t kCacheMaxWordBytes = 256;
constexpr size_t kCacheMaxEntries = 1 << 16;

size_t char_len(std::string_view s, size_t i) {
  tok::Utf8Step st = tok::utf8_step(reinterpret_cast<const unsigned char*>(s.data()) + i, s.size() - i);
  return st.len > 0 ? static_cast<size_t>(st.len) : 1;
}

uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

}  // namespace

void Tokenizer::Impl::tokenize_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (spec.ignore_merges) {
    auto it = token_to_id.find(word);
    if (it != token_to_id.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kCacheMaxWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu);
    auto it = cache.find(std::string(word));
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  if (score_mode) bpe_scored(word, ids);
  else bpe_ranked(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu);
    if (cache.size() >= kCacheMaxEntries) cache.clear();
    cache.emplace(std::string(word), std::move(ids));
  }
}

void Tokenizer::Impl::bpe_ranked(std::string_view word, std::vector<int32_t>& out) const {
  struct Sym {
    int32_t id, prev, next;
    bool alive;
  };
  std::vector<Sym> syms;
  syms.reserve(word.size());
  auto push = [&](int32_t id) {
    int32_t n = static_cast<int32_t>(syms.size());
    syms.push_back({id, n - 1, -1, true});
    if (n > 0) syms[n - 1].next = n;
  };
  // Initial symbols, as HF's BPE::merge_word: vocab char, else byte fallback, else (fused) unk, else dropped.
  bool have_unk = false;
  for (size_t i = 0; i < word.size();) {
    size_t len = char_len(word, i);
    auto it = token_to_id.find(word.substr(i, len));
    if (it != token_to_id.end()) {
      if (have_unk) push(unk_id), have_unk = false;
      push(it->second);
    } else {
      bool done = false;
      if (spec.byte_fallback) {
        bool all = true;
        for (size_t k = i; k < i + len; ++k) all = all && byte_fallback_id[static_cast<unsigned char>(word[k])] >= 0;
        if (all) {  // HF pushes these without flushing a pending unk first
          for (size_t k = i; k < i + len; ++k) push(byte_fallback_id[static_cast<unsigned char>(word[k])]);
          done = true;
        }
      }
      if (!done && unk_id >= 0) {
        if (have_unk && !spec.fuse_unk) push(unk_id);
        have_unk = true;
      }
    }
    i += len;
  }
  if (have_unk) push(unk_id);

  struct Item {
    int32_t rank, pos, new_id;
    bool operator<(const Item& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }  // min-heap
  };
  std::vector<Item> heap_storage;
  heap_storage.reserve(syms.size());
  std::priority_queue<Item> heap(std::less<Item>(), std::move(heap_storage));
  auto try_pair = [&](int32_t pos) {
    int32_t nx = syms[pos].next;
    if (nx < 0) return;
    auto it = merges.find(pair_key(syms[pos].id, syms[nx].id));
    if (it != merges.end()) heap.push({it->second.first, pos, it->second.second});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) try_pair(i);
  while (!heap.empty()) {
    Item top = heap.top();
    heap.pop();
    Sym& s = syms[top.pos];
    if (!s.alive || s.next < 0) continue;
    Sym& right = syms[s.next];
    auto it = merges.find(pair_key(s.id, right.id));
    if (it == merges.end() || it->second.second != top.new_id) continue;  // stale entry
    s.id = top.new_id;
    right.alive = false;
    s.next = right.next;
    if (s.next >= 0) syms[s.next].prev = top.pos;
    if (s.prev >= 0) try_pair(s.prev);
    try_pair(top.pos);
  }
  for (const Sym& s : syms)
    if (s.alive) out.push_back(s.id);
}

void Tokenizer::Impl::bpe_scored(std::string_view word, std::vector<int32_t>& out) const {
  struct Sym {
    uint32_t off, len;
    int32_t prev, next;
  };
  std::vector<Sym> syms;
  for (size_t i = 0; i < word.size();) {
    size_t len = char_len(word, i);
    int32_t n = static_cast<int32_t>(syms.size());
    syms.push_back({static_cast<uint32_t>(i), static_cast<uint32_t>(len), n - 1, -1});
    if (n > 0) syms[n - 1].next = n;
    i += len;
  }
  struct Bigram {
    float score;
    int32_t left;
    uint32_t size;
    bool operator<(const Bigram& o) const { return score != o.score ? score < o.score : left > o.left; }
  };
  std::priority_queue<Bigram> heap;
  auto try_pair = [&](int32_t l) {
    if (l < 0) return;
    int32_t r = syms[l].next;
    if (r < 0) return;
    std::string_view text = word.substr(syms[l].off, syms[l].len + syms[r].len);
    auto it = token_to_id.find(text);
    if (it == token_to_id.end()) return;
    float score = static_cast<size_t>(it->second) < spec.scores.size() ? spec.scores[it->second] : 0.f;
    heap.push({score, l, static_cast<uint32_t>(text.size())});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) try_pair(i);
  while (!heap.empty()) {
    Bigram b = heap.top();
    heap.pop();
    Sym& l = syms[b.left];
    if (l.len == 0 || l.next < 0) continue;
    Sym& r = syms[l.next];
    if (r.len == 0 || l.len + r.len != b.size) continue;  // stale
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (l.next >= 0) syms[l.next].prev = b.left;
    try_pair(l.prev);
    try_pair(b.left);
  }
  for (const Sym& s : syms) {
    if (s.len == 0) continue;
    std::string_view text = word.substr(s.off, s.len);
    auto it = token_to_id.find(text);
    if (it != token_to_id.end()) {
      out.push_back(it->second);
      continue;
    }
    bool all = true;
    for (char c : text) all = all && byte_fallback_id[static_cast<unsigned char>(c)] >= 0;
    if (all) {
      for (char c : text) out.push_back(byte_fallback_id[static_cast<unsigned char>(c)]);
    } else if (unk_id >= 0) {
      out.push_back(unk_id);
    }
  }
}

}  // namespace tandem
