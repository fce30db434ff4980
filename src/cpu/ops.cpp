#include "cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/checks.h"
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

void embed(const Tensor& table, const Tensor& tokens, const Tensor& out) {
  check_f32_2d(table, "embedding table");
  check_f32_2d(out, "embed output");
  check_index_tensor("embed", "tokens", tokens, Device::CPU, DType::I32, out.shape[0]);
  const int64_t H = table.shape[1], T = tokens.numel();
  TD_CHECK(out.shape[1] == H, "embed: output {} for a table of width {}", out.describe(), H);
  const int32_t* ids = tokens.ptr<const int32_t>();
  for (int64_t t = 0; t < T; ++t) {
    TD_CHECK(ids[t] >= 0 && ids[t] < table.shape[0], "embed: token id {} outside the vocabulary (size {})", ids[t],
             table.shape[0]);
    std::memcpy(out.ptr<float>() + t * H, table.ptr<const float>() + int64_t(ids[t]) * H, size_t(H) * sizeof(float));
  }
}

void rmsnorm(const Tensor& x, const Tensor& w, float eps, const Tensor& out) {
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
      const float inv = float(1.0 / std::sqrt(ss / double(H) + double(eps)));
      for (int64_t i = 0; i < H; ++i) o[i] = wp[i] * (xr[i] * inv);
    }
  });
}

void linear(const Tensor& x, const Tensor& w, const Tensor& out) {
  check_f32_2d(x, "linear input");
  check_f32_2d(w, "linear weight");
  check_f32_2d(out, "linear output");
  const int64_t T = x.shape[0], K = x.shape[1], N = w.shape[0];
  TD_CHECK(w.shape[1] == K, "linear: input {} does not match weight {} (in features)", x.describe(), w.describe());
  TD_CHECK(out.shape[0] == T && out.shape[1] == N, "linear: output {} for input {} and weight {}", out.describe(),
           x.describe(), w.describe());
  const float* xp = x.ptr<const float>();
  const float* wp = w.ptr<const float>();
  float* op = out.ptr<float>();
  // Parallel over output features: each weight row is read once per step and reused for every token.
  parallel_for(
      N,
      [&](int64_t b, int64_t e) {
        for (int64_t n = b; n < e; ++n) {
          const float* wr = wp + n * K;
          for (int64_t t = 0; t < T; ++t) op[t * N + n] = dot(xp + t * K, wr, K);
        }
      },
      16);
}

void add_bias(const Tensor& x, const Tensor& bias) {
  check_f32_2d(x, "add_bias input");
  const int64_t T = x.shape[0], N = x.shape[1];
  TD_CHECK(bias.numel() == N && bias.dtype == DType::F32 && bias.device == Device::CPU,
           "add_bias: bias {} for x {}", bias.describe(), x.describe());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) x.ptr<float>()[t * N + n] += bias.ptr<const float>()[n];
}

void rope(const Tensor& qkv, const Tensor& positions, const Tensor& inv_freq, int n_heads, int n_kv_heads,
          int head_dim) {
  check_f32_2d(qkv, "rope input");
  const int64_t T = qkv.shape[0], half = head_dim / 2;
  check_index_tensor("rope", "positions", positions, Device::CPU, DType::I32, T);
  check_index_tensor("rope", "inv_freq", inv_freq, Device::CPU, DType::F32, half);
  TD_CHECK(qkv.shape[1] == (n_heads + 2 * int64_t(n_kv_heads)) * head_dim,
           "rope: qkv {} does not hold heads {}+2x{} of {}", qkv.describe(), n_heads, n_kv_heads, head_dim);
  const int32_t* pos = positions.ptr<const int32_t>();
  const float* freq = inv_freq.ptr<const float>();
  parallel_for(T, [&](int64_t b, int64_t e) {
    std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
    for (int64_t t = b; t < e; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        // HF: freqs = position * inv_freq in fp32, then cos/sin of that fp32 angle.
        const float angle = float(pos[t]) * freq[i];
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

void gather_rows(const Tensor& src, const Tensor& rows, const Tensor& out) {
  check_f32_2d(src, "gather_rows input");
  check_f32_2d(out, "gather_rows output");
  check_index_tensor("gather_rows", "rows", rows, Device::CPU, DType::I32, out.shape[0]);
  const int64_t T = src.shape[0], N = src.shape[1];
  TD_CHECK(out.shape[1] == N, "gather_rows: output {} for input {}", out.describe(), src.describe());
  for (int64_t r = 0; r < rows.numel(); ++r) {
    const int32_t i = rows.ptr<const int32_t>()[r];
    float* o = out.ptr<float>() + r * N;
    if (i < 0 || i >= T) std::fill(o, o + N, std::numeric_limits<float>::quiet_NaN());
    else std::memcpy(o, src.ptr<const float>() + int64_t(i) * N, size_t(N) * sizeof(float));
  }
}

void convert(const Tensor& src, const Tensor& dst) {
  TD_CHECK(src.device == Device::CPU && dst.device == Device::CPU && src.is_contiguous() && dst.is_contiguous() &&
               is_float_dtype(src.dtype) && is_float_dtype(dst.dtype) && src.numel() == dst.numel(),
           "convert: {} -> {} (contiguous f32/f16/bf16 CPU tensors of equal size)", src.describe(), dst.describe());
  for (int64_t i = 0; i < src.numel(); ++i) {
    const float v = load_f32(src, i);
    switch (dst.dtype) {
      case DType::F32: dst.ptr<float>()[i] = v; break;
      case DType::F16: dst.ptr<uint16_t>()[i] = f32_to_fp16(v); break;
      default: dst.ptr<uint16_t>()[i] = f32_to_bf16(v); break;
    }
  }
}

// Checks a paged-KV call and returns the token count. The cache is f32 on the CPU.
int64_t check_paged(const char* op, const Tensor& positions, const PagedKv& kv, const AttentionShape& s) {
  TD_CHECK(s.n_heads > 0 && s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0 && s.head_dim > 0 &&
               s.sliding_window >= 0,
           "{}: bad attention shape: {} q heads, {} kv heads (must divide), head_dim {}, sliding window {}", op,
           s.n_heads, s.n_kv_heads, s.head_dim, s.sliding_window);
  for (const Tensor* pool : {&kv.k, &kv.v}) {
    TD_CHECK(pool->device == Device::CPU && pool->dtype == DType::F32 && pool->ndim == 4 && pool->is_contiguous(),
             "{}: the KV pools must be contiguous 4-D f32 CPU views, got {}", op, pool->describe());
    const int64_t heads = kv.layout == KvLayout::NHD ? pool->shape[2] : pool->shape[1];
    const int64_t slots = kv.layout == KvLayout::NHD ? pool->shape[1] : pool->shape[2];
    TD_CHECK(heads == s.n_kv_heads && slots == kv.page_size && pool->shape[3] == s.head_dim,
             "{}: KV pool {} is not {} pages of {} slots x {} heads x {} ({})", op, pool->describe(),
             kv_layout_name(kv.layout), kv.page_size, s.n_kv_heads, s.head_dim, kv_layout_name(kv.layout));
  }
  TD_CHECK(kv.k.shape == kv.v.shape, "{}: K pool {} and V pool {} differ", op, kv.k.describe(), kv.v.describe());
  check_index_tensor(op, "positions", positions, Device::CPU, DType::I32, -1);
  const int64_t T = positions.numel();
  check_index_tensor(op, "token_batch", kv.token_batch, Device::CPU, DType::I32, T);
  check_index_tensor(op, "page_indptr", kv.page_indptr, Device::CPU, DType::I32, -1);
  check_index_tensor(op, "page_indices", kv.page_indices, Device::CPU, DType::I32, -1);
  TD_CHECK(kv.page_indptr.numel() >= 1, "{}: page_indptr is empty", op);
  return T;
}

// Element offset of (position, kv head) of token t's sequence, or -1 when the tables do not name a slot.
int64_t slot_offset(const PagedKv& kv, const KvStrides& st, int64_t t, int64_t pos, int64_t kvh) {
  const int32_t b = kv.token_batch.ptr<const int32_t>()[t];
  if (pos < 0 || b < 0 || b >= kv.batch()) return -1;
  const int32_t* indptr = kv.page_indptr.ptr<const int32_t>();
  const int64_t page_pos = pos / kv.page_size;
  if (page_pos >= indptr[b + 1] - indptr[b]) return -1;
  const int64_t entry = indptr[b] + page_pos;
  if (entry < 0 || entry >= kv.page_indices.numel()) return -1;
  const int32_t page = kv.page_indices.ptr<const int32_t>()[entry];
  if (page < 0 || page >= kv.k.shape[0]) return -1;
  return page * st.page + (pos % kv.page_size) * st.slot + kvh * st.head;
}

void kv_write(const Tensor& qkv, const Tensor& positions, const PagedKv& kv, const AttentionShape& s) {
  const int64_t T = check_paged("kv_write", positions, kv, s);
  check_f32_2d(qkv, "kv_write qkv");
  const int64_t q_dim = int64_t(s.n_heads) * s.head_dim, kv_dim = int64_t(s.n_kv_heads) * s.head_dim;
  TD_CHECK(qkv.shape[0] == T && qkv.shape[1] == q_dim + 2 * kv_dim, "kv_write: qkv {} for {} tokens of {} + 2x{}",
           qkv.describe(), T, q_dim, kv_dim);
  const KvStrides st = kv_strides(kv.k, kv.layout);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t pos = positions.ptr<const int32_t>()[t];
    const float* k = qkv.ptr<const float>() + t * qkv.shape[1] + q_dim;
    for (int64_t h = 0; h < s.n_kv_heads; ++h) {
      const int64_t off = slot_offset(kv, st, t, pos, h);
      if (off < 0) break;  // never written out of bounds; attention writes NaN for such a token
      std::memcpy(kv.k.ptr<float>() + off, k + h * s.head_dim, size_t(s.head_dim) * sizeof(float));
      std::memcpy(kv.v.ptr<float>() + off, k + kv_dim + h * s.head_dim, size_t(s.head_dim) * sizeof(float));
    }
  }
}

void attention(const Tensor& qkv, const Tensor& positions, const PagedKv& kv, const AttentionShape& s,
               const Tensor& out) {
  const int64_t T = check_paged("attention", positions, kv, s);
  check_f32_2d(qkv, "attention qkv");
  check_f32_2d(out, "attention output");
  const int64_t D = s.head_dim, q_dim = int64_t(s.n_heads) * D, kv_dim = int64_t(s.n_kv_heads) * D;
  TD_CHECK(qkv.shape[0] == T && qkv.shape[1] == q_dim + 2 * kv_dim, "attention: qkv {} for {} tokens of {} + 2x{}",
           qkv.describe(), T, q_dim, kv_dim);
  TD_CHECK(out.shape[0] == T && out.shape[1] == q_dim, "attention: output {} for {} tokens of {}", out.describe(), T,
           q_dim);
  const KvStrides st = kv_strides(kv.k, kv.layout);
  const int64_t group = s.n_heads / s.n_kv_heads;
  const float scale = 1.0f / std::sqrt(float(D));
  parallel_for(T, [&](int64_t b, int64_t e) {
    std::vector<float> scores;
    std::vector<int64_t> offs;
    for (int64_t t = b; t < e; ++t) {
      const int64_t pos = positions.ptr<const int32_t>()[t];
      const int64_t lo = s.sliding_window > 0 ? std::max<int64_t>(0, pos - s.sliding_window + 1) : 0;
      float* o = out.ptr<float>() + t * q_dim;
      for (int64_t kvh = 0; kvh < s.n_kv_heads; ++kvh) {
        // Slot of every visible key of this head; any missing one makes the row NaN (bad tables are loud).
        offs.clear();
        bool bad = pos < 0;
        for (int64_t p = lo; p <= pos && !bad; ++p) {
          offs.push_back(slot_offset(kv, st, t, p, kvh));
          bad = offs.back() < 0;
        }
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
          float* oh = o + h * D;
          if (bad) {
            std::fill(oh, oh + D, std::numeric_limits<float>::quiet_NaN());
            continue;
          }
          const float* qh = qkv.ptr<const float>() + t * qkv.shape[1] + h * D;
          scores.resize(offs.size());
          float m = -INFINITY;
          for (size_t j = 0; j < offs.size(); ++j) {
            scores[j] = dot(qh, kv.k.ptr<const float>() + offs[j], D) * scale;
            m = std::max(m, scores[j]);
          }
          float denom = 0.0f;
          for (float& sc : scores) denom += (sc = std::exp(sc - m));
          std::fill(oh, oh + D, 0.0f);
          for (size_t j = 0; j < offs.size(); ++j) {
            const float w = scores[j] / denom;
            const float* vp = kv.v.ptr<const float>() + offs[j];
            for (int64_t d = 0; d < D; ++d) oh[d] += w * vp[d];
          }
        }
      }
    }
  });
}

void kv_gather(const Tensor& positions, const PagedKv& kv, const AttentionShape& s, const Tensor& out) {
  const int64_t T = check_paged("kv_gather", positions, kv, s);
  check_f32_2d(out, "kv_gather output");
  const int64_t kv_dim = int64_t(s.n_kv_heads) * s.head_dim;
  TD_CHECK(out.shape[0] == T && out.shape[1] == 2 * kv_dim, "kv_gather: output {} for {} tokens of 2x{}",
           out.describe(), T, kv_dim);
  const KvStrides st = kv_strides(kv.k, kv.layout);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t pos = positions.ptr<const int32_t>()[t];
    float* o = out.ptr<float>() + t * 2 * kv_dim;
    for (int64_t h = 0; h < s.n_kv_heads; ++h) {
      const int64_t off = slot_offset(kv, st, t, pos, h);
      float* ok = o + h * s.head_dim;
      float* ov = o + kv_dim + h * s.head_dim;
      if (off < 0) {
        std::fill(ok, ok + s.head_dim, std::numeric_limits<float>::quiet_NaN());
        std::fill(ov, ov + s.head_dim, std::numeric_limits<float>::quiet_NaN());
        continue;
      }
      std::memcpy(ok, kv.k.ptr<const float>() + off, size_t(s.head_dim) * sizeof(float));
      std::memcpy(ov, kv.v.ptr<const float>() + off, size_t(s.head_dim) * sizeof(float));
    }
  }
}

// ---------------------------------------------------------------------------------------------------- fused twins
// The fused CUDA launchers' twins are their definitions: the standard ops in sequence.

void qkv_rope_kv_write(const Tensor& qkv, const Tensor& bias, const Tensor& positions, const Tensor& inv_freq,
                       const PagedKv& kv, const AttentionShape& shape) {
  if (bias.data) add_bias(qkv, bias);
  rope(qkv, positions, inv_freq, shape.n_heads, shape.n_kv_heads, shape.head_dim);
  kv_write(qkv, positions, kv, shape);
}

void add_rmsnorm(const Tensor& x, const Tensor& delta, const Tensor& w, float eps, const Tensor& out) {
  add(x, delta, x);
  rmsnorm(x, w, eps, out);
}

void gate_up_silu(const Tensor& x, const Tensor& w, const Tensor& out) {
  TD_CHECK(x.dtype == DType::F32 && w.dtype == DType::F32 && x.ndim == 2 && w.ndim == 2,
           "gate_up_silu: f32 [T, H] and [2I, H], got {} and {}", x.describe(), w.describe());
  HostTensor gate_up = HostTensor::empty(DType::F32, {x.shape[0], w.shape[0]});
  linear(x, w, gate_up.view());
  silu_mul(gate_up.view(), out);
}

}  // namespace tandem::cpu
