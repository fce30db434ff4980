// The f32 GEMV kernels (gemv_kernels.inc says why one file a dtype).
#include "cuda/gemv_kernels.inc"

namespace tandem::cuda::gemv_detail {
template void launch<float>(const Launch<float>&, int64_t, GemvTuning, cudaStream_t);
}  // namespace tandem::cuda::gemv_detail
