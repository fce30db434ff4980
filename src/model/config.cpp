#include "model/config.h"

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace tandem {

void ModelConfig::validate(const std::string& source) const {
  auto positive = [&](int64_t v, const char* field) {
    TD_CHECK(v > 0, "{}: {} must be positive, got {}", source, field, v);
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(n_layers, "num_hidden_layers");
  positive(n_heads, "num_attention_heads");
  positive(n_kv_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  TD_CHECK(n_layers <= 1024, "{}: num_hidden_layers = {} is beyond any real model (limit 1024)", source, n_layers);
  TD_CHECK(n_heads % n_kv_heads == 0, "{}: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
           source, n_heads, n_kv_heads);
  TD_CHECK(head_dim % 2 == 0, "{}: head_dim ({}) must be even for rotary embeddings", source, head_dim);
  TD_CHECK(std::isfinite(rms_eps) && rms_eps > 0, "{}: rms_norm_eps must be positive, got {}", source, rms_eps);
  TD_CHECK(std::isfinite(rope.theta) && rope.theta > 0, "{}: rope_theta must be positive, got {}", source,
           rope.theta);
  TD_CHECK(rope.scaling == RopeScaling::None || (std::isfinite(rope.factor) && rope.factor > 0),
           "{}: rope_scaling.factor must be positive, got {}", source, rope.factor);
  if (rope.scaling == RopeScaling::Llama3) {
    TD_CHECK(rope.high_freq_factor > rope.low_freq_factor,
             "{}: rope_scaling.high_freq_factor ({}) must exceed low_freq_factor ({})", source,
             rope.high_freq_factor, rope.low_freq_factor);
    TD_CHECK(rope.original_max_positions > 0, "{}: rope_scaling.original_max_position_embeddings must be positive",
             source);
  }
  TD_CHECK(rope.freq_factors.empty() || int64_t(rope.freq_factors.size()) * 2 == head_dim,
           "{}: {} rope frequency factors for head_dim {} (need head_dim / 2)", source, rope.freq_factors.size(),
           head_dim);
  TD_CHECK(sliding_window >= 0, "{}: sliding_window must be >= 0, got {}", source, sliding_window);
  for (int32_t eos : eos_token_ids)
    TD_CHECK(eos >= 0 && eos < vocab_size, "{}: eos_token_id {} is outside the vocabulary (size {})", source, eos,
             vocab_size);
}

std::vector<float> rope_inv_freq(const ModelConfig& cfg) {
  const int64_t half = cfg.head_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  const RopeConfig& r = cfg.rope;
  for (int64_t i = 0; i < half; ++i) {
    // HF: 1 / base ** (arange(0, dim, 2) / dim), in fp32.
    const float exponent = float(2 * i) / float(cfg.head_dim);
    float f = 1.0f / std::pow(float(r.theta), exponent);
    if (r.scaling == RopeScaling::Linear) {
      f = f / float(r.factor);
    } else if (r.scaling == RopeScaling::Llama3) {
      // transformers modeling_rope_utils._compute_llama3_parameters
      const float factor = float(r.factor), lo = float(r.low_freq_factor), hi = float(r.high_freq_factor);
      const float old_ctx = float(r.original_max_positions);
      const float low_freq_wavelen = old_ctx / lo, high_freq_wavelen = old_ctx / hi;
      const float wavelen = 2.0f * std::numbers::pi_v<float> / f;
      float scaled = wavelen > low_freq_wavelen ? f / factor : f;
      const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
      if (medium) {
        const float smooth = (old_ctx / wavelen - lo) / (hi - lo);
        scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
      }
      f = scaled;
    }
    if (!r.freq_factors.empty()) f = f / r.freq_factors[size_t(i)];
    inv[size_t(i)] = f;
  }
  return inv;
}

}  // namespace tandem
