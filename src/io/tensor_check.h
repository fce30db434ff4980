// NaN/Inf scan of model weights (llama.cpp's --check-tensors). A model file with a non-finite weight loads
// silently and then produces non-finite logits many steps later without naming a tensor; this names it.
// Float tensors (f32, f16, bf16, f64, f8) are checked element by element; quantized GGUF tensors through the f16
// scales of their blocks (a non-finite scale poisons the whole block; the packed integers cannot be non-finite).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace tandem {

struct NonFiniteCount {
  int64_t nan = 0;
  int64_t inf = 0;
  // Element index (row-major) of the first non-finite value; for quantized types, of the first element of
  // the first block with a non-finite scale. -1 when none.
  int64_t first = -1;
  bool in_scales = false;  // the counts are of block scales (quantized types), not of elements
  bool any() const { return nan + inf > 0; }
};

// Counts the non-finite values of a contiguous CPU tensor (integer types: none). Parallel over chunks.
NonFiniteCount count_non_finite(const Tensor& t);

struct CheckedTensor {
  std::string name;  // as the file names it
  std::string file;  // which file holds it
  Tensor view;
};

struct TensorFinding {
  std::string name;
  std::string file;
  DType dtype = DType::F32;
  NonFiniteCount counts;
};

// The tensors holding NaN or Inf, in input order.
std::vector<TensorFinding> check_tensors(std::span<const CheckedTensor> tensors);

// One line per finding, e.g. "model.norm.weight (f32, in /m/model.safetensors): 1 NaN, 2 Inf, first at
// element 5"; at most `max_lines` lines, then "... and N more".
std::string describe_findings(std::span<const TensorFinding> findings, size_t max_lines = 20);

}  // namespace tandem
