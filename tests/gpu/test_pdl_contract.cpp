// The PDL contract of cuda/launch.h, made to fail loudly: a kernel launched with launch_pdl may start while the
// kernel before it still runs, and must not read what that kernel writes before pdl_wait (nor through ld.global.nc,
// __ldg or a const __restrict__ parameter, which the compiler may serve early or stale). Here the kernel before is
// slow on purpose: late_copy lets its dependents start at once, waits kDelayNs, and only then writes the input of
// the op under test; the input held other valid values until then. An op that reads early computes on those and
// parts from the same op run after a sync. (An H100 run of 12-06 saw the unfused gate_up_silu read its input before
// rmsnorm had written it, in 6 of 72 conformance cases: timing decided it there, the delay decides it here.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "conformance.h"
#include "cuda/gemv.cuh"
#include "cuda/launch.h"
#include "cuda/norm.cuh"
#include "late_copy.h"

namespace tandem {
namespace {

constexpr uint64_t kDelayNs = 200'000;  // far longer than any op below takes to reach its first read

void write_late(const Tensor& src, const Tensor& dst, cudaStream_t stream) { late_copy(src, dst, kDelayNs, stream); }

class PdlContract : public OpConformance {
 protected:
  void SetUp() override {
    OpConformance::SetUp();
    if (IsSkipped()) return;
    was_on_ = cuda::programmatic_launch();
    cuda::set_programmatic_launch(true);
  }
  void TearDown() override {
    cuda::set_programmatic_launch(was_on_);
    OpConformance::TearDown();
  }
  bool was_on_ = true;
};

const cuda::GemvTuning kPdlTunings[] = {cuda::GemvTuning::occupancy, cuda::GemvTuning::deep};

// For each dtype, rows 1..2 and tuning: `op(x)` with x written late must equal `op(x)` with x already there.
// `op` gets the input and the output and launches on the stream.
template <typename Op>
void check_late_input(cudaStream_t stream, DType dt, int64_t T, int64_t K, int64_t N, uint32_t seed, Op&& op) {
  const std::vector<float> x = randn(T * K, dt, seed), early = randn(T * K, dt, seed + 1);
  Guarded d_src(dt, {T, K}), d_x(dt, {T, K}), d_out(dt, {T, N}), d_ref(dt, {T, N});
  d_src.upload(x);
  d_x.upload(early);  // what an early read sees: other valid values
  write_late(d_src, d_x, stream);
  op(d_x.view(), d_out.view());
  TD_CUDA_CHECK(cudaStreamSynchronize(stream));
  EXPECT_TRUE(exact(d_x.download(), x)) << "the late copy did not land";
  op(d_x.view(), d_ref.view());  // x in place before the op starts
  TD_CUDA_CHECK(cudaStreamSynchronize(stream));
  EXPECT_TRUE(exact(d_out.download(), d_ref.download())) << "the op read its input before the kernel before wrote it";
}

TEST_F(PdlContract, GemvsWaitForTheirInput) {
  uint32_t seed = 7100;
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t T = 1; T <= cuda::kGemvFusedMaxRows; ++T)
      for (cuda::GemvTuning tuning : kPdlTunings) {
        const int64_t N = 3072, K = 2048;
        SCOPED_TRACE(case_name(
            {{"dtype", str(dt)}, {"T", str(T)}, {"tuning", tuning == cuda::GemvTuning::deep ? "deep" : "occupancy"}}));
        Guarded w(dt, {2 * N, K}), g(dt, {K});
        w.upload(randn(2 * N * K, dt, seed));
        std::vector<float> gv = randn(K, dt, seed + 1);
        for (float& e : gv) e = round_to(1.0f + 0.1f * e, dt);
        g.upload(gv);
        const Tensor w_lin = Tensor::contiguous(w.view().data, dt, {N, K}, Device::CUDA);
        {
          SCOPED_TRACE("gate_up_silu");
          check_late_input(stream_, dt, T, K, N, seed + 2,
                           [&](const Tensor& x, const Tensor& out) { cuda::gate_up_silu(x, w, out, stream_, tuning); });
        }
        {
          SCOPED_TRACE("linear_gemv");
          check_late_input(stream_, dt, T, K, N, seed + 4, [&](const Tensor& x, const Tensor& out) {
            cuda::linear_gemv(x, w_lin, out, stream_, tuning);
          });
        }
        {
          SCOPED_TRACE("rmsnorm_gate_up_silu");
          check_late_input(stream_, dt, T, K, N, seed + 6, [&](const Tensor& x, const Tensor& out) {
            cuda::rmsnorm_gate_up_silu(x, g, 1e-6f, w, out, stream_, tuning);
          });
        }
        {
          SCOPED_TRACE("rmsnorm_linear_gemv");
          check_late_input(stream_, dt, T, K, N, seed + 8, [&](const Tensor& x, const Tensor& out) {
            cuda::rmsnorm_linear_gemv(x, g, 1e-6f, w_lin, out, stream_, tuning);
          });
        }
        seed += 10;
      }
}

// linear_gemv_residual reads two things the kernels before write: x (the projection's input) and the residual it
// adds to. Each is written late in turn.
TEST_F(PdlContract, GemvResidualWaitsForInputAndResidual) {
  uint32_t seed = 7300;
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t T = 1; T <= cuda::kGemvFusedMaxRows; ++T)
      for (cuda::GemvTuning tuning : kPdlTunings)
        for (bool late_residual : {false, true}) {
          const int64_t N = 2048, K = 3072;
          SCOPED_TRACE(case_name({{"dtype", str(dt)},
                                  {"T", str(T)},
                                  {"tuning", tuning == cuda::GemvTuning::deep ? "deep" : "occupancy"},
                                  {"late", late_residual ? "residual" : "x"}}));
          const std::vector<float> x = randn(T * K, dt, seed), res = randn(T * N, dt, seed + 1);
          const std::vector<float> early = randn(std::max(T * K, T * N), dt, seed + 2);
          Guarded w(dt, {N, K}), d_x(dt, {T, K}), d_res(dt, {T, N}), d_ref(dt, {T, N});
          Guarded d_src(dt, {T, late_residual ? N : K});
          w.upload(randn(N * K, dt, seed + 3));
          const Tensor no_bias{};
          if (late_residual) {
            d_x.upload(x);
            d_src.upload(res);
            d_res.upload(std::vector<float>(early.begin(), early.begin() + T * N));
            write_late(d_src, d_res, stream_);
          } else {
            d_res.upload(res);
            d_src.upload(x);
            d_x.upload(std::vector<float>(early.begin(), early.begin() + T * K));
            write_late(d_src, d_x, stream_);
          }
          cuda::linear_gemv_residual(d_x, w, no_bias, d_res, stream_, tuning);
          sync();
          d_x.upload(x);
          d_ref.upload(res);
          cuda::linear_gemv_residual(d_x, w, no_bias, d_ref, stream_, tuning);
          sync();
          EXPECT_TRUE(exact(d_res.download(), d_ref.download())) << "read before the kernel before wrote it";
          seed += 4;
        }
}

// rmsnorm reads x, add_rmsnorm x and delta: written late in turn (rows of the 1B and 8B hidden sizes).
TEST_F(PdlContract, NormsWaitForTheirInputs) {
  uint32_t seed = 7500;
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t H : {int64_t(2048), int64_t(4096)})
      for (int64_t T : {int64_t(1), int64_t(3)}) {
        SCOPED_TRACE(case_name({{"dtype", str(dt)}, {"H", str(H)}, {"T", str(T)}}));
        Guarded g(dt, {H});
        g.upload(randn(H, dt, seed));
        {
          SCOPED_TRACE("rmsnorm");
          check_late_input(stream_, dt, T, H, H, seed + 1,
                           [&](const Tensor& x, const Tensor& out) { cuda::rmsnorm(x, g, 1e-5f, out, stream_); });
        }
        for (bool late_delta : {false, true}) {
          SCOPED_TRACE(late_delta ? "add_rmsnorm, delta late" : "add_rmsnorm, x late");
          const std::vector<float> x = randn(T * H, dt, seed + 2), delta = randn(T * H, dt, seed + 3);
          const std::vector<float> early = randn(T * H, dt, seed + 4);
          Guarded d_x(dt, {T, H}), d_delta(dt, {T, H}), d_src(dt, {T, H}), d_out(dt, {T, H}), d_ref(dt, {T, H});
          d_src.upload(late_delta ? delta : x);
          d_x.upload(late_delta ? x : early);
          d_delta.upload(late_delta ? early : delta);
          write_late(d_src, late_delta ? d_delta.view() : d_x.view(), stream_);
          cuda::add_rmsnorm(d_x, d_delta, g, 1e-5f, d_out, stream_);
          sync();
          const std::vector<float> x_after = d_x.download();  // x + delta, as add_rmsnorm leaves it
          d_x.upload(x);
          d_delta.upload(delta);
          cuda::add_rmsnorm(d_x, d_delta, g, 1e-5f, d_ref, stream_);
          sync();
          EXPECT_TRUE(exact(d_out.download(), d_ref.download())) << "read before the kernel before wrote it";
          EXPECT_TRUE(exact(x_after, d_x.download())) << "the residual sum differs";
        }
        seed += 5;
      }
}

}  // namespace
}  // namespace tandem
