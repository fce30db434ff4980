// The byte and FLOP accounting `tandem bench` reports against, written once and unit-tested by hand.
//
// Decode (one step, `batch` sequences each holding `context` cached tokens before the step):
//   bytes read = every weight matrix once (q|k|v, o, gate|up, down per layer, norms, the final norm and the
//                lm_head; a tied lm_head is the embedding table, read once as the lm_head) + the gathered
//                embedding rows (batch x hidden) + KV read (each sequence reads context + 1 positions of K and V
//                in every layer, the new token's included).
// Prefill (one sequence of `tokens`): FLOPs = 2 x tokens x (matmul parameters per layer x layers) + 2 x hidden
//   x vocab (one logits row) + causal attention 4 x layers x heads x head_dim x tokens (tokens + 1) / 2 (QK^T
//   and PV, each 2 FLOPs per multiply-add, over the lower triangle including the diagonal).
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "model/config.h"

namespace tandem {

// Elements of the matmul weights of one layer: q|k|v, o, gate|up, down.
int64_t layer_matmul_params(const ModelConfig& c);
// Bytes of every weight a decode step reads (excluding the embedding table unless it is the tied lm_head).
int64_t decode_weight_bytes(const ModelConfig& c, DType dtype);
// K and V bytes one step reads for `batch` sequences with `context` cached tokens each.
int64_t decode_kv_bytes(const ModelConfig& c, DType dtype, int64_t batch, int64_t context);
// Total bytes read by one decode step.
int64_t decode_step_bytes(const ModelConfig& c, DType dtype, int64_t batch, int64_t context);
double prefill_gemm_flops(const ModelConfig& c, int64_t tokens);
double prefill_attention_flops(const ModelConfig& c, int64_t tokens);
double prefill_flops(const ModelConfig& c, int64_t tokens);

// Known real-model shapes for --random-weights: "llama-3.2-1b-shape", "llama-3.1-8b-shape",
// "qwen2.5-7b-shape", "qwen2.5-0.5b-shape", "smollm2-135m-shape". Throws listing them for an unknown name.
ModelConfig shape_config(const std::string& name);
std::string known_shapes();

}  // namespace tandem
