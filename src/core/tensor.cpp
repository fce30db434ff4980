#include "core/tensor.h"

#include <cstdlib>
#include <cstring>

namespace tandem {

std::string_view device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

Tensor Tensor::contiguous(void* data, DType dtype, std::span<const int64_t> shape, Device device) {
  TD_CHECK(shape.size() <= size_t(kMaxDims), "tensor rank {} exceeds the maximum of {}", shape.size(), kMaxDims);
  Tensor t;
  t.dtype = dtype;
  t.device = device;
  t.ndim = int(shape.size());
  t.data = data;
  const int64_t block = dtype_block_elems(dtype);
  int64_t stride = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    t.shape[size_t(i)] = shape[size_t(i)];
    t.strides[size_t(i)] = stride;
    stride *= (i == t.ndim - 1) ? (shape[size_t(i)] + block - 1) / block : shape[size_t(i)];
  }
  return t;
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[size_t(i)];
  return n;
}

bool Tensor::is_contiguous() const {
  const int64_t block = dtype_block_elems(dtype);
  int64_t stride = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    if (shape[size_t(i)] != 1 && strides[size_t(i)] != stride) return false;
    stride *= (i == ndim - 1) ? (shape[size_t(i)] + block - 1) / block : shape[size_t(i)];
  }
  return true;
}

int64_t Tensor::nbytes() const {
  if (ndim == 0) return dtype_block_bytes(dtype);
  const int64_t block = dtype_block_elems(dtype);
  int64_t blocks = (shape[size_t(ndim - 1)] + block - 1) / block;
  for (int i = 0; i < ndim - 1; ++i) blocks *= shape[size_t(i)];
  return blocks * dtype_block_bytes(dtype);
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  TD_CHECK(ndim >= 1 && begin >= 0 && begin <= end && end <= shape[0], "slice_rows [{}, {}) out of range for {}",
           begin, end, describe());
  Tensor t = *this;
  t.shape[0] = end - begin;
  const int64_t elem_bytes = dtype_block_bytes(dtype);  // strides count blocks for quantized types
  t.data = static_cast<char*>(data) + begin * strides[0] * elem_bytes;
  return t;
}

Tensor Tensor::reshape(std::initializer_list<int64_t> new_shape) const {
  TD_CHECK(is_contiguous(), "reshape of a non-contiguous tensor {}", describe());
  Tensor t = contiguous(data, dtype, new_shape, device);
  TD_CHECK(t.numel() == numel(), "reshape of {} to {} changes the element count", describe(), t.shape_str());
  return t;
}

std::string Tensor::shape_str() const {
  std::string s = "[";
  for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[size_t(i)]);
  return s + "]";
}

std::string Tensor::describe() const {
  std::string s = fmt::format("{}{} strides [", dtype_name(dtype), shape_str());
  for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(strides[size_t(i)]);
  return s + "] " + std::string(device_name(device));
}

HostTensor HostTensor::adopt(void* data, DType dtype, std::span<const int64_t> shape,
                             std::function<void(void*)> release) {
  HostTensor h;
  h.view_ = Tensor::contiguous(data, dtype, shape);
  h.mem_ = std::unique_ptr<void, std::function<void(void*)>>(data, std::move(release));
  return h;
}

HostTensor HostTensor::empty(DType dtype, std::span<const int64_t> shape) {
  HostTensor h;
  h.view_ = Tensor::contiguous(nullptr, dtype, shape);
  for (int i = 0; i < h.view_.ndim; ++i)
    TD_CHECK(h.view_.shape[size_t(i)] >= 0, "negative dimension in {}", h.view_.shape_str());
  const size_t bytes = size_t(h.view_.nbytes());
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded ? rounded : 64);
  TD_CHECK(p != nullptr, "out of host memory allocating {} bytes for {}", bytes, h.view_.describe());
  h.mem_ = std::unique_ptr<void, std::function<void(void*)>>(p, [](void* q) { std::free(q); });
  h.view_.data = p;
  return h;
}

HostTensor HostTensor::zeros(DType dtype, std::initializer_list<int64_t> shape) {
  HostTensor h = empty(dtype, shape);
  std::memset(h.view_.data, 0, size_t(h.view_.nbytes()));
  return h;
}

float load_f32(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::F32: return t.ptr<const float>()[i];
    case DType::F16: return fp16_to_f32(t.ptr<const uint16_t>()[i]);
    case DType::BF16: return bf16_to_f32(t.ptr<const uint16_t>()[i]);
    default: fail("load_f32: unsupported dtype {}", dtype_name(t.dtype));
  }
}

HostTensor HostTensor::to_f32(const Tensor& src) {
  TD_CHECK(src.device == Device::CPU, "to_f32 needs a CPU tensor, got {}", src.describe());
  TD_CHECK(src.is_contiguous(), "to_f32 needs a contiguous tensor, got {}", src.describe());
  TD_CHECK(src.dtype == DType::F32 || src.dtype == DType::F16 || src.dtype == DType::BF16,
           "to_f32: dtype {} is not a float type (quantized types go through the dequantizer)",
           dtype_name(src.dtype));
  HostTensor h = empty(DType::F32, std::span<const int64_t>(src.shape.data(), size_t(src.ndim)));
  const int64_t n = src.numel();
  float* out = h.f32();
  if (src.dtype == DType::F32) {
    std::memcpy(out, src.data, size_t(n) * 4);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = load_f32(src, i);
  }
  return h;
}

}  // namespace tandem
