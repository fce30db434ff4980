// Conformance of the paged KV ops (kv_write, attention, kv_gather) against their CPU twins; see conformance.h.
#include <gmock/gmock.h>

#include "paged_step.h"

namespace tandem {
namespace {

struct Heads {  // one attention geometry of a conformance case
  int n_heads, n_kv_heads, head_dim, window;
};

TEST_F(OpConformance, attention) {
  const Heads heads[] = {
      {2, 2, 64, 0},     // group 1
      {4, 2, 128, 0},    // group 2
      {6, 2, 32, 7},     // group 3, the smallest head_dim, a window
      {8, 2, 96, 0},     // group 4, head_dim 96 (3 warps)
      {5, 1, 256, 0},    // group 5, the largest head_dim
      {12, 2, 80, 33},   // group 6, head_dim not a multiple of 32, a window
      {14, 2, 128, 0},   // group 7
      {8, 1, 64, 64},    // group 8 (MQA), window = one chunk
  };
  uint32_t seed = 800;
  for (DType dt : kFloatTypes)
    for (int64_t ps : kPageSizes)
      for (KvLayout layout : kLayouts)
        for (const Heads& h : heads) {
          const AttnCase c{dt, h.n_heads, h.n_kv_heads, h.head_dim, h.window, ps, layout};
          SCOPED_TRACE(describe_case(c));
          check_paged_step(stream_, make_step(c, mixed_step(ps), seed));
          seed += 17;
        }
}

TEST_F(OpConformance, attention_OddShapes) {
  const AttnCase cases[] = {
      {DType::F32, 3, 3, 80, 1, 16, KvLayout::NHD},     // window 1: each token sees only itself
      {DType::F32, 9, 3, 64, 100, 16, KvLayout::HND},   // window wider than some histories
      {DType::BF16, 16, 2, 256, 0, 64, KvLayout::HND},  // group 8 at the largest head_dim
      {DType::F16, 7, 1, 48, 0, 1, KvLayout::NHD},      // group 7, MQA, head_dim 48
      {DType::BF16, 4, 2, 32, 0, 3, KvLayout::HND},     // a page size that is no power of two
  };
  uint32_t seed = 900;
  for (const AttnCase& c : cases) {
    SCOPED_TRACE(describe_case(c));
    check_paged_step(stream_, make_step(c, mixed_step(c.page_size), seed));
    seed += 17;
  }
  for (int64_t ps : {int64_t(1), int64_t(16)})
    for (KvLayout layout : kLayouts)
      for (int window : {0, 50}) {
        const AttnCase c{DType::BF16, 8, 2, 128, window, ps, layout};
        SCOPED_TRACE("pure decode of one long sequence: " + describe_case(c));
        check_paged_step(stream_, make_step(c, {{1000, 1}}, seed += 17));
      }
}

TEST_F(OpConformance, attention_LargeBatch) {  // 9000 tokens x 8 heads: more work items than the grid
  std::vector<SeqSpec> seqs;
  for (int s = 0; s < 9000; ++s) seqs.push_back({s % 4, 1 + (s % 7 == 0)});
  for (int64_t ps : {int64_t(1), int64_t(16)}) {
    const AttnCase c{DType::BF16, 8, 2, 64, 0, ps, ps == 1 ? KvLayout::HND : KvLayout::NHD};
    SCOPED_TRACE(describe_case(c));
    check_paged_step(stream_, make_step(c, seqs, 1000 + uint32_t(ps)));
  }
}

// Scores that overflow exp() unless the running max is subtracted, and rows whose max lies in a later chunk than
// the first (a max taken over part of the row fails), one-hot and flat rows. q = (100, 0, ...) and each key's
// first element k0 is set, so a scaled score is 100 * k0 / 8 (head_dim 64), exact in fp32 whatever the summation
// order: k0 = +-800 gives scores of +-1e4.
void check_extreme_rows(cudaStream_t stream_, AttnKernel kernel) {
  const std::vector<SeqSpec> seqs = {
      {200, 1},  // 0: one key at +1e4 (position 170, the third chunk), the rest at -1e4
      {130, 3},  // 1: flat: every score 1e4
      {199, 1},  // 2: two keys at +1e4 (positions 2 and 100, different chunks), the rest -1e4
      {70, 66},  // 3: prefill, scores rising by 100 a position: each token's own key dominates
      {300, 1},  // 4: random scores of spread ~1000 (near one-hot at random places)
      {150, 1},  // 5: the first key at +1e4, every later chunk at -1e4
  };
  auto k0_of = [](int32_t seq, int64_t p, float random) -> float {
    switch (seq) {
      case 0: return p == 170 ? 800.0f : -800.0f;
      case 1: return 800.0f;
      case 2: return p == 2 || p == 100 ? 800.0f : -800.0f;
      case 3: return 8.0f * float(p - 100);
      case 4: return round_to(80.0f * random, DType::BF16);
      default: return p == 0 ? 800.0f : -800.0f;
    }
  };
  uint32_t seed = 1100;
  for (DType dt : kFloatTypes)
    for (int64_t ps : kPageSizes)
      for (KvLayout layout : kLayouts)
        for (int window : {0, 100}) {  // window 100: the decode of sequence 2 sees position 100, not 2
          const AttnCase c{dt, 4, 2, 64, window, ps, layout};
          SCOPED_TRACE(describe_case(c));
          PagedStep st = make_step(c, seqs, seed);
          const std::vector<float> noise = randn(400, DType::F32, seed + 1);
          seed += 17;
          for (int32_t s = 0; s < int32_t(seqs.size()); ++s)
            for (int64_t p = 0; p < seqs[size_t(s)].history; ++p)
              for (int64_t h = 0; h < c.n_kv_heads; ++h) st.k_pool[size_t(st.offset(s, p, h))] = k0_of(s, p, noise[size_t(p)]);
          for (int64_t t = 0; t < st.T(); ++t) {
            float* row = st.qkv.data() + t * st.qkv_dim();
            for (int64_t h = 0; h < c.n_heads; ++h) {
              std::fill(row + h * c.head_dim, row + (h + 1) * c.head_dim, 0.0f);
              row[h * c.head_dim] = 100.0f;
            }
            const int64_t p = st.pos[size_t(t)];
            for (int64_t h = 0; h < c.n_kv_heads; ++h)
              row[st.q_dim() + h * c.head_dim] = k0_of(st.seq_of[size_t(t)], p, noise[size_t(p)]);
          }
          check_paged_step(stream_, st, kernel);
        }
}

TEST_F(OpConformance, attention_ExtremeRows) { check_extreme_rows(stream_, AttnKernel::standard); }

// Tokens that name no slot: a bad position (negative, beyond the entry's pages), a bad batch index, a page id
// outside the pool. kv_write writes nothing for them, attention and kv_gather write NaN rows, nothing is read or
// written out of bounds (the guards), and the valid tokens of the same step are unaffected.
void check_invalid_rows(cudaStream_t stream_, AttnKernel kernel) {
  uint32_t seed = 1200;
  for (DType dt : {DType::BF16, DType::F32})
    for (int64_t ps : kPageSizes)
      for (KvLayout layout : kLayouts) {
        const AttnCase c{dt, 4, 2, 64, 0, ps, layout};
        SCOPED_TRACE(describe_case(c));
        // Sequence 2's token opens page 2 of its entry, whose id is corrupted below.
        PagedStep st = make_step(c, {{20, 1}, {5, 3}, {2 * ps, 1}, {0, 70}}, seed);
        seed += 31;
        const int32_t B = int32_t(st.tables.seq_ids.size());
        auto batch_of = [&](int32_t seq) {
          return int32_t(std::find(st.tables.seq_ids.begin(), st.tables.seq_ids.end(), seq) - st.tables.seq_ids.begin());
        };
        const int32_t b0 = batch_of(0), b2 = batch_of(2);
        const int32_t pages0 = st.tables.page_indptr[size_t(b0) + 1] - st.tables.page_indptr[size_t(b0)];
        st.tables.page_indices[size_t(st.tables.page_indptr[size_t(b2)] + 2)] =
            layout == KvLayout::NHD ? int32_t(st.num_pages) : -1;
        for (int64_t t = 0; t < st.T(); ++t)
          if (st.seq_of[size_t(t)] == 2) st.valid[size_t(t)] = false;
        const std::pair<int32_t, int32_t> bad[] = {
            {b0, -1}, {b0, INT_MIN}, {b0, INT_MAX}, {b0, int32_t(pages0 * ps)},  // positions
            {-1, 0},  {B, 0},        {INT_MAX, 3},  {INT_MIN, 0},               // batch indices
        };
        for (const auto& [b, p] : bad) append_invalid_token(st, b, p, seed++);

        const PagedResult got = run_cuda(stream_, st, kAllOps, kernel), ref = run_cpu(st, kAllOps);
        const PagedWant want = expected_writes(st);
        const int64_t q_dim = st.q_dim(), g_dim = 2 * st.kv_dim();
        std::vector<float> got_valid, ref_valid;
        for (int64_t t = 0; t < st.T(); ++t) {
          const auto row = [&](const std::vector<float>& v, int64_t w) { return v.begin() + t * w; };
          if (st.valid[size_t(t)]) {
            got_valid.insert(got_valid.end(), row(got.out, q_dim), row(got.out, q_dim) + q_dim);
            ref_valid.insert(ref_valid.end(), row(ref.out, q_dim), row(ref.out, q_dim) + q_dim);
            continue;
          }
          const std::string what = fmt::format("invalid token {} (batch {}, position {})", t,
                                               st.tables.token_batch[size_t(t)], st.pos[size_t(t)]);
          EXPECT_TRUE(std::all_of(row(got.out, q_dim), row(got.out, q_dim) + q_dim, [](float x) { return std::isnan(x); }))
              << "attention row of " << what;
          EXPECT_TRUE(std::all_of(row(ref.out, q_dim), row(ref.out, q_dim) + q_dim, [](float x) { return std::isnan(x); }))
              << "CPU attention row of " << what;
          EXPECT_TRUE(std::all_of(row(got.gathered, g_dim), row(got.gathered, g_dim) + g_dim,
                                  [](float x) { return std::isnan(x); }))
              << "kv_gather row of " << what;
        }
        EXPECT_TRUE(close(got_valid, ref_valid, nmse_bound(dt))) << "attention output of the valid tokens";
        EXPECT_TRUE(exact(got.k_pool, want.k_pool)) << "k pool: only the valid tokens' slots written";
        EXPECT_TRUE(exact(got.v_pool, want.v_pool)) << "v pool";
        EXPECT_TRUE(exact(ref.k_pool, want.k_pool)) << "CPU k pool";
        EXPECT_TRUE(exact(got.gathered, want.gathered)) << "kv_gather";
        EXPECT_TRUE(exact(got.gathered, ref.gathered)) << "kv_gather vs CPU";
      }
}

TEST_F(OpConformance, attention_InvalidRows) { check_invalid_rows(stream_, AttnKernel::standard); }

// ---------------------------------------------------------------------------------- split-KV decode kernel
// attention_decode on the same cases (it keeps attention()'s contract for any step), plus decode batches whose
// histories give one split, several, and the most (a lone long sequence), the split boundaries falling inside
// pages and windows.

TEST_F(OpConformance, attention_decode) {
  const Heads heads[] = {
      {2, 2, 64, 0},     // group 1
      {4, 2, 128, 0},    // group 2
      {8, 2, 64, 37},    // group 4, a window
      {14, 2, 128, 0},   // group 7 (Qwen2.5)
      {8, 1, 128, 300},  // group 8 (MQA), a window across splits
  };
  const std::vector<SeqSpec> decodes = {{1000, 1}, {2047, 1}, {0, 1}, {15, 1}, {16, 1}, {17, 1}, {300, 1}};
  uint32_t seed = 2100;
  for (DType dt : kFloatTypes)
    for (int64_t ps : kPageSizes)
      for (KvLayout layout : kLayouts)
        for (const Heads& h : heads) {
          const AttnCase c{dt, h.n_heads, h.n_kv_heads, h.head_dim, h.window, ps, layout};
          SCOPED_TRACE(describe_case(c));
          check_paged_step(stream_, make_step(c, decodes, seed), AttnKernel::decode);
          check_paged_step(stream_, make_step(c, mixed_step(ps), seed + 1), AttnKernel::decode);
          seed += 17;
        }
}

TEST_F(OpConformance, attention_decode_Splits) {
  uint32_t seed = 2300;
  for (DType dt : {DType::BF16, DType::F32})
    for (int64_t history : {int64_t(5000), int64_t(129), int64_t(16), int64_t(0)}) {
      const AttnCase c{dt, 8, 2, 128, 0, 16, KvLayout::HND};
      SCOPED_TRACE("one sequence, history " + std::to_string(history) + ": " + describe_case(c));
      check_paged_step(stream_, make_step(c, {{history, 1}}, seed += 17), AttnKernel::decode);
    }
  std::vector<SeqSpec> batch;  // 64 decodes: few splits each
  for (int s = 0; s < 64; ++s) batch.push_back({(s * 37) % 700, 1});
  const AttnCase c{DType::BF16, 32, 8, 128, 0, 16, KvLayout::NHD};
  SCOPED_TRACE("64 decodes: " + describe_case(c));
  check_paged_step(stream_, make_step(c, batch, seed + 1), AttnKernel::decode);
}

TEST_F(OpConformance, attention_decode_ExtremeRows) { check_extreme_rows(stream_, AttnKernel::decode); }
TEST_F(OpConformance, attention_decode_InvalidRows) { check_invalid_rows(stream_, AttnKernel::decode); }

TEST_F(OpConformance, attention_decode_Unsupported) {
  std::string why;
  EXPECT_FALSE(cuda::attention_decode_supports({8, 2, 96, 0}, DType::BF16, &why));
  EXPECT_THAT(why, testing::HasSubstr("head_dim 96 (instantiated: 64, 128)"));
  EXPECT_TRUE(cuda::attention_decode_supports({8, 2, 128, 0}, DType::F16));
}

// kv_write alone, into pools full of stale values (no NaN): exactly the step's slots change, bit for bit.
TEST_F(OpConformance, kv_write) {
  uint32_t seed = 1300;
  for (DType dt : kFloatTypes)
    for (int64_t ps : kPageSizes)
      for (KvLayout layout : kLayouts)
        for (int group : {1, 3, 8}) {
          const AttnCase c{dt, 2 * group, 2, 64, 0, ps, layout};
          SCOPED_TRACE(describe_case(c));
          PagedStep st = make_step(c, mixed_step(ps), seed);
          const std::vector<float> stale_k = randn(st.pool_elems(), dt, seed + 1), stale_v = randn(st.pool_elems(), dt, seed + 2);
          seed += 17;
          for (size_t i = 0; i < st.k_pool.size(); ++i)
            if (std::isnan(st.k_pool[i])) st.k_pool[i] = stale_k[i], st.v_pool[i] = stale_v[i];
          const PagedResult got = run_cuda(stream_, st, kWrite), ref = run_cpu(st, kWrite);
          const PagedWant want = expected_writes(st);
          EXPECT_TRUE(exact(got.k_pool, want.k_pool)) << "k pool";
          EXPECT_TRUE(exact(got.v_pool, want.v_pool)) << "v pool";
          EXPECT_TRUE(exact(ref.k_pool, want.k_pool)) << "CPU k pool";
          EXPECT_TRUE(exact(ref.v_pool, want.v_pool)) << "CPU v pool";
        }
}

// kv_gather alone on positions the step does not write (history, including page boundaries): the slots' contents,
// bit for bit, and the pools untouched.
TEST_F(OpConformance, kv_gather) {
  uint32_t seed = 1400;
  for (DType dt : kFloatTypes)
    for (int64_t ps : kPageSizes)
      for (KvLayout layout : kLayouts) {
        const AttnCase c{dt, 6, 3, 64, 0, ps, layout};
        SCOPED_TRACE(describe_case(c));
        const std::vector<SeqSpec> seqs = {{3 * ps + 1, 1}, {ps, 1}, {150, 2}};
        PagedStep st = make_step(c, seqs, seed);
        seed += 17;
        // Replace the step's tokens by reads of history positions: first, last, either side of page boundaries.
        std::vector<int32_t> seq_of, pos, batch;
        for (int32_t s = 0; s < int32_t(seqs.size()); ++s) {
          const int32_t b = int32_t(std::find(st.tables.seq_ids.begin(), st.tables.seq_ids.end(), s) -
                                    st.tables.seq_ids.begin());
          const int64_t hist = seqs[size_t(s)].history;
          for (int64_t p : {int64_t(0), hist - 1, ps - 1, ps, 2 * ps - 1, hist / 2})
            if (p >= 0 && p < hist) seq_of.push_back(s), pos.push_back(int32_t(p)), batch.push_back(b);
        }
        st.seq_of = seq_of;
        st.pos = pos;
        st.tables.token_batch = batch;
        st.valid.assign(pos.size(), true);
        st.qkv.assign(size_t(st.T() * st.qkv_dim()), 0.0f);  // unused
        const PagedResult got = run_cuda(stream_, st, kGather), ref = run_cpu(st, kGather);
        std::vector<float> want(size_t(st.T() * 2 * st.kv_dim()));
        for (int64_t t = 0; t < st.T(); ++t)
          for (int64_t h = 0; h < c.n_kv_heads; ++h) {
            const int64_t off = st.offset(st.seq_of[size_t(t)], st.pos[size_t(t)], h);
            std::copy_n(st.k_pool.begin() + off, c.head_dim, want.begin() + t * 2 * st.kv_dim() + h * c.head_dim);
            std::copy_n(st.v_pool.begin() + off, c.head_dim,
                        want.begin() + t * 2 * st.kv_dim() + st.kv_dim() + h * c.head_dim);
          }
        EXPECT_TRUE(exact(got.gathered, want)) << "kv_gather";
        EXPECT_TRUE(exact(ref.gathered, want)) << "CPU kv_gather";
        EXPECT_TRUE(exact(got.k_pool, st.k_pool)) << "k pool changed";
        EXPECT_TRUE(exact(got.v_pool, st.v_pool)) << "v pool changed";
      }
}


}  // namespace
}  // namespace tandem
