// The GEMV launchers: argument checks, the tuning and the dtype; the kernels are in gemv_kernels.inc.
#include "cuda/gemv.cuh"

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>

#include "core/checks.h"
#include "core/error.h"
#include "cuda/dtype_dispatch.h"
#include "cuda/gemv_kernels.inc"
#include "cuda/norm.cuh"

namespace tandem::cuda {
namespace {
using namespace gemv_detail;

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// What the fused launchers add to the plain ones (checked by them).
struct FuseArgs {
  Fuse fuse = Fuse::none;
  const Tensor* norm_w = nullptr;
  float eps = 0.0f;
  const Tensor* bias = nullptr;  // may be an empty view
};

void run(Kernel k, const char* op, const Tensor& x, const Tensor& w, const Tensor& out, int64_t N,
         std::optional<GemvTuning> tuning, cudaStream_t stream, const FuseArgs& fa = {}) {
  const int64_t T = x.shape[0], K = x.shape[1];
  TD_CHECK(T <= kGemvMaxRows, "{}: {} rows; the GEMV kernel takes 1..{} (use the GEMM for more)", op, T,
           kGemvMaxRows);
  if (T == 0) return;
  TD_CHECK(K > 0, "{}: empty rows in {}", op, x.describe());
  check_data(op, {&x, &w, &out});
  if (fa.fuse == Fuse::rmsnorm) {
    check_data(op, {fa.norm_w});
    TD_CHECK(gemv_norm_fits(T, K, x.dtype), "{}: {} rows of {} {} values do not fit the block's shared memory "
             "(gemv_norm_fits)", op, T, K, dtype_name(x.dtype));
  }
  const int64_t elem = int64_t(dtype_block_bytes(x.dtype));
  bool vec = (K * elem) % 16 == 0 && aligned16(x.data) && aligned16(w.data);
  if (fa.fuse == Fuse::rmsnorm) vec = vec && aligned16(fa.norm_w->data);
  // rmsnorm's sum order for these rows (norm.cuh); the unfused rmsnorm's output would sit where x does here.
  const bool norm_chunks =
      fa.fuse == Fuse::rmsnorm && rmsnorm_sums_by_chunks(x.dtype, K, {x.data, fa.norm_w->data, x.data});
  dispatch_float(x.dtype, op, [&](auto tag) {
    using D = typename decltype(tag)::type;
    Fused<D> f;
    if (fa.norm_w) f.norm_w = fa.norm_w->ptr<const D>(), f.eps = fa.eps, f.norm_chunks = norm_chunks;
    if (fa.bias && fa.bias->data) f.bias = fa.bias->ptr<const D>();
    const GemvTuning t = tuning ? *tuning : gemv_tuning(T, k == Kernel::gate_up_silu ? 2 * N : N, K);
    const Launch<D> l{k, fa.fuse, x, w, out, N, K, vec, f};
    launch<D>(l, T, t == GemvTuning::deep ? t : GemvTuning::occupancy, stream);
  });
}

}  // namespace

namespace {
// TANDEM_GEMV_TUNING=occupancy|deep|cublas (read once): one tuning for every shape, for measuring them.
std::optional<GemvTuning> forced_tuning() {
  static const std::optional<GemvTuning> forced = []() -> std::optional<GemvTuning> {
    const char* e = std::getenv("TANDEM_GEMV_TUNING");
    if (!e || !*e) return std::nullopt;
    const std::string v(e);
    if (v == "occupancy") return GemvTuning::occupancy;
    if (v == "deep") return GemvTuning::deep;
    if (v == "cublas") return GemvTuning::cublas;
    fail("TANDEM_GEMV_TUNING={}: expected occupancy, deep or cublas", v);
  }();
  return forced;
}
}  // namespace

GemvTuning gemv_tuning(int64_t rows, int64_t N, int64_t K) {
  if (rows > kGemvMaxRows) return GemvTuning::cublas;
  if (auto f = forced_tuning()) return *f;
  if (rows > kGemvFasterRows) return GemvTuning::cublas;
  // H200, bf16, batch 1 (GPU time per projection over the layers, one call): deep wins where the output is at
  // least as wide as the input (8B gate_up 1.87 ms vs 2.58 occupancy vs 2.09 cuBLASLt; qkv 0.84 vs 0.88 vs 0.86;
  // 1B gate_up 0.37 vs 0.48), occupancy where the input is wider (8B down 1.16 ms vs 1.28 deep: one wave of
  // 1024 blocks at 8 an SM against several at deep's occupancy).
  return K <= N ? GemvTuning::deep : GemvTuning::occupancy;
}

bool gemv_norm_fits(int64_t rows, int64_t K, DType dtype) {
  return rows >= 1 && K >= 1 && rows * K * int64_t(dtype_block_bytes(dtype)) <= 48 * 1024;
}

bool gemv_fuses(int64_t rows, int64_t K, DType dtype) {
  return rows >= 1 && rows <= kGemvFusedMaxRows && gemv_tuning(rows, 1, 1) != GemvTuning::cublas &&
         gemv_norm_fits(rows, K, dtype);
}

namespace {
void check_gate_up(const char* op, const Tensor& x, const Tensor& w, const Tensor& out) {
  check_float_tensor(op, "x", x, Device::CUDA, 2);
  const int64_t T = x.shape[0], H = x.shape[1];
  check_float_tensor(op, "w (gate | up)", w, Device::CUDA, 2);
  check_dtype(op, "w (x's dtype)", w, x.dtype);
  TD_CHECK(w.shape[1] == H && w.shape[0] % 2 == 0 && w.shape[0] > 0,
           "gate_up_silu: w must be [2I, {}] (gate rows, then up rows) for x {}, got {}", H, x.describe(),
           w.describe());
  const int64_t I = w.shape[0] / 2;
  check_float_tensor(op, "out", out, Device::CUDA, 2);
  check_dtype(op, "out (x's dtype)", out, x.dtype);
  check_shape(op, "out ([T, I])", out, {T, I});
}

void check_linear(const char* op, const Tensor& x, const Tensor& w, const Tensor& out) {
  check_float_tensor(op, "x", x, Device::CUDA, 2);
  const int64_t T = x.shape[0], K = x.shape[1];
  check_float_tensor(op, "w", w, Device::CUDA, 2);
  check_dtype(op, "w (x's dtype)", w, x.dtype);
  check_shape(op, "w ([out features, x's in features])", w, {-1, K});
  const int64_t N = w.shape[0];
  TD_CHECK(N > 0, "linear_gemv: empty weight {}", w.describe());
  check_float_tensor(op, "out", out, Device::CUDA, 2);
  check_dtype(op, "out (x's dtype)", out, x.dtype);
  check_shape(op, "out ([T, N])", out, {T, N});
}

FuseArgs norm_args(const char* op, const Tensor& x, const Tensor& norm_w, float eps) {
  check_float_tensor(op, "norm weight", norm_w, Device::CUDA, 1);
  check_dtype(op, "norm weight (x's dtype)", norm_w, x.dtype);
  check_shape(op, "norm weight ([x's features])", norm_w, {x.shape[1]});
  TD_CHECK(eps >= 0.0f, "{}: eps must not be negative, got {}", op, eps);
  FuseArgs fa;
  fa.fuse = Fuse::rmsnorm;
  fa.norm_w = &norm_w;
  fa.eps = eps;
  return fa;
}
}  // namespace

void gate_up_silu(const Tensor& x, const Tensor& w, const Tensor& out, cudaStream_t stream,
                  std::optional<GemvTuning> tuning) {
  check_gate_up("gate_up_silu", x, w, out);
  run(Kernel::gate_up_silu, "gate_up_silu", x, w, out, w.shape[0] / 2, tuning, stream);
}

void linear_gemv(const Tensor& x, const Tensor& w, const Tensor& out, cudaStream_t stream,
                 std::optional<GemvTuning> tuning) {
  check_linear("linear_gemv", x, w, out);
  run(Kernel::linear, "linear_gemv", x, w, out, w.shape[0], tuning, stream);
}

void rmsnorm_gate_up_silu(const Tensor& x, const Tensor& norm_w, float eps, const Tensor& w, const Tensor& out,
                          cudaStream_t stream, std::optional<GemvTuning> tuning) {
  const char* op = "rmsnorm_gate_up_silu";
  check_gate_up(op, x, w, out);
  run(Kernel::gate_up_silu, op, x, w, out, w.shape[0] / 2, tuning, stream, norm_args(op, x, norm_w, eps));
}

void rmsnorm_linear_gemv(const Tensor& x, const Tensor& norm_w, float eps, const Tensor& w, const Tensor& out,
                         cudaStream_t stream, std::optional<GemvTuning> tuning) {
  const char* op = "rmsnorm_linear_gemv";
  check_linear(op, x, w, out);
  run(Kernel::linear, op, x, w, out, w.shape[0], tuning, stream, norm_args(op, x, norm_w, eps));
}

void linear_gemv_residual(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& residual,
                          cudaStream_t stream, std::optional<GemvTuning> tuning) {
  const char* op = "linear_gemv_residual";
  check_linear(op, x, w, residual);
  FuseArgs fa;
  fa.fuse = Fuse::residual;
  if (bias.data) {
    check_float_tensor(op, "bias", bias, Device::CUDA, 1);
    check_dtype(op, "bias (x's dtype)", bias, x.dtype);
    check_shape(op, "bias ([N])", bias, {w.shape[0]});
    check_data(op, {&bias});
    fa.bias = &bias;
  }
  run(Kernel::linear, op, x, w, residual, w.shape[0], tuning, stream, fa);
}

}  // namespace tandem::cuda
