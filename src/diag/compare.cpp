#include "diag/compare.h"

#include <cmath>

namespace tandem {

std::string Comparison::summary() const {
  return fmt::format("rel_l2 {:.3e} max_abs {:.3e} @ {} cos {:.6f} nonfinite {}/{} of {}", rel_l2, max_abs,
                     max_abs_index, cosine, nonfinite_a, nonfinite_b, count);
}

Comparison compare(const Tensor& a, const Tensor& b) {
  TD_CHECK(a.numel() == b.numel(), "compare: {} vs {} differ in element count", a.describe(), b.describe());
  TD_CHECK(a.is_contiguous() && b.is_contiguous() && a.device == Device::CPU && b.device == Device::CPU,
           "compare needs contiguous CPU tensors, got {} and {}", a.describe(), b.describe());
  Comparison c;
  c.count = a.numel();
  double diff2 = 0, a2 = 0, b2 = 0, ab = 0;
  for (int64_t i = 0; i < c.count; ++i) {
    const double x = load_f32(a, i), y = load_f32(b, i);
    const bool fx = std::isfinite(x), fy = std::isfinite(y);
    c.nonfinite_a += !fx;
    c.nonfinite_b += !fy;
    if (!fx || !fy) continue;
    const double d = x - y;
    diff2 += d * d;
    a2 += x * x;
    b2 += y * y;
    ab += x * y;
    if (std::abs(d) > c.max_abs || c.max_abs_index < 0) {
      c.max_abs = std::abs(d);
      c.max_abs_index = i;
    }
  }
  c.rel_l2 = b2 > 0 ? std::sqrt(diff2 / b2) : std::sqrt(diff2);
  c.cosine = (a2 > 0 && b2 > 0) ? ab / std::sqrt(a2 * b2) : (a2 == b2 ? 1.0 : 0.0);
  if (c.nonfinite_a != c.nonfinite_b) c.rel_l2 = INFINITY;  // a NaN on one side only is never "close"
  return c;
}

double rel_tolerance(DType dtype) {
  switch (dtype) {
    case DType::F32: return 1e-4;
    case DType::F16: return 5e-3;
    case DType::BF16: return 2e-2;
    default: fail("rel_tolerance: no tolerance defined for {}", dtype_name(dtype));
  }
}

}  // namespace tandem
