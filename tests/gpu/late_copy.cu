// A kernel that writes late on purpose, for the PDL contract tests (test_pdl_contract.cpp).
#include "late_copy.h"

#include <cstdint>

#include "core/error.h"
#include "cuda/check.h"
#include "cuda/launch.h"

namespace tandem {
namespace {

__device__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// One block: lets the next kernel launch, waits delay_ns, then copies src to dst.
__global__ void late_copy_kernel(const uint8_t* src, uint8_t* dst, int64_t bytes, uint64_t delay_ns) {
  cuda::pdl_launch_dependents();
  const uint64_t t0 = global_ns();
  while (global_ns() - t0 < delay_ns) __nanosleep(1000);
  for (int64_t i = threadIdx.x; i < bytes; i += blockDim.x) dst[i] = src[i];
}

}  // namespace

void late_copy(const Tensor& src, const Tensor& dst, uint64_t delay_ns, cudaStream_t stream) {
  TD_CHECK(src.nbytes() == dst.nbytes(), "late_copy: {} into {}", src.describe(), dst.describe());
  late_copy_kernel<<<1, 256, 0, stream>>>(static_cast<const uint8_t*>(src.data), static_cast<uint8_t*>(dst.data),
                                          src.nbytes(), delay_ns);
  TD_CUDA_CHECK(cudaGetLastError());
}

}  // namespace tandem
