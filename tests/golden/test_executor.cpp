// The executor and the paged KV cache on the reference path, over the HF fixtures:
//  - one scenario (several sequences, prefill and decode mixed and interleaved in one step, sequences ending on,
//    one before and one after page boundaries, a sequence freed and its pages reused) gives bit-identical logits
//    for page sizes 1, 16 and 64 in NHD and HND, and its prefill logits match HF's;
//  - a test-only broken variant swapped in by --variant changes the taps from its stage on and not before;
//  - --kv-poison with a kv_write that skips layer 1 fails at L1.attention, and is silent on a correct plan.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "diag/compare.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "runners.h"
#include "scenario.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;

class Executors : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = fs::path(TANDEM_FIXTURES) / GetParam();
    model_ = std::shared_ptr<const Model>(load_reference_model(dir_));
    exp_ = SafetensorsFile::open(dir_ / "expected.safetensors");
  }
  fs::path dir_;
  std::shared_ptr<const Model> model_;
  std::unique_ptr<SafetensorsFile> exp_;
};

TEST_P(Executors, PageSizesAndLayoutsAreBitIdenticalAndMatchHF) {
  std::vector<ScenarioResult> results;
  std::vector<std::string> names;
  for (int64_t page : {1, 16, 64})
    for (KvLayout layout : {KvLayout::NHD, KvLayout::HND}) {
      // A small initial pool, so that the CPU host also grows it mid-scenario.
      auto r = reference_runner(model_, {page, layout, {}, false, 32});
      results.push_back(run_scenario(*r, *exp_));
      names.push_back("page " + std::to_string(page) + " " + std::string(kv_layout_name(layout)));
      // The freed sequence's pages went back: 4 sequences remain.
      EXPECT_EQ(r->pages().free_pages() + int64_t(r->pages().pages(0).size() + r->pages().pages(1).size() +
                                                  r->pages().pages(2).size() + r->pages().pages(4).size()),
                r->pages().num_pages());
    }
  for (size_t c = 1; c < results.size(); ++c) {
    ASSERT_EQ(results[c].logits.size(), results[0].logits.size());
    for (size_t s = 0; s < results[0].logits.size(); ++s) {
      const Tensor a = results[0].logits[s].view(), b = results[c].logits[s].view();
      ASSERT_EQ(a.numel(), b.numel());
      EXPECT_EQ(std::memcmp(a.data, b.data, size_t(a.nbytes())), 0)
          << GetParam() << ": step " << s << " logits differ between " << names[0] << " and " << names[c];
    }
  }
  // Prompt p0 ran whole in step 0: its logits rows are HF's.
  const Tensor hf_logits = exp_->find("p0.logits")->view();
  const Tensor ours = results[0].logits[0].view().slice_rows(0, hf_logits.shape[0]);
  const Comparison cmp = compare(ours, hf_logits);
  EXPECT_LE(cmp.rel_l2, rel_tolerance(DType::F32)) << cmp.summary();
}

// cached_kv (--kv-verify) reads a sequence's whole cache through its page table: the same K|V rows for every page
// size and layout, equal to the kv_write taps of the steps that wrote them.
// A greedy_only step returns each logits row's greedy token and no logits, in the caller's row order (also for
// an interleaved step), and a tap on the logits brings them back with the same tokens.
TEST_P(Executors, GreedyOnlyStepReturnsTheArgmaxOfEachRow) {
  auto full = reference_runner(model_), greedy = reference_runner(model_);
  const int64_t V = model_->config.vocab_size;
  for (auto* r : {full.get(), greedy.get()}) {
    r->create_sequence(0, 32);
    r->create_sequence(1, 32);
  }
  Step step;  // interleaved: the executor regroups it
  for (int i = 0; i < 5; ++i) {
    step.add(3 + i, 0, i, i >= 3);
    step.add(7 + 2 * i, 1, i, i == 4);
  }
  const StepOutput a = full->forward(step, nullptr);
  step.greedy_only = true;
  const StepOutput b = greedy->forward(step, nullptr);
  ASSERT_EQ(a.logit_rows, b.logit_rows);
  EXPECT_EQ(b.logits.numel(), 0);
  ASSERT_EQ(b.argmax.size(), a.logit_rows.size());
  for (size_t r = 0; r < b.argmax.size(); ++r)
    EXPECT_EQ(b.argmax[r], greedy_token({a.logits.f32() + int64_t(r) * V, size_t(V)})) << "row " << r;
  TapRecorder taps;
  Step next;
  next.add(5, 0, 5, true);
  next.add(6, 1, 5, true);
  next.greedy_only = true;
  const StepOutput c = greedy->forward(next, &taps);
  ASSERT_NE(taps.find("logits"), nullptr);
  ASSERT_EQ(c.logits.numel(), 2 * V);  // a tap wanted them
  for (size_t r = 0; r < 2; ++r) EXPECT_EQ(c.argmax[r], greedy_token({c.logits.f32() + int64_t(r) * V, size_t(V)}));
}

// A sampled step (Step::sampling) returns sample_token() of each logits row under its own RowSampling and no logits,
// in the caller's row order (also for an interleaved step, whose rows the executor regroups); a tap on the logits
// brings them back with the same tokens.
TEST_P(Executors, SampledStepReturnsSampleTokenOfEachRow) {
  auto full = reference_runner(model_), sampled = reference_runner(model_);
  const int64_t V = model_->config.vocab_size;
  for (auto* r : {full.get(), sampled.get()}) {
    r->create_sequence(0, 32);
    r->create_sequence(1, 32);
  }
  Step step;  // interleaved: the executor regroups it
  for (int i = 0; i < 5; ++i) {
    step.add(3 + i, 0, i, i >= 3);
    step.add(7 + 2 * i, 1, i, i == 4);
  }
  const StepOutput a = full->forward(step, nullptr);
  const std::vector<int32_t> window{3, 4, 5, 9, 9};
  std::vector<RowSampling> rows(a.logit_rows.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    rows[r].params.temperature = r == 1 ? 0.0f : 0.7f + 0.3f * float(r);
    rows[r].params.top_k = r == 2 ? 0 : 20;
    rows[r].params.repeat_penalty = 1.3f;
    rows[r].u = 0.1 + 0.27 * double(r);
    rows[r].penalized = std::span<const int32_t>(window).first(r + 2);
  }
  step.sampling = rows;
  const StepOutput b = sampled->forward(step, nullptr);
  ASSERT_EQ(a.logit_rows, b.logit_rows);
  EXPECT_EQ(b.logits.numel(), 0);
  EXPECT_TRUE(b.argmax.empty());
  ASSERT_EQ(b.sampled.size(), a.logit_rows.size());
  for (size_t r = 0; r < b.sampled.size(); ++r) {
    const int32_t want = sample_token({a.logits.f32() + int64_t(r) * V, size_t(V)}, rows[r].penalized, rows[r].params,
                                      rows[r].u);
    EXPECT_GE(want, 0);
    EXPECT_EQ(b.sampled[r], want) << "row " << r;
  }
  TapRecorder taps;
  Step next;
  next.add(5, 0, 5, true);
  next.add(6, 1, 5, true);
  next.sampling = {rows[0], rows[1]};
  const StepOutput c = sampled->forward(next, &taps);
  ASSERT_NE(taps.find("logits"), nullptr);
  ASSERT_EQ(c.logits.numel(), 2 * V);  // a tap wanted them
  for (size_t r = 0; r < 2; ++r)
    EXPECT_EQ(c.sampled[r], sample_token({c.logits.f32() + int64_t(r) * V, size_t(V)}, rows[r].penalized,
                                         rows[r].params, rows[r].u));
  Step bad = next;
  bad.sampling.pop_back();  // one row of parameters for two logits rows
  EXPECT_THROW(sampled->forward(bad, nullptr), Error);
}

TEST_P(Executors, CachedKvIsTheSameThroughEveryPageTable) {
  const auto ids = ints(*exp_, "p1.prompt");
  std::vector<HostTensor> first;
  for (int64_t page : {1, 16})
    for (KvLayout layout : {KvLayout::NHD, KvLayout::HND}) {
      auto r = reference_runner(model_, {page, layout, {}, false, 32});
      r->create_sequence(0, 64);
      Step prefill, decode;
      for (size_t i = 0; i + 1 < ids.size(); ++i) prefill.add(ids[i], 0, int32_t(i), false);
      decode.add(ids.back(), 0, int32_t(ids.size() - 1), true);
      TapRecorder taps({"kv_write"}), taps2({"kv_write"});
      r->forward(prefill, &taps);
      r->forward(decode, &taps2);
      const int layers = int(model_->config.n_layers);
      for (int l = 0; l < layers; ++l) {
        const HostTensor kv = r->cached_kv(0, l);
        ASSERT_EQ(kv.view().shape[0], int64_t(ids.size()));
        const HostTensor* a = taps.find(tap_name(Stage::kv_write, l));
        const HostTensor* b = taps2.find(tap_name(Stage::kv_write, l));
        ASSERT_TRUE(a && b);
        const int64_t W = kv.view().shape[1], n = a->view().shape[0];
        EXPECT_EQ(std::memcmp(kv.f32(), a->f32(), size_t(n * W) * 4), 0) << "page " << page << " layer " << l;
        EXPECT_EQ(std::memcmp(kv.f32() + n * W, b->f32(), size_t(W) * 4), 0) << "page " << page << " layer " << l;
        if (first.size() < size_t(layers)) first.push_back(HostTensor::to_f32(kv.view()));
        else EXPECT_EQ(std::memcmp(kv.f32(), first[size_t(l)].f32(), size_t(kv.numel()) * 4), 0);
      }
    }
}

TEST_P(Executors, BrokenVariantChangesTapsFromItsStageOnOnly) {
  const auto ids = ints(*exp_, "p1.prompt");
  auto taps_of = [&](std::vector<std::string> variants) {
    auto r = reference_runner(model_, {16, KvLayout::NHD, std::move(variants)});
    r->create_sequence(0, 64);
    Step step;
    for (size_t i = 0; i < ids.size(); ++i) step.add(ids[i], 0, int32_t(i), true);
    auto rec = std::make_unique<TapRecorder>();
    r->forward(step, rec.get());
    return rec;
  };
  const auto good = taps_of({}), bad = taps_of({"attention=test_drop_last_key"});
  expect_broken_from(*good, *bad, int(model_->config.n_layers), "L0.attention");
  EXPECT_EQ(good->taps().size(), taps_in_order(int(model_->config.n_layers)).size());  // every stage publishes, kv_write included
}

TEST_P(Executors, KvPoisonNamesTheLayerWhoseAppendWasSkipped) {
  const auto ids = ints(*exp_, "p1.prompt");
  auto run = [&](std::vector<std::string> variants, bool poison) {
    auto r = reference_runner(model_, {16, KvLayout::HND, std::move(variants), poison});
    r->create_sequence(0, 64);
    Step step;
    for (size_t i = 0; i < ids.size(); ++i) step.add(ids[i], 0, int32_t(i), i + 1 == ids.size());
    StepOutput first = r->forward(step, nullptr);
    Step decode;
    decode.add(5, 0, int32_t(ids.size()), true);
    return std::pair{std::move(first.logits), r->forward(decode, nullptr).logits};
  };
  const auto clean = run({}, false), poisoned = run({}, true);
  EXPECT_EQ(std::memcmp(clean.second.f32(), poisoned.second.f32(), size_t(clean.second.numel()) * 4), 0)
      << "poisoning fresh pages must not change a correct plan's output";
  try {
    run({"kv_write=test_skip_layer1"}, true);
    ADD_FAILURE() << "a skipped append under --kv-poison must fail";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("L1.attention: "));
    EXPECT_THAT(e.what(), ::testing::HasSubstr("NaN with --kv-poison"));
    EXPECT_THAT(e.what(), ::testing::HasSubstr("check L1.kv_write (variant kv_write.test_skip_layer1)"));
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Executors, ::testing::Values("llama", "qwen2", "mistral"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace tandem
