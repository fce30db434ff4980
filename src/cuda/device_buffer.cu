#include "cuda/device_buffer.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "cuda/check.h"

namespace tandem::cuda {

DeviceTensor DeviceTensor::empty(DType dtype, std::span<const int64_t> shape) {
  DeviceTensor t;
  t.view_ = Tensor::contiguous(nullptr, dtype, shape, Device::CUDA);
  const size_t bytes = size_t(t.view_.nbytes());
  if (bytes > 0) TD_CUDA_CHECK(cudaMalloc(&t.view_.data, bytes));
  return t;
}

DeviceTensor::~DeviceTensor() {
  if (view_.data) cudaFree(view_.data);  // no throw from a destructor
}

DeviceTensor::DeviceTensor(DeviceTensor&& o) noexcept : view_(o.view_) { o.view_.data = nullptr; }

DeviceTensor& DeviceTensor::operator=(DeviceTensor&& o) noexcept {
  if (this != &o) {
    if (view_.data) cudaFree(view_.data);
    view_ = o.view_;
    o.view_.data = nullptr;
  }
  return *this;
}

PinnedPool::~PinnedPool() {
  for (auto& [bytes, p] : free_) cudaFreeHost(p);
}

HostTensor PinnedPool::take(DType dtype, std::span<const int64_t> shape) {
  const size_t bytes = size_t(std::max<int64_t>(Tensor::contiguous(nullptr, dtype, shape).nbytes(), 1));
  void* p = nullptr;
  size_t have = bytes;
  {
    std::lock_guard lk(mu_);
    auto it = free_.lower_bound(bytes);
    if (it != free_.end() && it->first <= 2 * bytes) {  // reuse, unless it would waste more than half
      have = it->first;
      p = it->second;
      free_.erase(it);
    }
  }
  if (!p) TD_CUDA_CHECK(cudaMallocHost(&p, bytes));
  std::weak_ptr<PinnedPool> pool = weak_from_this();
  return HostTensor::adopt(p, dtype, shape, [pool, have](void* q) {
    if (auto alive = pool.lock()) {
      std::lock_guard lk(alive->mu_);
      alive->free_.emplace(have, q);
    } else {
      cudaFreeHost(q);
    }
  });
}

namespace {
void check_pair(const Tensor& host, const Tensor& device) {
  TD_CHECK(host.device == Device::CPU && device.device == Device::CUDA && host.dtype == device.dtype &&
               host.numel() == device.numel() && host.is_contiguous() && device.is_contiguous(),
           "host/device copy between {} and {}", host.describe(), device.describe());
}
}  // namespace

void copy_to_device(const Tensor& host, const Tensor& device, cudaStream_t stream) {
  check_pair(host, device);
  TD_CUDA_CHECK(cudaMemcpyAsync(device.data, host.data, size_t(host.nbytes()), cudaMemcpyHostToDevice, stream));
}

void copy_to_host(const Tensor& device, const Tensor& host, cudaStream_t stream) {
  check_pair(host, device);
  TD_CUDA_CHECK(cudaMemcpyAsync(host.data, device.data, size_t(host.nbytes()), cudaMemcpyDeviceToHost, stream));
}

DeviceTensor upload(const Tensor& host, DType dtype, cudaStream_t stream) {
  HostTensor f32 = HostTensor::to_f32(host);
  HostTensor staged = HostTensor::empty(dtype, std::span<const int64_t>(host.shape.data(), size_t(host.ndim)));
  const int64_t n = f32.numel();
  switch (dtype) {
    case DType::F32: std::memcpy(staged.view().data, f32.f32(), size_t(n) * 4); break;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) staged.view().ptr<uint16_t>()[i] = f32_to_bf16(f32.f32()[i]);
      break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) staged.view().ptr<uint16_t>()[i] = f32_to_fp16(f32.f32()[i]);
      break;
    default: fail("upload: unsupported device dtype {}", dtype_name(dtype));
  }
  DeviceTensor d = DeviceTensor::empty(dtype, std::span<const int64_t>(host.shape.data(), size_t(host.ndim)));
  copy_to_device(staged, d, stream);
  TD_CUDA_CHECK(cudaStreamSynchronize(stream));  // `staged` dies here
  return d;
}

HostTensor download_f32(const Tensor& device, cudaStream_t stream) {
  TD_CHECK(device.is_contiguous(), "download of a non-contiguous tensor {}", device.describe());
  HostTensor raw = HostTensor::empty(device.dtype, std::span<const int64_t>(device.shape.data(), size_t(device.ndim)));
  copy_to_host(device, raw, stream);
  TD_CUDA_CHECK(cudaStreamSynchronize(stream));
  return device.dtype == DType::F32 ? std::move(raw) : HostTensor::to_f32(raw);
}

namespace {
__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__global__ void stream_gate_kernel(const volatile int32_t* flag, uint64_t timeout_ns) {
  const uint64_t t0 = global_ns();
  while (*flag == 0 && global_ns() - t0 < timeout_ns) __nanosleep(2000);
}
}  // namespace

void launch_stream_gate(const volatile int32_t* flag, double timeout_ms, cudaStream_t stream) {
  stream_gate_kernel<<<1, 1, 0, stream>>>(flag, uint64_t(timeout_ms * 1e6));
  TD_CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::cuda
