// The bf16 GEMV kernels (gemv_kernels.inc says why one file a dtype).
#include "cuda/gemv_kernels.inc"

namespace tandem::cuda::gemv_detail {
template void launch<__nv_bfloat16>(const Launch<__nv_bfloat16>&, int64_t, GemvTuning, cudaStream_t);
}  // namespace tandem::cuda::gemv_detail
