#include "model/config.h"

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace tandem {
using namespace config_limits;

int64_t checked_mul(int64_t a, int64_t b, const std::string& source, const std::string& what) {
  int64_t r = 0;
  TD_CHECK(!__builtin_mul_overflow(a, b, &r), "{}: {} = {} x {} overflows int64", source, what, a, b);
  return r;
}

int32_t checked_token_id(int64_t id, const std::string& source, const std::string& field) {
  TD_CHECK(id >= 0 && id <= kMaxTokenId, "{}: {} = {} is not a valid token id (must be 0..{})", source, field, id,
           kMaxTokenId);
  return int32_t(id);
}

void ModelConfig::validate(const std::string& source, const ConfigKeys& k) const {
  // Each size: positive and under its named limit, before any of them is multiplied or divided.
  auto size = [&](int64_t v, const std::string& field, int64_t limit) {
    TD_CHECK(v > 0, "{}: {} must be positive, got {}", source, field, v);
    TD_CHECK(v <= limit, "{}: {} = {} is over the limit of {}", source, field, v, limit);
  };
  size(vocab_size, k.vocab_size, kMaxVocab);
  size(hidden_size, k.hidden_size, kMaxHidden);
  size(intermediate_size, k.intermediate_size, kMaxIntermediate);
  size(n_layers, k.n_layers, kMaxLayers);
  size(n_heads, k.n_heads, kMaxHeads);
  size(n_kv_heads, k.n_kv_heads, kMaxHeads);
  size(head_dim, k.head_dim, kMaxHeadDim);
  size(max_positions, k.max_positions, kMaxContext);
  TD_CHECK(n_heads % n_kv_heads == 0, "{}: {} ({}) is not a multiple of {} ({})", source, k.n_heads, n_heads,
           k.n_kv_heads, n_kv_heads);
  TD_CHECK(head_dim % 2 == 0, "{}: {} ({}) must be even for rotary embeddings", source, k.head_dim, head_dim);
  TD_CHECK(sliding_window >= 0 && sliding_window <= kMaxContext, "{}: {} = {} is outside 0..{}", source,
           k.sliding_window, sliding_window, kMaxContext);

  // The products the loader and the runtime form; the bounds above keep them far from overflow, and these
  // checks keep it so if a limit is ever raised.
  const int64_t q = checked_mul(n_heads, head_dim, source, k.n_heads + " x " + k.head_dim);
  const int64_t kv = checked_mul(n_kv_heads, head_dim, source, k.n_kv_heads + " x " + k.head_dim);
  int64_t layer =
      checked_mul(checked_mul(2, kv, source, "2 x kv_dim") + 2 * q, hidden_size, source, "attention weights per layer");
  layer += checked_mul(3 * intermediate_size, hidden_size, source, "MLP weights per layer");
  checked_mul(layer, n_layers, source, "weights in all layers");
  checked_mul(vocab_size, hidden_size, source, k.vocab_size + " x " + k.hidden_size);
  checked_mul(checked_mul(n_layers, max_positions, source, k.n_layers + " x " + k.max_positions), 2 * kv, source,
              "KV cache elements");

  // Floats: finite, positive and normal (a subnormal double becomes 0 as a float), under their limits.
  auto real = [&](double v, const std::string& field, double lo, double hi) {
    TD_CHECK(std::isfinite(v) && std::isnormal(float(v)) && v >= lo && v <= hi,
             "{}: {} = {} is outside the supported range [{}, {}]", source, field, v, lo, hi);
  };
  real(rms_eps, k.rms_eps, 1e-30, 1.0);
  real(rope.theta, k.rope_theta, 1.0, kMaxRopeTheta);
  if (rope.scaling != RopeScaling::None) real(rope.factor, k.rope_factor, 1e-6, kMaxRopeFactor);
  if (rope.scaling == RopeScaling::Llama3) {
    real(rope.low_freq_factor, k.rope_low_freq, 1e-6, kMaxRopeFactor);
    real(rope.high_freq_factor, k.rope_high_freq, 1e-6, kMaxRopeFactor);
    TD_CHECK(rope.high_freq_factor > rope.low_freq_factor, "{}: {} ({}) must exceed {} ({})", source, k.rope_high_freq,
             rope.high_freq_factor, k.rope_low_freq, rope.low_freq_factor);
    size(rope.original_max_positions, k.rope_original_max, kMaxContext);
  }
  TD_CHECK(rope.freq_factors.empty() || int64_t(rope.freq_factors.size()) * 2 == head_dim,
           "{}: {} has {} values for {} {} (need head_dim / 2)", source, k.rope_freqs, rope.freq_factors.size(),
           k.head_dim, head_dim);
  for (size_t i = 0; i < rope.freq_factors.size(); ++i)
    TD_CHECK(std::isnormal(rope.freq_factors[i]) && rope.freq_factors[i] > 0,
             "{}: {}[{}] = {} must be a positive, finite divisor", source, k.rope_freqs, i, rope.freq_factors[i]);

  // Ids were range-checked as int32 when read; here they must name a token.
  TD_CHECK(bos_token_id >= -1 && bos_token_id < vocab_size, "{}: {} {} is outside the vocabulary (size {})", source,
           k.bos, bos_token_id, vocab_size);
  for (int32_t eos : eos_token_ids)
    TD_CHECK(eos >= 0 && eos < vocab_size, "{}: {} {} is outside the vocabulary (size {})", source, k.eos, eos,
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
