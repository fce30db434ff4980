// First-fit allocator of contiguous row ranges in a fixed pool: the standard path's KV cache gives every
// sequence one contiguous range of rows (position p at row base + p). Host-only bookkeeping.
#pragma once
#include <cstdint>
#include <map>
#include <optional>

namespace tandem {

class RowRangeAllocator {
 public:
  explicit RowRangeAllocator(int64_t rows = 0);
  // Base row of a free range of n rows (lowest address that fits), or nullopt when none does.
  std::optional<int64_t> allocate(int64_t n);
  // Frees the range that starts at base; neighbours merge. Unknown bases throw.
  void release(int64_t base);
  int64_t capacity() const { return rows_; }
  int64_t free_rows() const;
  int64_t largest_free() const;
  size_t ranges_in_use() const { return used_.size(); }

 private:
  int64_t rows_;
  std::map<int64_t, int64_t> free_;  // base -> length
  std::map<int64_t, int64_t> used_;  // base -> length
};

}  // namespace tandem
