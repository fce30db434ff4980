#include "cuda/sampling.cuh"

#include <cstdint>

#include "core/checks.h"
#include "cuda/check.h"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int64_t kMaxBlocks = 65535;

// (value, index) with the greedy order over finite values: larger value first, then lower index; index -1 is
// "nothing yet".
struct Best {
  float v;
  int32_t i;
};
__device__ __forceinline__ bool better(const Best& a, const Best& b) {
  if (a.i < 0) return false;
  if (b.i < 0) return true;
  return a.v > b.v || (a.v == b.v && a.i < b.i);
}

__global__ void argmax_rows_kernel(const float* __restrict__ logits, int32_t* __restrict__ out, int64_t R,
                                   int64_t V) {
  __shared__ Best red[kThreads / 32];
  __shared__ bool red_bad[kThreads / 32];  // the warp met a NaN/Inf
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    const float* row = logits + r * V;
    Best best{0.0f, -1};
    bool bad = false;  // one NaN/Inf anywhere poisons the row (sampling.cuh): no token, whatever the others hold
    for (int64_t k = threadIdx.x; k < V; k += blockDim.x) {
      const float v = row[k];
      if (!isfinite(v)) {
        bad = true;
        continue;
      }
      const Best c{v, int32_t(k)};
      if (better(c, best)) best = c;
    }
    for (int off = 16; off > 0; off >>= 1) {
      const Best o{__shfl_down_sync(0xffffffffu, best.v, off), __shfl_down_sync(0xffffffffu, best.i, off)};
      if (better(o, best)) best = o;
    }
    const bool warp_bad = __any_sync(0xffffffffu, bad);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
      red[warp] = best;
      red_bad[warp] = warp_bad;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      Best b = red[0];
      bool any_bad = red_bad[0];
      for (int w = 1; w < int(blockDim.x >> 5); ++w) {
        if (better(red[w], b)) b = red[w];
        any_bad = any_bad || red_bad[w];
      }
      out[r] = any_bad ? -1 : b.i;
    }
    __syncthreads();
  }
}

}  // namespace

void argmax_rows(const Tensor& logits, const Tensor& out, cudaStream_t stream) {
  const char* op = "argmax_rows";
  check_float_tensor(op, "logits", logits, Device::CUDA, 2);
  check_dtype(op, "logits", logits, DType::F32);
  const int64_t R = logits.shape[0], V = logits.shape[1];
  check_index_tensor(op, "out", out, Device::CUDA, DType::I32, R);
  TD_CHECK(V > 0 && V <= INT32_MAX, "argmax_rows: {} logits per row (1..2^31-1)", V);
  if (R == 0) return;
  check_data(op, {&logits, &out});
  const unsigned blocks = unsigned(R < kMaxBlocks ? R : kMaxBlocks);
  argmax_rows_kernel<<<blocks, kThreads, 0, stream>>>(logits.ptr<const float>(), out.ptr<int32_t>(), R, V);
  TD_CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::cuda
