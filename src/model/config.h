// The model hyper-parameters every path needs, independent of where they were read from (HF or GGUF).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tandem {

// Upper bounds on every size, count and id a model config (config.json or GGUF metadata) may declare. They sit
// far above any released model and low enough that every product the engine forms from them (layers x context
// x kv heads x head_dim x bytes, vocab x hidden, ...) fits in int64, so a hostile config fails here with the
// limit named instead of wrapping later. Change them here only.
namespace config_limits {
inline constexpr int64_t kMaxHidden = 65536;
inline constexpr int64_t kMaxIntermediate = 1 << 20;
inline constexpr int64_t kMaxLayers = 1024;
inline constexpr int64_t kMaxHeads = 1024;
inline constexpr int64_t kMaxHeadDim = 1024;
inline constexpr int64_t kMaxVocab = 1 << 24;
inline constexpr int64_t kMaxContext = 1 << 24;     // max_position_embeddings, sliding_window, original context
inline constexpr int64_t kMaxTokenId = 2147483647;  // ids are int32 everywhere after loading
inline constexpr int64_t kMaxEosIds = 1024;         // entries in an eos_token_id list
inline constexpr double kMaxRopeTheta = 1e15;
inline constexpr double kMaxRopeFactor = 1e6;  // rope_scaling factors (factor, low/high_freq_factor)
}  // namespace config_limits

enum class RopeScaling : uint8_t { None, Linear, Llama3 };

struct RopeConfig {
  double theta = 10000.0;
  RopeScaling scaling = RopeScaling::None;
  double factor = 1.0;
  double low_freq_factor = 1.0;           // llama3
  double high_freq_factor = 4.0;          // llama3
  int64_t original_max_positions = 8192;  // llama3
  // GGUF files carry llama3-style scaling as per-frequency divisors (tensor rope_freqs.weight).
  std::vector<float> freq_factors;
};

// How the source file names each field, so that errors point at the key to fix. Defaults: HF config.json.
struct ConfigKeys {
  std::string vocab_size = "vocab_size";
  std::string hidden_size = "hidden_size";
  std::string intermediate_size = "intermediate_size";
  std::string n_layers = "num_hidden_layers";
  std::string n_heads = "num_attention_heads";
  std::string n_kv_heads = "num_key_value_heads";
  std::string head_dim = "head_dim";
  std::string rms_eps = "rms_norm_eps";
  std::string rope_theta = "rope_theta";
  std::string rope_factor = "rope_scaling.factor";
  std::string rope_low_freq = "rope_scaling.low_freq_factor";
  std::string rope_high_freq = "rope_scaling.high_freq_factor";
  std::string rope_original_max = "rope_scaling.original_max_position_embeddings";
  std::string rope_freqs = "rope_freqs.weight";
  std::string max_positions = "max_position_embeddings";
  std::string sliding_window = "sliding_window";
  std::string bos = "bos_token_id";
  std::string eos = "eos_token_id";
};

struct ModelConfig {
  std::string arch;      // "llama" | "qwen2" | "mistral"
  std::string hf_class;  // e.g. "LlamaForCausalLM" (empty for non-HF sources)
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

  // Safe only after validate(), which bounds each factor.
  int64_t q_dim() const { return n_heads * head_dim; }
  int64_t kv_dim() const { return n_kv_heads * head_dim; }
  int64_t qkv_dim() const { return q_dim() + 2 * kv_dim(); }
  // Throws naming `source`, the field (as `keys` spells it), the value and the limit when a size is missing,
  // out of range or inconsistent, or when a product of sizes would overflow.
  void validate(const std::string& source, const ConfigKeys& keys = {}) const;
};

// `a * b` for sizes read from a config; throws "<source>: <what> = a x b overflows int64" instead of wrapping.
int64_t checked_mul(int64_t a, int64_t b, const std::string& source, const std::string& what);
// A token id read as int64 (JSON, GGUF), checked to lie in 0..kMaxTokenId before it is narrowed to int32.
int32_t checked_token_id(int64_t id, const std::string& source, const std::string& field);

// Per-position rotary inverse frequencies (head_dim / 2 of them), scaling applied as HF does.
std::vector<float> rope_inv_freq(const ModelConfig& cfg);

}  // namespace tandem
