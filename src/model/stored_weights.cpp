#include "model/stored_weights.h"

#include <cstring>
#include <map>
#include <vector>

#include "core/error.h"
#include "io/dequant.h"
#include "model/arch.h"

namespace tandem {
namespace {


class StoredLoader {
 public:
  StoredLoader(const ModelSource& src, const KeepFormat& keep_format, Model& m)
      : src_(src), keep_format_(keep_format), m_(m) {}

  // The stored view of `canonical`, shape-checked.
  SourceTensor find(const std::string& canonical, std::initializer_list<int64_t> shape) const {
    SourceTensor t = find_weight(src_, canonical, shape);
    TD_CHECK(t.view.is_contiguous(), "{}: tensor '{}' is not contiguous ({})", t.file, t.file_name,
             t.view.describe());
    return t;
  }

  // Rows of a weight in HF order: row r of the result is stored row perm[r] (identity unless GGUF Q/K).
  std::vector<int64_t> row_order(const std::string& canonical, const SourceTensor& t) const {
    const int64_t rows = t.view.shape[0];
    std::vector<int64_t> perm(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) perm[size_t(r)] = r;
    if (!src_.qk_rows_permuted()) return perm;
    const auto layer = split_layer_name(canonical);
    const std::string_view role = layer ? layer->second : std::string_view();
    const ModelConfig& c = src_.config();
    int64_t heads = 0;
    if (role == "wq" || role == "bq") heads = c.n_heads;
    if (role == "wk" || role == "bk") heads = c.n_kv_heads;
    if (heads == 0) return perm;
    TD_CHECK(heads > 0 && rows % heads == 0 && (rows / heads) % 2 == 0,
             "{}: tensor '{}': {} rows do not split into {} heads of even size", t.file, t.file_name, rows, heads);
    // GGUF row h*hd + 2j + t holds HF row h*hd + t*hd/2 + j (io/dequant.h).
    const int64_t hd = rows / heads, half = hd / 2;
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t r = 0; r < hd; ++r) perm[size_t(h * hd + (r % 2) * half + r / 2)] = h * hd + r;
    return perm;
  }

  // f32 copy of a weight in HF row order.
  HostTensor f32(const std::string& canonical, std::initializer_list<int64_t> shape) {
    const SourceTensor t = find(canonical, shape);
    return reorder_f32(canonical, t);
  }

  // A matrix (or fused matrices, stacked by rows) in its stored dtype when every part shares one the kernels
  // read, else f32.
  Tensor matrix(std::initializer_list<std::pair<std::string, int64_t>> parts, int64_t cols) {
    std::vector<SourceTensor> ts;
    for (const auto& [name, rows] : parts) ts.push_back(find(name, {rows, cols}));
    const DType dt = ts[0].view.dtype;
    bool same = keep_format_(dt);
    for (const SourceTensor& t : ts) same = same && t.view.dtype == dt;
    int64_t rows = 0;
    for (const SourceTensor& t : ts) rows += t.view.shape[0];
    size_t i = 0;
    if (!same) {
      HostTensor out = HostTensor::empty(DType::F32, {rows, cols});
      float* dst = out.f32();
      for (const auto& part : parts) {
        HostTensor f = reorder_f32(part.first, ts[i++]);
        std::memcpy(dst, f.f32(), size_t(f.numel()) * sizeof(float));
        dst += f.numel();
      }
      return keep(std::move(out));
    }
    HostTensor out = HostTensor::empty(dt, {rows, cols});
    const int64_t rb = cols / dtype_block_elems(dt) * dtype_block_bytes(dt);
    auto* dst = static_cast<uint8_t*>(out.view().data);
    for (const auto& part : parts) {
      const SourceTensor& t = ts[i++];
      const auto* src = static_cast<const uint8_t*>(t.view.data);
      for (int64_t r : row_order(part.first, t)) {
        std::memcpy(dst, src + r * rb, size_t(rb));
        dst += rb;
      }
    }
    return keep(std::move(out));
  }

  Tensor keep(HostTensor t) {
    m_.storage.push_back(std::move(t));
    return m_.storage.back().view();
  }
  bool has(const std::string& canonical) const { return src_.find(canonical).has_value(); }

 private:
  HostTensor reorder_f32(const std::string& canonical, const SourceTensor& t) const {
    HostTensor f = dequantize_to_f32(t.view);
    const std::vector<int64_t> perm = row_order(canonical, t);
    bool identity = true;
    for (size_t r = 0; r < perm.size() && identity; ++r) identity = perm[r] == int64_t(r);
    if (identity) return f;
    const int64_t cols = t.view.ndim == 2 ? t.view.shape[1] : 1;
    HostTensor out = HostTensor::empty(DType::F32, std::span<const int64_t>(t.view.shape.data(), size_t(t.view.ndim)));
    for (size_t r = 0; r < perm.size(); ++r)
      std::memcpy(out.f32() + int64_t(r) * cols, f.f32() + perm[r] * cols, size_t(cols) * sizeof(float));
    return out;
  }

  const ModelSource& src_;
  const KeepFormat& keep_format_;
  Model& m_;
};

}  // namespace

std::unique_ptr<Model> load_stored_model(const ModelSource& source, const KeepFormat& keep_format,
                                         void (*progress)(int64_t, int64_t)) {
  auto model = std::make_unique<Model>();
  Model& m = *model;
  m.config = source.config();
  m.source = source.source();
  m.storage_summary = source.storage_summary();
  const ModelConfig& c = m.config;
  StoredLoader w(source, keep_format, m);
  const int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int64_t total = c.n_layers + 2;

  ModelWeights& mw = m.weights;
  mw.embed = w.matrix({{"embed", V}}, H);
  mw.final_norm = w.keep(w.f32("final_norm", {H}));
  if (c.tie_embeddings) {
    mw.lm_head = mw.embed;
  } else {
    TD_CHECK(w.has("lm_head"), "{}: missing tensor 'lm_head.weight' (config says tie_word_embeddings=false)",
             source.source());
    mw.lm_head = w.matrix({{"lm_head", V}}, H);
  }
  if (progress) progress(2, total);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string L = "L" + std::to_string(i) + ".";
    LayerWeights lw;
    lw.attn_norm = w.keep(w.f32(L + "attn_norm", {H}));
    lw.wqkv = w.matrix({{L + "wq", c.q_dim()}, {L + "wk", c.kv_dim()}, {L + "wv", c.kv_dim()}}, H);
    if (c.qkv_bias) {
      HostTensor b = HostTensor::empty(DType::F32, {c.qkv_dim()});
      float* dst = b.f32();
      for (const auto& [name, n] : {std::pair{L + "bq", c.q_dim()}, {L + "bk", c.kv_dim()}, {L + "bv", c.kv_dim()}}) {
        HostTensor part = w.f32(name, {n});
        std::memcpy(dst, part.f32(), size_t(n) * sizeof(float));
        dst += n;
      }
      lw.bqkv = w.keep(std::move(b));
    }
    lw.wo = w.matrix({{L + "wo", H}}, c.q_dim());
    if (c.o_bias) lw.bo = w.keep(w.f32(L + "bo", {H}));
    lw.mlp_norm = w.keep(w.f32(L + "mlp_norm", {H}));
    lw.w_gate_up = w.matrix({{L + "w_gate", I}, {L + "w_up", I}}, H);
    lw.w_down = w.matrix({{L + "w_down", H}}, I);
    mw.layers.push_back(lw);
    if (progress) progress(i + 3, total);
  }
  return model;
}

}  // namespace tandem
