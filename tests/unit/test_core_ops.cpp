// Core pieces against hand-computed values: half-precision conversion, tensor views, the thread pool,
// and the reference ops.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "core/tensor.h"
#include "cpu/ops.h"
#include "diag/compare.h"
#include "diag/taps.h"

namespace tandem {
namespace {

TEST(DType, HalfConversionsRoundTripAndRound) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(f32_to_bf16(1.0f + 1.0f / 256), 0x3f80);  // tie -> even
  EXPECT_EQ(f32_to_bf16(1.0f + 3.0f / 256), 0x3f82);  // tie -> even (up)
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  EXPECT_EQ(f32_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_fp16(65520.0f), 0x7c00);  // rounds to inf
  EXPECT_EQ(fp16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f32_to_fp16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(fp16_to_f32(0xfc00), -INFINITY);
  // Every finite fp16 survives fp16 -> f32 -> fp16.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00) continue;
    ASSERT_EQ(f32_to_fp16(fp16_to_f32(uint16_t(h))), h) << h;
  }
}

TEST(TensorView, ContiguousSliceAndDescribe) {
  std::vector<float> buf(24);
  Tensor t = Tensor::contiguous(buf.data(), DType::F32, {2, 3, 4});
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.strides[0], 12);
  EXPECT_TRUE(t.is_contiguous());
  Tensor s = t.slice_rows(1, 2);
  EXPECT_EQ(s.ptr<float>(), buf.data() + 12);
  EXPECT_EQ(t.describe(), "f32[2, 3, 4] strides [12, 4, 1] cpu");
  Tensor q = Tensor::contiguous(nullptr, DType::Q4_0, {8, 64});
  EXPECT_EQ(q.nbytes(), 8 * 2 * 18);
  EXPECT_THROW(t.slice_rows(1, 3), Error);
  EXPECT_THROW(t.reshape({5, 5}), Error);
}

TEST(Parallel, CoversEveryIndexOnceAndPropagatesErrors) {
  std::vector<std::atomic<int>> hits(1000);
  parallel_for(1000, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
  });
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
  EXPECT_THROW(parallel_for(100, [](int64_t b, int64_t) { if (b > 0 || num_threads() == 1) fail("boom"); }),
               Error);
}

TEST(ReferenceOps, RmsNormLinearSiluByHand) {
  float x[] = {1, 2, 3, 4};
  float w[] = {1, 1, 2, 0.5f};
  float out[4];
  cpu::rmsnorm(Tensor::contiguous(x, DType::F32, {1, 4}), Tensor::contiguous(w, DType::F32, {4}), 0.0,
               Tensor::contiguous(out, DType::F32, {1, 4}));
  const float rms = std::sqrt((1 + 4 + 9 + 16) / 4.0f);
  EXPECT_FLOAT_EQ(out[2], 2 * 3 / rms);
  EXPECT_FLOAT_EQ(out[3], 0.5f * 4 / rms);

  float W[] = {1, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1};  // [3, 4]
  float b[] = {0.5f, 0, -1};
  float y[3];
  cpu::linear(Tensor::contiguous(x, DType::F32, {1, 4}), Tensor::contiguous(W, DType::F32, {3, 4}),
              Tensor::contiguous(b, DType::F32, {3}), Tensor::contiguous(y, DType::F32, {1, 3}));
  EXPECT_FLOAT_EQ(y[0], 1.5f);
  EXPECT_FLOAT_EQ(y[1], 5.0f);
  EXPECT_FLOAT_EQ(y[2], 9.0f);

  float gu[] = {1.0f, -2.0f, 3.0f, 0.5f};  // gate | up, I = 2
  float act[2];
  cpu::silu_mul(Tensor::contiguous(gu, DType::F32, {1, 4}), Tensor::contiguous(act, DType::F32, {1, 2}));
  EXPECT_FLOAT_EQ(act[0], 1.0f / (1.0f + std::exp(-1.0f)) * 3.0f);
  EXPECT_FLOAT_EQ(act[1], -2.0f / (1.0f + std::exp(2.0f)) * 0.5f);
}

TEST(ReferenceOps, RopeRotatesHalves) {
  // One q head and one k head of dim 4, one v head; position 2, inv_freq {1, 0.5}.
  float qkv[] = {1, 0, 0, 1, /*k*/ 2, 0, 0, 0, /*v*/ 7, 7, 7, 7};
  const int32_t pos[] = {2};
  const float inv[] = {1.0f, 0.5f};
  cpu::rope(Tensor::contiguous(qkv, DType::F32, {1, 12}), pos, inv, 1, 1, 4);
  // pair (x[0], x[2]) rotates by 2 rad, pair (x[1], x[3]) by 1 rad.
  EXPECT_NEAR(qkv[0], std::cos(2.0f), 1e-6);
  EXPECT_NEAR(qkv[2], std::sin(2.0f), 1e-6);
  EXPECT_NEAR(qkv[1], -std::sin(1.0f), 1e-6);
  EXPECT_NEAR(qkv[3], std::cos(1.0f), 1e-6);
  EXPECT_NEAR(qkv[4], 2 * std::cos(2.0f), 1e-6);
  EXPECT_EQ(qkv[8], 7.0f);  // v untouched
}

TEST(ReferenceOps, AttentionWindowAndGqa) {
  // 2 query heads sharing 1 kv head of dim 2; keys at positions 0..2.
  const float q[] = {1, 0, 0, 1};
  const float k[] = {1, 0, 0, 1, 1, 1};
  const float v[] = {1, 0, 0, 1, 5, 5};
  float scratch[3], out[4];
  cpu::attention_row(q, k, v, 0, 3, 2, 1, 2, scratch, out);
  const float s = 1.0f / std::sqrt(2.0f);
  // head 0: scores {1, 0, 1} * s
  const float e1 = std::exp(s), e0 = 1.0f, z = 2 * e1 + e0;
  EXPECT_NEAR(out[0], (e1 * 1 + e0 * 0 + e1 * 5) / z, 1e-6);
  EXPECT_NEAR(out[1], (e1 * 0 + e0 * 1 + e1 * 5) / z, 1e-6);
  // A window that only sees position 2 returns v[2] exactly.
  cpu::attention_row(q, k, v, 2, 3, 2, 1, 2, scratch, out);
  EXPECT_FLOAT_EQ(out[2], 5.0f);
  EXPECT_FLOAT_EQ(out[3], 5.0f);
}

TEST(Compare, MetricsAndNonFinite) {
  float a[] = {1, 2, 3, 4}, b[] = {1, 2, 3, 5};
  Comparison c = compare(Tensor::contiguous(a, DType::F32, {4}), Tensor::contiguous(b, DType::F32, {4}));
  EXPECT_NEAR(c.rel_l2, 1.0 / std::sqrt(1 + 4 + 9 + 25.0), 1e-12);
  EXPECT_EQ(c.max_abs_index, 3);
  a[1] = NAN;
  c = compare(Tensor::contiguous(a, DType::F32, {4}), Tensor::contiguous(b, DType::F32, {4}));
  EXPECT_EQ(c.nonfinite_a, 1);
  EXPECT_TRUE(std::isinf(c.rel_l2));
}

TEST(Taps, NamesAndFilters) {
  EXPECT_EQ(tap_name(Stage::attention, 3), "L3.attention");
  EXPECT_EQ(tap_name(Stage::logits, 7), "logits");
  EXPECT_EQ(stage_from_name("mlp_residual"), Stage::mlp_residual);
  TapRecorder only({"L1.qkv", "logits"});
  EXPECT_TRUE(only.wants(Stage::qkv, 1));
  EXPECT_FALSE(only.wants(Stage::qkv, 0));
  EXPECT_TRUE(only.wants(Stage::logits, -1));
  TapRecorder stage({"attention"});
  EXPECT_TRUE(stage.wants(Stage::attention, 5));
  EXPECT_FALSE(stage.wants(Stage::o_proj, 5));
}

}  // namespace
}  // namespace tandem
