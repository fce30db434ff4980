// Causal GQA attention over the f32 paged KV cache for the cpu path: the same contract as cpu::attention (ops.h),
// parallel over (token, kv head) so that a decode step uses every thread, each key and value row read once for the
// whole query group, dot products and value sums in AVX2/FMA when the CPU has it (cpu/quant_dot.h's dispatch).
#pragma once
#include "core/tensor.h"
#include "exec/kv_cache.h"

namespace tandem::cpu {

void attention_fast(const Tensor& qkv, const Tensor& positions, const PagedKv& kv, const AttentionShape& shape,
                    const Tensor& out);

}  // namespace tandem::cpu
