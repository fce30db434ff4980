// Conformance of the fused path's launchers: each against (1) the standard CUDA launchers it replaces, run in
// sequence on the same device inputs (the elementwise fusions must match them bit for bit; the GEMV within the
// dtype's NMSE bound, its fp32 sums being ordered differently from cuBLASLt's), and (2) its CPU twin within the
// NMSE bound (criteria in conformance.h). Inputs include the extremes: |q|, |k| near 200 and positions near 4000
// for RoPE, rows near zero and near the dtype's range for the residual norm, and the scalar (unaligned) GEMV path.
#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "cuda/elementwise.cuh"
#include "cuda/gemm.cuh"
#include "cuda/gemv.cuh"
#include "cuda/norm.cuh"
#include "cuda/sampling.cuh"
#include "exec/step.h"
#include "paged_step.h"

namespace tandem {
namespace {

std::vector<float> inv_freq_for(int head_dim, float theta) {
  std::vector<float> inv(size_t(head_dim / 2));
  for (size_t i = 0; i < inv.size(); ++i) inv[i] = std::pow(theta, -2.0f * float(i) / float(head_dim));
  return inv;
}

// ------------------------------------------------------------------------------------------- qkv_rope_kv_write

struct QkvResult {
  std::vector<float> qkv, k_pool, v_pool;
};

// The fused launcher (fused = true) or add_bias -> rope -> kv_write, on the step's qkv (scaled by `scale`).
QkvResult run_qkv_cuda(cudaStream_t stream, const PagedStep& st, const std::vector<float>& qkv,
                       const std::vector<float>& bias, const std::vector<float>& inv, bool fused) {
  const DType dt = st.c.dtype;
  const int64_t T = st.T(), B = int64_t(st.tables.last_page_len.size());
  Guarded d_qkv(dt, {T, st.qkv_dim()}), d_pos(DType::I32, {T}), d_inv(DType::F32, {int64_t(inv.size())});
  Guarded d_bias(dt, {st.qkv_dim()});
  Guarded d_indptr(DType::I32, {B + 1}), d_indices(DType::I32, {int64_t(st.tables.page_indices.size())});
  Guarded d_last(DType::I32, {B}), d_batch(DType::I32, {T});
  Guarded d_k(dt, {st.pool_elems()}), d_v(dt, {st.pool_elems()});
  d_qkv.upload(qkv);
  d_pos.upload_ints(st.pos);
  d_inv.upload(inv);
  if (!bias.empty()) d_bias.upload(bias);
  d_indptr.upload_ints(st.tables.page_indptr);
  d_indices.upload_ints(st.tables.page_indices);
  d_last.upload_ints(st.tables.last_page_len);
  d_batch.upload_ints(st.tables.token_batch);
  d_k.upload(st.k_pool);
  d_v.upload(st.v_pool);
  const PagedKv kv = paged_kv(st, Device::CUDA, dt, d_k.view().data, d_v.view().data, d_indptr, d_indices, d_last,
                              d_batch);
  const AttentionShape shape = shape_of(st.c);
  const Tensor no_bias;
  const Tensor& b = bias.empty() ? no_bias : d_bias.view();
  if (fused) {
    cuda::qkv_rope_kv_write(d_qkv, b, d_pos, d_inv, kv, shape, stream);
  } else {
    if (b.data) cuda::add_bias(d_qkv, b, stream);
    cuda::rope(d_qkv, d_pos, d_inv, shape.n_heads, shape.n_kv_heads, shape.head_dim, stream);
    cuda::kv_write(d_qkv, d_pos, kv, shape, stream);
  }
  TD_CUDA_CHECK(cudaStreamSynchronize(stream));
  expect_guards_intact({&d_qkv, &d_pos, &d_inv, &d_bias, &d_indptr, &d_indices, &d_last, &d_batch, &d_k, &d_v});
  return {d_qkv.download(), d_k.download(), d_v.download()};
}

QkvResult run_qkv_cpu(const PagedStep& st, const std::vector<float>& qkv, const std::vector<float>& bias,
                      const std::vector<float>& inv) {
  const int64_t T = st.T();
  HostTensor h_qkv = host_f32(qkv, {T, st.qkv_dim()}), pos = host_i32(st.pos);
  HostTensor h_inv = host_f32(inv, {int64_t(inv.size())});
  HostTensor h_bias = bias.empty() ? HostTensor() : host_f32(bias, {st.qkv_dim()});
  HostTensor k = host_f32(st.k_pool, {st.pool_elems()}), v = host_f32(st.v_pool, {st.pool_elems()});
  HostTensor indptr = host_i32(st.tables.page_indptr), indices = host_i32(st.tables.page_indices);
  HostTensor last = host_i32(st.tables.last_page_len), batch = host_i32(st.tables.token_batch);
  const PagedKv kv = paged_kv(st, Device::CPU, DType::F32, k.f32(), v.f32(), indptr, indices, last, batch);
  cpu::qkv_rope_kv_write(h_qkv, h_bias.view(), pos, h_inv, kv, shape_of(st.c));
  return {to_vector(h_qkv), to_vector(k), to_vector(v)};
}

// Only the slots the step wrote (the rest are NaN in both) enter the NMSE of the pools.
std::vector<float> finite_only(const std::vector<float>& v, const std::vector<float>& mask) {
  std::vector<float> out;
  for (size_t i = 0; i < v.size(); ++i)
    if (std::isfinite(mask[i])) out.push_back(v[i]);
  return out;
}

TEST_F(OpConformance, qkv_rope_kv_write) {
  struct Heads {
    int n_heads, n_kv_heads, head_dim;
  };
  const Heads heads[] = {{9, 3, 64}, {14, 2, 64}, {4, 1, 128}, {3, 3, 32}};
  uint32_t seed = 2100;
  for (DType dt : kFloatTypes)
    for (const Heads& hd : heads)
      for (int64_t ps : {int64_t(1), int64_t(16)})
        for (KvLayout layout : kLayouts)
          for (bool with_bias : {false, true}) {
            const AttnCase c{dt, hd.n_heads, hd.n_kv_heads, hd.head_dim, 0, ps, layout};
            SCOPED_TRACE(describe_case(c) + (with_bias ? " bias" : " no-bias"));
            std::vector<SeqSpec> seqs = mixed_step(ps);
            seqs.push_back({4000, 3});  // positions near 4000: large RoPE angles
            const PagedStep st = make_step(c, seqs, seed++);
            // |q|, |k| up to ~200 (Qwen2.5's K), so a rounding error is visible.
            std::vector<float> qkv = st.qkv;
            for (float& x : qkv) x = round_to(x * 60.0f, dt);
            const std::vector<float> bias = with_bias ? randn(st.qkv_dim(), dt, seed++) : std::vector<float>{};
            const std::vector<float> inv = inv_freq_for(hd.head_dim, 10000.0f);
            const QkvResult fused = run_qkv_cuda(stream_, st, qkv, bias, inv, true);
            const QkvResult standard = run_qkv_cuda(stream_, st, qkv, bias, inv, false);
            EXPECT_TRUE(exact(fused.qkv, standard.qkv)) << "qkv row vs add_bias -> rope";
            EXPECT_TRUE(exact(fused.k_pool, standard.k_pool)) << "k pool vs kv_write";
            EXPECT_TRUE(exact(fused.v_pool, standard.v_pool)) << "v pool vs kv_write";
            const QkvResult ref = run_qkv_cpu(st, qkv, bias, inv);
            // RoPE at positions ~4000 in fp32: cosf/sinf of large angles differ from the CPU's in the last bits.
            const double bound = dt == DType::F32 ? 1e-9 : nmse_bound(dt);
            EXPECT_TRUE(close(fused.qkv, ref.qkv, bound)) << "qkv row vs CPU twin";
            EXPECT_TRUE(close(finite_only(fused.k_pool, ref.k_pool), finite_only(ref.k_pool, ref.k_pool), bound))
                << "k pool vs CPU twin";
            EXPECT_TRUE(close(finite_only(fused.v_pool, ref.v_pool), finite_only(ref.v_pool, ref.v_pool), bound))
                << "v pool vs CPU twin";
          }
}

// A token naming no slot: its qkv row is still roped, nothing is written to the pools (kv_write's contract).
TEST_F(OpConformance, qkv_rope_kv_write_InvalidToken) {
  const AttnCase c{DType::BF16, 4, 2, 64, 0, 16, KvLayout::NHD};
  PagedStep st = make_step(c, {{3, 2}, {0, 5}}, 2300);
  append_invalid_token(st, int32_t(st.tables.last_page_len.size()) + 3, 7, 2301);  // batch index out of range
  const std::vector<float> inv = inv_freq_for(64, 10000.0f);
  const QkvResult fused = run_qkv_cuda(stream_, st, st.qkv, {}, inv, true);
  const QkvResult standard = run_qkv_cuda(stream_, st, st.qkv, {}, inv, false);
  EXPECT_TRUE(exact(fused.qkv, standard.qkv));
  EXPECT_TRUE(exact(fused.k_pool, standard.k_pool));
  EXPECT_TRUE(exact(fused.v_pool, standard.v_pool));
}

// ------------------------------------------------------------------------------------------------- add_rmsnorm

// Rows scaled so that some are near zero and some near the top of the dtype's range (f16: |x + delta| up to
// ~4e4 of 65504; x + delta stays finite and the fp32 sum of squares does not overflow).
std::vector<float> extreme_rows(int64_t T, int64_t H, DType dt, uint32_t seed) {
  std::vector<float> v = randn(T * H, dt, seed);
  const float big = dt == DType::F16 ? 5e3f : 1e15f, tiny = dt == DType::F16 ? 1e-3f : 1e-20f;
  for (int64_t t = 0; t < T; ++t) {
    const float s = t % 4 == 1 ? tiny : t % 4 == 3 ? big : 1.0f;
    for (int64_t i = 0; i < H; ++i) v[size_t(t * H + i)] = round_to(v[size_t(t * H + i)] * s, dt);
  }
  return v;
}

TEST_F(OpConformance, add_rmsnorm) {
  uint32_t seed = 2400;
  for (DType dt : kFloatTypes)
    for (int64_t T : kRows)
      for (int64_t H : kNormWidths) {
        SCOPED_TRACE(case_name({{"dtype", str(dt)}, {"T", str(T)}, {"H", str(H)}}));
        const std::vector<float> x = extreme_rows(T, H, dt, seed), delta = extreme_rows(T, H, dt, seed + 1);
        std::vector<float> w = randn(H, dt, seed + 2);
        for (float& e : w) e = round_to(1.0f + 0.1f * e, dt);
        seed += 3;
        const float eps = 1e-6f;
        // Fused: x += delta, h = norm(x) with h = the delta buffer (how the fused path calls it).
        Guarded f_x(dt, {T, H}), f_h(dt, {T, H}), d_w(dt, {H});
        f_x.upload(x);
        f_h.upload(delta);
        d_w.upload(w);
        cuda::add_rmsnorm(f_x, f_h, d_w, eps, f_h, stream_);
        // Standard: add, then rmsnorm.
        Guarded s_x(dt, {T, H}), s_h(dt, {T, H});
        s_x.upload(x);
        s_h.upload(delta);
        cuda::add(s_x, s_h, s_x, stream_);
        cuda::rmsnorm(s_x, d_w, eps, s_h, stream_);
        sync();
        EXPECT_TRUE(exact(f_x.download(), s_x.download())) << "residual vs add";
        EXPECT_TRUE(exact(f_h.download(), s_h.download())) << "norm vs rmsnorm";
        HostTensor rx = host_f32(x, {T, H}), rd = host_f32(delta, {T, H}), rw = host_f32(w, {H});
        HostTensor out = HostTensor::empty(DType::F32, {T, H});
        cpu::add_rmsnorm(rx, rd, rw, eps, out);
        EXPECT_TRUE(close(f_x.download(), to_vector(rx), nmse_bound(dt))) << "residual vs CPU twin";
        EXPECT_TRUE(close(f_h.download(), to_vector(out), nmse_bound(dt))) << "norm vs CPU twin";
        expect_guards_intact({&f_x, &f_h, &d_w, &s_x, &s_h});
      }
}

TEST_F(OpConformance, add_rmsnorm_RejectsOutAliasingX) {
  Guarded x(DType::BF16, {2, 64}), d(DType::BF16, {2, 64}), w(DType::BF16, {64});
  EXPECT_THROW(cuda::add_rmsnorm(x, d, w, 1e-6f, x, stream_), Error);
}

// ------------------------------------------------------------------------------------------------ gate_up_silu

// Both GEMV tunings on every case (gemv_tuning() picks one per shape).
const cuda::GemvTuning kTunings[] = {cuda::GemvTuning::occupancy, cuda::GemvTuning::deep};
const char* tuning_name(cuda::GemvTuning t) { return t == cuda::GemvTuning::deep ? "deep" : "occupancy"; }

TEST_F(OpConformance, gate_up_silu) {
  struct HI {
    int64_t H, I;
  };
  // 576/64: 16-byte loads; 1001: the scalar path (rows not 16-byte multiples); 2048/5632: a real MLP shape.
  const HI sizes[] = {{576, 64}, {64, 300}, {1001, 77}, {2048, 5632}};
  cuda::Gemm gemm;
  uint32_t seed = 2600;
  for (DType dt : kFloatTypes)
    for (const HI& s : sizes)
      for (int64_t T = 1; T <= cuda::kGemvMaxRows; ++T)
        for (cuda::GemvTuning tuning : kTunings) {
          if (s.H == 2048 && T != 1 && T != cuda::kGemvMaxRows) continue;
          SCOPED_TRACE(case_name({{"dtype", str(dt)}, {"T", str(T)}, {"H", str(s.H)}, {"I", str(s.I)},
                                  {"tuning", tuning_name(tuning)}}));
          const std::vector<float> x = randn(T * s.H, dt, seed), w = randn(2 * s.I * s.H, dt, seed + 1);
          seed += 2;
          Guarded d_x(dt, {T, s.H}), d_w(dt, {2 * s.I, s.H}), d_out(dt, {T, s.I});
          Guarded d_gu(dt, {T, 2 * s.I}), d_std(dt, {T, s.I});
          d_x.upload(x);
          d_w.upload(w);
          cuda::gate_up_silu(d_x, d_w, d_out, stream_, tuning);
          gemm.linear(d_x, d_w, d_gu, stream_);
          cuda::silu_mul(d_gu, d_std, stream_);
          sync();
          const std::vector<float> got = d_out.download();
          EXPECT_TRUE(close(got, d_std.download(), nmse_bound(dt))) << "vs GEMM + silu_mul";
          HostTensor out = HostTensor::empty(DType::F32, {T, s.I});
          cpu::gate_up_silu(host_f32(x, {T, s.H}), host_f32(w, {2 * s.I, s.H}), out);
          EXPECT_TRUE(close(got, to_vector(out), dt == DType::F32 ? 1e-10 : nmse_bound(dt))) << "vs CPU twin";
          expect_guards_intact({&d_x, &d_w, &d_out, &d_gu, &d_std});
        }
}

// ------------------------------------------------------------------------------------------------- linear_gemv

TEST_F(OpConformance, linear_gemv) {
  struct NK {
    int64_t N, K;
  };
  // 64x576: 16-byte loads, fewer chunks than one unrolled trip, one warp per column; 300x1001: the scalar
  // path; 3072x2048 and 2048x8192: real qkv / down shapes (4 warps per column); 256x8192: 8 warps per column;
  // 100x4100: the scalar path over 8 uneven slices.
  const NK sizes[] = {{64, 576}, {300, 1001}, {3072, 2048}, {2048, 8192}, {256, 8192}, {100, 4100}};
  cuda::Gemm gemm;
  uint32_t seed = 2700;
  for (DType dt : kFloatTypes)
    for (const NK& s : sizes)
      for (int64_t T = 1; T <= cuda::kGemvMaxRows; ++T)
        for (cuda::GemvTuning tuning : kTunings) {
          if (s.K >= 2048 && T != 1 && T != 3 && T != cuda::kGemvMaxRows) continue;
          SCOPED_TRACE(case_name({{"dtype", str(dt)}, {"T", str(T)}, {"N", str(s.N)}, {"K", str(s.K)},
                                  {"tuning", tuning_name(tuning)}}));
          std::vector<float> x = randn(T * s.K, dt, seed), w = randn(s.N * s.K, dt, seed + 1);
          seed += 2;
          // Extremes: row 0 near zero, the last row large (sums near 1e4 in f16, whose max is 65504).
          for (int64_t k = 0; k < s.K; ++k) {
            x[size_t(k)] = round_to(x[size_t(k)] * 1e-6f, dt);
            if (T > 1) x[size_t((T - 1) * s.K + k)] = round_to(x[size_t((T - 1) * s.K + k)] * 64.0f, dt);
          }
          Guarded d_x(dt, {T, s.K}), d_w(dt, {s.N, s.K}), d_out(dt, {T, s.N}), d_std(dt, {T, s.N});
          d_x.upload(x);
          d_w.upload(w);
          cuda::linear_gemv(d_x, d_w, d_out, stream_, tuning);
          gemm.linear(d_x, d_w, d_std, stream_);
          sync();
          const std::vector<float> got = d_out.download();
          const std::vector<float> want = d_std.download();
          for (int64_t r = 0; r < T; ++r) {  // per row: the near-zero row is held to its own scale
            const std::vector<float> g(got.begin() + r * s.N, got.begin() + (r + 1) * s.N);
            const std::vector<float> e(want.begin() + r * s.N, want.begin() + (r + 1) * s.N);
            EXPECT_TRUE(close(g, e, nmse_bound(dt))) << "row " << r << " vs cuBLASLt";
          }
          HostTensor out = HostTensor::empty(DType::F32, {T, s.N});
          cpu::linear(host_f32(x, {T, s.K}), host_f32(w, {s.N, s.K}), out);
          EXPECT_TRUE(close(got, to_vector(out), dt == DType::F32 ? 1e-10 : nmse_bound(dt))) << "vs CPU twin";
          expect_guards_intact({&d_x, &d_w, &d_out, &d_std});
        }
}

TEST_F(OpConformance, linear_gemv_RejectsBadShapes) {
  Guarded x(DType::BF16, {cuda::kGemvMaxRows + 1, 64}), w(DType::BF16, {32, 64}),
      out(DType::BF16, {cuda::kGemvMaxRows + 1, 32});
  EXPECT_THROW(cuda::linear_gemv(x, w, out, stream_), Error);
  Guarded x1(DType::BF16, {1, 64}), w1(DType::BF16, {32, 63}), out1(DType::BF16, {1, 32});
  EXPECT_THROW(cuda::linear_gemv(x1, w1, out1, stream_), Error);
}

// ---------------------------------------------------- rmsnorm_linear_gemv, rmsnorm_gate_up_silu, linear_gemv_residual

// The decode-regime fusions take the kernel on either side, with the same bits as the two launches they replace
// (rmsnorm -> GEMV, GEMV -> add_bias -> add: the prologue adds the squares in rmsnorm's order), on rows of ordinary
// size, near zero and near the top of the dtype's range (extreme_rows' scales), in both tunings.
struct FusedGemvCase {
  DType dt;
  int64_t T, N, K;
  cuda::GemvTuning tuning;
  float scale;
  std::string name() const {
    return case_name({{"dtype", str(dt)}, {"T", str(T)}, {"N", str(N)}, {"K", str(K)}, {"tuning", tuning_name(tuning)},
                      {"scale", fmt::format("{:g}", scale)}});
  }
};

// N x K: 16-byte loads; the scalar path (K odd); the 1B qkv shape; the 8B hidden size; the most shared memory a
// bf16 row pair may take (2 x 12288 x 2 bytes = 48 KiB, gemv_norm_fits).
const std::pair<int64_t, int64_t> kFusedGemvShapes[] = {{64, 576}, {300, 1001}, {3072, 2048}, {96, 4096}, {40, 12288}};

template <typename F>
void for_each_fused_gemv_case(uint32_t& seed, F&& f) {
  for (DType dt : kFloatTypes)
    for (auto [N, K] : kFusedGemvShapes)
      for (int64_t T = 1; T <= cuda::kGemvFusedMaxRows; ++T)
        for (cuda::GemvTuning tuning : kTunings)
          for (float scale : {1.0f, dt == DType::F16 ? 1e-3f : 1e-20f, dt == DType::F16 ? 5e3f : 1e15f}) {
            if (!cuda::gemv_norm_fits(T, K, dt)) continue;
            const FusedGemvCase c{dt, T, N, K, tuning, scale};
            SCOPED_TRACE(c.name());
            f(c, seed);
            seed += 4;
          }
}

std::vector<float> scaled(std::vector<float> v, float s, DType dt) {
  for (float& e : v) e = round_to(e * s, dt);
  return v;
}

std::vector<float> norm_weight(int64_t K, DType dt, uint32_t seed) {
  std::vector<float> g = randn(K, dt, seed);
  for (float& e : g) e = round_to(1.0f + 0.1f * e, dt);
  return g;
}

TEST_F(OpConformance, rmsnorm_linear_gemv) {
  uint32_t seed = 2900;
  const float eps = 1e-5f;
  for_each_fused_gemv_case(seed, [&](const FusedGemvCase& c, uint32_t s) {
    const std::vector<float> x = scaled(randn(c.T * c.K, c.dt, s), c.scale, c.dt);
    const std::vector<float> g = norm_weight(c.K, c.dt, s + 1), w = randn(c.N * c.K, c.dt, s + 2);
    Guarded d_x(c.dt, {c.T, c.K}), d_g(c.dt, {c.K}), d_w(c.dt, {c.N, c.K}), d_out(c.dt, {c.T, c.N});
    Guarded d_h(c.dt, {c.T, c.K}), d_std(c.dt, {c.T, c.N});
    d_x.upload(x);
    d_g.upload(g);
    d_w.upload(w);
    cuda::rmsnorm_linear_gemv(d_x, d_g, eps, d_w, d_out, stream_, c.tuning);
    cuda::rmsnorm(d_x, d_g, eps, d_h, stream_);
    cuda::linear_gemv(d_h, d_w, d_std, stream_, c.tuning);
    sync();
    const std::vector<float> got = d_out.download();
    EXPECT_TRUE(exact(got, d_std.download())) << "vs rmsnorm -> linear_gemv";
    EXPECT_TRUE(exact(d_x.download(), x)) << "x must stay as it was";
    HostTensor h = HostTensor::empty(DType::F32, {c.T, c.K}), out = HostTensor::empty(DType::F32, {c.T, c.N});
    cpu::rmsnorm(host_f32(x, {c.T, c.K}), host_f32(g, {c.K}), eps, h);
    cpu::linear(h, host_f32(w, {c.N, c.K}), out);
    EXPECT_TRUE(close(got, to_vector(out), nmse_bound(c.dt))) << "vs CPU twin";
    EXPECT_TRUE(close(d_std.download(), to_vector(out), nmse_bound(c.dt))) << "rmsnorm -> linear_gemv vs CPU twin";
    expect_guards_intact({&d_x, &d_g, &d_w, &d_out, &d_h, &d_std});
  });
}

TEST_F(OpConformance, rmsnorm_gate_up_silu) {
  uint32_t seed = 3100;
  const float eps = 1e-6f;
  for_each_fused_gemv_case(seed, [&](const FusedGemvCase& c, uint32_t s) {
    const int64_t I = c.N;
    const std::vector<float> x = scaled(randn(c.T * c.K, c.dt, s), c.scale, c.dt);
    const std::vector<float> g = norm_weight(c.K, c.dt, s + 1), w = randn(2 * I * c.K, c.dt, s + 2);
    Guarded d_x(c.dt, {c.T, c.K}), d_g(c.dt, {c.K}), d_w(c.dt, {2 * I, c.K}), d_out(c.dt, {c.T, I});
    Guarded d_h(c.dt, {c.T, c.K}), d_std(c.dt, {c.T, I});
    d_x.upload(x);
    d_g.upload(g);
    d_w.upload(w);
    cuda::rmsnorm_gate_up_silu(d_x, d_g, eps, d_w, d_out, stream_, c.tuning);
    cuda::rmsnorm(d_x, d_g, eps, d_h, stream_);
    cuda::gate_up_silu(d_h, d_w, d_std, stream_, c.tuning);
    sync();
    const std::vector<float> got = d_out.download();
    EXPECT_TRUE(exact(got, d_std.download())) << "vs rmsnorm -> gate_up_silu";
    HostTensor h = HostTensor::empty(DType::F32, {c.T, c.K}), out = HostTensor::empty(DType::F32, {c.T, I});
    cpu::rmsnorm(host_f32(x, {c.T, c.K}), host_f32(g, {c.K}), eps, h);
    cpu::gate_up_silu(h, host_f32(w, {2 * I, c.K}), out);
    EXPECT_TRUE(close(got, to_vector(out), nmse_bound(c.dt))) << "vs CPU twin";
    // Which side is wrong when the two GPU results part (H100, 12-06: the unfused chain held NaN in 6 f32/f16
    // cases at N 3072, K 2048, occupancy, extreme scales, while the fused result met its CPU twin).
    EXPECT_TRUE(close(d_std.download(), to_vector(out), nmse_bound(c.dt))) << "rmsnorm -> gate_up_silu vs CPU twin";
    EXPECT_TRUE(close(d_h.download(), to_vector(h), nmse_bound(c.dt))) << "rmsnorm vs CPU twin";
    expect_guards_intact({&d_x, &d_g, &d_w, &d_out, &d_h, &d_std});
  });
}

TEST_F(OpConformance, linear_gemv_residual) {
  uint32_t seed = 3300;
  for_each_fused_gemv_case(seed, [&](const FusedGemvCase& c, uint32_t s) {
    for (bool with_bias : {false, true}) {
      SCOPED_TRACE(with_bias ? "bias" : "no bias");
      // The residual at the case's scale (near zero / near the top), the projection's input ordinary.
      const std::vector<float> x = randn(c.T * c.K, c.dt, s), w = randn(c.N * c.K, c.dt, s + 1);
      const std::vector<float> res = scaled(randn(c.T * c.N, c.dt, s + 2), c.scale, c.dt);
      const std::vector<float> bias = randn(c.N, c.dt, s + 3);
      Guarded d_x(c.dt, {c.T, c.K}), d_w(c.dt, {c.N, c.K}), d_b(c.dt, {c.N}), d_res(c.dt, {c.T, c.N});
      Guarded d_h(c.dt, {c.T, c.N}), d_std(c.dt, {c.T, c.N});
      d_x.upload(x);
      d_w.upload(w);
      d_b.upload(bias);
      d_res.upload(res);
      d_std.upload(res);
      const Tensor no_bias;
      cuda::linear_gemv_residual(d_x, d_w, with_bias ? d_b.view() : no_bias, d_res, stream_, c.tuning);
      cuda::linear_gemv(d_x, d_w, d_h, stream_, c.tuning);
      if (with_bias) cuda::add_bias(d_h, d_b, stream_);
      cuda::add(d_std, d_h, d_std, stream_);
      sync();
      const std::vector<float> got = d_res.download();
      EXPECT_TRUE(exact(got, d_std.download())) << "vs linear_gemv -> add_bias -> add";
      HostTensor h = HostTensor::empty(DType::F32, {c.T, c.N});
      HostTensor r = host_f32(res, {c.T, c.N});
      cpu::linear(host_f32(x, {c.T, c.K}), host_f32(w, {c.N, c.K}), h);
      if (with_bias) cpu::add_bias(h, host_f32(bias, {c.N}));
      cpu::add(r, h, r);
      EXPECT_TRUE(close(got, to_vector(r), nmse_bound(c.dt))) << "vs CPU twin";
      expect_guards_intact({&d_x, &d_w, &d_b, &d_res, &d_h, &d_std});
    }
  });
}

TEST_F(OpConformance, FusedGemvRejectsWhatItCannotTake) {
  const int64_t T = cuda::kGemvFusedMaxRows + 1;
  Guarded x(DType::BF16, {T, 64}), g(DType::BF16, {64}), w(DType::BF16, {32, 64}), out(DType::BF16, {T, 32});
  EXPECT_THROW(cuda::rmsnorm_linear_gemv(x, g, 1e-6f, w, out, stream_), Error);  // rows past the fused instances
  EXPECT_THROW(cuda::linear_gemv_residual(x, w, Tensor(), out, stream_), Error);
  Guarded x1(DType::BF16, {1, 64}), g1(DType::BF16, {63}), out1(DType::BF16, {1, 32});
  EXPECT_THROW(cuda::rmsnorm_linear_gemv(x1, g1, 1e-6f, w, out1, stream_), Error);  // norm weight of another width
  Guarded b1(DType::BF16, {31});
  EXPECT_THROW(cuda::linear_gemv_residual(x1, w, b1, out1, stream_), Error);  // bias of another width
  EXPECT_FALSE(cuda::gemv_norm_fits(2, 12289, DType::BF16));
  Guarded xl(DType::F32, {2, 12288}), gl(DType::F32, {12288}), wl(DType::F32, {8, 12288}), ol(DType::F32, {2, 8});
  EXPECT_THROW(cuda::rmsnorm_linear_gemv(xl, gl, 1e-6f, wl, ol, stream_), Error);  // 96 KiB of shared memory
}

// ------------------------------------------------------------------------------------------------ argmax_rows

// Against greedy_token (its CPU twin) on rows with ties, NaN, -inf, +inf (each of those rows -1), one-hot and
// flat rows, values near f32's max and a real vocabulary size (the maximum in the last and first slot).
// cuda::argmax_rows over the [R, V] rows of h, in guarded buffers (checked intact afterwards).
std::vector<int32_t> argmax_rows_on_gpu(const std::vector<float>& h, int64_t R, int64_t V, cudaStream_t stream) {
  Guarded d(DType::F32, {R, V}), ids(DType::I32, {R});
  d.upload(h);
  cuda::argmax_rows(d, ids, stream);
  TD_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<int32_t> got(static_cast<size_t>(R));
  TD_CUDA_CHECK(cudaMemcpy(got.data(), ids.view().data, size_t(R) * 4, cudaMemcpyDeviceToHost));
  expect_guards_intact({&d, &ids});
  return got;
}

TEST_F(OpConformance, argmax_rows) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (int64_t V : {int64_t(1), int64_t(7), int64_t(1025), int64_t(128256)}) {
    const int64_t R = 12;
    std::vector<float> h = randn(R * V, DType::F32, uint32_t(V));
    auto row = [&](int64_t r) { return h.data() + r * V; };
    std::fill(row(1), row(1) + V, nan);                                      // nothing choosable: -1
    for (int64_t k = 0; k < V; ++k) row(2)[k] = k % 2 ? -inf : nan;           // -1
    std::fill(row(3), row(3) + V, 0.5f);                                     // flat: index 0
    std::fill(row(4), row(4) + V, -1e30f), row(4)[V - 1] = 3.0e38f;          // one-hot at the end
    if (V > 1) row(5)[V / 2] = inf, row(5)[V - 1] = inf;                     // +inf: -1 as well
    for (int64_t k = 0; k < V; ++k) row(6)[k] = float(k % 3);                 // ties to the lowest index
    row(7)[0] = 1e38f;                                                        // one-hot at the start
    for (int64_t k = 0; k < V; k += 2) row(8)[k] = nan;                       // NaN mixed in: -1
    const std::vector<int32_t> got = argmax_rows_on_gpu(h, R, V, stream_);
    for (int64_t r = 0; r < R; ++r)
      EXPECT_EQ(got[size_t(r)], greedy_token({row(r), size_t(V)})) << "V " << V << " row " << r;
    EXPECT_EQ(got[1], -1);
    EXPECT_EQ(got[3], 0);
    EXPECT_EQ(got[4], V - 1);
  }
}

// The NaN guard's sentinel (checklist 24): ONE NaN, +inf or -inf anywhere in a row gives -1, whichever of the
// block's 1024 threads and 32 warps reads it (first and last lane of a warp, warp and block-stride boundaries,
// the row's ends), beside a large finite maximum elsewhere; the clean row keeps its token. Vocabularies of
// Qwen2 (151936), just over one block stride (1025) and under one warp; then more rows than the grid has blocks
// (65535), so a block reuses its shared flags for a second row.
TEST_F(OpConformance, argmax_rows_OneNonFiniteValueAnywhereGivesMinusOne) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const float neg_nan = std::bit_cast<float>(0xffc00000u), signaling_nan = std::bit_cast<float>(0x7f800001u);
  for (int64_t V : {int64_t(151936), int64_t(1025), int64_t(20)}) {
    const int64_t max_at = V * 2 / 3;
    std::vector<int64_t> at;
    for (int64_t p : {int64_t(0), int64_t(1), int64_t(31), int64_t(32), int64_t(33), int64_t(63), int64_t(511),
                      int64_t(512), int64_t(992), int64_t(1023), int64_t(1024), int64_t(1025), int64_t(2047),
                      int64_t(2048), V / 2, max_at - 1, max_at, max_at + 1, V - 1025, V - 1024, V - 1023, V - 33,
                      V - 32, V - 2, V - 1})
      if (p >= 0 && p < V && std::find(at.begin(), at.end(), p) == at.end()) at.push_back(p);
    // Row 0 clean; then NaN at each of `at`; then +inf, -inf and other NaN encodings at a few of them.
    std::vector<std::pair<int64_t, float>> poison;
    for (int64_t p : at) poison.push_back({p, nan});
    for (int64_t p : {int64_t(0), max_at, V - 1}) {
      poison.push_back({p, inf});
      poison.push_back({p, -inf});
    }
    poison.push_back({V / 3, neg_nan});
    poison.push_back({(V * 5) / 7, signaling_nan});
    const int64_t R = 1 + int64_t(poison.size());
    std::vector<float> h = randn(R * V, DType::F32, uint32_t(V) + 7);
    auto row = [&](int64_t r) { return h.data() + r * V; };
    for (int64_t r = 0; r < R; ++r) row(r)[max_at] = 1e30f;  // a clear winner the poison must override
    for (size_t i = 0; i < poison.size(); ++i) row(int64_t(i) + 1)[poison[i].first] = poison[i].second;
    const std::vector<int32_t> got = argmax_rows_on_gpu(h, R, V, stream_);
    EXPECT_EQ(got[0], max_at) << "V " << V << ": the clean row";
    for (int64_t r = 1; r < R; ++r) {
      const auto& [p, v] = poison[size_t(r - 1)];
      EXPECT_EQ(got[size_t(r)], -1) << "V " << V << ": " << v << " at " << p << " (thread " << p % 1024 << ", warp "
                                    << (p % 1024) / 32 << ", lane " << p % 32 << ")";
      EXPECT_EQ(greedy_token({row(r), size_t(V)}), -1) << "the CPU twin disagrees: V " << V << ", " << v << " at " << p;
    }
  }
  // More rows than blocks: every third row holds one NaN, at a position that moves from row to row.
  const int64_t V = 40, R = 65535 + 301;
  std::vector<float> h = randn(R * V, DType::F32, 99);
  for (int64_t r = 0; r < R; r += 3) h[size_t(r * V + (r * 7) % V)] = nan;
  const std::vector<int32_t> got = argmax_rows_on_gpu(h, R, V, stream_);
  int64_t wrong = 0, first_wrong = -1;
  for (int64_t r = 0; r < R; ++r) {
    const int32_t want = r % 3 == 0 ? -1 : greedy_token({h.data() + r * V, size_t(V)});
    if (want < 0 && r % 3 != 0) ADD_FAILURE() << "test bug: clean row " << r << " gave -1 on the CPU";
    if (got[size_t(r)] != want && wrong++ == 0) first_wrong = r;
  }
  EXPECT_EQ(wrong, 0) << "first at row " << first_wrong << ": got " << got[size_t(std::max<int64_t>(first_wrong, 0))];
}

TEST_F(OpConformance, gate_up_silu_RejectsTooManyRows) {
  const int64_t T = cuda::kGemvMaxRows + 1;
  Guarded x(DType::BF16, {T, 64}), w(DType::BF16, {128, 64}), out(DType::BF16, {T, 64});
  EXPECT_THROW(cuda::gate_up_silu(x, w, out, stream_), Error);
}

}  // namespace
}  // namespace tandem
