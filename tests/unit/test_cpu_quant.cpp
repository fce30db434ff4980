// Conformance of the stored-format linear kernels (cpu/quant_dot.h) against their reference twins, for every block
// type and every instruction set this CPU has (the scalar fallback always):
//  - exact twin: the weights dequantized (io/dequant.h) times the Q8-quantized activations dequantized, summed in
//    double: the kernel must equal it up to f32 accumulation error (it computes exactly the quantized product);
//  - reference twin: the weights dequantized times the fp32 activations through the reference linear (cpu/ops.h):
//    NMSE within what Q8 activations cost (llama.cpp's test-backend-ops bound for quantized matmuls, 5e-4);
// on random inputs, odd shapes (one block, many blocks, rows not a multiple of the threads, prefill tiles with
// remainders), and extremes (zero scales, max-magnitude blocks, near-zero and huge activation rows).
#include "cpu/quant_dot.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/parallel.h"
#include "cpu/ops.h"
#include "io/dequant.h"

namespace tandem::cpu {
namespace {

const DType kIntTypes[] = {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0,
                           DType::Q4_K, DType::Q5_K, DType::Q6_K};
const DType kFloatTypes[] = {DType::F32, DType::F16, DType::BF16};

std::vector<Isa> isas() {
  std::vector<Isa> v{Isa::scalar};
  if (int(detected_isa()) >= int(Isa::avx2)) v.push_back(Isa::avx2);
  if (detected_isa() == Isa::avx512_vnni) v.push_back(Isa::avx512_vnni);
  return v;
}

struct ForceIsa {
  explicit ForceIsa(Isa i) { force_isa(i); }
  ~ForceIsa() { force_isa(std::nullopt); }
};

// Random weights [N, K] of type t. Quantized: random quant bytes, f16 scales set to `scale` times a random factor
// in [0.5, 1] with a random sign (scale 0: every block zero-scaled).
HostTensor random_weights(DType t, int64_t N, int64_t K, std::mt19937& rng, float scale = 0.02f) {
  HostTensor w = HostTensor::empty(t, {N, K});
  auto* p = static_cast<uint8_t*>(w.view().data);
  const int64_t bytes = w.view().nbytes();
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> u(0.5f, 1.0f), s(-1.0f, 1.0f);
  if (t == DType::F32 || t == DType::F16 || t == DType::BF16) {
    for (int64_t i = 0; i < N * K; ++i) {
      const float v = s(rng);
      if (t == DType::F32) std::memcpy(p + 4 * i, &v, 4);
      const uint16_t h = t == DType::F16 ? f32_to_fp16(v) : f32_to_bf16(v);
      if (t != DType::F32) std::memcpy(p + 2 * i, &h, 2);
    }
    return w;
  }
  for (int64_t i = 0; i < bytes; ++i) p[i] = uint8_t(byte(rng));
  const int64_t bb = dtype_block_bytes(t);
  for (int64_t b = 0; b < bytes / bb; ++b)
    for (int off : block_f16_scale_offsets(t)) {
      const float v = scale * u(rng) * (s(rng) < 0 && t != DType::Q4_K && t != DType::Q5_K ? -1.0f : 1.0f);
      const uint16_t h = f32_to_fp16(v);
      std::memcpy(p + b * bb + off, &h, 2);
    }
  return w;
}

std::vector<float> random_rows(int64_t T, int64_t K, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> n(0.0f, scale);
  std::vector<float> x(size_t(T * K));
  for (float& v : x) v = n(rng);
  return x;
}

// The kernel's result through linear_stored (threaded) on the active ISA.
std::vector<float> run_stored(const HostTensor& w, const std::vector<float>& x, int64_t T) {
  const int64_t N = w.view().shape[0], K = w.view().shape[1];
  std::vector<float> y(size_t(T * N), std::nanf(""));
  linear_stored(Tensor::contiguous(const_cast<float*>(x.data()), DType::F32, {T, K}), w.view(),
                Tensor::contiguous(y.data(), DType::F32, {T, N}));
  return y;
}

// Exact twin: dequantized weights times the activations as the kernel sees them (Q8-dequantized for integer formats),
// in double; also returns sum |w x| per output for the tolerance.
void exact_twin(const HostTensor& w, const std::vector<float>& x, int64_t T, std::vector<double>& y,
                std::vector<double>& mag) {
  const int64_t N = w.view().shape[0], K = w.view().shape[1];
  const HostTensor wf = dequantize_to_f32(w.view());
  std::vector<float> xs = x;
  if (takes_q8_activations(w.view().dtype)) {
    Q8Rows q;
    quantize_rows_q8(x.data(), T, K, K, q);
    for (int64_t r = 0; r < T; ++r)
      for (int64_t k = 0; k < K; ++k)
        xs[size_t(r * K + k)] = float(q.q[size_t(r * K + k)]) * q.d[size_t(r * q.blocks + k / 32)] +
                                float(q.q2[size_t(r * K + k)]) * q.d2[size_t(r * q.blocks + k / 32)];
  }
  y.assign(size_t(T * N), 0.0);
  mag.assign(size_t(T * N), 0.0);
  for (int64_t r = 0; r < T; ++r)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0, m = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = double(wf.f32()[n * K + k]) * xs[size_t(r * K + k)];
        s += p;
        m += std::fabs(p);
      }
      y[size_t(r * N + n)] = s;
      mag[size_t(r * N + n)] = m;
    }
}

// Reference twin: dequantize, then the reference fp32 linear on the fp32 activations.
std::vector<float> reference_twin(const HostTensor& w, const std::vector<float>& x, int64_t T) {
  const int64_t N = w.view().shape[0], K = w.view().shape[1];
  const HostTensor wf = dequantize_to_f32(w.view());
  std::vector<float> y(size_t(T * N));
  linear(Tensor::contiguous(const_cast<float*>(x.data()), DType::F32, {T, K}), wf.view(),
         Tensor::contiguous(y.data(), DType::F32, {T, N}));
  return y;
}

double nmse(const std::vector<float>& a, const std::vector<float>& ref) {
  double e = 0, s = 0;
  for (size_t i = 0; i < a.size(); ++i) e += double(a[i] - ref[i]) * (a[i] - ref[i]), s += double(ref[i]) * ref[i];
  return s > 0 ? e / s : e;
}

// Checks one case on every ISA against both twins.
void check_case(DType t, int64_t N, int64_t K, int64_t T, uint64_t seed, float wscale = 0.02f, float xscale = 1.0f,
                double max_nmse = 5e-4) {
  SCOPED_TRACE(testing::Message() << dtype_name(t) << " N=" << N << " K=" << K << " T=" << T << " wscale=" << wscale
                                  << " xscale=" << xscale);
  std::mt19937 rng{uint32_t(seed)};
  const HostTensor w = random_weights(t, N, K, rng, wscale);
  const std::vector<float> x = random_rows(T, K, rng, xscale);
  std::vector<double> exact, mag;
  exact_twin(w, x, T, exact, mag);
  const std::vector<float> ref = reference_twin(w, x, T);
  for (Isa isa : isas()) {
    SCOPED_TRACE(isa_name(isa));
    ForceIsa force(isa);
    const std::vector<float> y = run_stored(w, x, T);
    int bad = 0;
    for (size_t i = 0; i < y.size() && bad < 5; ++i) {
      const double tol = 2e-6 * mag[i] + 1e-30;
      if (!(std::fabs(y[i] - exact[i]) <= tol)) {
        ++bad;
        ADD_FAILURE() << "out[" << i / size_t(N) << ", " << i % size_t(N) << "] = " << y[i] << ", exact twin "
                      << exact[i] << " (tolerance " << tol << ")";
      }
    }
    EXPECT_LE(nmse(y, ref), max_nmse) << "against the reference twin (dequantize + fp32 linear)";
  }
}

TEST(CpuQuant, DetectsAnIsa) {
  std::printf("[ info ] cpu kernels: %s\n", std::string(isa_name(detected_isa())).c_str());
  EXPECT_EQ(active_isa(), detected_isa());
  for (Isa i : isas()) {
    ForceIsa f(i);
    EXPECT_EQ(active_isa(), i);
  }
  EXPECT_EQ(active_isa(), detected_isa());
}

TEST(CpuQuant, QuantizeRowsQ8) {
  std::mt19937 rng(7);
  const int64_t T = 3, K = 96;
  std::vector<float> x = random_rows(T, K, rng);
  for (int k = 32; k < 64; ++k) x[size_t(K + k)] = 0.0f;  // an all-zero block: d = 0, q = 0
  Q8Rows q;
  quantize_rows_q8(x.data(), T, K, K, q);
  ASSERT_EQ(q.blocks, 3);
  for (int64_t r = 0; r < T; ++r)
    for (int64_t b = 0; b < 3; ++b) {
      const float d = q.d[size_t(r * 3 + b)], d2 = q.d2[size_t(r * 3 + b)];
      int sum = 0, sum2 = 0, qmax = 0;
      for (int j = 0; j < 32; ++j) {
        const int v = q.q[size_t(r * K + b * 32 + j)], v2 = q.q2[size_t(r * K + b * 32 + j)];
        sum += v, sum2 += v2;
        qmax = std::max(qmax, std::abs(v));
        const float xv = x[size_t(r * K + b * 32 + j)];
        EXPECT_LE(std::fabs(xv - v * d), 0.5f * d * 1.0001f);
        // The residual level: within half its step, which is at most d / 254.
        EXPECT_LE(std::fabs(xv - v * d - v2 * d2), 0.5f * d2 * 1.0001f + 1e-7f * std::fabs(xv));
        EXPECT_LE(d2, d / 254.0f * 1.0001f);
      }
      EXPECT_FLOAT_EQ(q.s[size_t(r * 3 + b)], d * float(sum) + d2 * float(sum2));
      if (r == 1 && b == 1) EXPECT_EQ(d, 0.0f);
      else EXPECT_EQ(qmax, 127);
    }
}

// The vectorized quantizer gives the scalar loop's bytes and scales exactly, on tame and extreme blocks: zeros,
// subnormals (the divide fallback), values near the float max, infinities, NaN, ties at .5 steps.
TEST(CpuQuant, QuantizeRowsQ8SimdEqualsScalar) {
  if (detected_isa() == Isa::scalar) GTEST_SKIP() << "no AVX2 on this CPU";
  std::mt19937 rng(11);
  const int64_t K = 32 * 10;
  std::vector<float> x = random_rows(4, K, rng);
  for (int j = 0; j < 32; ++j) x[size_t(32 + j)] = 0.0f;
  for (int j = 0; j < 32; ++j) x[size_t(64 + j)] = 1e-40f * float(j - 16);            // subnormal scale
  for (int j = 0; j < 32; ++j) x[size_t(96 + j)] = 3.0e38f * (j % 2 ? 1.0f : -0.9f);  // near the max
  x[128 + 5] = INFINITY;
  x[160 + 7] = NAN;
  x[192 + 0] = -INFINITY;
  for (int j = 0; j < 32; ++j) x[size_t(224 + j)] = 127.0f * float(j) / 254.0f;  // exact half steps: ties
  x[224 + 31] = 127.0f;
  for (int64_t i = K; i < 4 * K; i += 97) x[size_t(i)] *= 1e6f;  // lopsided blocks
  Q8Rows a, b;
  force_isa(Isa::scalar);
  quantize_rows_q8(x.data(), 4, K, K, a);
  force_isa(std::nullopt);
  quantize_rows_q8(x.data(), 4, K, K, b);
  EXPECT_EQ(a.q, b.q);
  EXPECT_EQ(a.q2, b.q2);
  auto same_bits = [](const std::vector<float>& u, const std::vector<float>& v) {
    return u.size() == v.size() && std::memcmp(u.data(), v.data(), u.size() * sizeof(float)) == 0;
  };
  EXPECT_TRUE(same_bits(a.d, b.d));
  EXPECT_TRUE(same_bits(a.d2, b.d2));
  EXPECT_TRUE(same_bits(a.s, b.s));
}

TEST(CpuQuant, EveryIntegerTypeRandom) {
  for (DType t : kIntTypes) {
    const int64_t blk = dtype_block_elems(t) == 256 ? 256 : 32;
    check_case(t, 37, blk, 1, 1);           // K = one block, decode row
    check_case(t, 37, blk * 6, 5, 2);       // many blocks, a 4-row tile plus one
    check_case(t, 70, blk * 3, 67, 3);      // prefill over the 64-row pass boundary, 3-row tail
    check_case(t, 1, blk * 2, 2, 4);        // one output feature
  }
}

TEST(CpuQuant, EveryFloatTypeRandom) {
  for (DType t : kFloatTypes) {
    check_case(t, 37, 40, 1, 11, 0.02f, 1.0f, 1e-10);   // K not a multiple of 8: the scalar tail
    check_case(t, 19, 576, 7, 12, 0.02f, 1.0f, 1e-10);
    check_case(t, 5, 8, 66, 13, 0.02f, 1.0f, 1e-10);
  }
}

TEST(CpuQuant, OddThreadSplits) {
  const int before = num_threads();
  for (int threads : {1, 3}) {
    set_num_threads(threads);
    check_case(DType::Q4_1, 49, 576, 9, 21);  // 49 rows: chunks of 16 do not divide it
    check_case(DType::Q8_0, 17, 64, 1, 22);
    check_case(DType::Q6_K, 33, 512, 3, 23);
  }
  set_num_threads(before);
}

TEST(CpuQuant, ZeroScalesGiveZero) {
  for (DType t : kIntTypes) {
    SCOPED_TRACE(dtype_name(t));
    std::mt19937 rng(31);
    const int64_t K = dtype_block_elems(t) == 256 ? 256 : 64;
    const HostTensor w = random_weights(t, 9, K, rng, 0.0f);
    const std::vector<float> x = random_rows(2, K, rng);
    for (Isa isa : isas()) {
      ForceIsa f(isa);
      for (float v : run_stored(w, x, 2)) EXPECT_EQ(v, 0.0f) << isa_name(isa);
    }
  }
}

TEST(CpuQuant, MaxMagnitudeBlocks) {
  for (DType t : kIntTypes) {
    SCOPED_TRACE(dtype_name(t));
    const int64_t N = 6, K = dtype_block_elems(t) == 256 ? 512 : 64;
    // Every quant byte 0xFF or 0x00 (the extreme codes: Q8_0 -1 and 0 bytes are set below), large scales.
    for (uint8_t fill : {uint8_t(0xFF), uint8_t(0x00), uint8_t(0x80), uint8_t(0x7F)}) {
      std::mt19937 rng(41);
      HostTensor w = random_weights(t, N, K, rng, 8.0f);
      auto* p = static_cast<uint8_t*>(w.view().data);
      const int64_t bb = dtype_block_bytes(t), nblocks = w.view().nbytes() / bb;
      for (int64_t b = 0; b < nblocks; ++b) {
        std::vector<uint8_t> keep(bb);
        std::memcpy(keep.data(), p + b * bb, size_t(bb));
        std::memset(p + b * bb, fill, size_t(bb));
        for (int off : block_f16_scale_offsets(t)) std::memcpy(p + b * bb + off, keep.data() + off, 2);
      }
      std::vector<float> x = random_rows(3, K, rng);
      for (float& v : x) v = v < 0 ? -4.0f : 4.0f;  // every activation at its block's absmax
      std::vector<double> exact, mag;
      exact_twin(w, x, 3, exact, mag);
      for (Isa isa : isas()) {
        ForceIsa f(isa);
        const std::vector<float> y = run_stored(w, x, 3);
        for (size_t i = 0; i < y.size(); ++i)
          EXPECT_NEAR(y[i], exact[i], 2e-6 * mag[i]) << isa_name(isa) << " fill " << int(fill) << " at " << i;
      }
    }
  }
}

TEST(CpuQuant, ExtremeActivationRows) {
  for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::Q4_K, DType::Q6_K, DType::F16}) {
    const int64_t K = dtype_block_elems(t) == 256 ? 256 : 96;
    check_case(t, 11, K, 2, 51, 0.02f, 1e-30f);  // near zero (normal floats)
    {  // subnormal activations: finite, and as close to zero as the reference
      std::mt19937 rng(52);
      const HostTensor w = random_weights(t, 11, K, rng);
      const std::vector<float> x = random_rows(2, K, rng, 1e-40f);
      for (Isa isa : isas()) {
        ForceIsa f(isa);
        for (float v : run_stored(w, x, 2)) EXPECT_TRUE(std::isfinite(v) && std::fabs(v) < 1e-35f) << v;
      }
    }
    check_case(t, 11, K, 3, 53, 0.02f, 1e20f);   // huge
  }
}

TEST(CpuQuant, RejectsMismatchedShapes) {
  std::mt19937 rng(61);
  const HostTensor w = random_weights(DType::Q4_1, 4, 64, rng);
  std::vector<float> x(2 * 32), y(2 * 4);
  EXPECT_THROW(linear_stored(Tensor::contiguous(x.data(), DType::F32, {2, 32}), w.view(),
                             Tensor::contiguous(y.data(), DType::F32, {2, 4})),
               Error);
  const HostTensor i8 = HostTensor::empty(DType::I8, {4, 64});
  std::vector<float> x2(64), y2(4);
  EXPECT_THROW(linear_stored(Tensor::contiguous(x2.data(), DType::F32, {1, 64}), i8.view(),
                             Tensor::contiguous(y2.data(), DType::F32, {1, 4})),
               Error);
}

}  // namespace
}  // namespace tandem::cpu
