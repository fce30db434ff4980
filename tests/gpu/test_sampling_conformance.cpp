// Device sampling (cuda::sample_rows) against its CPU twin, exec/sampling.h sample_token(), token for token:
//  - extreme rows (random, one-hot, flat, ties, +-0, huge +-1e4 and +-3e38 magnitudes, +inf / NaN / -inf anywhere)
//    under parameter sets that reach every branch of the chain (greedy with and without a penalty, top_k past the
//    vocabulary, top_p 1, min_p 1, temperatures 1e-6 and 1e6, penalties that overflow logits to +-inf), for many u;
//  - real vocabularies (Qwen2 151936, Llama 3 128256), where a candidate set over kMaxDeviceCandidates comes back
//    as kSampleOnHost;
//  - batches of rows with different parameters, and more rows than the grid has blocks;
//  - end to end: the executor's sampled steps (CudaHost::finish_step_sampled, with the host fallback) and
//    generate() give the same tokens whether the device samples or the host samples the copied logits.
// The contract allows one difference: CUDA's double exp() may differ from libm's in the last bit, so a token could
// differ when u * total lands within ~1e-16 of a boundary; no row here is built to hit one, and rows whose terms are
// exactly 0 or 1 (flat, one-hot, +inf) cannot. Every test skips without a GPU.
#include <gtest/gtest.h>

#include <bit>
#include <cstring>
#include <filesystem>

#include "conformance.h"
#include "core/hash.h"
#include "cuda/sampling.cuh"
#include "exec/sampling.h"
#include "runners.h"
#include "runtime/generate.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;

// cuda::sample_rows over the [R, V] rows of h with rows[r], in guarded buffers (checked intact afterwards).
std::vector<int32_t> sample_rows_on_gpu(const std::vector<float>& h, int64_t R, int64_t V,
                                        const std::vector<RowSampling>& rows, cudaStream_t stream) {
  std::vector<int32_t> ids;
  const std::vector<cuda::SampleRowParams> params = cuda::pack_sample_rows(rows, V, &ids);
  const int64_t P = int64_t(ids.size());
  const int64_t pb = int64_t(sizeof(cuda::SampleRowParams));
  Guarded d(DType::F32, {R, V}), p(DType::U8, {R, pb}), pen(DType::I32, {std::max<int64_t>(P, 1)}),
      out(DType::I32, {R});
  d.upload(h);
  std::vector<uint8_t> bytes(size_t(R * pb));
  std::memcpy(bytes.data(), params.data(), bytes.size());
  p.upload_ints(bytes);
  if (P > 0) pen.upload_ints(ids);
  const Tensor pen_view = Tensor::contiguous(pen.view().data, DType::I32, {P}, Device::CUDA);
  cuda::sample_rows(d, p, pen_view, out, stream);
  TD_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<int32_t> got(static_cast<size_t>(R));
  TD_CUDA_CHECK(cudaMemcpy(got.data(), out.view().data, size_t(R) * 4, cudaMemcpyDeviceToHost));
  expect_guards_intact({&d, &p, &pen, &out});
  return got;
}

// The device may hand a row back only when its candidate set after top-k can exceed kMaxDeviceCandidates.
bool may_hand_back(const SamplingParams& p, int64_t V) {
  if (p.greedy() || V <= cuda::kMaxDeviceCandidates) return false;
  return p.top_k <= 0 || p.top_k > cuda::kMaxDeviceCandidates;
}

// Compares the device's tokens for `rows` over h with sample_token; returns the number of disagreements (the first
// few reported). A kSampleOnHost row passes when allowed and when the CPU twin does give a token for it.
int64_t compare_rows(const std::vector<float>& h, int64_t R, int64_t V, const std::vector<RowSampling>& rows,
                     const std::vector<int32_t>& got, const std::string& what) {
  int64_t wrong = 0;
  for (int64_t r = 0; r < R; ++r) {
    const RowSampling& s = rows[size_t(r)];
    const int32_t want = sample_token({h.data() + r * V, size_t(V)}, s.penalized, s.params, s.u);
    const int32_t g = got[size_t(r)];
    const bool ok = g == want || (g == cuda::kSampleOnHost && want >= 0 && may_hand_back(s.params, V));
    if (!ok && wrong++ < 5)
      ADD_FAILURE() << what << " row " << r << ": device " << g << ", CPU " << want << " (V " << V << ", t "
                    << s.params.temperature << ", top_k " << s.params.top_k << ", top_p " << s.params.top_p
                    << ", min_p " << s.params.min_p << ", penalty " << s.params.repeat_penalty << " over "
                    << s.penalized.size() << " ids, u " << s.u << ")";
  }
  return wrong;
}

SamplingParams params(float t, int k, float p, float m, float r = 1.0f) {
  SamplingParams s;
  s.temperature = t;
  s.top_k = k;
  s.top_p = p;
  s.min_p = m;
  s.repeat_penalty = r;
  return s;
}

// Every branch of the chain; `V` sizes top_k past the vocabulary.
std::vector<SamplingParams> parameter_sets(int64_t V) {
  return {params(0.0f, 40, 0.95f, 0.05f),          // greedy
          params(0.0f, 0, 1.0f, 0.0f, 1.5f),       // greedy with a penalty
          params(0.8f, 40, 0.95f, 0.05f),          // the CLI's defaults
          params(1.0f, 0, 1.0f, 0.0f),             // nothing but temperature (the OpenAI default)
          params(1.0f, int(V) + 5, 0.9f, 0.0f),    // top_k larger than the vocabulary
          params(0.7f, 50, 1.0f, 0.0f, 1.3f),      // top_p 1, a penalty
          params(1.0f, 100, 0.95f, 1.0f),          // min_p 1: the maximum (and its ties) only
          params(1e-6f, 100, 0.99f, 0.0f),         // temperature tiny
          params(1e6f, 100, 0.8f, 0.0f),           // temperature huge
          params(1.2f, 1000, 0.5f, 0.02f, 0.5f),   // a boosting penalty (3e38 / 0.5 = +inf)
          params(0.9f, 7, 0.3f, 0.2f, 4.0f),       // a harsh penalty (-3e38 * 4 = -inf)
          params(2.0f, 1, 0.9f, 0.0f)};            // top_k 1
}

// Rows of width V, each built to stress one rule. Returns them row after row.
std::vector<float> extreme_rows(int64_t V, uint32_t seed, int64_t* R) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<std::vector<float>> rows;
  const std::vector<float> noise = randn(V, DType::F32, seed);
  auto scaled = [&](float s) {
    std::vector<float> v(noise);
    for (float& x : v) x *= s;
    return v;
  };
  rows.push_back(scaled(3.0f));                                    // ordinary
  rows.push_back(std::vector<float>(size_t(V), -5.0f));            // one-hot
  rows.back()[size_t(V / 3)] = 30.0f;
  rows.push_back(std::vector<float>(size_t(V), 0.5f));             // flat: every term exactly 1
  rows.push_back(scaled(1.0f));                                    // many ties
  for (int64_t k = 0; k < V; ++k) rows.back()[size_t(k)] = float(k % 5) * 0.25f;
  rows.push_back(std::vector<float>(size_t(V), 0.0f));             // +0 and -0 (equal on the CPU)
  for (int64_t k = 0; k < V; k += 2) rows.back()[size_t(k)] = -0.0f;
  rows.push_back(scaled(1e4f));                                    // huge magnitudes
  rows.push_back(scaled(1.0f));                                    // near f32's max: penalties overflow
  for (int64_t k = 0; k < V; ++k) rows.back()[size_t(k)] = (k % 3 == 0 ? 3e38f : -3e38f) * (k % 2 ? 1.0f : 0.9f);
  rows.push_back(scaled(2.0f));                                    // +inf: the NaN guard
  rows.back()[size_t(V - 1)] = inf;
  rows.push_back(scaled(2.0f));                                    // NaN
  rows.back()[size_t(V / 2)] = nan;
  rows.push_back(scaled(2.0f));                                    // -inf
  rows.back()[0] = -inf;
  rows.push_back(scaled(0.01f));                                   // nearly flat
  *R = int64_t(rows.size());
  std::vector<float> h;
  for (const auto& r : rows) h.insert(h.end(), r.begin(), r.end());
  return h;
}

const double kUs[] = {0.0, 1e-12, 0.1, 0.25, 1.0 / 3, 0.5, 0.75, 0.9, 0.999999, 1.0 - 0x1.0p-53};

TEST_F(OpConformance, sample_rows) {
  for (int64_t V : {int64_t(1), int64_t(2), int64_t(7), int64_t(300), int64_t(1024), int64_t(1025), int64_t(4099)}) {
    int64_t R = 0;
    const std::vector<float> h = extreme_rows(V, uint32_t(V) + 3, &R);
    // Penalty windows: the row's extremes, duplicates, and the ids the one-hot and near-max rows care about.
    const std::vector<int32_t> window{0, int32_t(V / 3), int32_t(V - 1), int32_t(V / 3), int32_t(V / 2),
                                      int32_t(3 % V), int32_t(6 % V), int32_t(9 % V)};
    int64_t wrong = 0;
    for (const SamplingParams& sp : parameter_sets(V))
      for (double u : kUs) {
        std::vector<RowSampling> rows(static_cast<size_t>(R));
        for (int64_t r = 0; r < R; ++r) {
          rows[size_t(r)].params = sp;
          rows[size_t(r)].u = sp.greedy() ? 0.0 : u;
          rows[size_t(r)].penalized = sp.repeat_penalty != 1.0f ? std::span<const int32_t>(window)
                                                                 : std::span<const int32_t>();
        }
        const std::vector<int32_t> got = sample_rows_on_gpu(h, R, V, rows, stream_);
        wrong += compare_rows(h, R, V, rows, got, "V " + std::to_string(V));
        for (int64_t r : {int64_t(7), int64_t(8), int64_t(9)}) EXPECT_EQ(got[size_t(r)], kNonFiniteRow) << "row " << r;
      }
    EXPECT_EQ(wrong, 0) << "V " << V;
  }
}

// A penalty window holding every id of a row whose logits all overflow: nothing is choosable on either side.
TEST_F(OpConformance, sample_rows_EveryLogitMinusInfAfterThePenalty) {
  const int64_t V = 40;
  std::vector<float> h(size_t(V), -3e38f);
  std::vector<int32_t> all(static_cast<size_t>(V));
  for (int32_t i = 0; i < int32_t(V); ++i) all[size_t(i)] = i;
  for (float t : {0.0f, 1.0f}) {
    std::vector<RowSampling> rows(1);
    rows[0].params = params(t, 10, 0.9f, 0.0f, 2.0f);
    rows[0].u = 0.5;
    rows[0].penalized = all;
    EXPECT_EQ(sample_rows_on_gpu(h, 1, V, rows, stream_)[0], kNoCandidate);
    EXPECT_EQ(sample_token(h, all, rows[0].params, 0.5), kNoCandidate);
  }
}

// Real vocabularies: top_k up to kMaxDeviceCandidates on the device, top_k off handed back; one NaN/Inf anywhere
// (warp, block-stride and row boundaries) gives kNonFiniteRow.
TEST_F(OpConformance, sample_rows_RealVocabularies) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (int64_t V : {int64_t(151936), int64_t(128256)}) {
    const int64_t R = 8;
    std::vector<float> h = randn(R * V, DType::F32, uint32_t(V));
    auto row = [&](int64_t r) { return h.data() + r * V; };
    for (int64_t k = 0; k < V; ++k) row(0)[k] *= 4.0f;
    std::fill(row(1), row(1) + V, -2.0f), row(1)[V - 1] = 25.0f;  // one-hot at the end
    std::fill(row(2), row(2) + V, 1.0f);                          // flat
    row(3)[511] = nan;
    row(4)[V - 1] = inf;
    row(5)[1024] = -inf;
    for (int64_t k = 0; k < V; ++k) row(6)[k] = float(k % 97) * 0.1f;  // ties, many candidates at the top
    std::vector<int32_t> window;
    for (int32_t i = 0; i < 64; ++i) window.push_back(int32_t((int64_t(i) * 2371) % V));
    window.push_back(int32_t(V - 1));
    int64_t wrong = 0;
    for (const SamplingParams& sp :
         {params(0.8f, 40, 0.95f, 0.05f), params(1.0f, cuda::kMaxDeviceCandidates, 0.98f, 0.0f, 1.2f),
          params(0.0f, 0, 1.0f, 0.0f, 1.3f), params(1.0f, 0, 1.0f, 0.0f), params(0.6f, 2000, 0.9f, 0.1f)})
      for (double u : {0.03, 0.5, 0.97}) {
        std::vector<RowSampling> rows(static_cast<size_t>(R));
        for (int64_t r = 0; r < R; ++r) {
          rows[size_t(r)].params = sp;
          rows[size_t(r)].u = sp.greedy() ? 0.0 : u;
          if (sp.repeat_penalty != 1.0f) rows[size_t(r)].penalized = window;
        }
        const std::vector<int32_t> got = sample_rows_on_gpu(h, R, V, rows, stream_);
        wrong += compare_rows(h, R, V, rows, got, "V " + std::to_string(V));
        for (int64_t r : {int64_t(3), int64_t(4), int64_t(5)}) EXPECT_EQ(got[size_t(r)], kNonFiniteRow) << "row " << r;
        if (may_hand_back(sp, V)) {
          EXPECT_EQ(got[0], cuda::kSampleOnHost) << "top_k " << sp.top_k;
        }
      }
    EXPECT_EQ(wrong, 0) << "V " << V;
  }
}

// A batch whose rows all differ (parameters, u, windows, some penalized and some not), and more rows than the grid
// has blocks, so a block reuses its shared memory (the penalty bitmap above all) for rows of other kinds.
TEST_F(OpConformance, sample_rows_MixedBatchesAndBlockReuse) {
  for (const auto& [R, V] : {std::pair<int64_t, int64_t>{300, 1000}, std::pair<int64_t, int64_t>{65535 + 77, 24}}) {
    std::vector<float> h = randn(R * V, DType::F32, uint32_t(R + V));
    for (int64_t r = 0; r < R; r += 5) std::fill(h.begin() + r * V, h.begin() + (r + 1) * V, 0.25f);  // flat
    const std::vector<SamplingParams> sets = parameter_sets(V);
    std::vector<std::vector<int32_t>> windows(static_cast<size_t>(R));
    std::vector<RowSampling> rows(static_cast<size_t>(R));
    uint64_t x = 99;
    for (int64_t r = 0; r < R; ++r) {
      RowSampling& s = rows[size_t(r)];
      s.params = sets[size_t(r) % sets.size()];
      if (r % 3 == 0) s.params.repeat_penalty = 1.0f + float(r % 7) * 0.1f;
      s.u = s.params.greedy() ? 0.0 : double(splitmix64(x) >> 11) * 0x1.0p-53;
      if (s.params.repeat_penalty != 1.0f)
        for (int64_t j = 0; j < 1 + r % 9; ++j) windows[size_t(r)].push_back(int32_t(splitmix64(x) % uint64_t(V)));
      s.penalized = windows[size_t(r)];
    }
    const std::vector<int32_t> got = sample_rows_on_gpu(h, R, V, rows, stream_);
    EXPECT_EQ(compare_rows(h, R, V, rows, got, "R " + std::to_string(R)), 0) << "R " << R << " V " << V;
  }
}

TEST_F(OpConformance, sample_rows_RejectsBadArguments) {
  Guarded d(DType::F32, {2, 10}), p(DType::U8, {2, int64_t(sizeof(cuda::SampleRowParams))}), ids(DType::I32, {4}),
      out(DType::I32, {2});
  Guarded short_p(DType::U8, {1, int64_t(sizeof(cuda::SampleRowParams))}), bf16(DType::BF16, {2, 10});
  EXPECT_THROW(cuda::sample_rows(d, short_p, ids, out, stream_), Error);
  EXPECT_THROW(cuda::sample_rows(bf16, p, ids, out, stream_), Error);
  std::vector<int32_t> packed;
  std::vector<RowSampling> rows(1);
  const std::vector<int32_t> outside{3, 10};
  rows[0].penalized = outside;
  EXPECT_THROW(cuda::pack_sample_rows(rows, 10, &packed), Error);
}

// ------------------------------------------------------------------------------------------------ end to end

#define REQUIRE_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"

class GpuSampling : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    REQUIRE_GPU();
    src_ = open_model_source(fs::path(TANDEM_FIXTURES) / GetParam());
  }
  std::unique_ptr<ModelSource> src_;
};

// An interleaved step (the executor regroups it) with a different RowSampling per row: the device's tokens are
// sample_token() of the logits another runner returns for the same step.
TEST_P(GpuSampling, SampledStepIsSampleTokenOfTheLogits) {
  const int64_t V = src_->config().vocab_size;
  for (const char* path : {"standard", "fused"}) {
    SCOPED_TRACE(path);
    auto full = cuda_runner(path, *src_, DType::F32, 1024), sampled = cuda_runner(path, *src_, DType::F32, 1024);
    for (auto* r : {full.get(), sampled.get()}) {
      r->create_sequence(0, 32);
      r->create_sequence(1, 32);
    }
    Step step;
    for (int i = 0; i < 5; ++i) {
      step.add(3 + i, 0, i, i >= 3);
      step.add(7 + 2 * i, 1, i, i == 4);
    }
    const StepOutput a = full->forward(step, nullptr);
    const std::vector<int32_t> window{3, 4, 5, 9, 9};
    std::vector<RowSampling> rows(a.logit_rows.size());
    for (size_t r = 0; r < rows.size(); ++r) {
      rows[r].params = parameter_sets(V)[(3 * r + 1) % parameter_sets(V).size()];
      rows[r].params.repeat_penalty = 1.3f;
      rows[r].u = rows[r].params.greedy() ? 0.0 : 0.1 + 0.27 * double(r);
      rows[r].penalized = std::span<const int32_t>(window).first(r + 2);
    }
    step.sampling = rows;
    const StepOutput b = sampled->forward(step, nullptr);
    ASSERT_EQ(a.logit_rows, b.logit_rows);
    EXPECT_EQ(b.logits.numel(), 0);
    ASSERT_EQ(b.sampled.size(), rows.size());
    for (size_t r = 0; r < rows.size(); ++r)
      EXPECT_EQ(b.sampled[r], sample_token({a.logits.f32() + int64_t(r) * V, size_t(V)}, rows[r].penalized,
                                           rows[r].params, rows[r].u))
          << "row " << r;
  }
}

// generate() with the tokens sampled on the device gives the tokens of the host sampler on the copied logits, for
// the same seeds: a batch mixing the CLI's defaults, the OpenAI default (temperature only) with a whole-sequence
// penalty, greedy with a penalty, and a small top_p; on both GPU paths, f32 and bf16, decode steps from CUDA graphs.
TEST_P(GpuSampling, GenerateGivesTheHostSamplersTokens) {
  for (const char* path : {"standard", "fused"})
    for (DType dt : {DType::F32, DType::BF16}) {
      SCOPED_TRACE(std::string(path) + " " + std::string(dtype_name(dt)));
      auto runner = cuda_runner(path, *src_, dt, 4096);
      std::vector<GenerationRequest> reqs(4);
      for (size_t i = 0; i < reqs.size(); ++i) {
        reqs[i].prompt = {1, int32_t(5 + i), 17, 42, int32_t(60 + 3 * i)};
        reqs[i].max_new_tokens = 40;
        reqs[i].stop_at_eos = false;
        reqs[i].sampling.seed = 1000 + i;
      }
      reqs[1].sampling = params(1.0f, 0, 1.0f, 0.0f, 1.2f);
      reqs[1].sampling.repeat_last_n = -1;
      reqs[1].sampling.seed = 7;
      reqs[2].sampling = params(0.0f, 0, 1.0f, 0.0f, 1.3f);
      reqs[2].sampling.seed = 9;  // (greedy draws nothing, but an unset seed is a random one, reported per run)
      reqs[3].sampling = params(1.3f, 20, 0.6f, 0.0f);
      reqs[3].sampling.seed = 8;
      const auto device = generate(*runner, reqs);
      for (auto& q : reqs) q.logits_to_host = true;
      const auto host = generate(*runner, reqs);
      for (size_t i = 0; i < reqs.size(); ++i) {
        EXPECT_EQ(device[i].tokens, host[i].tokens) << "request " << i;
        EXPECT_EQ(device[i].seed, host[i].seed);
      }
    }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GpuSampling, ::testing::Values("llama", "qwen2", "mistral"),
                         [](const auto& info) { return info.param; });

// The default model's real vocabulary (49152): top_k off hands rows back, and CudaHost samples them on the host
// from their logits row alone; top_k 40 stays on the device. Same tokens as the host sampler either way.
TEST(GpuSamplingDefaultModel, HandedBackRowsAreSampledOnTheHost) {
  REQUIRE_GPU();
  const fs::path repo = fs::path(TANDEM_FIXTURES).parent_path().parent_path();
  const fs::path model = repo / "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(model)) GTEST_SKIP() << model << " missing (tools/fetch_default_model.sh)";
  auto src = open_model_source(model);
  auto runner = standard_runner(*src, DType::BF16, 8192);
  std::vector<GenerationRequest> reqs(3);
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].prompt = {1, 504, 3458, 314, int32_t(100 + i)};
    reqs[i].max_new_tokens = 32;
    reqs[i].stop_at_eos = false;
  }
  reqs[0].sampling = params(1.0f, 0, 1.0f, 0.0f);  // handed back
  reqs[0].sampling.seed = 3;
  reqs[1].sampling = params(0.8f, 40, 0.95f, 0.05f);  // on the device
  reqs[1].sampling.seed = 4;
  reqs[2].sampling = params(0.9f, 0, 0.9f, 0.0f, 1.1f);  // handed back, with a penalty
  reqs[2].sampling.seed = 5;
  const auto device = generate(*runner, reqs);
  for (auto& q : reqs) q.logits_to_host = true;
  const auto host = generate(*runner, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(device[i].tokens, host[i].tokens) << "request " << i;
}

}  // namespace
}  // namespace tandem
