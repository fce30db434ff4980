// Owning device memory and a device Tensor over it. Host<->device copies of Tensors.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <span>

#include "core/tensor.h"

namespace tandem::cuda {

class DeviceTensor {
 public:
  DeviceTensor() = default;
  static DeviceTensor empty(DType dtype, std::span<const int64_t> shape);
  static DeviceTensor empty(DType dtype, std::initializer_list<int64_t> shape) {
    return empty(dtype, std::span<const int64_t>(shape.begin(), shape.size()));
  }
  ~DeviceTensor();
  DeviceTensor(DeviceTensor&& o) noexcept;
  DeviceTensor& operator=(DeviceTensor&& o) noexcept;
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;

  const Tensor& view() const { return view_; }
  operator const Tensor&() const { return view_; }
  int64_t nbytes() const { return view_.nbytes(); }

 private:
  Tensor view_;
};

// Page-locked host buffers, reused: a step's logits land here by DMA, and the HostTensor handed to the caller
// returns its buffer to the pool when it dies. (A fresh malloc above glibc's 32 MB mmap threshold faults in
// every page on every step: measured 20+ ms per decode step at 64 x 152064 floats on an H200 host.)
class PinnedPool : public std::enable_shared_from_this<PinnedPool> {
 public:
  ~PinnedPool();
  // A host tensor over a pinned buffer of at least its size; thread-safe.
  HostTensor take(DType dtype, std::span<const int64_t> shape);

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;  // bytes -> buffer
};

// Copies between a contiguous host tensor and a contiguous device tensor of the same dtype and size.
void copy_to_device(const Tensor& host, const Tensor& device, cudaStream_t stream);
void copy_to_host(const Tensor& device, const Tensor& host, cudaStream_t stream);
// Host tensor (f32/f16/bf16) -> new device tensor of `dtype` (converted on the host).
DeviceTensor upload(const Tensor& host, DType dtype, cudaStream_t stream);
// Device tensor -> new fp32 host tensor (synchronizes the stream).
HostTensor download_f32(const Tensor& device, cudaStream_t stream);

// A stream gate for timing: a one-thread kernel on `stream` that waits until *flag (mapped pinned memory) is
// non-zero, or timeout_ms have passed. Work queued behind it then runs back to back once the host opens the gate,
// so that events between kernels time the GPU alone, not the host's launch gaps.
void launch_stream_gate(const volatile int32_t* flag, double timeout_ms, cudaStream_t stream);

}  // namespace tandem::cuda
