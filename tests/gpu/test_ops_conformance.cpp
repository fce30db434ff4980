// Op conformance suite (in the spirit of llama.cpp's test-backend-ops): every CUDA launcher in src/cuda/*.cuh is
// run on random inputs and compared with the fp32 CPU reference op (cpu/ops.h) given the *same* inputs: random
// N(0,1) values are first rounded to the activation dtype, then both sides get those values.
//
// Pass criteria per output tensor:
//   - NMSE = ||gpu - ref||^2 / ||ref||^2 <= bound of the output dtype: f32 1e-10, f16 1e-5, bf16 1e-4. One
//     rounding of the output to bf16 alone costs ~2e-6 (f16: ~3e-8), and HF-style ops round twice, so the 16-bit
//     bounds leave ~20x headroom while catching any real indexing or accumulation error (those give NMSE ~1).
//     GEMM with 16-bit inputs and an f32 output uses 1e-8: tensor-core fp32 accumulation is not bit-identical to
//     a sequential fp32 sum, but accumulating in bf16/f16 would give ~1e-6 and fail.
//   - copies (embed, gather_rows, kv_write, kv_gather, convert) are exact.
//   - any non-finite GPU value where the reference is finite fails.
//   - guards: every device tensor (inputs too) lives in a buffer with 4 KiB of slack either side, the whole buffer
//     first filled with 0xFF bytes (NaN in f32/f16/bf16, -1 in i32/i64). After the op the slack must still be
//     0xFF (no out-of-bounds writes), and outputs start as NaN, so an element the op forgot to write fails. A NaN
//     guard read by mistake poisons the output, which also fails.
//   - paged KV cache (kv_write, attention, kv_gather): steps built with PageTable + build_kv_tables, pages shuffled
//     and out of order, every slot that holds nothing NaN (see "paged KV" below); pools and kv_gather exact, the
//     attention output within the NMSE bound, all against the CPU twins and the layout's own definition.
//
// Coverage: OpConformanceCoverage.EveryLauncherHasACase parses src/cuda/*.cuh for `void name(` declarations and
// fails unless this suite has a test `OpConformance.name` or `OpConformance.name_Something`. Adding a launcher
// without a conformance case is therefore a test failure, with no list to keep in sync by hand.
//
// Ops run on a non-blocking stream of the test's own; setup fills and copies are made synchronous explicitly. Every OpConformance test skips when no CUDA device is present. The coverage test reads only sources and runs
// everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <limits>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "core/file.h"
#include "core/tensor.h"
#include "cpu/ops.h"
#include "cuda/attention.cuh"
#include "cuda/check.h"
#include "cuda/device_query.h"
#include "cuda/elementwise.cuh"
#include "cuda/embedding.cuh"
#include "cuda/gemm.cuh"
#include "cuda/norm.cuh"
#include "cuda/device_buffer.h"
#include "cuda/random_fill.cuh"
#include "cuda/rope.cuh"
#include "exec/kv_cache.h"

namespace tandem {
namespace {

constexpr DType kFloatTypes[] = {DType::F32, DType::BF16, DType::F16};
const int64_t kRows[] = {1, 3, 17, 64};
const int64_t kWidths[] = {64, 96, 576, 1000};

double nmse_bound(DType out) {
  switch (out) {
    case DType::F32: return 1e-10;
    case DType::F16: return 1e-5;
    case DType::BF16: return 1e-4;
    default: fail("no NMSE bound for {}", dtype_name(out));
  }
}

float round_to(float v, DType d) {
  switch (d) {
    case DType::F32: return v;
    case DType::BF16: return bf16_to_f32(f32_to_bf16(v));
    case DType::F16: return fp16_to_f32(f32_to_fp16(v));
    default: fail("round_to: {}", dtype_name(d));
  }
}

// n values ~ N(0, 1) rounded to `d`; never zero.
std::vector<float> randn(int64_t n, DType d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) {
    do x = round_to(dist(rng), d);
    while (x == 0.0f);
  }
  return v;
}

// An f32 host tensor holding a copy of `v` (what the CPU reference ops take).
HostTensor host_f32(const std::vector<float>& v, std::initializer_list<int64_t> shape) {
  HostTensor h = HostTensor::empty(DType::F32, shape);
  EXPECT_EQ(h.numel(), int64_t(v.size()));
  std::memcpy(h.f32(), v.data(), v.size() * sizeof(float));
  return h;
}

// An i32 host tensor [n] holding a copy of `v`.
HostTensor host_i32(const std::vector<int32_t>& v) {
  HostTensor h = HostTensor::empty(DType::I32, {int64_t(v.size())});
  if (!v.empty()) std::memcpy(h.view().data, v.data(), v.size() * sizeof(int32_t));
  return h;
}

std::vector<float> to_vector(const HostTensor& h) { return std::vector<float>(h.f32(), h.f32() + h.numel()); }

// A device buffer with guard zones: [slack][tensor][slack], all filled with 0xFF bytes at creation.
class Guarded {
 public:
  static constexpr size_t kSlack = 4096;

  // `misalign` shifts the tensor by that many bytes from a 256-byte boundary (for GEMM alignment cases).
  Guarded(DType dtype, std::initializer_list<int64_t> shape, size_t misalign = 0) : misalign_(misalign) {
    view_ = Tensor::contiguous(nullptr, dtype, shape, Device::CUDA);
    bytes_ = 2 * kSlack + misalign_ + size_t(view_.nbytes());
    TD_CUDA_CHECK(cudaMalloc(&base_, bytes_));
    TD_CUDA_CHECK(cudaMemset(base_, 0xFF, bytes_));
    // cudaMemset and pageable cudaMemcpy may still be in flight when they return, on the legacy stream, which
    // the test's non-blocking stream does not wait for: finish them before any op runs.
    TD_CUDA_CHECK(cudaDeviceSynchronize());
    view_.data = static_cast<char*>(base_) + kSlack + misalign_;
  }
  ~Guarded() { cudaFree(base_); }
  Guarded(const Guarded&) = delete;
  Guarded& operator=(const Guarded&) = delete;

  const Tensor& view() const { return view_; }
  operator const Tensor&() const { return view_; }

  // Float values (already representable in the dtype) converted on the host and copied in.
  void upload(const std::vector<float>& v) {
    TD_CHECK(int64_t(v.size()) == view_.numel(), "upload of {} values into {}", v.size(), view_.describe());
    std::vector<uint16_t> half(v.size());
    const void* src = v.data();
    if (view_.dtype == DType::BF16) {
      for (size_t i = 0; i < v.size(); ++i) half[i] = f32_to_bf16(v[i]);
      src = half.data();
    } else if (view_.dtype == DType::F16) {
      for (size_t i = 0; i < v.size(); ++i) half[i] = f32_to_fp16(v[i]);
      src = half.data();
    } else {
      TD_CHECK(view_.dtype == DType::F32, "upload of floats into {}", view_.describe());
    }
    TD_CUDA_CHECK(cudaMemcpy(view_.data, src, size_t(view_.nbytes()), cudaMemcpyHostToDevice));
    TD_CUDA_CHECK(cudaDeviceSynchronize());
  }
  template <typename I>
  void upload_ints(const std::vector<I>& v) {
    TD_CHECK(int64_t(v.size() * sizeof(I)) == view_.nbytes(), "upload of {} ints into {}", v.size(),
             view_.describe());
    TD_CUDA_CHECK(cudaMemcpy(view_.data, v.data(), size_t(view_.nbytes()), cudaMemcpyHostToDevice));
    TD_CUDA_CHECK(cudaDeviceSynchronize());
  }

  // The tensor as f32 (call after the stream is synchronized).
  std::vector<float> download() const {
    std::vector<uint8_t> raw(size_t(view_.nbytes()));
    TD_CUDA_CHECK(cudaMemcpy(raw.data(), view_.data, raw.size(), cudaMemcpyDeviceToHost));
    std::vector<float> out(size_t(view_.numel()));
    for (size_t i = 0; i < out.size(); ++i) {
      if (view_.dtype == DType::F32) {
        std::memcpy(&out[i], raw.data() + 4 * i, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, raw.data() + 2 * i, 2);
        out[i] = view_.dtype == DType::BF16 ? bf16_to_f32(h) : fp16_to_f32(h);
      }
    }
    return out;
  }

  // "" when both guard zones still hold 0xFF, else where they were overwritten.
  std::string guard_damage() const {
    std::vector<uint8_t> all(bytes_);
    TD_CUDA_CHECK(cudaMemcpy(all.data(), base_, bytes_, cudaMemcpyDeviceToHost));
    const size_t begin = kSlack + misalign_, end = begin + size_t(view_.nbytes());
    int64_t before = 0, after = 0;
    for (size_t i = 0; i < begin; ++i) before += all[i] != 0xFF;
    for (size_t i = end; i < bytes_; ++i) after += all[i] != 0xFF;
    if (before == 0 && after == 0) return "";
    return fmt::format("{}: {} guard bytes overwritten before the tensor, {} after", view_.describe(), before,
                       after);
  }

 private:
  void* base_ = nullptr;
  size_t bytes_ = 0;
  size_t misalign_ = 0;
  Tensor view_;
};

void expect_guards_intact(std::initializer_list<const Guarded*> buffers) {
  for (const Guarded* g : buffers) {
    const std::string damage = g->guard_damage();
    EXPECT_TRUE(damage.empty()) << "out-of-bounds write: " << damage;
  }
}

// NMSE within `bound`, and no non-finite value where the reference is finite.
::testing::AssertionResult close(const std::vector<float>& got, const std::vector<float>& ref, double bound) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " vs reference " << ref.size();
  double num = 0.0, den = 0.0, worst = -1.0;
  int64_t non_finite = 0, first_non_finite = -1, worst_i = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(ref[i]))
      return ::testing::AssertionFailure() << "test bug: non-finite reference value at " << i;
    if (!std::isfinite(got[i])) {
      if (non_finite++ == 0) first_non_finite = int64_t(i);
      continue;
    }
    const double diff = double(got[i]) - double(ref[i]);
    num += diff * diff;
    den += double(ref[i]) * ref[i];
    if (std::fabs(diff) > worst) worst = std::fabs(diff), worst_i = int64_t(i);
  }
  const double nmse = den > 0 ? num / den : num;
  if (non_finite == 0 && nmse <= bound) return ::testing::AssertionSuccess();
  auto f = ::testing::AssertionFailure();
  f << "NMSE " << nmse << " (bound " << bound << ") over " << got.size() << " values";
  if (worst_i >= 0)
    f << "; largest error at " << worst_i << ": got " << got[size_t(worst_i)] << ", reference "
      << ref[size_t(worst_i)];
  if (non_finite > 0)
    f << "; " << non_finite << " non-finite values, first at " << first_non_finite << " (got "
      << got[size_t(first_non_finite)] << ", reference " << ref[size_t(first_non_finite)] << ")";
  return f;
}

// Bit-for-bit equality after conversion to f32 (NaN equals NaN).
::testing::AssertionResult exact(const std::vector<float>& got, const std::vector<float>& ref) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " vs reference " << ref.size();
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool same = (std::isnan(got[i]) && std::isnan(ref[i])) || std::memcmp(&got[i], &ref[i], 4) == 0;
    if (!same && bad++ == 0) first = int64_t(i);
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << got.size() << " values differ, first at " << first
                                       << ": got " << got[size_t(first)] << ", expected " << ref[size_t(first)];
}

std::string case_name(std::initializer_list<std::pair<const char*, std::string>> fields) {
  std::string s;
  for (const auto& [k, v] : fields) s += (s.empty() ? "" : " ") + std::string(k) + "=" + v;
  return s;
}
std::string str(DType d) { return std::string(dtype_name(d)); }
std::string str(int64_t v) { return std::to_string(v); }

const float kQuietNaN = std::numeric_limits<float>::quiet_NaN();

class OpConformance : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    TD_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  void TearDown() override {
    if (stream_) cudaStreamDestroy(stream_);
  }
  void sync() const { TD_CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  cudaStream_t stream_ = nullptr;
};

// ---------------------------------------------------------------------------------------------------- embed

TEST_F(OpConformance, embed) {
  const int64_t V = 257;
  uint32_t seed = 1;
  for (DType dt : kFloatTypes)
    for (int64_t T : kRows)
      for (int64_t H : kWidths) {
        SCOPED_TRACE(case_name({{"dtype", str(dt)}, {"T", str(T)}, {"H", str(H)}}));
        const std::vector<float> table = randn(V * H, dt, seed++);
        std::vector<int32_t> ids(static_cast<size_t>(T));
        std::mt19937 rng(seed++);
        for (auto& id : ids) id = int32_t(rng() % uint32_t(V));
        ids[0] = int32_t(V - 1);  // the last row
        Guarded d_table(dt, {V, H}), d_ids(DType::I32, {T}), d_out(dt, {T, H});
        d_table.upload(table);
        d_ids.upload_ints(ids);
        cuda::embed(d_table, d_ids, d_out, stream_);
        sync();
        HostTensor ref = HostTensor::empty(DType::F32, {T, H});
        cpu::embed(host_f32(table, {V, H}), host_i32(ids), ref);
        EXPECT_TRUE(exact(d_out.download(), to_vector(ref)));
        expect_guards_intact({&d_table, &d_ids, &d_out});
      }
}

TEST_F(OpConformance, embed_LargeBatch) {  // more rows than the launcher's grid: the grid-stride loop
  const int64_t V = 1000, T = 70001, H = 96;
  const DType dt = DType::F16;
  const std::vector<float> table = randn(V * H, dt, 11);
  std::vector<int32_t> ids(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) ids[size_t(t)] = int32_t((t * 7919) % V);
  Guarded d_table(dt, {V, H}), d_ids(DType::I32, {T}), d_out(dt, {T, H});
  d_table.upload(table);
  d_ids.upload_ints(ids);
  cuda::embed(d_table, d_ids, d_out, stream_);
  sync();
  HostTensor ref = HostTensor::empty(DType::F32, {T, H});
  cpu::embed(host_f32(table, {V, H}), host_i32(ids), ref);
  EXPECT_TRUE(exact(d_out.download(), to_vector(ref)));
  expect_guards_intact({&d_table, &d_ids, &d_out});
}

// Ids outside [0, V) give NaN rows. INT_MIN/INT_MAX rows would lie terabytes outside the table, so a kernel
// that read them would fault (the sync below throws); compute-sanitizer gives the exact check.
TEST_F(OpConformance, embed_OutOfRangeIds) {
  const int64_t V = 100, H = 96;
  const std::vector<int32_t> ids = {0, -1, int32_t(V), INT_MAX, INT_MIN, int32_t(V - 1), 5};
  const int64_t T = int64_t(ids.size());
  for (DType dt : kFloatTypes) {
    SCOPED_TRACE(case_name({{"dtype", str(dt)}}));
    const std::vector<float> table = randn(V * H, dt, 21);
    Guarded d_table(dt, {V, H}), d_ids(DType::I32, {T}), d_out(dt, {T, H});
    d_table.upload(table);
    d_ids.upload_ints(ids);
    cuda::embed(d_table, d_ids, d_out, stream_);
    sync();
    const std::vector<float> got = d_out.download();
    for (int64_t t = 0; t < T; ++t) {
      const int32_t id = ids[size_t(t)];
      const bool valid = id >= 0 && id < V;
      for (int64_t i = 0; i < H; ++i) {
        const float g = got[size_t(t * H + i)];
        if (valid)
          ASSERT_EQ(g, table[size_t(id * H + i)]) << "row " << t << " (id " << id << ") column " << i;
        else
          ASSERT_TRUE(std::isnan(g)) << "row " << t << " (bad id " << id << ") column " << i << " is " << g;
      }
    }
    expect_guards_intact({&d_table, &d_ids, &d_out});
  }
}

// ---------------------------------------------------------------------------------------------------- rmsnorm

void run_rmsnorm_case(cudaStream_t stream, DType dt, int64_t T, int64_t H, uint32_t seed, bool in_place) {
  const float eps = 1e-5f;
  const std::vector<float> x = randn(T * H, dt, seed), w = randn(H, dt, seed + 1000);
  Guarded d_x(dt, {T, H}), d_w(dt, {H}), d_out(dt, {T, H});
  d_x.upload(x);
  d_w.upload(w);
  const Guarded& target = in_place ? d_x : d_out;
  cuda::rmsnorm(d_x, d_w, eps, target, stream);
  TD_CUDA_CHECK(cudaStreamSynchronize(stream));
  HostTensor ref = HostTensor::empty(DType::F32, {T, H});
  cpu::rmsnorm(host_f32(x, {T, H}), host_f32(w, {H}), eps, ref);
  EXPECT_TRUE(close(target.download(), to_vector(ref), nmse_bound(dt)));
  expect_guards_intact({&d_x, &d_w, &d_out});
}

TEST_F(OpConformance, rmsnorm) {
  uint32_t seed = 100;
  for (DType dt : kFloatTypes)
    for (int64_t T : kRows)
      for (int64_t H : kWidths) {
        SCOPED_TRACE(case_name({{"dtype", str(dt)}, {"T", str(T)}, {"H", str(H)}}));
        run_rmsnorm_case(stream_, dt, T, H, seed++, false);
      }
}

TEST_F(OpConformance, rmsnorm_InPlaceAndLargeBatch) {
  for (DType dt : kFloatTypes) {
    SCOPED_TRACE(case_name({{"dtype", str(dt)}, {"in_place", "1"}}));
    run_rmsnorm_case(stream_, dt, 17, 1000, 150, true);
  }
  SCOPED_TRACE("T=70001 H=96 bf16");
  run_rmsnorm_case(stream_, DType::BF16, 70001, 96, 160, false);
}

// ---------------------------------------------------------------------------------------------------- rope

TEST_F(OpConformance, rope) {
  struct Heads {
    int n_heads, n_kv_heads, head_dim;
  };
  const Heads configs[] = {{8, 2, 64}, {9, 3, 128}, {4, 4, 96}, {2, 1, 256}};
  uint32_t seed = 200;
  for (DType dt : kFloatTypes)
    for (const Heads& c : configs)
      for (int64_t T : kRows) {
        SCOPED_TRACE(case_name({{"dtype", str(dt)},
                                {"T", str(T)},
                                {"heads", fmt::format("{}/{}x{}", c.n_heads, c.n_kv_heads, c.head_dim)}}));
        const int64_t width = int64_t(c.n_heads + 2 * c.n_kv_heads) * c.head_dim;
        const std::vector<float> qkv = randn(T * width, dt, seed++);
        std::vector<int32_t> pos(static_cast<size_t>(T));
        std::mt19937 rng(seed++);
        for (auto& p : pos) p = int32_t(rng() % 40000u);
        pos[0] = 0;
        if (T > 1) pos[1] = 1;
        std::vector<float> inv_freq(size_t(c.head_dim / 2));
        const float theta = c.head_dim == 128 ? 1e6f : 10000.0f;
        for (size_t i = 0; i < inv_freq.size(); ++i)
          inv_freq[i] = 1.0f / std::pow(theta, float(2 * i) / float(c.head_dim));
        Guarded d_qkv(dt, {T, width}), d_pos(DType::I32, {T}), d_freq(DType::F32, {c.head_dim / 2});
        d_qkv.upload(qkv);
        d_pos.upload_ints(pos);
        d_freq.upload(inv_freq);
        cuda::rope(d_qkv, d_pos, d_freq, c.n_heads, c.n_kv_heads, c.head_dim, stream_);
        sync();
        HostTensor ref = host_f32(qkv, {T, width});
        cpu::rope(ref, host_i32(pos), host_f32(inv_freq, {c.head_dim / 2}), c.n_heads, c.n_kv_heads, c.head_dim);
        const std::vector<float> got = d_qkv.download(), want = to_vector(ref);
        EXPECT_TRUE(close(got, want, nmse_bound(dt)));
        // The v heads are not touched at all.
        const int64_t v_begin = int64_t(c.n_heads + c.n_kv_heads) * c.head_dim;
        for (int64_t t = 0; t < T; ++t)
          for (int64_t i = v_begin; i < width; ++i)
            ASSERT_EQ(got[size_t(t * width + i)], qkv[size_t(t * width + i)]) << "v changed at row " << t;
        expect_guards_intact({&d_qkv, &d_pos, &d_freq});
      }
}

// ---------------------------------------------------------------------------------------------------- elementwise

TEST_F(OpConformance, add_bias) {
  uint32_t seed = 300;
  for (DType dt : kFloatTypes)
    for (int64_t T : kRows)
      for (int64_t N : kWidths) {
        SCOPED_TRACE(case_name({{"dtype", str(dt)}, {"T", str(T)}, {"N", str(N)}}));
        const std::vector<float> x = randn(T * N, dt, seed++), bias = randn(N, dt, seed++);
        Guarded d_x(dt, {T, N}), d_bias(dt, {N});
        d_x.upload(x);
        d_bias.upload(bias);
        cuda::add_bias(d_x, d_bias, stream_);
        sync();
        HostTensor ref = host_f32(x, {T, N});
        cpu::add_bias(ref, host_f32(bias, {N}));
        EXPECT_TRUE(close(d_x.download(), to_vector(ref), nmse_bound(dt)));
        expect_guards_intact({&d_x, &d_bias});
      }
}

TEST_F(OpConformance, silu_mul) {
  uint32_t seed = 400;
  for (DType dt : kFloatTypes)
    for (int64_t T : kRows)
      for (int64_t I : kWidths) {
        SCOPED_TRACE(case_name({{"dtype", str(dt)}, {"T", str(T)}, {"I", str(I)}}));
        const std::vector<float> gate_up = randn(T * 2 * I, dt, seed++);
        Guarded d_in(dt, {T, 2 * I}), d_out(dt, {T, I});
        d_in.upload(gate_up);
        cuda::silu_mul(d_in, d_out, stream_);
        sync();
        HostTensor ref = HostTensor::empty(DType::F32, {T, I});
        cpu::silu_mul(host_f32(gate_up, {T, 2 * I}), ref);
        EXPECT_TRUE(close(d_out.download(), to_vector(ref), nmse_bound(dt)));
        expect_guards_intact({&d_in, &d_out});
      }
  SCOPED_TRACE("T=70001 I=96 f16");
  const int64_t T = 70001, I = 96;
  const std::vector<float> gate_up = randn(T * 2 * I, DType::F16, 450);
  Guarded d_in(DType::F16, {T, 2 * I}), d_out(DType::F16, {T, I});
  d_in.upload(gate_up);
  cuda::silu_mul(d_in, d_out, stream_);
  sync();
  HostTensor ref = HostTensor::empty(DType::F32, {T, I});
  cpu::silu_mul(host_f32(gate_up, {T, 2 * I}), ref);
  EXPECT_TRUE(close(d_out.download(), to_vector(ref), nmse_bound(DType::F16)));
  expect_guards_intact({&d_in, &d_out});
}

TEST_F(OpConformance, add) {
  uint32_t seed = 500;
  for (DType dt : kFloatTypes)
    for (int64_t T : kRows)
      for (int64_t N : kWidths)
        for (int alias = 0; alias < 3; ++alias) {  // 0: separate out, 1: out = a, 2: out = b
          SCOPED_TRACE(case_name({{"dtype", str(dt)}, {"T", str(T)}, {"N", str(N)}, {"alias", str(alias)}}));
          const std::vector<float> a = randn(T * N, dt, seed++), b = randn(T * N, dt, seed++);
          Guarded d_a(dt, {T, N}), d_b(dt, {T, N}), d_out(dt, {T, N});
          d_a.upload(a);
          d_b.upload(b);
          const Guarded& target = alias == 0 ? d_out : alias == 1 ? d_a : d_b;
          cuda::add(d_a, d_b, target, stream_);
          sync();
          HostTensor ref = HostTensor::empty(DType::F32, {T, N});
          cpu::add(host_f32(a, {T, N}), host_f32(b, {T, N}), ref);
          EXPECT_TRUE(close(target.download(), to_vector(ref), nmse_bound(dt)));
          expect_guards_intact({&d_a, &d_b, &d_out});
        }
  SCOPED_TRACE("1-D, 6.7M elements, bf16");  // more elements than the flat grid covers in one pass
  const int64_t n = 70001 * 96;
  const std::vector<float> a = randn(n, DType::BF16, 550), b = randn(n, DType::BF16, 551);
  Guarded d_a(DType::BF16, {n}), d_b(DType::BF16, {n}), d_out(DType::BF16, {n});
  d_a.upload(a);
  d_b.upload(b);
  cuda::add(d_a, d_b, d_out, stream_);
  sync();
  HostTensor ref = HostTensor::empty(DType::F32, {n});
  cpu::add(host_f32(a, {n}), host_f32(b, {n}), ref);
  EXPECT_TRUE(close(d_out.download(), to_vector(ref), nmse_bound(DType::BF16)));
  expect_guards_intact({&d_a, &d_b, &d_out});
}

// convert: exact, against its CPU twin and against the host's own rounding (core/dtype.h).
TEST_F(OpConformance, convert) {
  struct Shape {
    int64_t rows, cols;
  };
  const Shape shapes[] = {{1, 1}, {3, 1000}, {17, 577}};
  // Beyond the f16 range, f16 subnormals, tiny and huge values, on top of N(0, 1).
  const float specials[] = {1e5f, -7e4f, 1e-6f, -3e-8f, 6.1e-5f, 1e30f, -3.3e38f, 65504.0f, 65519.0f, 65520.0f};
  uint32_t seed = 600;
  for (DType from : kFloatTypes)
    for (DType to : kFloatTypes)
      for (const Shape& s : shapes) {
        SCOPED_TRACE(case_name({{"from", str(from)}, {"to", str(to)}, {"shape", fmt::format("{}x{}", s.rows, s.cols)}}));
        std::vector<float> src = randn(s.rows * s.cols, DType::F32, seed++);
        for (size_t i = 0; i < std::size(specials) && i < src.size(); ++i) src[i * 7 % src.size()] = specials[i];
        for (float& v : src) v = round_to(v, from);
        Guarded d_src(from, {s.rows, s.cols}), d_dst(to, {s.rows, s.cols});
        d_src.upload(src);
        cuda::convert(d_src, d_dst, stream_);
        sync();
        std::vector<float> want(src.size());
        for (size_t i = 0; i < src.size(); ++i) want[i] = round_to(src[i], to);
        HostTensor h_src = HostTensor::empty(from, {s.rows, s.cols}), h_dst = HostTensor::empty(to, {s.rows, s.cols});
        cpu::convert(host_f32(src, {s.rows, s.cols}), h_src);  // src is representable in `from`: exact
        cpu::convert(h_src, h_dst);
        const std::vector<float> got = d_dst.download();
        EXPECT_TRUE(exact(got, to_vector(HostTensor::to_f32(h_dst)))) << "vs the CPU twin";
        EXPECT_TRUE(exact(got, want));
        expect_guards_intact({&d_src, &d_dst});
      }
}

TEST_F(OpConformance, gather_rows) {
  const int64_t T = 17;
  uint32_t seed = 700;
  for (DType dt : kFloatTypes)
    for (int64_t N : kWidths) {
      SCOPED_TRACE(case_name({{"dtype", str(dt)}, {"N", str(N)}}));
      const std::vector<int32_t> rows = {3, 0, 16, 3, 16, 8};  // repeats, first and last rows
      const int64_t R = int64_t(rows.size());
      const std::vector<float> src = randn(T * N, dt, seed++);
      Guarded d_src(dt, {T, N}), d_rows(DType::I32, {R}), d_out(dt, {R, N});
      d_src.upload(src);
      d_rows.upload_ints(rows);
      cuda::gather_rows(d_src, d_rows, d_out, stream_);
      sync();
      HostTensor ref = HostTensor::empty(DType::F32, {R, N});
      cpu::gather_rows(host_f32(src, {T, N}), host_i32(rows), ref);
      EXPECT_TRUE(exact(d_out.download(), to_vector(ref)));
      expect_guards_intact({&d_src, &d_rows, &d_out});
    }
}

TEST_F(OpConformance, gather_rows_OutOfRange) {  // a bad index gives a NaN row, no stray read
  const int64_t T = 17, N = 96;
  const std::vector<int32_t> rows = {2, -1, int32_t(T), INT_MAX, INT_MIN, 16};
  const int64_t R = int64_t(rows.size());
  const std::vector<float> src = randn(T * N, DType::BF16, 750);
  Guarded d_src(DType::BF16, {T, N}), d_rows(DType::I32, {R}), d_out(DType::BF16, {R, N});
  d_src.upload(src);
  d_rows.upload_ints(rows);
  cuda::gather_rows(d_src, d_rows, d_out, stream_);
  sync();
  const std::vector<float> got = d_out.download();
  HostTensor ref = HostTensor::empty(DType::F32, {R, N});
  cpu::gather_rows(host_f32(src, {T, N}), host_i32(rows), ref);
  EXPECT_TRUE(exact(got, to_vector(ref))) << "vs the CPU twin";
  for (int64_t r = 0; r < R; ++r) {
    const int32_t s = rows[size_t(r)];
    for (int64_t i = 0; i < N; ++i) {
      if (s >= 0 && s < T)
        ASSERT_EQ(got[size_t(r * N + i)], src[size_t(s * N + i)]) << "row " << r;
      else
        ASSERT_TRUE(std::isnan(got[size_t(r * N + i)])) << "row " << r << " (bad index " << s << ")";
    }
  }
  expect_guards_intact({&d_src, &d_rows, &d_out});
}

// ---------------------------------------------------------------------------------------------------- paged KV

// A step over several sequences sharing one paged pool, built the way the runtime builds it. Each sequence has
// `history` positions already in the cache and `fresh` new tokens in this step (fresh > 1: prefill or chunked
// prefill; history > 0 and fresh == 1: decode). Pages come from a PageTable whose free list was first shuffled
// (decoy sequences take every page and are released in random order), and the sequences then grow a page at a
// time in random turns: each sequence's pages are non-contiguous and out of order. The step's tokens of different
// sequences are interleaved at random (each sequence's own tokens in order), and the tables come from
// build_kv_tables, so batch indices differ from sequence ids. Every pool slot that holds no history is NaN:
// reading one by mistake poisons the output; the spare pages are never handed to any sequence.
struct SeqSpec {
  int64_t history, fresh;
};

struct AttnCase {
  DType dtype;
  int n_heads, n_kv_heads, head_dim, window;
  int64_t page_size;
  KvLayout layout;
};

std::string describe_case(const AttnCase& c) {
  return fmt::format("dtype={} heads={}/{} (group {}) head_dim={} window={} page_size={} layout={}",
                     dtype_name(c.dtype), c.n_heads, c.n_kv_heads, c.n_heads / c.n_kv_heads, c.head_dim, c.window,
                     c.page_size, kv_layout_name(c.layout));
}

AttentionShape shape_of(const AttnCase& c) { return {c.n_heads, c.n_kv_heads, c.head_dim, c.window}; }

struct PagedStep {
  AttnCase c;
  KvGeometry geom;
  int64_t num_pages = 0;
  PageTable pages;
  std::vector<int32_t> seq_of, pos;  // [T]: sequence id (-1: none, an appended invalid token) and position
  std::vector<bool> valid;           // [T]: the token names a slot (what kv_write writes, attention reads from)
  KvStepTables tables;               // what the ops get (tests may corrupt it after make_step)
  std::vector<float> k_pool, v_pool;  // [num_pages * page_elems], values representable in c.dtype
  std::vector<float> qkv;             // [T, qkv_dim]

  int64_t T() const { return int64_t(pos.size()); }
  int64_t kv_dim() const { return int64_t(c.n_kv_heads) * c.head_dim; }
  int64_t q_dim() const { return int64_t(c.n_heads) * c.head_dim; }
  int64_t qkv_dim() const { return q_dim() + 2 * kv_dim(); }
  int64_t pool_elems() const { return num_pages * geom.page_elems(); }
  // Element offset of (sequence, position, kv head) in a pool, from the layout's definition (not kv_strides).
  int64_t offset(int32_t seq, int64_t p, int64_t h) const {
    const int64_t page = pages.pages(seq)[size_t(p / c.page_size)], slot = p % c.page_size;
    const int64_t base = page * geom.page_elems();
    if (c.layout == KvLayout::NHD) return base + (slot * c.n_kv_heads + h) * c.head_dim;
    return base + (h * c.page_size + slot) * c.head_dim;
  }
};

PagedStep make_step(const AttnCase& c, const std::vector<SeqSpec>& seqs, uint32_t seed, int64_t spare_pages = 5) {
  PagedStep st;
  st.c = c;
  st.geom = KvGeometry{1, c.n_kv_heads, c.head_dim, c.page_size, c.layout};
  std::mt19937 rng(seed);
  const int64_t ps = c.page_size;
  int64_t needed = 0;
  for (const SeqSpec& s : seqs) needed += (s.history + s.fresh + ps - 1) / ps;
  st.num_pages = needed + spare_pages;
  st.pages = PageTable(ps, st.num_pages);
  // Shuffle the free list: one decoy sequence per page, released in random order (release and reuse).
  std::vector<int32_t> decoys;
  for (int64_t i = 0; i < st.num_pages; ++i) {
    const int32_t id = int32_t(1'000'000 + i);
    st.pages.add_sequence(id);
    st.pages.reserve(id, ps);
    decoys.push_back(id);
  }
  std::shuffle(decoys.begin(), decoys.end(), rng);
  for (int32_t id : decoys) st.pages.release(id);
  // The sequences grow one page at a time, in random turns.
  std::vector<int64_t> have(seqs.size(), 0);
  std::vector<size_t> growing;
  for (size_t s = 0; s < seqs.size(); ++s) {
    st.pages.add_sequence(int32_t(s));
    if (seqs[s].history + seqs[s].fresh > 0) growing.push_back(s);
  }
  while (!growing.empty()) {
    const size_t i = rng() % growing.size(), s = growing[i];
    have[s] = std::min(have[s] + ps, seqs[s].history + seqs[s].fresh);
    st.pages.reserve(int32_t(s), have[s]);
    if (have[s] == seqs[s].history + seqs[s].fresh) {
      growing[i] = growing.back();
      growing.pop_back();
    }
  }

  // History in the pools, NaN everywhere else.
  st.k_pool.assign(size_t(st.pool_elems()), kQuietNaN);
  st.v_pool = st.k_pool;
  const int64_t hd = c.head_dim;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const int64_t n = seqs[s].history * st.kv_dim();
    if (n == 0) continue;
    const std::vector<float> k = randn(n, c.dtype, seed + 7 + 2 * uint32_t(s)), v = randn(n, c.dtype, seed + 8 + 2 * uint32_t(s));
    for (int64_t p = 0; p < seqs[s].history; ++p)
      for (int64_t h = 0; h < c.n_kv_heads; ++h) {
        const int64_t off = st.offset(int32_t(s), p, h), src = (p * c.n_kv_heads + h) * hd;
        std::copy_n(k.begin() + src, hd, st.k_pool.begin() + off);
        std::copy_n(v.begin() + src, hd, st.v_pool.begin() + off);
      }
  }

  // The step's tokens, interleaved across sequences.
  for (size_t s = 0; s < seqs.size(); ++s) st.seq_of.insert(st.seq_of.end(), size_t(seqs[s].fresh), int32_t(s));
  std::shuffle(st.seq_of.begin(), st.seq_of.end(), rng);
  std::vector<int64_t> next(seqs.size());
  for (size_t s = 0; s < seqs.size(); ++s) next[s] = seqs[s].history;
  for (int32_t s : st.seq_of) st.pos.push_back(int32_t(next[size_t(s)]++));
  st.valid.assign(st.seq_of.size(), true);
  std::map<int32_t, int64_t> kv_len;
  for (size_t s = 0; s < seqs.size(); ++s) kv_len[int32_t(s)] = seqs[s].history + seqs[s].fresh;
  st.tables = build_kv_tables(st.seq_of, st.pages, kv_len);
  EXPECT_EQ(int64_t(st.tables.token_batch.size()), st.T());
  st.qkv = randn(st.T() * st.qkv_dim(), c.dtype, seed + 3);
  return st;
}

// Adds a token that names no slot: seq_of -1, the given batch index and position, random qkv.
void append_invalid_token(PagedStep& st, int32_t batch, int32_t pos, uint32_t seed) {
  st.seq_of.push_back(-1);
  st.pos.push_back(pos);
  st.valid.push_back(false);
  st.tables.token_batch.push_back(batch);
  const std::vector<float> row = randn(st.qkv_dim(), st.c.dtype, seed);
  st.qkv.insert(st.qkv.end(), row.begin(), row.end());
}

// The pools after kv_write of the step's valid tokens, and what kv_gather of the step then returns (NaN rows for
// invalid tokens), from the layout's definition.
struct PagedWant {
  std::vector<float> k_pool, v_pool, gathered;
};

PagedWant expected_writes(const PagedStep& st) {
  PagedWant w{st.k_pool, st.v_pool, std::vector<float>(size_t(st.T() * 2 * st.kv_dim()), kQuietNaN)};
  const int64_t hd = st.c.head_dim, kv_dim = st.kv_dim();
  for (int64_t t = 0; t < st.T(); ++t) {
    if (!st.valid[size_t(t)]) continue;
    const float* k = st.qkv.data() + t * st.qkv_dim() + st.q_dim();
    for (int64_t h = 0; h < st.c.n_kv_heads; ++h) {
      const int64_t off = st.offset(st.seq_of[size_t(t)], st.pos[size_t(t)], h);
      std::copy_n(k + h * hd, hd, w.k_pool.begin() + off);
      std::copy_n(k + kv_dim + h * hd, hd, w.v_pool.begin() + off);
    }
    std::copy_n(k, 2 * kv_dim, w.gathered.begin() + t * 2 * kv_dim);
  }
  return w;
}

enum PagedOps : unsigned { kWrite = 1, kAttend = 2, kGather = 4, kAllOps = 7 };

// What the ops produced: the attention output, the pools after them, the kv_gather output (empty if not run).
struct PagedResult {
  std::vector<float> out, k_pool, v_pool, gathered;
};

PagedKv paged_kv(const PagedStep& st, Device dev, DType dt, void* k, void* v, const Tensor& indptr,
                 const Tensor& indices, const Tensor& last, const Tensor& token_batch) {
  PagedKv kv;
  kv.k = kv_pool_view(k, dt, dev, st.geom, st.num_pages);
  kv.v = kv_pool_view(v, dt, dev, st.geom, st.num_pages);
  kv.layout = st.c.layout;
  kv.page_size = st.c.page_size;
  kv.page_indptr = indptr;
  kv.page_indices = indices;
  kv.last_page_len = last;
  kv.token_batch = token_batch;
  return kv;
}

// The CUDA launchers on the step, every device buffer guarded; the guards are checked here.
PagedResult run_cuda(cudaStream_t stream, const PagedStep& st, unsigned ops) {
  const DType dt = st.c.dtype;
  const int64_t T = st.T(), B = int64_t(st.tables.last_page_len.size());
  Guarded d_qkv(dt, {T, st.qkv_dim()}), d_pos(DType::I32, {T}), d_out(dt, {T, st.q_dim()});
  Guarded d_gathered(dt, {T, 2 * st.kv_dim()});
  Guarded d_indptr(DType::I32, {B + 1}), d_indices(DType::I32, {int64_t(st.tables.page_indices.size())});
  Guarded d_last(DType::I32, {B}), d_batch(DType::I32, {T});
  Guarded d_k(dt, {st.pool_elems()}), d_v(dt, {st.pool_elems()});
  d_qkv.upload(st.qkv);
  d_pos.upload_ints(st.pos);
  d_indptr.upload_ints(st.tables.page_indptr);
  d_indices.upload_ints(st.tables.page_indices);
  d_last.upload_ints(st.tables.last_page_len);
  d_batch.upload_ints(st.tables.token_batch);
  d_k.upload(st.k_pool);
  d_v.upload(st.v_pool);
  const PagedKv kv = paged_kv(st, Device::CUDA, dt, d_k.view().data, d_v.view().data, d_indptr, d_indices, d_last,
                              d_batch);
  const AttentionShape shape = shape_of(st.c);
  if (ops & kWrite) cuda::kv_write(d_qkv, d_pos, kv, shape, stream);
  if (ops & kAttend) cuda::attention(d_qkv, d_pos, kv, shape, d_out, stream);
  if (ops & kGather) cuda::kv_gather(d_pos, kv, shape, d_gathered, stream);
  TD_CUDA_CHECK(cudaStreamSynchronize(stream));
  PagedResult r;
  if (ops & kAttend) r.out = d_out.download();
  if (ops & kGather) r.gathered = d_gathered.download();
  r.k_pool = d_k.download();
  r.v_pool = d_v.download();
  EXPECT_EQ(d_qkv.download(), st.qkv) << "qkv changed";  // (no NaN in qkv: plain equality)
  expect_guards_intact({&d_qkv, &d_pos, &d_out, &d_gathered, &d_indptr, &d_indices, &d_last, &d_batch, &d_k, &d_v});
  return r;
}

// The CPU twins on the same inputs.
PagedResult run_cpu(const PagedStep& st, unsigned ops) {
  const int64_t T = st.T();
  HostTensor qkv = host_f32(st.qkv, {T, st.qkv_dim()}), pos = host_i32(st.pos);
  HostTensor k = host_f32(st.k_pool, {st.pool_elems()}), v = host_f32(st.v_pool, {st.pool_elems()});
  HostTensor indptr = host_i32(st.tables.page_indptr), indices = host_i32(st.tables.page_indices);
  HostTensor last = host_i32(st.tables.last_page_len), batch = host_i32(st.tables.token_batch);
  HostTensor out = HostTensor::empty(DType::F32, {T, st.q_dim()});
  HostTensor gathered = HostTensor::empty(DType::F32, {T, 2 * st.kv_dim()});
  const PagedKv kv = paged_kv(st, Device::CPU, DType::F32, k.f32(), v.f32(), indptr, indices, last, batch);
  const AttentionShape shape = shape_of(st.c);
  if (ops & kWrite) cpu::kv_write(qkv, pos, kv, shape);
  if (ops & kAttend) cpu::attention(qkv, pos, kv, shape, out);
  if (ops & kGather) cpu::kv_gather(pos, kv, shape, gathered);
  PagedResult r;
  if (ops & kAttend) r.out = to_vector(out);
  if (ops & kGather) r.gathered = to_vector(gathered);
  r.k_pool = to_vector(k);
  r.v_pool = to_vector(v);
  return r;
}

// Runs kv_write, attention and kv_gather on the GPU and on the CPU and compares everything: the attention output
// within the dtype's NMSE bound, the pools and kv_gather bit for bit (with each other and with the layout's
// definition). Every token of the step must be valid.
void check_paged_step(cudaStream_t stream, const PagedStep& st) {
  const PagedResult got = run_cuda(stream, st, kAllOps), ref = run_cpu(st, kAllOps);
  const PagedWant want = expected_writes(st);
  EXPECT_TRUE(close(got.out, ref.out, nmse_bound(st.c.dtype))) << "attention output";
  EXPECT_TRUE(exact(ref.k_pool, want.k_pool)) << "CPU k pool";
  EXPECT_TRUE(exact(got.k_pool, want.k_pool)) << "k pool";
  EXPECT_TRUE(exact(got.v_pool, want.v_pool)) << "v pool";
  EXPECT_TRUE(exact(got.gathered, ref.gathered)) << "kv_gather vs CPU";
  EXPECT_TRUE(exact(got.gathered, want.gathered)) << "kv_gather vs the step's k | v";
}

// A mixed step for a page size: sequences ending exactly on, one before and one after a page boundary, prefills
// (fresh, chunked, crossing a page and the 64-key chunk), decodes (short, across 3 chunks), a single fresh token.
std::vector<SeqSpec> mixed_step(int64_t ps) {
  return {{0, 17},          // fresh prefill
          {2 * ps - 1, 1},  // decode ending exactly on a page boundary
          {2 * ps - 2, 1},  // ... one before
          {2 * ps, 1},      // ... one after: the token opens a page
          {0, ps},          // prefill ending on a boundary
          {5, ps + 1},      // prefill crossing a boundary, ending one after
          {ps, 70},         // chunked prefill from a page boundary, longer than a chunk
          {63, 3},          // crosses the 64-key chunk boundary
          {150, 1},         // long decode: 3 chunks
          {0, 1}};          // a single fresh token
}

const int64_t kPageSizes[] = {1, 16, 64};
const KvLayout kLayouts[] = {KvLayout::NHD, KvLayout::HND};

TEST_F(OpConformance, attention) {
  struct Heads {
    int n_heads, n_kv_heads, head_dim, window;
  };
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
TEST_F(OpConformance, attention_ExtremeRows) {
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
          check_paged_step(stream_, st);
        }
}

// Tokens that name no slot: a bad position (negative, beyond the entry's pages), a bad batch index, a page id
// outside the pool. kv_write writes nothing for them, attention and kv_gather write NaN rows, nothing is read or
// written out of bounds (the guards), and the valid tokens of the same step are unaffected.
TEST_F(OpConformance, attention_InvalidRows) {
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

        const PagedResult got = run_cuda(stream_, st, kAllOps), ref = run_cpu(st, kAllOps);
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

// ---------------------------------------------------------------------------------------------------- linear

void run_linear_case(cuda::Gemm& gemm, cudaStream_t stream, DType in, DType out_dt, int64_t T, int64_t N, int64_t K,
                     uint32_t seed, size_t misalign_elems) {
  const std::vector<float> x = randn(T * K, in, seed), w = randn(N * K, in, seed + 1);
  const size_t in_elem = in == DType::F32 ? 4 : 2, out_elem = out_dt == DType::F32 ? 4 : 2;
  Guarded d_x(in, {T, K}, misalign_elems * in_elem), d_w(in, {N, K}), d_out(out_dt, {T, N}, misalign_elems * out_elem);
  d_x.upload(x);
  d_w.upload(w);
  gemm.linear(d_x, d_w, d_out, stream);
  TD_CUDA_CHECK(cudaStreamSynchronize(stream));
  HostTensor ref = HostTensor::empty(DType::F32, {T, N});
  cpu::linear(host_f32(x, {T, K}), host_f32(w, {N, K}), ref);
  const double bound = out_dt == DType::F32 && in != DType::F32 ? 1e-8 : nmse_bound(out_dt);
  EXPECT_TRUE(close(d_out.download(), to_vector(ref), bound));
  expect_guards_intact({&d_x, &d_w, &d_out});
}

const std::pair<DType, DType> kGemmTypes[] = {{DType::F32, DType::F32},
                                              {DType::BF16, DType::BF16},
                                              {DType::BF16, DType::F32},
                                              {DType::F16, DType::F16},
                                              {DType::F16, DType::F32}};

TEST_F(OpConformance, linear) {
  struct NK {
    int64_t N, K;
  };
  const NK sizes[] = {{1000, 576}, {64, 96}, {77, 131}};
  cuda::Gemm gemm;
  uint32_t seed = 1300;
  for (int pass = 0; pass < 2; ++pass)  // the second pass runs the cached algorithms
    for (const auto& [in, out_dt] : kGemmTypes)
      for (int64_t T : {1, 7, 128})
        for (const NK& s : sizes) {
          SCOPED_TRACE(case_name({{"in", str(in)},
                                  {"out", str(out_dt)},
                                  {"T", str(T)},
                                  {"N", str(s.N)},
                                  {"K", str(s.K)},
                                  {"pass", str(pass)}}));
          run_linear_case(gemm, stream_, in, out_dt, T, s.N, s.K, seed, 0);
          seed += 2;
        }
}

// x and out one element off a 256-byte boundary (as a row slice of a larger tensor would be).
TEST_F(OpConformance, linear_Misaligned) {
  cuda::Gemm gemm;
  uint32_t seed = 1400;
  for (const auto& [in, out_dt] : kGemmTypes)
    for (size_t misalign : {0, 1, 3}) {
      SCOPED_TRACE(case_name({{"in", str(in)}, {"out", str(out_dt)}, {"misalign_elems", str(int64_t(misalign))}}));
      run_linear_case(gemm, stream_, in, out_dt, 7, 1000, 576, seed, misalign);
      seed += 2;
    }
}

// ---------------------------------------------------------------------------------------------------- coverage

std::string strip_comments(const std::string& src) {
  static const std::regex comments(R"(//[^\n]*|/\*[\s\S]*?\*/)");
  return std::regex_replace(src, comments, " ");
}

TEST(OpConformanceCoverage, EveryLauncherHasACase) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(TANDEM_SOURCE_DIR) / "src" / "cuda";
  ASSERT_TRUE(fs::is_directory(dir)) << dir;
  std::set<std::string> launchers;
  const std::regex decl(R"(\bvoid\s+([A-Za-z_]\w*)\s*\()");
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".cuh") continue;
    const std::string text = strip_comments(read_file(entry.path()));
    for (std::sregex_iterator it(text.begin(), text.end(), decl), end; it != end; ++it)
      launchers.insert((*it)[1].str());
  }
  ASSERT_GE(launchers.size(), 11u) << "fewer launchers than expected: is the header parser broken?";

  std::set<std::string> tests;
  const ::testing::UnitTest& unit = *::testing::UnitTest::GetInstance();
  for (int i = 0; i < unit.total_test_suite_count(); ++i) {
    const ::testing::TestSuite& suite = *unit.GetTestSuite(i);
    if (std::string(suite.name()) != "OpConformance" && std::string(suite.name()) != "FlashInfer") continue;
    for (int j = 0; j < suite.total_test_count(); ++j) tests.insert(suite.GetTestInfo(j)->name());
  }
  for (const std::string& op : launchers) {
    const bool covered = std::any_of(tests.begin(), tests.end(), [&](const std::string& t) {
      return t == op || t.rfind(op + "_", 0) == 0;
    });
    EXPECT_TRUE(covered) << "launcher `" << op << "` (declared in src/cuda/*.cuh) has no conformance case: add "
                         << "TEST_F(OpConformance, " << op << ") to tests/gpu/test_ops_conformance.cpp";
  }
}

// fill_uniform (real-shape benchmark weights) against its host twin, for every dtype.
TEST_F(OpConformance, fill_uniform_AllDtypesMatchHostTwin) {
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    const int64_t n = 100003;  // odd: grid-stride tail
    cuda::DeviceTensor t = cuda::DeviceTensor::empty(dt, {n});
    cuda::fill_uniform(t, 42, 1.0f, 0.5f, stream_);
    sync();
    HostTensor h = cuda::download_f32(t, stream_);
    double mean = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float want = cuda::uniform_value(42, i, 1.0f, 0.5f);
      const float rounded = dt == DType::F32 ? want : dt == DType::F16 ? fp16_to_f32(f32_to_fp16(want))
                                                                        : bf16_to_f32(f32_to_bf16(want));
      ASSERT_EQ(h.f32()[i], rounded) << dtype_name(dt) << " index " << i;
      ASSERT_GE(want, 0.5f);
      ASSERT_LT(want, 1.5f);
      mean += want;
    }
    EXPECT_NEAR(mean / double(n), 1.0, 0.01);
  }
}

}  // namespace
}  // namespace tandem
