// Causal GQA attention over the f32 paged KV cache for the cpu path: the same contract as cpu::attention (ops.h).
//
// Each query row's visible keys are taken in chunks of kAttentionChunk positions; a chunk gives, for every query head
// of a kv-head group, its score max m, its exp-sum l and its unnormalized value sum (each key and value row read
// once for the whole group), and the chunks are folded in position order with the usual rescaling (flash-decoding's
// merge). The arithmetic of a row depends only on its position and the sliding window: not on the batch, the thread
// count or the schedule, so a sequence decodes to the same tokens alone or batched. The schedule: a decode step (few
// rows) spreads (row, kv head, chunk) over the threads and merges afterwards; a prefill spreads (row, kv head).
// Dot products and value sums use AVX2/FMA when the CPU has it (cpu/quant_dot.h's dispatch), else portable loops.
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "exec/kv_cache.h"

namespace tandem::cpu {

inline constexpr int64_t kAttentionChunk = 32;

void attention_fast(const Tensor& qkv, const Tensor& positions, const PagedKv& kv, const AttentionShape& shape,
                    const Tensor& out);

}  // namespace tandem::cpu
