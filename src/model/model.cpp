#include "model/model.h"

#include <cstring>
#include <map>

#include "core/error.h"
#include "io/dequant.h"
#include "model/hf_config.h"
#include "io/safetensors.h"
#include "model/arch.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;

class HfModelSource final : public ModelSource {
 public:
  HfModelSource(const fs::path& path) {
    fs::path dir = fs::is_directory(path) ? path : path.parent_path();
    source_ = path.string();
    const fs::path config_path = dir / "config.json";
    TD_CHECK(fs::exists(config_path), "{}: no config.json in {} (an HF model folder needs one)", source_,
             dir.string());
    HfConfig hf = read_hf_config(config_path);
    config_ = hf.config;
    arch_ = hf.arch;
    store_ = TensorStore::open(path);
  }

  std::optional<SourceTensor> find(std::string_view canonical) const override {
    const std::string name = arch_->hf_tensor_name(canonical);
    const TensorEntry* e = store_.find(name);
    if (!e) return std::nullopt;
    return SourceTensor{name, e->file->path(), e->view()};
  }

  std::string file_tensor_name(std::string_view canonical) const override {
    return arch_->hf_tensor_name(canonical);
  }

  std::string storage_summary() const override {
    std::map<std::string_view, int> counts;
    for (const std::string& n : store_.names()) counts[dtype_name(store_.get(n).dtype)]++;
    std::string s;
    for (auto [d, c] : counts) s += fmt::format("{}{} x{}", s.empty() ? "" : ", ", d, c);
    return s;
  }

 private:
  const ArchSpec* arch_ = nullptr;
  TensorStore store_;
};

class WeightLoader {
 public:
  WeightLoader(const ModelSource& src, const KeepWeight& keep) : src_(src), keep_(keep) {}

  // Fetch `canonical`, check its shape, convert to fp32 and keep it.
  HostTensor fetch(const std::string& canonical, std::initializer_list<int64_t> shape) {
    const std::optional<SourceTensor> t = find_weight(src_, canonical, shape);
    const Tensor& v = t->view;
    HostTensor f = dequantize_to_f32(v);
    if (src_.qk_rows_permuted()) {
      const auto layer = split_layer_name(canonical);
      const std::string_view role = layer ? layer->second : std::string_view();
      const ModelConfig& c = src_.config();
      const int64_t cols = v.ndim == 2 ? v.shape[1] : 1;
      // The shape check above makes rows a multiple of the head count; the file and tensor are still named
      // should the un-permute refuse it.
      try {
        if (role == "wq" || role == "bq") unpermute_qk_rows(f.f32(), v.shape[0], cols, c.n_heads);
        if (role == "wk" || role == "bk") unpermute_qk_rows(f.f32(), v.shape[0], cols, c.n_kv_heads);
      } catch (const Error& e) {
        fail("{}: tensor '{}': {}", t->file, t->file_name, e.what());
      }
    }
    return f;
  }

  bool has(const std::string& canonical) const { return src_.find(canonical).has_value(); }

  // Stack row blocks into one [sum rows, cols] tensor.
  Tensor concat_rows(std::initializer_list<const HostTensor*> parts) {
    int64_t rows = 0;
    const int64_t cols = parts.begin()[0]->view().ndim == 2 ? parts.begin()[0]->view().shape[1] : 1;
    for (auto* p : parts) rows += p->view().shape[0];
    HostTensor out = parts.begin()[0]->view().ndim == 2 ? HostTensor::empty(DType::F32, {rows, cols})
                                                         : HostTensor::empty(DType::F32, {rows});
    float* dst = out.f32();
    for (auto* p : parts) {
      std::memcpy(dst, p->f32(), size_t(p->numel()) * sizeof(float));
      dst += p->numel();
    }
    return keep(std::move(out));
  }

  Tensor keep(HostTensor t) { return keep_(std::move(t)); }

 private:
  const ModelSource& src_;
  const KeepWeight& keep_;
};
}  // namespace

SourceTensor find_weight(const ModelSource& src, const std::string& canonical, std::initializer_list<int64_t> shape) {
  const auto shape_str = [&] {
    std::string r = "[";
    for (size_t i = 0; i < shape.size(); ++i) r += (i ? ", " : "") + std::to_string(shape.begin()[i]);
    return r + "]";
  };
  auto t = src.find(canonical);
  TD_CHECK(t.has_value(), "{}: missing tensor '{}' (tandem's {}, expected shape {})", src.source(),
           src.file_tensor_name(canonical), canonical, shape_str());
  const Tensor& v = t->view;
  bool ok = v.ndim == int(shape.size());
  for (int i = 0; ok && i < v.ndim; ++i) ok = v.shape[size_t(i)] == shape.begin()[i];
  TD_CHECK(ok, "{}: tensor '{}' has shape {}, but the config implies {}", t->file, t->file_name, v.shape_str(),
           shape_str());
  TD_CHECK(dequant_supported(v.dtype), "{}: tensor '{}' has dtype {}, which tandem cannot load", t->file,
           t->file_name, dtype_name(v.dtype));
  return *t;
}

std::unique_ptr<ModelSource> open_model_source(const std::filesystem::path& path) {
  TD_CHECK(fs::exists(path), "{}: no such file or folder", path.string());
  if (fs::is_directory(path) || path.extension() == ".safetensors") return std::make_unique<HfModelSource>(path);
  if (path.extension() == ".gguf") return open_gguf_model_source(path);
  fail("{}: unrecognized model format (expected an HF folder, a .safetensors or a .gguf file)", path.string());
}

std::unique_ptr<Model> load_reference_model(const std::filesystem::path& path,
                                            void (*progress)(int64_t, int64_t)) {
  return load_reference_model(*open_model_source(path), progress);
}

std::unique_ptr<Model> load_reference_model(const ModelSource& source, void (*progress)(int64_t, int64_t)) {
  auto model = std::make_unique<Model>();
  model->config = source.config();
  model->source = source.source();
  model->storage_summary = source.storage_summary();
  Model* m = model.get();
  model->weights = load_weights(
      source,
      [m](HostTensor&& t) {
        m->storage.push_back(std::move(t));
        return m->storage.back().view();
      },
      progress);
  return model;
}

ModelWeights load_weights(const ModelSource& source, const KeepWeight& keep, void (*progress)(int64_t, int64_t)) {
  const ModelSource* src = &source;
  const ModelConfig& c = src->config();
  WeightLoader w(*src, keep);
  const int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int64_t total = c.n_layers + 2;

  ModelWeights mw;
  mw.embed = w.keep(w.fetch("embed", {V, H}));
  mw.final_norm = w.keep(w.fetch("final_norm", {H}));
  if (c.tie_embeddings) {
    mw.lm_head = mw.embed;
  } else {
    TD_CHECK(w.has("lm_head"), "{}: missing tensor 'lm_head.weight' (config says tie_word_embeddings=false)",
             src->source());
    mw.lm_head = w.keep(w.fetch("lm_head", {V, H}));
  }
  if (progress) progress(2, total);

  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string L = "L" + std::to_string(i) + ".";
    LayerWeights lw;
    lw.attn_norm = w.keep(w.fetch(L + "attn_norm", {H}));
    HostTensor wq = w.fetch(L + "wq", {c.q_dim(), H});
    HostTensor wk = w.fetch(L + "wk", {c.kv_dim(), H});
    HostTensor wv = w.fetch(L + "wv", {c.kv_dim(), H});
    lw.wqkv = w.concat_rows({&wq, &wk, &wv});
    if (c.qkv_bias) {
      HostTensor bq = w.fetch(L + "bq", {c.q_dim()});
      HostTensor bk = w.fetch(L + "bk", {c.kv_dim()});
      HostTensor bv = w.fetch(L + "bv", {c.kv_dim()});
      lw.bqkv = w.concat_rows({&bq, &bk, &bv});
    }
    lw.wo = w.keep(w.fetch(L + "wo", {H, c.q_dim()}));
    if (c.o_bias) lw.bo = w.keep(w.fetch(L + "bo", {H}));
    lw.mlp_norm = w.keep(w.fetch(L + "mlp_norm", {H}));
    HostTensor gate = w.fetch(L + "w_gate", {I, H});
    HostTensor up = w.fetch(L + "w_up", {I, H});
    lw.w_gate_up = w.concat_rows({&gate, &up});
    lw.w_down = w.keep(w.fetch(L + "w_down", {H, I}));
    mw.layers.push_back(lw);
    if (progress) progress(i + 3, total);
  }
  return mw;
}

}  // namespace tandem
