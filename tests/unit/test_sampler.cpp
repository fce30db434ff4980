#include "exec/step.h"
#include "runtime/sampler.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/hash.h"

namespace tandem {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// No filters, temperature t, fixed seed.
SamplingParams plain(float temperature = 1.0f, uint64_t seed = 1234) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.repeat_penalty = 1.0f;
  p.seed = seed;
  return p;
}

std::vector<float> log_probs(std::initializer_list<double> probs) {
  std::vector<float> out;
  for (double p : probs) out.push_back(static_cast<float>(std::log(p)));
  return out;
}

std::vector<double> frequencies(Sampler& s, const std::vector<float>& logits, int draws,
                                std::span<const int32_t> recent = {}) {
  std::vector<double> freq(logits.size(), 0.0);
  for (int i = 0; i < draws; ++i) {
    int32_t id = s.sample(logits, recent);
    EXPECT_GE(id, 0);
    EXPECT_LT(id, static_cast<int32_t>(logits.size()));
    freq[static_cast<size_t>(id)] += 1.0;
  }
  for (auto& f : freq) f /= draws;
  return freq;
}

int32_t greedy_pick(const std::vector<float>& logits, std::vector<int32_t> recent, float penalty,
                    int last_n = -1) {
  SamplingParams p = plain(0.0f);
  p.repeat_penalty = penalty;
  p.repeat_last_n = last_n;
  Sampler s(p);
  return s.sample(logits, recent);
}

void expect_invalid(SamplingParams p, const std::string& name, const std::string& value) {
  try {
    p.validate();
    ADD_FAILURE() << "validate() accepted bad " << name;
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(name), std::string::npos) << msg;
    EXPECT_NE(msg.find(value), std::string::npos) << msg;
  }
  EXPECT_THROW(Sampler{p}, Error) << name;
}

// ---------------------------------------------------------------- validation

TEST(SamplerParams, DefaultsAndBoundariesAreValid) {
  EXPECT_NO_THROW(SamplingParams{}.validate());
  SamplingParams p = plain(0.0f);
  p.top_p = 1.0f;
  p.min_p = 1.0f;
  p.top_k = -5;
  p.repeat_last_n = -1;
  p.repeat_penalty = 0.01f;
  EXPECT_NO_THROW(p.validate());
  p.min_p = 0.0f;
  p.top_p = 1e-6f;
  p.repeat_last_n = 0;
  EXPECT_NO_THROW(p.validate());
}

TEST(SamplerParams, RejectsBadValuesNamingTheParameter) {
  SamplingParams p;
  p.temperature = kNaN;
  expect_invalid(p, "temperature", "nan");
  p = {};
  p.temperature = kInf;
  expect_invalid(p, "temperature", "inf");
  p = {};
  p.temperature = -0.5f;
  expect_invalid(p, "temperature", "-0.5");
  p = {};
  p.top_p = 0.0f;
  expect_invalid(p, "top_p", "0");
  p = {};
  p.top_p = 1.5f;
  expect_invalid(p, "top_p", "1.5");
  p = {};
  p.top_p = kNaN;
  expect_invalid(p, "top_p", "nan");
  p = {};
  p.min_p = -0.1f;
  expect_invalid(p, "min_p", "-0.1");
  p = {};
  p.min_p = 1.5f;
  expect_invalid(p, "min_p", "1.5");
  p = {};
  p.repeat_penalty = 0.0f;
  expect_invalid(p, "repeat_penalty", "0");
  p = {};
  p.repeat_penalty = kInf;
  expect_invalid(p, "repeat_penalty", "inf");
  p = {};
  p.repeat_last_n = -2;
  expect_invalid(p, "repeat_last_n", "-2");
}

// ---------------------------------------------------------------- greedy / non-finite

TEST(SamplerGreedy, PicksArgmaxAndLowestIdOnTies) {
  Sampler s(plain(0.0f));
  EXPECT_EQ(s.sample(std::vector<float>{0.1f, 3.0f, -2.0f, 2.9f}, {}), 1);
  EXPECT_EQ(s.sample(std::vector<float>{1.0f, 5.0f, 2.0f, 5.0f, 5.0f}, {}), 1);
  EXPECT_EQ(s.sample(std::vector<float>{7.0f, 7.0f}, {}), 0);
  EXPECT_EQ(s.sample(std::vector<float>{-3.0f}, {}), 0);
  SamplingParams neg = plain(-1.0f);  // validate() rejects negative temperature...
  EXPECT_THROW(Sampler{neg}, Error);
}

TEST(SamplerGreedy, IgnoresNaNAndNegInf) {
  Sampler s(plain(0.0f));
  EXPECT_EQ(s.sample(std::vector<float>{kNaN, 1.0f, kNaN, 2.0f, kNaN}, {}), 3);
  EXPECT_EQ(s.sample(std::vector<float>{kNaN, -kInf, -100.0f}, {}), 2);
  EXPECT_EQ(s.sample(std::vector<float>{1.0f, kInf, kNaN}, {}), 1);
}

// greedy_token (exec/step.h, the device argmax's twin) is the sampler's greedy rule on every finite row; a row with
// any NaN or Inf gives the guard's sentinel, -1 (the runtime scans a row before the sampler sees it).
TEST(SamplerGreedy, GreedyTokenIsTheSamplersRule) {
  Sampler s(plain(0.0f));
  EXPECT_EQ(greedy_token(std::vector<float>{kNaN, kNaN}), -1);
  EXPECT_EQ(greedy_token(std::vector<float>{-kInf, kNaN}), -1);
  EXPECT_EQ(greedy_token(std::vector<float>{1.0f, kInf, kInf}), -1);
  uint64_t x = 12345;
  auto next = [&] {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    return x;
  };
  int finite_rows = 0;
  for (int row = 0; row < 500; ++row) {
    std::vector<float> v(size_t(1 + next() % 300));
    for (float& f : v) {
      const uint64_t k = row % 2 ? 99 : next() % 400;  // odd rows finite; even ones mostly hold a NaN/Inf
      f = k == 0 ? kNaN : k == 1 ? -kInf : k == 2 ? kInf : float(int(next() % 9) - 4);  // ties
    }
    const int32_t g = greedy_token(v);
    bool finite = true;
    for (float f : v) finite = finite && std::isfinite(f);
    if (!finite) {
      EXPECT_EQ(g, -1) << "row " << row;
    } else {
      ++finite_rows;
      EXPECT_EQ(g, s.sample(v, {})) << "row " << row;
    }
  }
  EXPECT_GT(finite_rows, 250);
}

// The greedy pick's NaN guard (checklist 24): one NaN, +inf or -inf anywhere poisons the row (-1, kNonFiniteRow),
// however large the finite values beside it; the runtime turns -1 into the request's error (ServerFaults).
TEST(GreedyToken, OneNonFiniteValueAnywhereGivesTheSentinel) {
  EXPECT_EQ(kNonFiniteRow, -1);
  std::vector<float> row(1000);
  for (size_t i = 0; i < row.size(); ++i) row[i] = float(i % 97) * 0.25f - 3.0f;
  row[400] = 50.0f;
  ASSERT_EQ(greedy_token(row), 400);
  for (size_t at : {size_t(0), size_t(1), size_t(399), size_t(400), size_t(401), size_t(500), size_t(998),
                    size_t(999)}) {
    for (float bad : {kNaN, -kNaN, kInf, -kInf}) {
      std::vector<float> v = row;
      v[at] = bad;
      EXPECT_EQ(greedy_token(v), kNonFiniteRow) << "value " << bad << " at " << at;
    }
  }
  // +inf is not a legitimate maximum: raw logits are finite, so it is an overflow upstream.
  EXPECT_EQ(greedy_token(std::vector<float>{1.0f, kInf, 2.0f}), -1);
  EXPECT_EQ(greedy_token(std::vector<float>{kInf, kInf}), -1);
  // Nor is -inf a masked entry to skip: nothing masks logits before this pick.
  EXPECT_EQ(greedy_token(std::vector<float>{-kInf, -kInf, 7.0f, -kInf}), -1);
  EXPECT_EQ(greedy_token(std::vector<float>{-kInf, -kInf}), -1);
  EXPECT_EQ(greedy_token(std::vector<float>{kNaN}), -1);
  // Finite extremes and ties are still ordinary values.
  EXPECT_EQ(greedy_token(std::vector<float>{-3.4e38f, 3.4e38f, 3.4e38f}), 1);
  EXPECT_EQ(greedy_token(std::vector<float>{-3.4e38f}), 0);
  EXPECT_EQ(greedy_token(std::vector<float>{0.0f, -0.0f}), 0);
  EXPECT_EQ(greedy_token(std::vector<float>{}), -1);
}

TEST(SamplerErrors, AllNaNOrNegInfThrows) {
  for (float temp : {0.0f, 1.0f}) {
    Sampler s(plain(temp));
    EXPECT_THROW(s.sample(std::vector<float>{kNaN, kNaN, kNaN}, {}), Error);
    EXPECT_THROW(s.sample(std::vector<float>{-kInf, -kInf}, {}), Error);
    EXPECT_THROW(s.sample(std::vector<float>{kNaN, -kInf, kNaN}, {}), Error);
    try {
      s.sample(std::vector<float>{kNaN, kNaN}, {});
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("NaN/-inf"), std::string::npos) << e.what();
    }
  }
}

TEST(SamplerErrors, EmptyLogitsAndOutOfRangeRecentThrow) {
  Sampler s(plain(1.0f));
  EXPECT_THROW(s.sample(std::span<const float>{}, {}), Error);
  SamplingParams p = plain(1.0f);
  p.repeat_penalty = 1.3f;
  Sampler pen(p);
  std::vector<float> logits{1.0f, 2.0f, 3.0f};
  EXPECT_THROW(pen.sample(logits, std::vector<int32_t>{0, 3}), Error);
  EXPECT_THROW(pen.sample(logits, std::vector<int32_t>{-1}), Error);
  EXPECT_NO_THROW(pen.sample(logits, std::vector<int32_t>{0, 2}));
}

TEST(SamplerNonFinite, NaNAndNegInfNeverSampled) {
  Sampler s(plain(1.0f, 7));
  std::vector<float> logits{kNaN, 0.0f, -kInf, 0.0f, kNaN};
  auto f = frequencies(s, logits, 4000);
  EXPECT_EQ(f[0], 0.0);
  EXPECT_EQ(f[2], 0.0);
  EXPECT_EQ(f[4], 0.0);
  // The NaNs do not poison the others: the two finite tokens are still 50/50.
  EXPECT_NEAR(f[1], 0.5, 0.03);
  EXPECT_NEAR(f[3], 0.5, 0.03);
}

// ---------------------------------------------------------------- determinism

TEST(SamplerSeed, SameSeedSameSequenceDifferentSeedDifferent) {
  std::vector<float> logits{0.5f, 1.0f, 0.2f, 0.9f, 0.0f, 1.1f, 0.7f, 0.3f};
  SamplingParams p;  // defaults: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05
  auto run = [&](uint64_t seed) {
    p.seed = seed;
    Sampler s(p);
    EXPECT_EQ(s.seed(), seed);
    std::vector<int32_t> out;
    for (int i = 0; i < 200; ++i) out.push_back(s.sample(logits, {}));
    return out;
  };
  auto a = run(42), b = run(42), c = run(43);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(SamplerSeed, RandomSeedIsReportedAndReproducible) {
  SamplingParams p = plain(1.0f);
  p.seed.reset();
  Sampler s1(p);
  p.seed = s1.seed();
  Sampler s2(p);
  std::vector<float> logits{0.0f, 0.3f, 0.1f, 0.2f};
  for (int i = 0; i < 100; ++i) EXPECT_EQ(s1.sample(logits, {}), s2.sample(logits, {}));
}

// Reference sequence from an independent implementation of splitmix64-seeded xoshiro256**
// (seed 42): with 4 equal logits the pick is floor(4u) = the top two bits of each output.
TEST(SamplerSeed, MatchesReferenceXoshiroStream) {
  Sampler s(plain(1.0f, 42));
  std::vector<float> logits{0.0f, 0.0f, 0.0f, 0.0f};
  const std::vector<int32_t> expected{0, 1, 2, 3, 3, 3, 2, 3, 3, 2, 2, 1, 3, 1, 2, 3};
  std::vector<int32_t> got;
  for (size_t i = 0; i < expected.size(); ++i) got.push_back(s.sample(logits, {}));
  EXPECT_EQ(got, expected);
}

// ---------------------------------------------------------------- distributions

TEST(SamplerDistribution, TemperatureOneMatchesSoftmax) {
  // logits = log p, so softmax(logits) = {0.1, 0.2, 0.3, 0.4}.
  Sampler s(plain(1.0f, 99));
  auto f = frequencies(s, log_probs({0.1, 0.2, 0.3, 0.4}), 20000);
  EXPECT_NEAR(f[0], 0.1, 0.01);
  EXPECT_NEAR(f[1], 0.2, 0.01);
  EXPECT_NEAR(f[2], 0.3, 0.01);
  EXPECT_NEAR(f[3], 0.4, 0.01);
}

TEST(SamplerDistribution, LowTemperatureSharpens) {
  // softmax(log p / 0.5) = p^2 / sum p^2 = {1, 4, 9, 16} / 30.
  Sampler s(plain(0.5f, 99));
  auto f = frequencies(s, log_probs({0.1, 0.2, 0.3, 0.4}), 20000);
  EXPECT_NEAR(f[0], 1.0 / 30, 0.01);
  EXPECT_NEAR(f[1], 4.0 / 30, 0.01);
  EXPECT_NEAR(f[2], 9.0 / 30, 0.01);
  EXPECT_NEAR(f[3], 16.0 / 30, 0.01);
}

TEST(SamplerDistribution, HighTemperatureFlattens) {
  // softmax(log p / 2) = sqrt(p) / sum sqrt(p); p = {0.04, 0.16, 0.36, 0.44} -> {0.2, 0.4, 0.6, 0.663..}.
  Sampler s(plain(2.0f, 5));
  auto f = frequencies(s, log_probs({0.04, 0.16, 0.36, 0.44}), 20000);
  const double z = 0.2 + 0.4 + 0.6 + std::sqrt(0.44);
  EXPECT_NEAR(f[0], 0.2 / z, 0.01);
  EXPECT_NEAR(f[1], 0.4 / z, 0.01);
  EXPECT_NEAR(f[2], 0.6 / z, 0.01);
  EXPECT_NEAR(f[3], std::sqrt(0.44) / z, 0.01);
}

// ---------------------------------------------------------------- top-k

TEST(SamplerTopK, TopKOneIsAlwaysArgmax) {
  SamplingParams p = plain(1.0f, 3);
  p.top_k = 1;
  Sampler s(p);
  std::vector<float> logits{1.0f, 1.2f, 0.9f, 1.19f, kNaN};
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(s.sample(logits, {}), 1);
}

TEST(SamplerTopK, KeepsKLargestWithLowerIdOnTies) {
  SamplingParams p = plain(1.0f, 11);
  p.top_k = 2;
  Sampler s(p);
  // Four-way tie at the top: only ids 1 and 2 (the two lowest tied ids) survive.
  std::vector<float> logits{-1.0f, 3.0f, 3.0f, 3.0f, 3.0f, 2.5f};
  auto f = frequencies(s, logits, 4000);
  EXPECT_EQ(f[0] + f[3] + f[4] + f[5], 0.0);
  EXPECT_NEAR(f[1], 0.5, 0.03);
  EXPECT_NEAR(f[2], 0.5, 0.03);
}

TEST(SamplerTopK, RenormalizesOverKept) {
  // p = {0.1, 0.2, 0.3, 0.4}; top_k 2 keeps {0.3, 0.4} -> {3/7, 4/7}.
  SamplingParams p = plain(1.0f, 21);
  p.top_k = 2;
  Sampler s(p);
  auto f = frequencies(s, log_probs({0.1, 0.2, 0.3, 0.4}), 20000);
  EXPECT_EQ(f[0] + f[1], 0.0);
  EXPECT_NEAR(f[2], 3.0 / 7, 0.01);
  EXPECT_NEAR(f[3], 4.0 / 7, 0.01);
}

// ---------------------------------------------------------------- top-p / min-p

TEST(SamplerTopP, HalfKeepsOnlyTheMostLikely) {
  // Token ids are shuffled relative to probability order: id 2 has 0.6, id 0 has 0.3, id 1 has 0.1.
  SamplingParams p = plain(1.0f, 8);
  p.top_p = 0.5f;  // cumulative 0.6 >= 0.5 after the first token
  Sampler s(p);
  auto logits = log_probs({0.3, 0.1, 0.6});
  for (int i = 0; i < 2000; ++i) ASSERT_EQ(s.sample(logits, {}), 2);
}

TEST(SamplerTopP, EightyFiveKeepsTheTopTwo) {
  SamplingParams p = plain(1.0f, 8);
  p.top_p = 0.85f;  // cumulative 0.6 < 0.85, 0.9 >= 0.85 -> keep {0.6, 0.3}, renormalized {2/3, 1/3}
  Sampler s(p);
  auto f = frequencies(s, log_probs({0.3, 0.1, 0.6}), 20000);
  EXPECT_EQ(f[1], 0.0);
  EXPECT_NEAR(f[2], 2.0 / 3, 0.01);
  EXPECT_NEAR(f[0], 1.0 / 3, 0.01);
}

TEST(SamplerMinP, KeepsTokensAboveFractionOfMax) {
  auto logits = log_probs({0.2, 0.5, 0.3});  // id 1: 0.5, id 2: 0.3, id 0: 0.2
  {
    // min_p 0.5 -> threshold 0.25: keeps 0.5 and 0.3 (renormalized 5/8, 3/8), drops 0.2.
    SamplingParams p = plain(1.0f, 17);
    p.min_p = 0.5f;
    Sampler s(p);
    auto f = frequencies(s, logits, 20000);
    EXPECT_EQ(f[0], 0.0);
    EXPECT_NEAR(f[1], 5.0 / 8, 0.01);
    EXPECT_NEAR(f[2], 3.0 / 8, 0.01);
  }
  {
    // min_p 0.7 -> threshold 0.35: only 0.5 survives.
    SamplingParams p = plain(1.0f, 17);
    p.min_p = 0.7f;
    Sampler s(p);
    for (int i = 0; i < 2000; ++i) ASSERT_EQ(s.sample(logits, {}), 1);
  }
  {
    // min_p 0.3 -> threshold 0.15: all three survive with their original probabilities.
    SamplingParams p = plain(1.0f, 17);
    p.min_p = 0.3f;
    Sampler s(p);
    auto f = frequencies(s, logits, 20000);
    EXPECT_NEAR(f[0], 0.2, 0.01);
    EXPECT_NEAR(f[1], 0.5, 0.01);
    EXPECT_NEAR(f[2], 0.3, 0.01);
  }
}

TEST(SamplerChain, TemperatureAppliesAfterFilters) {
  // p = {0.1, 0.2, 0.3, 0.4}; top_p 0.5 keeps {0.4, 0.3} (cum 0.4 < 0.5, 0.7 >= 0.5); temperature 0.5
  // then gives {16, 9} / 25. Had temperature run first (p^2/30: 0.533 >= 0.5), only id 3 would survive.
  SamplingParams p = plain(0.5f, 31);
  p.top_p = 0.5f;
  Sampler s(p);
  auto f = frequencies(s, log_probs({0.1, 0.2, 0.3, 0.4}), 20000);
  EXPECT_EQ(f[0] + f[1], 0.0);
  EXPECT_NEAR(f[3], 16.0 / 25, 0.01);
  EXPECT_NEAR(f[2], 9.0 / 25, 0.01);
}

// ---------------------------------------------------------------- repetition penalty

TEST(SamplerRepeatPenalty, DividesPositiveAndMultipliesNegative) {
  // 2.0 / 2 = 1.0 exactly: ties with 1.0 (lower id wins), loses to 1.0001.
  EXPECT_EQ(greedy_pick({2.0f, 1.5f}, {}, 2.0f), 0);
  EXPECT_EQ(greedy_pick({2.0f, 1.5f}, {0}, 2.0f), 1);
  EXPECT_EQ(greedy_pick({2.0f, 1.0f}, {0}, 2.0f), 0);
  EXPECT_EQ(greedy_pick({2.0f, 1.0001f}, {0}, 2.0f), 1);
  EXPECT_EQ(greedy_pick({2.0f, 0.9999f}, {0}, 2.0f), 0);
  // -1.0 * 2 = -2.0 exactly.
  EXPECT_EQ(greedy_pick({-1.0f, -1.5f}, {}, 2.0f), 0);
  EXPECT_EQ(greedy_pick({-1.0f, -1.5f}, {0}, 2.0f), 1);
  EXPECT_EQ(greedy_pick({-1.0f, -2.0f}, {0}, 2.0f), 0);
  EXPECT_EQ(greedy_pick({-1.0f, -1.9999f}, {0}, 2.0f), 1);
  EXPECT_EQ(greedy_pick({-1.0f, -2.0001f}, {0}, 2.0f), 0);
  // Penalty < 1 boosts: 1.0 / 0.5 = 2.0 beats 1.9.
  EXPECT_EQ(greedy_pick({1.0f, 1.9f}, {0}, 0.5f), 0);
  // Penalty 1 is a no-op even with out-of-range ids (recent is not looked at).
  EXPECT_EQ(greedy_pick({2.0f, 1.5f}, {0, 99}, 1.0f), 0);
}

TEST(SamplerRepeatPenalty, AppliedOncePerDistinctToken) {
  // Once: 2.0 -> 1.0 > 0.9. Twice would give 0.5 < 0.9.
  EXPECT_EQ(greedy_pick({2.0f, 0.9f}, {0, 0, 0}, 2.0f), 0);
  EXPECT_EQ(greedy_pick({2.0f, 1.1f}, {0, 0, 0}, 2.0f), 1);
}

TEST(SamplerRepeatPenalty, WindowHonored) {
  const std::vector<float> logits{2.0f, 1.5f, 0.0f};
  const std::vector<int32_t> recent{0, 2, 2};
  EXPECT_EQ(greedy_pick(logits, recent, 2.0f, 2), 0);   // token 0 is outside the last 2
  EXPECT_EQ(greedy_pick(logits, recent, 2.0f, 3), 1);   // inside the last 3
  EXPECT_EQ(greedy_pick(logits, recent, 2.0f, 64), 1);  // window larger than recent
  EXPECT_EQ(greedy_pick(logits, recent, 2.0f, -1), 1);  // -1: everything
  EXPECT_EQ(greedy_pick(logits, recent, 2.0f, 0), 0);   // 0: nothing
  // Out-of-range ids outside the window are not looked at.
  EXPECT_EQ(greedy_pick(logits, {99, 0}, 2.0f, 1), 1);
}

TEST(SamplerRepeatPenalty, AffectsSampledDistribution) {
  // logits log{0.5, 0.5} -> penalty on token 0 with r = 2: log 0.5 < 0, so it becomes 2 log 0.5 = log 0.25.
  // softmax over {0.25, 0.5} -> {1/3, 2/3}.
  SamplingParams p = plain(1.0f, 77);
  p.repeat_penalty = 2.0f;
  Sampler s(p);
  std::vector<int32_t> recent{0};
  auto f = frequencies(s, log_probs({0.5, 0.5}), 20000, recent);
  EXPECT_NEAR(f[0], 1.0 / 3, 0.01);
  EXPECT_NEAR(f[1], 2.0 / 3, 0.01);
}

// ---------------------------------------------------------------- the pure chain (exec/sampling.h) and its draws

// A fixed workload: 8 parameter sets (every filter, the penalty over windows of 4..all, greedy with a penalty, top_k
// past the vocabulary, min_p 1), 200 rows each of 50..549 logits, uniform in +-4 or +-20, with ties; each token
// joins the penalty window.
struct SamplerWorkload {
  struct Set {
    float t;
    int k;
    float p, m, r;
    int n;
  };
  static uint64_t next(uint64_t& x) { return splitmix64(x); }
  // Uniform in [-scale, scale), from 24 random bits.
  static float value(uint64_t& x, float scale) {
    return (float(next(x) >> 40) / 16777216.0f * 2.0f - 1.0f) * scale;
  }
  // Runs `pick(sampler, row, recent)` over the workload; returns the FNV-1a hash of the tokens.
  template <typename Pick>
  static uint64_t run(Pick&& pick, int* count) {
    const Set sets[] = {{0.8f, 40, 0.95f, 0.05f, 1.0f, 64}, {1.0f, 0, 1.0f, 0.0f, 1.0f, 64},
                        {0.5f, 5, 0.9f, 0.0f, 1.3f, 8},     {1.7f, 0, 0.7f, 0.1f, 0.8f, -1},
                        {0.0f, 40, 0.95f, 0.05f, 1.5f, 16}, {3.0f, 300, 1.0f, 0.0f, 1.1f, 32},
                        {0.2f, 1000, 0.99f, 0.01f, 1.0f, 64}, {1.0f, 3, 1.0f, 1.0f, 2.0f, 4}};
    uint64_t x = 2024, h = 1469598103934665603ull;
    *count = 0;
    for (int si = 0; si < 8; ++si) {
      SamplingParams p;
      p.temperature = sets[si].t;
      p.top_k = sets[si].k;
      p.top_p = sets[si].p;
      p.min_p = sets[si].m;
      p.repeat_penalty = sets[si].r;
      p.repeat_last_n = sets[si].n;
      p.seed = uint64_t(100 + si);
      Sampler s(p);
      std::vector<int32_t> recent{1, 2, 3};
      for (int i = 0; i < 200; ++i) {
        const int V = 50 + int(next(x) % 500);
        const float scale = (i % 4 == 0) ? 20.0f : 4.0f;
        std::vector<float> row(size_t(V), 0.0f);
        for (float& v : row) v = value(x, scale);
        if (i % 7 == 0) row[size_t(V / 2)] = row[size_t(V / 3)];  // a tie
        const int32_t t = pick(s, row, recent);
        recent.push_back(t % 50);
        h = (h ^ uint64_t(uint32_t(t))) * 1099511628211ull;
        ++*count;
      }
    }
    return h;
  }
};

// Same seed, same tokens as the sampler before its chain became exec/sampling.h sample_row(): the hash was taken
// from the previous implementation (commit 36243e4) over the same workload.
TEST(SamplerSeed, SameTokensAsBeforeTheChainWasFactoredOut) {
  int count = 0;
  const uint64_t h = SamplerWorkload::run(
      [](Sampler& s, const std::vector<float>& row, const std::vector<int32_t>& recent) {
        return s.sample(row, recent);
      },
      &count);
  EXPECT_EQ(count, 1600);
  EXPECT_EQ(h, 3307667529197679041ull);
}

// What a device does (Step::sampling): peek_draw, then sample_token with that draw, then accept_draw, gives
// sample()'s tokens; a peek does not consume the draw.
TEST(SamplerSeed, PeekSampleTokenAcceptGivesTheSamplersTokens) {
  int count = 0;
  const uint64_t h = SamplerWorkload::run(
      [](Sampler& s, const std::vector<float>& row, const std::vector<int32_t>& recent) {
        const RowSampling d = s.peek_draw(recent);
        EXPECT_EQ(d.u, s.peek_draw(recent).u);
        if (d.params.greedy()) {
          EXPECT_EQ(d.u, 0.0);
        }
        const int32_t t = sample_token(row, d.penalized, d.params, d.u);
        s.accept_draw();
        return t;
      },
      &count);
  EXPECT_EQ(count, 1600);
  EXPECT_EQ(h, 3307667529197679041ull);
}

TEST(SampleToken, PenaltyWindow) {
  SamplingParams p = plain(1.0f);
  const std::vector<int32_t> recent{5, 6, 7, 8};
  EXPECT_TRUE(penalty_window(recent, p).empty());  // penalty 1: off
  p.repeat_penalty = 1.2f;
  p.repeat_last_n = 0;
  EXPECT_TRUE(penalty_window(recent, p).empty());
  p.repeat_last_n = 2;
  EXPECT_EQ(std::vector<int32_t>(penalty_window(recent, p).begin(), penalty_window(recent, p).end()),
            (std::vector<int32_t>{7, 8}));
  p.repeat_last_n = 64;
  EXPECT_EQ(penalty_window(recent, p).size(), 4u);
  p.repeat_last_n = -1;
  EXPECT_EQ(penalty_window(recent, p).size(), 4u);
  EXPECT_TRUE(penalty_window({}, p).empty());
}

// The step's rule: any raw NaN/+-inf gives kNonFiniteRow (whatever the sampler would do with it); every logit -inf
// after the penalty gives kNoCandidate where sample_row throws; otherwise sample_row's token.
TEST(SampleToken, SentinelsForNonFiniteRowsAndNoCandidate) {
  for (float temp : {0.0f, 1.0f}) {
    const SamplingParams p = plain(temp);
    EXPECT_EQ(sample_token(std::vector<float>{1.0f, kNaN}, {}, p, 0.5), kNonFiniteRow);
    EXPECT_EQ(sample_token(std::vector<float>{1.0f, kInf}, {}, p, 0.5), kNonFiniteRow);
    EXPECT_EQ(sample_token(std::vector<float>{-kInf, 1.0f}, {}, p, 0.5), kNonFiniteRow);
    EXPECT_EQ(sample_row(std::vector<float>{1.0f, kInf}, {}, p, 0.5), 1);  // the sampler's own +inf rule
    SamplingParams pen = p;
    pen.repeat_penalty = 4.0f;
    const std::vector<float> huge{-3e38f, -2e38f};
    const std::vector<int32_t> both{0, 1, 1};
    EXPECT_EQ(sample_token(huge, both, pen, 0.5), kNoCandidate);  // -3e38 * 4 = -inf
    EXPECT_THROW(sample_row(huge, both, pen, 0.5), Error);
    EXPECT_EQ(sample_token(huge, std::vector<int32_t>{0}, pen, 0.5), 1);
    EXPECT_THROW(sample_token(huge, std::vector<int32_t>{2}, pen, 0.5), Error);  // outside the row
  }
  // Overflow to +inf by the penalty: those dominate, uniformly (u picks among them in id order).
  SamplingParams boost = plain(1.0f);
  boost.repeat_penalty = 0.25f;
  const std::vector<float> row{3e38f, 1.0f, 2e38f, 3e38f};
  const std::vector<int32_t> ids{0, 2, 3};
  EXPECT_EQ(sample_token(row, ids, boost, 0.1), 0);
  EXPECT_EQ(sample_token(row, ids, boost, 0.5), 2);
  EXPECT_EQ(sample_token(row, ids, boost, 0.9), 3);
}

}  // namespace
}  // namespace tandem
