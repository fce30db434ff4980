// Core pieces against hand-computed values: half-precision conversion, tensor views, the thread pool,
// and the reference ops.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "core/tensor.h"
#include "cpu/ops.h"
#include "exec/kv_cache.h"
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
              Tensor::contiguous(y, DType::F32, {1, 3}));
  cpu::add_bias(Tensor::contiguous(y, DType::F32, {1, 3}), Tensor::contiguous(b, DType::F32, {3}));
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
  int32_t pos[] = {2};
  float inv[] = {1.0f, 0.5f};
  cpu::rope(Tensor::contiguous(qkv, DType::F32, {1, 12}), Tensor::contiguous(pos, DType::I32, {1}),
            Tensor::contiguous(inv, DType::F32, {2}), 1, 1, 4);
  // pair (x[0], x[2]) rotates by 2 rad, pair (x[1], x[3]) by 1 rad.
  EXPECT_NEAR(qkv[0], std::cos(2.0f), 1e-6);
  EXPECT_NEAR(qkv[2], std::sin(2.0f), 1e-6);
  EXPECT_NEAR(qkv[1], -std::sin(1.0f), 1e-6);
  EXPECT_NEAR(qkv[3], std::cos(1.0f), 1e-6);
  EXPECT_NEAR(qkv[4], 2 * std::cos(2.0f), 1e-6);
  EXPECT_EQ(qkv[8], 7.0f);  // v untouched
}

TEST(ReferenceOps, PagedAttentionWindowAndGqa) {
  // 2 query heads sharing 1 kv head of dim 2; one sequence of 3 tokens (keys at positions 0..2) in pages of 2,
  // handed out in reverse order so that position order and page order differ.
  for (KvLayout layout : {KvLayout::NHD, KvLayout::HND}) {
    const KvGeometry g{1, 1, 2, 2, layout};
    std::vector<float> k_pool(size_t(4 * g.page_elems()), NAN), v_pool(k_pool.size(), NAN);
    PageTable pages(2, 4);
    pages.add_sequence(9);
    pages.add_sequence(7);
    pages.add_sequence(5);
    pages.reserve(9, 2);  // page 0
    pages.reserve(7, 2);  // page 1
    pages.release(9);
    pages.release(7);     // the most recently freed page is reused first
    pages.reserve(5, 3);
    ASSERT_EQ(pages.pages(5), (std::vector<int32_t>{1, 0}));
    const int32_t seq_of[] = {5, 5, 5};
    KvStepTables t = build_kv_tables(seq_of, pages, {{5, 3}});
    EXPECT_EQ(t.page_indptr, (std::vector<int32_t>{0, 2}));
    EXPECT_EQ(t.last_page_len, (std::vector<int32_t>{1}));
    EXPECT_EQ(t.qo_indptr, (std::vector<int32_t>{0, 3}));
    auto i32 = [](std::vector<int32_t>& v) { return Tensor::contiguous(v.data(), DType::I32, {int64_t(v.size())}); };
    PagedKv kv{kv_pool_view(k_pool.data(), DType::F32, Device::CPU, g, 4),
               kv_pool_view(v_pool.data(), DType::F32, Device::CPU, g, 4),
               layout, 2, i32(t.page_indptr), i32(t.page_indices), i32(t.last_page_len), i32(t.token_batch)};
    // Rows q(2 heads x 2) | k | v; only the last token's q matters below.
    float qkv[] = {0, 0, 0, 0, 1, 0, 1, 0,  //
                   0, 0, 0, 0, 0, 1, 0, 1,  //
                   1, 0, 0, 1, 1, 1, 5, 5};
    int32_t positions[] = {0, 1, 2};
    const Tensor qkv_t = Tensor::contiguous(qkv, DType::F32, {3, 8}), pos_t = Tensor::contiguous(positions, DType::I32, {3});
    const AttentionShape shape{2, 1, 2, 0};
    cpu::kv_write(qkv_t, pos_t, kv, shape);
    float rows[3 * 4];
    cpu::kv_gather(pos_t, kv, shape, Tensor::contiguous(rows, DType::F32, {3, 4}));
    for (int r = 0; r < 3; ++r)
      for (int j = 0; j < 4; ++j) EXPECT_EQ(rows[r * 4 + j], qkv[r * 8 + 4 + j]) << "kv_gather row " << r;
    float out[3 * 4];
    cpu::attention(qkv_t, pos_t, kv, shape, Tensor::contiguous(out, DType::F32, {3, 4}));
    const float s = 1.0f / std::sqrt(2.0f);
    // head 0 of the last token: scores {1, 0, 1} * s
    const float e1 = std::exp(s), e0 = 1.0f, z = 2 * e1 + e0;
    EXPECT_NEAR(out[8], (e1 * 1 + e0 * 0 + e1 * 5) / z, 1e-6);
    EXPECT_NEAR(out[9], (e1 * 0 + e0 * 1 + e1 * 5) / z, 1e-6);
    // The first token sees only itself: v0 exactly.
    EXPECT_FLOAT_EQ(out[0], 1.0f);
    EXPECT_FLOAT_EQ(out[1], 0.0f);
    // A window of 1 only sees position 2: v[2] exactly.
    cpu::attention(qkv_t, pos_t, kv, {2, 1, 2, 1}, Tensor::contiguous(out, DType::F32, {3, 4}));
    EXPECT_FLOAT_EQ(out[10], 5.0f);
    EXPECT_FLOAT_EQ(out[11], 5.0f);
    // A position beyond the sequence's pages gives a NaN row, no stray read.
    int32_t bad[] = {0, 1, 4};
    cpu::attention(qkv_t, Tensor::contiguous(bad, DType::I32, {3}), kv, shape, Tensor::contiguous(out, DType::F32, {3, 4}));
    EXPECT_TRUE(std::isnan(out[8]) && std::isnan(out[11]));
    EXPECT_FALSE(std::isnan(out[0]));
  }
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
