// Embedding gather: out[t, :] = table[tokens[t], :]. table and out share a dtype (f32/f16/bf16).
// Token ids are validated on the host before launch (by the caller: the launcher never reads device memory on the
// host); the kernel still never reads outside the table (an id outside [0, V) writes NaN rows, so a bad id is
// loud, not silent). A plain copy: no rounding.
#pragma once
#include <cuda_runtime.h>

#include "core/tensor.h"

namespace tandem::cuda {
void embed(const Tensor& table, const Tensor& tokens /* i32 [T] on device */, const Tensor& out, cudaStream_t stream);
}
