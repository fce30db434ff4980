#include "core/checks.h"

#include <string>

namespace tandem {

bool is_float_dtype(DType d) { return d == DType::F32 || d == DType::F16 || d == DType::BF16; }

void check_float_tensor(const char* op, const char* what, const Tensor& t, Device device, int ndim) {
  TD_CHECK(t.device == device && (ndim < 0 || t.ndim == ndim) && t.is_contiguous() && is_float_dtype(t.dtype),
           "{}: {} must be a contiguous {}f32/f16/bf16 {} tensor, got {}", op, what,
           ndim < 0 ? std::string() : std::to_string(ndim) + "-D ", device == Device::CUDA ? "CUDA" : "CPU",
           t.describe());
}

void check_index_tensor(const char* op, const char* what, const Tensor& t, Device device, DType dtype, int64_t n) {
  TD_CHECK(t.device == device && t.ndim == 1 && t.is_contiguous() && t.dtype == dtype && (n < 0 || t.shape[0] == n),
           "{}: {} must be a contiguous 1-D {} {} tensor{}, got {}", op, what, dtype_name(dtype),
           device == Device::CUDA ? "CUDA" : "CPU", n < 0 ? std::string() : " [" + std::to_string(n) + "]",
           t.describe());
}

void check_shape(const char* op, const char* what, const Tensor& t, std::initializer_list<int64_t> dims) {
  bool ok = t.ndim == int(dims.size());
  std::string want = "[";
  int i = 0;
  for (int64_t d : dims) {
    if (ok && d >= 0 && t.shape[size_t(i)] != d) ok = false;
    want += (i ? ", " : "") + (d < 0 ? std::string("*") : std::to_string(d));
    ++i;
  }
  TD_CHECK(ok, "{}: {} must have shape {}], got {}", op, what, want, t.describe());
}

void check_same_shape(const char* op, const char* what, const Tensor& t, const Tensor& like) {
  bool ok = t.ndim == like.ndim;
  for (int i = 0; ok && i < t.ndim; ++i) ok = t.shape[size_t(i)] == like.shape[size_t(i)];
  TD_CHECK(ok, "{}: {} must have shape {}, got {}", op, what, like.shape_str(), t.describe());
}

void check_dtype(const char* op, const char* what, const Tensor& t, DType d) {
  TD_CHECK(t.dtype == d, "{}: {} must be {}, got {}", op, what, dtype_name(d), t.describe());
}

void check_data(const char* op, std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    TD_CHECK(t->numel() == 0 || t->data != nullptr, "{}: null data pointer for {}", op, t->describe());
}

}  // namespace tandem
