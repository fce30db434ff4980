// The f16 GEMV kernels (gemv_kernels.inc says why one file a dtype).
#include "cuda/gemv_kernels.inc"

namespace tandem::cuda::gemv_detail {
template void launch<__half>(const Launch<__half>&, int64_t, GemvTuning, cudaStream_t);
}  // namespace tandem::cuda::gemv_detail
