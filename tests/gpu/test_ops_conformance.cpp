// Conformance of the single-op launchers (embed, norms, RoPE, elementwise, GEMM) against their CPU twins, and
// the coverage test over every launcher; criteria in conformance.h.
#include "conformance.h"

namespace tandem {
namespace {

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
      for (int64_t H : kNormWidths) {
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
