// What the FlashInfer adapter tests share (tests/gpu/test_flashinfer*.cpp): a step built on the host (page tables,
// f32 pools with NaN wherever the step has no token, qkv rows, the fp32 CPU reference cpu::attention), the same
// step on the device (pools in the activation dtype, a guarded output), the pass criterion, and the test fixture
// that plans, runs and checks one step on a fresh adapter. The criteria and fills: test_flashinfer.cpp's header.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "cpu/ops.h"
#include "cuda/check.h"
#include "cuda/device_buffer.h"
#include "cuda/device_query.h"
#include "cuda/flashinfer.cuh"
#include "exec/kv_cache.h"
#include "exec/split_kv.h"

namespace tandem::fitest {

inline const float kNaN = std::numeric_limits<float>::quiet_NaN();

inline double rel_l2_bound(DType d) { return d == DType::F16 ? 3.2e-3 : 1e-2; }

inline float round_to(float v, DType d) {
  switch (d) {
    case DType::BF16: return bf16_to_f32(f32_to_bf16(v));
    case DType::F16: return fp16_to_f32(f32_to_fp16(v));
    default: return v;
  }
}

// How K, V and Q are filled.
enum class Fill {
  Random,        // N(0, 1)
  Huge,          // scaled scores spread over [-1e4, 1e4]: softmax one-hot at the largest
  OneHot,        // one key per (sequence, kv head) scores ~1e4, all others exactly 0
  Flat,          // every key of a head identical: uniform attention
  VeryNegative,  // every scaled score in about [-6.7e4, -6e4]
};
inline const char* fill_name(Fill f) {
  switch (f) {
    case Fill::Random: return "random";
    case Fill::Huge: return "huge";
    case Fill::OneHot: return "onehot";
    case Fill::Flat: return "flat";
    case Fill::VeryNegative: return "very_negative";
  }
  return "?";
}

struct Case {
  DType dtype = DType::BF16;
  int n_heads = 8, n_kv_heads = 2, head_dim = 64;
  int64_t page_size = 16;
  KvLayout layout = KvLayout::NHD;
  int window = 0;
  Fill fill = Fill::Random;
  SplitKv split = SplitKv::automatic;

  AttentionShape shape() const { return {n_heads, n_kv_heads, head_dim, window}; }
  std::string name() const {
    return std::string(dtype_name(dtype)) + " heads " + std::to_string(n_heads) + "/" + std::to_string(n_kv_heads) +
           " D" + std::to_string(head_dim) + " page " + std::to_string(page_size) + " " +
           std::string(kv_layout_name(layout)) + " window " + std::to_string(window) + " fill " + fill_name(fill) +
           (split != SplitKv::automatic ? " split-kv " + std::string(split_kv_name(split)) : "");
  }
};

// A sequence of the step: `cached` tokens already in the cache, `fresh` tokens in this step (cached = 0: a new
// prompt; fresh = 1 and cached > 0: a decode token; else a chunked-prefill continuation).
struct SeqSpec {
  int64_t cached = 0, fresh = 1;
};

// One step, built on the host: page tables, f32 pools (NaN where the step has no token), qkv rows and the CPU
// reference output.
struct Scenario {
  Case c;
  std::vector<SeqSpec> seqs;
  KvGeometry geo;
  int64_t num_pages = 0, T = 0, q_dim = 0, kv_dim = 0, qkv_dim = 0;
  KvStepTables tables;
  std::vector<int32_t> positions;
  std::vector<float> k_pool, v_pool, qkv, ref;

  PagedKv host_kv() {
    PagedKv kv;
    kv.k = kv_pool_view(k_pool.data(), DType::F32, Device::CPU, geo, num_pages);
    kv.v = kv_pool_view(v_pool.data(), DType::F32, Device::CPU, geo, num_pages);
    kv.layout = geo.layout;
    kv.page_size = geo.page_size;
    kv.page_indptr = Tensor::contiguous(tables.page_indptr.data(), DType::I32, {int64_t(tables.page_indptr.size())});
    kv.page_indices = Tensor::contiguous(tables.page_indices.data(), DType::I32, {int64_t(tables.page_indices.size())});
    kv.last_page_len =
        Tensor::contiguous(tables.last_page_len.data(), DType::I32, {int64_t(tables.last_page_len.size())});
    kv.token_batch = Tensor::contiguous(tables.token_batch.data(), DType::I32, {int64_t(tables.token_batch.size())});
    return kv;
  }
};

inline int32_t seq_id_of(size_t i) { return int32_t(100 + 7 * i); }

inline Scenario make_scenario(const Case& c, const std::vector<SeqSpec>& seqs, uint32_t seed) {
  Scenario s;
  s.c = c;
  s.seqs = seqs;
  const int64_t P = c.page_size, D = c.head_dim;
  s.geo = KvGeometry{1, c.n_kv_heads, D, P, c.layout};
  s.q_dim = int64_t(c.n_heads) * D;
  s.kv_dim = int64_t(c.n_kv_heads) * D;
  s.qkv_dim = s.q_dim + 2 * s.kv_dim;

  // Pages: two held by a sequence outside the step (ids 0 and 1, never referenced), then the step's sequences
  // grow one page at a time in turn, so their pages interleave; two spare pages stay free.
  std::map<int32_t, int64_t> kv_len_after;
  int64_t pages_needed = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const int64_t len = seqs[i].cached + seqs[i].fresh;
    kv_len_after[seq_id_of(i)] = len;
    pages_needed += (len + P - 1) / P;
  }
  s.num_pages = pages_needed + 4;
  PageTable pt(P, s.num_pages);
  pt.add_sequence(1);
  pt.reserve(1, 2 * P);
  for (size_t i = 0; i < seqs.size(); ++i) pt.add_sequence(seq_id_of(i));
  for (int64_t round = 1;; ++round) {
    bool grew = false;
    for (size_t i = 0; i < seqs.size(); ++i) {
      const int64_t len = kv_len_after[seq_id_of(i)];
      const int64_t want = std::min(len, round * P);
      if (pt.pages_needed(seq_id_of(i), want) > 0) {
        pt.reserve(seq_id_of(i), want);
        grew = true;
      }
    }
    if (!grew) break;
  }
  // The step lists the sequences last to first, so batch order is neither id order nor creation order.
  std::vector<int32_t> seq_of;
  for (size_t i = seqs.size(); i-- > 0;)
    for (int64_t t = 0; t < seqs[i].fresh; ++t) seq_of.push_back(seq_id_of(i));
  s.tables = build_kv_tables(seq_of, pt, kv_len_after);
  s.T = int64_t(seq_of.size());

  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  const DType dt = c.dtype;
  auto randn = [&] {
    float x;
    do x = round_to(normal(rng), dt);
    while (x == 0.0f);
    return x;
  };
  // A fixed +-1 direction: q and k along it give scores of q_amp * k_amp * D * scale = q_amp * k_amp * sqrt(D).
  std::vector<float> w(static_cast<size_t>(D));
  for (float& x : w) x = (rng() & 1) ? 1.0f : -1.0f;
  const float sqrt_d = std::sqrt(float(D));
  const float huge_amp = std::ceil(std::sqrt(1e4f / sqrt_d));   // scores up to ~1e4
  const float neg_amp = std::ceil(std::sqrt(6.7e4f / sqrt_d));  // scores about -6.7e4 * (0.9..1)

  // K and V of every cached position.
  s.k_pool.assign(size_t(s.num_pages * s.geo.page_elems()), kNaN);
  s.v_pool.assign(s.k_pool.size(), kNaN);
  const Tensor view = kv_pool_view(s.k_pool.data(), DType::F32, Device::CPU, s.geo, s.num_pages);
  const KvStrides st = kv_strides(view, c.layout);
  const size_t B = s.tables.seq_ids.size();
  std::vector<float> flat_k(size_t(s.kv_dim));
  for (float& x : flat_k) x = randn();
  for (size_t b = 0; b < B; ++b) {
    const int64_t kv_len = s.tables.kv_len[b];
    const int32_t* pages = s.tables.page_indices.data() + s.tables.page_indptr[b];
    std::vector<int64_t> hot(size_t(c.n_kv_heads));
    for (int64_t& h : hot) h = int64_t(rng() % uint32_t(kv_len));
    for (int64_t p = 0; p < kv_len; ++p)
      for (int64_t h = 0; h < c.n_kv_heads; ++h) {
        const int64_t off = pages[p / P] * st.page + (p % P) * st.slot + h * st.head;
        float* k = s.k_pool.data() + off;
        float* v = s.v_pool.data() + off;
        const float u = uni(rng);
        for (int64_t d = 0; d < D; ++d) {
          float kv = 0.0f;
          switch (c.fill) {
            case Fill::Random: kv = randn(); break;
            case Fill::Huge: kv = round_to(huge_amp * u, dt) * w[size_t(d)]; break;
            case Fill::OneHot: kv = p == hot[size_t(h)] ? huge_amp * w[size_t(d)] : 0.0f; break;
            case Fill::Flat: kv = flat_k[size_t(h * D + d)]; break;
            case Fill::VeryNegative: kv = -round_to(neg_amp * (0.95f + 0.05f * u), dt) * w[size_t(d)]; break;
          }
          k[d] = kv;
          v[d] = randn();
        }
      }
  }
  // qkv rows: q per the fill, k | v copied from the token's slot; positions: the entry's last qo_len positions.
  s.qkv.assign(size_t(s.T * s.qkv_dim), 0.0f);
  s.positions.resize(size_t(s.T));
  for (size_t b = 0; b < B; ++b) {
    const int64_t q0 = s.tables.qo_indptr[b], q1 = s.tables.qo_indptr[b + 1], kv_len = s.tables.kv_len[b];
    const int32_t* pages = s.tables.page_indices.data() + s.tables.page_indptr[b];
    for (int64_t t = q0; t < q1; ++t) {
      const int64_t pos = kv_len - (q1 - q0) + (t - q0);
      s.positions[size_t(t)] = int32_t(pos);
      float* row = s.qkv.data() + t * s.qkv_dim;
      for (int64_t h = 0; h < c.n_heads; ++h) {
        const float sign = (h % 2) ? -1.0f : 1.0f;  // Huge: half the heads pick the largest key, half the smallest
        for (int64_t d = 0; d < D; ++d) {
          float q = 0.0f;
          switch (c.fill) {
            case Fill::Random:
            case Fill::Flat: q = randn(); break;
            case Fill::Huge: q = sign * huge_amp * w[size_t(d)]; break;
            case Fill::OneHot: q = huge_amp * w[size_t(d)]; break;
            case Fill::VeryNegative: q = neg_amp * w[size_t(d)]; break;
          }
          row[h * D + d] = q;
        }
      }
      for (int64_t h = 0; h < c.n_kv_heads; ++h) {
        const int64_t off = pages[pos / P] * st.page + (pos % P) * st.slot + h * st.head;
        std::memcpy(row + s.q_dim + h * D, s.k_pool.data() + off, size_t(D) * 4);
        std::memcpy(row + s.q_dim + s.kv_dim + h * D, s.v_pool.data() + off, size_t(D) * 4);
      }
    }
  }
  // The reference.
  s.ref.assign(size_t(s.T * s.q_dim), kNaN);
  if (s.T > 0) {
    PagedKv kv = s.host_kv();
    const Tensor qkv = Tensor::contiguous(s.qkv.data(), DType::F32, {s.T, s.qkv_dim});
    const Tensor pos = Tensor::contiguous(s.positions.data(), DType::I32, {s.T});
    const Tensor out = Tensor::contiguous(s.ref.data(), DType::F32, {s.T, s.q_dim});
    cpu::attention(qkv, pos, kv, c.shape(), out);
  }
  return s;
}

// ------------------------------------------------------------------------------------------- device side

inline cuda::DeviceTensor upload_i32(const std::vector<int32_t>& v, cudaStream_t stream) {
  cuda::DeviceTensor d = cuda::DeviceTensor::empty(DType::I32, {int64_t(v.size())});
  if (!v.empty())
    cuda::copy_to_device(Tensor::contiguous(const_cast<int32_t*>(v.data()), DType::I32, {int64_t(v.size())}), d,
                         stream);
  return d;
}

// A device output buffer [T, q_dim] filled with 0xFF (NaN), inside 4 KiB guard zones of 0xFF.
class GuardedOut {
 public:
  static constexpr int64_t kSlack = 4096;
  GuardedOut(DType dt, int64_t T, int64_t q_dim) {
    bytes_ = Tensor::contiguous(nullptr, dt, {T, q_dim}).nbytes() + 2 * kSlack;
    buf_ = cuda::DeviceTensor::empty(DType::U8, {bytes_});
    TD_CUDA_CHECK(cudaMemset(buf_.view().data, 0xFF, size_t(bytes_)));
    TD_CUDA_CHECK(cudaDeviceSynchronize());
    view_ = Tensor::contiguous(static_cast<char*>(buf_.view().data) + kSlack, dt, {T, q_dim}, Device::CUDA);
  }
  const Tensor& view() const { return view_; }
  // Guard bytes changed (0 = none).
  int64_t damaged_guards(cudaStream_t stream) const {
    std::vector<uint8_t> h(static_cast<size_t>(bytes_));
    TD_CUDA_CHECK(cudaMemcpyAsync(h.data(), buf_.view().data, h.size(), cudaMemcpyDeviceToHost, stream));
    TD_CUDA_CHECK(cudaStreamSynchronize(stream));
    int64_t bad = 0;
    for (int64_t i = 0; i < kSlack; ++i) bad += (h[size_t(i)] != 0xFF) + (h[size_t(bytes_ - 1 - i)] != 0xFF);
    return bad;
  }

 private:
  int64_t bytes_ = 0;
  cuda::DeviceTensor buf_;
  Tensor view_;
};

// A scenario on the device: pools in the activation dtype, the tables, qkv rows and a guarded output.
struct DeviceStep {
  cuda::DeviceTensor qkv, k, v, indptr, indices, last, token_batch;
  PagedKv kv;
  Tensor q;  // the q part of the qkv rows: [T, q_dim], row stride qkv_dim
  std::unique_ptr<GuardedOut> out;

  DeviceStep(const Scenario& s, cudaStream_t stream) {
    const DType dt = s.c.dtype;
    qkv = cuda::upload(
        Tensor::contiguous(const_cast<float*>(s.qkv.data()), DType::F32, {std::max<int64_t>(s.T, 1) * s.qkv_dim}), dt,
        stream);
    const int64_t pool_elems = int64_t(s.k_pool.size());
    k = cuda::upload(Tensor::contiguous(const_cast<float*>(s.k_pool.data()), DType::F32, {pool_elems}), dt, stream);
    v = cuda::upload(Tensor::contiguous(const_cast<float*>(s.v_pool.data()), DType::F32, {pool_elems}), dt, stream);
    indptr = upload_i32(s.tables.page_indptr, stream);
    indices = upload_i32(s.tables.page_indices, stream);
    last = upload_i32(s.tables.last_page_len, stream);
    token_batch = upload_i32(s.tables.token_batch, stream);
    TD_CUDA_CHECK(cudaStreamSynchronize(stream));
    kv.k = kv_pool_view(k.view().data, dt, Device::CUDA, s.geo, s.num_pages);
    kv.v = kv_pool_view(v.view().data, dt, Device::CUDA, s.geo, s.num_pages);
    kv.layout = s.geo.layout;
    kv.page_size = s.geo.page_size;
    kv.page_indptr = indptr.view();
    kv.page_indices = indices.view();
    kv.last_page_len = last.view();
    kv.token_batch = token_batch.view();
    q = Tensor::contiguous(qkv.view().data, dt, {s.T, s.qkv_dim}, Device::CUDA);
    q.shape[1] = s.q_dim;  // a narrowed view: q columns of each row, row stride qkv_dim
    out = std::make_unique<GuardedOut>(dt, s.T, s.q_dim);
  }
};

// Per batch entry: relative L2 error of its rows, non-finite count; names the first failing entry.
inline ::testing::AssertionResult matches_reference(const Scenario& s, const std::vector<float>& got) {
  const double bound = rel_l2_bound(s.c.dtype);
  const size_t B = s.tables.seq_ids.size();
  for (size_t b = 0; b < B; ++b) {
    const int64_t r0 = s.tables.qo_indptr[b] * s.q_dim, r1 = s.tables.qo_indptr[b + 1] * s.q_dim;
    double num = 0, den = 0, max_abs = 0;
    int64_t nonfinite = 0, worst = -1;
    for (int64_t i = r0; i < r1; ++i) {
      const double g = got[size_t(i)], r = s.ref[size_t(i)];
      if (!std::isfinite(g)) {
        if (nonfinite++ == 0) worst = i;
        continue;
      }
      num += (g - r) * (g - r);
      den += r * r;
      if (std::abs(g - r) > max_abs && nonfinite == 0) {
        max_abs = std::abs(g - r);
        worst = i;
      }
    }
    const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    if (nonfinite > 0 || !(rel <= bound)) {
      const int64_t t = worst / s.q_dim, h = (worst % s.q_dim) / s.c.head_dim;
      return ::testing::AssertionFailure()
             << "entry " << b << " (sequence " << s.tables.seq_ids[b] << ", qo_len "
             << (s.tables.qo_indptr[b + 1] - s.tables.qo_indptr[b]) << ", kv_len " << s.tables.kv_len[b] << "): rel_l2 "
             << rel << " (bound " << bound << "), " << nonfinite << " non-finite; worst at token " << t << " (position "
             << s.positions[size_t(t)] << ") head " << h << ": got " << got[size_t(worst)] << ", expected "
             << s.ref[size_t(worst)];
    }
  }
  return ::testing::AssertionSuccess();
}

#define REQUIRE_GPU()                                              \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"; \
  make_stream()

class FlashInfer : public ::testing::Test {
 protected:
  void make_stream() { TD_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  void TearDown() override {
    if (stream_) cudaStreamDestroy(stream_);
  }

  // Plans and runs one scenario on a fresh adapter; checks it against the reference. Returns the plan summary.
  cuda::FlashInferPlanSummary check(const Case& c, const std::vector<SeqSpec>& seqs, uint32_t seed) {
    SCOPED_TRACE(c.name());
    Scenario s = make_scenario(c, seqs, seed);
    DeviceStep d(s, stream_);
    cuda::FlashInferAttention fa(c.shape(), c.dtype, c.page_size, c.layout, 4096, 64, c.split);
    const cuda::FlashInferPlanSummary plan = fa.plan(s.tables, s.num_pages, stream_);
    fa.run(d.q, d.kv, d.out->view(), stream_);
    const HostTensor got = cuda::download_f32(d.out->view(), stream_);
    EXPECT_TRUE(matches_reference(s, std::vector<float>(got.f32(), got.f32() + got.numel())))
        << "cta_tile_q " << plan.cta_tile_q << ", split_kv " << plan.split_kv;
    EXPECT_EQ(d.out->damaged_guards(stream_), 0) << "writes outside the output";
    return plan;
  }

  cudaStream_t stream_ = nullptr;
};

}  // namespace tandem::fitest
