// The FlashInfer adapter (cuda/flashinfer.cuh) against the fp32 CPU twin cpu::attention over the same paged KV
// cache: random values are first rounded to the activation dtype, then both sides get those values (the CPU side
// in f32 pools, the GPU side in bf16/f16 pools of the same layout and page ids).
//
// Pass criteria per batch entry (sequence) of a step: relative L2 error of its output rows <= 1e-2 (bf16) or
// 3.2e-3 (f16), i.e. the op conformance suite's NMSE bounds 1e-4 / 1e-5; no non-finite GPU value (the reference is
// finite everywhere). Every KV slot the step does not cover (the tail of last pages, pages of other sequences,
// free pages) holds NaN, so a read outside the tables poisons the output; the output buffer starts as NaN (an
// unwritten element fails) and has 4 KiB of 0xFF guard bytes either side that must survive (no stray writes).
//
// Coverage: bf16 and f16; page sizes 1 and 16; NHD and HND; head_dim 64 and 128; group sizes 3 (SmolLM2), 4
// (Llama, Mistral), 7 (Qwen2.5) and 1-8 in a sweep; prompt lengths 1, 15, 16, 17 and 300; steps mixing fresh
// prompts, chunked-prefill continuations and decode tokens of several sequences, seq ids unlike batch indices and
// pages interleaved between sequences; decode-only and single-long-prompt steps (the three CTA tiles); split and
// unsplit KV; sliding windows; rows whose scaled scores reach +-1e4, one-hot and flat rows, rows whose scores are
// all below -5e4 (FlashInfer before #4401 returned zeros there); several steps and layers planned without host
// synchronization (the double-buffered pinned plan buffer); and the metadata checks.
//
// Every test that needs a GPU skips without one; the flashinfer_supports and validate_flashinfer_tables tests
// run everywhere. Test names start with the adapter function they cover (run, plan, validate_flashinfer_tables,
// flashinfer_supports).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "cpu/ops.h"
#include "cuda/check.h"
#include "cuda/device_buffer.h"
#include "cuda/device_query.h"
#include "cuda/flashinfer.cuh"
#include "exec/kv_cache.h"
#include "flashinfer_scenario.h"

namespace tandem {
namespace {
using namespace fitest;  // Case, Scenario, make_scenario, DeviceStep, the FlashInfer fixture

// A step mixing everything: fresh prompts of 1, 15, 16, 17 and 300 tokens, decode tokens at kv 2, 17, 33 and
// 301, and chunked-prefill continuations (16 cached + 17 new, 15 cached + 2 new).
const std::vector<SeqSpec> kMixedStep = {{0, 1},  {0, 15},  {1, 1},   {0, 16}, {16, 1}, {0, 17},
                                         {32, 1}, {16, 17}, {300, 1}, {15, 2}, {0, 300}};

// The models' attention geometries (heads scaled down where that keeps the group size and head_dim).
struct Geometry {
  const char* model;
  int n_heads, n_kv_heads, head_dim;
};
const Geometry kGeometries[] = {
    {"SmolLM2-135M (group 3)", 9, 3, 64},  {"Qwen2.5-0.5B (group 7)", 14, 2, 64},
    {"Llama-3.2-1B (group 4)", 32, 8, 64}, {"Llama-3-8B / Mistral-7B (group 4)", 8, 2, 128},
    {"Qwen2.5-7B (group 7)", 28, 4, 128},
};

// ------------------------------------------------------------------------------------------ host-only tests

TEST_F(FlashInfer, flashinfer_supports) {
  std::string why;
  for (DType dt : {DType::BF16, DType::F16})
    for (const Geometry& g : kGeometries)
      EXPECT_TRUE(cuda::flashinfer_supports({g.n_heads, g.n_kv_heads, g.head_dim, 0}, dt, &why)) << g.model << why;
  EXPECT_TRUE(cuda::flashinfer_supports({32, 8, 128, 4096}, DType::BF16, &why)) << why;  // Mistral v0.1 window
  EXPECT_FALSE(cuda::flashinfer_supports({8, 2, 64, 0}, DType::F32, &why));
  EXPECT_NE(why.find("f32"), std::string::npos) << why;
  EXPECT_FALSE(cuda::flashinfer_supports({8, 2, 32, 0}, DType::BF16, &why));
  EXPECT_NE(why.find("head_dim"), std::string::npos) << why;
  EXPECT_FALSE(cuda::flashinfer_supports({8, 3, 64, 0}, DType::BF16, &why));
  EXPECT_FALSE(cuda::flashinfer_supports({64, 2, 64, 0}, DType::BF16, &why));  // group 32
}

// Tables as build_kv_tables makes them for kMixedStep.
KvStepTables mixed_tables(int64_t page_size, int64_t* num_pages) {
  Case c;
  c.page_size = page_size;
  Scenario s = make_scenario(c, {{0, 3}, {20, 1}, {16, 17}}, 1);
  *num_pages = s.num_pages;
  return s.tables;
}

TEST_F(FlashInfer, validate_flashinfer_tables_AcceptsBuiltTables) {
  for (int64_t P : {1, 16}) {
    int64_t n = 0;
    const KvStepTables t = mixed_tables(P, &n);
    EXPECT_NO_THROW(cuda::validate_flashinfer_tables(t, P, n)) << "page size " << P;
  }
  EXPECT_NO_THROW(cuda::validate_flashinfer_tables(KvStepTables{{}, {0}, {}, {}, {}, {}, {0}}, 16, 4));  // empty
}

TEST_F(FlashInfer, validate_flashinfer_tables_NamesTheBadEntry) {
  int64_t n = 0;
  const int64_t P = 16;
  const KvStepTables good = mixed_tables(P, &n);
  // Batch order: sequences last to first: entry 0 is sequence 114, entry 1 sequence 107, entry 2 sequence 100.
  ASSERT_EQ(good.seq_ids, (std::vector<int32_t>{114, 107, 100}));
  auto expect_error = [&](const char* what, KvStepTables t, const std::string& needle, int64_t pages = -1) {
    try {
      cuda::validate_flashinfer_tables(t, P, pages < 0 ? n : pages);
      ADD_FAILURE() << what << ": no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << what << ": " << e.what();
    }
  };
  {
    KvStepTables t = good;
    t.last_page_len[1] = 0;  // a full page written as 0
    expect_error("last_page_len 0", t, "(sequence 107) has last_page_len 0");
  }
  {
    KvStepTables t = good;
    t.last_page_len[2] = int32_t(P + 1);
    expect_error("last_page_len > page size", t, "(sequence 100) has last_page_len 17");
  }
  {
    KvStepTables t = good;
    std::swap(t.page_indptr[1], t.page_indptr[2]);
    expect_error("indptr decreasing", t, "decreases");
  }
  {
    KvStepTables t = good;
    t.page_indices[0] = int32_t(n);
    expect_error("page out of range", t, "sequence 114");
  }
  {
    KvStepTables t = good;
    t.page_indices[1] = t.page_indices[0];
    expect_error("page twice", t, "appears twice");
  }
  {
    KvStepTables t = good;
    t.qo_indptr.clear();
    expect_error("ungrouped", t, "not grouped by sequence");
  }
  {
    KvStepTables t = good;
    t.kv_len[2] += 1;
    expect_error("kv_len inconsistent", t, "sequence 100");
  }
  {
    KvStepTables t = good;  // entry 2 (sequence 100: 3 fresh tokens) with only 2 cached
    t.last_page_len[2] = 2;
    t.kv_len[2] = 2;
    expect_error("qo_len > kv_len", t, "(sequence 100) has 3 query tokens but only 2 cached");
  }
  {
    KvStepTables t = good;
    t.token_batch[0] = 1;
    expect_error("token_batch", t, "token 0");
  }
  {
    KvStepTables t = good;
    t.page_indptr.push_back(t.page_indptr.back());
    expect_error("indptr size", t, "page_indptr has");
  }
}

// The extreme fills mean what they claim: scaled scores (as the reference sees them) reach +-1e4 (Huge), stay
// below -5e4 everywhere (VeryNegative), are equal within each row (Flat), and one-hot rows exist (OneHot).
TEST_F(FlashInfer, ScenarioScoresAreExtreme) {
  for (int D : {64, 128})
    for (Fill fill : {Fill::Huge, Fill::OneHot, Fill::Flat, Fill::VeryNegative}) {
      Case c{DType::BF16, 14, 2, D};
      c.fill = fill;
      SCOPED_TRACE(c.name());
      const Scenario s = make_scenario(c, {{0, 17}, {16, 1}, {299, 1}}, 7);
      const KvStrides st = kv_strides(kv_pool_view(nullptr, DType::F32, Device::CPU, s.geo, s.num_pages), c.layout);
      const float scale = 1.0f / std::sqrt(float(D));
      float lo = INFINITY, hi = -INFINITY, widest_row = 0.0f;
      int64_t one_hot_rows = 0;
      for (size_t b = 0; b < s.tables.seq_ids.size(); ++b) {
        const int32_t* pages = s.tables.page_indices.data() + s.tables.page_indptr[b];
        for (int64_t t = s.tables.qo_indptr[b]; t < s.tables.qo_indptr[b + 1]; ++t)
          for (int64_t h = 0; h < c.n_heads; ++h) {
            const int64_t kvh = h / (c.n_heads / c.n_kv_heads);
            float rlo = INFINITY, rhi = -INFINITY, second = -INFINITY;
            for (int64_t p = 0; p <= s.positions[size_t(t)]; ++p) {
              const float* k =
                  s.k_pool.data() + pages[p / c.page_size] * st.page + (p % c.page_size) * st.slot + kvh * st.head;
              const float* q = s.qkv.data() + t * s.qkv_dim + h * D;
              float dot = 0.0f;
              for (int64_t d = 0; d < D; ++d) dot += q[d] * k[d];
              const float sc = dot * scale;
              rlo = std::min(rlo, sc);
              if (sc > rhi) {
                second = rhi;
                rhi = sc;
              } else {
                second = std::max(second, sc);
              }
            }
            lo = std::min(lo, rlo);
            hi = std::max(hi, rhi);
            widest_row = std::max(widest_row, rhi - rlo);
            one_hot_rows += rhi - second > 1e3f;
          }
      }
      ASSERT_TRUE(std::isfinite(lo) && std::isfinite(hi));
      for (float r : s.ref) ASSERT_TRUE(std::isfinite(r)) << "reference not finite";
      switch (fill) {
        case Fill::Huge:
          EXPECT_GE(hi, 9e3f);
          EXPECT_LE(lo, -9e3f);
          break;
        case Fill::OneHot:
          EXPECT_GE(hi, 9e3f);
          EXPECT_GT(one_hot_rows, 0);
          break;
        case Fill::Flat: EXPECT_EQ(widest_row, 0.0f); break;
        case Fill::VeryNegative: EXPECT_LT(hi, -5e4f); break;
        default: break;
      }
    }
}

// --------------------------------------------------------------------------------------------- GPU tests

// The matrix: dtype x page size x layout x model geometry, on the mixed step.
TEST_F(FlashInfer, run_Matrix) {
  REQUIRE_GPU();
  uint32_t seed = 1;
  for (DType dt : {DType::BF16, DType::F16})
    for (int64_t P : {1, 16})
      for (KvLayout layout : {KvLayout::NHD, KvLayout::HND})
        for (const Geometry& g : kGeometries) {
          SCOPED_TRACE(g.model);
          Case c;
          c.dtype = dt;
          c.page_size = P;
          c.layout = layout;
          c.n_heads = g.n_heads;
          c.n_kv_heads = g.n_kv_heads;
          c.head_dim = g.head_dim;
          check(c, kMixedStep, seed++);
        }
}

// Each prompt length alone (a batch of one), then decoding one token after it.
TEST_F(FlashInfer, run_Prompts) {
  REQUIRE_GPU();
  uint32_t seed = 100;
  for (DType dt : {DType::BF16, DType::F16})
    for (const Geometry& g : {kGeometries[0], kGeometries[4]})
      for (int64_t len : {1, 15, 16, 17, 300})
        for (int64_t P : {1, 16}) {
          SCOPED_TRACE("prompt " + std::to_string(len));
          Case c{dt, g.n_heads, g.n_kv_heads, g.head_dim, P, P == 1 ? KvLayout::HND : KvLayout::NHD};
          check(c, {{0, len}}, seed++);
          check(c, {{len, 1}}, seed++);
        }
}

// The three CTA tiles: a decode-only batch (16), mid-length chunks (64), one long prompt (128); 17 sequences.
TEST_F(FlashInfer, run_TileSizes) {
  REQUIRE_GPU();
  uint32_t seed = 200;
  std::vector<SeqSpec> decode17, chunks;
  for (int i = 0; i < 17; ++i) decode17.push_back({int64_t(1 + 37 * i), 1});
  for (int i = 0; i < 5; ++i) chunks.push_back({int64_t(10 * i), 8});  // 8 x group 3..7: 24..56 packed rows
  for (DType dt : {DType::BF16, DType::F16})
    for (const Geometry& g : kGeometries) {
      SCOPED_TRACE(g.model);
      Case c{dt, g.n_heads, g.n_kv_heads, g.head_dim};
      std::set<int64_t> tiles;
      tiles.insert(check(c, decode17, seed++).cta_tile_q);
      tiles.insert(check(c, chunks, seed++).cta_tile_q);
      tiles.insert(check(c, {{0, 300}}, seed++).cta_tile_q);
      EXPECT_EQ(tiles.size(), 3u) << "the three steps should pick three CTA tiles";
    }
}

// Every group size 1-8 at both head dims.
TEST_F(FlashInfer, run_GroupSizes) {
  REQUIRE_GPU();
  uint32_t seed = 300;
  for (int group = 1; group <= 8; ++group)
    for (int D : {64, 128}) {
      SCOPED_TRACE("group " + std::to_string(group));
      check({DType::BF16, 2 * group, 2, D}, {{0, 17}, {40, 1}, {5, 3}}, seed++);
    }
}

// Scores reaching +-1e4, one-hot, flat and all-very-negative rows, in both dtypes and head dims.
TEST_F(FlashInfer, run_ExtremeRows) {
  REQUIRE_GPU();
  uint32_t seed = 400;
  for (Fill fill : {Fill::Huge, Fill::OneHot, Fill::Flat, Fill::VeryNegative})
    for (DType dt : {DType::BF16, DType::F16})
      for (int D : {64, 128}) {
        Case c{dt, 14, 2, D};
        c.fill = fill;
        check(c, {{0, 17}, {16, 1}, {299, 1}, {0, 1}, {8, 9}}, seed++);
      }
}

TEST_F(FlashInfer, run_SlidingWindow) {
  REQUIRE_GPU();
  uint32_t seed = 500;
  for (int window : {1, 8, 16, 100})
    for (KvLayout layout : {KvLayout::NHD, KvLayout::HND}) {
      Case c{DType::BF16, 8, 2, 128, 16, layout, window};
      check(c, kMixedStep, seed++);
    }
}

// Long contexts with few sequences split the KV across CTAs; the unsplit plan must agree with the reference too.
TEST_F(FlashInfer, run_SplitKv) {
  REQUIRE_GPU();
  uint32_t seed = 600;
  for (DType dt : {DType::BF16, DType::F16})
    for (bool nosplit : {false, true}) {
      Case c{dt, 28, 4, 128};
      c.split = nosplit ? SplitKv::off : SplitKv::automatic;
      const auto plan = check(c, {{4000, 1}, {2500, 1}}, seed++);
      EXPECT_EQ(plan.split_kv, !nosplit);
      check(c, {{3000, 20}}, seed++);
    }
}

// q as a narrowed view of qkv rows (the default), as the whole qkv rows, and as a contiguous [T, H, D] tensor.
TEST_F(FlashInfer, run_QViews) {
  REQUIRE_GPU();
  const Case c{DType::BF16, 9, 3, 64};
  Scenario s = make_scenario(c, kMixedStep, 700);
  DeviceStep d(s, stream_);
  cuda::FlashInferAttention fa(c.shape(), c.dtype, c.page_size, c.layout);
  fa.plan(s.tables, s.num_pages, stream_);
  auto run_and_check = [&](const Tensor& q, const char* what) {
    GuardedOut out(c.dtype, s.T, s.q_dim);
    fa.run(q, d.kv, out.view(), stream_);
    const HostTensor got = cuda::download_f32(out.view(), stream_);
    EXPECT_TRUE(matches_reference(s, std::vector<float>(got.f32(), got.f32() + got.numel()))) << what;
    EXPECT_EQ(out.damaged_guards(stream_), 0) << what;
  };
  run_and_check(d.q, "narrowed view");
  run_and_check(Tensor::contiguous(d.qkv.view().data, c.dtype, {s.T, s.qkv_dim}, Device::CUDA), "whole qkv rows");
  // A contiguous copy of the q columns as [T, H, D].
  std::vector<float> qh(size_t(s.T * s.q_dim));
  for (int64_t t = 0; t < s.T; ++t)
    std::memcpy(qh.data() + t * s.q_dim, s.qkv.data() + t * s.qkv_dim, size_t(s.q_dim) * 4);
  cuda::DeviceTensor q3 =
      cuda::upload(Tensor::contiguous(qh.data(), DType::F32, {s.T, c.n_heads, c.head_dim}), c.dtype, stream_);
  run_and_check(q3.view(), "[T, H, D]");
}

// Several decode steps and two layers, planned and run with no host synchronization in between (the pinned plan
// buffer is double-buffered; a plan must not overwrite metadata whose copy has not run yet); then every output is
// checked.
TEST_F(FlashInfer, run_StepsAndLayersWithoutSync) {
  REQUIRE_GPU();
  const Case c{DType::BF16, 14, 2, 64, 16, KvLayout::HND};
  constexpr int kSteps = 6;
  struct Step {
    Scenario layer0, layer1;
    std::unique_ptr<DeviceStep> d0, d1;
  };
  std::vector<Step> steps(kSteps);
  for (int i = 0; i < kSteps; ++i) {
    // Three sequences decoding, a fourth prefilling in chunks of 7.
    const std::vector<SeqSpec> seqs = {
        {int64_t(5 + i), 1}, {int64_t(16 + i), 1}, {int64_t(300 + i), 1}, {int64_t(7 * i), 7}};
    steps[size_t(i)].layer0 = make_scenario(c, seqs, 800 + 2 * uint32_t(i));
    steps[size_t(i)].layer1 = make_scenario(c, seqs, 801 + 2 * uint32_t(i));  // same tables, other values
    ASSERT_EQ(steps[size_t(i)].layer0.tables.page_indices, steps[size_t(i)].layer1.tables.page_indices);
    steps[size_t(i)].d0 = std::make_unique<DeviceStep>(steps[size_t(i)].layer0, stream_);
    steps[size_t(i)].d1 = std::make_unique<DeviceStep>(steps[size_t(i)].layer1, stream_);
  }
  cuda::FlashInferAttention fa(c.shape(), c.dtype, c.page_size, c.layout, 64, 8);
  for (Step& st : steps) {
    fa.plan(st.layer0.tables, st.layer0.num_pages, stream_);
    PagedKv kv1 = st.d1->kv;  // layer 1's pools with the step's one set of device tables
    kv1.page_indptr = st.d0->kv.page_indptr;
    kv1.page_indices = st.d0->kv.page_indices;
    kv1.last_page_len = st.d0->kv.last_page_len;
    fa.run(st.d0->q, st.d0->kv, st.d0->out->view(), stream_);
    fa.run(st.d1->q, kv1, st.d1->out->view(), stream_);
  }
  TD_CUDA_CHECK(cudaStreamSynchronize(stream_));
  for (int i = 0; i < kSteps; ++i) {
    SCOPED_TRACE("step " + std::to_string(i));
    for (int layer = 0; layer < 2; ++layer) {
      const Scenario& s = layer ? steps[size_t(i)].layer1 : steps[size_t(i)].layer0;
      const DeviceStep& d = layer ? *steps[size_t(i)].d1 : *steps[size_t(i)].d0;
      const HostTensor got = cuda::download_f32(d.out->view(), stream_);
      EXPECT_TRUE(matches_reference(s, std::vector<float>(got.f32(), got.f32() + got.numel()))) << "layer " << layer;
    }
  }
}

// A workspace sized for a small step grows for a large one.
TEST_F(FlashInfer, plan_GrowsWorkspaces) {
  REQUIRE_GPU();
  const Case c{DType::F16, 32, 8, 128};
  Scenario small = make_scenario(c, {{0, 2}}, 900);
  std::vector<SeqSpec> big;
  for (int i = 0; i < 40; ++i) big.push_back({int64_t(50 * i), i % 3 == 0 ? 40 : 1});
  Scenario many = make_scenario(c, big, 901);
  // Two 20-token chunks over long contexts: split KV with 128-row tiles, more partial rows than a decode needs.
  Scenario split = make_scenario(c, {{3000, 20}, {2000, 20}}, 902);
  cuda::FlashInferAttention fa(c.shape(), c.dtype, c.page_size, c.layout, /*max_tokens=*/2, /*max_batch=*/1);
  for (Scenario* s : {&small, &split, &many, &small}) {
    DeviceStep d(*s, stream_);
    fa.plan(s->tables, s->num_pages, stream_);
    fa.run(d.q, d.kv, d.out->view(), stream_);
    const HostTensor got = cuda::download_f32(d.out->view(), stream_);
    EXPECT_TRUE(matches_reference(*s, std::vector<float>(got.f32(), got.f32() + got.numel()))) << s->T << " tokens";
  }
}

TEST_F(FlashInfer, run_EmptyStep) {
  REQUIRE_GPU();
  const Case c;
  cuda::FlashInferAttention fa(c.shape(), c.dtype, c.page_size, c.layout);
  const KvStepTables empty{{}, {0}, {}, {}, {}, {}, {0}};
  EXPECT_EQ(fa.plan(empty, 4, stream_).tokens, 0);
  Scenario s = make_scenario(c, {{0, 1}}, 1000);
  DeviceStep d(s, stream_);
  PagedKv kv = d.kv;
  kv.page_indptr = Tensor::contiguous(d.indptr.view().data, DType::I32, {1}, Device::CUDA);
  kv.page_indices = Tensor::contiguous(d.indices.view().data, DType::I32, {0}, Device::CUDA);
  kv.last_page_len = Tensor::contiguous(d.last.view().data, DType::I32, {0}, Device::CUDA);
  const Tensor q0 = Tensor::contiguous(d.qkv.view().data, c.dtype, {0, s.q_dim}, Device::CUDA);
  const Tensor o0 = Tensor::contiguous(d.out->view().data, c.dtype, {0, s.q_dim}, Device::CUDA);
  EXPECT_NO_THROW(fa.run(q0, kv, o0, stream_));
  TD_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

TEST_F(FlashInfer, plan_RejectsUngroupedTokens) {
  REQUIRE_GPU();
  const Case c;
  cuda::FlashInferAttention fa(c.shape(), c.dtype, c.page_size, c.layout);
  // Tokens of sequences 1, 2, 1: not grouped, so build_kv_tables leaves qo_indptr empty.
  PageTable pt(16, 8);
  pt.add_sequence(1);
  pt.add_sequence(2);
  pt.reserve(1, 10);
  pt.reserve(2, 10);
  const std::vector<int32_t> seq_of = {1, 2, 1};
  const KvStepTables t = build_kv_tables(seq_of, pt, {{1, 10}, {2, 10}});
  ASSERT_TRUE(t.qo_indptr.empty());
  try {
    fa.plan(t, 8, stream_);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not grouped by sequence"), std::string::npos) << e.what();
  }
}

TEST_F(FlashInfer, run_RejectsBadInputs) {
  REQUIRE_GPU();
  const Case c{DType::BF16, 8, 2, 64};
  Scenario s = make_scenario(c, {{0, 5}, {9, 1}}, 1100);
  DeviceStep d(s, stream_);
  cuda::FlashInferAttention fa(c.shape(), c.dtype, c.page_size, c.layout);
  auto expect_error = [&](const char* what, const Tensor& q, const PagedKv& kv, const Tensor& out,
                          const std::string& needle) {
    try {
      fa.run(q, kv, out, stream_);
      ADD_FAILURE() << what << ": no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << what << ": " << e.what();
    }
  };
  expect_error("before plan", d.q, d.kv, d.out->view(), "no plan");
  fa.plan(s.tables, s.num_pages, stream_);
  {
    Tensor q = d.q;
    q.dtype = DType::F16;
    expect_error("q dtype", q, d.kv, d.out->view(), "q must be");
  }
  {
    Tensor q = d.q;
    q.shape[0] -= 1;
    expect_error("q rows", q, d.kv, d.out->view(), "q must be");
  }
  {
    PagedKv kv = d.kv;
    kv.layout = KvLayout::HND;
    expect_error("layout", d.q, kv, d.out->view(), "adapter was built for NHD");
  }
  {
    PagedKv kv = d.kv;  // V viewed as HND-shaped while K is NHD: strides differ
    kv.v = kv_pool_view(d.v.view().data, c.dtype, Device::CUDA, KvGeometry{1, 16, 64, 2, KvLayout::NHD}, s.num_pages);
    expect_error("v shape", d.q, kv, d.out->view(), "kv.v");
  }
  {
    PagedKv kv = d.kv;
    kv.page_indptr.shape[0] -= 1;
    expect_error("indptr size", d.q, kv, d.out->view(), "page_indptr");
  }
  {
    Tensor out = d.out->view();
    out.shape[1] -= 1;
    expect_error("out shape", d.q, d.kv, out, "out must be");
  }
  expect_error("out aliases q", d.q, d.kv, Tensor::contiguous(d.qkv.view().data, c.dtype, {s.T, s.q_dim}, Device::CUDA),
               "aliases");
  EXPECT_THROW(cuda::FlashInferAttention({8, 2, 96, 0}, DType::BF16, 16, KvLayout::NHD), Error);
}

}  // namespace
}  // namespace tandem
