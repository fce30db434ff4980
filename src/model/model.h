// A model as the engine sees it: config + weights in the internal layout.
//
// ModelSource opens whatever the user points at (an HF folder or a .safetensors file with config.json
// beside it; GGUF comes later) and hands out raw tensor views by canonical name (see model/arch.h).
// load_reference_weights converts them to fp32 host tensors for the reference path, checking every shape
// against the config and fusing q|k|v and gate|up into one matrix each (the qkv and gate_up stages).
#pragma once
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace tandem {

struct SourceTensor {
  std::string file_name;  // the tensor's name in its file, for messages
  std::string file;       // which file holds it
  Tensor view;            // CPU view of the stored bytes (any dtype)
};

class ModelSource {
 public:
  virtual ~ModelSource() = default;
  const ModelConfig& config() const { return config_; }
  const std::string& source() const { return source_; }
  virtual std::optional<SourceTensor> find(std::string_view canonical) const = 0;
  // The name the file uses for a canonical weight ("L0.wq" -> "model.layers.0.self_attn.q_proj.weight").
  virtual std::string file_tensor_name(std::string_view canonical) const = 0;
  // The dtype most weights are stored in (for reports).
  virtual std::string storage_summary() const = 0;
  // GGUF files converted by llama.cpp store Llama Q/K rows permuted for interleaved rope; tandem uses HF's
  // rotate-half layout, so the loader undoes it when this is true.
  virtual bool qk_rows_permuted() const { return false; }
  virtual const class GgufFile* gguf() const { return nullptr; }

 protected:
  ModelConfig config_;
  std::string source_;
};

// HF folder (config.json + model.safetensors or sharded index), a .safetensors file next to config.json,
// or a .gguf file.
std::unique_ptr<ModelSource> open_model_source(const std::filesystem::path& path);
std::unique_ptr<ModelSource> open_gguf_model_source(const std::filesystem::path& path);

// The stored view of `canonical`, checked to exist, to have `shape` and a dtype tandem reads; the errors name the
// file, its tensor name and the shape the config implies. Both weight loaders (fp32 and stored) start here.
SourceTensor find_weight(const ModelSource& src, const std::string& canonical, std::initializer_list<int64_t> shape);

struct LayerWeights {
  Tensor attn_norm;   // [H]
  Tensor wqkv;        // [q_dim + 2 kv_dim, H]
  Tensor bqkv;        // [q_dim + 2 kv_dim] or undefined
  Tensor wo;          // [H, q_dim]
  Tensor bo;          // [H] or undefined
  Tensor mlp_norm;    // [H]
  Tensor w_gate_up;   // [2 I, H]
  Tensor w_down;      // [H, I]
};

struct ModelWeights {
  Tensor embed;       // [V, H]
  Tensor final_norm;  // [H]
  Tensor lm_head;     // [V, H] (the embedding when tied)
  std::vector<LayerWeights> layers;
};

class Model {
 public:
  ModelConfig config;
  ModelWeights weights;  // fp32, CPU
  std::string source;
  std::string storage_summary;
  std::vector<HostTensor> storage;  // owns what `weights` views
};

// Reads every weight as an fp32 host tensor (dequantized, Q/K un-permuted, shape-checked against the config,
// q|k|v and gate|up fused) and hands it to `keep`, which stores it where a path wants it (host memory, or a
// device upload) and returns the view ModelWeights will hold. One weight is in host memory at a time.
using KeepWeight = std::function<Tensor(HostTensor&& weight)>;
ModelWeights load_weights(const ModelSource& source, const KeepWeight& keep,
                          void (*progress)(int64_t done, int64_t total) = nullptr);

// Loads fp32 weights for the reference path. `progress` (may be null) gets (done, total) tensor counts.
std::unique_ptr<Model> load_reference_model(const std::filesystem::path& path,
                                            void (*progress)(int64_t done, int64_t total) = nullptr);
std::unique_ptr<Model> load_reference_model(const ModelSource& source,
                                            void (*progress)(int64_t done, int64_t total) = nullptr);

}  // namespace tandem
