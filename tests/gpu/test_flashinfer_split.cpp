// FlashInfer's split-KV modes (--split-kv; cuda/flashinfer.cuh): forced on (every sequence longer than a small
// chunk is split and its partial softmax states merged), off (never split) and auto, each against the fp32 CPU
// reference (flashinfer_scenario.h: the same pass criteria and NaN-poisoned pools as test_flashinfer.cpp) on
// extreme rows: a 1000-token prompt and decode rows at contexts 1000 and 400 whose scaled scores reach +-1e4
// (Huge) or put one key ~1e4 above all others (OneHot), so that a merge over many chunks with a wrong running max
// or log-sum-exp shows at once. Also: the plan summary and describe_plan report the mode asked for and whether the
// plan split; the forced chunk is the smallest (4 tokens at page size 1, one page at 16) unless the partial
// outputs would pass kForcedSplitMaxFloatBytes (the long prompt); in CUDA-graph mode the chunk grows until the
// chunks fit the graph's fixed grid, and plans of one batch size keep one launch signature (graphs replay).
// Every test skips without a GPU.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "flashinfer_scenario.h"

namespace tandem {
namespace {
using namespace fitest;

class FlashInferSplit : public FlashInfer {
 protected:
  // Plans and runs a built scenario on `fa` (fresh pools and output each time); checks it against the reference.
  cuda::FlashInferPlanSummary run_on(cuda::FlashInferAttention& fa, const Scenario& s, bool cuda_graph = false) {
    DeviceStep d(s, stream_);
    const cuda::FlashInferPlanSummary plan = fa.plan(s.tables, s.num_pages, stream_, cuda_graph);
    fa.run(d.q, d.kv, d.out->view(), stream_);
    const HostTensor got = cuda::download_f32(d.out->view(), stream_);
    EXPECT_TRUE(matches_reference(s, std::vector<float>(got.f32(), got.f32() + got.numel())))
        << cuda::describe_plan(plan);
    EXPECT_EQ(d.out->damaged_guards(stream_), 0) << "writes outside the output";
    EXPECT_EQ(plan.split_mode, fa.split_kv());
    return plan;
  }
  cuda::FlashInferPlanSummary run_split(const Scenario& s, SplitKv split) {
    SCOPED_TRACE(s.c.name() + " split-kv " + std::string(split_kv_name(split)));
    cuda::FlashInferAttention fa(s.c.shape(), s.c.dtype, s.c.page_size, s.c.layout, 4096, 64, split);
    return run_on(fa, s);
  }
};

bool contains(const std::string& text, const std::string& what) { return text.find(what) != std::string::npos; }

// The smallest forced chunk: kForcedSplitChunkTokens rounded up to whole pages.
int64_t smallest_chunk(int64_t page_size) {
  return (cuda::kForcedSplitChunkTokens + page_size - 1) / page_size * page_size;
}

TEST_F(FlashInferSplit, run_ForcedAndDisabledSplitOnExtremeRows) {
  REQUIRE_GPU();
  struct Shape {
    int64_t page_size;
    int n_heads, n_kv_heads, head_dim;
  };
  uint32_t seed = 1200;
  for (Fill fill : {Fill::Huge, Fill::OneHot})
    for (DType dt : {DType::BF16, DType::F16})
      for (const Shape& g : {Shape{1, 14, 2, 64}, Shape{16, 8, 2, 128}}) {
        Case c{dt, g.n_heads, g.n_kv_heads, g.head_dim, g.page_size};
        c.fill = fill;
        const Scenario prompt = make_scenario(c, {{0, 1000}}, seed++);
        const Scenario decode = make_scenario(c, {{999, 1}, {399, 1}}, seed++);
        for (const Scenario* s : {&prompt, &decode}) {
          const bool is_prompt = s == &prompt;
          SCOPED_TRACE(is_prompt ? "1000-token prompt" : "decode rows at contexts 1000 and 400");
          const cuda::FlashInferPlanSummary off = run_split(*s, SplitKv::off);
          EXPECT_FALSE(off.split_kv);
          EXPECT_EQ(off.kv_chunk_tokens, 0);
          EXPECT_TRUE(contains(cuda::describe_plan(off), ", split-KV off (disabled), ")) << cuda::describe_plan(off);

          const cuda::FlashInferPlanSummary on = run_split(*s, SplitKv::on);
          EXPECT_TRUE(on.split_kv);
          EXPECT_EQ(on.kv_chunk_tokens % g.page_size, 0) << on.kv_chunk_tokens;
          EXPECT_GE(on.kv_chunk_tokens, smallest_chunk(g.page_size));
          EXPECT_LT(on.kv_chunk_tokens, 1000);  // still split, even where the budget made the chunk grow
          if (!is_prompt) {
            EXPECT_EQ(on.kv_chunk_tokens, smallest_chunk(g.page_size));
          }
          EXPECT_LE(on.float_workspace_bytes, cuda::kForcedSplitMaxFloatBytes);
          EXPECT_TRUE(contains(cuda::describe_plan(on),
                               ", split-KV on (forced, " + std::to_string(on.kv_chunk_tokens) + "-token chunks), "))
              << cuda::describe_plan(on);

          const cuda::FlashInferPlanSummary automatic = run_split(*s, SplitKv::automatic);
          EXPECT_TRUE(contains(cuda::describe_plan(automatic),
                               automatic.split_kv ? ", split-KV on (auto" : ", split-KV off (auto)"))
              << cuda::describe_plan(automatic);
        }
      }
}

// Forced split in CUDA-graph mode: 8 sequences decoding at contexts near 1000 (page size 1) would need 2000
// 4-token chunks, more than the graph's grid (2 CTAs per SM / n_kv_heads, at least the batch); the plan doubles
// the chunk until they fit and still splits. A second plan of the same batch size (one token later) keeps the
// launch signature, so a captured graph replays with it.
TEST_F(FlashInferSplit, plan_ForcedSplitFitsTheCudaGraphGrid) {
  REQUIRE_GPU();
  for (DType dt : {DType::BF16, DType::F16}) {
    const Case c{dt, 8, 2, 64, 1, KvLayout::HND};
    SCOPED_TRACE(c.name());
    std::vector<SeqSpec> step1, step2;
    for (int i = 0; i < 8; ++i) {
      step1.push_back({int64_t(990 + i), 1});
      step2.push_back({int64_t(991 + i), 1});
    }
    const Scenario s1 = make_scenario(c, step1, 1300), s2 = make_scenario(c, step2, 1301);
    cuda::FlashInferAttention fa(c.shape(), c.dtype, c.page_size, c.layout, 4096, 64, SplitKv::on);
    const cuda::FlashInferPlanSummary p1 = run_on(fa, s1, /*cuda_graph=*/true);
    const uint64_t sig1 = fa.launch_signature();
    EXPECT_TRUE(p1.cuda_graph);
    EXPECT_TRUE(p1.split_kv);
    EXPECT_GT(p1.kv_chunk_tokens, smallest_chunk(1)) << "2000 chunks cannot fit a graph grid";
    EXPECT_LT(p1.kv_chunk_tokens, 990);
    int64_t chunks = 0;
    for (const SeqSpec& q : step1) chunks += (q.cached + 1 + p1.kv_chunk_tokens - 1) / p1.kv_chunk_tokens;
    EXPECT_LE(chunks, p1.padded_batch_size) << cuda::describe_plan(p1);
    const cuda::FlashInferPlanSummary p2 = run_on(fa, s2, /*cuda_graph=*/true);
    EXPECT_TRUE(p2.split_kv);
    EXPECT_EQ(p2.padded_batch_size, p1.padded_batch_size);
    EXPECT_EQ(fa.launch_signature(), sig1) << cuda::describe_plan(p1) << "\n" << cuda::describe_plan(p2);
    // Split-KV off in CUDA-graph mode: one CTA per sequence over the whole context.
    cuda::FlashInferAttention fa_off(c.shape(), c.dtype, c.page_size, c.layout, 4096, 64, SplitKv::off);
    const cuda::FlashInferPlanSummary p_off = run_on(fa_off, s1, /*cuda_graph=*/true);
    EXPECT_FALSE(p_off.split_kv);
    EXPECT_TRUE(p_off.cuda_graph);
  }
}

}  // namespace
}  // namespace tandem
