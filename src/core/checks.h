// Argument checks shared by every launcher and its CPU twin. Each throws tandem::Error naming the op, the argument
// and the tensor as it is ("rmsnorm: x must be a contiguous 2-D f32/f16/bf16 CUDA tensor, got bf16[3, 65] ...").
// They never touch the data, so they run before any device call and are testable without a GPU.
#pragma once
#include <cstdint>
#include <initializer_list>

#include "core/tensor.h"

namespace tandem {

bool is_float_dtype(DType d);  // f32, f16, bf16

// A contiguous float (f32/f16/bf16) tensor on `device` with `ndim` dims (ndim < 0: any).
void check_float_tensor(const char* op, const char* what, const Tensor& t, Device device, int ndim);
// A contiguous 1-D tensor of `dtype` on `device` with `n` elements (n < 0: any).
void check_index_tensor(const char* op, const char* what, const Tensor& t, Device device, DType dtype, int64_t n);
// t has exactly these dims (-1: any size in that dim).
void check_shape(const char* op, const char* what, const Tensor& t, std::initializer_list<int64_t> dims);
// t has the shape of `like`, any rank ("add: b (a's shape) must have shape [3, 10], got f16[3, 11] ...").
void check_same_shape(const char* op, const char* what, const Tensor& t, const Tensor& like);
// t has dtype `d` ("... must be bf16 like x, got ...").
void check_dtype(const char* op, const char* what, const Tensor& t, DType d);
// Data pointers are set whenever the tensor has elements.
void check_data(const char* op, std::initializer_list<const Tensor*> tensors);

}  // namespace tandem
