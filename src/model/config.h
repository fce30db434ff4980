// The model hyper-parameters every path needs, independent of where they were read from (HF or GGUF).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tandem {

enum class RopeScaling : uint8_t { None, Linear, Llama3 };

struct RopeConfig {
  double theta = 10000.0;
  RopeScaling scaling = RopeScaling::None;
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_positions = 8192;  // llama3
  // GGUF files carry llama3-style scaling as per-frequency divisors (tensor rope_freqs.weight).
  std::vector<float> freq_factors;
};

struct ModelConfig {
  std::string arch;          // "llama" | "qwen2" | "mistral"
  std::string hf_class;      // e.g. "LlamaForCausalLM" (empty for non-HF sources)
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  double rms_eps = 1e-6;
  RopeConfig rope;
  bool tie_embeddings = false;
  bool qkv_bias = false;
  bool o_bias = false;
  int64_t max_positions = 0;
  int64_t sliding_window = 0;  // 0: full attention; else a query at p sees keys in (p - window, p]
  int32_t bos_token_id = -1;
  std::vector<int32_t> eos_token_ids;

  int64_t q_dim() const { return n_heads * head_dim; }
  int64_t kv_dim() const { return n_kv_heads * head_dim; }
  int64_t qkv_dim() const { return q_dim() + 2 * kv_dim(); }
  // Throws naming `source` and the field when sizes are missing or inconsistent.
  void validate(const std::string& source) const;
};

// Per-position rotary inverse frequencies (head_dim / 2 of them), scaling applied as HF does.
std::vector<float> rope_inv_freq(const ModelConfig& cfg);

}  // namespace tandem
