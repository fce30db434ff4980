// GGUF model files (llama.cpp's format): hyper-parameters from `{arch}.*` metadata, tensors by llama.cpp's
// names (blk.N.attn_q.weight, ...). Quantized tensors are dequantized by the loader.
#include <fmt/ranges.h>

#include <map>

#include "core/error.h"
#include "core/file.h"
#include "io/dequant.h"
#include "io/gguf.h"
#include "model/arch.h"
#include "model/model.h"

namespace tandem {
namespace {

class GgufModelSource final : public ModelSource {
 public:
  explicit GgufModelSource(const std::filesystem::path& path) : file_(GgufFile::open(path)) {
    source_ = path.string();
    const std::string arch_name = file_->require_string("general.architecture");
    arch_ = find_arch_by_gguf_name(arch_name);
    TD_CHECK(arch_ != nullptr, "{}: general.architecture '{}' is not supported (supported: {})", source_,
             excerpt(arch_name), supported_gguf_archs());
    read_config(arch_name);
  }

  std::optional<SourceTensor> find(std::string_view canonical) const override {
    const std::string name = gguf_tensor_name(canonical);
    const GgufTensorInfo* t = file_->find_tensor(name);
    if (!t) return std::nullopt;
    TD_CHECK(t->supported(), "{}: tensor '{}' has type {}, which tandem does not support", source_, name,
             t->type_name());
    return SourceTensor{name, source_, t->view()};
  }
  std::string file_tensor_name(std::string_view canonical) const override { return gguf_tensor_name(canonical); }
  bool qk_rows_permuted() const override { return arch_->gguf_qk_permuted; }
  const GgufFile* gguf() const override { return file_.get(); }

  std::string storage_summary() const override {
    std::map<std::string_view, int> counts;
    for (const GgufTensorInfo& t : file_->tensors()) counts[t.type_name()]++;
    std::string s;
    for (auto [d, c] : counts) s += fmt::format("{}{} x{}", s.empty() ? "" : ", ", d, c);
    return s;
  }

 private:
  void read_config(const std::string& a) {
    ModelConfig& c = config_;
    c.arch = std::string(arch_->name);
    auto key = [&](const char* k) { return a + "." + k; };
    ConfigKeys keys = gguf_keys(a);
    c.n_layers = file_->require_int(keys.n_layers);
    c.hidden_size = file_->require_int(keys.hidden_size);
    c.intermediate_size = file_->require_int(keys.intermediate_size);
    c.n_heads = file_->require_int(keys.n_heads);
    c.n_kv_heads = file_->get_int(keys.n_kv_heads).value_or(c.n_heads);
    TD_CHECK(c.n_heads > 0, "{}: {} must be positive, got {}", source_, keys.n_heads, c.n_heads);
    const auto key_len = file_->get_int(key("attention.key_length"));
    const auto rope_dims = file_->get_int(key("rope.dimension_count"));
    if (key_len) {
      c.head_dim = *key_len;
    } else if (rope_dims) {
      c.head_dim = *rope_dims;
      keys.head_dim = key("rope.dimension_count");
    } else {
      TD_CHECK(c.hidden_size % c.n_heads == 0, "{}: {} ({}) is not divisible by {} ({}) and no key_length is given",
               source_, keys.hidden_size, c.hidden_size, keys.n_heads, c.n_heads);
      c.head_dim = c.hidden_size / c.n_heads;
      keys.head_dim = keys.hidden_size + " / " + keys.n_heads;
    }
    TD_CHECK(!rope_dims || *rope_dims == c.head_dim,
             "{}: partial rotary embeddings ({} = {} < head_dim {}) are not "
             "supported",
             source_, key("rope.dimension_count"), *rope_dims, c.head_dim);
    c.rms_eps = file_->get_float(keys.rms_eps).value_or(1e-5);
    c.rope.theta = file_->get_float(keys.rope_theta).value_or(10000.0);
    c.max_positions = file_->get_int(keys.max_positions).value_or(4096);
    if (auto type = file_->get_string(key("rope.scaling.type")); type && *type != "none") {
      TD_CHECK(*type == "linear", "{}: {} '{}' is not supported (supported: none, linear)", source_,
               key("rope.scaling.type"), excerpt(*type));
      c.rope.scaling = RopeScaling::Linear;
      c.rope.factor = file_->get_float(keys.rope_factor).value_or(1.0);
    }
    if (const GgufTensorInfo* f = file_->find_tensor("rope_freqs.weight")) {
      // Bounded before dequantizing: one divisor per rotary frequency pair.
      TD_CHECK(f->shape.size() == 1 && f->shape[0] <= config_limits::kMaxHeadDim / 2,
               "{}: rope_freqs.weight must be 1-D with at most {} values, got shape [{}]", source_,
               config_limits::kMaxHeadDim / 2, fmt::join(f->shape, ", "));
      HostTensor factors = dequantize_to_f32(f->view());
      c.rope.freq_factors.assign(factors.f32(), factors.f32() + factors.numel());
    }
    // Vocabulary size: the embedding's row count is authoritative.
    const GgufTensorInfo& embd = file_->tensor("token_embd.weight");
    TD_CHECK(embd.shape.size() == 2, "{}: token_embd.weight must be 2-D, got {} dims", source_, embd.shape.size());
    c.vocab_size = embd.shape[0];
    if (auto tokens = file_->get_string_array("tokenizer.ggml.tokens")) {
      TD_CHECK(int64_t(tokens->size()) == c.vocab_size,
               "{}: tokenizer.ggml.tokens has {} entries but token_embd.weight has {} rows", source_, tokens->size(),
               c.vocab_size);
    }
    c.tie_embeddings = file_->find_tensor("output.weight") == nullptr;
    c.qkv_bias = file_->find_tensor("blk.0.attn_q.bias") != nullptr;
    c.o_bias = file_->find_tensor("blk.0.attn_output.bias") != nullptr;
    // Ids are range-checked as int64 before they are narrowed to int32.
    auto id = [&](const char* k) -> std::optional<int32_t> {
      if (auto v = file_->get_int(k)) return checked_token_id(*v, source_, k);
      return std::nullopt;
    };
    if (auto bos = id("tokenizer.ggml.bos_token_id")) c.bos_token_id = *bos;
    if (auto eos = id("tokenizer.ggml.eos_token_id")) c.eos_token_ids.push_back(*eos);
    if (auto eot = id("tokenizer.ggml.eot_token_id"))
      if (c.eos_token_ids.empty() || c.eos_token_ids[0] != *eot) c.eos_token_ids.push_back(*eot);
    c.validate(source_, keys);
  }

  // The metadata keys each config field comes from, for messages.
  static ConfigKeys gguf_keys(const std::string& a) {
    ConfigKeys k;
    k.vocab_size = "token_embd.weight rows";
    k.hidden_size = a + ".embedding_length";
    k.intermediate_size = a + ".feed_forward_length";
    k.n_layers = a + ".block_count";
    k.n_heads = a + ".attention.head_count";
    k.n_kv_heads = a + ".attention.head_count_kv";
    k.head_dim = a + ".attention.key_length";
    k.rms_eps = a + ".attention.layer_norm_rms_epsilon";
    k.rope_theta = a + ".rope.freq_base";
    k.rope_factor = a + ".rope.scaling.factor";
    k.max_positions = a + ".context_length";
    k.bos = "tokenizer.ggml.bos_token_id";
    k.eos = "tokenizer.ggml.eos_token_id / eot_token_id";
    return k;
  }

  std::unique_ptr<GgufFile> file_;
  const ArchSpec* arch_ = nullptr;
};
}  // namespace

std::unique_ptr<ModelSource> open_gguf_model_source(const std::filesystem::path& path) {
  return std::make_unique<GgufModelSource>(path);
}

}  // namespace tandem
