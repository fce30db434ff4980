// The CUDA device host: weights and activations in one dtype (bf16 by default; f16, f32) on the GPU, the paged KV
// pools in one device allocation, one non-blocking stream for everything a step does, the step's metadata copied
// in one transfer, logits landing in reused pinned host buffers. CudaContext is what its variants receive.
#pragma once
#include <cuda_runtime.h>

#include <memory>

#include "cuda/device_buffer.h"
#include "cuda/gemm.cuh"
#include "exec/device_host.h"

namespace tandem::cuda {

class FlashInferAttention;

class CudaContext final : public DeviceContext {
 public:
  Device device() const override { return Device::CUDA; }
  cudaStream_t stream = nullptr;
  Gemm* gemm = nullptr;
  Tensor scratch_i32;  // i32 [rows of the step] for variants that need one small device array
  // attention.flashinfer's adapter (workspaces; made on first use) and the step serial it last planned.
  std::shared_ptr<FlashInferAttention> flashinfer;
  // The split-KV mode the adapter must be made with (HostOptions::split_kv; --split-kv).
  SplitKv split_kv = SplitKv::automatic;
  int64_t flashinfer_planned = -1;
  // attention.fused's split-KV decode workspace (grows in prepare(), outside any graph; counters kept zero).
  DeviceTensor decode_workspace;
};

std::unique_ptr<DeviceHost> make_cuda_host(const ModelSource& source, const HostOptions& options,
                                           LoadProgress progress);
std::unique_ptr<DeviceHost> make_random_cuda_host(const ModelConfig& config, const HostOptions& options,
                                                  uint64_t seed);

}  // namespace tandem::cuda
