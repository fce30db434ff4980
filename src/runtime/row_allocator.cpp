#include "runtime/row_allocator.h"

#include <algorithm>

#include "core/error.h"

namespace tandem {

RowRangeAllocator::RowRangeAllocator(int64_t rows) : rows_(rows) {
  TD_CHECK(rows >= 0, "row pool size must be >= 0, got {}", rows);
  if (rows > 0) free_[0] = rows;
}

std::optional<int64_t> RowRangeAllocator::allocate(int64_t n) {
  TD_CHECK(n > 0, "row range of {} rows requested", n);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < n) continue;
    const int64_t base = it->first, len = it->second;
    free_.erase(it);
    if (len > n) free_[base + n] = len - n;
    used_[base] = n;
    return base;
  }
  return std::nullopt;
}

void RowRangeAllocator::release(int64_t base) {
  auto it = used_.find(base);
  TD_CHECK(it != used_.end(), "row range at {} is not allocated", base);
  int64_t b = base, len = it->second;
  used_.erase(it);
  auto next = free_.lower_bound(b);
  if (next != free_.end() && next->first == b + len) {  // merge with the following free range
    len += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {  // merge with the preceding one
    auto prev = std::prev(next);
    if (prev->first + prev->second == b) {
      b = prev->first;
      len += prev->second;
      free_.erase(prev);
    }
  }
  free_[b] = len;
}

int64_t RowRangeAllocator::free_rows() const {
  int64_t n = 0;
  for (const auto& [b, len] : free_) n += len;
  return n;
}

int64_t RowRangeAllocator::largest_free() const {
  int64_t n = 0;
  for (const auto& [b, len] : free_) n = std::max(n, len);
  return n;
}

}  // namespace tandem
