// Tensor: the one non-owning view (dtype, shape, strides, device, data) that every op and launcher takes.
// HostTensor owns aligned host memory and hands out views.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>

#include "core/dtype.h"
#include "core/error.h"

namespace tandem {

enum class Device : uint8_t { CPU, CUDA };
std::string_view device_name(Device d);

constexpr int kMaxDims = 4;

struct Tensor {
  DType dtype = DType::F32;
  Device device = Device::CPU;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};    // elements per dim
  std::array<int64_t, kMaxDims> strides{};  // in elements (for quantized types: in blocks, last dim contiguous)
  void* data = nullptr;

  // A contiguous row-major view.
  static Tensor contiguous(void* data, DType dtype, std::span<const int64_t> shape, Device device = Device::CPU);
  static Tensor contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape,
                           Device device = Device::CPU) {
    return contiguous(data, dtype, std::span<const int64_t>(shape.begin(), shape.size()), device);
  }

  int64_t numel() const;
  bool is_contiguous() const;
  // Bytes covered by a contiguous tensor of this dtype and shape.
  int64_t nbytes() const;

  template <typename T>
  T* ptr() const {
    return static_cast<T*>(data);
  }
  // Rows [begin, end) of the first dimension, same strides.
  Tensor slice_rows(int64_t begin, int64_t end) const;
  // Reinterpret a contiguous tensor with a new shape of equal numel.
  Tensor reshape(std::initializer_list<int64_t> new_shape) const;

  // "bf16[4, 64] strides [64, 1] cpu" -- what goes into error messages and reports.
  std::string describe() const;
  std::string shape_str() const;
};

// Owning, 64-byte aligned host buffer with a contiguous Tensor view.
class HostTensor {
 public:
  HostTensor() = default;
  static HostTensor empty(DType dtype, std::span<const int64_t> shape);
  static HostTensor empty(DType dtype, std::initializer_list<int64_t> shape) {
    return empty(dtype, std::span<const int64_t>(shape.begin(), shape.size()));
  }
  static HostTensor zeros(DType dtype, std::initializer_list<int64_t> shape);
  // Copies any CPU tensor of a float dtype (f32/f16/bf16) into a new contiguous f32 tensor.
  static HostTensor to_f32(const Tensor& src);
  // Takes ownership of memory from elsewhere (e.g. a pinned buffer pool); `release` gives it back.
  static HostTensor adopt(void* data, DType dtype, std::span<const int64_t> shape,
                          std::function<void(void*)> release);

  const Tensor& view() const { return view_; }
  operator const Tensor&() const { return view_; }
  float* f32() const { return view_.ptr<float>(); }
  int64_t numel() const { return view_.numel(); }

 private:
  std::unique_ptr<void, std::function<void(void*)>> mem_;
  Tensor view_;
};

// Read element i (flat, contiguous) of a float tensor as f32.
float load_f32(const Tensor& t, int64_t i);

}  // namespace tandem
