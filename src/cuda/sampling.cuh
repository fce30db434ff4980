// Token choice on the device, so that a decode step copies token ids to the host instead of logits rows.
//
// argmax_rows: out[r] = the greedy token of logits row r: the index of the largest value, ties to the lowest
// index; -1 (exec/step.h kNonFiniteRow, the NaN guard's sentinel) when ANY value of the row is NaN, +inf or -inf,
// wherever it sits. Raw logits are finite, so one non-finite value is a fault the runtime must fail the request
// for, exactly as its host scan of a row would: a partly NaN row never yields a token. The same rule as
// greedy_token() (exec/step.h), its CPU twin, and on finite rows the CPU sampler's greedy branch.
// logits: contiguous f32 [R, V] on the device, out: i32 [R]. One block per row; deterministic.
//
// sample_rows: out[r] = sample_token(logits row r, its penalty ids, its params, its u) (exec/sampling.h, the CPU
// twin): the sampler's chain (repetition penalty -> top-k -> top-p -> min-p -> temperature -> inverse-CDF draw
// with the host's uniform u), kNonFiniteRow for a row with any raw NaN/+-inf (the NaN guard, as argmax_rows),
// kNoCandidate when every logit is -inf after the penalty, and kSampleOnHost (below) for a row whose candidate
// set after top-k is larger than kMaxDeviceCandidates: top_k off (or larger) on a vocabulary larger than that;
// the caller samples such a row on the host from its logits (cuda_host.cpp does). Greedy rows (temperature <= 0)
// are the top-1 candidate after the penalty and never hand back.
// Algorithm, one block per row: the penalty window becomes a bitmap in shared memory; one pass counts NaN/Inf,
// candidates and +inf logits; a radix select over 64-bit keys (ordered logit bits, then the inverted id: distinct,
// so "descending logit, ties -> lower id" is a total order, as the CPU's) finds the k-th best key in at most 8
// passes and the keys >= it are gathered and bitonic-sorted in shared memory; exp() of every candidate is taken in
// parallel and the sums, the top-p and min-p cuts and the draw run on one thread, term by term in the sorted order,
// in double, exactly as the CPU does (-0 and +0 are one key; +inf logits become the uniform set of 0s).
// Where it may differ from the CPU twin: double exp() is CUDA's (max 1 ulp) against the host libm's, so a term can
// differ in its last bit; a token differs only when u * total (or top_p, or min_p) falls within ~1e-16 relative
// of a cumulative boundary. Rows whose terms are exactly 1 or 0 (flat rows, one-hot rows, +inf rows) match
// exactly. Float penalty math is IEEE (__fdiv_rn, __fmul_rn) and no FMA is contracted into the sums.
// logits: contiguous f32 [R, V]; params: u8 [R, sizeof(SampleRowParams)] (pack_sample_rows); penalized: i32 [P],
// the rows' penalty windows one after another (ids in [0, V), duplicates fine); out: i32 [R]. Deterministic.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <span>
#include <vector>

#include "core/tensor.h"
#include "exec/sampling.h"

namespace tandem::cuda {

void argmax_rows(const Tensor& logits, const Tensor& out, cudaStream_t stream);

// The most candidates (after top-k) a row may have to be sampled on the device (shared memory: 16 bytes each).
inline constexpr int kMaxDeviceCandidates = 1024;
// sample_rows' answer for a row it leaves to the host (see above).
inline constexpr int32_t kSampleOnHost = -3;

// One row's knobs as the kernel reads them.
struct SampleRowParams {
  double u;
  float temperature, top_p, min_p, repeat_penalty;
  int32_t top_k;
  int32_t penalized_begin, penalized_end;  // this row's ids in `penalized`: [begin, end)
  int32_t unused;
};
static_assert(sizeof(SampleRowParams) == 40);

// The kernel's inputs for `rows` (a step's RowSampling, in the device's row order): one SampleRowParams per row,
// and the penalty windows appended to *penalized. Throws when an id is outside [0, vocab).
std::vector<SampleRowParams> pack_sample_rows(std::span<const RowSampling> rows, int64_t vocab,
                                              std::vector<int32_t>* penalized);

void sample_rows(const Tensor& logits, const Tensor& params, const Tensor& penalized, const Tensor& out,
                 cudaStream_t stream);

}  // namespace tandem::cuda
