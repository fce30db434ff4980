#include "cuda/gemm.cuh"

#include <cstdint>

#include "core/checks.h"
#include "cuda/check.h"

namespace tandem::cuda {
namespace {

cudaDataType_t cuda_type(DType d) {
  switch (d) {
    case DType::F32: return CUDA_R_32F;
    case DType::F16: return CUDA_R_16F;
    case DType::BF16: return CUDA_R_16BF;
    default: fail("linear: unsupported dtype {}", dtype_name(d));
  }
}

// Largest power of two (at most 256) that divides the address: cuBLASLt's heuristic assumes 256-byte aligned
// buffers unless told otherwise, and a row slice of a tensor may be less aligned than that.
uint32_t pointer_alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

// Owners of the cuBLASLt descriptors, so that a throw in between leaks nothing. Destructors don't throw.
struct MatmulDesc {
  cublasLtMatmulDesc_t d = nullptr;
  ~MatmulDesc() {
    if (d) cublasLtMatmulDescDestroy(d);
  }
};
struct Layout {
  cublasLtMatrixLayout_t l = nullptr;
  ~Layout() {
    if (l) cublasLtMatrixLayoutDestroy(l);
  }
};
struct Preference {
  cublasLtMatmulPreference_t p = nullptr;
  ~Preference() {
    if (p) cublasLtMatmulPreferenceDestroy(p);
  }
};

template <typename V>
void set_pref(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t attr, V value) {
  TD_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(p, attr, &value, sizeof(value)));
}

}  // namespace

// Nothing CUDA happens here: the handle and workspace are made by the first linear() call.
Gemm::Gemm() {}

Gemm::~Gemm() {
  // No throw from a destructor: errors at teardown are ignored.
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

void Gemm::linear(const Tensor& x, const Tensor& w, const Tensor& out, cudaStream_t stream) {
  const char* name = "linear";
  check_float_tensor(name, "x", x, Device::CUDA, 2);
  check_float_tensor(name, "w", w, Device::CUDA, 2);
  check_dtype(name, "w (x's dtype)", w, x.dtype);
  check_float_tensor(name, "out", out, Device::CUDA, 2);
  TD_CHECK(out.dtype == x.dtype || out.dtype == DType::F32, "linear: out must be x's dtype {} or f32, got {}",
           dtype_name(x.dtype), out.describe());
  const int64_t T = x.shape[0], K = x.shape[1], N = w.shape[0];
  check_shape(name, "w ([out features, x's in features])", w, {-1, K});
  check_shape(name, "out ([x rows, w rows])", out, {T, N});
  TD_CHECK(N > 0 && K > 0, "linear: empty weight {}", w.describe());
  if (T == 0) return;
  check_data(name, {&x, &w, &out});

  if (!handle_) {
    TD_CUBLAS_CHECK(cublasLtCreate(&handle_));
    TD_CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
  }

  // Row-major out[T, N] = x[T, K] . w[N, K]^T is, read column-major, D (N x T) = op_T(A) . B with
  // A = w as a K x N column-major matrix (ld K), B = x as K x T (ld K), D = out as N x T (ld N).
  const cudaDataType_t in_type = cuda_type(x.dtype), out_type = cuda_type(out.dtype);
  MatmulDesc op;
  TD_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op.d, CUBLAS_COMPUTE_32F, CUDA_R_32F));  // fp32 accumulate, no TF32
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  TD_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.d, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)));
  TD_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.d, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)));
  Layout a, b, d;
  TD_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a.l, in_type, uint64_t(K), uint64_t(N), K));
  TD_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b.l, in_type, uint64_t(K), uint64_t(T), K));
  TD_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.l, out_type, uint64_t(N), uint64_t(T), N));  // C and D

  const uint32_t align_x = pointer_alignment(x.data), align_w = pointer_alignment(w.data),
                 align_out = pointer_alignment(out.data);
  const std::array<int64_t, 8> key{T, N, K, int64_t(x.dtype), int64_t(out.dtype), align_x, align_w, align_out};
  auto it = algo_cache_.find(key);
  if (it == algo_cache_.end()) {
    Preference pref;
    TD_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.p));
    set_pref(pref.p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(workspace_bytes_));
    set_pref(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_w);
    set_pref(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_x);
    set_pref(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_out);
    set_pref(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_out);
    // Split-K partial sums stay fp32: with a 16-bit output, forbid reducing them in the output type (in place or
    // in the workspace); unsplit algorithms are always allowed.
    if (out.dtype != DType::F32)
      set_pref(pref.p, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, uint32_t(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE));
    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    TD_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, op.d, a.l, b.l, d.l, d.l, pref.p, 1, &result, &returned));
    TD_CHECK(returned > 0 && result.state == CUBLAS_STATUS_SUCCESS,
             "linear: cuBLASLt has no algorithm for x {} . w {}^T -> out {} (alignments x {} w {} out {} bytes, "
             "workspace {} bytes)",
             x.describe(), w.describe(), out.describe(), align_x, align_w, align_out, workspace_bytes_);
    it = algo_cache_.emplace(key, result.algo).first;
  }

  const float alpha = 1.0f, beta = 0.0f;
  TD_CUBLAS_CHECK(cublasLtMatmul(handle_, op.d, &alpha, w.data, a.l, x.data, b.l, &beta, out.data, d.l, out.data,
                                 d.l, &it->second, workspace_, workspace_bytes_, stream));
}

}  // namespace tandem::cuda
