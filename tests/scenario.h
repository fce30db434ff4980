// A multi-sequence scenario shared by the CPU and GPU executor tests: several sequences, prefill and decode
// mixed and interleaved in one step, sequences ending on, one before and one after page boundaries (15/16/17 and
// 63/64/65 tokens), a sequence freed and its pages reused by a new prefill.
#pragma once
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "diag/taps.h"
#include "exec/variant.h"
#include "io/safetensors.h"
#include "runtime/executor.h"

namespace tandem {

inline std::vector<int32_t> ints(const SafetensorsFile& f, const std::string& name) {
  const TensorEntry* e = f.find(name);
  if (!e) throw Error("missing " + name + " in " + f.path());
  std::vector<int32_t> v(e->nbytes / 4);
  std::memcpy(v.data(), e->file->data() + e->offset, e->nbytes);
  return v;
}

// Synthetic prompt of n tokens for sequence `seq`.
inline std::vector<int32_t> synthetic(int seq, int n, int64_t vocab) {
  std::vector<int32_t> v;
  for (int i = 0; i < n; ++i) v.push_back(int32_t((seq * 131 + i * 17 + 3) % vocab));
  return v;
}

struct ScenarioResult {
  std::vector<HostTensor> logits;  // every step's
  int64_t p0_first_row = -1;       // where prompt p0's rows start in step 0's logits
};

// The scenario: every step's logits.
inline ScenarioResult run_scenario(Executor& r, const SafetensorsFile& exp) {
  const int64_t V = r.config().vocab_size;
  const auto p0 = ints(exp, "p0.prompt"), p1 = ints(exp, "p1.prompt");
  ScenarioResult out;
  auto step_of = [&](Step s) { out.logits.push_back(r.forward(s, nullptr).logits); };
  std::map<int32_t, std::vector<int32_t>> text;  // seq -> its tokens so far
  auto add = [&](Step& s, int32_t seq, int32_t tok) {
    s.add(tok, seq, int32_t(text[seq].size()), true);
    text[seq].push_back(tok);
  };
  for (int32_t seq : {0, 1, 2, 3, 4}) r.create_sequence(seq, 80);
  // Step 0: p0 whole (HF's rows), the first half of p1, and a 15-token prompt (one before a 16-token page).
  Step s0;
  out.p0_first_row = 0;
  for (int32_t t : p0) add(s0, 0, t);
  for (size_t i = 0; i < p1.size() / 2; ++i) add(s0, 1, p1[i]);
  for (int32_t t : synthetic(2, 15, V)) add(s0, 2, t);
  step_of(s0);
  // Step 1: interleaved: the rest of p1 with decode tokens of 0 and 2 between its tokens, and a 63-token prompt
  // (one before a 64-token page).
  Step s1;
  for (size_t i = p1.size() / 2; i < p1.size(); ++i) {
    add(s1, 1, p1[i]);
    if (i == p1.size() / 2) add(s1, 0, 11);
    if (i == p1.size() / 2 + 1) add(s1, 2, 12);
  }
  for (int32_t t : synthetic(3, 63, V)) add(s1, 3, t);
  step_of(s1);
  // Steps 2-4: everyone decodes: sequence 2 passes 16 and 17 tokens, sequence 3 passes 64 and 65.
  for (int k = 0; k < 3; ++k) {
    Step s;
    for (int32_t seq : {3, 2, 1, 0}) add(s, seq, int32_t((seq * 7 + k * 5 + 1) % V));
    step_of(s);
  }
  // Free sequence 3 (67 tokens of pages) and prefill sequence 4 into its pages, beside decodes of 0 and 2.
  r.release_sequence(3);
  Step s5;
  add(s5, 0, 21);
  for (int32_t t : synthetic(4, 40, V)) add(s5, 4, t);
  add(s5, 2, 22);
  step_of(s5);
  for (int k = 0; k < 2; ++k) {
    Step s;
    for (int32_t seq : {4, 2, 0, 1}) add(s, seq, int32_t((seq * 3 + k + 2) % V));
    step_of(s);
  }
  return out;
}

// Every tap a full plan publishes, in execution order: embed, each layer's stages, final_norm, logits.
inline std::vector<std::string> taps_in_order(int n_layers) {
  std::vector<std::string> order{"embed"};
  for (int l = 0; l < n_layers; ++l)
    for (int s = int(kFirstLayerStage); s <= int(kLastLayerStage); ++s) order.push_back(tap_name(Stage(s), l));
  order.push_back("final_norm");
  order.push_back("logits");
  return order;
}

// Taps before `first_broken` must be bit-identical between the two runs, that one and every later one must differ.
inline void expect_broken_from(const TapRecorder& good, const TapRecorder& bad, int n_layers,
                               const std::string& first_broken) {
  bool broken = false;
  for (const std::string& name : taps_in_order(n_layers)) {
    const HostTensor *a = good.find(name), *b = bad.find(name);
    ASSERT_TRUE(a && b) << name;
    if (name == first_broken) broken = true;
    const bool same = a->numel() == b->numel() && std::memcmp(a->f32(), b->f32(), size_t(a->numel()) * 4) == 0;
    if (broken) EXPECT_FALSE(same) << name << " should differ once " << first_broken << " is broken";
    else EXPECT_TRUE(same) << name << " comes before the broken stage and must be bit-identical";
  }
}
}  // namespace tandem
