// The executor and the paged KV cache on the standard (CUDA) path, against the reference path on the HF fixtures:
//  - the multi-sequence scenario (tests/scenario.h) in fp32 for page sizes 1, 16, 64 in NHD and HND, on the standard
//    and the fused path (in fp32 its attention falls back to standard; its other kernels run): every step's
//    logits within the fp32 tolerance of the reference, and identical greedy choices;
//  - a test-only broken variant changes the GPU taps from its stage on and not before;
//  - --kv-poison with a kv_write that skips layer 1 fails at L1.attention on the GPU too;
//  - out of pages is a clear error naming the sequence (the GPU pool does not grow).
// Every test skips when there is no GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "cuda/device_query.h"
#include "diag/compare.h"
#include "runners.h"
#include "scenario.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;

#define REQUIRE_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"

class GpuExecutors : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    REQUIRE_GPU();
    dir_ = fs::path(TANDEM_FIXTURES) / GetParam();
    src_ = open_model_source(dir_);
    exp_ = SafetensorsFile::open(dir_ / "expected.safetensors");
  }
  fs::path dir_;
  std::unique_ptr<ModelSource> src_;
  std::unique_ptr<SafetensorsFile> exp_;
};

TEST_P(GpuExecutors, ScenarioMatchesReferenceForEveryPageSizeAndLayout) {
  auto ref = reference_runner(std::shared_ptr<const Model>(load_reference_model(*src_)));
  const ScenarioResult want = run_scenario(*ref, *exp_);
  const int64_t V = src_->config().vocab_size;
  for (const char* path : {"standard", "fused"})
  for (int64_t page : {1, 16, 64})
    for (KvLayout layout : {KvLayout::NHD, KvLayout::HND}) {
      SCOPED_TRACE(path);
      auto gpu = cuda_runner(path, *src_, DType::F32, 1024, {page, layout});
      const ScenarioResult got = run_scenario(*gpu, *exp_);
      ASSERT_EQ(got.logits.size(), want.logits.size());
      for (size_t s = 0; s < want.logits.size(); ++s) {
        const Comparison c = compare(got.logits[s], want.logits[s]);
        EXPECT_LE(c.rel_l2, rel_tolerance(DType::F32))
            << GetParam() << " page " << page << " " << kv_layout_name(layout) << " step " << s << ": " << c.summary();
        for (int64_t r = 0; r < want.logits[s].view().shape[0]; ++r) {
          const float *a = want.logits[s].f32() + r * V, *b = got.logits[s].f32() + r * V;
          EXPECT_EQ(std::max_element(a, a + V) - a, std::max_element(b, b + V) - b)
              << GetParam() << " page " << page << " step " << s << " row " << r;
        }
      }
    }
}

TEST_P(GpuExecutors, BrokenVariantChangesTapsFromItsStageOnOnly) {
  const auto ids = ints(*exp_, "p1.prompt");
  auto taps_of = [&](std::vector<std::string> variants) {
    auto r = standard_runner(*src_, DType::BF16, 1024, {16, KvLayout::HND, std::move(variants)});
    r->create_sequence(0, 64);
    Step step;
    for (size_t i = 0; i < ids.size(); ++i) step.add(ids[i], 0, int32_t(i), true);
    auto rec = std::make_unique<TapRecorder>();
    r->forward(step, rec.get());
    return rec;
  };
  const auto good = taps_of({}), bad = taps_of({"attention=test_drop_last_key"});
  expect_broken_from(*good, *bad, int(src_->config().n_layers), "L0.attention");
}

TEST_P(GpuExecutors, KvPoisonNamesTheLayerWhoseAppendWasSkipped) {
  const auto ids = ints(*exp_, "p1.prompt");
  auto run = [&](std::vector<std::string> variants, bool poison) {
    auto r = standard_runner(*src_, DType::BF16, 1024, {16, KvLayout::NHD, std::move(variants), poison});
    r->create_sequence(0, 64);
    Step step;
    for (size_t i = 0; i < ids.size(); ++i) step.add(ids[i], 0, int32_t(i), i + 1 == ids.size());
    r->forward(step, nullptr);
    Step decode;
    decode.add(5, 0, int32_t(ids.size()), true);
    return r->forward(decode, nullptr).logits;
  };
  const HostTensor clean = run({}, false), poisoned = run({}, true);
  EXPECT_EQ(std::memcmp(clean.f32(), poisoned.f32(), size_t(clean.numel()) * 4), 0);
  try {
    run({"kv_write=test_skip_layer1"}, true);
    ADD_FAILURE() << "a skipped append under --kv-poison must fail";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("L1.attention: "));
    EXPECT_THAT(e.what(), ::testing::HasSubstr("check L1.kv_write (variant kv_write.test_skip_layer1)"));
  }
}

TEST_P(GpuExecutors, OutOfPagesIsAClearError) {
  auto r = standard_runner(*src_, DType::BF16, 64, {16});  // 4 pages
  r->create_sequence(0, 80);
  r->create_sequence(1, 80);
  Step a;
  for (int i = 0; i < 48; ++i) a.add(3, 0, i, i == 47);
  r->forward(a, nullptr);
  Step b;
  for (int i = 0; i < 20; ++i) b.add(3, 1, i, i == 19);
  try {
    r->forward(b, nullptr);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("KV cache out of pages: this step needs 2 more pages of 16 tokens, 1 of "
                                               "4 are free; sequence 1 alone needs 2 for 20 tokens"));
  }
  // Nothing was taken: sequence 1 still fits once sequence 0 is gone.
  r->release_sequence(0);
  EXPECT_NO_THROW(r->forward(b, nullptr));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GpuExecutors, ::testing::Values("llama", "qwen2", "mistral"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace tandem
