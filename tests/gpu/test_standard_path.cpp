// The standard (CUDA) path against HF transformers and against the reference path.
//  - Tiny fixtures in fp32: every tap within the fp32 tolerance of HF, greedy tokens identical.
//  - Tiny fixtures in bf16 / f16: every tap within that dtype's tolerance of the fp32 reference.
//  - The default model (GGUF) in bf16 against the CPU reference: teacher-forced top-1 agreement wherever the
//    reference's top-2 margin exceeds the bf16 margin tolerance, and 32 free-running greedy tokens compared.
//  - Real-shape random models made on the GPU by tools/make_gpu_models.py (TANDEM_GPU_MODELS=dir): taps and
//    logits against HF bf16 on the same GPU, top-1 agreement, 32 greedy tokens.
// Every test skips when there is no GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "cuda/device_query.h"
#include "greedy_rules.h"
#include "runners.h"
#include "diag/compare.h"
#include "io/safetensors.h"
#include "model/model.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;

#define REQUIRE_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"

std::vector<int32_t> ints(const SafetensorsFile& f, const std::string& name) {
  const TensorEntry* e = f.find(name);
  if (!e) throw Error("missing " + name + " in " + f.path());
  std::vector<int32_t> v(e->nbytes / 4);
  std::memcpy(v.data(), e->file->data() + e->offset, e->nbytes);
  return v;
}

struct PrefillResult {
  TapRecorder taps;
  StepOutput out;
};

// One prefill of `ids` as sequence 0 with logits for every row.
void prefill(ModelRunner& r, const std::vector<int32_t>& ids, PrefillResult& res, int64_t capacity) {
  r.create_sequence(0, capacity);
  Step step;
  for (size_t i = 0; i < ids.size(); ++i) step.add(ids[i], 0, int32_t(i), true);
  res.out = r.forward(step, &res.taps);
}

class StandardFixtures : public ::testing::TestWithParam<std::string> {};

TEST_P(StandardFixtures, F32MatchesHF) {
  REQUIRE_GPU();
  const fs::path dir = fs::path(TANDEM_FIXTURES) / GetParam();
  auto src = open_model_source(dir);
  auto runner_ptr = standard_runner(*src, DType::F32, 4096);
  Executor& runner = *runner_ptr;
  auto exp = SafetensorsFile::open(dir / "expected.safetensors");
  const auto ids = ints(*exp, "p1.prompt");
  PrefillResult res;
  prefill(runner, ids, res, 64);
  int compared = 0;
  for (const TensorEntry& e : exp->entries()) {
    if (e.name.rfind("p1.", 0) != 0) continue;
    const std::string tap = e.name.substr(3);
    if (tap == "prompt" || tap.rfind("decode_", 0) == 0) continue;
    const HostTensor* got = res.taps.find(tap);
    ASSERT_NE(got, nullptr) << tap;
    const Comparison c = compare(*got, e.view());
    EXPECT_LE(c.rel_l2, rel_tolerance(DType::F32)) << GetParam() << " " << tap << ": " << c.summary();
    ++compared;
  }
  EXPECT_GT(compared, 20);
  // Greedy decode identical to HF.
  const auto want = ints(*exp, "p1.decode_tokens");
  const int64_t V = runner.config().vocab_size;
  int32_t next = argmax(res.out.logits.f32() + (int64_t(ids.size()) - 1) * V, V);
  for (size_t s = 0; s < want.size(); ++s) {
    ASSERT_EQ(next, want[s]) << GetParam() << " greedy step " << s;
    Step step;
    step.add(next, 0, int32_t(runner.sequence_length(0)), true);
    next = argmax(runner.forward(step, nullptr).logits.f32(), V);
  }
}

TEST_P(StandardFixtures, HalfPrecisionTracksReference) {
  REQUIRE_GPU();
  const fs::path dir = fs::path(TANDEM_FIXTURES) / GetParam();
  auto src = open_model_source(dir);
  auto exp = SafetensorsFile::open(dir / "expected.safetensors");
  const auto ids = ints(*exp, "p1.prompt");
  auto ref_ptr = reference_runner(std::shared_ptr<const Model>(load_reference_model(*src)));
  Executor& ref = *ref_ptr;
  PrefillResult want;
  prefill(ref, ids, want, 64);
  // The qwen2 fixture's K bias makes |K| ~ 200: its attention is nearly one-hot, and rounding K to bf16 (ulp 1
  // between 128 and 256) or f16 moves the scores by whole units, so half precision departs from fp32 by
  // several percent from layer 0 on (HF in bf16 does the same: StandardRealShapes measures it on the
  // Qwen2.5-0.5B shape). Measured on an H200: bf16 worst 8.5e-2, f16 worst 2.0e-2. The other fixtures keep the
  // plain dtype tolerance.
  const double conditioning = GetParam() == "qwen2" ? 5.0 : 1.0;
  for (DType dt : {DType::BF16, DType::F16}) {
    auto runner_ptr = standard_runner(*src, dt, 4096);
    Executor& runner = *runner_ptr;
    PrefillResult got;
    prefill(runner, ids, got, 64);
    for (const auto& [name, t] : want.taps.taps()) {
      const HostTensor* g = got.taps.find(name);
      ASSERT_NE(g, nullptr) << name;
      const Comparison c = compare(*g, t);
      EXPECT_LE(c.rel_l2, conditioning * rel_tolerance(dt)) << GetParam() << " " << dtype_name(dt) << " " << name
                                                            << ": " << c.summary();
      EXPECT_EQ(c.nonfinite_a, 0) << name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, StandardFixtures, ::testing::Values("llama", "qwen2", "mistral"),
                         [](const auto& info) { return info.param; });

// Teacher-forced comparison of two runners on one token sequence: prefill `ids`, then feed `forced` one by
// one; at each step the candidate's argmax must equal the reference's wherever the reference's margin exceeds
// the tolerance. Returns (steps compared, steps with a decisive margin).
// Logits are also checked for gross error: cosine >= 0.99. (Through 30 bf16 layers the default model's logits
// sit 2-5% rel_l2 from the fp32 reference, cosine >= 0.9989, measured on an H200; the per-tap dtype tolerance
// is for single stages, not for the end of a deep stack. `worst_rel` reports the largest rel_l2 seen.)
std::pair<int, int> teacher_forced_agreement(ModelRunner& ref, ModelRunner& cand, const std::vector<int32_t>& ids,
                                             const std::vector<int32_t>& forced, DType dtype, const char* what,
                                             double* worst_rel) {
  const int64_t V = ref.config().vocab_size;
  const int64_t cap = int64_t(ids.size() + forced.size()) + 1;
  ref.create_sequence(1, cap);
  cand.create_sequence(1, cap);
  Step step;
  for (size_t i = 0; i < ids.size(); ++i) step.add(ids[i], 1, int32_t(i), i + 1 == ids.size());
  int compared = 0, decisive = 0;
  for (size_t s = 0; s <= forced.size(); ++s) {
    const StepOutput a = ref.forward(step, nullptr), b = cand.forward(step, nullptr);
    const double margin = top2_margin(a.logits.f32(), V), tol = margin_tolerance(dtype, a.logits.f32(), V);
    ++compared;
    if (margin > tol) {
      ++decisive;
      EXPECT_EQ(argmax(b.logits.f32(), V), argmax(a.logits.f32(), V))
          << what << " step " << s << ": margin " << margin << " > tolerance " << tol;
    }
    const Comparison c = compare(b.logits, a.logits);
    EXPECT_GE(c.cosine, 0.99) << what << " step " << s << " logits: " << c.summary();
    *worst_rel = std::max(*worst_rel, c.rel_l2);
    if (s == forced.size()) break;
    step = Step{};
    step.add(forced[s], 1, int32_t(ids.size() + s), true);
  }
  ref.release_sequence(1);
  cand.release_sequence(1);
  return {compared, decisive};
}

// Free-running greedy on both; returns the first index where they differ (n if none). A divergence must be a
// near-tie on the reference side (margin below tolerance), or it is a bug.
int free_running_greedy(ModelRunner& ref, ModelRunner& cand, const std::vector<int32_t>& ids, int n, DType dtype,
                        const char* what) {
  const int64_t V = ref.config().vocab_size;
  ref.create_sequence(2, int64_t(ids.size()) + n + 1);
  cand.create_sequence(2, int64_t(ids.size()) + n + 1);
  Step step;
  for (size_t i = 0; i < ids.size(); ++i) step.add(ids[i], 2, int32_t(i), i + 1 == ids.size());
  int diverged = n;
  for (int s = 0; s < n; ++s) {
    const StepOutput a = ref.forward(step, nullptr), b = cand.forward(step, nullptr);
    const int32_t ta = argmax(a.logits.f32(), V), tb = argmax(b.logits.f32(), V);
    if (ta != tb) {
      diverged = s;
      const double margin = top2_margin(a.logits.f32(), V), tol = margin_tolerance(dtype, a.logits.f32(), V);
      EXPECT_LE(margin, tol) << what << ": greedy tokens part at step " << s << " although the reference's margin "
                             << margin << " exceeds the tolerance " << tol;
      break;
    }
    step = Step{};
    step.add(ta, 2, int32_t(ids.size()) + s, true);
  }
  ref.release_sequence(2);
  cand.release_sequence(2);
  return diverged;
}

TEST(StandardDefaultModel, Bf16AgreesWithReference) {
  REQUIRE_GPU();
  const fs::path repo = fs::path(TANDEM_FIXTURES).parent_path().parent_path();
  const fs::path model = repo / "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(model)) GTEST_SKIP() << model << " missing (tools/fetch_default_model.sh)";
  auto src = open_model_source(model);
  auto ref_ptr = reference_runner(std::shared_ptr<const Model>(load_reference_model(*src)));
  Executor& ref = *ref_ptr;
  auto gpu_ptr = standard_runner(*src, DType::BF16, 8192);
  Executor& gpu = *gpu_ptr;
  auto exp = SafetensorsFile::open(fs::path(TANDEM_FIXTURES) / "default_model/default_model.safetensors");
  for (int p = 0; p < 4; ++p) {
    const auto ids = ints(*exp, "p" + std::to_string(p) + ".prompt");
    const auto greedy = ints(*exp, "p" + std::to_string(p) + ".greedy");
    const std::vector<int32_t> forced(greedy.begin(), greedy.begin() + 32);
    double worst_rel = 0;
    const auto [compared, decisive] =
        teacher_forced_agreement(ref, gpu, ids, forced, DType::BF16, "default model", &worst_rel);
    const int same = free_running_greedy(ref, gpu, ids, 32, DType::BF16, "default model");
    std::printf("[ info ] default model prompt %d: top-1 agrees at all %d/%d decisive steps; logits rel_l2 <= %.3f; "
                "free-running greedy identical for %d/32 tokens (a divergence must be a near-tie: checked)\n", p,
                decisive, compared, worst_rel, same);
    EXPECT_GE(decisive, compared / 2) << "too few decisive steps to mean anything";
  }
}

// Real-shape models made by tools/make_gpu_models.py on this GPU, against HF bf16 on the same GPU.
TEST(StandardRealShapes, MatchHFOnTheSameGpu) {
  REQUIRE_GPU();
  const char* root = std::getenv("TANDEM_GPU_MODELS");
  if (!root) GTEST_SKIP() << "TANDEM_GPU_MODELS not set (python3 tools/make_gpu_models.py --out DIR)";
  int models = 0;
  for (const auto& entry : fs::directory_iterator(root)) {
    if (!fs::exists(entry.path() / "expected.safetensors")) continue;
    ++models;
    const std::string name = entry.path().filename().string();
    auto src = open_model_source(entry.path());
    auto exp = SafetensorsFile::open(entry.path() / "expected.safetensors");
    auto gpu_ptr = standard_runner(*src, DType::BF16, 4096);
    Executor& gpu = *gpu_ptr;
    const auto ids = ints(*exp, "p0.prompt");
    PrefillResult res;
    prefill(gpu, ids, res, 128);
    // Both bf16 implementations against HF in fp32 (the truth): ours may not be worse than twice HF's own bf16
    // error, or than the bf16 tolerance, whichever is larger. Deep and ill-conditioned models (Qwen2's |K|
    // ~ 200 makes attention nearly one-hot, so bf16's rounding of K moves it visibly) have a large intrinsic
    // bf16 error; a fixed tolerance would call that a bug, this rule does not.
    double worst_ratio = 0, worst_ours = 0, worst_hf = 0;
    std::string worst_tap;
    for (const TensorEntry& e : exp->entries()) {
      if (e.name.rfind("p0.f32.", 0) != 0) continue;
      const std::string tap = e.name.substr(7);
      const HostTensor* got = res.taps.find(tap);
      const TensorEntry* hf_bf16 = exp->find("p0." + tap);
      ASSERT_TRUE(got && hf_bf16) << tap;
      const Comparison ours = compare(*got, e.view()), hf = compare(hf_bf16->view(), e.view());
      const double bound = std::max(rel_tolerance(DType::BF16), 2.0 * hf.rel_l2);
      EXPECT_LE(ours.rel_l2, bound) << name << " " << tap << ": ours vs fp32 " << ours.summary()
                                    << "; HF bf16 vs fp32 rel_l2 " << hf.rel_l2;
      EXPECT_EQ(ours.nonfinite_a, 0) << name << " " << tap;
      const double ratio = ours.rel_l2 / std::max(hf.rel_l2, 1e-12);
      if (ours.rel_l2 > worst_ours) {
        worst_ours = ours.rel_l2;
        worst_hf = hf.rel_l2;
        worst_tap = tap;
      }
      worst_ratio = std::max(worst_ratio, ratio);
    }
    // Teacher-forced on HF's greedy tokens: our argmax equals HF's wherever HF's margin is decisive.
    const auto forced = ints(*exp, "p0.decode_tokens");
    const TensorEntry* hf_logits = exp->find("p0.decode_logits");
    const int64_t V = src->config().vocab_size;
    int decisive = 0, agree = 0, same_prefix = -1;
    Step step;
    step.add(forced[0], 0, int32_t(ids.size()), true);
    for (size_t s = 0; s < forced.size(); ++s) {
      const StepOutput o = gpu.forward(step, nullptr);
      std::vector<float> hf(static_cast<size_t>(V));
      std::memcpy(hf.data(), hf_logits->file->data() + hf_logits->offset + s * size_t(V) * 4, size_t(V) * 4);
      const int32_t ours = argmax(o.logits.f32(), V), theirs = argmax(hf.data(), V);
      if (ours != theirs && same_prefix < 0) same_prefix = int(s);
      if (top2_margin(hf.data(), V) > margin_tolerance(DType::BF16, hf.data(), V)) {
        ++decisive;
        agree += ours == theirs;
        EXPECT_EQ(ours, theirs) << name << " decode step " << s;
      }
      if (s + 1 == forced.size()) break;
      step = Step{};
      step.add(forced[s + 1], 0, int32_t(ids.size() + s + 1), true);
    }
    std::printf("[ info ] %s: vs HF fp32, worst tap %s rel_l2 %.3e (HF bf16 there: %.3e; worst ratio ours/HF %.2f); "
                "vs HF bf16, top-1 agrees at %d/%d decisive of %zu steps, argmax identical to HF's greedy for %d/%zu "
                "tokens\n", name.c_str(), worst_tap.c_str(), worst_ours, worst_hf, worst_ratio, agree, decisive,
                forced.size(), same_prefix < 0 ? int(forced.size()) : same_prefix, forced.size());
  }
  EXPECT_GT(models, 0) << "no models under " << root;
}

}  // namespace
}  // namespace tandem
