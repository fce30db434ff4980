#include "runtime/bench_math.h"

#include <string>

#include "core/error.h"

namespace tandem {

int64_t layer_matmul_params(const ModelConfig& c) {
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  return H * c.qkv_dim() + c.q_dim() * H + 2 * H * I + I * H;
}

int64_t decode_weight_bytes(const ModelConfig& c, DType dtype) {
  const int64_t e = dtype_block_bytes(dtype);
  const int64_t H = c.hidden_size;
  int64_t per_layer = layer_matmul_params(c) + 2 * H;  // + attn_norm, mlp_norm
  if (c.qkv_bias) per_layer += c.qkv_dim();
  if (c.o_bias) per_layer += H;
  return (c.n_layers * per_layer + H /* final norm */ + c.vocab_size * H /* lm_head */) * e;
}

int64_t decode_kv_bytes(const ModelConfig& c, DType dtype, int64_t batch, int64_t context) {
  return batch * (context + 1) * c.n_layers * 2 * c.kv_dim() * dtype_block_bytes(dtype);
}

int64_t decode_step_bytes(const ModelConfig& c, DType dtype, int64_t batch, int64_t context) {
  return decode_weight_bytes(c, dtype) + batch * c.hidden_size * dtype_block_bytes(dtype) +
         decode_kv_bytes(c, dtype, batch, context);
}

double prefill_gemm_flops(const ModelConfig& c, int64_t tokens) {
  return 2.0 * double(tokens) * double(layer_matmul_params(c)) * double(c.n_layers) +
         2.0 * double(c.hidden_size) * double(c.vocab_size);
}

double prefill_attention_flops(const ModelConfig& c, int64_t tokens) {
  return 4.0 * double(c.n_layers) * double(c.n_heads) * double(c.head_dim) * double(tokens) * double(tokens + 1) /
         2.0;
}

double prefill_flops(const ModelConfig& c, int64_t tokens) {
  return prefill_gemm_flops(c, tokens) + prefill_attention_flops(c, tokens);
}

namespace {
ModelConfig llama_like(const char* arch, int64_t V, int64_t H, int64_t I, int64_t L, int64_t nh, int64_t nkv,
                       double theta, bool tied, int64_t ctx) {
  ModelConfig c;
  c.arch = arch;
  c.vocab_size = V;
  c.hidden_size = H;
  c.intermediate_size = I;
  c.n_layers = L;
  c.n_heads = nh;
  c.n_kv_heads = nkv;
  c.head_dim = H / nh;
  c.rope.theta = theta;
  c.tie_embeddings = tied;
  c.max_positions = ctx;
  c.rms_eps = 1e-5;
  return c;
}
ModelConfig with_llama3(ModelConfig c, double factor) {
  c.rope.scaling = RopeScaling::Llama3;
  c.rope.factor = factor;
  c.rope.low_freq_factor = 1.0;
  c.rope.high_freq_factor = 4.0;
  c.rope.original_max_positions = 8192;
  return c;
}
}  // namespace

ModelConfig shape_config(const std::string& name) {
  ModelConfig c;
  if (name == "llama-3.2-1b-shape") {
    c = with_llama3(llama_like("llama", 128256, 2048, 8192, 16, 32, 8, 500000.0, true, 131072), 32.0);
  } else if (name == "llama-3.1-8b-shape") {
    c = with_llama3(llama_like("llama", 128256, 4096, 14336, 32, 32, 8, 500000.0, false, 131072), 8.0);
  } else if (name == "qwen2.5-7b-shape") {
    c = llama_like("qwen2", 152064, 3584, 18944, 28, 28, 4, 1000000.0, false, 32768);
    c.qkv_bias = true;
    c.rms_eps = 1e-6;
  } else if (name == "qwen2.5-0.5b-shape") {
    c = llama_like("qwen2", 151936, 896, 4864, 24, 14, 2, 1000000.0, true, 32768);
    c.qkv_bias = true;
    c.rms_eps = 1e-6;
  } else if (name == "smollm2-135m-shape") {
    c = llama_like("llama", 49152, 576, 1536, 30, 9, 3, 100000.0, true, 8192);
  } else {
    fail("--random-weights {}: unknown shape (known: {})", name, known_shapes());
  }
  c.validate(name);
  return c;
}

std::string known_shapes() {
  return "llama-3.2-1b-shape, llama-3.1-8b-shape, qwen2.5-7b-shape, qwen2.5-0.5b-shape, smollm2-135m-shape";
}

}  // namespace tandem
