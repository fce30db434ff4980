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

// Rows are D floats at scattered slots (one kv head of an NHD page row): fetch a few rows ahead of use.
constexpr int64_t kAhead = 4;
inline void prefetch_row(const float* row, int64_t D) {
  for (int64_t d = 0; d < D; d += 16) _mm_prefetch(reinterpret_cast<const char*>(row + d), _MM_HINT_T0);
}

// Sums of the 8 lanes of a0..a3: {sum a0, sum a1, sum a2, sum a3}.
__attribute__((target("avx2,fma"))) inline __m128 hsum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// Up to 4 heads per pass share each loaded 8-float slice of the key row; one accumulator per head.
__attribute__((target("avx2,fma"))) void scores_avx2(const float* q, int G, int64_t D, const float* kbase,
                                                     const int64_t* offs, int64_t n, float scale, float* s) {
  const int64_t D8 = D / 8 * 8;
  for (int64_t j = 0; j < n; ++j) {
    const float* k = kbase + offs[j];
    if (j + kAhead < n) prefetch_row(kbase + offs[j + kAhead], D);
    for (int g0 = 0; g0 < G; g0 += 4) {
      const int ng = std::min(4, G - g0);
      __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      for (int64_t d = 0; d < D8; d += 8) {
        const __m256 kv = _mm256_loadu_ps(k + d);
        for (int g = 0; g < ng; ++g) a[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (g0 + g) * D + d), kv, a[g]);
      }
      alignas(16) float r[4];
      _mm_store_ps(r, hsum4(a[0], a[1], a[2], a[3]));
      for (int g = 0; g < ng; ++g) {
        float x = r[g];
        for (int64_t d = D8; d < D; ++d) x += q[(g0 + g) * D + d] * k[d];
        s[(g0 + g) * n + j] = x * scale;
      }
    }
  }
}

// acc[g][d] += p[g][j] * v_j[d], j in order (the same sum per element as values_portable's loop): 32 columns of up
// to 3 heads in 12 registers, then the next columns / heads.
__attribute__((target("avx2,fma"))) void values_avx2(const float* p, int G, int64_t D, const float* vbase,
                                                     const int64_t* offs, int64_t n, float* acc) {
  int64_t d0 = 0;
  for (; d0 + 32 <= D; d0 += 32)
    for (int g0 = 0; g0 < G; g0 += 3) {
      const int ng = std::min(3, G - g0);
      __m256 a[3][4];
      for (int g = 0; g < ng; ++g)
        for (int k = 0; k < 4; ++k) a[g][k] = _mm256_loadu_ps(acc + (g0 + g) * D + d0 + 8 * k);
      for (int64_t j = 0; j < n; ++j) {
        const float* v = vbase + offs[j] + d0;
        if (d0 == 0 && g0 == 0 && j + kAhead < n) prefetch_row(vbase + offs[j + kAhead], D);
        const __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8), v2 = _mm256_loadu_ps(v + 16),
                     v3 = _mm256_loadu_ps(v + 24);
        for (int g = 0; g < ng; ++g) {
          const __m256 w = _mm256_set1_ps(p[(g0 + g) * n + j]);
          a[g][0] = _mm256_fmadd_ps(w, v0, a[g][0]);
          a[g][1] = _mm256_fmadd_ps(w, v1, a[g][1]);
          a[g][2] = _mm256_fmadd_ps(w, v2, a[g][2]);
          a[g][3] = _mm256_fmadd_ps(w, v3, a[g][3]);
        }
      }
      for (int g = 0; g < ng; ++g)
        for (int k = 0; k < 4; ++k) _mm256_storeu_ps(acc + (g0 + g) * D + d0 + 8 * k, a[g][k]);
    }
  // Columns past the last multiple of 32: 8 at a time, then one by one (same j order).
  for (int64_t j = 0; j < n; ++j) {
    const float* v = vbase + offs[j];
    for (int g = 0; g < G; ++g) {
      const __m256 w = _mm256_set1_ps(p[g * n + j]);
      float* a = acc + g * D;
      int64_t d = d0;
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
  // Row t's visible keys [lo, pos], their slot offsets (slot_offset's checks, once per page); false when the tables do
  // not name every slot.
  const int32_t* token_batch = kv.token_batch.ptr<const int32_t>();
  const int32_t* indptr = kv.page_indptr.ptr<const int32_t>();
  const int32_t* page_ids = kv.page_indices.ptr<const int32_t>();
  const int64_t ps = kv.page_size, n_entries = kv.page_indices.numel(), n_pages = kv.k.shape[0];
  auto visible = [&](int64_t t, int64_t kvh, std::vector<int64_t>& offs) {
    const int64_t pos = pos_of[t];
    offs.clear();
    const int32_t b = token_batch[t];
    if (pos < 0 || b < 0 || b >= kv.batch()) return false;
    const int64_t lo = s.sliding_window > 0 ? std::max<int64_t>(0, pos - s.sliding_window + 1) : 0;
    offs.reserve(size_t(pos - lo + 1));
    for (int64_t p = lo; p <= pos;) {
      const int64_t page_pos = p / ps, entry = indptr[b] + page_pos;
      if (page_pos >= indptr[b + 1] - indptr[b] || entry < 0 || entry >= n_entries) return false;
      const int32_t page = page_ids[entry];
      if (page < 0 || page >= n_pages) return false;
      const int64_t base = page * st.page + kvh * st.head, end = std::min(pos + 1, (page_pos + 1) * ps);
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
    const int64_t lo = s.sliding_window > 0 ? std::max<int64_t>(0, pos - s.sliding_window + 1) : 0;
    const int64_t n = pos < 0 ? 0 : pos - lo + 1;
    first_chunk[size_t(t) + 1] = first_chunk[size_t(t)] + std::max<int64_t>(1, (n + kAttentionChunk - 1) / kAttentionChunk);
  }
  items = first_chunk[size_t(T)] * H;
  const bool split = T * H < 4 * int64_t(num_threads()) && items * P <= (int64_t(1) << 22);

  if (!split) {
    // Items: (block of kRowBlock consecutive rows, kv head). The block walks chunk index c for all its rows in turn,
    // so rows of one sequence read the same key/value rows while they are still in L1/L2 (a 2048-token prefill read
    // the whole KV of a layer per row otherwise); each row's own arithmetic is unchanged.
    constexpr int64_t kRowBlock = 16;
    const int64_t blocks = (T + kRowBlock - 1) / kRowBlock;
    parallel_for(blocks * H, [&](int64_t b, int64_t e) {
      std::vector<std::vector<int64_t>> offs(kRowBlock);
      std::vector<char> ok(kRowBlock);
      std::vector<float> sc(static_cast<size_t>(G * kAttentionChunk)), part(static_cast<size_t>(P)),
          run(static_cast<size_t>(kRowBlock * P));
      for (int64_t u = b; u < e; ++u) {
        const int64_t t0 = (u / H) * kRowBlock, t1 = std::min(T, t0 + kRowBlock), kvh = u % H;
        int64_t most = 0;
        for (int64_t t = t0; t < t1; ++t) {
          auto& o = offs[size_t(t - t0)];
          ok[size_t(t - t0)] = visible(t, kvh, o);
          if (!ok[size_t(t - t0)]) nan_row(t, kvh);
          else most = std::max(most, int64_t(o.size()));
        }
        for (int64_t c0 = 0; c0 < most; c0 += kAttentionChunk)
          for (int64_t t = t0; t < t1; ++t) {
            const auto& o = offs[size_t(t - t0)];
            const int64_t n = int64_t(o.size());
            if (!ok[size_t(t - t0)] || c0 >= n) continue;
            chunk_partial(simd, query(t, kvh), G, D, kbase, vbase, o.data() + c0, std::min(kAttentionChunk, n - c0),
                          scale, sc.data(), part.data());
            fold(G, D, part.data(), run.data() + (t - t0) * P, c0 == 0);
          }
        for (int64_t t = t0; t < t1; ++t)
          if (ok[size_t(t - t0)]) finish(G, D, run.data() + (t - t0) * P, out.ptr<float>() + t * q_dim + kvh * G * D);
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
