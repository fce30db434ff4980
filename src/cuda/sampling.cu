#include "cuda/sampling.cuh"

#include <cstdint>
#include <mutex>

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

// ------------------------------------------------------------------------------------------------ sample_rows

constexpr int kSampleThreads = 512;
constexpr int kSampleWarps = kSampleThreads / 32;
constexpr int kMaxCand = kMaxDeviceCandidates;
static_assert((kMaxCand & (kMaxCand - 1)) == 0, "the bitonic sort needs a power of two");

// Dynamic shared memory: keys [kMaxCand] u64, weights [kMaxCand] f64, then the penalty bitmap [ceil(V / 32)] u32.
size_t sample_smem_bytes(int64_t V) {
  return size_t(kMaxCand) * (sizeof(uint64_t) + sizeof(double)) + size_t((V + 31) / 32) * sizeof(uint32_t);
}

// The sampler's penalty (exec/sampling.cpp), IEEE-rounded: l > 0 ? l / r : l * r.
__device__ __forceinline__ float penalized_logit(float l, float r) {
  return l > 0.0f ? __fdiv_rn(l, r) : __fmul_rn(l, r);
}

// Float bits as an unsigned key that orders like the value (no NaN here); -0 and +0 give the same key, as they
// compare equal on the CPU (its ties then go to the lower id).
__device__ __forceinline__ uint32_t ordered_bits(float v) {
  uint32_t b = __float_as_uint(v);
  if (b == 0x80000000u) b = 0u;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float from_ordered_bits(uint32_t o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

// Larger key = earlier in the CPU's sorted order: higher logit, then lower id. Never 0 (a logit's ordered bits
// are >= 0x00800000), so 0 pads the sort.
__device__ __forceinline__ uint64_t candidate_key(float c, int k) {
  return (uint64_t(ordered_bits(c)) << 32) | uint64_t(0xffffffffu - uint32_t(k));
}
__device__ __forceinline__ int32_t key_id(uint64_t key) { return int32_t(0xffffffffu - uint32_t(key)); }
__device__ __forceinline__ double key_logit(uint64_t key) { return double(from_ordered_bits(uint32_t(key >> 32))); }

// One row as the chain sees it: the raw logits with the penalty applied to the ids in the bitmap.
struct RowView {
  const float* logits;
  const uint32_t* bitmap;  // null: no penalty
  float penalty;
  __device__ __forceinline__ float logit(int k) const {
    const float l = logits[k];
    return bitmap && ((bitmap[k >> 5] >> (k & 31)) & 1u) ? penalized_logit(l, penalty) : l;
  }
};

// Is logit e (penalized, never NaN: the raw row is finite) a candidate, and its key. With +inf among the logits
// only the +inf ones are, all as 0 (the CPU's uniform rule).
__device__ __forceinline__ bool candidate(float e, int k, bool inf_mode, uint64_t* key) {
  const bool is = inf_mode ? e == INFINITY : e != -INFINITY;
  *key = candidate_key(inf_mode ? 0.0f : e, k);
  return is;
}

// Sum of v over the block, returned to every thread. `scratch`: kSampleWarps ints of shared memory.
__device__ int block_sum(int v, int* scratch) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  __syncthreads();  // a previous call's readers are done with scratch
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  int total = 0;
  for (int w = 0; w < kSampleWarps; ++w) total += scratch[w];
  return total;
}

__global__ void __launch_bounds__(kSampleThreads)
sample_rows_kernel(const float* __restrict__ logits, const SampleRowParams* __restrict__ params,
                   const int32_t* __restrict__ penalized, int64_t P, int32_t* __restrict__ out, int64_t R, int V) {
  extern __shared__ __align__(16) unsigned char smem[];
  uint64_t* keys = reinterpret_cast<uint64_t*>(smem);
  double* weights = reinterpret_cast<double*>(keys + kMaxCand);
  uint32_t* bitmap = reinterpret_cast<uint32_t*>(weights + kMaxCand);
  __shared__ unsigned hist[256];
  __shared__ int red[kSampleWarps];
  __shared__ uint64_t s_prefix, s_mask;
  __shared__ int s_remaining, s_done, s_count, s_keep;

  const int tid = int(threadIdx.x), lane = tid & 31;
  const int words = (V + 31) / 32;
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    const SampleRowParams p = params[r];
    const bool greedy = !(p.temperature > 0.0f);
    const int64_t pen_begin = p.penalized_begin < 0 ? 0 : p.penalized_begin;
    const int64_t pen_end = p.penalized_end > P ? P : p.penalized_end;
    const bool penalize = p.repeat_penalty != 1.0f && pen_end > pen_begin;

    // The penalty window as a bitmap: once per distinct id, like the CPU's sort + unique.
    if (penalize) {
      for (int w = tid; w < words; w += kSampleThreads) bitmap[w] = 0u;
      __syncthreads();
      for (int64_t i = pen_begin + tid; i < pen_end; i += kSampleThreads) {
        const int32_t id = penalized[i];
        if (id >= 0 && id < V) atomicOr(&bitmap[id >> 5], 1u << (id & 31));
      }
      __syncthreads();
    }
    const RowView row{logits + r * int64_t(V), penalize ? bitmap : nullptr, p.repeat_penalty};

    // 1. The NaN guard on the raw row, the candidates and the +inf logits after the penalty.
    int bad = 0, n_cand = 0, n_inf = 0;
    for (int k = tid; k < V; k += kSampleThreads) {
      if (!isfinite(row.logits[k])) {
        bad = 1;
        continue;
      }
      const float e = row.logit(k);
      n_cand += e != -INFINITY;
      n_inf += e == INFINITY;
    }
    if (__syncthreads_or(bad)) {
      if (tid == 0) out[r] = kNonFiniteRow;
      __syncthreads();
      continue;
    }
    n_cand = block_sum(n_cand, red);
    n_inf = block_sum(n_inf, red);
    if (n_cand == 0) {
      if (tid == 0) out[r] = kNoCandidate;
      __syncthreads();
      continue;
    }
    const bool inf_mode = n_inf > 0;
    const int n = inf_mode ? n_inf : n_cand;
    const int K = greedy ? 1 : (p.top_k > 0 && p.top_k < n ? p.top_k : n);
    if (K > kMaxCand) {
      if (tid == 0) out[r] = kSampleOnHost;
      __syncthreads();
      continue;
    }

    // 2. Radix select of the K-th largest key, 8 bits at a time from the top: keys whose top bits beat the group
    // holding it are in; the group is narrowed until it holds exactly the `remaining` keys still wanted. Every
    // thread runs the same number of iterations (the warp-aggregated histogram needs whole warps).
    uint64_t prefix = 0, mask = 0;
    if (K < n) {
      int remaining = K;
      for (int shift = 56; shift >= 0; shift -= 8) {
        for (int i = tid; i < 256; i += kSampleThreads) hist[i] = 0u;
        __syncthreads();
        for (int base = 0; base < V; base += kSampleThreads) {
          const int k = base + tid;
          unsigned digit = 256u;
          uint64_t key;
          if (k < V && candidate(row.logit(k), k, inf_mode, &key) && (key & mask) == prefix)
            digit = unsigned(key >> shift) & 255u;
          const unsigned peers = __match_any_sync(0xffffffffu, digit);
          if (digit < 256u && lane == __ffs(int(peers)) - 1) atomicAdd(&hist[digit], unsigned(__popc(peers)));
        }
        __syncthreads();
        if (tid == 0) {
          int above = 0, b = 255;
          for (; b > 0; --b) {  // the group always holds >= remaining keys, so bin 0 is taken if none before
            if (above + int(hist[b]) >= remaining) break;
            above += int(hist[b]);
          }
          s_remaining = remaining - above;
          s_prefix = prefix | (uint64_t(b) << shift);
          s_mask = mask | (uint64_t(255) << shift);
          s_done = int(hist[b]) == s_remaining;  // the whole group is wanted
        }
        __syncthreads();
        prefix = s_prefix;
        mask = s_mask;
        remaining = s_remaining;
        if (s_done) break;  // the same value in every thread; keys are distinct, so shift 0 always ends it
      }
    }

    // 3. Gather the K keys >= the threshold ((key & mask) >= prefix: every key when K == n), then sort them
    // descending: the CPU's order.
    if (tid == 0) s_count = 0;
    __syncthreads();
    for (int k = tid; k < V; k += kSampleThreads) {
      uint64_t key;
      if (candidate(row.logit(k), k, inf_mode, &key) && (key & mask) >= prefix) {
        const int slot = atomicAdd(&s_count, 1);
        if (slot < kMaxCand) keys[slot] = key;
      }
    }
    __syncthreads();
    int padded = 1;
    while (padded < K) padded <<= 1;
    for (int i = K + tid; i < padded; i += kSampleThreads) keys[i] = 0;  // below every real key
    for (int size = 2; size <= padded; size <<= 1)
      for (int stride = size >> 1; stride > 0; stride >>= 1) {
        __syncthreads();
        for (int i = tid; i < padded; i += kSampleThreads) {
          const int j = i ^ stride;
          if (j > i) {
            const uint64_t a = keys[i], b = keys[j];
            const bool descending = (i & size) == 0;
            if (descending ? a < b : a > b) {
              keys[i] = b;
              keys[j] = a;
            }
          }
        }
      }
    __syncthreads();

    // 4. p_i / p_max = exp(l_i - l_max) for top-p and min-p, in parallel (each term as the CPU computes it).
    const double max_logit = key_logit(keys[0]);
    if (!greedy)
      for (int i = tid; i < K; i += kSampleThreads) weights[i] = exp(__dsub_rn(key_logit(keys[i]), max_logit));
    __syncthreads();
    if (tid == 0) {
      int keep = greedy ? 1 : K;
      if (p.top_p < 1.0f && keep > 1) {
        double total = 0.0;
        for (int i = 0; i < keep; ++i) total = __dadd_rn(total, weights[i]);
        const double target = double(p.top_p);
        double cum = 0.0;
        for (int i = 0; i < keep; ++i) {
          cum = __dadd_rn(cum, __ddiv_rn(weights[i], total));
          if (cum >= target) {
            keep = i + 1;
            break;
          }
        }
      }
      if (p.min_p > 0.0f && keep > 1) {
        const double min_p = double(p.min_p);
        int m = 1;
        while (m < keep && weights[m] >= min_p) ++m;
        keep = m;
      }
      s_keep = keep;
    }
    __syncthreads();
    const int keep = s_keep;
    if (keep == 1) {
      if (tid == 0) out[r] = key_id(keys[0]);
      __syncthreads();
      continue;
    }

    // 5. Temperature on the survivors and the inverse-CDF draw with the host's u, in the sorted order.
    const double temp = double(p.temperature);
    for (int i = tid; i < keep; i += kSampleThreads)
      weights[i] = exp(__ddiv_rn(__dsub_rn(key_logit(keys[i]), max_logit), temp));
    __syncthreads();
    if (tid == 0) {
      double total = 0.0;
      for (int i = 0; i < keep; ++i) total = __dadd_rn(total, weights[i]);
      const double target = __dmul_rn(p.u, total);
      int32_t token = key_id(keys[keep - 1]);  // guards against rounding in the cumulative sum
      double cum = 0.0;
      for (int i = 0; i + 1 < keep; ++i) {
        cum = __dadd_rn(cum, weights[i]);
        if (target < cum) {
          token = key_id(keys[i]);
          break;
        }
      }
      out[r] = token;
    }
    __syncthreads();  // the next row reuses the shared memory
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

std::vector<SampleRowParams> pack_sample_rows(std::span<const RowSampling> rows, int64_t vocab,
                                              std::vector<int32_t>* penalized) {
  std::vector<SampleRowParams> out;
  out.reserve(rows.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    const RowSampling& s = rows[r];
    SampleRowParams q{};
    q.u = s.u;
    q.temperature = s.params.temperature;
    q.top_p = s.params.top_p;
    q.min_p = s.params.min_p;
    q.repeat_penalty = s.params.repeat_penalty;
    q.top_k = s.params.top_k;
    q.penalized_begin = int32_t(penalized->size());
    for (size_t j = 0; j < s.penalized.size(); ++j) {
      const int32_t id = s.penalized[j];
      TD_CHECK(id >= 0 && id < vocab, "sample_rows: row {}: penalized token {} (window position {}) is outside the "
               "vocabulary (size {})", r, id, j, vocab);
    }
    TD_CHECK(penalized->size() + s.penalized.size() <= size_t(INT32_MAX), "sample_rows: over 2^31 penalized ids");
    penalized->insert(penalized->end(), s.penalized.begin(), s.penalized.end());
    q.penalized_end = int32_t(penalized->size());
    out.push_back(q);
  }
  return out;
}

void sample_rows(const Tensor& logits, const Tensor& params, const Tensor& penalized, const Tensor& out,
                 cudaStream_t stream) {
  const char* op = "sample_rows";
  check_float_tensor(op, "logits", logits, Device::CUDA, 2);
  check_dtype(op, "logits", logits, DType::F32);
  const int64_t R = logits.shape[0], V = logits.shape[1];
  TD_CHECK(params.device == Device::CUDA && params.dtype == DType::U8 && params.is_contiguous() && params.ndim == 2 &&
               params.shape[0] == R && params.shape[1] == int64_t(sizeof(SampleRowParams)),
           "{}: params must be a contiguous CUDA u8 tensor [{}, {}] (SampleRowParams), got {}", op, R,
           sizeof(SampleRowParams), params.describe());
  check_index_tensor(op, "penalized", penalized, Device::CUDA, DType::I32, -1);
  check_index_tensor(op, "out", out, Device::CUDA, DType::I32, R);
  TD_CHECK(V > 0 && V <= INT32_MAX - kSampleThreads, "sample_rows: {} logits per row (1..2^31-1025)", V);
  if (R == 0) return;
  check_data(op, {&logits, &params, &penalized, &out});
  const size_t smem = sample_smem_bytes(V);
  // Above 48 KiB of dynamic shared memory (vocabularies over ~262k) a kernel must opt in, once per size.
  if (smem > 48 * 1024) {
    static std::mutex mu;
    static size_t opted = 0;
    std::lock_guard<std::mutex> lock(mu);
    if (smem > opted) {
      int device = 0, limit = 0;
      TD_CUDA_CHECK(cudaGetDevice(&device));
      TD_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
      TD_CHECK(smem <= size_t(limit), "sample_rows: a vocabulary of {} needs {} bytes of shared memory; this GPU "
               "gives a block {}", V, smem, limit);
      TD_CUDA_CHECK(cudaFuncSetAttribute(sample_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      opted = smem;
    }
  }
  const unsigned blocks = unsigned(R < kMaxBlocks ? R : kMaxBlocks);
  sample_rows_kernel<<<blocks, kSampleThreads, smem, stream>>>(
      logits.ptr<const float>(), reinterpret_cast<const SampleRowParams*>(params.data), penalized.ptr<const int32_t>(),
      penalized.numel(), out.ptr<int32_t>(), R, int(V));
  TD_CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::cuda
