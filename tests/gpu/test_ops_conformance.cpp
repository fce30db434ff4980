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
//   - copies (embed, gather_rows, kv_write, convert) are exact.
//   - any non-finite GPU value where the reference is finite fails.
//   - guards: every device tensor (inputs too) lives in a buffer with 4 KiB of slack either side, the whole buffer
//     first filled with 0xFF bytes (NaN in f32/f16/bf16, -1 in i32/i64). After the op the slack must still be
//     0xFF (no out-of-bounds writes), and outputs start as NaN, so an element the op forgot to write fails. A NaN
//     guard read by mistake poisons the output, which also fails.
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
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

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
        cpu::embed(host_f32(table, {V, H}), ids, ref);
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
  cpu::embed(host_f32(table, {V, H}), ids, ref);
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
  cpu::rmsnorm(host_f32(x, {T, H}), host_f32(w, {H}), double(eps), ref);
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
        cpu::rope(ref, pos, inv_freq, c.n_heads, c.n_kv_heads, c.head_dim);
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
        std::vector<float> bias_rows(size_t(T * N));  // the reference: add() with the bias repeated per row
        for (int64_t t = 0; t < T; ++t) std::copy(bias.begin(), bias.end(), bias_rows.begin() + t * N);
        HostTensor ref = HostTensor::empty(DType::F32, {T, N});
        cpu::add(host_f32(x, {T, N}), host_f32(bias_rows, {T, N}), ref);
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

// convert has no CPU op: the reference is the host's own rounding (core/dtype.h), and the result must be exact.
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
        EXPECT_TRUE(exact(d_dst.download(), want));
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
      cpu::embed(host_f32(src, {T, N}), rows, ref);  // the same gather on the CPU
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

// ---------------------------------------------------------------------------------------------------- attention

// A ragged step over several sequences sharing one cache pool. Each sequence has `history` positions already in
// the cache and `fresh` new tokens in this step (fresh > 1: prefill or chunked prefill; history > 0 and fresh == 1:
// decode). Pool rows that belong to no sequence, or to positions not yet written, hold NaN: reading one poisons
// the output.
struct SeqSpec {
  int64_t history, fresh;
};

struct AttnCase {
  DType dtype;
  int n_heads, n_kv_heads, head_dim, window;
};

std::string describe_case(const AttnCase& c) {
  return fmt::format("dtype={} heads={}/{} (group {}) head_dim={} window={}", dtype_name(c.dtype), c.n_heads,
                     c.n_kv_heads, c.n_heads / c.n_kv_heads, c.head_dim, c.window);
}

void run_attention_case(cudaStream_t stream, const AttnCase& c, const std::vector<SeqSpec>& seqs, int64_t gap,
                        uint32_t seed) {
  const DType dt = c.dtype;
  const int64_t hd = c.head_dim, kv_dim = int64_t(c.n_kv_heads) * hd, q_dim = int64_t(c.n_heads) * hd;
  const int64_t qkv_dim = q_dim + 2 * kv_dim;

  // Pool layout: [gap][seq 0 capacity][gap][seq 1 capacity]...[gap]; capacity = history + fresh + 2.
  std::vector<int64_t> base(seqs.size());
  int64_t pool_rows = gap;
  for (size_t s = 0; s < seqs.size(); ++s) {
    base[s] = pool_rows;
    pool_rows += seqs[s].history + seqs[s].fresh + 2 + gap;
  }
  std::vector<float> k_pool(size_t(pool_rows * kv_dim), kQuietNaN), v_pool = k_pool;
  {
    const std::vector<float> k_hist = randn(pool_rows * kv_dim, dt, seed), v_hist = randn(pool_rows * kv_dim, dt, seed + 1);
    for (size_t s = 0; s < seqs.size(); ++s)
      for (int64_t i = base[s] * kv_dim; i < (base[s] + seqs[s].history) * kv_dim; ++i)
        k_pool[size_t(i)] = k_hist[size_t(i)], v_pool[size_t(i)] = v_hist[size_t(i)];
  }

  // Step tokens, round-robin over the sequences so that a sequence's tokens are not adjacent.
  std::vector<int64_t> tok_base;
  std::vector<int32_t> tok_pos;
  std::vector<size_t> tok_seq;
  for (int64_t r = 0;; ++r) {
    bool any = false;
    for (size_t s = 0; s < seqs.size(); ++s)
      if (r < seqs[s].fresh) {
        tok_base.push_back(base[s]);
        tok_pos.push_back(int32_t(seqs[s].history + r));
        tok_seq.push_back(s);
        any = true;
      }
    if (!any) break;
  }
  const int64_t T = int64_t(tok_pos.size());
  const std::vector<float> qkv = randn(T * qkv_dim, dt, seed + 2);

  Guarded d_qkv(dt, {T, qkv_dim}), d_base(DType::I64, {T}), d_pos(DType::I32, {T});
  Guarded d_k(dt, {pool_rows, kv_dim}), d_v(dt, {pool_rows, kv_dim}), d_out(dt, {T, q_dim});
  d_qkv.upload(qkv);
  d_base.upload_ints(tok_base);
  d_pos.upload_ints(tok_pos);
  d_k.upload(k_pool);
  d_v.upload(v_pool);
  const cuda::AttentionShape shape{c.n_heads, c.n_kv_heads, c.head_dim, c.window};
  cuda::kv_write(d_qkv, d_base, d_pos, d_k, d_v, shape, stream);
  cuda::attention(d_qkv, d_base, d_pos, d_k, d_v, shape, d_out, stream);
  TD_CUDA_CHECK(cudaStreamSynchronize(stream));

  // Reference: the same cache writes on the host, then cpu::attention_row per token.
  for (int64_t t = 0; t < T; ++t) {
    const int64_t row = tok_base[size_t(t)] + tok_pos[size_t(t)];
    std::copy_n(qkv.begin() + t * qkv_dim + q_dim, kv_dim, k_pool.begin() + row * kv_dim);
    std::copy_n(qkv.begin() + t * qkv_dim + q_dim + kv_dim, kv_dim, v_pool.begin() + row * kv_dim);
  }
  std::vector<float> want(size_t(T * q_dim)), scratch;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t pos = tok_pos[size_t(t)], b = tok_base[size_t(t)];
    const int64_t lo = c.window > 0 ? std::max<int64_t>(0, pos - c.window + 1) : 0;
    scratch.resize(size_t(pos + 1 - lo));
    cpu::attention_row(qkv.data() + t * qkv_dim, k_pool.data() + b * kv_dim, v_pool.data() + b * kv_dim, lo, pos + 1,
                       c.n_heads, c.n_kv_heads, hd, scratch.data(), want.data() + t * q_dim);
  }
  EXPECT_TRUE(close(d_out.download(), want, nmse_bound(dt))) << "attention output";
  // The caches hold exactly the host's writes (and NaN everywhere else): kv_write is a copy and attention
  // writes nothing into them.
  EXPECT_TRUE(exact(d_k.download(), k_pool)) << "k_cache";
  EXPECT_TRUE(exact(d_v.download(), v_pool)) << "v_cache";
  expect_guards_intact({&d_qkv, &d_base, &d_pos, &d_k, &d_v, &d_out});
}

// Fresh prefill, decodes, a prefill that crosses the 64-key chunk boundary, long decode (3 chunks), a chunked
// prefill longer than a chunk, a single fresh token.
const std::vector<SeqSpec> kMixedStep = {{0, 17}, {100, 1}, {63, 3}, {150, 1}, {5, 70}, {0, 1}};

TEST_F(OpConformance, attention) {
  uint32_t seed = 800;
  for (DType dt : kFloatTypes)
    for (int hd : {64, 128})
      for (int group : {1, 2, 3, 4, 8})
        for (int window : {0, 7}) {
          const AttnCase c{dt, 2 * group, 2, hd, window};
          SCOPED_TRACE(describe_case(c));
          run_attention_case(stream_, c, kMixedStep, 5, seed);
          seed += 3;
        }
}

TEST_F(OpConformance, attention_OddShapes) {
  const AttnCase cases[] = {
      {DType::BF16, 6, 3, 96, 64},   // head_dim 96 (3 warps), window = one chunk
      {DType::F16, 8, 2, 256, 0},    // the largest head_dim
      {DType::F32, 3, 3, 80, 1},     // window 1: each token sees only itself; head_dim not a multiple of 32
      {DType::BF16, 8, 1, 128, 0},   // MQA
      {DType::F32, 9, 3, 64, 100},   // window wider than some histories
      {DType::BF16, 4, 2, 32, 0},    // head_dim smaller than the block
  };
  uint32_t seed = 900;
  for (const AttnCase& c : cases) {
    SCOPED_TRACE(describe_case(c));
    run_attention_case(stream_, c, kMixedStep, 5, seed);
    seed += 3;
  }
  SCOPED_TRACE("pure decode of one long sequence, window 0 and 50");
  run_attention_case(stream_, {DType::BF16, 8, 2, 128, 0}, {{1000, 1}}, 0, 950);
  run_attention_case(stream_, {DType::BF16, 8, 2, 128, 50}, {{1000, 1}}, 0, 953);
}

TEST_F(OpConformance, attention_LargeBatch) {  // 9000 tokens x 8 heads: more work items than the grid
  std::vector<SeqSpec> seqs;
  for (int s = 0; s < 9000; ++s) seqs.push_back({s % 4, 1});
  run_attention_case(stream_, {DType::BF16, 8, 2, 64, 0}, seqs, 0, 1000);
}

// A token whose (kv_base, position) names no pool row: no cache write, a NaN output row, no fault.
TEST_F(OpConformance, attention_InvalidRows) {
  const int n_heads = 4, n_kv = 2, hd = 64;
  const int64_t kv_dim = n_kv * hd, q_dim = n_heads * hd, qkv_dim = q_dim + 2 * kv_dim, pool_rows = 16;
  const std::vector<int64_t> bases = {0, 0, 8, -4, INT64_MAX, 0};
  const std::vector<int32_t> pos = {0, -1, 8, 2, 1, INT_MAX};  // valid, pos < 0, row = pool_rows, base < 0, ...
  const int64_t T = int64_t(pos.size());
  const std::vector<float> qkv = randn(T * qkv_dim, DType::BF16, 1100);
  Guarded d_qkv(DType::BF16, {T, qkv_dim}), d_base(DType::I64, {T}), d_pos(DType::I32, {T});
  Guarded d_k(DType::BF16, {pool_rows, kv_dim}), d_v(DType::BF16, {pool_rows, kv_dim}), d_out(DType::BF16, {T, q_dim});
  d_qkv.upload(qkv);
  d_base.upload_ints(bases);
  d_pos.upload_ints(pos);
  const cuda::AttentionShape shape{n_heads, n_kv, hd, 0};
  cuda::kv_write(d_qkv, d_base, d_pos, d_k, d_v, shape, stream_);
  cuda::attention(d_qkv, d_base, d_pos, d_k, d_v, shape, d_out, stream_);
  sync();
  const std::vector<float> out = d_out.download(), k = d_k.download();
  for (int64_t i = 0; i < q_dim; ++i) ASSERT_TRUE(std::isfinite(out[size_t(i)])) << "valid token 0, dim " << i;
  for (int64_t t = 1; t < T; ++t)
    for (int64_t i = 0; i < q_dim; ++i)
      ASSERT_TRUE(std::isnan(out[size_t(t * q_dim + i)])) << "invalid token " << t << " dim " << i;
  for (int64_t i = 0; i < kv_dim; ++i) ASSERT_EQ(k[size_t(i)], qkv[size_t(q_dim + i)]) << "row 0";
  for (int64_t i = kv_dim; i < pool_rows * kv_dim; ++i) ASSERT_TRUE(std::isnan(k[size_t(i)])) << "cache element " << i;
  expect_guards_intact({&d_qkv, &d_base, &d_pos, &d_k, &d_v, &d_out});
}

// kv_write alone: exactly the step's rows change, bit for bit.
TEST_F(OpConformance, kv_write) {
  uint32_t seed = 1200;
  for (DType dt : kFloatTypes)
    for (int group : {1, 3, 8}) {
      const int n_kv = 2, n_heads = 2 * group, hd = 64;
      SCOPED_TRACE(case_name({{"dtype", str(dt)}, {"group", str(group)}}));
      const int64_t kv_dim = n_kv * hd, q_dim = int64_t(n_heads) * hd, qkv_dim = q_dim + 2 * kv_dim;
      const int64_t pool_rows = 300;
      const std::vector<int64_t> bases = {0, 100, 100, 200, 0, 250};
      const std::vector<int32_t> pos = {0, 5, 6, 99, 1, 48};  // distinct rows
      const int64_t T = int64_t(pos.size());
      const std::vector<float> qkv = randn(T * qkv_dim, dt, seed++);
      Guarded d_qkv(dt, {T, qkv_dim}), d_base(DType::I64, {T}), d_pos(DType::I32, {T});
      Guarded d_k(dt, {pool_rows, kv_dim}), d_v(dt, {pool_rows, kv_dim});
      d_qkv.upload(qkv);
      d_base.upload_ints(bases);
      d_pos.upload_ints(pos);
      cuda::kv_write(d_qkv, d_base, d_pos, d_k, d_v, {n_heads, n_kv, hd, 0}, stream_);
      sync();
      std::vector<float> k_want(size_t(pool_rows * kv_dim), kQuietNaN), v_want = k_want;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t row = bases[size_t(t)] + pos[size_t(t)];
        std::copy_n(qkv.begin() + t * qkv_dim + q_dim, kv_dim, k_want.begin() + row * kv_dim);
        std::copy_n(qkv.begin() + t * qkv_dim + q_dim + kv_dim, kv_dim, v_want.begin() + row * kv_dim);
      }
      EXPECT_TRUE(exact(d_k.download(), k_want)) << "k_cache";
      EXPECT_TRUE(exact(d_v.download(), v_want)) << "v_cache";
      expect_guards_intact({&d_qkv, &d_base, &d_pos, &d_k, &d_v});
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
  cpu::linear(host_f32(x, {T, K}), host_f32(w, {N, K}), Tensor{}, ref);
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
    std::ifstream in(entry.path());
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = strip_comments(ss.str());
    for (std::sregex_iterator it(text.begin(), text.end(), decl), end; it != end; ++it)
      launchers.insert((*it)[1].str());
  }
  ASSERT_GE(launchers.size(), 11u) << "fewer launchers than expected: is the header parser broken?";

  std::set<std::string> tests;
  const ::testing::UnitTest& unit = *::testing::UnitTest::GetInstance();
  for (int i = 0; i < unit.total_test_suite_count(); ++i) {
    const ::testing::TestSuite& suite = *unit.GetTestSuite(i);
    if (std::string(suite.name()) != "OpConformance") continue;
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
