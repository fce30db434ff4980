// The paged KV cache's bookkeeping: page tables, the metadata FlashInfer and our kernels consume, pool views.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include "core/error.h"
#include "exec/kv_cache.h"

namespace tandem {
namespace {

TEST(KvCache, LastPageLengthIsOneToPageSizeAroundBoundaries) {
  for (int64_t P : {1, 16, 64}) {
    for (int64_t len : {int64_t(1), P - 1, P, P + 1, 2 * P, 2 * P + 1}) {
      if (len < 1) continue;
      PageTable pages(P, 8);
      pages.add_sequence(3);
      pages.reserve(3, len);
      std::vector<int32_t> seq_of(size_t(len), 3);
      const KvStepTables t = build_kv_tables(seq_of, pages, {{3, len}});
      const int64_t n = (len + P - 1) / P;
      EXPECT_EQ(t.page_indptr, (std::vector<int32_t>{0, int32_t(n)})) << "P " << P << " len " << len;
      ASSERT_EQ(t.last_page_len.size(), 1u);
      EXPECT_GE(t.last_page_len[0], 1);
      EXPECT_LE(t.last_page_len[0], P);
      EXPECT_EQ((n - 1) * P + t.last_page_len[0], len) << "P " << P << " len " << len;
      EXPECT_EQ(t.kv_len, (std::vector<int32_t>{int32_t(len)}));
    }
  }
}

TEST(KvCache, BatchOrderTokenBatchAndQoIndptr) {
  PageTable pages(4, 16);
  for (int32_t s : {7, 2, 9}) pages.add_sequence(s);
  pages.reserve(7, 5);
  pages.reserve(2, 1);
  pages.reserve(9, 9);
  // Grouped: 7 7 2 9 9 9 -> batch [7, 2, 9], qo_indptr [0, 2, 3, 6].
  const std::vector<int32_t> grouped{7, 7, 2, 9, 9, 9};
  KvStepTables t = build_kv_tables(grouped, pages, {{7, 5}, {2, 1}, {9, 9}});
  EXPECT_EQ(t.seq_ids, (std::vector<int32_t>{7, 2, 9}));
  EXPECT_EQ(t.token_batch, (std::vector<int32_t>{0, 0, 1, 2, 2, 2}));
  EXPECT_EQ(t.qo_indptr, (std::vector<int32_t>{0, 2, 3, 6}));
  EXPECT_EQ(t.page_indptr, (std::vector<int32_t>{0, 2, 3, 6}));
  EXPECT_EQ(t.last_page_len, (std::vector<int32_t>{1, 1, 1}));
  // Page indices are each sequence's own pages, in position order.
  std::vector<int32_t> want = pages.pages(7);
  want.push_back(pages.pages(2)[0]);
  for (int32_t p : pages.pages(9)) want.push_back(p);
  EXPECT_EQ(t.page_indices, want);
  // Interleaved sequences: no qo_indptr (FlashInfer needs grouped tokens), the rest unchanged.
  const std::vector<int32_t> interleaved{7, 2, 7, 9};
  t = build_kv_tables(interleaved, pages, {{7, 5}, {2, 1}, {9, 9}});
  EXPECT_TRUE(t.qo_indptr.empty());
  EXPECT_EQ(t.token_batch, (std::vector<int32_t>{0, 1, 0, 2}));
}

TEST(KvCache, PagesAreReusedAndNeverShared) {
  PageTable pages(16, 10);
  pages.add_sequence(1);
  pages.add_sequence(2);
  pages.reserve(1, 48);  // 3 pages
  pages.reserve(2, 17);  // 2 pages
  EXPECT_EQ(pages.free_pages(), 5);
  EXPECT_EQ(pages.pages_needed(1, 48), 0);
  EXPECT_EQ(pages.pages_needed(1, 49), 1);
  const std::vector<int32_t> ones = pages.pages(1);
  pages.release(1);
  EXPECT_EQ(pages.free_pages(), 8);
  pages.add_sequence(3);
  const std::vector<int32_t> fresh = pages.reserve(3, 40);
  EXPECT_EQ(fresh, ones) << "the freed pages come back first, in their order";
  std::set<int32_t> all(pages.pages(2).begin(), pages.pages(2).end());
  for (int32_t p : pages.pages(3)) EXPECT_TRUE(all.insert(p).second) << "page " << p << " is shared";
  pages.grow(12);
  EXPECT_EQ(pages.free_pages(), 7);
  EXPECT_THROW(pages.add_sequence(2), Error);
}

TEST(KvCache, OutOfPagesNamesTheSequenceAndTheNumbers) {
  PageTable pages(16, 4);
  pages.add_sequence(5);
  try {
    pages.reserve(5, 100);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("KV cache out of pages: sequence 5 needs 7 more pages (100 tokens of "
                                               "16 per page), 4 of 4 pages are free"));
  }
  EXPECT_EQ(pages.free_pages(), 4) << "a failed reservation takes nothing";
}

TEST(KvCache, PoolViewStridesFollowTheLayout) {
  const KvGeometry g{2, 3, 8, 16, KvLayout::NHD};
  const Tensor nhd = kv_pool_view(nullptr, DType::BF16, Device::CPU, g, 5);
  EXPECT_EQ(nhd.shape_str(), "[5, 16, 3, 8]");
  const KvStrides a = kv_strides(nhd, KvLayout::NHD);
  EXPECT_EQ(a.page, 16 * 3 * 8);
  EXPECT_EQ(a.slot, 3 * 8);
  EXPECT_EQ(a.head, 8);
  KvGeometry h = g;
  h.layout = KvLayout::HND;
  const Tensor hnd = kv_pool_view(nullptr, DType::BF16, Device::CPU, h, 5);
  EXPECT_EQ(hnd.shape_str(), "[5, 3, 16, 8]");
  const KvStrides b = kv_strides(hnd, KvLayout::HND);
  EXPECT_EQ(b.page, 16 * 3 * 8);
  EXPECT_EQ(b.slot, 8);
  EXPECT_EQ(b.head, 16 * 8);
  EXPECT_EQ(kv_layout_from_name("hnd"), KvLayout::HND);
  EXPECT_FALSE(kv_layout_from_name("nchw").has_value());
}

// Prefix caching: published pages outlive their sequence as cached (evictable) pages, attach by hash in order,
// are shared with reference counts, and are evicted least recently released first when free pages run out.
TEST(KvCache, PrefixCachePublishAttachShareAndEvict) {
  PageTable t(4, 6);
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  const uint64_t h0 = PageTable::page_hash(0, std::span(tokens).subspan(0, 4));
  const uint64_t h1 = PageTable::page_hash(h0, std::span(tokens).subspan(4, 4));
  EXPECT_NE(h1, PageTable::page_hash(0, std::span(tokens).subspan(4, 4)));  // chained: the prefix counts
  t.add_sequence(0);
  const std::vector<int32_t> own = t.reserve(0, 10);  // 3 pages
  t.publish(0, 0, h0);
  t.publish(0, 1, h1);
  EXPECT_EQ(t.free_pages(), 3);
  t.release(0);
  EXPECT_EQ(t.free_pages(), 6);    // cached pages count as free (evictable)
  EXPECT_EQ(t.cached_pages(), 2);  // the published two; the third went back to the free list
  // Two sequences attach the same two pages; a miss stops the run.
  t.add_sequence(1);
  t.add_sequence(2);
  EXPECT_EQ(t.attach_cached(1, std::vector<uint64_t>{h0, h1, 12345}), 2);
  EXPECT_EQ(t.attach_cached(2, std::vector<uint64_t>{h0, 999}), 1);
  EXPECT_EQ(t.pages(1), (std::vector<int32_t>{own[0], own[1]}));
  EXPECT_EQ(t.cached_pages(), 0);
  t.release(1);  // page own[0] still held by sequence 2; own[1] cached again
  EXPECT_EQ(t.cached_pages(), 1);
  t.release(2);
  EXPECT_EQ(t.cached_pages(), 2);
  // Filling the pool evicts the cached pages (the later prefix page first), and their hashes go with them.
  t.add_sequence(3);
  t.reserve(3, 4 * 5);  // 5 pages: 4 free + one evicted
  EXPECT_EQ(t.cached_pages(), 1);
  t.add_sequence(4);
  EXPECT_EQ(t.attach_cached(4, std::vector<uint64_t>{h0, h1}), 1);  // h0 survived, h1 was evicted
  EXPECT_EQ(t.pages(4), (std::vector<int32_t>{own[0]}));
  EXPECT_EQ(t.free_pages(), 0);
}

}  // namespace
}  // namespace tandem
