// Checking macros for every CUDA runtime and cuBLAS call: a failure throws tandem::Error naming the call,
// the file and the line, and the library's own message.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/error.h"

#define TD_CUDA_CHECK(call)                                                                              \
  do {                                                                                                   \
    const cudaError_t td_err_ = (call);                                                                  \
    if (td_err_ != cudaSuccess)                                                                          \
      ::tandem::fail("CUDA error {} ({}) in {} at {}:{}", cudaGetErrorName(td_err_),                     \
                     cudaGetErrorString(td_err_), #call, __FILE__, __LINE__);                            \
  } while (0)

#define TD_CUBLAS_CHECK(call)                                                                            \
  do {                                                                                                   \
    const cublasStatus_t td_st_ = (call);                                                                \
    if (td_st_ != CUBLAS_STATUS_SUCCESS)                                                                 \
      ::tandem::fail("cuBLAS error {} ({}) in {} at {}:{}", cublasGetStatusName(td_st_),                 \
                     cublasGetStatusString(td_st_), #call, __FILE__, __LINE__);                          \
  } while (0)

// After a kernel launch: catches bad launch configurations at the launch site.
#define TD_CUDA_CHECK_LAUNCH() TD_CUDA_CHECK(cudaGetLastError())
