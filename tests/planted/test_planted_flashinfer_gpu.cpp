// Planted bugs inside FlashInfer (labels `planted` and `gpu`; the variants: planted_gpu_flashinfer.cpp): the
// FlashInfer metadata mistakes that give garbage silently, planted in the fused path on a model whose attention
// FlashInfer runs -- the real-shape SmolLM2-135M of TANDEM_GPU_MODELS (tools/make_gpu_models.py --only
// smollm2-135m-shape; random weights, head_dim 64, 9 query / 3 KV heads, 30 layers), not the head_dim-16 fixtures.
// Each must be localized by tandem diff (step, layer and stage) and named by tandem bisect, and show its class
// (--kv-poison, or the rows the largest error sits in). The good side runs attention.flashinfer, the same adapter
// and kernel on every step, so everything before the planted attention agrees exactly and the default bf16
// tolerance applies. The GPU tests skip without a GPU or without TANDEM_GPU_MODELS; the plan test runs everywhere.
// Expected reports: the table at the top of test_planted_gpu.cpp (to be confirmed on a GPU).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "cli_run.h"
#include "cuda/device_query.h"
#include "runtime/model_bundle.h"
#include "runtime/plan.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;

const std::string kFixture = std::string(TANDEM_FIXTURES) + "/llama";
const std::string kIds = " --prompt-ids 1,5,9,20,33 ";

// The real-shape SmolLM2 folder, or "" when TANDEM_GPU_MODELS is unset or lacks it.
std::string real_shape_model() {
  const char* root = std::getenv("TANDEM_GPU_MODELS");
  if (!root) return "";
  const fs::path model = fs::path(root) / "smollm2-135m-shape";
  return fs::exists(model / "config.json") ? model.string() : "";
}

#define REQUIRE_REAL_SHAPE_MODEL(var)                                                 \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";                    \
  const std::string var = real_shape_model();                                         \
  if (var.empty())                                                                    \
  GTEST_SKIP() << "TANDEM_GPU_MODELS not set or without smollm2-135m-shape (python3 " \
                  "tools/make_gpu_models.py --out DIR --only smollm2-135m-shape)"

struct FiPlanted {
  const char* variant;  // --variant-a / --variant-bad
  const char* name;     // the variant's full name (bisect's culprit)
  const char* extra;    // what makes it show (another sequence's pages need a batch)
  const char* first;    // "step S (phase), tap T"
  const char* state;    // the start of side a's FlashInfer plan in the report
};
const FiPlanted kFiPlanted[] = {
    {"attention=test_flashinfer_last_page_long", "attention.test_flashinfer_last_page_long", "",
     "step 0 (prefill), tap L0.attention", "FlashInfer plan: batch 1, 5 tokens, "},
    {"attention=test_flashinfer_other_seq_pages", "attention.test_flashinfer_other_seq_pages", "--batch 3 ",
     "step 0 (prefill, batch of 3), tap L0.attention", "FlashInfer plan: batch 3, 12 tokens, "},
    {"attention=test_flashinfer_nhd_as_hnd", "attention.test_flashinfer_nhd_as_hnd", "",
     "step 0 (prefill), tap L0.attention", "FlashInfer plan: batch 1, 5 tokens, "},
};

// `diff` of the fused path with the planted FlashInfer variant against the fused path with attention.flashinfer.
std::string diff_cmd(const std::string& model, const std::string& extra) {
  return "diff -m " + model + kIds + "-n 2 --dtype bf16 --a fused --b fused --variant-b attention=flashinfer " + extra;
}
std::string bisect_cmd(const std::string& model, const std::string& extra) {
  return "bisect -m " + model + kIds +
         "-n 2 --dtype bf16 --good fused --bad fused --variant-good attention=flashinfer " + extra;
}

// Without a GPU too: each variant is registered on the CUDA device, test-only, not graph-safe; it resolves in the
// fused plan of a model FlashInfer takes (the fixture with SmolLM2's attention geometry), and is refused, naming
// FlashInfer's limit, for the head_dim-16 fixture; the HND mix-up only plans over an NHD cache.
TEST(PlantedFlashInferPlans, EachVariantResolvesWhereFlashInferRuns) {
  const ModelBundle bundle = open_model_bundle(kFixture);
  ModelConfig smol = bundle.config();
  smol.n_heads = 9;
  smol.n_kv_heads = 3;
  smol.head_dim = 64;
  for (const FiPlanted& p : kFiPlanted) {
    SCOPED_TRACE(p.name);
    const Variant* v = find_variant(Device::CUDA, p.name);
    ASSERT_NE(v, nullptr);
    EXPECT_TRUE(v->test_only);
    EXPECT_FALSE(v->graph_safe);
    EXPECT_TRUE(v->prepare && v->run && v->state);
    const Plan plan = build_plan({"fused", {p.variant}, KvLayout::NHD, &smol, DType::BF16});
    EXPECT_EQ(plan.by_stage[size_t(Stage::attention)]->name, p.name);
    EXPECT_EQ(plan.overridden, std::vector<std::string>{p.name});
    try {
      (void)build_plan({"fused", {p.variant}, KvLayout::NHD, &bundle.config(), DType::BF16});
      ADD_FAILURE() << "planned for head_dim 16";
    } catch (const Error& e) {
      EXPECT_THAT(std::string(e.what()), HasSubstr("cannot run this model: FlashInfer is instantiated for head_dim "
                                                   "64 and 128 only, not 16"));
    }
  }
  EXPECT_NO_THROW(
      (void)build_plan({"fused", {"attention=test_flashinfer_last_page_long"}, KvLayout::HND, &smol, DType::BF16}));
  EXPECT_THROW((void)build_plan({"fused", {"attention=test_flashinfer_nhd_as_hnd"}, KvLayout::HND, &smol, DType::BF16}),
               Error);
}

// diff names step 0, L0.attention, with L0.kv_write the last tap that agreed, and side a's FlashInfer plan; bisect
// names the planted variant alone.
TEST(PlantedFlashInfer, DiffAndBisectLocalizeEachBug) {
  REQUIRE_REAL_SHAPE_MODEL(model);
  for (const FiPlanted& p : kFiPlanted) {
    SCOPED_TRACE(p.name);
    RunResult r = run_tandem(diff_cmd(model, std::string(p.extra) + "--variant-a " + p.variant));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_THAT(r.output, HasSubstr(std::string("FIRST DIVERGENCE: ") + p.first + "\n")) << r.output;
    EXPECT_THAT(r.output, HasSubstr("last tap that agreed: L0.kv_write ")) << r.output;
    EXPECT_THAT(r.output, HasSubstr(std::string("a: path fused on cuda, bf16 activations, attention by ") + p.name))
        << r.output;
    EXPECT_THAT(r.output, HasSubstr("b: path fused on cuda, bf16 activations, attention by attention.flashinfer"))
        << r.output;
    EXPECT_THAT(r.output, HasSubstr(p.state)) << r.output;
    r = run_tandem(bisect_cmd(model, std::string(p.extra) + "--variant-bad " + p.variant));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_THAT(r.output, HasSubstr("1 swappable unit(s) differ")) << r.output;
    EXPECT_THAT(r.output, HasSubstr(std::string("CULPRIT: ") + p.name + " ")) << r.output;
    EXPECT_THAT(r.output, HasSubstr(std::string("FIRST DIVERGENCE: ") + p.first + "\n")) << r.output;
  }
}

// What a user would run: the fused path with the bug bisected against the standard path. Every fused unit differs;
// the planted variant alone is named. --tol 4e-2: fused and standard part by up to 2.08e-2 on this model in bf16
// (DiffMatrixGpu.DecodeKernelAxisOnARealShapeModel).
TEST(PlantedFlashInfer, BisectFindsTheFlashInferBugAmongTheFusedKernels) {
  REQUIRE_REAL_SHAPE_MODEL(model);
  const RunResult r = run_tandem("bisect -m " + model + kIds +
                                 "-n 2 --dtype bf16 --good standard --bad fused --tol "
                                 "4e-2 --variant-bad attention=test_flashinfer_last_page_long");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, ContainsRegex("([2-9]|[1-9][0-9]) swappable unit\\(s\\) differ")) << r.output;
  EXPECT_THAT(r.output, HasSubstr("CULPRIT: attention.test_flashinfer_last_page_long ")) << r.output;
  EXPECT_THAT(r.output, HasSubstr("FIRST DIVERGENCE: step 0 (prefill), tap L0.attention\n")) << r.output;
}

// last_page_len one long: the planned KV reaches slot 5, which the prefill never wrote, so --kv-poison stops at the
// first layer's attention (FlashInfer loads slot 5 for the whole query tile: the newest query reads its NaN key,
// and its NaN value turns the others' masked weight of 0 into NaN as well, so no row is spared). The correct
// fused path passes the same check: it never loads a slot past the KV length. With forced split-KV the report
// names the mode (5 tokens fit one page: nothing to split).
TEST(PlantedFlashInfer, LastPageLongReadsTheNeverWrittenSlotUnderKvPoison) {
  REQUIRE_REAL_SHAPE_MODEL(model);
  const std::string base = "trace -m " + model + kIds + "-n 1 --dtype bf16 --path fused --kv-poison ";
  RunResult r = run_tandem(base);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  r = run_tandem(base + "--variant attention=test_flashinfer_last_page_long");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, ContainsRegex("L0.attention: [0-9]+ of 2880 values are NaN with --kv-poison \\(first in step "
                                      "row [0-4]\\): attention read a KV slot that was never written; check "
                                      "L0.kv_write \\(variant attn_norm..kv_write.fused\\)"))
      << r.output;
  r = run_tandem(
      diff_cmd(model, "--split-kv-a on --split-kv-b on --variant-a attention=test_flashinfer_last_page_long"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("FIRST DIVERGENCE: step 0 (prefill), tap L0.attention\n")) << r.output;
  EXPECT_THAT(r.output, HasSubstr("split-KV off (forced, but no sequence spans two 16-token chunks)")) << r.output;
}

// Another sequence's pages: equal with one sequence; in a batch of three (sequence b holds the prompt's first 5 - b
// tokens, so their K/V agree position by position) only the rows that reach a slot the other sequence never wrote
// part: sequence 0's position 4 (row 4) and sequence 1's position 3 (row 8).
TEST(PlantedFlashInfer, OtherSequencesPagesShowOnlyInABatch) {
  REQUIRE_REAL_SHAPE_MODEL(model);
  const std::string v = "--variant-a attention=test_flashinfer_other_seq_pages ";
  RunResult r = run_tandem(diff_cmd(model, v));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("equal: ")) << r.output;
  r = run_tandem(diff_cmd(model, "--batch 3 " + v));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, ContainsRegex("largest error at row (4 \\(sequence 0, position 4\\)|8 \\(sequence 1, "
                                      "position 3\\)), column "))
      << r.output;
  r = run_tandem(bisect_cmd(model, "--variant-bad attention=test_flashinfer_other_seq_pages"));
  EXPECT_EQ(r.exit_code, 0) << r.output;  // batch 1: nothing diverges
}

// The adapter told HND over an NHD cache: KV heads 1 and 2 are read from offsets past the slots the prefill wrote,
// so --kv-poison stops at L0.attention from the first row on; at page size 1 the two layouts are the same bytes and
// nothing diverges.
TEST(PlantedFlashInfer, NhdToldHndReadsNeverWrittenSlotsUnderKvPoison) {
  REQUIRE_REAL_SHAPE_MODEL(model);
  RunResult r = run_tandem("trace -m " + model + kIds +
                           "-n 1 --dtype bf16 --path fused --kv-poison "
                           "--variant attention=test_flashinfer_nhd_as_hnd");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, ContainsRegex("L0.attention: [0-9]+ of 2880 values are NaN with --kv-poison \\(first in step "
                                      "row 0\\): attention read a KV slot that was never written"))
      << r.output;
  r = run_tandem(diff_cmd(model, "--page-size 1 --variant-a attention=test_flashinfer_nhd_as_hnd"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("equal: ")) << r.output;
}

}  // namespace
}  // namespace tandem
