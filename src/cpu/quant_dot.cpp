#include "cpu/quant_dot.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/parallel.h"

namespace tandem::cpu {
namespace {

constexpr int QK = 32;

inline float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16_to_f32(h);
}

// One 32-element block of an integer format as int8 values, a scale per 16-element half, and the offset that
// multiplies the activation block's sum: w[j] = (j < 16 ? dlo : dhi) * q[j] + m.
struct DecodedBlock {
  alignas(32) int8_t q[QK];
  float dlo, dhi, m;
};

// Q4_K/Q5_K: 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes (as io/dequant.cpp).
inline void scale_min_k4(int j, const uint8_t* q, int& d, int& m) {
  if (j < 4) {
    d = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Block b (32 elements) of a weight row of format t, layouts from ggml-common.h (see io/dequant.cpp).
void decode_block(DType t, const uint8_t* row, int64_t b, DecodedBlock& o) {
  switch (t) {
    case DType::Q4_0: {
      const uint8_t* p = row + b * 18;
      o.dlo = o.dhi = f16_at(p);
      o.m = 0;
      for (int j = 0; j < 16; ++j) o.q[j] = int8_t((p[2 + j] & 0xF) - 8), o.q[j + 16] = int8_t((p[2 + j] >> 4) - 8);
      return;
    }
    case DType::Q4_1: {
      const uint8_t* p = row + b * 20;
      o.dlo = o.dhi = f16_at(p);
      o.m = f16_at(p + 2);
      for (int j = 0; j < 16; ++j) o.q[j] = int8_t(p[4 + j] & 0xF), o.q[j + 16] = int8_t(p[4 + j] >> 4);
      return;
    }
    case DType::Q5_0: case DType::Q5_1: {
      const bool one = t == DType::Q5_1;
      const uint8_t* p = row + b * (one ? 24 : 22);
      o.dlo = o.dhi = f16_at(p);
      o.m = one ? f16_at(p + 2) : 0.0f;
      uint32_t qh;
      std::memcpy(&qh, p + (one ? 4 : 2), 4);
      const uint8_t* qs = p + (one ? 8 : 6);
      const int off = one ? 0 : 16;
      for (int j = 0; j < 16; ++j) {
        o.q[j] = int8_t(((qs[j] & 0xF) | (((qh >> j) << 4) & 0x10)) - off);
        o.q[j + 16] = int8_t(((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - off);
      }
      return;
    }
    case DType::Q8_0: {
      const uint8_t* p = row + b * 34;
      o.dlo = o.dhi = f16_at(p);
      o.m = 0;
      std::memcpy(o.q, p + 2, QK);
      return;
    }
    case DType::Q4_K: case DType::Q5_K: {
      const bool five = t == DType::Q5_K;
      const uint8_t* p = row + (b / 8) * (five ? 176 : 144);
      const int c = int(b % 8);
      int sc, mn;
      scale_min_k4(c, p + 4, sc, mn);
      const float d = f16_at(p) * float(sc);
      o.dlo = o.dhi = d;
      o.m = -(f16_at(p + 2) * float(mn));
      const uint8_t* qs = p + (five ? 48 : 16) + 32 * (c / 2);
      const int shift = (c % 2) * 4;
      for (int l = 0; l < QK; ++l) {
        int v = (qs[l] >> shift) & 0xF;
        if (five) v += ((p[16 + l] >> c) & 1) << 4;
        o.q[l] = int8_t(v);
      }
      return;
    }
    case DType::Q6_K: {
      const uint8_t* p = row + (b / 8) * 210;
      const int c = int(b % 8), half = c / 4, k = c % 4;
      const uint8_t* ql = p + 64 * half + (k % 2) * 32;
      const uint8_t* qh = p + 128 + 32 * half;
      const int8_t* sc = reinterpret_cast<const int8_t*>(p + 192 + 8 * half);
      const float d = f16_at(p + 208);
      o.dlo = d * float(sc[2 * k]);
      o.dhi = d * float(sc[2 * k + 1]);
      o.m = 0;
      const int lshift = (k / 2) * 4, hshift = 2 * k;
      for (int l = 0; l < QK; ++l) o.q[l] = int8_t((((ql[l] >> lshift) & 0xF) | (((qh[l] >> hshift) & 3) << 4)) - 32);
      return;
    }
    default: fail("decode_block: {} is not an integer block format", dtype_name(t));
  }
}

template <DType T>
inline float float_weight(const uint8_t* row, int64_t k) {
  if constexpr (T == DType::F32) {
    float f;
    std::memcpy(&f, row + 4 * k, 4);
    return f;
  } else {
    uint16_t h;
    std::memcpy(&h, row + 2 * k, 2);
    if constexpr (T == DType::F16) return fp16_to_f32(h);
    else return bf16_to_f32(h);
  }
}

// ---- portable scalar kernels ----
namespace scalar {

void linear_q8(DType t, const uint8_t* w, int64_t row_bytes, int64_t n0, int64_t n1, const Q8Rows& x, int64_t r0,
               int64_t r1, float* out, int64_t ld) {
  const int64_t nb = x.blocks, K = x.K;
  DecodedBlock db;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w + n * row_bytes;
    for (int64_t r = r0; r < r1; ++r) {
      const int8_t* xq = x.q.data() + r * K;
      const int8_t* xq2 = x.q2.data() + r * K;
      float acc = 0;
      for (int64_t b = 0; b < nb; ++b) {
        decode_block(t, row, b, db);
        int32_t lo = 0, hi = 0, lo2 = 0, hi2 = 0;
        for (int j = 0; j < 16; ++j) lo += int32_t(db.q[j]) * xq[b * QK + j], lo2 += int32_t(db.q[j]) * xq2[b * QK + j];
        for (int j = 16; j < QK; ++j) hi += int32_t(db.q[j]) * xq[b * QK + j], hi2 += int32_t(db.q[j]) * xq2[b * QK + j];
        const float d = x.d[size_t(r * nb + b)], d2 = x.d2[size_t(r * nb + b)];
        acc += db.dlo * (d * float(lo) + d2 * float(lo2)) + db.dhi * (d * float(hi) + d2 * float(hi2)) +
               db.m * x.s[size_t(r * nb + b)];
      }
      out[r * ld + n] = acc;
    }
  }
}

template <DType T>
void float_rows(const uint8_t* w, int64_t row_bytes, int64_t n0, int64_t n1, const float* x, int64_t ldx, int64_t K,
                int64_t r0, int64_t r1, float* out, int64_t ld) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t r = r0; r < r1; ++r) {
      float acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += float_weight<T>(w + n * row_bytes, k) * x[r * ldx + k];
      out[r * ld + n] = acc;
    }
}

void linear_float(DType t, const uint8_t* w, int64_t row_bytes, int64_t n0, int64_t n1, const float* x, int64_t ldx,
                  int64_t K, int64_t r0, int64_t r1, float* out, int64_t ld) {
  switch (t) {
    case DType::F32: float_rows<DType::F32>(w, row_bytes, n0, n1, x, ldx, K, r0, r1, out, ld); break;
    case DType::F16: float_rows<DType::F16>(w, row_bytes, n0, n1, x, ldx, K, r0, r1, out, ld); break;
    case DType::BF16: float_rows<DType::BF16>(w, row_bytes, n0, n1, x, ldx, K, r0, r1, out, ld); break;
    default: fail("linear_float: {} is not a float format", dtype_name(t));
  }
}

}  // namespace scalar

// ---- AVX2 + FMA + F16C ----
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
#define TD_SIMD_VNNI 0
#include "cpu/quant_dot_simd.inc"
#undef TD_SIMD_VNNI
}  // namespace avx2
#pragma GCC pop_options

// ---- AVX-512 VNNI (256-bit vpdpbusd) ----
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
namespace vnni {
#define TD_SIMD_VNNI 1
#include "cpu/quant_dot_simd.inc"
#undef TD_SIMD_VNNI
}  // namespace vnni
#pragma GCC pop_options

using Q8Fn = void (*)(DType, const uint8_t*, int64_t, int64_t, int64_t, const Q8Rows&, int64_t, int64_t, float*,
                      int64_t);
using FloatFn = void (*)(DType, const uint8_t*, int64_t, int64_t, int64_t, const float*, int64_t, int64_t, int64_t,
                         int64_t, float*, int64_t);

Isa detect() {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
    return Isa::avx512_vnni;
  return avx2 ? Isa::avx2 : Isa::scalar;
}

std::atomic<int> g_forced{-1};

Q8Fn q8_kernel(Isa isa) {
  switch (isa) {
    case Isa::avx512_vnni: return vnni::linear_q8;
    case Isa::avx2: return avx2::linear_q8;
    default: return scalar::linear_q8;
  }
}
FloatFn float_kernel(Isa isa) {
  switch (isa) {
    case Isa::avx512_vnni: return vnni::linear_float;
    case Isa::avx2: return avx2::linear_float;
    default: return scalar::linear_float;
  }
}

int64_t row_bytes_of(DType t, int64_t K) { return K / dtype_block_elems(t) * dtype_block_bytes(t); }

}  // namespace

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512_vnni: return "avx512-vnni";
  }
  return "?";
}

Isa detected_isa() {
  static const Isa isa = detect();
  return isa;
}

Isa active_isa() {
  const int f = g_forced.load(std::memory_order_relaxed);
  return f < 0 ? detected_isa() : Isa(f);
}

void force_isa(std::optional<Isa> isa) {
  TD_CHECK(!isa || int(*isa) <= int(detected_isa()), "force_isa({}): this CPU has only {}", isa_name(*isa),
           isa_name(detected_isa()));
  g_forced.store(isa ? int(*isa) : -1, std::memory_order_relaxed);
}

bool takes_q8_activations(DType t) {
  switch (t) {
    case DType::Q4_0: case DType::Q4_1: case DType::Q5_0: case DType::Q5_1: case DType::Q8_0: case DType::Q4_K:
    case DType::Q5_K: case DType::Q6_K: return true;
    default: return false;
  }
}

bool stored_linear_supported(DType t) {
  return takes_q8_activations(t) || t == DType::F32 || t == DType::F16 || t == DType::BF16;
}

namespace {
constexpr int kLevelNeedsDivide = INT32_MIN;  // the scale's reciprocal is not finite: the scalar loop divides

// One Q8 level of a 32-float block (see quantize_rows_q8): q, d = absmax / 127, returns the sum of q.
__attribute__((target("avx2,fma"))) int quantize_level_avx2(const float* v, int8_t* q, float& d_out) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 x[4];
  __m256 amax = _mm256_setzero_ps();
  for (int c = 0; c < 4; ++c) {
    x[c] = _mm256_loadu_ps(v + 8 * c);
    amax = _mm256_max_ps(_mm256_andnot_ps(sign, x[c]), amax);  // a NaN lane keeps amax (second operand)
  }
  __m128 h = _mm_max_ps(_mm256_extractf128_ps(amax, 1), _mm256_castps256_ps128(amax));
  h = _mm_max_ps(_mm_movehl_ps(h, h), h);
  h = _mm_max_ss(_mm_movehdup_ps(h), h);
  const float d = _mm_cvtss_f32(h) / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
  if (!std::isfinite(id)) return kLevelNeedsDivide;
  const __m256 vid = _mm256_set1_ps(id);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  __m256i i[4];
  __m256i sum = _mm256_setzero_si256();
  for (int c = 0; c < 4; ++c) {
    // cvtps rounds to nearest even (nearbyint in the default mode); NaN/overflow give INT_MIN as int(nearbyint) does.
    i[c] = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(x[c], vid)), lo), hi);
    sum = _mm256_add_epi32(sum, i[c]);
  }
  const __m256i p16a = _mm256_packs_epi32(i[0], i[1]), p16b = _mm256_packs_epi32(i[2], i[3]);
  const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), p8);
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
  d_out = d;
  return _mm_cvtsi128_si32(s4);
}

// res = v - d * q (a product, then a difference: no fused multiply-add, as the scalar loop).
__attribute__((target("avx2"))) void residual_avx2(const float* v, const int8_t* q, float d, float* res) {
  const __m256 vd = _mm256_set1_ps(d);
  for (int c = 0; c < 4; ++c) {
    const __m256 qf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * c))));
    _mm256_storeu_ps(res + 8 * c, _mm256_sub_ps(_mm256_loadu_ps(v + 8 * c), _mm256_mul_ps(vd, qf)));
  }
}
void residual(bool simd, const float* v, const int8_t* q, float d, float* res) {
  if (simd) return residual_avx2(v, q, d, res);
  for (int j = 0; j < QK; ++j) res[j] = v[j] - d * float(q[j]);
}
}  // namespace

void quantize_rows_q8(const float* x, int64_t rows, int64_t ld, int64_t K, Q8Rows& out) {
  TD_CHECK(K % QK == 0, "quantize_rows_q8: K = {} is not a multiple of {}", K, QK);
  const int64_t nb = K / QK;
  out.rows = rows, out.K = K, out.blocks = nb;
  out.q.resize(size_t(rows * K));
  out.q2.resize(size_t(rows * K));
  out.d.resize(size_t(rows * nb));
  out.d2.resize(size_t(rows * nb));
  out.s.resize(size_t(rows * nb));
  // One level: q = round(v / d), d = absmax / 127; a subnormal d has no finite reciprocal, so divide instead (such
  // blocks are rare and tiny).
  auto level = [](const float* v, int8_t* q, float& d_out) {
    float amax = 0;
    for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
    const bool divide = !std::isfinite(id);
    int sum = 0;
    for (int j = 0; j < QK; ++j) {
      const int qi = int(std::nearbyint(divide ? v[j] / d : v[j] * id));
      q[j] = int8_t(std::clamp(qi, -127, 127));
      sum += q[j];
    }
    d_out = d;
    return sum;
  };
  // AVX2: the same level in 8 lanes (abs-max with a NaN input ignored as std::max does, round to nearest even as
  // nearbyint, the residual as a product then a difference): the same bytes and scales as the scalar loop.
  const bool simd = active_isa() != Isa::scalar;
  auto level_of = [&](const float* v, int8_t* q, float& d_out) {
    if (simd) {
      const int sum = quantize_level_avx2(v, q, d_out);
      if (sum != kLevelNeedsDivide) return sum;
    }
    return level(v, q, d_out);
  };
  auto quantize = [&](int64_t r0, int64_t r1) {
    alignas(32) float res[QK];
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t b = 0; b < nb; ++b) {
        const float* v = x + r * ld + b * QK;
        int8_t* q = out.q.data() + r * K + b * QK;
        int8_t* q2 = out.q2.data() + r * K + b * QK;
        float d, d2;
        const int sum = level_of(v, q, d);
        residual(simd, v, q, d, res);
        const int sum2 = level_of(res, q2, d2);
        out.d[size_t(r * nb + b)] = d;
        out.d2[size_t(r * nb + b)] = d2;
        out.s[size_t(r * nb + b)] = d * float(sum) + d2 * float(sum2);
      }
  };
  if (rows * K >= 65536) parallel_for(rows, quantize, std::max<int64_t>(1, 16384 / K));
  else quantize(0, rows);
}

void linear_q8_block(DType t, const void* w, int64_t n0, int64_t n1, const Q8Rows& x, int64_t r0, int64_t r1,
                     float* out, int64_t ld_out) {
  TD_CHECK(takes_q8_activations(t), "linear_q8_block: {} is not an integer block format", dtype_name(t));
  q8_kernel(active_isa())(t, static_cast<const uint8_t*>(w), row_bytes_of(t, x.K), n0, n1, x, r0, r1, out, ld_out);
}

void linear_stored(const Tensor& x, const Tensor& w, const Tensor& out) {
  TD_CHECK(x.dtype == DType::F32 && x.ndim == 2 && x.is_contiguous() && x.device == Device::CPU,
           "linear_stored: input must be contiguous f32 [T, K] on the CPU, got {}", x.describe());
  TD_CHECK(out.dtype == DType::F32 && out.ndim == 2 && out.is_contiguous() && out.device == Device::CPU,
           "linear_stored: output must be contiguous f32 [T, N] on the CPU, got {}", out.describe());
  TD_CHECK(w.ndim == 2 && w.is_contiguous() && w.device == Device::CPU && stored_linear_supported(w.dtype),
           "linear_stored: weight must be a contiguous CPU matrix in a supported format, got {}", w.describe());
  const int64_t T = x.shape[0], K = x.shape[1], N = w.shape[0];
  TD_CHECK(w.shape[1] == K && out.shape[0] == T && out.shape[1] == N,
           "linear_stored: input {} . weight {}^T does not give output {}", x.describe(), w.describe(),
           out.describe());
  if (T == 0 || N == 0) return;
  const DType t = w.dtype;
  const Isa isa = active_isa();
  const auto* wp = static_cast<const uint8_t*>(w.data);
  const int64_t rb = row_bytes_of(t, K);
  float* op = out.ptr<float>();
  // Activation rows per pass: each thread sweeps its weight rows over this many activation rows, so that the rows
  // (quantized: K bytes each) stay in L2 while its weight rows stay in L1.
  constexpr int64_t kRowBlock = 64;
  constexpr int64_t kChunk = 16;  // weight rows per scheduling unit
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  if (takes_q8_activations(t)) {
    thread_local Q8Rows scratch;  // the calling thread's; workers read it through `xq`
    Q8Rows& xq = scratch;
    quantize_rows_q8(x.ptr<const float>(), T, K, K, xq);
    const Q8Fn fn = q8_kernel(isa);
    parallel_for(chunks, [&](int64_t c0, int64_t c1) {
      const int64_t n0 = c0 * kChunk, n1 = std::min(N, c1 * kChunk);
      for (int64_t r0 = 0; r0 < T; r0 += kRowBlock) fn(t, wp, rb, n0, n1, xq, r0, std::min(T, r0 + kRowBlock), op, N);
    });
  } else {
    const FloatFn fn = float_kernel(isa);
    const float* xp = x.ptr<const float>();
    parallel_for(chunks, [&](int64_t c0, int64_t c1) {
      const int64_t n0 = c0 * kChunk, n1 = std::min(N, c1 * kChunk);
      for (int64_t r0 = 0; r0 < T; r0 += kRowBlock) fn(t, wp, rb, n0, n1, xp, K, K, r0, std::min(T, r0 + kRowBlock), op, N);
    });
  }
}

}  // namespace tandem::cpu
