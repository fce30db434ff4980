// Small-batch GEMV kernels for the fused path: at decode a projection reads every weight once for a handful of
// rows, so it is bound by weight bandwidth, and a kernel that reads each weight row once for all rows and applies
// the epilogue in registers saves the intermediate's round trip and a launch.
//
// gate_up_silu: out[t, i] = silu(g) * u with g = round(x[t] . w[i]), u = round(x[t] . w[I + i]) (w = gate | up,
// [2I, H]), dot products accumulated in fp32; the rounding points are those of the standard path's GEMM to the
// activation dtype followed by silu_mul (act rounded, then the product), so it equals linear -> silu_mul up to the
// order of the fp32 sums. x: [T, H] with 1 <= T <= kGemvMaxRows; w: [2I, H]; out: [T, I]; one dtype (f32, f16,
// bf16), contiguous rows. 16-byte loads when H is a multiple of 16 bytes' worth of elements and the pointers are
// 16-byte aligned, else one element at a time. CPU twin: cpu::gate_up_silu.
//
// linear_gemv: out[t, n] = round(x[t] . w[n]) for w [N, K], x [T, K], 1 <= T <= kGemvMaxRows, fp32 sums, one
// rounding to the dtype: the standard path's linear (cuBLASLt, fp32 accumulate) up to the order of the sums. No
// bias (callers add it, as the standard path does). CPU twin: cpu::linear.
//
// The fused forms, for decode steps of up to kGemvFusedMaxRows rows, take the launch of the kernel on either side:
// rmsnorm_linear_gemv / rmsnorm_gate_up_silu: x is RMSNorm'ed (norm_w, eps) by every block into its shared memory
// first, with rmsnorm's rounding points *and sum order* (norm.cuh rmsnorm_sums_by_chunks: 16-byte chunks or one
// element at a time, chosen as rmsnorm chooses), so the result is bit for bit rmsnorm -> the plain kernel. Needs
// R * K * dtype bytes of shared memory (gemv_norm_fits; past 40 KiB the launch opts in to more than the default
// 48 KiB). CPU twins: cpu::rmsnorm then cpu::linear / cpu::gate_up_silu.
// linear_gemv_residual: residual = round(residual + round(round(x . w) + bias)) (bias optional): bit for bit
// linear_gemv -> add_bias -> add, the standard path's rounding points.
//
// Both: one warp per output column (or SPLIT warps, each a slice) reads that weight row once for all T rows;
// x rows come through L1.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <optional>

#include "core/tensor.h"

namespace tandem::cuda {

inline constexpr int64_t kGemvMaxRows = 8;
// The kernel takes up to kGemvMaxRows rows, but past this many cuBLASLt is faster: each weight row is read once
// either way and the GEMV's per-row registers cost it occupancy. H200, decode ctx 128, step ms GEMV vs cuBLASLt:
// 8B b2 5.06 vs 5.11, b3 5.52 vs 5.13, b8 9.00 vs 5.32; 1B b2 1.16 vs 1.31, b3 1.29 vs 1.32, b8 1.97 vs 1.38.
inline constexpr int64_t kGemvFasterRows = 2;
// The fused forms (rmsnorm_*, *_residual) are instantiated up to this many rows (decode; compile time).
inline constexpr int64_t kGemvFusedMaxRows = kGemvFasterRows;

// How a projection of `rows` rows and an [N, K] weight runs (gate_up: N = 2I): the GEMV with many resident warps
// and two loads each in flight (occupancy), with four loads per weight row in flight (deep), or cuBLASLt (more
// than kGemvFasterRows rows, where it was measured faster). TANDEM_GEMV_TUNING=occupancy|deep|cublas forces one
// for every shape (benchmarking). The fused variants ask before choosing the kernel; the launchers ask too, for
// the GEMV's own tuning (cublas there means occupancy). Both tunings compute the same sums in the same order.
enum class GemvTuning { occupancy, deep, cublas };
GemvTuning gemv_tuning(int64_t rows, int64_t N, int64_t K);
// Whether a step of `rows` rows runs the GEMV kernels with the RMSNorm prologue and residual epilogue: rows <=
// kGemvFusedMaxRows that gemv_tuning() gives to the GEMV (not cuBLASLt), and R rows of K values fit 48 KiB of shared
// memory. One answer per (rows, K, dtype), so the fused variants that hand the residual stream to each other agree.
bool gemv_fuses(int64_t rows, int64_t K, DType dtype);
bool gemv_norm_fits(int64_t rows, int64_t K, DType dtype);

// `tuning` (tests): that tuning instead of gemv_tuning()'s choice (cublas there means occupancy).
void gate_up_silu(const Tensor& x, const Tensor& w, const Tensor& out, cudaStream_t stream,
                  std::optional<GemvTuning> tuning = std::nullopt);
void linear_gemv(const Tensor& x, const Tensor& w, const Tensor& out, cudaStream_t stream,
                 std::optional<GemvTuning> tuning = std::nullopt);

// out = linear_gemv(rmsnorm(x, norm_w, eps), w) / gate_up_silu(rmsnorm(x, norm_w, eps), w) in one kernel.
void rmsnorm_linear_gemv(const Tensor& x, const Tensor& norm_w, float eps, const Tensor& w, const Tensor& out,
                         cudaStream_t stream, std::optional<GemvTuning> tuning = std::nullopt);
void rmsnorm_gate_up_silu(const Tensor& x, const Tensor& norm_w, float eps, const Tensor& w, const Tensor& out,
                          cudaStream_t stream, std::optional<GemvTuning> tuning = std::nullopt);
// residual += linear_gemv(x, w) (+ bias, an empty view for none), in one kernel; residual: [T, N].
void linear_gemv_residual(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& residual,
                          cudaStream_t stream, std::optional<GemvTuning> tuning = std::nullopt);

}  // namespace tandem::cuda
