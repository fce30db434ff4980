// The planted-bug suite on the CPU: tandem diff on two reference plans, one with a planted test-only variant, must
// part at the planted
// stage (and nowhere before), name both variants and the page table, and keep the exit-code contract
// (0 equal, 1 divergence, 2 usage error). tandem bisect names the planted variant.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>

#include "cli_run.h"

namespace tandem {
namespace {
using ::testing::HasSubstr;

const std::string kModel = std::string(TANDEM_FIXTURES) + "/llama";
const std::string kRun = "diff -m " + kModel + " --prompt-ids 1,5,9,20,33 -n 2 --a reference --b reference ";

TEST(DiffCli, EqualPlansExitZero) {
  RunResult r = run_tandem(kRun);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("equal: 81 taps over 3 steps within 1.0e-04"));
  // --kv-verify reads both whole caches after every step (here through one-token pages in HND).
  r = run_tandem(kRun + "--kv-verify --page-size 1 --kv-layout hnd");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("KV VERIFY FAILED")));
}

TEST(DiffCli, NamesThePlantedStageFirst) {
  RunResult r = run_tandem(kRun + "--variant-a attention=test_drop_last_key");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("FIRST DIVERGENCE: step 0 (prefill), tap L0.attention"));
  EXPECT_THAT(r.output, HasSubstr("a: path reference on cpu, f32 activations, attention by attention.test_drop_last_key"));
  EXPECT_THAT(r.output, HasSubstr("b: path reference on cpu, f32 activations, attention by attention.reference; KV nhd"));
  EXPECT_THAT(r.output, HasSubstr("last tap that agreed: L0.kv_write"));
  r = run_tandem(kRun + "--variant-a kv_write=test_skip_layer1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("tap L1.kv_write"));
  EXPECT_THAT(r.output, HasSubstr("last tap that agreed: L1.rope"));
}

TEST(DiffCli, UsageErrorsExitTwo) {
  RunResult r = run_tandem("diff -m " + kModel + " --prompt-ids 1,2 --a nonsense");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--path nonsense"));
  r = run_tandem("diff -m " + kModel + " --bogus");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = run_tandem("diff -m " + kModel);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("give -p TEXT or --prompt-ids"));
}

TEST(BisectCli, NamesThePlantedVariant) {
  const std::string run = "bisect -m " + kModel + " --prompt-ids 1,5,9,20,33 -n 1 --good reference --bad reference ";
  RunResult r = run_tandem(run + "--variant-bad attention=test_drop_last_key");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("1 swappable unit(s) differ"));
  EXPECT_THAT(r.output, HasSubstr("CULPRIT: attention.test_drop_last_key"));
  EXPECT_THAT(r.output, HasSubstr("FIRST DIVERGENCE: step 0 (prefill), tap L0.attention"));
  // Two planted variants: each alone reproduces a divergence; bisect names one, not both.
  r = run_tandem(run + "--variant-bad attention=test_drop_last_key --variant-bad kv_write=test_skip_layer1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("2 swappable unit(s) differ"));
  EXPECT_THAT(r.output, ::testing::ContainsRegex("CULPRIT: (attention.test_drop_last_key|kv_write.test_skip_layer1) "));
  r = run_tandem(run);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("nothing to bisect"));
  r = run_tandem(run + "--variant-bad attention=nonsense");
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

// Each planted bug: where diff must say the two plans part, the tap that last agreed, and bisect's culprit.
struct Planted {
  const char* variant;  // --variant-a / --variant-bad
  const char* first;    // "step S (phase), tap T"
  const char* agreed;   // the last tap that agreed
};
const Planted kPlanted[] = {
    {"attention=test_drop_last_key", "step 0 (prefill), tap L0.attention", "L0.kv_write"},
    {"kv_write=test_skip_layer1", "step 0 (prefill), tap L1.kv_write", "L1.rope"},
    {"rope=test_decode_offset", "step 1 (decode), tap L0.rope", "L0.qkv"},
    {"attention=test_read_nhd_as_hnd", "step 0 (prefill), tap L0.attention", "L0.kv_write"},
    {"attention=test_last_page_short", "step 0 (prefill), tap L0.attention", "L0.kv_write"},
    {"attention=test_zero_scale", "step 0 (prefill), tap L0.attention", "L0.kv_write"},
};

TEST(Planted, DiffAndBisectLocalizeEachBug) {
  for (const Planted& p : kPlanted) {
    SCOPED_TRACE(p.variant);
    RunResult r = run_tandem(kRun + "--variant-a " + p.variant);
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_THAT(r.output, HasSubstr(std::string("FIRST DIVERGENCE: ") + p.first + "\n"));
    EXPECT_THAT(r.output, HasSubstr(std::string("last tap that agreed: ") + p.agreed + " "));
    r = run_tandem("bisect -m " + kModel + " --prompt-ids 1,5,9,20,33 -n 2 --good reference --bad reference "
                   "--variant-bad " + p.variant);
    EXPECT_EQ(r.exit_code, 1) << r.output;
    const std::string name = std::string(p.variant).substr(std::string(p.variant).find('=') + 1);
    EXPECT_THAT(r.output, ::testing::ContainsRegex("CULPRIT: [a-z_]+\\." + name + " "));
  }
}

// A sequence reading another's pages: equal at batch 1, caught by diff --batch 3 and bisect --batch 3.
TEST(Planted, AnotherSequencesPagesShowOnlyInABatch) {
  const std::string v = "attention=test_other_seq_pages";
  RunResult r = run_tandem(kRun + "--variant-a " + v);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  r = run_tandem(kRun + "--batch 3 --variant-a " + v);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("FIRST DIVERGENCE: step 0 (prefill, batch of 3), tap L0.attention\n"));
  EXPECT_THAT(r.output, HasSubstr("(sequence 1, position"));
  r = run_tandem("bisect -m " + kModel + " --prompt-ids 1,5,9,20,33 -n 1 --batch 3 --good reference --bad reference "
                 "--variant-bad " + v + " --variant-bad rope=test_decode_offset");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, ::testing::ContainsRegex("CULPRIT: (attention.test_other_seq_pages|rope.test_decode_offset) "));
}

// A batch-index mix-up on the batch-of-one path: diverges at batch 1 (prefill, L0.attention), equal with three
// sequences in the step; bisect at batch 1 names it.
TEST(Planted, BatchOfOneIndexMixUpShowsOnlyAtBatchOne) {
  const std::string v = "attention=test_batch1_index";
  RunResult r = run_tandem(kRun + "--batch 3 --variant-a " + v);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  r = run_tandem(kRun + "--variant-a " + v);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("FIRST DIVERGENCE: step 0 (prefill), tap L0.attention\n"));
  EXPECT_THAT(r.output, HasSubstr("last tap that agreed: L0.kv_write "));
  r = run_tandem("bisect -m " + kModel + " --prompt-ids 1,5,9,20,33 -n 1 --good reference --bad reference "
                 "--variant-bad " + v);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("CULPRIT: attention.test_batch1_index "));
}

// Scores that overflow as f16 would, on the Qwen2 fixture (|K| ~ 200, largest scaled q.k ~ 217): invisible as it
// is; with layer 1's keys scaled by 500 (diff/bisect/trace --perturb, both plans alike) the largest logit passes
// 65504 at layer 1, and diff, bisect and trace all point there.
TEST(Planted, F16ScoreOverflowShowsWhereTheLogitPasses65504) {
  const std::string qwen = std::string(TANDEM_FIXTURES) + "/qwen2";
  const std::string base = " -m " + qwen + " --prompt-ids 1,5,9,20,33 -n 1 ";
  const std::string perturb = "--perturb L1.qkv:k:scale=500 ";
  const std::string v = "attention=test_f16_scores";
  RunResult r = run_tandem("diff" + base + "--a reference --b reference --variant-a " + v);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  r = run_tandem("diff" + base + "--a reference --b reference " + perturb + "--variant-a " + v);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("FIRST DIVERGENCE: step 0 (prefill), tap L1.attention\n"));
  EXPECT_THAT(r.output, HasSubstr("last tap that agreed: L1.kv_write "));
  r = run_tandem("bisect" + base + "--good reference --bad reference " + perturb + "--variant-bad " + v);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("CULPRIT: attention.test_f16_scores "));
  r = run_tandem("trace" + base + perturb + "--variant " + v);
  // Layer 1 of step 0: the largest scaled logit (column "max q.k/sqrt") past 65504, the first non-finite tap.
  EXPECT_THAT(r.output, ::testing::ContainsRegex("\n   0     1 [^\n]* 1\\.[0-9]+e\\+05 +[0-9]+ [^\n]*<-- L1.attention "
                                                 "\\(first NaN/Inf\\)"));
  EXPECT_THAT(r.output, ::testing::ContainsRegex("\n   0     0 [^\n]* [0-9.]+e\\+02 +[0-9]+ +[0-9.e+-]+ *\n"));  // layer 0: no overflow, finite
}

// diff --matrix: the same planted bug fails exactly the batch-3 cells of the grid, at L0.attention, in every page
// size and layout; the correct plan passes every cell.
TEST(Planted, DiffMatrixFailsOnlyTheCellsThatExposeTheBug) {
  RunResult r = run_tandem(kRun + "--matrix");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("8 of 8 cells pass"));
  r = run_tandem(kRun + "--matrix --variant-a attention=test_other_seq_pages");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("4 of 8 cells pass"));
  for (const char* cell : {"1      nhd   1 ", "1      hnd   1 ", "16     nhd   1 ", "16     hnd   1 "})
    EXPECT_THAT(r.output, HasSubstr(std::string(cell) + "    f32   off     pass\n"));
  for (const char* cell : {"1      nhd   3 ", "1      hnd   3 ", "16     nhd   3 ", "16     hnd   3 "})
    EXPECT_THAT(r.output, HasSubstr(std::string(cell) + "    f32   off     FAIL at step 0: L0.attention"));
}

// diff --html: one self-contained file; the heat map has a cell per layer and stage, the planted stage and every
// one after it in that layer marked, and both plans' absmax series drawn.
TEST(Planted, DiffHtmlReportMarksTheDivergentCells) {
  const std::string path = ::testing::TempDir() + "/tandem_diff_report.html";
  const RunResult r = run_tandem(kRun + "--variant-a kv_write=test_skip_layer1 --html " + path);
  ASSERT_EQ(r.exit_code, 1) << r.output;
  std::ifstream f(path);
  const std::string html((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_EQ(occurrences(html, "<rect class=\"cell"), 24u);       // 2 layers x 12 stages
  EXPECT_EQ(occurrences(html, "<rect class=\"cell bad\""), 9u);  // L1.kv_write .. L1.mlp_residual
  EXPECT_EQ(occurrences(html, "<polyline class=\"series\""), 2u);
  EXPECT_THAT(html, HasSubstr("<title>L1.kv_write: rel_l2 1.000e+00</title>"));
  EXPECT_THAT(html, HasSubstr("FIRST DIVERGENCE: step 0 (prefill), tap L1.kv_write"));
  EXPECT_EQ(occurrences(html, "<script"), 0u);
  EXPECT_EQ(occurrences(html, "http://") + occurrences(html, "https://"),
            occurrences(html, "xmlns=\"http://www.w3.org/2000/svg\""));
}

// --kv-poison turns the skipped append into a stop at the layer that reads it.
TEST(Planted, KvPoisonStopsTraceAtTheSkippedLayer) {
  const RunResult r = run_tandem("trace -m " + kModel + " --prompt-ids 1,5,9 -n 1 --kv-poison "
                                 "--variant kv_write=test_skip_layer1");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("L1.attention: "));
  EXPECT_THAT(r.output, HasSubstr("check L1.kv_write (variant kv_write.test_skip_layer1)"));
}

// --nan-check names the first non-finite tap, the variant that wrote it and its input's statistics.
TEST(Planted, NanCheckNamesTheFirstNonFiniteTapAndItsInput) {
  const RunResult r = run_tandem("generate -m " + kModel + " --prompt-ids 1,5,9 -n 2 --nan-check "
                                 "--variant attention=test_drop_last_key");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--nan-check: L0.attention (by attention.test_drop_last_key) holds 64 NaN and 0 "
                                  "Inf of 192 values, the first non-finite tap of the step; its input L0.kv_write "
                                  "was finite: absmax "));
  EXPECT_EQ(run_tandem("generate -m " + kModel + " --prompt-ids 1,5,9 -n 2 --nan-check").exit_code, 0);
}

}  // namespace
}  // namespace tandem
