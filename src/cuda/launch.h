// Programmatic dependent launch (PDL, sm_90): a kernel launched with launch_pdl may start while the kernel before
// it on the stream is still finishing, so its launch, block scheduling and prologue overlap that kernel's tail
// (at decode, about a dozen small kernels a layer each pay 1-2 us of it otherwise).
//
// The contract for a kernel launched this way: pdl_launch_dependents() early (it lets the *next* kernel be
// scheduled once every block of this one has started), and pdl_wait() before the first access to memory that an
// earlier kernel of the stream writes or reads (activations, the KV cache, workspaces): pdl_wait returns once the
// kernel before has completed and its writes are visible, and since that kernel waited for its own predecessor
// before finishing, everything earlier is complete too. Only data no kernel writes (weights, and the step's
// tables and positions, copied before the step's first kernel) may be read before pdl_wait. Every block reaches
// pdl_wait on every path that touches such memory; a block that touches none may exit without it. Kernels
// launched plainly (cuBLAS, FlashInfer) are full barriers, as before. Both calls are no-ops for a plain launch.
// Memory an earlier kernel writes is read with plain (coherent) loads: no __ldg and no `const T* __restrict__`
// parameter for it (the compiler turns those loads into ld.global.nc, which is only defined for memory nothing
// writes while the kernel runs, and here the kernel before is still running). On an H100 (12-06) the unfused
// gate_up_silu, reading h that way, returned NaN (h's 0xFF fill) in up to 2/3 of its outputs, in 6 test cases of 72;
// with plain loads the test passed in both runs since (the old code was not rerun side by side).
// tests/gpu/test_pdl_contract.cpp holds the GEMVs and norms to this with a kernel before that writes late on purpose.
// set_programmatic_launch(false) (`--no-pdl`) launches everything plainly, for comparisons.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <utility>

#include "cuda/check.h"

namespace tandem::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

inline std::atomic<bool>& programmatic_launch_flag() {
  static std::atomic<bool> on{true};
  return on;
}
inline void set_programmatic_launch(bool on) { programmatic_launch_flag().store(on); }
inline bool programmatic_launch() { return programmatic_launch_flag().load(std::memory_order_relaxed); }

// kernel<<<grid, block, smem, stream>>>(args...) with the PDL attribute (when enabled); checks the launch.
template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = programmatic_launch() ? 1 : 0;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  TD_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(std::forward<Args>(args))...));
}

}  // namespace tandem::cuda
