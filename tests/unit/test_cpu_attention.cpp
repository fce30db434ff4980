// cpu::attention_fast (the cpu path's attention) against its reference twin cpu::attention: random and extreme rows,
// GQA groups 1..9, head dims that are and are not multiples of 8, NHD and HND, sliding windows, rows that span many
// chunks; and the invariances the server relies on: a row's output does not depend on the batch it runs in, the
// schedule (decode split vs prefill) or the thread count.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "core/parallel.h"
#include "cpu/attention_fast.h"
#include "cpu/ops.h"
#include "cpu/quant_dot.h"
#include "exec/kv_cache.h"

namespace tandem {
namespace {

enum class Rows { random, huge_scores, one_hot, flat };

// Sequences of the given lengths in shuffled pages, their K/V written through kv_write; qkv holds every position of
// every sequence (the prefill batch).
struct PagedCase {
  AttentionShape shape;
  KvGeometry g;
  std::vector<float> k_pool, v_pool, qkv;
  std::vector<int32_t> positions, seq_of;
  PageTable pages;
  KvStepTables tables;
  int64_t width = 0;

  PagedCase(AttentionShape s, KvLayout layout, int64_t page_size, const std::vector<int64_t>& lens, Rows kind,
            uint32_t seed)
      : shape(s), g{1, s.n_kv_heads, s.head_dim, page_size, layout} {
    int64_t need = 0;
    for (int64_t n : lens) need += (n + page_size - 1) / page_size;
    const int64_t num_pages = need + 3;
    pages = PageTable(page_size, num_pages);
    // Take and give back a few pages first so that sequences get pages out of order.
    pages.add_sequence(1000);
    pages.reserve(1000, 3 * page_size);
    pages.release(1000);
    std::map<int32_t, int64_t> kv_len;
    for (size_t i = 0; i < lens.size(); ++i) {
      pages.add_sequence(int32_t(i));
      pages.reserve(int32_t(i), lens[i]);
      kv_len[int32_t(i)] = lens[i];
      for (int64_t p = 0; p < lens[i]; ++p) positions.push_back(int32_t(p)), seq_of.push_back(int32_t(i));
    }
    tables = build_kv_tables(seq_of, pages, kv_len);
    k_pool.assign(size_t(num_pages * g.page_elems()), NAN);
    v_pool.assign(k_pool.size(), NAN);
    const int64_t D = s.head_dim, T = int64_t(positions.size());
    width = int64_t(s.n_heads + 2 * s.n_kv_heads) * D;
    qkv.resize(size_t(T * width));
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (float& x : qkv) x = nd(rng);
    const int64_t q_dim = int64_t(s.n_heads) * D;
    for (int64_t t = 0; t < T; ++t) {
      float* row = qkv.data() + t * width;
      if (kind == Rows::huge_scores) {  // q . k up to ~1e4 * sqrt(D) before scaling: scaled scores near +-1e4
        for (int64_t j = 0; j < q_dim; ++j) row[j] *= 100.0f;
        for (int64_t j = q_dim; j < q_dim + int64_t(s.n_kv_heads) * D; ++j) row[j] *= 100.0f;
      } else if (kind == Rows::one_hot) {  // one key per sequence dominates every query
        const bool hot = positions[size_t(t)] == 7 % std::max<int32_t>(1, int32_t(lens[size_t(seq_of[size_t(t)])]));
        for (int64_t j = q_dim; j < q_dim + int64_t(s.n_kv_heads) * D; ++j) row[j] = hot ? 30.0f : 0.0f;
        for (int64_t j = 0; j < q_dim; ++j) row[j] = 30.0f;
      } else if (kind == Rows::flat) {  // every key equal: the output is the plain mean of the values
        for (int64_t j = q_dim; j < q_dim + int64_t(s.n_kv_heads) * D; ++j) row[j] = 0.5f;
      }
    }
    cpu::kv_write(qkv_tensor(), positions_tensor(), kv(), s);
  }
  Tensor qkv_tensor(int64_t t0 = 0, int64_t t1 = -1) {
    if (t1 < 0) t1 = int64_t(positions.size());
    return Tensor::contiguous(qkv.data() + t0 * width, DType::F32, {t1 - t0, width});
  }
  Tensor positions_tensor(int64_t t0 = 0, int64_t t1 = -1) {
    if (t1 < 0) t1 = int64_t(positions.size());
    return Tensor::contiguous(positions.data() + t0, DType::I32, {t1 - t0});
  }
  PagedKv kv(const std::vector<int32_t>* token_batch = nullptr) {
    auto i32 = [](std::vector<int32_t>& v) { return Tensor::contiguous(v.data(), DType::I32, {int64_t(v.size())}); };
    auto& tb = token_batch ? const_cast<std::vector<int32_t>&>(*token_batch) : tables.token_batch;
    const int64_t num_pages = int64_t(k_pool.size()) / g.page_elems();
    return PagedKv{kv_pool_view(k_pool.data(), DType::F32, Device::CPU, g, num_pages),
                   kv_pool_view(v_pool.data(), DType::F32, Device::CPU, g, num_pages),
                   g.layout, g.page_size, i32(tables.page_indptr), i32(tables.page_indices),
                   i32(tables.last_page_len), i32(tb)};
  }
};

std::vector<float> run(bool fast, PagedCase& c, int64_t t0 = 0, int64_t t1 = -1) {
  if (t1 < 0) t1 = int64_t(c.positions.size());
  std::vector<int32_t> tb(c.tables.token_batch.begin() + t0, c.tables.token_batch.begin() + t1);
  const int64_t q_dim = int64_t(c.shape.n_heads) * c.shape.head_dim;
  std::vector<float> out(size_t((t1 - t0) * q_dim), -1.0f);
  const Tensor o = Tensor::contiguous(out.data(), DType::F32, {t1 - t0, q_dim});
  if (fast) cpu::attention_fast(c.qkv_tensor(t0, t1), c.positions_tensor(t0, t1), c.kv(&tb), c.shape, o);
  else cpu::attention(c.qkv_tensor(t0, t1), c.positions_tensor(t0, t1), c.kv(&tb), c.shape, o);
  return out;
}

// |fast - ref| within rel * max|v| (outputs are convex combinations of value rows).
void expect_close(const std::vector<float>& fast, const std::vector<float>& ref, float tol, const std::string& what) {
  ASSERT_EQ(fast.size(), ref.size());
  size_t worst = 0;
  float err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_TRUE(std::isfinite(fast[i])) << what << " element " << i << " = " << fast[i];
    const float e = std::fabs(fast[i] - ref[i]);
    if (e > err) err = e, worst = i;
  }
  EXPECT_LE(err, tol) << what << ": worst element " << worst << " fast " << fast[worst] << " ref " << ref[worst];
}

struct Geometry {
  int heads, kv_heads, dim;
};

TEST(CpuAttention, MatchesTheReferenceOnEveryShapeAndExtreme) {
  const Geometry geos[] = {{9, 3, 64}, {4, 4, 20}, {7, 1, 16}, {8, 2, 128}};
  const std::vector<int64_t> lens = {1, 31, 32, 33, 97, 300};
  std::vector<cpu::Isa> isas = {cpu::Isa::scalar};
  if (cpu::detected_isa() != cpu::Isa::scalar) isas.push_back(cpu::detected_isa());
  for (const Geometry& ge : geos)
    for (KvLayout layout : {KvLayout::NHD, KvLayout::HND})
      for (int window : {0, 40})
        for (Rows kind : {Rows::random, Rows::huge_scores, Rows::one_hot, Rows::flat}) {
          PagedCase c({ge.heads, ge.kv_heads, ge.dim, window}, layout, 16, lens, kind, 7u + uint32_t(ge.dim));
          const std::vector<float> ref = run(false, c);
          for (cpu::Isa isa : isas) {
            cpu::force_isa(isa);
            const std::string what = "heads " + std::to_string(ge.heads) + "/" + std::to_string(ge.kv_heads) + " dim " +
                                     std::to_string(ge.dim) + " " + std::string(kv_layout_name(layout)) + " window " +
                                     std::to_string(window) + " rows " + std::to_string(int(kind)) + " isa " +
                                     std::string(cpu::isa_name(isa));
            // Values are N(0,1) (up to ~5) or 0.5/30: 2e-5 relative to them is a few f32 ulps of accumulation.
            const float vmax = kind == Rows::huge_scores ? 500.0f : kind == Rows::one_hot ? 30.0f : 6.0f;
            expect_close(run(true, c), ref, 2e-6f * vmax * 10, what + " (prefill)");
            // Decode: the last row of each sequence alone (the split schedule).
            int64_t t = 0;
            for (int64_t n : lens) {
              t += n;
              const std::vector<float> one = run(true, c, t - 1, t);
              const int64_t q_dim = int64_t(ge.heads) * ge.dim;
              expect_close(one, std::vector<float>(ref.begin() + (t - 1) * q_dim, ref.begin() + t * q_dim),
                           2e-6f * vmax * 10, what + " (decode, length " + std::to_string(n) + ")");
            }
          }
          cpu::force_isa(std::nullopt);
        }
}

TEST(CpuAttention, FlatRowsGiveTheMeanAndOneHotRowsTheHotValue) {
  PagedCase flat({4, 2, 16, 0}, KvLayout::NHD, 16, {100}, Rows::flat, 3);
  const std::vector<float> out = run(true, flat, 99, 100);
  // Every score is equal: out = mean of the 100 value rows of the head's kv head.
  for (int h = 0; h < 4; ++h)
    for (int d = 0; d < 16; ++d) {
      double mean = 0;
      for (int p = 0; p < 100; ++p) mean += flat.qkv[size_t(p * flat.width + 4 * 16 + 2 * 16 + (h / 2) * 16 + d)];
      EXPECT_NEAR(out[size_t(h * 16 + d)], mean / 100, 1e-5) << "head " << h << " dim " << d;
    }
  PagedCase hot({4, 2, 16, 0}, KvLayout::HND, 16, {100}, Rows::one_hot, 3);
  const std::vector<float> o2 = run(true, hot, 99, 100);
  // q . k_hot = 30 * 30 * 16 / 4 = 3600 above every other key: exactly the hot value row (position 7).
  for (int h = 0; h < 4; ++h)
    for (int d = 0; d < 16; ++d)
      EXPECT_EQ(o2[size_t(h * 16 + d)], hot.qkv[size_t(7 * hot.width + 4 * 16 + 2 * 16 + (h / 2) * 16 + d)]);
}

TEST(CpuAttention, ARowIsTheSameAloneBatchedAndOnAnyThreadCount) {
  PagedCase c({9, 3, 64, 0}, KvLayout::NHD, 16, {5, 70, 300}, Rows::random, 11);
  const int64_t q_dim = 9 * 64, T = int64_t(c.positions.size());
  const std::vector<float> batched = run(true, c);  // prefill schedule: (row, kv head) items
  const int saved = num_threads();
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    EXPECT_EQ(run(true, c), batched) << threads << " threads";
    for (int64_t t : {int64_t(0), int64_t(4), int64_t(40), T - 1}) {  // split schedule: (row, chunk) items
      const std::vector<float> alone = run(true, c, t, t + 1);
      EXPECT_TRUE(std::equal(alone.begin(), alone.end(), batched.begin() + t * q_dim))
          << "row " << t << " alone differs from the batch, " << threads << " threads";
    }
  }
  set_num_threads(saved);
}

TEST(CpuAttention, RowsWithoutSlotsAreNaNAndOthersAreNot) {
  PagedCase c({4, 2, 16, 0}, KvLayout::NHD, 16, {40, 40}, Rows::random, 5);
  // Row 39 of sequence 0 asks for position 45, beyond its pages: NaN for it, the others untouched.
  c.positions[39] = 45;
  const std::vector<float> all = run(true, c);
  const std::vector<float> one = run(true, c, 39, 40);
  for (int64_t j = 0; j < 64; ++j) {
    EXPECT_TRUE(std::isnan(all[size_t(39 * 64 + j)]));
    EXPECT_TRUE(std::isnan(one[size_t(j)]));
    EXPECT_FALSE(std::isnan(all[size_t(38 * 64 + j)]));
    EXPECT_FALSE(std::isnan(all[size_t(40 * 64 + j)]));
  }
}

}  // namespace
}  // namespace tandem
