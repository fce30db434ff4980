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

// One query group (G heads sharing kv head) of one token over its visible keys: scores[g][j] for every key, the
// softmax, then out[g] = sum_j p[g][j] v[j].
template <bool kSimd>
void group_attention(const float* q, int G, int64_t D, const float* kbase, const float* vbase,
                     const std::vector<int64_t>& offs, float scale, std::vector<float>& scores, float* out);

template <>
void group_attention<false>(const float* q, int G, int64_t D, const float* kbase, const float* vbase,
                            const std::vector<int64_t>& offs, float scale, std::vector<float>& scores, float* out) {
  const size_t n = offs.size();
  scores.resize(size_t(G) * n);
  for (int g = 0; g < G; ++g) {
    float* sc = scores.data() + size_t(g) * n;
    float m = -INFINITY;
    for (size_t j = 0; j < n; ++j) m = std::max(m, sc[j] = dot(q + g * D, kbase + offs[j], D) * scale);
    float denom = 0;
    for (size_t j = 0; j < n; ++j) denom += (sc[j] = std::exp(sc[j] - m));
    float* o = out + g * D;
    std::fill(o, o + D, 0.0f);
    for (size_t j = 0; j < n; ++j) {
      const float w = sc[j] / denom;
      for (int64_t d = 0; d < D; ++d) o[d] += w * vbase[offs[j] + d];
    }
  }
}

__attribute__((target("avx2,fma"))) float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <>
__attribute__((target("avx2,fma"))) void group_attention<true>(const float* q, int G, int64_t D, const float* kbase,
                                                               const float* vbase, const std::vector<int64_t>& offs,
                                                               float scale, std::vector<float>& scores, float* out) {
  const size_t n = offs.size();
  scores.resize(size_t(G) * n);
  // Scores: each key row read once for the whole group.
  for (size_t j = 0; j < n; ++j) {
    const float* k = kbase + offs[j];
    for (int g = 0; g < G; ++g) {
      const float* qg = q + g * D;
      __m256 acc = _mm256_setzero_ps();
      int64_t d = 0;
      for (; d + 8 <= D; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(qg + d), _mm256_loadu_ps(k + d), acc);
      float s = hsum8(acc);
      for (; d < D; ++d) s += qg[d] * k[d];
      scores[size_t(g) * n + j] = s * scale;
    }
  }
  for (int g = 0; g < G; ++g) {
    float* sc = scores.data() + size_t(g) * n;
    float m = -INFINITY;
    for (size_t j = 0; j < n; ++j) m = std::max(m, sc[j]);
    float denom = 0;
    for (size_t j = 0; j < n; ++j) denom += (sc[j] = std::exp(sc[j] - m));
    const float inv = 1.0f / denom;
    for (size_t j = 0; j < n; ++j) sc[j] *= inv;
    std::fill(out + g * D, out + (g + 1) * D, 0.0f);
  }
  // Values: each row read once, accumulated into every head of the group (8 columns at a time).
  for (int64_t d = 0; d + 8 <= D; d += 8)
    for (int g = 0; g < G; ++g) {
      const float* sc = scores.data() + size_t(g) * n;
      __m256 acc = _mm256_setzero_ps();
      for (size_t j = 0; j < n; ++j) acc = _mm256_fmadd_ps(_mm256_set1_ps(sc[j]), _mm256_loadu_ps(vbase + offs[j] + d), acc);
      _mm256_storeu_ps(out + g * D + d, acc);
    }
  for (int64_t d = D / 8 * 8; d < D; ++d)
    for (int g = 0; g < G; ++g) {
      float acc = 0;
      for (size_t j = 0; j < n; ++j) acc += scores[size_t(g) * n + j] * vbase[offs[j] + d];
      out[g * D + d] = acc;
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
  const KvStrides st = kv_strides(kv.k, kv.layout);
  const int G = s.n_heads / s.n_kv_heads;
  const float scale = 1.0f / std::sqrt(float(D));
  const bool simd = active_isa() != Isa::scalar;
  const int64_t H = s.n_kv_heads;
  parallel_for(T * H, [&](int64_t b, int64_t e) {
    std::vector<float> scores;
    std::vector<int64_t> offs;
    for (int64_t u = b; u < e; ++u) {
      const int64_t t = u / H, kvh = u % H;
      const int64_t pos = positions.ptr<const int32_t>()[t];
      const int64_t lo = s.sliding_window > 0 ? std::max<int64_t>(0, pos - s.sliding_window + 1) : 0;
      float* o = out.ptr<float>() + t * q_dim + kvh * G * D;
      offs.clear();
      bool bad = pos < 0;
      for (int64_t p = lo; p <= pos && !bad; ++p) {
        offs.push_back(slot_offset(kv, st, t, p, kvh));
        bad = offs.back() < 0;
      }
      if (bad) {  // bad tables are loud, as in the reference
        std::fill(o, o + G * D, std::numeric_limits<float>::quiet_NaN());
        continue;
      }
      const float* q = qkv.ptr<const float>() + t * qkv.shape[1] + kvh * G * D;
      if (simd) group_attention<true>(q, G, D, kv.k.ptr<const float>(), kv.v.ptr<const float>(), offs, scale, scores, o);
      else group_attention<false>(q, G, D, kv.k.ptr<const float>(), kv.v.ptr<const float>(), offs, scale, scores, o);
    }
  });
}

}  // namespace tandem::cpu
