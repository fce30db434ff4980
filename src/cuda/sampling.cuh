// Token choice on the device, so that a decode step copies token ids to the host instead of logits rows.
//
// argmax_rows: out[r] = the greedy token of logits row r: the index of the largest value, ties to the lowest
// index; -1 (exec/step.h kNonFiniteRow, the NaN guard's sentinel) when ANY value of the row is NaN, +inf or -inf,
// wherever it sits. Raw logits are finite, so one non-finite value is a fault the runtime must fail the request
// for, exactly as its host scan of a row would: a partly NaN row never yields a token. The same rule as
// greedy_token() (exec/step.h), its CPU twin, and on finite rows the CPU sampler's greedy branch.
// logits: contiguous f32 [R, V] on the device, out: i32 [R]. One block per row; deterministic.
#pragma once
#include <cuda_runtime.h>

#include "core/tensor.h"

namespace tandem::cuda {

void argmax_rows(const Tensor& logits, const Tensor& out, cudaStream_t stream);

}  // namespace tandem::cuda
