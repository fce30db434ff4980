#include <gtest/gtest.h>

#include "core/error.h"
#include "runtime/row_allocator.h"

namespace tandem {
namespace {

TEST(RowRangeAllocator, FirstFitSplitMergeAndExhaustion) {
  RowRangeAllocator a(100);
  EXPECT_EQ(a.allocate(30), 0);
  EXPECT_EQ(a.allocate(30), 30);
  EXPECT_EQ(a.allocate(30), 60);
  EXPECT_EQ(a.allocate(11), std::nullopt);  // 10 left
  EXPECT_EQ(a.free_rows(), 10);
  a.release(30);
  EXPECT_EQ(a.largest_free(), 30);
  EXPECT_EQ(a.allocate(20), 30);  // first fit reuses the hole
  a.release(0);
  a.release(30);  // merges with [0, 30) and the rest of the hole -> [0, 60)
  EXPECT_EQ(a.largest_free(), 60);
  a.release(60);  // everything merges back
  EXPECT_EQ(a.largest_free(), 100);
  EXPECT_EQ(a.ranges_in_use(), 0u);
  EXPECT_THROW(a.release(60), Error);
  EXPECT_THROW(a.allocate(0), Error);
}

TEST(RowRangeAllocator, NeverOverlaps) {
  RowRangeAllocator a(1000);
  std::vector<std::pair<int64_t, int64_t>> live;
  uint32_t rng = 12345;
  for (int i = 0; i < 2000; ++i) {
    rng = rng * 1664525u + 1013904223u;
    if (!live.empty() && (rng >> 30) == 0) {
      const size_t k = (rng >> 8) % live.size();
      a.release(live[k].first);
      live.erase(live.begin() + long(k));
      continue;
    }
    const int64_t n = 1 + (rng >> 12) % 64;
    if (auto b = a.allocate(n)) {
      for (const auto& [ob, on] : live) ASSERT_TRUE(*b + n <= ob || ob + on <= *b) << "overlap";
      ASSERT_LE(*b + n, 1000);
      live.emplace_back(*b, n);
    }
  }
  int64_t used = 0;
  for (const auto& [b, n] : live) used += n;
  EXPECT_EQ(a.free_rows(), 1000 - used);
}

}  // namespace
}  // namespace tandem
