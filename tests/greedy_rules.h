// The greedy-comparison rules the path tests share: a candidate's argmax is trusted to match the reference's
// only where the reference's top-2 margin exceeds the logit error the candidate's dtype produces
// (rel_tolerance(dtype) x rms(row) x 4); a divergence below that margin is a near-tie, not a bug.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "diag/compare.h"

namespace tandem {

inline int32_t argmax(const float* row, int64_t n) { return int32_t(std::max_element(row, row + n) - row); }

// Top-1 minus top-2 of a logits row.
inline double top2_margin(const float* row, int64_t n) {
  float a = -INFINITY, b = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    if (row[i] > a) {
      b = a;
      a = row[i];
    } else if (row[i] > b) {
      b = row[i];
    }
  }
  return double(a) - double(b);
}

inline double margin_tolerance(DType dtype, const float* row, int64_t n) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += double(row[i]) * row[i];
  return 4.0 * rel_tolerance(dtype) * std::sqrt(ss / double(n));
}

}  // namespace tandem
