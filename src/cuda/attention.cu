#include "cuda/attention.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "core/checks.h"
#include "cuda/check.h"
#include "cuda/device_math.cuh"
#include "cuda/dtype_dispatch.h"
#include "cuda/launch.h"

namespace tandem::cuda {
namespace {

constexpr int kMaxHeadDim = 256;  // one thread per output dimension, at most 256 threads a block
constexpr int kChunk = 64;        // keys scored per round of the online softmax
constexpr int kCopyThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // work items beyond this are covered by grid-stride loops

// The step's page tables and the pool geometry, as the kernels see them (device pointers, element strides).
struct Pages {
  const int32_t* indptr;   // [batch + 1]
  const int32_t* indices;  // [n_indices]
  const int32_t* token_batch;  // [T]
  int64_t batch, n_indices, num_pages, page_size;
  int64_t s_page, s_slot, s_head;  // head_dim is contiguous
};

// Where token t's entry starts in pg.indices, or -1 when the token names no slot of its entry's pages: batch index
// outside [0, batch), position < 0, a page range that is not inside page_indices, or pos / page_size beyond the
// entry's pages. Reads only in-bounds table elements.
__device__ __forceinline__ int64_t entry_first_page(const Pages& pg, int64_t t, int64_t pos) {
  const int64_t b = pg.token_batch[t];
  if (b < 0 || b >= pg.batch || pos < 0) return -1;
  const int64_t begin = pg.indptr[b], end = pg.indptr[b + 1];
  if (begin < 0 || begin > end || end > pg.n_indices) return -1;
  if (pos / pg.page_size >= end - begin) return -1;
  return begin;
}

// Element offset of position pos (head 0, dim 0) in a pool, or -1 when the page id is outside the pool. `first`
// from entry_first_page, pos within the entry's pages.
__device__ __forceinline__ int64_t slot_offset(const Pages& pg, int64_t first, int64_t pos) {
  const int64_t page = pg.indices[first + pos / pg.page_size];
  if (page < 0 || page >= pg.num_pages) return -1;
  return page * pg.s_page + (pos % pg.page_size) * pg.s_slot;
}

template <typename T>
__device__ __forceinline__ T quiet_nan() {
  return from_f32<T>(__int_as_float(0x7fc00000));
}

// One block per token (grid-stride): copies the token's k and v heads into its slot. A token that names no slot
// is skipped (attention and kv_gather write NaN for it).
template <typename T>
__global__ void kv_write_kernel(const T* __restrict__ qkv, const int32_t* __restrict__ positions, Pages pg,
                                T* __restrict__ k_pool, T* __restrict__ v_pool, int64_t n_tokens, int64_t qkv_dim,
                                int64_t q_dim, int head_dim, int n_kv_heads) {
  const int64_t kv_dim = int64_t(n_kv_heads) * head_dim;
  for (int64_t t = blockIdx.x; t < n_tokens; t += gridDim.x) {
    const int64_t pos = positions[t];
    const int64_t first = entry_first_page(pg, t, pos);
    if (first < 0) continue;
    const int64_t slot = slot_offset(pg, first, pos);
    if (slot < 0) continue;
    const T* k = qkv + t * qkv_dim + q_dim;
    const T* v = k + kv_dim;
    for (int64_t i = threadIdx.x; i < kv_dim; i += blockDim.x) {
      const int64_t h = i / head_dim, d = i - h * head_dim;
      const int64_t dst = slot + h * pg.s_head + d;
      k_pool[dst] = k[i];
      v_pool[dst] = v[i];
    }
  }
}

// One block per token (grid-stride), the fused path's QKV epilogue: bias, RoPE and the K/V append of one token in
// one pass over its qkv row. Rounding points are those of add_bias -> rope -> kv_write (each biased value rounded
// to the activation dtype before it is rotated; each rotated value rounded once), so the cache and the qkv row come
// out as the three standard kernels leave them. The row's cos/sin table is built once in shared memory.
template <typename T>
__global__ void qkv_rope_kv_write_kernel(T* qkv, const T* __restrict__ bias, const int32_t* __restrict__ positions,
                                         const float* __restrict__ inv_freq, Pages pg, T* __restrict__ k_pool,
                                         T* __restrict__ v_pool, int64_t n_tokens, int n_heads, int n_kv_heads,
                                         int head_dim) {
  extern __shared__ float cs[];  // [0, half): cos, [half, 2 half): sin
  const int half = head_dim / 2;
  float* c = cs;
  float* s = cs + half;
  const int64_t q_dim = int64_t(n_heads) * head_dim, kv_dim = int64_t(n_kv_heads) * head_dim;
  const int64_t qkv_dim = q_dim + 2 * kv_dim;
  const int64_t n_pairs = int64_t(n_heads + n_kv_heads) * half;
  pdl_launch_dependents();
  auto biased = [&](const T* row, int64_t i) {
    return bias ? to_f32(from_f32<T>(to_f32(row[i]) + to_f32(bias[i]))) : to_f32(row[i]);
  };
  for (int64_t t = blockIdx.x; t < n_tokens; t += gridDim.x) {
    // Positions, the page tables and inv_freq are written before the step's first kernel: the angles and the
    // slot are ready before the wait for qkv (launch.h).
    const int64_t pos = positions[t];
    const float fpos = float(positions[t]);
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
      const float angle = fpos * inv_freq[i];
      c[i] = cosf(angle);
      s[i] = sinf(angle);
    }
    const int64_t first = entry_first_page(pg, t, pos);
    const int64_t slot = first < 0 ? -1 : slot_offset(pg, first, pos);  // -1: no slot; the row is still roped
    __syncthreads();
    if (t == blockIdx.x) pdl_wait();  // qkv comes from the GEMM/GEMV before; the pools are read by kernels before
    T* row = qkv + t * qkv_dim;
    for (int64_t p = threadIdx.x; p < n_pairs; p += blockDim.x) {
      const int64_t head = p / half;
      const int i = int(p % half);
      const int64_t a = head * head_dim + i, b = a + half;
      const float x1 = biased(row, a), x2 = biased(row, b);
      // The rope kernel's explicit roundings (no FMA contraction): the same bits.
      const T r1 = from_f32<T>(__fsub_rn(__fmul_rn(x1, c[i]), __fmul_rn(x2, s[i])));
      const T r2 = from_f32<T>(__fadd_rn(__fmul_rn(x2, c[i]), __fmul_rn(x1, s[i])));
      row[a] = r1;
      row[b] = r2;
      if (head >= n_heads && slot >= 0) {
        const int64_t kvh = head - n_heads;
        const int64_t dst = slot + kvh * pg.s_head;
        k_pool[dst + i] = r1;
        k_pool[dst + i + half] = r2;
      }
    }
    for (int64_t i = threadIdx.x; i < kv_dim; i += blockDim.x) {
      const int64_t col = q_dim + kv_dim + i;
      const T v = from_f32<T>(biased(row, col));
      row[col] = v;
      if (slot >= 0) {
        const int64_t h = i / head_dim, d = i - h * head_dim;
        v_pool[slot + h * pg.s_head + d] = v;
      }
    }
    __syncthreads();  // the table is rebuilt for the next token
  }
}

// One block per token (grid-stride): out[t] = k heads | v heads of the token's slot, or a NaN row.
template <typename T>
__global__ void kv_gather_kernel(const int32_t* __restrict__ positions, Pages pg, const T* __restrict__ k_pool,
                                 const T* __restrict__ v_pool, T* __restrict__ out, int64_t n_tokens, int head_dim,
                                 int n_kv_heads) {
  const int64_t kv_dim = int64_t(n_kv_heads) * head_dim;
  for (int64_t t = blockIdx.x; t < n_tokens; t += gridDim.x) {
    const int64_t pos = positions[t];
    const int64_t first = entry_first_page(pg, t, pos);
    const int64_t slot = first < 0 ? -1 : slot_offset(pg, first, pos);
    T* o = out + t * 2 * kv_dim;
    if (slot < 0) {
      for (int64_t i = threadIdx.x; i < 2 * kv_dim; i += blockDim.x) o[i] = quiet_nan<T>();
      continue;
    }
    for (int64_t i = threadIdx.x; i < kv_dim; i += blockDim.x) {
      const int64_t h = i / head_dim, d = i - h * head_dim;
      const int64_t src = slot + h * pg.s_head + d;
      o[i] = k_pool[src];
      o[kv_dim + i] = v_pool[src];
    }
  }
}

// One block per (token, q head), grid-stride over the T * n_heads work items; blockDim.x >= max(head_dim, kChunk),
// a multiple of 32. Keys [lo, pos] are visited in chunks of kChunk: the chunk's slot offsets are looked up once
// (token_batch -> page_indptr -> page_indices), its scores computed by all warps (one warp per key, lanes split
// head_dim), the chunk max taken by a block reduction, and each thread d rescales and extends its running output
// acc[d] (online softmax). Shared memory is fixed: nothing is sized by the context length.
template <typename T>
__global__ void attention_kernel(const T* __restrict__ qkv, const int32_t* __restrict__ positions, Pages pg,
                                 const T* __restrict__ k_pool, const T* __restrict__ v_pool, T* __restrict__ out,
                                 int64_t n_tokens, int n_heads, int n_kv_heads, int head_dim, int window,
                                 float scale) {
  __shared__ float q_s[kMaxHeadDim];
  __shared__ float p_s[kChunk];      // scores, then softmax numerators, of the current chunk
  __shared__ int64_t off_s[kChunk];  // element offsets of the chunk's keys (kv head included) in the pools
  __shared__ float red[32];          // per-warp maxima

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  const int d = threadIdx.x;  // the output dimension this thread owns (if < head_dim)
  const int group = n_heads / n_kv_heads;
  const int64_t q_dim = int64_t(n_heads) * head_dim, kv_dim = int64_t(n_kv_heads) * head_dim;
  const int64_t qkv_dim = q_dim + 2 * kv_dim;
  const int64_t n_work = n_tokens * n_heads;

  for (int64_t w = blockIdx.x; w < n_work; w += gridDim.x) {
    const int64_t t = w / n_heads;
    const int h = int(w % n_heads);
    const int kvh = h / group;
    const int64_t pos = positions[t];
    T* o = out + t * q_dim + int64_t(h) * head_dim;
    // Every thread reads the same table entries, so the branch is uniform over the block and the barriers below
    // are reached by all threads or none.
    const int64_t first = entry_first_page(pg, t, pos);
    if (first < 0) {  // a bad position or batch index: a loud NaN row, no stray reads
      if (d < head_dim) o[d] = quiet_nan<T>();
      continue;
    }
    const int64_t lo = (window > 0 && pos - window + 1 > 0) ? pos - window + 1 : 0;
    const T* q = qkv + t * qkv_dim + int64_t(h) * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) q_s[i] = to_f32(q[i]);
    const int64_t head_off = int64_t(kvh) * pg.s_head;

    float m_run = -INFINITY;  // running max of the scores seen so far
    float l_run = 0.0f;       // running sum of exp(score - m_run)
    float acc = 0.0f;         // running sum of exp(score - m_run) * v[d]
    bool bad_page = false;
    for (int64_t c0 = lo; c0 <= pos; c0 += kChunk) {
      const int n = pos - c0 + 1 < kChunk ? int(pos - c0 + 1) : kChunk;
      // 0. Slot offsets of the chunk's keys. A page id outside the pool makes the whole row NaN (uniform: the
      //    barrier's OR is the same for every thread), and no key of the chunk is read.
      int local_bad = 0;
      for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const int64_t off = slot_offset(pg, first, c0 + j);
        local_bad |= off < 0;
        off_s[j] = off + head_off;
      }
      if (__syncthreads_or(local_bad)) {
        bad_page = true;
        break;
      }
      // 1. Scores of the chunk: warp `warp` takes keys j = warp, warp + n_warps, ...
      for (int j = warp; j < n; j += n_warps) {
        const T* k = k_pool + off_s[j];
        float partial = 0.0f;
        for (int i = lane; i < head_dim; i += 32) partial += q_s[i] * to_f32(k[i]);
        partial = warp_sum(partial);
        if (lane == 0) p_s[j] = partial * scale;
      }
      __syncthreads();
      // 2. Chunk max (block reduction), new running max. Every thread computes the same values.
      float m_local = -INFINITY;
      for (int j = threadIdx.x; j < n; j += blockDim.x) m_local = fmaxf(m_local, p_s[j]);
      m_local = warp_max(m_local);
      if (lane == 0) red[warp] = m_local;
      __syncthreads();
      float m_new = m_run;
      for (int i = 0; i < n_warps; ++i) m_new = fmaxf(m_new, red[i]);
      // 3. Numerators of the chunk, in place.
      for (int j = threadIdx.x; j < n; j += blockDim.x) p_s[j] = expf(p_s[j] - m_new);
      __syncthreads();
      // 4. Rescale the running sums (alpha = 0 on the first chunk, as m_run = -inf) and add the chunk.
      const float alpha = expf(m_run - m_new);
      l_run *= alpha;
      acc *= alpha;
      for (int j = 0; j < n; ++j) {
        const float p = p_s[j];
        l_run += p;
        if (d < head_dim) acc += p * to_f32(v_pool[off_s[j] + d]);
      }
      m_run = m_new;
      __syncthreads();  // p_s, off_s and red are rewritten by the next chunk
    }
    if (d < head_dim) o[d] = bad_page ? quiet_nan<T>() : from_f32<T>(acc / l_run);
  }
}

// ------------------------------------------------------------------------------------------- split-KV decode

// Keys per split at least (shorter splits cost more in merging than they save); TANDEM_DECODE_MIN_CHUNK overrides
// it (benchmarking).
int decode_min_chunk() {
  static const int v = [] {
    const char* e = std::getenv("TANDEM_DECODE_MIN_CHUNK");
    return e && *e ? std::max(1, std::atoi(e)) : 16;
  }();
  return v;
}
constexpr int kDecodeUnroll = 4;     // keys per key group whose k and v loads are in flight together
constexpr int kDecodeMaxSplits = 128;  // a multiple of 32 (the merge gives each lane kDecodeMaxSplits / 32)
constexpr int kDecodeTile = 256;       // keys whose page-table lookups the block makes together

constexpr int kDecodeMaxThreads = 512;  // a block's threads at most (the kernel's launch bounds)

// Warps per q head in a block (their states meet in shared memory, not in the workspace): 2, or 1 where two do
// not fit kDecodeMaxThreads. Measured on an H200 (batch 1, context 128/256, min chunk 16): 1, 2, 4 and 8 within
// 1% of each other (1B shape 903-916 tok/s, 8B 216-218), 2 at the top of both. TANDEM_DECODE_WARPS_PER_HEAD
// overrides it (benchmarking; clamped to what fits).
int decode_warps_per_head(const AttentionShape& s) {
  static const int forced = [] {
    const char* e = std::getenv("TANDEM_DECODE_WARPS_PER_HEAD");
    return e && *e ? std::max(1, std::atoi(e)) : 0;
  }();
  const int group = s.n_heads / s.n_kv_heads, fit = std::max(1, kDecodeMaxThreads / 32 / group);
  return std::min(fit, forced ? forced : 2);
}

// Splits per (token, kv head): enough blocks for eight per SM (short splits keep several rounds of loads from
// queuing behind each other in one warp), at most kDecodeMaxSplits. A function of T and the
// shape only, so the launch shape of a decode step is fixed by its size (CUDA graphs).
int decode_splits(int64_t T, const AttentionShape& s) {
  const int64_t W = decode_warps_per_head(s);
  static const int sms = [] {
    int dev = 0, n = 0;
    TD_CUDA_CHECK(cudaGetDevice(&dev));
    TD_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }();
  const int64_t items = T * s.n_kv_heads * W;
  return int(std::clamp<int64_t>((8 * sms + items - 1) / items, 1, kDecodeMaxSplits));
}

// Online-softmax state of one row over part of its keys: running max m, sum of exp(score - m) l, and this lane's
// VEC elements of the weighted sum. Merging two states is exact (both rescaled to the larger max).
template <int VEC>
struct SoftmaxState {
  float m = -INFINITY, l = 0.0f, acc[VEC] = {};
  __device__ __forceinline__ void merge(float m2, float l2, const float (&acc2)[VEC]) {
    const float mn = fmaxf(m, m2);
    const float a = m == mn ? 1.0f : expf(m - mn), b = m2 == mn ? 1.0f : expf(m2 - mn);  // no inf - inf
    l = l * a + l2 * b;
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[e] = acc[e] * a + acc2[e] * b;
    m = mn;
  }
};

// Grid (splits, n_kv_heads, T); block = W warps per q head of the kv head's group. The token's keys [lo, pos]
// are cut into `used` splits of at least W * min_chunk keys; the block of split c scores its keys for all the
// group's heads (W warps a head, taking turns of keys; the heads' warps read the same k/v lines, so DRAM sees
// them once); the W states of a head meet in shared memory, in warp order. In a warp, LPK
// lanes hold one key (16 bytes each) and the warp's 32 / LPK key groups take every (32 / LPK)-th key, each with
// its own online softmax; the groups merge by shuffles. With one split the block writes the output; otherwise
// each split stores its state in `partial` and the last split to finish (a counter per (token, kv head), reset by
// that block) merges the states in split order, so the result does not depend on which block came last.
template <typename T, int HD>
__global__ void __launch_bounds__(kDecodeMaxThreads) attention_decode_kernel(const T* qkv, const int32_t* __restrict__ positions, Pages pg,
                                        const T* k_pool, const T* v_pool,
                                        T* __restrict__ out, float* __restrict__ partial, int32_t* counters,
                                        int n_heads, int n_kv_heads, int window, float scale, int min_chunk) {
  constexpr int VEC = 16 / int(sizeof(T));
  constexpr int LPK = HD / VEC;  // lanes per key
  static_assert(HD % VEC == 0 && LPK <= 32 && 32 % LPK == 0, "head_dim must fill whole 16-byte lanes");
  constexpr int KPW = 32 / LPK;  // keys per warp per round
  constexpr int kStateFloats = HD + 2;
  const int lane = threadIdx.x & 31;
  const int kg = lane / LPK, sub = lane % LPK;
  const int splits = int(gridDim.x), c = int(blockIdx.x), kvh = int(blockIdx.y);
  const int64_t t = blockIdx.z;
  const int group = n_heads / n_kv_heads;
  const int W = int(blockDim.x >> 5) / group;                // warps per head
  const int warp = int(threadIdx.x >> 5) % group, part = int(threadIdx.x >> 5) / group;
  const int h = kvh * group + warp;
  const int64_t q_dim = int64_t(n_heads) * HD, qkv_dim = q_dim + 2 * int64_t(n_kv_heads) * HD;
  T* o = out + t * q_dim + int64_t(h) * HD;
  pdl_launch_dependents();

  // The step's positions and tables are written before its first kernel: read before pdl_wait (launch.h).
  const int64_t pos = positions[t];
  const int64_t first = entry_first_page(pg, t, pos);  // uniform over the grid's blocks of token t
  pdl_wait();  // q, the cache (this step's K/V) and the workspace: from the kernels before
  if (first < 0) {
    if (c == 0)
      for (int i = lane; i < HD; i += 32) o[i] = quiet_nan<T>();
    return;
  }
  const int64_t lo = (window > 0 && pos - window + 1 > 0) ? pos - window + 1 : 0;
  const int64_t len = pos - lo + 1;
  const int64_t chunk = max(int64_t(min_chunk) * W, (len + splits - 1) / splits);
  const int used = int((len + chunk - 1) / chunk);
  if (c >= used) return;
  const int64_t begin = lo + c * chunk, end = min(pos + 1, begin + chunk);

  float q[VEC];
  {
    T qv[VEC];
    *reinterpret_cast<uint4*>(qv) = *reinterpret_cast<const uint4*>(qkv + t * qkv_dim + int64_t(h) * HD + sub * VEC);
#pragma unroll
    for (int e = 0; e < VEC; ++e) q[e] = to_f32(qv[e]);
  }
  const int64_t head_off = int64_t(kvh) * pg.s_head + sub * VEC;
  __shared__ int64_t off_s[kDecodeTile];  // the tile's key offsets in the pools (-1: a page outside the pool)
  SoftmaxState<VEC> st;
  int bad = 0;
  for (int64_t t0 = begin; t0 < end; t0 += kDecodeTile) {
    const int n = int(min(int64_t(kDecodeTile), end - t0));
    __syncthreads();  // the previous tile's offsets are no longer read
    for (int j = threadIdx.x; j < n; j += blockDim.x) {  // one table lookup per key for the whole block
      const int64_t off = slot_offset(pg, first, t0 + j);
      off_s[j] = off;
      bad |= off < 0;
    }
    __syncthreads();
    // The head's W warps take turns of KPW * kDecodeUnroll keys.
    for (int j0 = part * KPW * kDecodeUnroll; j0 < n; j0 += KPW * kDecodeUnroll * W) {  // uniform over the warp
      T kv_k[kDecodeUnroll][VEC], kv_v[kDecodeUnroll][VEC];
      bool live[kDecodeUnroll];
#pragma unroll
      for (int u = 0; u < kDecodeUnroll; ++u) {
        const int j = j0 + u * KPW + kg;
        const int64_t off = j < n ? off_s[j] : -1;
        live[u] = off >= 0;
        if (live[u]) {
          // Plain loads, not __ldg: this step's K/V were written by the kernel before (launch_pdl, launch.h).
          *reinterpret_cast<uint4*>(kv_k[u]) = *reinterpret_cast<const uint4*>(k_pool + off + head_off);
          *reinterpret_cast<uint4*>(kv_v[u]) = *reinterpret_cast<const uint4*>(v_pool + off + head_off);
        }
      }
      // All the round's scores first (independent shuffles), then one rescale of the running state.
      float score[kDecodeUnroll];
      float mn = st.m;
#pragma unroll
      for (int u = 0; u < kDecodeUnroll; ++u) {
        float d = 0.0f;
        if (live[u])
#pragma unroll
          for (int e = 0; e < VEC; ++e) d = fmaf(q[e], to_f32(kv_k[u][e]), d);
#pragma unroll
        for (int off = LPK / 2; off > 0; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);  // the key group
        score[u] = d * scale;
        if (live[u]) mn = fmaxf(mn, score[u]);
      }
      const float a = st.m == mn ? 1.0f : expf(st.m - mn);
      st.l *= a;
#pragma unroll
      for (int e = 0; e < VEC; ++e) st.acc[e] *= a;
#pragma unroll
      for (int u = 0; u < kDecodeUnroll; ++u) {
        if (!live[u]) continue;
        const float pexp = expf(score[u] - mn);
        st.l += pexp;
#pragma unroll
        for (int e = 0; e < VEC; ++e) st.acc[e] = fmaf(pexp, to_f32(kv_v[u][e]), st.acc[e]);
      }
      st.m = mn;
    }
  }
  // Key groups of the warp -> one state, held by the lanes of group 0 (lanes 0 .. LPK - 1).
#pragma unroll
  for (int off = LPK; off < 32; off <<= 1) {
    float acc2[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc2[e] = __shfl_xor_sync(0xffffffffu, st.acc[e], off);
    const float m2 = __shfl_xor_sync(0xffffffffu, st.m, off), l2 = __shfl_xor_sync(0xffffffffu, st.l, off);
    st.merge(m2, l2, acc2);
  }
  // The head's W warps -> one state in part 0's lanes 0 .. LPK - 1, merged in part order through shared memory.
  extern __shared__ float parts_s[];  // [part 1 .. W - 1][group][HD + 2] (dynamic: W > 1 only)
  if (W > 1) {
    float* mine = parts_s + (int64_t(part - 1) * group + warp) * (HD + 2);
    if (part > 0 && kg == 0) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) mine[2 + sub * VEC + e] = st.acc[e];
      if (lane == 0) mine[0] = st.m, mine[1] = st.l;
    }
    __syncthreads();
    if (part == 0 && kg == 0)
      for (int p = 1; p < W; ++p) {
        const float* other = parts_s + (int64_t(p - 1) * group + warp) * (HD + 2);
        float acc2[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc2[e] = other[2 + sub * VEC + e];
        st.merge(other[0], other[1], acc2);
      }
  }
  if (__syncthreads_or(bad)) st.l = __int_as_float(0x7fc00000);  // a page id outside the pool: the row comes out NaN
  const bool lead = part == 0;  // from here on one warp per head (the others meet the block's barriers only)
  if (used == 1) {
    if (lead && kg == 0)
#pragma unroll
      for (int e = 0; e < VEC; ++e) o[sub * VEC + e] = from_f32<T>(st.acc[e] / st.l);
    return;
  }
  float* mine = partial + ((t * n_heads + h) * splits + c) * kStateFloats;
  if (lead && kg == 0)
#pragma unroll
    for (int e = 0; e < VEC; ++e) mine[2 + sub * VEC + e] = st.acc[e];
  if (lead && lane == 0) mine[0] = st.m, mine[1] = st.l;
  __threadfence();  // the state is visible device-wide before the counter says so
  __syncthreads();
  __shared__ bool last;
  if (threadIdx.x == 0) {
    int32_t* counter = counters + t * n_kv_heads + kvh;
    last = atomicAdd(counter, 1) == used - 1;
    if (last) *counter = 0;  // ready for the next launch (stream order)
  }
  __syncthreads();
  if (!last || !lead) return;
  __threadfence();
  // Merge the used splits' states for this warp's head, in split order: lane i holds the max and weight of splits
  // i, i + 32, ... (used <= kDecodeMaxSplits); each lane then sums HD / 32 output elements over the splits.
  const float* states = partial + (t * n_heads + h) * splits * kStateFloats;
  constexpr int kPerLane = kDecodeMaxSplits / 32;
  float ms[kPerLane], m = -INFINITY;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int sp = lane + 32 * i;
    ms[i] = sp < used ? __ldcg(states + sp * kStateFloats) : -INFINITY;
    m = fmaxf(m, ms[i]);
  }
  m = warp_max(m);
  float ws[kPerLane], l = 0.0f;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int sp = lane + 32 * i;
    ws[i] = sp < used ? (ms[i] == m ? 1.0f : expf(ms[i] - m)) : 0.0f;
    if (sp < used) l += __ldcg(states + sp * kStateFloats + 1) * ws[i];
  }
  l = warp_sum(l);  // (a fixed reduction tree: the same order every launch)
  constexpr int PER = HD / 32;
  float acc[PER] = {};
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    if (32 * i >= used) break;
#pragma unroll 4
    for (int j = 0; j < 32; ++j) {
      const int sp = 32 * i + j;
      if (sp >= used) break;
      const float w = __shfl_sync(0xffffffffu, ws[i], j);
      const float* st_acc = states + sp * kStateFloats + 2;
#pragma unroll
      for (int e = 0; e < PER; ++e) acc[e] = fmaf(__ldcg(st_acc + lane + 32 * e), w, acc[e]);
    }
  }
#pragma unroll
  for (int j = 0; j < PER; ++j) o[lane + 32 * j] = from_f32<T>(acc[j] / l);
}

// ---------------------------------------------------------------------------------------------------- validation

void check_shape_args(const char* op, const AttentionShape& s) {
  TD_CHECK(s.n_heads > 0 && s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0 && s.head_dim > 0 &&
               s.head_dim <= kMaxHeadDim && s.sliding_window >= 0,
           "{}: bad attention shape: {} q heads, {} kv heads (must divide), head_dim {} (1..{}), sliding window {}",
           op, s.n_heads, s.n_kv_heads, s.head_dim, kMaxHeadDim, s.sliding_window);
}

// Validates the pools and the page tables against the shape and a step of T tokens; returns the kernels' view.
Pages check_paged(const char* op, const PagedKv& kv, const AttentionShape& s, int64_t T) {
  TD_CHECK(kv.layout == KvLayout::NHD || kv.layout == KvLayout::HND, "{}: unknown kv layout {}", op,
           int(kv.layout));
  TD_CHECK(kv.page_size > 0, "{}: kv.page_size must be positive, got {} (kv.k {})", op, kv.page_size,
           kv.k.describe());
  check_float_tensor(op, "kv.k", kv.k, Device::CUDA, 4);
  const int64_t ps = kv.page_size, heads = s.n_kv_heads, hd = s.head_dim;
  if (kv.layout == KvLayout::NHD)
    check_shape(op, "kv.k (NHD pool: [pages, page_size, n_kv_heads, head_dim])", kv.k, {-1, ps, heads, hd});
  else
    check_shape(op, "kv.k (HND pool: [pages, n_kv_heads, page_size, head_dim])", kv.k, {-1, heads, ps, hd});
  check_float_tensor(op, "kv.v", kv.v, Device::CUDA, 4);
  check_dtype(op, "kv.v", kv.v, kv.k.dtype);
  TD_CHECK(kv.v.shape == kv.k.shape && kv.v.strides == kv.k.strides,
           "{}: kv.v must have the shape and strides of kv.k {}, got {}", op, kv.k.describe(), kv.v.describe());

  check_index_tensor(op, "kv.page_indptr", kv.page_indptr, Device::CUDA, DType::I32, -1);
  TD_CHECK(kv.page_indptr.numel() >= 1, "{}: kv.page_indptr must hold B + 1 >= 1 entries, got {}", op,
           kv.page_indptr.describe());
  const int64_t B = kv.batch();
  check_index_tensor(op, "kv.page_indices", kv.page_indices, Device::CUDA, DType::I32, -1);
  check_index_tensor(op, "kv.last_page_len", kv.last_page_len, Device::CUDA, DType::I32, B);
  check_index_tensor(op, "kv.token_batch", kv.token_batch, Device::CUDA, DType::I32, T);
  check_data(op, {&kv.k, &kv.v, &kv.page_indptr, &kv.page_indices, &kv.last_page_len, &kv.token_batch});

  const KvStrides st = kv_strides(kv.k, kv.layout);
  Pages pg{};
  pg.indptr = kv.page_indptr.ptr<const int32_t>();
  pg.indices = kv.page_indices.ptr<const int32_t>();
  pg.token_batch = kv.token_batch.ptr<const int32_t>();
  pg.batch = B;
  pg.n_indices = kv.page_indices.numel();
  pg.num_pages = kv.k.shape[0];
  pg.page_size = ps;
  pg.s_page = st.page;
  pg.s_slot = st.slot;
  pg.s_head = st.head;
  return pg;
}

// qkv [T, qkv_dim] of a float dtype, the cache of the same dtype, positions i32 [T]; returns T.
int64_t check_qkv(const char* op, const Tensor& qkv, const Tensor& positions, const PagedKv& kv,
                  const AttentionShape& s) {
  check_float_tensor(op, "qkv", qkv, Device::CUDA, 2);
  const int64_t kv_dim = int64_t(s.n_kv_heads) * s.head_dim;
  const int64_t qkv_dim = int64_t(s.n_heads) * s.head_dim + 2 * kv_dim;
  check_shape(op, "qkv (q | k | v heads)", qkv, {-1, qkv_dim});
  const int64_t T = qkv.shape[0];
  check_index_tensor(op, "positions", positions, Device::CUDA, DType::I32, T);
  check_data(op, {&qkv, &positions});
  check_float_tensor(op, "kv.k", kv.k, Device::CUDA, 4);
  check_dtype(op, "kv.k (the cache holds the activation dtype)", kv.k, qkv.dtype);
  return T;
}

bool overlaps(const Tensor& a, const Tensor& b) {
  const char *a0 = static_cast<const char*>(a.data), *b0 = static_cast<const char*>(b.data);
  return a.numel() > 0 && b.numel() > 0 && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

// attention() and attention_decode(): the shape, qkv, positions and paged-cache checks, then out [T, q_dim] in
// qkv's dtype, not aliasing qkv. Returns the token count and the page tables.
std::pair<int64_t, Pages> check_attention_args(const char* op, const Tensor& qkv, const Tensor& positions,
                                               const PagedKv& kv, const AttentionShape& shape, const Tensor& out) {
  check_shape_args(op, shape);
  const int64_t T = check_qkv(op, qkv, positions, kv, shape);
  const Pages pg = check_paged(op, kv, shape, T);
  const int64_t q_dim = int64_t(shape.n_heads) * shape.head_dim;
  check_float_tensor(op, "out", out, Device::CUDA, 2);
  check_shape(op, "out", out, {T, q_dim});
  check_dtype(op, "out", out, qkv.dtype);
  check_data(op, {&out});
  TD_CHECK(!overlaps(out, qkv), "{}: out {} must not alias qkv {}", op, out.describe(), qkv.describe());
  return {T, pg};
}

}  // namespace

void kv_write(const Tensor& qkv, const Tensor& positions, const PagedKv& kv, const AttentionShape& shape,
              cudaStream_t stream) {
  const char* op = "kv_write";
  check_shape_args(op, shape);
  const int64_t T = check_qkv(op, qkv, positions, kv, shape);
  const Pages pg = check_paged(op, kv, shape, T);
  if (T == 0) return;
  const int64_t kv_dim = int64_t(shape.n_kv_heads) * shape.head_dim;
  const int64_t q_dim = int64_t(shape.n_heads) * shape.head_dim;
  const unsigned blocks = unsigned(std::min(T, kMaxBlocks));
  dispatch_float(qkv.dtype, op, [&](auto tag) {
    using D = typename decltype(tag)::type;
    kv_write_kernel<D><<<blocks, kCopyThreads, 0, stream>>>(qkv.ptr<const D>(), positions.ptr<const int32_t>(), pg,
                                                             kv.k.ptr<D>(), kv.v.ptr<D>(), T, q_dim + 2 * kv_dim,
                                                             q_dim, shape.head_dim, shape.n_kv_heads);
    TD_CUDA_CHECK_LAUNCH();
  });
}

void qkv_rope_kv_write(const Tensor& qkv, const Tensor& bias, const Tensor& positions, const Tensor& inv_freq,
                       const PagedKv& kv, const AttentionShape& shape, cudaStream_t stream) {
  const char* op = "qkv_rope_kv_write";
  check_shape_args(op, shape);
  TD_CHECK(shape.head_dim % 2 == 0, "{}: head_dim {} must be even (rotate-half RoPE)", op, shape.head_dim);
  const int64_t T = check_qkv(op, qkv, positions, kv, shape);
  const Pages pg = check_paged(op, kv, shape, T);
  const int64_t qkv_dim = qkv.shape[1];
  if (bias.data) {
    check_float_tensor(op, "bias", bias, Device::CUDA, 1);
    check_dtype(op, "bias (qkv's dtype)", bias, qkv.dtype);
    check_shape(op, "bias", bias, {qkv_dim});
    check_data(op, {&bias});
  }
  check_index_tensor(op, "inv_freq", inv_freq, Device::CUDA, DType::F32, shape.head_dim / 2);
  check_data(op, {&inv_freq});
  if (T == 0) return;
  const unsigned blocks = unsigned(std::min(T, kMaxBlocks));
  const size_t shared_bytes = size_t(shape.head_dim) * sizeof(float);
  dispatch_float(qkv.dtype, op, [&](auto tag) {
    using D = typename decltype(tag)::type;
    launch_pdl(qkv_rope_kv_write_kernel<D>, blocks, kCopyThreads, shared_bytes, stream, qkv.ptr<D>(),
               bias.data ? bias.ptr<const D>() : nullptr, positions.ptr<const int32_t>(),
               inv_freq.ptr<const float>(), pg, kv.k.ptr<D>(), kv.v.ptr<D>(), T, shape.n_heads, shape.n_kv_heads,
               shape.head_dim);
  });
}

void attention(const Tensor& qkv, const Tensor& positions, const PagedKv& kv, const AttentionShape& shape,
               const Tensor& out, cudaStream_t stream) {
  const char* op = "attention";
  const auto [T, pg] = check_attention_args(op, qkv, positions, kv, shape, out);
  if (T == 0) return;
  // One thread per output dimension, at least two warps (and at least kChunk threads, so that a chunk's slot
  // offsets are looked up in one pass) so that scoring a chunk is spread over warps.
  const int threads = (std::max(shape.head_dim, kChunk) + 31) / 32 * 32;
  const unsigned blocks = unsigned(std::min(T * shape.n_heads, kMaxBlocks));
  const float scale = 1.0f / std::sqrt(float(shape.head_dim));  // as the CPU reference
  dispatch_float(qkv.dtype, op, [&](auto tag) {
    using D = typename decltype(tag)::type;
    attention_kernel<D><<<blocks, threads, 0, stream>>>(qkv.ptr<const D>(), positions.ptr<const int32_t>(), pg,
                                                         kv.k.ptr<const D>(), kv.v.ptr<const D>(), out.ptr<D>(), T,
                                                         shape.n_heads, shape.n_kv_heads, shape.head_dim,
                                                         shape.sliding_window, scale);
    TD_CUDA_CHECK_LAUNCH();
  });
}

bool attention_decode_supports(const AttentionShape& shape, DType dtype, std::string* why) {
  auto no = [&](std::string w) {
    if (why) *why = "attention_decode: " + std::move(w);
    return false;
  };
  if (dtype != DType::F32 && dtype != DType::F16 && dtype != DType::BF16)
    return no("dtype " + std::string(dtype_name(dtype)) + " (instantiated: f32, f16, bf16)");
  if (shape.head_dim != 64 && shape.head_dim != 128)
    return no("head_dim " + std::to_string(shape.head_dim) + " (instantiated: 64, 128)");
  if (shape.n_kv_heads <= 0 || shape.n_heads % shape.n_kv_heads != 0 ||
      shape.n_heads / shape.n_kv_heads > kDecodeMaxThreads / 32)
    return no(std::to_string(shape.n_heads) + " q heads over " + std::to_string(shape.n_kv_heads) +
              " kv heads (group size 1.." + std::to_string(kDecodeMaxThreads / 32) + ")");
  return true;
}

int64_t attention_decode_workspace(int64_t T, const AttentionShape& shape) {
  const int splits = decode_splits(T, shape);
  if (splits == 1) return 0;
  return T * shape.n_kv_heads + T * shape.n_heads * splits * (int64_t(shape.head_dim) + 2);
}

void attention_decode(const Tensor& qkv, const Tensor& positions, const PagedKv& kv, const AttentionShape& shape,
                      const Tensor& out, const Tensor& workspace, cudaStream_t stream) {
  const char* op = "attention_decode";
  std::string why;
  TD_CHECK(attention_decode_supports(shape, qkv.dtype, &why), "{}", why);
  const auto [T, pg] = check_attention_args(op, qkv, positions, kv, shape, out);
  TD_CHECK(T <= 65535, "{}: {} tokens (at most 65535 a launch)", op, T);
  if (T == 0) return;
  const auto aligned = [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data) % 16 == 0; };
  TD_CHECK(aligned(qkv) && aligned(kv.k) && aligned(kv.v), "{}: qkv {} and the pools {} must be 16-byte aligned", op,
           qkv.describe(), kv.k.describe());
  const int splits = decode_splits(T, shape);
  const int64_t need = attention_decode_workspace(T, shape);
  float* partial = nullptr;
  int32_t* counters = nullptr;
  if (need > 0) {
    check_float_tensor(op, "workspace", workspace, Device::CUDA, 1);
    check_dtype(op, "workspace", workspace, DType::F32);
    TD_CHECK(workspace.numel() >= need, "{}: workspace {} holds {} floats; {} tokens need {}", op,
             workspace.describe(), workspace.numel(), T, need);
    check_data(op, {&workspace});
    counters = workspace.ptr<int32_t>();
    partial = workspace.ptr<float>() + T * shape.n_kv_heads;
  }
  const dim3 grid(unsigned(splits), unsigned(shape.n_kv_heads), unsigned(T));
  const int group = shape.n_heads / shape.n_kv_heads, W = decode_warps_per_head(shape);
  const unsigned threads = unsigned(32 * group * W);
  const size_t smem = size_t(W - 1) * group * (shape.head_dim + 2) * sizeof(float);
  const float scale = 1.0f / std::sqrt(float(shape.head_dim));
  dispatch_float(qkv.dtype, op, [&](auto tag) {
    using D = typename decltype(tag)::type;
    auto launch = [&](auto kernel) {
      launch_pdl(kernel, grid, threads, smem, stream, qkv.ptr<const D>(), positions.ptr<const int32_t>(), pg,
                 kv.k.ptr<const D>(), kv.v.ptr<const D>(), out.ptr<D>(), partial, counters, shape.n_heads,
                 shape.n_kv_heads, shape.sliding_window, scale, decode_min_chunk());
    };
    if (shape.head_dim == 64) launch(attention_decode_kernel<D, 64>);
    else launch(attention_decode_kernel<D, 128>);
  });
}

void kv_gather(const Tensor& positions, const PagedKv& kv, const AttentionShape& shape, const Tensor& out,
               cudaStream_t stream) {
  const char* op = "kv_gather";
  check_shape_args(op, shape);
  check_index_tensor(op, "positions", positions, Device::CUDA, DType::I32, -1);
  const int64_t T = positions.numel();
  const Pages pg = check_paged(op, kv, shape, T);
  const int64_t kv_dim = int64_t(shape.n_kv_heads) * shape.head_dim;
  check_float_tensor(op, "out", out, Device::CUDA, 2);
  check_shape(op, "out (k | v heads)", out, {T, 2 * kv_dim});
  check_dtype(op, "out (the cache's dtype)", out, kv.k.dtype);
  check_data(op, {&positions, &out});
  if (T == 0) return;
  const unsigned blocks = unsigned(std::min(T, kMaxBlocks));
  dispatch_float(out.dtype, op, [&](auto tag) {
    using D = typename decltype(tag)::type;
    kv_gather_kernel<D><<<blocks, kCopyThreads, 0, stream>>>(positions.ptr<const int32_t>(), pg,
                                                              kv.k.ptr<const D>(), kv.v.ptr<const D>(), out.ptr<D>(),
                                                              T, shape.head_dim, shape.n_kv_heads);
    TD_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace tandem::cuda
