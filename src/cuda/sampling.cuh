// Token choice on the device, so that a decode step copies token ids to the host instead of logits rows.
//
// argmax_rows: out[r] = the greedy token of logits row r: the index of the largest value, NaN and -inf never
// chosen, ties to the lowest index, +inf larger than every finite value; -1 when the row has no value other than
// NaN and -inf. The same rule as greedy_token() (exec/step.h), its CPU twin, and the CPU sampler's greedy branch.
// logits: contiguous f32 [R, V] on the device, out: i32 [R]. One block per row; deterministic.
#pragma once
#include <cuda_runtime.h>

#include "core/tensor.h"

namespace tandem::cuda {

void argmax_rows(const Tensor& logits, const Tensor& out, cudaStream_t stream);

}  // namespace tandem::cuda
