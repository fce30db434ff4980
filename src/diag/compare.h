// Tensor comparison with metrics that mean something in low precision, and the tolerances per dtype,
// written down once here.
#pragma once
#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace tandem {

struct Comparison {
  int64_t count = 0;
  double rel_l2 = 0;        // ||a - b|| / ||b|| (||a - b|| when b is all zeros)
  double max_abs = 0;       // max |a - b| over finite pairs
  int64_t max_abs_index = -1;
  double cosine = 1;        // a·b / (||a|| ||b||)
  int64_t nonfinite_a = 0;  // NaN/Inf counts
  int64_t nonfinite_b = 0;
  std::string summary() const;  // "rel_l2 3.1e-06 max_abs 2.0e-05 @ 1234 cos 1.000000"
};

// a and b: same element count, any float dtype, CPU, contiguous. b is the reference side.
Comparison compare(const Tensor& a, const Tensor& b);

// Relative L2 tolerance between a path computing in `dtype` and the fp32 reference.
// fp32: reordered fp32 sums (BLAS blocking, fused exp) stay near 1e-6; 1e-4 leaves two decades of room.
// bf16/fp16: 8/11-bit mantissas give ~4e-3/5e-4 per rounding; 2e-2 and 5e-3 cover a few chained roundings.
double rel_tolerance(DType dtype);

}  // namespace tandem
