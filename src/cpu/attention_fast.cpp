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

// Scores of the G heads of `q` against n key rows (offsets `offs` into kbase): s[g * n + j] = q_g . k_j * scale.
void scores_portable(const float* q, int G, int64_t D, const float* kbase, const int64_t* offs, int64_t n, float scale,
                     float* s) {
  for (int64_t j = 0; j < n; ++j)
    for (int g = 0; g < G; ++g) s[g * n + j] = dot(q + g * D, kbase + offs[j], D) * scale;
}
// acc[g] += p[g][j] * v_j over the n value rows.
void values_portable(const float* p, int G, int64_t D, const float* vbase, const int64_t* offs, int64_t n, float* acc) {
  for (int64_t j = 0; j < n; ++j) {
    const float* v = vbase + offs[j];
    for (int g = 0; g < G; ++g) {
      const float w = p[g * n + j];
      float* a = acc + g * D;
      for (int64_t d = 0; d < D; ++d) a[d] += w * v[d];
    }
  }
}

__attribute__((target("avx2,fma"))) inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Rows are D floats at scattered slots (one kv head of an NHD page row): fetch a few rows ahead of use.
constexpr int64_t kAhead = 4;
inline void prefetch_row(const float* row, int64_t D) {
  for (int64_t d = 0; d < D; d += 16) _mm_prefetch(reinterpret_cast<const char*>(row + d), _MM_HINT_T0);
}

__attribute__((target("avx2,fma"))) void scores_avx2(const float* q, int G, int64_t D, const float* kbase,
                                                     const int64_t* offs, int64_t n, float scale, float* s) {
  for (int64_t j = 0; j < n; ++j) {
    const float* k = kbase + offs[j];
    if (j + kAhead < n) prefetch_row(kbase + offs[j + kAhead], D);
    for (int g = 0; g < G; ++g) {
      const float* qg = q + g * D;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      int64_t d = 0;
      for (; d + 16 <= D; d += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qg + d), _mm256_loadu_ps(k + d), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qg + d + 8), _mm256_loadu_ps(k + d + 8), a1);
      }
      for (; d + 8 <= D; d += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qg + d), _mm256_loadu_ps(k + d), a0);
      float r = hsum8(_mm256_add_ps(a0, a1));
      for (; d < D; ++d) r += qg[d] * k[d];
      s[g * n + j] = r * scale;
    }
  }
}

__attribute__((target("avx2,fma"))) void values_avx2(const float* p, int G, int64_t D, const float* vbase,
                                                     const int64_t* offs, int64_t n, float* acc) {
  for (int64_t j = 0; j < n; ++j) {
    const float* v = vbase + offs[j];
    if (j + kAhead < n) prefetch_row(vbase + offs[j + kAhead], D);
    for (int g = 0; g < G; ++g) {
      const __m256 w = _mm256_set1_ps(p[g * n + j]);
      float* a = acc + g * D;
      int64_t d = 0;
      for (; d + 8 <= D; d += 8) _mm256_storeu_ps(a + d, _mm256_fmadd_ps(w, _mm256_loadu_ps(v + d), _mm256_loadu_ps(a + d)));
      for (; d < D; ++d) a[d] += p[g * n + j] * v[d];
    }
  }
}

// One chunk of n keys for one kv-head group: part = {m[G], l[G], acc[G][D]}. `s` is scratch of G * n floats.
void chunk_partial(bool simd, const float* q, int G, int64_t D, const float* kbase, const float* vbase,
                   const int64_t* offs, int64_t n, float scale, float* s, float* part) {
  float* m = part;
  float* l = part + G;
  float* acc = part + 2 * G;
  if (simd) scores_avx2(q, G, D, kbase, offs, n, scale, s);
  else scores_portable(q, G, D, kbase, offs, n, scale, s);
  for (int g = 0; g < G; ++g) {
    float* sg = s + g * n;
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) mx = std::max(mx, sg[j]);
    float sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += (sg[j] = std::exp(sg[j] - mx));
    m[g] = mx;
    l[g] = sum;
  }
  std::fill(acc, acc + G * D, 0.0f);
  if (simd) values_avx2(s, G, D, vbase, offs, n, acc);
  else values_portable(s, G, D, vbase, offs, n, acc);
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

  // Row t's visible keys [lo, pos], their slot offsets; false when the tables do not name every slot.
  auto visible = [&](int64_t t, int64_t kvh, std::vector<int64_t>& offs) {
    const int64_t pos = pos_of[t];
    offs.clear();
    if (pos < 0) return false;
    const int64_t lo = s.sliding_window > 0 ? std::max<int64_t>(0, pos - s.sliding_window + 1) : 0;
    for (int64_t p = lo; p <= pos; ++p) {
      offs.push_back(slot_offset(kv, st, t, p, kvh));
      if (offs.back() < 0) return false;
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
    const int64_t lo = s.sliding_window > 0 ? std::max<int64_t>(0, pos - s.sliding_window + 1) : 0;
    const int64_t n = pos < 0 ? 0 : pos - lo + 1;
    first_chunk[size_t(t) + 1] = first_chunk[size_t(t)] + std::max<int64_t>(1, (n + kAttentionChunk - 1) / kAttentionChunk);
  }
  items = first_chunk[size_t(T)] * H;
  const bool split = T * H < 4 * int64_t(num_threads()) && items * P <= (int64_t(1) << 22);

  if (!split) {
    parallel_for(T * H, [&](int64_t b, int64_t e) {
      std::vector<int64_t> offs;
      std::vector<float> sc(static_cast<size_t>(G * kAttentionChunk)), part(static_cast<size_t>(P)), run(static_cast<size_t>(P));
      for (int64_t u = b; u < e; ++u) {
        const int64_t t = u / H, kvh = u % H;
        if (!visible(t, kvh, offs)) {
          nan_row(t, kvh);
          continue;
        }
        const int64_t n = int64_t(offs.size());
        for (int64_t c0 = 0; c0 < n; c0 += kAttentionChunk) {
          chunk_partial(simd, query(t, kvh), G, D, kbase, vbase, offs.data() + c0, std::min(kAttentionChunk, n - c0),
                        scale, sc.data(), part.data());
          fold(G, D, part.data(), run.data(), c0 == 0);
        }
        finish(G, D, run.data(), out.ptr<float>() + t * q_dim + kvh * G * D);
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
    std::vector<float> sc(static_cast<size_t>(G * kAttentionChunk));
    for (int64_t c = b; c < e; ++c) {
      const int64_t t = row_of[size_t(c)], pos = pos_of[t];
      const int64_t lo = s.sliding_window > 0 ? std::max<int64_t>(0, pos - s.sliding_window + 1) : 0;
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
        chunk_partial(simd, query(t, kvh), G, D, kbase, vbase, offs.data(), int64_t(offs.size()), scale, sc.data(), part);
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
