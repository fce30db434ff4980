// Shared by the op conformance suites (test_ops_conformance.cpp, test_attention_conformance.cpp,
// test_fused_conformance.cpp): the pass criteria, guarded device buffers and the OpConformance fixture.
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
#pragma once
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

inline constexpr DType kFloatTypes[] = {DType::F32, DType::BF16, DType::F16};
inline const int64_t kRows[] = {1, 3, 17, 64};
inline const int64_t kWidths[] = {64, 96, 576, 1000};
// Norms: also the register path's limits (cuda/norm.cu): 1001 (rows not 16-byte multiples: the loop path), 4104
// (several partial chunks per thread), 16392 (past the register path for every dtype: the loop path).
inline const int64_t kNormWidths[] = {64, 96, 576, 1000, 1001, 4104, 16392};

inline double nmse_bound(DType out) {
  switch (out) {
    case DType::F32: return 1e-10;
    case DType::F16: return 1e-5;
    case DType::BF16: return 1e-4;
    default: fail("no NMSE bound for {}", dtype_name(out));
  }
}

inline float round_to(float v, DType d) {
  switch (d) {
    case DType::F32: return v;
    case DType::BF16: return bf16_to_f32(f32_to_bf16(v));
    case DType::F16: return fp16_to_f32(f32_to_fp16(v));
    default: fail("round_to: {}", dtype_name(d));
  }
}

// n values ~ N(0, 1) rounded to `d`; never zero.
inline std::vector<float> randn(int64_t n, DType d, uint32_t seed) {
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
inline HostTensor host_f32(const std::vector<float>& v, std::initializer_list<int64_t> shape) {
  HostTensor h = HostTensor::empty(DType::F32, shape);
  EXPECT_EQ(h.numel(), int64_t(v.size()));
  std::memcpy(h.f32(), v.data(), v.size() * sizeof(float));
  return h;
}

// An i32 host tensor [n] holding a copy of `v`.
inline HostTensor host_i32(const std::vector<int32_t>& v) {
  HostTensor h = HostTensor::empty(DType::I32, {int64_t(v.size())});
  if (!v.empty()) std::memcpy(h.view().data, v.data(), v.size() * sizeof(int32_t));
  return h;
}

inline std::vector<float> to_vector(const HostTensor& h) { return std::vector<float>(h.f32(), h.f32() + h.numel()); }

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

inline void expect_guards_intact(std::initializer_list<const Guarded*> buffers) {
  for (const Guarded* g : buffers) {
    const std::string damage = g->guard_damage();
    EXPECT_TRUE(damage.empty()) << "out-of-bounds write: " << damage;
  }
}

// NMSE within `bound`, and no non-finite value where the reference is finite.
inline ::testing::AssertionResult close(const std::vector<float>& got, const std::vector<float>& ref, double bound) {
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
inline ::testing::AssertionResult exact(const std::vector<float>& got, const std::vector<float>& ref) {
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

inline std::string case_name(std::initializer_list<std::pair<const char*, std::string>> fields) {
  std::string s;
  for (const auto& [k, v] : fields) s += (s.empty() ? "" : " ") + std::string(k) + "=" + v;
  return s;
}
inline std::string str(DType d) { return std::string(dtype_name(d)); }
inline std::string str(int64_t v) { return std::to_string(v); }

inline const float kQuietNaN = std::numeric_limits<float>::quiet_NaN();

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

}  // namespace tandem
