#include "io/dequant.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "io/gguf.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;
using testing::HasSubstr;

using Bytes = std::vector<uint8_t>;

void put_f16(Bytes& b, size_t at, float v) {
  const uint16_t h = f32_to_fp16(v);
  ASSERT_EQ(fp16_to_f32(h), v) << "test scale " << v << " is not exact in f16";
  std::memcpy(b.data() + at, &h, 2);
}

std::vector<float> deq(DType t, const Bytes& b, int64_t n) {
  std::vector<float> y(size_t(n), std::nanf(""));
  dequantize_row(t, b.data(), y.data(), n);
  return y;
}

// Bitwise equality (distinguishes -0 and +0) with a readable failure.
void expect_same(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    uint32_t a, b;
    std::memcpy(&a, &got[i], 4);
    std::memcpy(&b, &want[i], 4);
    if (a != b && ++bad <= 5) ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want " << want[i];
  }
  EXPECT_EQ(bad, 0) << what;
}

// ---------------------------------------------------------------------------------------------------------------
// Hand-built blocks. Expected values come from the block layouts (ggml-common.h) written out per element.

TEST(DequantBlocks, Q4_0) {
  Bytes b(18);
  put_f16(b, 0, -0.5f);
  for (int j = 0; j < 16; ++j) b[size_t(2 + j)] = uint8_t(j | ((15 - j) << 4));
  const auto y = deq(DType::Q4_0, b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[size_t(j)], float(j - 8) * -0.5f) << j;            // low nibble: element j
    EXPECT_EQ(y[size_t(j + 16)], float(15 - j - 8) * -0.5f) << j;  // high nibble: element j + 16
  }
  EXPECT_EQ(y[0], 4.0f);     // (0 - 8) * -0.5
  EXPECT_EQ(y[15], -3.5f);   // (15 - 8) * -0.5
  EXPECT_EQ(y[16], -3.5f);   // (15 - 8) * -0.5
  EXPECT_EQ(y[31], 4.0f);    // (0 - 8) * -0.5
}

TEST(DequantBlocks, Q4_1) {
  Bytes b(20);
  put_f16(b, 0, 0.25f);
  put_f16(b, 2, -1.5f);
  for (int j = 0; j < 16; ++j) b[size_t(4 + j)] = uint8_t(j | (((7 * j) % 16) << 4));
  const auto y = deq(DType::Q4_1, b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[size_t(j)], float(j) * 0.25f - 1.5f) << j;
    EXPECT_EQ(y[size_t(j + 16)], float((7 * j) % 16) * 0.25f - 1.5f) << j;
  }
  EXPECT_EQ(y[0], -1.5f);
  EXPECT_EQ(y[15], 2.25f);
  EXPECT_EQ(y[17], 0.25f);  // nibble 7
}

// Q5_0/Q5_1: the 5th bit of element e is bit e of the little-endian u32 qh.
constexpr uint32_t kQh = 0xA5C3F00Fu;
int q5(int e, const Bytes& b, size_t qs_at) {
  const int j = e % 16;
  const int nib = e < 16 ? (b[qs_at + size_t(j)] & 0xF) : (b[qs_at + size_t(j)] >> 4);
  return nib | int(((kQh >> e) & 1u) << 4);
}

TEST(DequantBlocks, Q5_0) {
  Bytes b(22);
  put_f16(b, 0, -2.0f);
  std::memcpy(b.data() + 2, &kQh, 4);
  for (int j = 0; j < 16; ++j) b[size_t(6 + j)] = uint8_t(j | ((15 - j) << 4));
  const auto y = deq(DType::Q5_0, b, 32);
  for (int e = 0; e < 32; ++e) EXPECT_EQ(y[size_t(e)], float(q5(e, b, 6) - 16) * -2.0f) << e;
  EXPECT_EQ(y[0], -0.0f);    // nibble 0 | bit0=1 -> 16 - 16 = 0, times -2 -> -0
  EXPECT_TRUE(std::signbit(y[0]));
  EXPECT_EQ(y[4], 24.0f);    // nibble 4, bit4=0 -> -12 * -2
  EXPECT_EQ(y[16], -30.0f);  // high nibble 15 | bit16=1 -> 31 - 16 = 15, times -2
  EXPECT_EQ(y[20], 10.0f);   // high nibble 11, bit20=0 -> -5 * -2
}

TEST(DequantBlocks, Q5_1) {
  Bytes b(24);
  put_f16(b, 0, 0.5f);
  put_f16(b, 2, -3.0f);
  std::memcpy(b.data() + 4, &kQh, 4);
  for (int j = 0; j < 16; ++j) b[size_t(8 + j)] = uint8_t(((3 * j) % 16) | (j << 4));
  const auto y = deq(DType::Q5_1, b, 32);
  for (int e = 0; e < 32; ++e) EXPECT_EQ(y[size_t(e)], float(q5(e, b, 8)) * 0.5f - 3.0f) << e;
  EXPECT_EQ(y[0], 5.0f);    // nibble 0 | 16 -> 16 * 0.5 - 3
  EXPECT_EQ(y[31], 12.5f);  // high nibble 15 | bit31 -> 31 * 0.5 - 3
}

TEST(DequantBlocks, Q8_0) {
  Bytes b(34);
  put_f16(b, 0, -0.125f);
  for (int j = 0; j < 32; ++j) b[size_t(2 + j)] = uint8_t(int8_t(j * 8 - 128));
  const auto y = deq(DType::Q8_0, b, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[size_t(j)], float(j * 8 - 128) * -0.125f) << j;
  EXPECT_EQ(y[0], 16.0f);
  EXPECT_EQ(y[31], -15.0f);
}

// Packs 8 six-bit scales and mins the way Q4_K/Q5_K store them (ggml-quants.c make_qkx*, inverse of
// get_scale_min_k4).
void pack_scales_k4(uint8_t* q, const std::array<int, 8>& sc, const std::array<int, 8>& m) {
  for (int j = 0; j < 4; ++j) {
    q[j] = uint8_t(sc[size_t(j)] | ((sc[size_t(j + 4)] >> 4) << 6));
    q[j + 4] = uint8_t(m[size_t(j)] | ((m[size_t(j + 4)] >> 4) << 6));
    q[j + 8] = uint8_t((sc[size_t(j + 4)] & 0xF) | ((m[size_t(j + 4)] & 0xF) << 4));
  }
}
constexpr std::array<int, 8> kSc{1, 10, 33, 63, 17, 42, 5, 60};
constexpr std::array<int, 8> kMin{0, 63, 7, 20, 48, 3, 31, 16};

TEST(DequantBlocks, Q4_K) {
  Bytes b(144);
  const float d = 0.5f, dmin = -0.25f;
  put_f16(b, 0, d);
  put_f16(b, 2, dmin);
  pack_scales_k4(b.data() + 4, kSc, kMin);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) b[size_t(16 + 32 * c + l)] = uint8_t((l % 16) | (((3 * l + c) % 16) << 4));
  const auto y = deq(DType::Q4_K, b, 256);
  // Element e: sub-block s = e / 32 (scale kSc[s], min kMin[s]); chunk c = s / 2 owns qs[32c, 32c + 32);
  // even sub-blocks take the low nibbles, odd ones the high nibbles.
  for (int e = 0; e < 256; ++e) {
    const int s = e / 32, l = e % 32;
    const uint8_t byte = b[size_t(16 + 32 * (s / 2) + l)];
    const int q = s % 2 == 0 ? byte & 0xF : byte >> 4;
    EXPECT_EQ(y[size_t(e)], (d * float(kSc[size_t(s)])) * float(q) - dmin * float(kMin[size_t(s)])) << e;
  }
  EXPECT_EQ(y[1], 0.5f);              // s=0: 0.5*1*1 - (-0.25*0)
  EXPECT_EQ(y[32], 15.75f);           // s=1: q = (0*3+0)%16 = 0 -> 0 + 0.25*63
  EXPECT_EQ(y[255], 4.0f);            // s=7: high nibble of 15 | (96 % 16) << 4 is 0 -> 0 - (-0.25 * 16)
}

TEST(DequantBlocks, Q5_K) {
  Bytes b(176);
  const float d = -0.0625f, dmin = 0.125f;
  put_f16(b, 0, d);
  put_f16(b, 2, dmin);
  pack_scales_k4(b.data() + 4, kSc, kMin);
  for (int l = 0; l < 32; ++l) b[size_t(16 + l)] = uint8_t(0x5A ^ (l * 37));  // qh
  for (int i = 0; i < 128; ++i) b[size_t(48 + i)] = uint8_t(i * 29 + 11);      // qs
  const auto y = deq(DType::Q5_K, b, 256);
  // As Q4_K, plus bit s of qh[l] as the 5th bit of element e = 32*s + l.
  for (int e = 0; e < 256; ++e) {
    const int s = e / 32, l = e % 32;
    const uint8_t byte = b[size_t(48 + 32 * (s / 2) + l)];
    const int q = (s % 2 == 0 ? byte & 0xF : byte >> 4) + (((b[size_t(16 + l)] >> s) & 1) ? 16 : 0);
    EXPECT_EQ(y[size_t(e)], (d * float(kSc[size_t(s)])) * float(q) - dmin * float(kMin[size_t(s)])) << e;
  }
}

TEST(DequantBlocks, Q6_K) {
  Bytes b(210);
  for (int i = 0; i < 128; ++i) b[size_t(i)] = uint8_t(i * 13 + 7);          // ql
  for (int i = 0; i < 64; ++i) b[size_t(128 + i)] = uint8_t(i * 57 + 3);    // qh
  const std::array<int8_t, 16> sc{-128, -7, 1, 127, 5, -1, 64, -64, 2, 3, -3, 100, -100, 9, 0, 33};
  for (int i = 0; i < 16; ++i) b[size_t(192 + i)] = uint8_t(sc[size_t(i)]);
  const float d = -0.03125f;
  put_f16(b, 208, d);
  const auto y = deq(DType::Q6_K, b, 256);
  // Element e: half h = e / 128; within it quarter k = (e % 128) / 32 and lane l = e % 32.
  // low 4 bits: ql[64h + 32*(k % 2) + l], low nibble for k < 2 else high; high 2 bits: qh[32h + l] >> 2k;
  // scale: sc[8h + 2k + l / 16]; value = (d * scale) * (q6 - 32).
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, k = (e % 128) / 32, l = e % 32;
    const uint8_t lb = b[size_t(64 * h + 32 * (k % 2) + l)];
    const int lo = k < 2 ? lb & 0xF : lb >> 4;
    const int hi = (b[size_t(128 + 32 * h + l)] >> (2 * k)) & 3;
    const int q = (lo | (hi << 4)) - 32;
    EXPECT_EQ(y[size_t(e)], (d * float(sc[size_t(8 * h + 2 * k + l / 16)])) * float(q)) << e;
  }
  // Element 0: ql[0]=7 -> lo 7; qh[0]=3 -> hi 3 -> q = 55 - 32 = 23; scale -128 -> (-0.03125 * -128) * 23 = 92.
  EXPECT_EQ(y[0], 92.0f);
}

TEST(DequantBlocks, PlainFloats) {
  const std::vector<float> v{0.f, -0.f, 1.5f, -65504.f, 6.1035156e-05f, 5.9604645e-08f /* f16 subnormal */};
  Bytes h(v.size() * 2), bf(v.size() * 2), f(v.size() * 4);
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t x = f32_to_fp16(v[i]);
    std::memcpy(h.data() + 2 * i, &x, 2);
    const uint16_t y = f32_to_bf16(v[i]);
    std::memcpy(bf.data() + 2 * i, &y, 2);
  }
  std::memcpy(f.data(), v.data(), f.size());
  expect_same(deq(DType::F16, h, int64_t(v.size())), v, "f16");
  expect_same(deq(DType::F32, f, int64_t(v.size())), v, "f32");
  const auto b = deq(DType::BF16, bf, int64_t(v.size()));
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(b[i], bf16_to_f32(f32_to_bf16(v[i])));
  EXPECT_EQ(b[2], 1.5f);
}

TEST(DequantBlocks, Errors) {
  Bytes b(64);
  float y[64];
  EXPECT_THAT([&] { dequantize_row(DType::Q4_0, b.data(), y, 31); },
              testing::ThrowsMessage<Error>(HasSubstr("not a whole number of 32-element blocks")));
  EXPECT_THAT([&] { dequantize_row(DType::I32, b.data(), y, 4); },
              testing::ThrowsMessage<Error>(HasSubstr("unsupported dtype i32")));
  EXPECT_FALSE(dequant_supported(DType::F8_E4M3));
  EXPECT_TRUE(dequant_supported(DType::Q6_K));
}

TEST(DequantBlocks, ToF32MatchesRows) {
  // Two rows of two Q8_0 blocks each; dequantize_to_f32 keeps the shape and matches row-by-row decoding.
  Bytes b(4 * 34);
  for (int k = 0; k < 4; ++k) {
    put_f16(b, size_t(34 * k), 0.5f * float(k + 1));
    for (int j = 0; j < 32; ++j) b[size_t(34 * k + 2 + j)] = uint8_t(int8_t(j - 3 * k));
  }
  const Tensor t = Tensor::contiguous(b.data(), DType::Q8_0, {2, 64});
  const HostTensor out = dequantize_to_f32(t);
  EXPECT_EQ(out.view().shape_str(), "[2, 64]");
  EXPECT_EQ(out.view().dtype, DType::F32);
  const auto all = deq(DType::Q8_0, b, 128);
  expect_same(std::vector<float>(out.f32(), out.f32() + 128), all, "to_f32");
  EXPECT_EQ(out.f32()[64 + 32 + 5], float(5 - 9) * 2.0f);
  EXPECT_THAT([&] { dequantize_to_f32(Tensor::contiguous(b.data(), DType::Q8_0, {2, 48})); },
              testing::ThrowsMessage<Error>(HasSubstr("not a multiple of the block size")));
}

// ---------------------------------------------------------------------------------------------------------------
// Q/K row permutation.

// convert_hf_to_gguf.py permute: w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols), i.e.
// out[h][j][t] = w[h][t][j], written with explicit loops.
std::vector<float> reference_permute(const std::vector<float>& w, int64_t n_head, int64_t hd, int64_t cols) {
  std::vector<float> out(w.size());
  const int64_t half = hd / 2;
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t j = 0; j < half; ++j)
      for (int64_t t = 0; t < 2; ++t)
        for (int64_t c = 0; c < cols; ++c)
          out[size_t(((h * half + j) * 2 + t) * cols + c)] = w[size_t(((h * 2 + t) * half + j) * cols + c)];
  return out;
}

TEST(DequantPermute, HandComputedSmallCase) {
  // 2 heads of head_dim 6, 2 columns; HF row r holds 100*r + c. GGUF interleaves the two halves of each head:
  // per head the HF rows come in the order 0,3,1,4,2,5.
  std::vector<float> gguf;
  for (int r : {0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11})
    for (int c = 0; c < 2; ++c) gguf.push_back(float(100 * r + c));
  std::vector<float> hf;
  for (int r = 0; r < 12; ++r)
    for (int c = 0; c < 2; ++c) hf.push_back(float(100 * r + c));
  EXPECT_EQ(reference_permute(hf, 2, 6, 2), gguf);
  std::vector<float> w = gguf;
  unpermute_qk_rows(w.data(), 12, 2, 2);
  EXPECT_EQ(w, hf);
  permute_qk_rows(w.data(), 12, 2, 2);
  EXPECT_EQ(w, gguf);
}

TEST(DequantPermute, RoundTripAndMatchesConverter) {
  // SmolLM2 attn_k geometry: 3 KV heads of 64, 576 columns; and a query-like 9 x 64.
  for (auto [heads, hd, cols] : {std::array<int64_t, 3>{3, 64, 576}, {9, 64, 7}, {1, 2, 1}}) {
    std::vector<float> w(size_t(heads * hd * cols));
    for (size_t i = 0; i < w.size(); ++i) w[i] = float(i) * 0.5f - 3.f;
    std::vector<float> p = w;
    permute_qk_rows(p.data(), heads * hd, cols, heads);
    EXPECT_EQ(p, reference_permute(w, heads, hd, cols)) << heads;
    unpermute_qk_rows(p.data(), heads * hd, cols, heads);
    EXPECT_EQ(p, w) << heads;
  }
  std::vector<float> w(30);
  EXPECT_THAT([&] { unpermute_qk_rows(w.data(), 10, 3, 4); },
              testing::ThrowsMessage<Error>(HasSubstr("multiple of n_heads")));
  EXPECT_THAT([&] { unpermute_qk_rows(w.data(), 6, 5, 2); },
              testing::ThrowsMessage<Error>(HasSubstr("head_dim 3")));
}

// ---------------------------------------------------------------------------------------------------------------
// Against gguf-py (tools/make_gguf_fixtures.py): bit-exact. Both sides do the same f32 operations in the same
// order on exactly widened f16 scales, without FMA, so any difference is a bug rather than rounding.

fs::path fixture(const std::string& name) { return fs::path(TANDEM_FIXTURES) / "gguf" / name; }

TEST(DequantGgufPy, EveryTypeBitExact) {
  auto f = GgufFile::open(fixture("dequant.gguf"));
  const std::vector<std::pair<std::string, DType>> types = {
      {"f32", DType::F32},   {"f16", DType::F16},   {"bf16", DType::BF16}, {"q8_0", DType::Q8_0},
      {"q4_0", DType::Q4_0}, {"q4_1", DType::Q4_1}, {"q5_0", DType::Q5_0}, {"q5_1", DType::Q5_1},
      {"q4_k", DType::Q4_K}, {"q5_k", DType::Q5_K}, {"q6_k", DType::Q6_K}, {"rank3.q8_0", DType::Q8_0}};
  for (const auto& [name, dtype] : types) {
    const GgufTensorInfo& t = f->tensor(name);
    const GgufTensorInfo& e = f->tensor("expected." + name);
    EXPECT_EQ(t.dtype(), dtype) << name;
    EXPECT_EQ(e.dtype(), DType::F32) << name;
    EXPECT_EQ(t.shape, e.shape) << name;
    const HostTensor got = dequantize_to_f32(t.view());
    const HostTensor want = HostTensor::to_f32(e.view());
    ASSERT_EQ(got.numel(), want.numel()) << name;
    expect_same(std::vector<float>(got.f32(), got.f32() + got.numel()),
                std::vector<float>(want.f32(), want.f32() + want.numel()), name);
  }
  EXPECT_EQ(f->tensor("q4_k").shape, (std::vector<int64_t>{4, 256}));
  EXPECT_EQ(f->tensor("rank3.q8_0").shape, (std::vector<int64_t>{2, 3, 64}));
}

TEST(DequantGgufPy, RealModelRowsBitExact) {
  const fs::path model =
      fs::path(TANDEM_FIXTURES).parent_path().parent_path() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(model)) GTEST_SKIP() << model << " not found; run tools/setup.sh to fetch the default model";
  auto m = GgufFile::open(model);
  auto f = GgufFile::open(fixture("smollm2_rows.gguf"));
  EXPECT_EQ(f->get_int("fixture.source_size"), int64_t(m->file_size())) << "the model differs from the fixture's";
  int checked = 0;
  for (const auto& e : f->tensors()) {
    const std::string name = e.name.substr(std::string("expected.").size());
    const auto rows = f->get_int_array("rows." + name);
    ASSERT_TRUE(rows.has_value()) << name;
    const GgufTensorInfo& t = m->tensor(name);
    EXPECT_EQ(t.type_name(), *f->get_string("type." + name));
    const Tensor v = t.view();
    const int64_t cols = v.shape[size_t(v.ndim - 1)];
    const HostTensor want = HostTensor::to_f32(e.view());
    ASSERT_EQ(want.numel(), int64_t(rows->size()) * cols) << name;
    for (size_t k = 0; k < rows->size(); ++k) {
      const Tensor row = v.slice_rows((*rows)[k], (*rows)[k] + 1);
      std::vector<float> got(static_cast<size_t>(cols));
      dequantize_row(v.dtype, row.data, got.data(), cols);
      expect_same(got, std::vector<float>(want.f32() + int64_t(k) * cols, want.f32() + int64_t(k + 1) * cols),
                  fmt::format("{} row {}", name, (*rows)[k]));
      ++checked;
    }
  }
  EXPECT_EQ(checked, 8);
}

}  // namespace
}  // namespace tandem
