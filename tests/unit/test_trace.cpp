// tandem trace: tap statistics, the attention-logit maximum against a hand computation, and the command naming
// the first non-finite tap of a deliberately broken variant.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>

#include "cli_run.h"
#include "diag/trace.h"

namespace tandem {
namespace {
using ::testing::HasSubstr;

TEST(Trace, TapStatsCountNonFiniteAndHeadroom) {
  HostTensor t = HostTensor::empty(DType::F32, {2, 3});
  const float v[] = {1.0f, -3.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f, INFINITY, 0.0f};
  std::copy(v, v + 6, t.f32());
  const TapStats s = tap_stats("L0.qkv", 2, t, DType::F16);
  EXPECT_EQ(s.count, 6);
  EXPECT_EQ(s.nan, 1);
  EXPECT_EQ(s.inf, 1);
  EXPECT_DOUBLE_EQ(s.absmax, 3.0);
  EXPECT_DOUBLE_EQ(s.mean, 0.0);  // (1 - 3 + 2 + 0) / 4
  EXPECT_DOUBLE_EQ(s.rms, std::sqrt(14.0 / 4.0));
  EXPECT_DOUBLE_EQ(s.headroom, 3.0 / 65504.0);
  EXPECT_FALSE(s.finite());
  EXPECT_DOUBLE_EQ(dtype_max(DType::BF16), 3.3895313892515355e38);
}

// One layer, 2 q heads sharing 1 kv head of dim 4; a prefill of 2 tokens then a decode token: the largest
// |q.k| / 2 must be found across steps (the decode query against the prefill's keys) and causally.
TEST(Trace, AttentionLogitMaxSeesHistoryAndIsCausal) {
  Tracer tr({2, 1, 4, 0}, 1, DType::F32);
  auto rope_tap = [](std::vector<std::array<float, 16>> rows) {  // q0 | q1 | k | v
    HostTensor t = HostTensor::empty(DType::F32, {int64_t(rows.size()), 16});
    for (size_t r = 0; r < rows.size(); ++r) std::copy(rows[r].begin(), rows[r].end(), t.f32() + r * 16);
    return t;
  };
  // Token 1's key is huge, but token 0 cannot see it (causal): in step 0 the max comes from token 1's query.
  const std::vector<int32_t> p0{0, 1};
  tr.begin_step(0, p0);
  tr.publish(Stage::rope, 0,
             rope_tap({{1, 0, 0, 0, 0, 0, 0, 0, /*k*/ 1, 0, 0, 0, 0, 0, 0, 0},
                       {0, 0, 0, 0, 3, 0, 0, 0, /*k*/ 100, 0, 0, 0, 0, 0, 0, 0}}));
  ASSERT_EQ(tr.logit_max().size(), 2u);
  // head 0: token 0 scores k0 only: 1 / 2 (a non-causal scan would find token 0 against k1: 100 / 2).
  EXPECT_DOUBLE_EQ(tr.logit_max()[0].value, 0.5);
  EXPECT_EQ(tr.logit_max()[0].key_pos, 0);
  EXPECT_DOUBLE_EQ(tr.logit_max()[1].value, 150.0);  // head 1: token 1, 3 * 100 / 2
  EXPECT_EQ(tr.logit_max()[1].query_pos, 1);
  EXPECT_EQ(tr.logit_max()[1].key_pos, 1);
  const std::vector<int32_t> p1{2};
  tr.begin_step(1, p1);
  tr.publish(Stage::rope, 0, rope_tap({{-2, 0, 0, 0, 0, 0, 0, 0, /*k*/ 0, 0, 0, 0, 0, 0, 0, 0}}));
  ASSERT_EQ(tr.logit_max().size(), 4u);
  EXPECT_DOUBLE_EQ(tr.logit_max()[2].value, -100.0);  // the decode query against the cached key of position 1
  EXPECT_EQ(tr.logit_max()[2].key_pos, 1);
  EXPECT_EQ(tr.logit_max()[2].step, 1);
}

TEST(Trace, CommandNamesTheFirstNonFiniteTap) {
  const std::string model = std::string(TANDEM_FIXTURES) + "/llama";
  RunResult r = run_tandem("trace -m " + model + " --prompt-ids 1,5,9,20 -n 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("step layer   attn_norm   attention"));
  EXPECT_THAT(r.output, HasSubstr("greedy tokens:"));
  r = run_tandem("trace -m " + model + " --prompt-ids 1,5,9,20 -n 1 --variant attention=test_drop_last_key");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("<-- L0.attention (first NaN/Inf)"));
  EXPECT_THAT(r.output, HasSubstr("trace: L0.attention at step 0 holds 64 NaN"));
  r = run_tandem("trace -m " + model);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("give -p TEXT or --prompt-ids"));
}

// --html: a self-contained report (no script, no external reference) with the plot, the heat map and the
// tables; the broken run's report names and outlines the first non-finite tap, and is written before the error.
TEST(Trace, HtmlReportShowsThePlotsAndTheFirstNonFiniteTap) {
  const std::string model = std::string(TANDEM_FIXTURES) + "/llama";
  const std::string file = ::testing::TempDir() + "/trace_report.html";
  auto read = [&] {
    std::ifstream f(file);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  RunResult r = run_tandem("trace -m " + model + " --prompt-ids 1,5,9,20 -n 2 --html " + file);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string html = read();
  EXPECT_THAT(html, HasSubstr("<svg id=\"absmax\""));
  EXPECT_THAT(html, HasSubstr("<svg id=\"heatmap\""));
  EXPECT_THAT(html, HasSubstr("absmax L*.mlp_residual, step 2"));
  EXPECT_THAT(html, HasSubstr("largest |q.k|/sqrt(d) per layer"));
  EXPECT_THAT(html, HasSubstr("every tap finite"));
  EXPECT_THAT(html, HasSubstr("<td>L1.attention</td>"));
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  std::remove(file.c_str());
  r = run_tandem("trace -m " + model + " --prompt-ids 1,5,9,20 -n 1 --variant attention=test_drop_last_key --html " +
                 file);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  html = read();
  EXPECT_THAT(html, HasSubstr("id=\"first-non-finite\">first non-finite tap: L0.attention at step 0"));
  EXPECT_THAT(html, HasSubstr("class=\"cell bad\""));
  EXPECT_THAT(html, HasSubstr("stroke=\"#000\" stroke-width=\"3\"><title>L0.attention:"));
  std::remove(file.c_str());
}

// K scaled to zero in layer 1: every layer-1 attention logit is 0 in the perturbed trace, and the response is reported.
TEST(Trace, PerturbationAndSweepReportTheResponse) {
  const std::string base = "trace -m " + std::string(TANDEM_FIXTURES) + "/llama --prompt-ids 1,5,9,20 -n 3 ";
  RunResult r = run_tandem(base + "--perturb L1.qkv:k:scale=0");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* row : {"\n   0     1 ", "\n   1     1 ", "\n   2     1 ", "\n   3     1 "}) {
    const size_t at = r.output.find(row);
    ASSERT_NE(at, std::string::npos) << row;
    EXPECT_THAT(r.output.substr(at, r.output.find('\n', at + 1) - at), HasSubstr(" 0.000e+00     0 ")) << row;
  }
  EXPECT_THAT(r.output, HasSubstr("response: prefill logits rel_l2 "));
  EXPECT_THAT(r.output, HasSubstr("greedy tokens perturbed:"));
  r = run_tandem(base + "--sweep 'L*.qkv:k:scale=0.001..1:log:4'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("scale   logits rel"));
  EXPECT_THAT(r.output, HasSubstr("\n           1    0.000e+00   1.0000 "));  // factor 1: unchanged
  EXPECT_THAT(r.output, HasSubstr(" 4/4 "));
  r = run_tandem(base + "--sweep 'L*.qkv:k:scale=abc..1:lin:4'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("the lower bound 'abc' is not a number"));
  r = run_tandem(base + "--sweep 'L*.qkv:k:scale=0.1..1:log:x'");
  EXPECT_THAT(r.output, HasSubstr("the point count 'x' is not a number"));
  r = run_tandem(base + "--perturb L9.qkv:k:scale=0");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("layer '9' is not 0..1 or *"));
  r = run_tandem(base + "--perturb L1.kv_write:all:scale=2");
  EXPECT_THAT(r.output, HasSubstr("not a perturbable stage"));
  r = run_tandem(base + "--perturb L1.attn_norm:k:scale=2");
  EXPECT_THAT(r.output, HasSubstr("part 'k' must be all for this stage"));
}

}  // namespace
}  // namespace tandem
