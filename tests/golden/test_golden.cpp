// Golden tests: the reference path against HF transformers fixtures (tools/make_fixtures.py).
// Every tap HF exposes must match in fp32 within rel_tolerance(F32); greedy tokens must be identical.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>

#include "runners.h"
#include "diag/compare.h"
#include "io/safetensors.h"
#include "model/model.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;

struct Expected {
  std::unique_ptr<SafetensorsFile> file;
  int num_prompts = 0;
  std::vector<int32_t> prompt(int p) const { return ints("p" + std::to_string(p) + ".prompt"); }
  std::vector<int32_t> ints(const std::string& name) const {
    const TensorEntry* e = file->find(name);
    EXPECT_NE(e, nullptr) << name;
    Tensor v = e->view();
    std::vector<int32_t> out(static_cast<size_t>(v.numel()));
    std::memcpy(out.data(), v.data, out.size() * sizeof(int32_t));
    return out;
  }
  Tensor tensor(const std::string& name) const {
    const TensorEntry* e = file->find(name);
    EXPECT_NE(e, nullptr) << name;
    return e->view();
  }
};

class Golden : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = fs::path(TANDEM_FIXTURES) / GetParam();
    model_ = std::shared_ptr<const Model>(load_reference_model(dir_));
    exp_.file = SafetensorsFile::open(dir_ / "expected.safetensors");
    while (exp_.file->find("p" + std::to_string(exp_.num_prompts) + ".prompt")) ++exp_.num_prompts;
    ASSERT_GE(exp_.num_prompts, 2);
  }
  fs::path dir_;
  std::shared_ptr<const Model> model_;
  Expected exp_;
};

// Every prompt in ONE ragged prefill step; each tap's rows for a prompt must match HF's for that prompt.
TEST_P(Golden, PrefillTapsMatchHF) {
  auto runner = reference_runner(model_);
  Step step;
  std::vector<int64_t> offsets;
  for (int p = 0; p < exp_.num_prompts; ++p) {
    const auto ids = exp_.prompt(p);
    runner->create_sequence(p, 64);
    offsets.push_back(step.size());
    for (size_t i = 0; i < ids.size(); ++i) step.add(ids[i], p, int32_t(i), true);
  }
  TapRecorder taps;
  runner->forward(step, &taps);

  int compared = 0;
  double worst = 0;
  std::string worst_tap;
  for (int p = 0; p < exp_.num_prompts; ++p) {
    const std::string prefix = "p" + std::to_string(p) + ".";
    const int64_t len = int64_t(exp_.prompt(p).size());
    for (const TensorEntry& e : exp_.file->entries()) {
      if (e.name.rfind(prefix, 0) != 0) continue;
      const std::string tap = e.name.substr(prefix.size());
      if (tap == "prompt" || tap.rfind("decode_", 0) == 0) continue;
      const HostTensor* got = taps.find(tap);
      ASSERT_NE(got, nullptr) << "reference path did not publish tap " << tap;
      const Tensor rows = got->view().slice_rows(offsets[size_t(p)], offsets[size_t(p)] + len);
      const Comparison cmp = compare(rows, e.view());
      EXPECT_LE(cmp.rel_l2, rel_tolerance(DType::F32)) << GetParam() << " prompt " << p << " tap " << tap << ": "
                                                       << cmp.summary();
      if (cmp.rel_l2 >= worst) {
        worst = cmp.rel_l2;
        worst_tap = "p" + std::to_string(p) + "." + tap;
      }
      ++compared;
    }
  }
  // embed, final_norm, logits + 10 per layer (all but rope and kv_write, which HF does not expose), for every prompt.
  EXPECT_EQ(compared, exp_.num_prompts * (3 + 10 * int(model_->config.n_layers)));
  std::printf("[ info ] %s: %d taps vs HF, worst rel_l2 %.2e at %s\n", GetParam().c_str(), compared, worst,
              worst_tap.c_str());
}

// Greedy decoding of all prompts together: 16 tokens identical to HF, logits within tolerance each step.
TEST_P(Golden, GreedyDecodeMatchesHF) {
  auto runner = reference_runner(model_);
  const int P = exp_.num_prompts;
  Step prefill;
  for (int p = 0; p < P; ++p) {
    const auto ids = exp_.prompt(p);
    runner->create_sequence(p, 64);
    for (size_t i = 0; i < ids.size(); ++i) prefill.add(ids[i], p, int32_t(i), i + 1 == ids.size());
  }
  StepOutput out = runner->forward(prefill, nullptr);
  const int64_t V = model_->config.vocab_size;
  auto argmax = [&](const StepOutput& o, int row) {
    const float* r = o.logits.f32() + row * V;
    return int32_t(std::max_element(r, r + V) - r);
  };
  std::vector<std::vector<int32_t>> want(static_cast<size_t>(P));
  std::vector<int32_t> next(static_cast<size_t>(P));
  for (int p = 0; p < P; ++p) {
    want[size_t(p)] = exp_.ints("p" + std::to_string(p) + ".decode_tokens");
    next[size_t(p)] = argmax(out, p);
    ASSERT_EQ(next[size_t(p)], want[size_t(p)][0]) << "prompt " << p << " first token";
  }
  const int steps = int(want[0].size());
  for (int s = 0; s < steps; ++s) {
    Step step;
    for (int p = 0; p < P; ++p)
      step.add(want[size_t(p)][size_t(s)], p, int32_t(runner->sequence_length(p)), true);
    out = runner->forward(step, nullptr);
    for (int p = 0; p < P; ++p) {
      const Tensor hf = exp_.tensor("p" + std::to_string(p) + ".decode_logits").slice_rows(s, s + 1);
      const Comparison cmp = compare(out.logits.view().slice_rows(p, p + 1), hf);
      EXPECT_LE(cmp.rel_l2, rel_tolerance(DType::F32)) << "prompt " << p << " decode step " << s << ": "
                                                       << cmp.summary();
      if (s + 1 < steps) {
        EXPECT_EQ(argmax(out, p), want[size_t(p)][size_t(s) + 1]) << "prompt " << p << " step " << s;
      }
    }
  }
}

// A sequence's logits do not depend on what else is in the step, nor on how its prompt is chunked.
TEST_P(Golden, BatchAndChunkInvariant) {
  const auto ids = exp_.prompt(1);
  ASSERT_GE(ids.size(), 4u);
  auto whole = reference_runner(model_), chunked = reference_runner(model_);
  whole->create_sequence(0, 64);
  chunked->create_sequence(0, 64);
  chunked->create_sequence(7, 64);  // a bystander sequence sharing the steps
  Step a;
  for (size_t i = 0; i < ids.size(); ++i) a.add(ids[i], 0, int32_t(i), i + 1 == ids.size());
  const StepOutput ref = whole->forward(a, nullptr);

  const size_t cut = ids.size() / 2;
  Step first, second;
  for (size_t i = 0; i < cut; ++i) first.add(ids[i], 0, int32_t(i), false);
  first.add(5, 7, 0, true);
  second.add(9, 7, 1, true);
  for (size_t i = cut; i < ids.size(); ++i) second.add(ids[i], 0, int32_t(i), i + 1 == ids.size());
  chunked->forward(first, nullptr);
  const StepOutput got = chunked->forward(second, nullptr);
  ASSERT_EQ(got.logit_rows.size(), 2u);
  const Comparison cmp = compare(got.logits.view().slice_rows(1, 2), ref.logits.view());
  EXPECT_LE(cmp.rel_l2, 1e-6) << cmp.summary();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Golden, ::testing::Values("llama", "qwen2", "mistral"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace tandem
