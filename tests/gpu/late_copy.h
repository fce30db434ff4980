// late_copy: dst = src by a kernel that first lets the next kernel of the stream launch (PDL, cuda/launch.h), then
// waits delay_ns, then copies: what the next kernel reads before its pdl_wait is dst as it was before.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "core/tensor.h"

namespace tandem {
void late_copy(const Tensor& src, const Tensor& dst, uint64_t delay_ns, cudaStream_t stream);
}  // namespace tandem
