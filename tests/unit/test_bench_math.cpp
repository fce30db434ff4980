// Bench accounting against hand-computed cases.
#include <gtest/gtest.h>

#include "core/error.h"
#include "runtime/bench_math.h"

namespace tandem {
namespace {

ModelConfig tiny() {
  ModelConfig c;
  c.vocab_size = 10;
  c.hidden_size = 4;
  c.intermediate_size = 6;
  c.n_layers = 2;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 2;
  c.max_positions = 100;
  return c;
}

TEST(BenchMath, TinyModelByHand) {
  const ModelConfig c = tiny();
  // q|k|v: 4 x (4 + 2 + 2) = 32; o: 4 x 4 = 16; gate|up: 2 x 4 x 6 = 48; down: 24 -> 120 per layer.
  EXPECT_EQ(layer_matmul_params(c), 120);
  // bf16: (2 layers x (120 + 8 norm) + 4 final norm + 40 lm_head) x 2 bytes = (256 + 44) x 2 = 600.
  EXPECT_EQ(decode_weight_bytes(c, DType::BF16), 600);
  // KV: batch 3 x (context 5 + 1) x 2 layers x 2 (K, V) x kv_dim 2 x 2 bytes = 288.
  EXPECT_EQ(decode_kv_bytes(c, DType::BF16, 3, 5), 288);
  // + gathered embedding rows: 3 x 4 x 2 = 24.
  EXPECT_EQ(decode_step_bytes(c, DType::BF16, 3, 5), 600 + 24 + 288);
  // Prefill of 3 tokens: GEMM 2 x 3 x 120 x 2 = 1440, + logits 2 x 4 x 10 = 80;
  // attention 4 x 2 layers x 2 heads x 2 dims x 3 x 4 / 2 = 192.
  EXPECT_DOUBLE_EQ(prefill_gemm_flops(c, 3), 1520.0);
  EXPECT_DOUBLE_EQ(prefill_attention_flops(c, 3), 192.0);
  EXPECT_DOUBLE_EQ(prefill_flops(c, 3), 1712.0);
}

TEST(BenchMath, BiasesAndRealShapes) {
  ModelConfig c = tiny();
  c.qkv_bias = true;
  EXPECT_EQ(decode_weight_bytes(c, DType::F32), (2 * (120 + 8 + 8) + 4 + 40) * 4);
  // Llama-3.1-8B: 6.98e9 matmul params in the layers + 0.53e9 lm_head -> 15.0 GB of bf16 weights per step,
  // the figure the anchors use (embedding gather excluded).
  const ModelConfig l8 = shape_config("llama-3.1-8b-shape");
  EXPECT_EQ(layer_matmul_params(l8), 4096LL * 6144 + 4096LL * 4096 + 3LL * 4096 * 14336);
  EXPECT_NEAR(double(decode_weight_bytes(l8, DType::BF16)) / 1e9, 15.01, 0.01);
  // Llama-3.2-1B: tied, 2.47 GB per token (anchors section 3).
  EXPECT_NEAR(double(decode_weight_bytes(shape_config("llama-3.2-1b-shape"), DType::BF16)) / 1e9, 2.47, 0.01);
  EXPECT_THROW(shape_config("gpt-5-shape"), Error);
}

}  // namespace
}  // namespace tandem
