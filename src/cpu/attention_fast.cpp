#include "cpu/attention_fast.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/parallel.h"
#include "cpu/ops.h"
#include "cpu/quant_dot.h"

namespace tandem::cpu {
namespace {

// A chunk's result for one kv-head group of G query heads: m[G], l[G], then acc[G][D] (unnormalized).
inline int64_t partial_floats(int G, int64_t D) { return int64_t(G) * (D + 2); }

constexpr int64_t kC = kAttentionChunk;
static_assert(kC == 32, "the AVX2 score tile holds 32 keys in 4 registers");

// The arithmetic of one (query vector, chunk) pair, the same whichever schedule runs it:
//   score_j = (sum_d q[d] * k_j[d], one fused multiply-add per d in order from 0) * scale;
//   m = max_j score_j; p_j = exp(score_j - m) (exp_ps: the same polynomial in every lane); l = the sum of the
//   32 p_j (p_j = 0 past n) in a fixed tree; acc[d] = sum_j p_j * v_j[d], fused multiply-adds in j order from 0.
// The keys are transposed first (kt[d * 32 + j] = k_j[d], zero past n), so that a score tile is a small GEMM:
// a key column serves every query vector of the rows that share the chunk.

// Rows are D floats at scattered slots (one kv head of an NHD page row): fetch a few rows ahead of use.
constexpr int64_t kAhead = 4;
inline void prefetch_row(const float* row, int64_t D) {
  for (int64_t d = 0; d < D; d += 16) _mm_prefetch(reinterpret_cast<const char*>(row + d), _MM_HINT_T0);
}

void transpose_keys_portable(const float* kbase, const int64_t* offs, int64_t n, int64_t D, float* kt) {
  std::fill(kt, kt + D * kC, 0.0f);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; ++d) kt[d * kC + j] = kbase[offs[j] + d];
}

// 8 keys x 8 dims at a time (unpack/shuffle/permute), the dims past the last multiple of 8 one by one.
__attribute__((target("avx2,fma"))) void transpose_keys_avx2(const float* kbase, const int64_t* offs, int64_t n,
                                                             int64_t D, float* kt) {
  const int64_t D8 = D / 8 * 8;
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t j0 = 0; j0 < kC; j0 += 8) {
    const float* r[8];
    for (int i = 0; i < 8; ++i) r[i] = j0 + i < n ? kbase + offs[j0 + i] : nullptr;
    if (j0 + 8 + 8 <= n)
      for (int i = 0; i < 8; ++i) prefetch_row(kbase + offs[j0 + 8 + i], D);
    for (int64_t d = 0; d < D8; d += 8) {
      __m256 a[8];
      for (int i = 0; i < 8; ++i) a[i] = r[i] ? _mm256_loadu_ps(r[i] + d) : zero;
      const __m256 t0 = _mm256_unpacklo_ps(a[0], a[1]), t1 = _mm256_unpackhi_ps(a[0], a[1]);
      const __m256 t2 = _mm256_unpacklo_ps(a[2], a[3]), t3 = _mm256_unpackhi_ps(a[2], a[3]);
      const __m256 t4 = _mm256_unpacklo_ps(a[4], a[5]), t5 = _mm256_unpackhi_ps(a[4], a[5]);
      const __m256 t6 = _mm256_unpacklo_ps(a[6], a[7]), t7 = _mm256_unpackhi_ps(a[6], a[7]);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      float* o = kt + d * kC + j0;
      _mm256_storeu_ps(o + 0 * kC, _mm256_permute2f128_ps(u0, u4, 0x20));
      _mm256_storeu_ps(o + 1 * kC, _mm256_permute2f128_ps(u1, u5, 0x20));
      _mm256_storeu_ps(o + 2 * kC, _mm256_permute2f128_ps(u2, u6, 0x20));
      _mm256_storeu_ps(o + 3 * kC, _mm256_permute2f128_ps(u3, u7, 0x20));
      _mm256_storeu_ps(o + 4 * kC, _mm256_permute2f128_ps(u0, u4, 0x31));
      _mm256_storeu_ps(o + 5 * kC, _mm256_permute2f128_ps(u1, u5, 0x31));
      _mm256_storeu_ps(o + 6 * kC, _mm256_permute2f128_ps(u2, u6, 0x31));
      _mm256_storeu_ps(o + 7 * kC, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
    for (int64_t d = D8; d < D; ++d)
      for (int i = 0; i < 8; ++i) kt[d * kC + j0 + i] = r[i] ? r[i][d] : 0.0f;
  }
}

// s[i * 32 + j] = score of query vector qs[i] and key j, for all 32 columns (those past n score the zero key).
void scores_portable(const float* const* qs, int nq, int64_t D, const float* kt, float scale, float* s) {
  for (int i = 0; i < nq; ++i) {
    float acc[kC] = {};
    for (int64_t d = 0; d < D; ++d)
      for (int64_t j = 0; j < kC; ++j) acc[j] = std::fma(qs[i][d], kt[d * kC + j], acc[j]);
    for (int64_t j = 0; j < kC; ++j) s[i * kC + j] = acc[j] * scale;
  }
}

// Three query vectors x 32 keys in 12 accumulators; per dim 3 broadcasts, 4 key loads, 12 FMAs.
__attribute__((target("avx2,fma"))) void scores_avx2(const float* const* qs, int nq, int64_t D, const float* kt,
                                                     float scale, float* s) {
  const __m256 sc = _mm256_set1_ps(scale);
  for (int i0 = 0; i0 < nq; i0 += 3) {
    const int ni = std::min(3, nq - i0);
    const float* q0 = qs[i0];
    const float* q1 = qs[i0 + (ni > 1 ? 1 : 0)];
    const float* q2 = qs[i0 + (ni > 2 ? 2 : 0)];
    __m256 a[3][4];
    for (auto& row : a)
      for (auto& x : row) x = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      const float* k = kt + d * kC;
      const __m256 kc[4] = {_mm256_loadu_ps(k), _mm256_loadu_ps(k + 8), _mm256_loadu_ps(k + 16),
                            _mm256_loadu_ps(k + 24)};
      const __m256 b[3] = {_mm256_broadcast_ss(q0 + d), _mm256_broadcast_ss(q1 + d), _mm256_broadcast_ss(q2 + d)};
      for (int i = 0; i < 3; ++i)
        for (int c = 0; c < 4; ++c) a[i][c] = _mm256_fmadd_ps(b[i], kc[c], a[i][c]);
    }
    for (int i = 0; i < ni; ++i)
      for (int c = 0; c < 4; ++c) _mm256_storeu_ps(s + (i0 + i) * kC + 8 * c, _mm256_mul_ps(a[i][c], sc));
  }
}

// exp in 8 lanes (Cephes' expf: range reduction by ln 2 in two parts, a degree-5 polynomial, the exponent added):
// relative error about 1e-7; exp(0) = 1 exactly; below -87.3 it is 0 and NaN stays NaN.
__attribute__((target("avx2,fma"))) inline __m256 exp_ps(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);  // false for NaN
  x = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x);  // (operand order: a NaN x passes through)
  x = _mm256_max_ps(lo, x);
  __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(under, y);
}

// One query vector's chunk scores (32, those past n ignored): m, p_j = exp(s_j - m) written over s (0 past n), l.
// The max is exact in any order (a NaN score makes its p NaN whatever m is), so it is taken over lanes.
__attribute__((target("avx2,fma"))) void softmax_avx2(float* s, int64_t n, float* m, float* l) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256 in[4], valid[4];
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  for (int c = 0; c < 4; ++c) {
    valid[c] = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(int(n - 8 * c)), lane));
    in[c] = _mm256_loadu_ps(s + 8 * c);
    vmax = _mm256_max_ps(vmax, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), in[c], valid[c]));
  }
  __m128 h4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
  h4 = _mm_max_ps(h4, _mm_movehl_ps(h4, h4));
  h4 = _mm_max_ss(h4, _mm_movehdup_ps(h4));
  const float mx = _mm_cvtss_f32(h4);
  const __m256 vm = _mm256_set1_ps(mx);
  __m256 p[4];
  for (int c = 0; c < 4; ++c) {
    p[c] = _mm256_and_ps(exp_ps(_mm256_sub_ps(in[c], vm)), valid[c]);
    _mm256_storeu_ps(s + 8 * c, p[c]);
  }
  const __m256 t = _mm256_add_ps(_mm256_add_ps(p[0], p[1]), _mm256_add_ps(p[2], p[3]));
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  *m = mx;
  *l = _mm_cvtss_f32(h);
}

void softmax_portable(float* s, int64_t n, float* m, float* l) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, s[j]);
  float sum = 0;
  for (int64_t j = 0; j < kC; ++j) sum += (s[j] = j < n ? std::exp(s[j] - mx) : 0.0f);
  *m = mx;
  *l = sum;
}

// acc_i += p_i[j] * v_j over the n value rows, i < nq (p_i = p + i * 32).
void values_portable(const float* p, int nq, int64_t D, const float* vbase, const int64_t* offs, int64_t n,
                     float* const* acc) {
  for (int64_t j = 0; j < n; ++j) {
    const float* v = vbase + offs[j];
    for (int i = 0; i < nq; ++i) {
      const float w = p[i * kC + j];
      float* a = acc[i];
      for (int64_t d = 0; d < D; ++d) a[d] = std::fma(w, v[d], a[d]);
    }
  }
}

// The same sums per element as values_portable: 32 columns of up to 3 query vectors in 12 registers, then the
// next columns / vectors; columns past the last multiple of 32 8 at a time, then one by one.
__attribute__((target("avx2,fma"))) void values_avx2(const float* p, int nq, int64_t D, const float* vbase,
                                                     const int64_t* offs, int64_t n, float* const* acc) {
  int64_t d0 = 0;
  for (; d0 + 32 <= D; d0 += 32)
    for (int i0 = 0; i0 < nq; i0 += 3) {
      const int ni = std::min(3, nq - i0);
      __m256 a[3][4];
      for (int i = 0; i < ni; ++i)
        for (int k = 0; k < 4; ++k) a[i][k] = _mm256_loadu_ps(acc[i0 + i] + d0 + 8 * k);
      for (int64_t j = 0; j < n; ++j) {
        const float* v = vbase + offs[j] + d0;
        if (d0 == 0 && i0 == 0 && j + kAhead < n) prefetch_row(vbase + offs[j + kAhead], D);
        const __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8), v2 = _mm256_loadu_ps(v + 16),
                     v3 = _mm256_loadu_ps(v + 24);
        for (int i = 0; i < ni; ++i) {
          const __m256 w = _mm256_broadcast_ss(p + (i0 + i) * kC + j);
          a[i][0] = _mm256_fmadd_ps(w, v0, a[i][0]);
          a[i][1] = _mm256_fmadd_ps(w, v1, a[i][1]);
          a[i][2] = _mm256_fmadd_ps(w, v2, a[i][2]);
          a[i][3] = _mm256_fmadd_ps(w, v3, a[i][3]);
        }
      }
      for (int i = 0; i < ni; ++i)
        for (int k = 0; k < 4; ++k) _mm256_storeu_ps(acc[i0 + i] + d0 + 8 * k, a[i][k]);
    }
  if (d0 == D) return;
  for (int64_t j = 0; j < n; ++j) {
    const float* v = vbase + offs[j];
    for (int i = 0; i < nq; ++i) {
      const float pw = p[i * kC + j];
      const __m256 w = _mm256_set1_ps(pw);
      float* a = acc[i];
      int64_t d = d0;
      for (; d + 8 <= D; d += 8) _mm256_storeu_ps(a + d, _mm256_fmadd_ps(w, _mm256_loadu_ps(v + d), _mm256_loadu_ps(a + d)));
      for (; d < D; ++d) a[d] = std::fma(pw, v[d], a[d]);
    }
  }
}

// The kernels of one ISA.
struct Kernels {
  void (*transpose)(const float*, const int64_t*, int64_t, int64_t, float*);
  void (*scores)(const float* const*, int, int64_t, const float*, float, float*);
  void (*softmax)(float*, int64_t, float*, float*);
  void (*values)(const float*, int, int64_t, const float*, const int64_t*, int64_t, float* const*);
};
Kernels kernels(bool simd) {
  if (simd) return {transpose_keys_avx2, scores_avx2, softmax_avx2, values_avx2};
  return {transpose_keys_portable, scores_portable, softmax_portable, values_portable};
}

// A row's partial of one chunk from its G score rows (s, 32 floats each, overwritten by p): part = {m[G], l[G],
// acc[G][D]}; n value rows at offsets `offs` into vbase. accs: G pointers of scratch.
void partial_from_scores(const Kernels& kn, float* s, int G, int64_t D, const float* vbase, const int64_t* offs,
                         int64_t n, std::vector<float*>& accs, float* part) {
  accs.resize(size_t(G));
  for (int g = 0; g < G; ++g) {
    kn.softmax(s + g * kC, n, part + g, part + G + g);
    accs[size_t(g)] = part + 2 * G + g * D;
  }
  std::fill(part + 2 * G, part + 2 * G + G * D, 0.0f);
  kn.values(s, G, D, vbase, offs, n, accs.data());
}

// The partial of one chunk of n keys for the G query vectors at q (one kv-head group of one row): the keys
// transposed into kt (D * 32 floats), scored into s (G * 32 floats), then partial_from_scores.
void chunk_partial(const Kernels& kn, const float* q, int G, int64_t D, const float* kbase, const float* vbase,
                   const int64_t* offs, int64_t n, float scale, float* kt, float* s, std::vector<const float*>& qs,
                   std::vector<float*>& accs, float* part) {
  kn.transpose(kbase, offs, n, D, kt);
  qs.resize(size_t(G));
  for (int g = 0; g < G; ++g) qs[size_t(g)] = q + g * D;
  kn.scores(qs.data(), G, D, kt, scale, s);
  partial_from_scores(kn, s, G, D, vbase, offs, n, accs, part);
}

// Folds chunk partial `part` into the running state `run` (same layout); `first` copies.
void fold(int G, int64_t D, const float* part, float* run, bool first) {
  if (first) {
    std::copy(part, part + partial_floats(G, D), run);
    return;
  }
  for (int g = 0; g < G; ++g) {
    const float m = std::max(run[g], part[g]);
    const float a = std::exp(run[g] - m), b = std::exp(part[g] - m);
    run[g] = m;
    run[G + g] = run[G + g] * a + part[G + g] * b;
    float* o = run + 2 * G + g * D;
    const float* c = part + 2 * G + g * D;
    for (int64_t d = 0; d < D; ++d) o[d] = o[d] * a + c[d] * b;
  }
}

void finish(int G, int64_t D, const float* run, float* out) {
  for (int g = 0; g < G; ++g) {
    const float inv = 1.0f / run[G + g];
    const float* o = run + 2 * G + g * D;
    for (int64_t d = 0; d < D; ++d) out[g * D + d] = o[d] * inv;
  }
}

}  // namespace

void attention_fast(const Tensor& qkv, const Tensor& positions, const PagedKv& kv, const AttentionShape& s,
                    const Tensor& out) {
  const int64_t T = check_paged("attention", positions, kv, s);
  const int64_t D = s.head_dim, q_dim = int64_t(s.n_heads) * D, kv_dim = int64_t(s.n_kv_heads) * D;
  TD_CHECK(qkv.dtype == DType::F32 && qkv.is_contiguous() && qkv.ndim == 2 && qkv.shape[0] == T &&
               qkv.shape[1] == q_dim + 2 * kv_dim,
           "attention: qkv {} for {} tokens of {} + 2x{}", qkv.describe(), T, q_dim, kv_dim);
  TD_CHECK(out.dtype == DType::F32 && out.is_contiguous() && out.ndim == 2 && out.shape[0] == T &&
               out.shape[1] == q_dim,
           "attention: output {} for {} tokens of {}", out.describe(), T, q_dim);
  if (T == 0) return;
  const KvStrides st = kv_strides(kv.k, kv.layout);
  const int G = s.n_heads / s.n_kv_heads;
  const float scale = 1.0f / std::sqrt(float(D));
  const bool simd = active_isa() != Isa::scalar;
  const int64_t H = s.n_kv_heads, P = partial_floats(G, D);
  const float* kbase = kv.k.ptr<const float>();
  const float* vbase = kv.v.ptr<const float>();
  const int32_t* pos_of = positions.ptr<const int32_t>();
  // The first key a query at `pos` sees: 0, or the start of its sliding window.
  auto first_visible = [&](int64_t pos) {
    return s.sliding_window > 0 ? std::max<int64_t>(0, pos - s.sliding_window + 1) : int64_t(0);
  };

  // Row t's visible keys [lo, pos], their slot offsets for kv head 0 (slot_offset's checks, once per page); false when
  // the tables do not name every slot.
  const int32_t* token_batch = kv.token_batch.ptr<const int32_t>();
  const int32_t* indptr = kv.page_indptr.ptr<const int32_t>();
  const int32_t* page_ids = kv.page_indices.ptr<const int32_t>();
  const int64_t ps = kv.page_size, n_entries = kv.page_indices.numel(), n_pages = kv.k.shape[0];
  auto visible = [&](int64_t t, std::vector<int64_t>& offs) {
    const int64_t pos = pos_of[t];
    offs.clear();
    const int32_t b = token_batch[t];
    if (pos < 0 || b < 0 || b >= kv.batch()) return false;
    const int64_t lo = first_visible(pos);
    offs.reserve(size_t(pos - lo + 1));
    for (int64_t p = lo; p <= pos;) {
      const int64_t page_pos = p / ps, entry = indptr[b] + page_pos;
      if (page_pos >= indptr[b + 1] - indptr[b] || entry < 0 || entry >= n_entries) return false;
      const int32_t page = page_ids[entry];
      if (page < 0 || page >= n_pages) return false;
      const int64_t base = page * st.page, end = std::min(pos + 1, (page_pos + 1) * ps);
      for (; p < end; ++p) offs.push_back(base + (p % ps) * st.slot);
    }
    return true;
  };
  auto nan_row = [&](int64_t t, int64_t kvh) {  // bad tables are loud, as in the reference
    float* o = out.ptr<float>() + t * q_dim + kvh * G * D;
    std::fill(o, o + G * D, std::numeric_limits<float>::quiet_NaN());
  };
  auto query = [&](int64_t t, int64_t kvh) { return qkv.ptr<const float>() + t * qkv.shape[1] + kvh * G * D; };

  // Few rows (decode): (row, kv head, chunk) items over the threads, partials merged after. Many rows: (row, kv head)
  // items, each folding its chunks as it goes. Both fold the same partials in the same order.
  int64_t items = 0;
  std::vector<int64_t> first_chunk(size_t(T) + 1, 0);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t pos = pos_of[t];
    const int64_t lo = first_visible(pos);
    const int64_t n = pos < 0 ? 0 : pos - lo + 1;
    first_chunk[size_t(t) + 1] = first_chunk[size_t(t)] + std::max<int64_t>(1, (n + kAttentionChunk - 1) / kAttentionChunk);
  }
  items = first_chunk[size_t(T)] * H;
  const bool split = T * H < 4 * int64_t(num_threads()) && items * P <= (int64_t(1) << 22);

  const Kernels kn = kernels(simd);
  if (!split) {
    // Items: (block of kRowBlock consecutive rows, kv head). The block walks chunk index c for all its rows in turn:
    // rows of one sequence with the same window start see the same keys at chunk c, so those keys are transposed
    // once and scored against all their query vectors in one tile; each row's own arithmetic is unchanged.
    constexpr int64_t kRowBlock = 16;
    const int64_t blocks = (T + kRowBlock - 1) / kRowBlock;
    // parallel_for gives each thread a contiguous range of items, and a causal block's work grows with its row
    // index: items alternate between the lightest and the heaviest blocks left, so every range is balanced.
    parallel_for(blocks, [&](int64_t b, int64_t e) {
      std::vector<std::vector<int64_t>> offs(kRowBlock);
      std::vector<int64_t> seq_lo(kRowBlock);
      std::vector<char> ok(kRowBlock);
      std::vector<int64_t> group;
      std::vector<float> kt(static_cast<size_t>(D * kC)), sc(static_cast<size_t>(kRowBlock * G * kC)),
          part(static_cast<size_t>(P)), run(static_cast<size_t>(kRowBlock * P));
      std::vector<const float*> qs;
      std::vector<float*> accs;
      for (int64_t u = b; u < e; ++u) {
        const int64_t blk = u % 2 == 0 ? u / 2 : blocks - 1 - u / 2;
        const int64_t t0 = blk * kRowBlock, t1 = std::min(T, t0 + kRowBlock);
        int64_t most = 0;
        for (int64_t t = t0; t < t1; ++t) {
          auto& o = offs[size_t(t - t0)];
          ok[size_t(t - t0)] = visible(t, o);
          if (ok[size_t(t - t0)]) most = std::max(most, int64_t(o.size()));
          const int64_t pos = pos_of[t];
          const int64_t lo = first_visible(pos);
          seq_lo[size_t(t - t0)] = (int64_t(token_batch[t]) << 32) | lo;
        }
        for (int64_t kvh = 0; kvh < H; ++kvh) {
        const float* kh = kbase + kvh * st.head;
        const float* vh = vbase + kvh * st.head;
        for (int64_t t = t0; t < t1; ++t)
          if (!ok[size_t(t - t0)]) nan_row(t, kvh);
        for (int64_t c0 = 0; c0 < most; c0 += kC) {
          uint32_t done = 0;
          for (int64_t t = t0; t < t1; ++t) {
            const size_t i = size_t(t - t0);
            if (!ok[i] || c0 >= int64_t(offs[i].size()) || (done >> i & 1)) continue;
            // The group: the rows from t on that see the same keys; the longest one's are transposed.
            group.clear();
            int64_t lead = t;
            for (int64_t r = t; r < t1; ++r) {
              const size_t k = size_t(r - t0);
              if (!ok[k] || c0 >= int64_t(offs[k].size()) || seq_lo[k] != seq_lo[i]) continue;
              group.push_back(r);
              done |= 1u << k;
              if (offs[k].size() > offs[size_t(lead - t0)].size()) lead = r;
            }
            const auto& lo = offs[size_t(lead - t0)];
            kn.transpose(kh, lo.data() + c0, std::min(kC, int64_t(lo.size()) - c0), D, kt.data());
            qs.clear();
            for (int64_t r : group)
              for (int g = 0; g < G; ++g) qs.push_back(query(r, kvh) + g * D);
            kn.scores(qs.data(), int(qs.size()), D, kt.data(), scale, sc.data());
            for (size_t gi = 0; gi < group.size(); ++gi) {
              const int64_t r = group[gi];
              const auto& o = offs[size_t(r - t0)];
              const int64_t n = std::min(kC, int64_t(o.size()) - c0);
              partial_from_scores(kn, sc.data() + int64_t(gi) * G * kC, G, D, vh, o.data() + c0, n, accs,
                                  part.data());
              fold(G, D, part.data(), run.data() + (r - t0) * P, c0 == 0);
            }
          }
        }
        for (int64_t t = t0; t < t1; ++t)
          if (ok[size_t(t - t0)]) finish(G, D, run.data() + (t - t0) * P, out.ptr<float>() + t * q_dim + kvh * G * D);
        }
      }
    });
    return;
  }

  // Split: item = one chunk of one row, for every kv head (the chunk's pages read front to back); the partial of
  // (kv head h, chunk c) at parts[(h * chunks + c) * P]. A chunk whose slots the tables do not name gets a NaN m, and
  // the merge writes the row as NaN.
  const int64_t chunks = first_chunk[size_t(T)];
  std::vector<float> parts(static_cast<size_t>(items * P));
  std::vector<int64_t> row_of(static_cast<size_t>(chunks));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = first_chunk[size_t(t)]; c < first_chunk[size_t(t) + 1]; ++c) row_of[size_t(c)] = t;
  parallel_for(chunks, [&](int64_t b, int64_t e) {
    std::vector<int64_t> offs;
    std::vector<float> kt(static_cast<size_t>(D * kC)), sc(static_cast<size_t>(G * kC));
    std::vector<const float*> qs;
    std::vector<float*> accs;
    for (int64_t c = b; c < e; ++c) {
      const int64_t t = row_of[size_t(c)], pos = pos_of[t];
      const int64_t lo = first_visible(pos);
      const int64_t p0 = lo + (c - first_chunk[size_t(t)]) * kAttentionChunk, p1 = std::min(pos + 1, p0 + kAttentionChunk);
      for (int64_t kvh = 0; kvh < H; ++kvh) {
        float* part = parts.data() + (kvh * chunks + c) * P;
        offs.clear();
        bool bad = pos < 0;
        for (int64_t p = p0; p < p1 && !bad; ++p) {
          offs.push_back(slot_offset(kv, st, t, p, kvh));
          bad = offs.back() < 0;
        }
        if (bad || offs.empty()) {
          std::fill(part, part + P, std::numeric_limits<float>::quiet_NaN());
          continue;
        }
        chunk_partial(kn, query(t, kvh), G, D, kbase, vbase, offs.data(), int64_t(offs.size()), scale, kt.data(),
                      sc.data(), qs, accs, part);
      }
    }
  });
  std::vector<float> run(static_cast<size_t>(P));
  for (int64_t kvh = 0; kvh < H; ++kvh)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t c_begin = first_chunk[size_t(t)], c_end = first_chunk[size_t(t) + 1];
      bool bad = false;
      for (int64_t c = c_begin; c < c_end; ++c) bad = bad || std::isnan(parts[size_t((kvh * chunks + c) * P)]);
      if (bad) {
        nan_row(t, kvh);
        continue;
      }
      for (int64_t c = c_begin; c < c_end; ++c) fold(G, D, parts.data() + (kvh * chunks + c) * P, run.data(), c == c_begin);
      finish(G, D, run.data(), out.ptr<float>() + t * q_dim + kvh * G * D);
    }
}

}  // namespace tandem::cpu
