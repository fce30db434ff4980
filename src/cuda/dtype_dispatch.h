// Host-side dispatch from a runtime activation dtype to the CUDA element type a kernel template takes:
// dispatch_float(dt, "op", [&](auto tag) { using T = typename decltype(tag)::type; ... }).
// (A .h, not a .cuh: it declares no launcher.)
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "core/dtype.h"
#include "core/error.h"

namespace tandem::cuda {

template <typename F>
void dispatch_float(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::F32: f(std::type_identity<float>{}); break;
    case DType::F16: f(std::type_identity<__half>{}); break;
    case DType::BF16: f(std::type_identity<__nv_bfloat16>{}); break;
    default: fail("{}: unsupported dtype {}", op, dtype_name(dt));
  }
}

}  // namespace tandem::cuda
