// Block layouts from ggml-common.h; arithmetic mirrors ggml-quants.c dequantize_row_* operation for operation
// (f32 products of an exactly widened f16 scale and a small integer, then one add/sub) so results are
// bit-identical to ggml's scalar path and to gguf-py's numpy dequantizer.
#include "io/dequant.h"

#include <cstring>
#include <vector>

#include "core/parallel.h"

// Exactness does not depend on FMA contraction: every product here is exact in f32 (an 11-bit f16 significand
// times a scale/quant of at most 8 + 6 bits), so d*q + m rounds once whether fused or not. The one product
// that can round (Q6_K's (d*sc)*q) has no add to fuse with.

namespace tandem {
namespace {

constexpr int QK = 32;    // QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0
constexpr int QK_K = 256;

inline float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16_to_f32(h);
}

// block_q4_0 {f16 d; u8 qs[16]}: x = (nibble - 8) * d; low nibbles are elements 0..15, high 16..31.
void deq_q4_0(const uint8_t* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += 18, y += QK) {
    const float d = f16_at(x);
    const uint8_t* qs = x + 2;
    for (int j = 0; j < QK / 2; ++j) {
      const int x0 = (qs[j] & 0x0F) - 8;
      const int x1 = (qs[j] >> 4) - 8;
      y[j] = float(x0) * d;
      y[j + QK / 2] = float(x1) * d;
    }
  }
}

// block_q4_1 {f16 d; f16 m; u8 qs[16]}: x = nibble * d + m.
void deq_q4_1(const uint8_t* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += 20, y += QK) {
    const float d = f16_at(x);
    const float m = f16_at(x + 2);
    const uint8_t* qs = x + 4;
    for (int j = 0; j < QK / 2; ++j) {
      const int x0 = qs[j] & 0x0F;
      const int x1 = qs[j] >> 4;
      y[j] = float(x0) * d + m;
      y[j + QK / 2] = float(x1) * d + m;
    }
  }
}

// block_q5_0 {f16 d; u8 qh[4]; u8 qs[16]}: 5th bit of element j is bit j of the little-endian u32 qh.
void deq_q5_0(const uint8_t* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += 22, y += QK) {
    const float d = f16_at(x);
    uint32_t qh;
    std::memcpy(&qh, x + 2, 4);
    const uint8_t* qs = x + 6;
    for (int j = 0; j < QK / 2; ++j) {
      const uint8_t xh0 = uint8_t(((qh >> j) << 4) & 0x10);
      const uint8_t xh1 = uint8_t((qh >> (j + 12)) & 0x10);
      const int x0 = ((qs[j] & 0x0F) | xh0) - 16;
      const int x1 = ((qs[j] >> 4) | xh1) - 16;
      y[j] = float(x0) * d;
      y[j + QK / 2] = float(x1) * d;
    }
  }
}

// block_q5_1 {f16 d; f16 m; u8 qh[4]; u8 qs[16]}: x = q5 * d + m.
void deq_q5_1(const uint8_t* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += 24, y += QK) {
    const float d = f16_at(x);
    const float m = f16_at(x + 2);
    uint32_t qh;
    std::memcpy(&qh, x + 4, 4);
    const uint8_t* qs = x + 8;
    for (int j = 0; j < QK / 2; ++j) {
      const uint8_t xh0 = uint8_t(((qh >> j) << 4) & 0x10);
      const uint8_t xh1 = uint8_t((qh >> (j + 12)) & 0x10);
      const int x0 = (qs[j] & 0x0F) | xh0;
      const int x1 = (qs[j] >> 4) | xh1;
      y[j] = float(x0) * d + m;
      y[j + QK / 2] = float(x1) * d + m;
    }
  }
}

// block_q8_0 {f16 d; i8 qs[32]}: x = q * d.
void deq_q8_0(const uint8_t* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += 34, y += QK) {
    const float d = f16_at(x);
    const int8_t* qs = reinterpret_cast<const int8_t*>(x + 2);
    for (int j = 0; j < QK; ++j) y[j] = float(qs[j]) * d;
  }
}

// 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes of Q4_K/Q5_K.
inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = uint8_t((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
  }
}

// block_q4_K {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}: 8 sub-blocks of 32; each 64-element chunk takes 32
// bytes of qs, low nibbles first; x = (d*sc) * q - (dmin*m).
void deq_q4_k(const uint8_t* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += 144) {
    const float d = f16_at(x);
    const float min = f16_at(x + 2);
    const uint8_t* scales = x + 4;
    const uint8_t* q = x + 16;
    int is = 0;
    uint8_t sc, m;
    for (int j = 0; j < QK_K; j += 64) {
      get_scale_min_k4(is + 0, scales, &sc, &m);
      const float d1 = d * float(sc), m1 = min * float(m);
      get_scale_min_k4(is + 1, scales, &sc, &m);
      const float d2 = d * float(sc), m2 = min * float(m);
      for (int l = 0; l < 32; ++l) *y++ = d1 * float(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * float(q[l] >> 4) - m2;
      q += 32;
      is += 2;
    }
  }
}

// block_q5_K {f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: as Q4_K plus a 5th bit; element l of
// chunk c (0..7 over 32-element groups) takes bit c of qh[l].
void deq_q5_k(const uint8_t* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += 176) {
    const float d = f16_at(x);
    const float min = f16_at(x + 2);
    const uint8_t* scales = x + 4;
    const uint8_t* qh = x + 16;
    const uint8_t* ql = x + 48;
    int is = 0;
    uint8_t sc, m;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0; j < QK_K; j += 64) {
      get_scale_min_k4(is + 0, scales, &sc, &m);
      const float d1 = d * float(sc), m1 = min * float(m);
      get_scale_min_k4(is + 1, scales, &sc, &m);
      const float d2 = d * float(sc), m2 = min * float(m);
      for (int l = 0; l < 32; ++l) *y++ = d1 * float((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * float((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
      ql += 32;
      is += 2;
      u1 = uint8_t(u1 << 2);
      u2 = uint8_t(u2 << 2);
    }
  }
}

// block_q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: two 128-element halves; x = (d*sc) * (q6 - 32).
void deq_q6_k(const uint8_t* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += 210) {
    const float d = f16_at(x + 208);
    const uint8_t* ql = x;
    const uint8_t* qh = x + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(x + 192);
    for (int n = 0; n < QK_K; n += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = int8_t((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = int8_t((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = int8_t((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = int8_t((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l + 0] = d * float(sc[is + 0]) * float(q1);
        y[l + 32] = d * float(sc[is + 2]) * float(q2);
        y[l + 64] = d * float(sc[is + 4]) * float(q3);
        y[l + 96] = d * float(sc[is + 6]) * float(q4);
      }
      y += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
}

}  // namespace

bool dequant_supported(DType type) {
  switch (type) {
    case DType::F32: case DType::F16: case DType::BF16: case DType::Q4_0: case DType::Q4_1: case DType::Q5_0:
    case DType::Q5_1: case DType::Q8_0: case DType::Q4_K: case DType::Q5_K: case DType::Q6_K: return true;
    default: return false;
  }
}

std::span<const int> block_f16_scale_offsets(DType type) {
  static constexpr int kD[] = {0};      // Q4_0, Q5_0, Q8_0: d first
  static constexpr int kDM[] = {0, 2};  // Q4_1, Q5_1 (d, m); Q4_K, Q5_K (d, dmin)
  static constexpr int kQ6K[] = {208};  // Q6_K: d last, after ql, qh and scales
  switch (type) {
    case DType::Q4_0:
    case DType::Q5_0:
    case DType::Q8_0: return kD;
    case DType::Q4_1:
    case DType::Q5_1:
    case DType::Q4_K:
    case DType::Q5_K: return kDM;
    case DType::Q6_K: return kQ6K;
    default: return {};
  }
}

void dequantize_row(DType type, const void* src, float* dst, int64_t n) {
  TD_CHECK(dequant_supported(type), "dequantize: unsupported dtype {}", dtype_name(type));
  TD_CHECK(n >= 0, "dequantize: negative element count {}", n);
  const int64_t block = dtype_block_elems(type);
  TD_CHECK(n % block == 0, "dequantize: {} elements of {} is not a whole number of {}-element blocks", n,
           dtype_name(type), block);
  const auto* x = static_cast<const uint8_t*>(src);
  const int64_t nb = n / block;
  switch (type) {
    case DType::F32: std::memcpy(dst, src, size_t(n) * 4); break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_at(x + 2 * i);
      break;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, x + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      break;
    case DType::Q4_0: deq_q4_0(x, dst, nb); break;
    case DType::Q4_1: deq_q4_1(x, dst, nb); break;
    case DType::Q5_0: deq_q5_0(x, dst, nb); break;
    case DType::Q5_1: deq_q5_1(x, dst, nb); break;
    case DType::Q8_0: deq_q8_0(x, dst, nb); break;
    case DType::Q4_K: deq_q4_k(x, dst, nb); break;
    case DType::Q5_K: deq_q5_k(x, dst, nb); break;
    case DType::Q6_K: deq_q6_k(x, dst, nb); break;
    default: break;
  }
}

HostTensor dequantize_to_f32(const Tensor& src) {
  TD_CHECK(src.device == Device::CPU, "dequantize_to_f32 needs a CPU tensor, got {}", src.describe());
  TD_CHECK(src.is_contiguous(), "dequantize_to_f32 needs a contiguous tensor, got {}", src.describe());
  TD_CHECK(dequant_supported(src.dtype), "dequantize_to_f32: unsupported dtype {} ({})", dtype_name(src.dtype),
           src.describe());
  const int64_t block = dtype_block_elems(src.dtype);
  const int64_t row = src.ndim == 0 ? 1 : src.shape[size_t(src.ndim - 1)];
  TD_CHECK(row % block == 0, "dequantize_to_f32: row length {} of {} is not a multiple of the block size {}", row,
           src.describe(), block);
  HostTensor out = HostTensor::empty(DType::F32, std::span<const int64_t>(src.shape.data(), size_t(src.ndim)));
  const int64_t numel = src.numel();
  if (numel == 0) return out;
  const int64_t rows = numel / row;
  const int64_t row_bytes = row / block * dtype_block_bytes(src.dtype);
  const auto* base = static_cast<const uint8_t*>(src.data);
  float* dst = out.f32();
  parallel_for(
      rows,
      [&](int64_t r0, int64_t r1) {
        dequantize_row(src.dtype, base + r0 * row_bytes, dst + r0 * row, (r1 - r0) * row);
      },
      std::max<int64_t>(1, 65536 / row));
  return out;
}

namespace {
// Moves rows within each head: out[dst_row(r)] = in[r] for every head-local row r.
template <typename DstRow>
void shuffle_heads(float* w, int64_t rows, int64_t cols, int64_t n_heads, const char* what, DstRow dst_row) {
  TD_CHECK(n_heads > 0 && rows > 0 && cols > 0 && rows % n_heads == 0,
           "{}: rows {} must be a positive multiple of n_heads {} (cols {})", what, rows, n_heads, cols);
  const int64_t head_dim = rows / n_heads;
  TD_CHECK(head_dim % 2 == 0, "{}: head_dim {} (rows {} / n_heads {}) must be even", what, head_dim, rows, n_heads);
  std::vector<float> tmp(size_t(head_dim * cols));
  for (int64_t h = 0; h < n_heads; ++h) {
    float* head = w + h * head_dim * cols;
    std::memcpy(tmp.data(), head, tmp.size() * sizeof(float));
    for (int64_t r = 0; r < head_dim; ++r)
      std::memcpy(head + dst_row(r, head_dim / 2) * cols, tmp.data() + r * cols, size_t(cols) * sizeof(float));
  }
}
}  // namespace

void permute_qk_rows(float* w, int64_t rows, int64_t cols, int64_t n_heads) {
  // HF row t*half + j -> GGUF row 2*j + t.
  shuffle_heads(w, rows, cols, n_heads, "permute_qk_rows",
                [](int64_t r, int64_t half) { return 2 * (r % half) + r / half; });
}

void unpermute_qk_rows(float* w, int64_t rows, int64_t cols, int64_t n_heads) {
  // GGUF row 2*j + t -> HF row t*half + j.
  shuffle_heads(w, rows, cols, n_heads, "unpermute_qk_rows",
                [](int64_t r, int64_t half) { return (r % 2) * half + r / 2; });
}

}  // namespace tandem
