// Deterministic pseudo-random fill, for real-shape benchmark models built on the GPU without reading weights:
// t[i] = offset + scale * u(seed, i) with u uniform in [-1, 1) from a counter-based hash (splitmix64 of
// seed ^ i), rounded to t's dtype (f32/f16/bf16). Same seed, same values, whatever the launch shape.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "core/tensor.h"

namespace tandem::cuda {
void fill_uniform(const Tensor& t, uint64_t seed, float offset, float scale, cudaStream_t stream);
// The value fill_uniform writes at flat index i before rounding (host twin, for tests).
float uniform_value(uint64_t seed, int64_t i, float offset, float scale);
}  // namespace tandem::cuda
