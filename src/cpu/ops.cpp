#include "cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/parallel.h"

namespace tandem::cpu {
namespace {
void check_f32_2d(const Tensor& t, const char* what) {
  TD_CHECK(t.device == Device::CPU && t.dtype == DType::F32 && t.ndim == 2 && t.is_contiguous(),
           "reference op: {} must be a contiguous 2-D f32 CPU tensor, got {}", what, t.describe());
}
}  // namespace

float dot(const float* a, const float* b, int64_t n) {
  // Sixteen independent partial sums: vectorizes without -ffast-math and keeps the order fixed.
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0.0f;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

void embed(const Tensor& table, std::span<const int32_t> tokens, const Tensor& out) {
  check_f32_2d(table, "embedding table");
  check_f32_2d(out, "embed output");
  const int64_t H = table.shape[1];
  TD_CHECK(out.shape[0] == int64_t(tokens.size()) && out.shape[1] == H, "embed: output {} for {} tokens of width {}",
           out.describe(), tokens.size(), H);
  for (size_t t = 0; t < tokens.size(); ++t) {
    TD_CHECK(tokens[t] >= 0 && tokens[t] < table.shape[0], "embed: token id {} outside the vocabulary (size {})",
             tokens[t], table.shape[0]);
    std::memcpy(out.ptr<float>() + int64_t(t) * H, table.ptr<const float>() + int64_t(tokens[t]) * H,
                size_t(H) * sizeof(float));
  }
}

void rmsnorm(const Tensor& x, const Tensor& w, double eps, const Tensor& out) {
  check_f32_2d(x, "rmsnorm input");
  check_f32_2d(out, "rmsnorm output");
  const int64_t T = x.shape[0], H = x.shape[1];
  TD_CHECK(w.numel() == H && w.dtype == DType::F32, "rmsnorm: weight {} for width {}", w.describe(), H);
  TD_CHECK(out.shape[0] == T && out.shape[1] == H, "rmsnorm: output {} for input {}", out.describe(), x.describe());
  const float* wp = w.ptr<const float>();
  parallel_for(T, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* xr = x.ptr<const float>() + t * H;
      float* o = out.ptr<float>() + t * H;
      double ss = 0;
      for (int64_t i = 0; i < H; ++i) ss += double(xr[i]) * xr[i];
      const float inv = float(1.0 / std::sqrt(ss / double(H) + eps));
      for (int64_t i = 0; i < H; ++i) o[i] = wp[i] * (xr[i] * inv);
    }
  });
}

void linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out) {
  check_f32_2d(x, "linear input");
  check_f32_2d(w, "linear weight");
  check_f32_2d(out, "linear output");
  const int64_t T = x.shape[0], K = x.shape[1], N = w.shape[0];
  TD_CHECK(w.shape[1] == K, "linear: input {} does not match weight {} (in features)", x.describe(), w.describe());
  TD_CHECK(out.shape[0] == T && out.shape[1] == N, "linear: output {} for input {} and weight {}", out.describe(),
           x.describe(), w.describe());
  const bool has_bias = bias.data != nullptr;
  TD_CHECK(!has_bias || (bias.numel() == N && bias.dtype == DType::F32), "linear: bias {} for {} outputs",
           bias.describe(), N);
  const float* xp = x.ptr<const float>();
  const float* wp = w.ptr<const float>();
  float* op = out.ptr<float>();
  // Parallel over output features: each weight row is read once per step and reused for every token.
  parallel_for(
      N,
      [&](int64_t b, int64_t e) {
        for (int64_t n = b; n < e; ++n) {
          const float* wr = wp + n * K;
          const float bn = has_bias ? bias.ptr<const float>()[n] : 0.0f;
          for (int64_t t = 0; t < T; ++t) op[t * N + n] = dot(xp + t * K, wr, K) + bn;
        }
      },
      16);
}

void rope(const Tensor& qkv, std::span<const int32_t> positions, std::span<const float> inv_freq, int64_t n_heads,
          int64_t n_kv_heads, int64_t head_dim) {
  check_f32_2d(qkv, "rope input");
  const int64_t T = qkv.shape[0], half = head_dim / 2;
  TD_CHECK(int64_t(positions.size()) == T && int64_t(inv_freq.size()) == half &&
               qkv.shape[1] == (n_heads + 2 * n_kv_heads) * head_dim,
           "rope: qkv {} with {} positions, {} frequencies, heads {}+2x{} of {}", qkv.describe(), positions.size(),
           inv_freq.size(), n_heads, n_kv_heads, head_dim);
  parallel_for(T, [&](int64_t b, int64_t e) {
    std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
    for (int64_t t = b; t < e; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        // HF: freqs = position * inv_freq in fp32, then cos/sin of that fp32 angle.
        const float angle = float(positions[size_t(t)]) * inv_freq[size_t(i)];
        c[size_t(i)] = std::cos(angle);
        s[size_t(i)] = std::sin(angle);
      }
      float* row = qkv.ptr<float>() + t * qkv.shape[1];
      for (int64_t h = 0; h < n_heads + n_kv_heads; ++h) {  // q heads then k heads: contiguous in the row
        float* x = row + h * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = x[i], x2 = x[i + half];
          x[i] = x1 * c[size_t(i)] - x2 * s[size_t(i)];
          x[i + half] = x2 * c[size_t(i)] + x1 * s[size_t(i)];
        }
      }
    }
  });
}

void silu_mul(const Tensor& gate_up, const Tensor& out) {
  check_f32_2d(gate_up, "silu_mul input");
  check_f32_2d(out, "silu_mul output");
  const int64_t T = gate_up.shape[0], I = out.shape[1];
  TD_CHECK(gate_up.shape[1] == 2 * I && out.shape[0] == T, "silu_mul: input {} output {}", gate_up.describe(),
           out.describe());
  parallel_for(T, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* g = gate_up.ptr<const float>() + t * 2 * I;
      const float* u = g + I;
      float* o = out.ptr<float>() + t * I;
      for (int64_t i = 0; i < I; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
  });
}

void add(const Tensor& a, const Tensor& b, const Tensor& out) {
  TD_CHECK(a.numel() == b.numel() && a.numel() == out.numel() && a.dtype == DType::F32 && b.dtype == DType::F32 &&
               out.dtype == DType::F32,
           "add: shapes {} + {} -> {}", a.describe(), b.describe(), out.describe());
  const int64_t n = a.numel();
  for (int64_t i = 0; i < n; ++i) out.ptr<float>()[i] = a.ptr<const float>()[i] + b.ptr<const float>()[i];
}

void attention_row(const float* q, const float* k, const float* v, int64_t lo, int64_t hi, int64_t n_heads,
                   int64_t n_kv_heads, int64_t head_dim, float* scratch, float* out) {
  const int64_t group = n_heads / n_kv_heads, kv_dim = n_kv_heads * head_dim;
  const float scale = 1.0f / std::sqrt(float(head_dim));
  for (int64_t h = 0; h < n_heads; ++h) {
    const int64_t kvh = h / group;
    const float* qh = q + h * head_dim;
    float m = -INFINITY;
    for (int64_t p = lo; p < hi; ++p) {
      const float score = dot(qh, k + p * kv_dim + kvh * head_dim, head_dim) * scale;
      scratch[p - lo] = score;
      m = std::max(m, score);
    }
    float denom = 0.0f;
    for (int64_t p = lo; p < hi; ++p) denom += (scratch[p - lo] = std::exp(scratch[p - lo] - m));
    float* oh = out + h * head_dim;
    std::fill(oh, oh + head_dim, 0.0f);
    for (int64_t p = lo; p < hi; ++p) {
      const float w = scratch[p - lo] / denom;
      const float* vp = v + p * kv_dim + kvh * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) oh[d] += w * vp[d];
    }
  }
}

}  // namespace tandem::cpu
