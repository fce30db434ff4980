// Weights kept in their stored format for the fast CPU path (cpu/quant_dot.h reads GGUF blocks directly).
//
// load_stored_model gives the same ModelWeights as load_reference_model (shapes checked against the config, q|k|v
// and gate|up fused, GGUF Q/K rows un-permuted to HF's rotate-half order), but every matrix keeps its file dtype
// when `keep_format(dtype)` says the kernels read it: fusing concatenates rows and the un-permutation moves whole
// rows, both exact on block formats because a row's blocks depend on that row only. Norms and biases are f32. The
// embedding table keeps its format too (the embed stage dequantizes the rows it needs), and a tied lm_head is that
// same table. A matrix whose dtype the kernels do not read, or a fused matrix whose parts differ in dtype, is
// widened to f32 (exact). Memory after load is close to the file size.
#pragma once
#include <functional>
#include <memory>

#include "model/model.h"

namespace tandem {

using KeepFormat = std::function<bool(DType)>;
std::unique_ptr<Model> load_stored_model(const ModelSource& source, const KeepFormat& keep_format,
                                         void (*progress)(int64_t done, int64_t total) = nullptr);

}  // namespace tandem
